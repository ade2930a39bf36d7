"""backend=multiprocessing, device pools and quarantine runs: one new process per job.

    FreshProcessPool.run(specs) ─ joblib.Parallel(backend="threading") ─ a thread per running job:
        without devices, where the fork server forked from the launching process runs:
                     ForkedProcess.start(spec) (see _forked) ─▶ wait
        else: take devices ─▶ python -m ._worker (spec on stdin, env with the devices) ─▶ wait
        ◀─ the outcome the process wrote into its job files, or a failed one said by its exit

Every job runs in a new process started for it alone, babysat by one of
joblib's threads. A death costs only that job, and a job past its timeout is
killed without touching the others. A device pool starts a new interpreter,
with environment variables such as ``CUDA_VISIBLE_DEVICES`` in place before
anything in it could read them. The process leads a process group of its own:
when it has exited, or is stopped by an interrupt, whatever of the group still
runs (what a job that died had started) is stopped, and only then are its
devices released.
"""

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

from ._devices import DevicePool
from ._forked import ForkedProcess
from ._limits import HARD_STOP_GRACE_S
from ._options import LaunchOptions
from ._outcome import (
    ENDED,
    INTERRUPTED,
    TIMED_OUT,
    WORKER_DIED,
    JobOutcome,
    death_error,
    describe_exit,
    failed_outcome,
    report_stopped,
    timeout_error,
)
from ._plan import JobSpec
from ._processes import process_setup
from ._tree import TERM_GRACE_S, stop_groups
from ._zygote import fork_server_started_here

# A job's process leads a new process group from its first instruction (Python
# 3.11's process_group; 3.10 has a new session, which makes a new group too).
OWN_GROUP: Dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
)


# A job's own process: a new interpreter, or forked from the fork server.
JobProcess = Union["subprocess.Popen[bytes]", ForkedProcess]

# How often the babysitting thread looks at a job with a time limit.
WAIT_POLL_S = 0.5


class FreshProcessPool:
    """One new process per job, at most ``n_workers`` at a time."""

    def __init__(
        self, options: LaunchOptions, n_workers: int, devices: Optional[DevicePool] = None
    ) -> None:
        self._options = options
        self._n_workers = n_workers
        self._devices = devices
        # As loky's workers: each job's share of the CPUs by joblib's rule.
        self._setup = process_setup(options, n_workers)
        self._env = {**os.environ, **dict(self._setup.environ)}
        # Forked from the fork server where it runs (see _forked), else a new interpreter.
        self._forked = devices is None and fork_server_started_here()
        self._running: Dict[int, Tuple[JobSpec, JobProcess]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from joblib import Parallel, delayed

        # The threads only start processes and wait for them: each job still
        # runs alone in its own process.
        parallel = Parallel(
            n_jobs=self._n_workers,
            backend="threading",
            return_as="generator_unordered",
            verbose=self._options.verbose,
            pre_dispatch="n_jobs",
            batch_size=1,
        )
        yield from parallel(delayed(self._run_one)(spec) for spec in specs)

    def _run_one(self, spec: JobSpec) -> JobOutcome:
        spec = dataclasses.replace(spec, process_setup=self._setup)
        devices = self._devices.acquire() if self._devices is not None else None
        try:
            return self._run_in_process(spec, devices)
        finally:
            if devices is not None and self._devices is not None:
                self._devices.release(devices)

    def _run_in_process(self, spec: JobSpec, devices: Optional[Tuple[str, ...]]) -> JobOutcome:
        started = time.time()
        env = self._env
        if devices is not None:
            env = {**env, self._options.device_env: ",".join(devices)}
        proc = self._start(spec, env)
        if proc is None:
            return failed_outcome(spec, KeyboardInterrupt("interrupted"), started=started)
        try:
            returncode = self._wait(proc, spec)
        finally:
            with self._lock:
                self._running.pop(spec.num, None)
        payload = spec.files.take_outcome()
        timed_out = payload is None and (returncode is None or spec.files.timed_out())
        how = ENDED if payload is not None else TIMED_OUT if timed_out else WORKER_DIED
        if not self._stopping:  # else stop() stops the group, and says so
            self._stop_group(spec, proc.pid, how)
        if payload is not None:
            outcome: JobOutcome = pickle.loads(payload)
            return outcome
        if returncode is None or timed_out:
            error: Exception = timeout_error(spec)
        else:  # its memory watch may have killed it, and said so in its files
            error = death_error(spec, describe_exit(returncode))
        return failed_outcome(spec, error, started=started, pid=proc.pid, devices=devices)

    @staticmethod
    def _stop_group(spec: JobSpec, pgid: int, how: str) -> None:
        """Stop what is left of the job's process group: what it started, if its process died."""
        stopped = stop_groups([pgid]).get(pgid, {})
        stopped.pop(pgid, None)  # the job's own process (killed for an interrupt)
        report_stopped(spec, how, stopped)

    def _start(self, spec: JobSpec, env: Dict[str, str]) -> "Optional[JobProcess]":
        with self._lock:
            if self._stopping:
                return None
            if self._forked:
                forked = ForkedProcess.start(spec)
                self._running[spec.num] = (spec, forked)
                return forked
            proc = subprocess.Popen(
                [sys.executable, "-m", f"{__package__}._worker"],
                stdin=subprocess.PIPE,
                env=env,
                **OWN_GROUP,
            )
            self._running[spec.num] = (spec, proc)
        assert proc.stdin is not None, "opened with stdin=PIPE"
        try:
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
        except BrokenPipeError:  # the process died at start; its exit status says why
            pass
        return proc

    @staticmethod
    def _wait(proc: "JobProcess", spec: JobSpec) -> Optional[int]:
        """The exit status, or None when the job overran its timeout and was killed here.

        A backstop past the job's own hard stop (which first stops the processes the
        job started), counted, as the job's own limit is, from its task's start (the
        job notes it): a slow interpreter start or import does not count against it.
        """
        if spec.timeout is None:
            return proc.wait()
        allowed = spec.timeout + HARD_STOP_GRACE_S + TERM_GRACE_S + 1
        while True:
            try:
                return proc.wait(timeout=WAIT_POLL_S)
            except subprocess.TimeoutExpired:
                pass
            noted = spec.files.started()
            task_started = noted.get("started") if "output_dir" in noted else None
            if isinstance(task_started, (int, float)) and time.time() - task_started > allowed:
                break
        proc.kill()
        proc.wait()
        return None

    def stop(self) -> None:
        """Start nothing more; stop every running job's process, and what it started, at once."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        stopped = stop_groups([proc.pid for _, proc in running])
        for spec, proc in running:
            proc.kill()  # in case it had not made its group yet
            proc.wait()
            processes = stopped.get(proc.pid, {})
            processes.pop(proc.pid, None)
            report_stopped(spec, INTERRUPTED, processes)

