"""backend=multiprocessing, device pools and quarantine runs: one new process per job.

    FreshProcessPool.run(specs) ─ joblib.Parallel(backend="threading") ─ a thread per running job:
        take devices ─▶ python -m ._worker (spec on stdin, env with the devices) ─▶ wait
        ◀─ the outcome the process wrote into its job files, or a failed one said by its exit

Every job runs in a new Python process started for it alone, with its own
environment, babysat by one of joblib's threads. A death costs only that job,
a job past its timeout is killed without touching the others, and environment
variables such as ``CUDA_VISIBLE_DEVICES`` are in place before the interpreter
starts.
"""

import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, Optional, Sequence, Tuple

from ._devices import DevicePool
from ._limits import HARD_STOP_GRACE_S
from ._options import LaunchOptions
from ._outcome import JobOutcome, crash_error, describe_exit, failed_outcome, timeout_error
from ._plan import JobSpec
from ._processes import process_setup


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
        self._running: Dict[int, "subprocess.Popen[bytes]"] = {}
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
        if payload is not None:
            outcome: JobOutcome = pickle.loads(payload)
            return outcome
        if returncode is None or spec.files.timed_out():
            error: Exception = timeout_error(spec)
        else:
            error = crash_error(spec, describe_exit(returncode))
        return failed_outcome(spec, error, started=started, pid=proc.pid, devices=devices)

    def _start(self, spec: JobSpec, env: Dict[str, str]) -> "Optional[subprocess.Popen[bytes]]":
        with self._lock:
            if self._stopping:
                return None
            proc = subprocess.Popen(
                [sys.executable, "-m", f"{__package__}._worker"],
                stdin=subprocess.PIPE,
                env=env,
            )
            self._running[spec.num] = proc
        assert proc.stdin is not None, "opened with stdin=PIPE"
        try:
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
        except BrokenPipeError:  # the process died at start; its exit status says why
            pass
        return proc

    @staticmethod
    def _wait(proc: "subprocess.Popen[bytes]", spec: JobSpec) -> Optional[int]:
        """The exit status, or None when the job overran its timeout and was killed here."""
        limit = None if spec.timeout is None else spec.timeout + HARD_STOP_GRACE_S + 1
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def stop(self) -> None:
        """Start nothing more and kill every running job process."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for proc in running:
            proc.kill()
        for proc in running:
            proc.wait()
