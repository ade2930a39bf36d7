"""Worker pools: where jobs run, each driven by ``joblib.Parallel``.

Two shapes, chosen by what a backend can promise:

* :class:`LokyPool` (``backend=loky``): joblib's reusable loky workers, fast
  for many short jobs, forked from a server process that has imported joblib
  and Hydra where the platform has one. A worker that dies breaks the whole
  pool (loky's ``TerminatedWorkerError``): the pool raises :class:`PoolBroken`
  naming the jobs that were in flight, and the supervisor sorts culprit from
  innocents.
* :class:`FreshProcessPool` (``backend=multiprocessing``, quarantine runs,
  device pools): every job in a new Python process started for it alone, with
  its own environment, babysat by one of joblib's threads. A death costs only
  that job, a job past its timeout is killed without touching the others, and
  environment variables such as ``CUDA_VISIBLE_DEVICES`` are in place before
  the interpreter starts.

Both yield :class:`JobOutcome` objects as jobs end, in the order they end.
joblib is imported here and only when a pool is used: Hydra imports the
plugin at every app start.
"""

import ast
import atexit
import functools
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterator, Optional, Sequence, Set, Tuple, Union

from ._devices import DevicePool
from ._errors import JobTimeout, LauncherConfigError, WorkerCrashed
from ._job import (
    HARD_STOP_GRACE_S,
    JobOutcome,
    JobSpec,
    failed_outcome,
    marker_path,
    run_job_spec,
    update_environ,
    warm_worker,
)
from ._options import LaunchOptions, pre_dispatch_count

log = logging.getLogger(__name__)

LIKELY_CRASH_CAUSES = (
    "Likely causes: a crash in native code (segmentation fault), the kernel's "
    "out-of-memory killer (see `dmesg`), or os._exit()/a signal in the task."
)


class PoolBroken(Exception):
    """A worker died and took the pool with it; ``in_flight`` jobs may not have ended."""

    def __init__(self, message: str, in_flight: FrozenSet[int], exit_codes: str) -> None:
        super().__init__(message)
        self.in_flight = in_flight
        self.exit_codes = exit_codes


def describe_exit(returncode: int) -> str:
    """'was killed by signal SIGKILL' or 'exited with status 3'."""
    import signal

    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def crash_error(spec: JobSpec, how: str) -> WorkerCrashed:
    overrides = " ".join(spec.overrides) or "(no overrides)"
    return WorkerCrashed(
        f"job #{spec.num} ({overrides}) did not finish: its worker process {how}. "
        f"{LIKELY_CRASH_CAUSES}"
    )


def timeout_error(spec: JobSpec) -> JobTimeout:
    return JobTimeout(
        f"job #{spec.num} ran longer than hydra.launcher.timeout={spec.timeout:g}s "
        "and its process was killed"
    )


class LokyPool:
    """joblib's loky workers, reused across jobs and batches."""

    def __init__(self, options: LaunchOptions, n_workers: int) -> None:
        _shutdown_loky_at_exit()
        _fork_workers_from_a_server()
        self._options = options
        self._n_workers = n_workers
        self._generator: Optional[Any] = None

    @contextmanager
    def _parallel(self, **overrides: Any) -> Iterator[Any]:
        """joblib's Parallel on loky, as every call of this pool makes it.

        loky reuses its running workers only for a call whose settings equal
        the previous call's: the warm-up and the batches share this one place.
        ``overrides`` may change what is not such a setting (batching, verbosity up to 50).
        """
        from joblib import Parallel, parallel_config

        options = self._options
        n_jobs = self._n_workers
        pre_dispatch: Any = pre_dispatch_count(options.pre_dispatch, n_jobs)
        if n_jobs == 1:
            # joblib runs a one-worker loky call in this process, where a job that
            # crashes or overruns would take the sweep with it: two workers, one
            # job at a time.
            n_jobs, pre_dispatch = 2, 1
        environ = _worker_environ(options, n_jobs)
        settings = dict(
            n_jobs=n_jobs,
            return_as="generator_unordered",
            verbose=options.verbose,
            pre_dispatch=pre_dispatch,
            batch_size=options.batch_size,
            temp_folder=options.temp_folder,
            max_nbytes=options.max_nbytes,
            mmap_mode=options.mmap_mode,
        )
        with parallel_config(
            backend="loky",
            inner_max_num_threads=options.inner_max_num_threads,
            initializer=update_environ,
            initargs=(environ,),
        ):
            yield Parallel(**{**settings, **overrides})

    def warm(self, ready: int) -> None:
        """Start the workers; load what jobs need in the first ``ready`` (see :func:`warm_up`)."""
        from joblib import delayed

        # joblib hands a verbosity above 50 on to loky, which then counts it as a setting.
        verbose = self._options.verbose if self._options.verbose > 50 else 0
        meeting = tempfile.mkdtemp(prefix="hydra-joblib-warm-up-")
        try:
            tasks = (delayed(warm_worker)(meeting, ready) for _ in range(ready))
            with self._parallel(verbose=verbose, batch_size=1, pre_dispatch="all") as parallel:
                pids = sorted(set(parallel(tasks)))
            log.debug(f"Workers ready ahead of the batch: processes {', '.join(map(str, pids))}")
        except Exception as error:  # noqa: BLE001 - the batch starts its workers itself then
            log.debug("Starting the workers ahead of the batch failed: %r", error)
        finally:
            shutil.rmtree(meeting, ignore_errors=True)

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from joblib import delayed
        from joblib.externals.loky.process_executor import BrokenProcessPool

        _wait_for_warm_up()
        dispatched: Set[int] = set()
        ended: Set[int] = set()

        def tasks() -> Iterator[Any]:
            for spec in specs:
                dispatched.add(spec.num)
                yield delayed(run_job_spec)(spec)

        with self._parallel() as parallel:
            self._generator = parallel(tasks())
            try:
                for outcome in self._generator:
                    ended.add(outcome.num)
                    yield outcome
            except BrokenProcessPool as error:
                codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(error))
                raise PoolBroken(
                    str(error),
                    in_flight=frozenset(dispatched - ended),
                    exit_codes=codes.group(1) if codes else "unknown",
                ) from None
            finally:
                self._generator = None

    def stop(self) -> None:
        """Kill the workers now (an interrupt): closing joblib's generator aborts its call."""
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()
        shutdown_loky()


_warming: Optional[threading.Thread] = None


def warm_up(options: LaunchOptions) -> None:
    """Start the loky workers in the background, with the settings the batches will use.

    Called from the launcher's ``setup()``: Hydra then composes every job's
    config once in this process (the sweeper's check of the batch) before it
    calls ``launch()``, and the workers start meanwhile. The first batch waits
    for the warm-up to end (up to one worker per CPU ready) and finds them
    running. Other backends start their processes per job or live on a
    cluster: nothing to warm.
    """
    global _warming
    if options.backend != "loky" or options.devices is not None:
        return
    if _warming is not None and _warming.is_alive():
        return  # a warm-up is under way (a finished one that no batch joined is stale)
    # Imported here, in the main thread: importing registers exit handlers, which
    # Python refuses once it is shutting down (an interrupt while Hydra composes).
    from joblib import cpu_count

    cpus = cpu_count()
    n_workers = options.workers(cpus)
    pool = LokyPool(options, n_workers)

    def warm() -> None:
        if threading.main_thread().is_alive():  # else the app is exiting: start nothing
            # loky starts all the workers; wait for as many as can start at once. With
            # more workers than CPUs, the first jobs need not wait for the last ones.
            pool.warm(ready=min(n_workers, cpus))

    _warming = threading.Thread(target=warm, name="hydra-joblib-launcher-warm-up")
    _warming.start()


def _wait_for_warm_up() -> None:
    global _warming
    thread, _warming = _warming, None
    if thread is not None:
        thread.join()


# What a worker forked from the server has loaded before its first job: joblib's
# worker loop, Hydra's config composition, and what _fork_server prepares.
FORKSERVER_PRELOAD = (
    "joblib.externals.loky.process_executor",
    "hydra._internal.config_loader_impl",
    "hydra_plugins.hydra_joblib_launcher._fork_server",
)


@functools.lru_cache(maxsize=None)
def _fork_workers_from_a_server() -> None:
    """Have loky fork its workers from multiprocessing's fork server.

    loky's own start method runs a new interpreter for each worker, which
    imports joblib and Hydra before its first job: ~0.2 s of CPU per worker,
    taken from the cores on which the sweeper is composing the jobs. The fork
    server imports them once, and each worker forked from it starts with them
    loaded. The server is a process of its own, without threads, so forking
    from it is safe; it exits with this process. Left as it is when the
    platform has no fork server (Windows), when loky's start method was
    chosen in this process already (``loky.set_start_method``), or when the
    app's script may not be imported again (see :func:`_script_is_guarded`).
    The server's preload list is multiprocessing's, for the whole process:
    this sets it.
    """
    import multiprocessing

    from joblib.externals.loky.backend.context import get_start_method, set_start_method

    if (
        "forkserver" not in multiprocessing.get_all_start_methods()
        or get_start_method() is not None
        or not _script_is_guarded()
    ):
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORKSERVER_PRELOAD))
    set_start_method("forkserver")


def _script_is_guarded() -> bool:
    """Whether the app's main module keeps its app under ``if __name__ == "__main__":``.

    A worker forked from multiprocessing's fork server first imports the
    launching process's main script (as ``__mp_main__``), as with its spawn
    method; loky's own workers do not. A script that calls its app at top
    level would start the whole sweep again in each such worker. True too when
    multiprocessing imports no main module (an interactive session, ``python
    -m`` of a package's ``__main__``).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if path is None or spec_name == "__main__" or spec_name.endswith(".__main__"):
        return True
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_name_main(node.test) for node in tree.body)


def _is_name_main(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
    ):
        return False
    sides = (test.left, test.comparators[0])
    return any(
        isinstance(name, ast.Name)
        and name.id == "__name__"
        and isinstance(value, ast.Constant)
        and value.value == "__main__"
        for name, value in (sides, sides[::-1])
    )


def _worker_environ(options: LaunchOptions, n_jobs: int) -> Dict[str, str]:
    """The variables joblib gives a loky worker: native thread pools sized to its share of the CPUs.

    loky sets them as it starts a worker with its own start method only; a
    worker forked from the fork server sets them itself (:func:`update_environ`),
    before its first job imports a library that reads them. joblib's own rule
    computes them.
    """
    from joblib.parallel import LokyBackend

    backend = LokyBackend(inner_max_num_threads=options.inner_max_num_threads)
    environ: Dict[str, str] = backend._prepare_worker_env(n_jobs=n_jobs)
    return environ


@functools.lru_cache(maxsize=None)
def _shutdown_loky_at_exit() -> None:
    # loky keeps its workers for the next Parallel call (the next batch); they
    # must not outlive the launching process.
    atexit.register(shutdown_loky)


def shutdown_loky() -> None:
    """Stop joblib's reusable loky executor and its workers, if one is running."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _thread_limits(options: LaunchOptions) -> Dict[str, str]:
    if options.inner_max_num_threads is None:
        return {}
    from joblib.parallel import ParallelBackendBase

    limit = str(options.inner_max_num_threads)
    return {name: limit for name in ParallelBackendBase.MAX_NUM_THREADS_VARS}


class FreshProcessPool:
    """One new process per job, at most ``n_workers`` at a time."""

    def __init__(
        self,
        options: LaunchOptions,
        n_workers: int,
        run_dir: Path,
        devices: Optional[DevicePool] = None,
    ) -> None:
        self._options = options
        self._n_workers = n_workers
        self._run_dir = run_dir
        self._devices = devices
        self._env = {**os.environ, **_thread_limits(options)}
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
        devices = self._devices.acquire() if self._devices is not None else None
        started = time.time()
        try:
            env = self._env
            if devices is not None:
                env = {**env, self._options.device_env: ",".join(devices)}
            out_path = self._run_dir / f"{spec.num}.outcome"
            proc = self._start(spec, env, out_path)
            if proc is None:
                return failed_outcome(spec, KeyboardInterrupt("interrupted"), started=started)
            try:
                returncode = self._wait(proc, spec)
            finally:
                with self._lock:
                    self._running.pop(spec.num, None)
            if out_path.exists():
                with open(out_path, "rb") as f:
                    outcome: JobOutcome = pickle.load(f)
                out_path.unlink()
                return outcome
            if returncode is None or marker_path(spec.marker_dir, spec.num).exists():
                error: Exception = timeout_error(spec)
            else:
                error = crash_error(spec, describe_exit(returncode))
            return failed_outcome(spec, error, started=started, pid=proc.pid, devices=devices)
        finally:
            if devices is not None:
                self._devices.release(devices)  # type: ignore[union-attr]

    def _start(
        self, spec: JobSpec, env: Dict[str, str], out_path: Path
    ) -> "Optional[subprocess.Popen[bytes]]":
        with self._lock:
            if self._stopping:
                return None
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hydra_plugins.hydra_joblib_launcher._worker",
                    str(out_path),
                ],
                stdin=subprocess.PIPE,
                env=env,
            )
            self._running[spec.num] = proc
        assert proc.stdin is not None
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


Pool = Union[LokyPool, FreshProcessPool]


def open_pools(
    options: LaunchOptions, *, n_workers: int, run_dir: Path
) -> Tuple[Pool, Callable[[], Pool]]:
    """The pool the batch runs on, and how to make the quarantine pool for suspects of a crash."""

    def fresh() -> FreshProcessPool:
        devices = None
        if options.devices is not None:
            devices = DevicePool(options.devices, options.devices_per_job)
        return FreshProcessPool(options, n_workers, run_dir, devices)

    if options.backend == "multiprocessing" or options.devices is not None:
        return fresh(), fresh
    if options.backend == "loky":
        return LokyPool(options, n_workers), fresh
    if options.distributed:
        from ._distributed import open_pool

        pool = open_pool(options, n_workers=n_workers)
        return pool, lambda: pool  # the cluster re-runs the jobs of a dead worker itself
    raise LauncherConfigError(f"hydra.launcher.backend={options.backend} has no worker pool")
