"""Pools on a Dask or Ray cluster, driven by joblib's own backends.

    launcher process                                   cluster worker process (one job at a time)
    ────────────────                                   ──────────────────────
    connect(options) ─ once per process, cached ─▶ Dask scheduler / Ray cluster
      embedded LocalCluster or local Ray if no address  (started here, closed at exit)
    DaskPool / RayPool.run(specs)
      joblib.Parallel(backend=dask | ray,              _JobTask(spec) ─▶ run_job_spec(spec)
                      return_as="generator_unordered") ──▶ reads the context file from the
      ◀── JobOutcome, as each job ends ─────────────────  shared sweep dir, writes outputs there

The cluster does the scheduling: there is no queue or RPC of ours. What the
launcher adds is what Hydra jobs need:

* one job per worker process at a time (Hydra jobs change process-wide state):
  Dask workers must run one thread (checked at connect, at every batch, and by
  the job itself); Ray's joblib pool runs one task at a time per actor process;
* a job whose worker dies is re-run by the cluster (Dask reschedules the task,
  Ray restarts the actor and retries); the job counts its own starts
  (``JobSpec.max_worker_deaths``) and, after ``MAX_WORKER_DEATHS`` deaths, ends
  FAILED on its next start instead of killing more workers. A job past its
  timeout kills its worker the same way and ends FAILED (timeout) when re-run;
* joblib aborts a whole call on the first exception, so nothing a job does
  raises: ``run_job_spec`` returns FAILED outcomes. What does raise is about the
  cluster (a worker that cannot import the app, cannot read the shared sweep dir,
  Dask giving up on a task): one :class:`LauncherError` saying what to fix;
* nothing waits without end: an address nothing (or no Dask scheduler) answers
  at, workers that could not even unpickle a task, a cluster left without
  workers or without its scheduler all end in one error within
  ``dask.connect_timeout`` seconds.

dask, distributed and ray are imported inside functions only: Hydra imports the
plugin at every app start.
"""

import atexit
import functools
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

from ._errors import LauncherConfigError, LauncherError
from ._job import JobOutcome, JobSpec, attempts_path, run_job_spec
from ._options import LaunchOptions

log = logging.getLogger(__name__)

# Deaths of its worker after which a job gives up (FAILED) instead of being run
# again. Dask's scheduler gives up on a task itself after more deaths than
# ``distributed.scheduler.allowed-failures`` (3 by default): keep this below.
MAX_WORKER_DEATHS = 2

# How long to wait for the scheduler to see the workers stopped by an interrupt go.
STOP_WAIT_S = 10.0

# How long to wait for a Ray address to accept a connection before ray.init.
RAY_PROBE_TIMEOUT_S = 10.0

_INSTALL = 'pip install "hydra-joblib-launcher[{extra}]"'
_TASK_NAME = re.compile(r"hydra_job_(\d+)")


# -- what the launcher sees ---------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Where a distributed launch runs, for the launch log line."""

    backend: str
    address: str
    n_workers: int  # jobs at once: n_jobs as the cluster can serve it
    capacity: int  # single-threaded workers (Dask) or CPUs (Ray) the cluster offers
    started_here: bool

    @property
    def description(self) -> str:
        if self.backend == "dask":
            what = "embedded Dask LocalCluster" if self.started_here else "Dask scheduler"
            unit = (
                ("worker process", "worker processes")
                if self.started_here
                else ("worker", "workers")
            )
        else:
            what = "local Ray" if self.started_here else "Ray cluster"
            unit = ("CPU", "CPUs")
        return (
            f"{what} {self.address} ({_count(self.capacity, *unit)}, "
            f"{_count(self.n_workers, 'job', 'jobs')} at once)"
        )


def _count(n: int, one: str, many: str) -> str:
    """'1 worker', '2 workers'."""
    return f"{n} {one if n == 1 else many}"


def connect(options: LaunchOptions, *, n_workers: int) -> Cluster:
    """Reach (or start) the cluster of ``options.backend``; one clear error if it cannot be used.

    ``n_workers`` is n_jobs counted on this machine's cores: the size of a cluster
    started here. On a cluster reached by address, n_jobs counts its workers instead.
    """
    if options.backend == "dask":
        return _dask_connection(options, n_workers).cluster
    if options.backend == "ray":
        return _ray_connection(options, n_workers).cluster
    raise LauncherConfigError(f"hydra.launcher.backend={options.backend} is not a cluster backend")


def open_pool(options: LaunchOptions, *, n_workers: int) -> "DistributedPool":
    """The pool of ``options.backend``, on the cluster :func:`connect` reached (or reaches now)."""
    if options.backend == "dask":
        return DaskPool(options, _dask_connection(options, n_workers))
    return RayPool(options, _ray_connection(options, n_workers))


def _n_at_once(n_jobs: int, capacity: int) -> int:
    """n_jobs counted on a cluster of ``capacity``: -1 all of it, -2 all but one, k at most k."""
    if n_jobs < 0:
        return max(capacity + 1 + n_jobs, 1)
    return max(min(n_jobs, capacity), 1)


def _missing_extra(backend: str, extra: str, error: ImportError) -> LauncherConfigError:
    return LauncherConfigError(
        f"hydra.launcher.backend={backend} needs {error.name or extra}, which is not installed "
        f"here ({error}); install it with: {_INSTALL.format(extra=extra)}"
    )


# -- the worker side -----------------------------------------------------------------

# The jobs this worker process runs right now (job number -> marker dir), so that
# an interrupted launch can find and stop its own jobs, and no other.
_running: Dict[int, str] = {}


class WorkerCannotRun(LauncherError):
    """A cluster worker could not start a job: its environment lacks something the launch needs."""


class _JobTask:
    """``run_job_spec`` for one job, named after it.

    Dask shows the name on its dashboard and puts it in the task's key, which is
    how a ``KilledWorker`` error tells which job it gave up on.
    """

    def __init__(self, num: int, *, dask: bool) -> None:
        self.__name__ = f"hydra_job_{num}"
        self._dask = dask

    def __call__(self, spec: JobSpec) -> JobOutcome:
        where = f"host {socket.gethostname()}, process {os.getpid()}"
        if self._dask:
            threads = _dask_worker_threads()
            if threads > 1:
                raise WorkerCannotRun(
                    f"The Dask worker in {where} runs {threads} threads, so it could run two "
                    f"Hydra jobs at once in one process (they would share logging, the working "
                    f"directory and Hydra's global state). {_ONE_THREAD}"
                )
        _running[spec.num] = spec.marker_dir
        try:
            return run_job_spec(spec)
        except Exception as error:  # noqa: BLE001 - run_job_spec raises only before the job starts
            raise WorkerCannotRun(_cannot_run(spec, error, where)) from None
        finally:
            _running.pop(spec.num, None)


def _cannot_run(spec: JobSpec, error: BaseException, where: str) -> str:
    text = f"A worker ({where}) cannot run job #{spec.num}: {type(error).__name__}: {error}. "
    if isinstance(error, ImportError):
        module = error.name or str(error)
        return text + (
            f"The workers cannot import the module {module!r}, which the task function needs. "
            "Install the app and the modules it imports on every worker host, in the workers' "
            "Python environment (or start the workers where they can import them, for example "
            "with PYTHONPATH), then run again."
        )
    if isinstance(error, OSError):
        return text + (
            "Workers read the launch's context and write the jobs' outputs in the sweep dir: "
            "it must be on a filesystem shared by the launcher and every worker host, at the "
            "same path."
        )
    return text + (
        "The workers' environment differs from the launcher's: install the same versions "
        "of the app, of Hydra and of this launcher on every worker host."
    )


def _dask_worker_threads() -> int:
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except ValueError:  # not in a Dask worker
        return 1


def _stop_jobs_of(marker_dir: str) -> List[int]:
    """Run on every worker: kill this worker process if it runs a job of the launch ``marker_dir``.

    Threads cannot be stopped from outside, so the process goes, as it does for a
    job past its timeout; a worker with a nanny is restarted. Returns the job
    numbers it will stop; the kill comes a moment later, after the answer is sent.
    """
    mine = [num for num, where in list(_running.items()) if where == marker_dir]
    if mine:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return mine


# -- Dask ----------------------------------------------------------------------------

_ONE_THREAD = (
    "Start each Dask worker with one thread: dask worker <scheduler address> --nthreads 1 "
    "(start several workers per host for several jobs at once: --nworkers N)."
)


@dataclass
class _DaskConnection:
    client: Any
    local_cluster: Any  # the LocalCluster started here, or None
    cluster: Cluster


_dask_connections: Dict[Tuple[Any, ...], _DaskConnection] = {}
_dask_lock = threading.Lock()


def _import_distributed() -> Any:
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as error:
        raise _missing_extra("dask", "dask", error) from None
    return distributed


def _dask_connection(options: LaunchOptions, n_workers: int) -> _DaskConnection:
    """The client of this process for these settings: made once, closed when the process exits."""
    settings = options.dask
    key = (settings.address, settings.dashboard_address, None if settings.address else n_workers)
    with _dask_lock:
        connection = _dask_connections.get(key)
        if connection is None or connection.client.status != "running":
            connection = _dask_connect(options, n_workers)
            _dask_connections[key] = connection
            # Registered after distributed's own exit hooks, so it runs before them.
            atexit.register(_close_dask, connection)
    _check_dask_threads(connection.client)
    if settings.address is not None:  # n_jobs counts the workers of the cluster, as they are now
        capacity = _dask_capacity(connection.client)
        n_at_once = _n_at_once(options.n_jobs, capacity)
        connection.cluster = replace(connection.cluster, n_workers=n_at_once, capacity=capacity)
    return connection


def _dask_connect(options: LaunchOptions, n_workers: int) -> _DaskConnection:
    distributed = _import_distributed()
    import dask as dask_module

    dask = options.dask
    if dask.address is None:
        # The scheduler runs in this process; its workers are processes of their own,
        # one thread each, restarted by their nanny when a job kills them.
        # Its INFO lines (workers joining, leaving) would drown the sweep's own log.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # Without a dashboard the scheduler still serves its health routes: on any free port.
        http = {} if dask.dashboard_address else {"dashboard_address": "127.0.0.1:0"}
        # Jobs may start processes of their own (data loaders, joblib, multiprocessing),
        # which daemonic workers cannot. Nannies read this at every (re)start of a
        # worker, so it is set for the process; the cluster is closed at exit.
        dask_module.config.set({"distributed.worker.daemon": False})
        with dask_module.config.set(
            {"distributed.scheduler.allowed-failures": MAX_WORKER_DEATHS + 1}
        ):
            local = distributed.LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dask.dashboard_address,
                scheduler_kwargs=http,
            )
        client = distributed.Client(local, set_as_default=False)
        cluster = Cluster("dask", local.scheduler_address, n_workers, n_workers, True)
        return _DaskConnection(client, local, cluster)
    try:
        _probe_dask_scheduler(dask.address, dask.connect_timeout)
        client = distributed.Client(
            dask.address, timeout=dask.connect_timeout, set_as_default=False
        )
    except LauncherError:
        raise
    except Exception as error:  # noqa: BLE001 - OSError, TimeoutError, ValueError (bad address)...
        raise LauncherError(
            f"Cannot reach the Dask scheduler at hydra.launcher.dask.address={dask.address} "
            f"within hydra.launcher.dask.connect_timeout={dask.connect_timeout:g}s "
            f"({type(error).__name__}: {error}). Check that the scheduler runs "
            f"(dask scheduler), that the host and port are right and reachable from here, "
            f"and that the protocol (tcp://, tls://) matches the scheduler's."
        ) from None
    try:
        client.wait_for_workers(1, timeout=dask.connect_timeout)
    except Exception:  # noqa: BLE001 - a timeout, in whatever type this version raises
        client.close()
        raise LauncherError(
            f"The Dask scheduler at {dask.address} has no worker after "
            f"{dask.connect_timeout:g}s (hydra.launcher.dask.connect_timeout). Start workers "
            f"with: dask worker {dask.address} --nthreads 1"
        ) from None
    try:
        _check_dask_imports(client, dask.address)
    except LauncherError:
        client.close()
        raise
    capacity = _dask_capacity(client)
    cluster = Cluster("dask", dask.address, capacity, capacity, False)
    return _DaskConnection(client, None, cluster)


def _probe_dask_scheduler(address: str, timeout: float) -> None:
    """Fail within ``timeout`` unless a Dask scheduler answers at ``address``.

    distributed.Client waits without end on a server that accepts the connection
    but does not speak Dask's protocol (the dashboard's port 8787 given for the
    scheduler's 8786, say); this exchange can be given up.
    """
    import asyncio

    import distributed.comm
    import distributed.security

    # untyped: as Any, they leave mypy's strict mode to the code around them
    comms: Any = distributed.comm
    security_class: Any = distributed.security.Security
    security = security_class()

    async def identity() -> Any:
        args = security.get_connection_args("client")
        comm = await comms.connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:  # connect() gives up on an unreachable address by itself (an OSError), a bit sooner
        answer = asyncio.run(asyncio.wait_for(identity(), timeout + 1))
    except asyncio.TimeoutError:
        answer = None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise LauncherError(
            f"Something answers at hydra.launcher.dask.address={address}, but not as a Dask "
            f"scheduler within hydra.launcher.dask.connect_timeout={timeout:g}s. Give the "
            f"scheduler's address (port 8786 by default; 8787 is its dashboard)."
        )


def _check_dask_imports(client: Any, address: str) -> None:
    """Refuse workers that cannot import this launcher: they could not even unpickle a task.

    Such a worker drops its connection and leaves the cluster at the first task
    sent to it, without a word to the launcher. ``exec`` of an import statement
    is what a worker can always unpickle (a builtin) and run.
    """
    answers = client.run(exec, f"import {__name__}", {}, on_error="return")
    missing = {addr: error for addr, error in answers.items() if isinstance(error, BaseException)}
    if not missing:
        return
    error = next(iter(missing.values()))
    module = getattr(error, "name", None) or __name__
    shown = ", ".join(sorted(missing))
    raise LauncherError(
        f"The Dask workers {shown} at {address} cannot import the module {module!r} "
        f"({type(error).__name__}: {error}), so they cannot unpickle the launcher's tasks. "
        f"Install this launcher (pip install hydra-joblib-launcher), the app and the modules "
        f"it imports in the workers' Python environment on every worker host, then start "
        f"the workers again."
    )


def _dask_capacity(client: Any) -> int:
    return len(client.nthreads())


def _check_dask_threads(client: Any) -> None:
    """Refuse a cluster whose workers may run two jobs at once in one process."""
    threaded = {addr: n for addr, n in client.nthreads().items() if n > 1}
    if threaded:
        shown = ", ".join(f"{addr} ({n} threads)" for addr, n in sorted(threaded.items()))
        raise LauncherError(
            f"backend=dask runs each Hydra job alone in a worker process, and these workers "
            f"run several threads: {shown}. Two jobs in one process would share logging, the "
            f"working directory and Hydra's global state. {_ONE_THREAD}"
        )


class _TaskFailed:
    """A task that failed outside the job: Dask gave up on it, or the cluster is gone."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@functools.lru_cache(maxsize=None)
def _dask_backend_class() -> Any:
    from joblib._dask import DaskDistributedBackend

    class OneJobPerTaskDaskBackend(DaskDistributedBackend):  # type: ignore[misc,unused-ignore]
        """joblib's dask backend, with two fixes a launcher needs."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._pending: Dict[Any, Any] = {}  # joblib's future of a task -> its callback
            self._pending_lock = threading.Lock()

        # joblib runs a call in the calling process when its backend counts one
        # worker: a one-worker cluster must still get the jobs. How many run at
        # once is set by pre_dispatch (the pool's n_workers), not by this count.
        def effective_n_jobs(self, n_jobs: int) -> int:
            return max(int(super().effective_n_jobs(n_jobs)), 2)

        # joblib's dask backend sets the error of a task Dask failed itself
        # (KilledWorker) on its future, but never calls the completion callback
        # Parallel waits on: the call would hang for ever. Deliver those errors
        # through the callback, as a task's own errors are.
        def submit(self, func: Any, callback: Any = None) -> Any:
            future = super().submit(func, callback)
            with self._pending_lock:
                self._pending[future] = callback

            def done(finished: Any) -> None:
                with self._pending_lock:
                    waiting = self._pending.pop(finished, None)
                if waiting is None or finished.cancelled() or finished.exception() is None:
                    return
                waiting(_TaskFailed(finished.exception()))

            future.add_done_callback(done)
            return future

        def fail_pending(self, error: BaseException) -> None:
            """End every task still awaited with ``error`` (the cluster can no longer run them)."""
            with self._pending_lock:
                pending, self._pending = self._pending, {}
            for callback in pending.values():
                if callback is not None:
                    callback(_TaskFailed(error))

        def retrieve_result_callback(self, out: Any) -> Any:
            if isinstance(out, _TaskFailed):
                raise out.error
            if isinstance(out, BaseException):  # a task Dask cancelled
                raise out
            return super().retrieve_result_callback(out)

    return OneJobPerTaskDaskBackend


class _NoWorkers(LauncherError):
    """The Dask cluster has had no worker for too long: nothing can run the jobs."""


def _watch_workers(
    client: Any, backend: Any, address: str, limit: float, stop: threading.Event
) -> None:
    """Fail the waiting tasks if the cluster keeps no worker for ``limit`` seconds.

    Workers that cannot unpickle a task (the launcher is not installed there)
    leave the cluster; with none left the tasks would wait for ever.
    """
    since: Optional[float] = None
    while not stop.wait(0.5):
        try:
            workers = len(client.nthreads())
        except Exception:  # noqa: BLE001 - the scheduler is unreachable: no worker either
            workers = 0
        if workers:
            since = None
            continue
        since = since if since is not None else time.monotonic()
        if time.monotonic() - since >= limit:
            backend.fail_pending(
                _NoWorkers(
                    f"The Dask cluster at {address} has had no worker for {limit:g}s "
                    f"(hydra.launcher.dask.connect_timeout) while jobs were waiting: its workers "
                    f"left or died. A worker that cannot unpickle a task (this launcher or the "
                    f"app not installed in its Python environment) leaves the cluster: see the "
                    f"workers' logs, install what they miss, and start them again."
                )
            )
            return


def _release_delivered(client: Any, delivered: Set[int]) -> None:
    """Let the cluster forget the results of jobs whose outcome the launcher has.

    joblib keeps the future of the last finished task while it waits for the
    next one, and Dask computes a result it still holds for a client again when
    the worker keeping it dies: a job that completed would run a second time.
    """
    from distributed import Future

    for _ in range(3):
        try:
            keys = [
                key
                for key, state in list(client.futures.items())
                if state.status == "finished" and _job_of_task(key) in delivered
            ]
            break
        except RuntimeError:  # changed size while the client's thread updated it: look again
            continue
    else:
        return
    if keys:
        client.cancel([Future(key, client) for key in keys])


def _job_of_task(key: Any) -> Optional[int]:
    match = _TASK_NAME.search(str(key))
    return int(match.group(1)) if match else None


class DaskPool:
    """Jobs as tasks of a Dask cluster, through joblib's dask backend (one job per task)."""

    def __init__(self, options: LaunchOptions, connection: _DaskConnection) -> None:
        self._options = options
        self._connection = connection
        self.n_workers = connection.cluster.n_workers
        self._generator: Optional[Any] = None
        self._marker_dirs: Set[str] = set()

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from concurrent.futures import CancelledError

        from distributed import KilledWorker
        from joblib import Parallel, delayed, parallel_config

        from ._backends import PoolBroken

        client = self._connection.client
        _check_dask_threads(client)
        specs = [replace(spec, max_worker_deaths=MAX_WORKER_DEATHS) for spec in specs]
        self._marker_dirs.update(spec.marker_dir for spec in specs)
        dispatched: Set[int] = set()
        ended: Set[int] = set()

        def tasks() -> Iterator[Any]:
            for spec in specs:
                dispatched.add(spec.num)
                yield delayed(_JobTask(spec.num, dask=True))(spec)

        backend = _dask_backend_class()(client=client)
        stop_watch = threading.Event()
        watch = threading.Thread(
            target=_watch_workers,
            args=(
                client,
                backend,
                self._connection.cluster.address,
                self._options.dask.connect_timeout,
                stop_watch,
            ),
            name="dask-worker-watch",
            daemon=True,
        )
        with parallel_config(backend=backend):
            # One job per task, n_workers tasks at the scheduler: every task goes to
            # an idle worker, none waits behind a job that may kill its worker.
            parallel = Parallel(
                return_as="generator_unordered",
                verbose=self._options.verbose,
                pre_dispatch=self.n_workers,
                batch_size=1,
            )
            self._generator = parallel(tasks())
            watch.start()
            try:
                for outcome in self._generator:
                    ended.add(outcome.num)
                    _release_delivered(client, ended)
                    yield outcome
            except _NoWorkers as error:
                raise LauncherError(str(error)) from None
            except WorkerCannotRun as error:
                self._stop_running()
                raise LauncherError(str(error)) from None
            except ImportError as error:  # the task itself could not be unpickled there
                self._stop_running()
                raise LauncherError(_cannot_unpickle(error)) from None
            except CancelledError as error:  # Dask cancelled the tasks: the scheduler is gone
                reason = str(error).splitlines()[0]
                raise LauncherError(
                    f"The Dask cluster at {self._connection.cluster.address} cancelled the jobs' "
                    f"tasks ({reason}). The scheduler stopped, or this host lost its connection "
                    f"to it; jobs that completed are kept, hydra.launcher.resume=true runs the "
                    f"others once the cluster is back."
                ) from None
            except KilledWorker as error:
                # Only if the scheduler allows fewer deaths than MAX_WORKER_DEATHS:
                # the job it names fails; the others, stopped, run again.
                num = _job_of_task(error.task)
                stopped = self._stop_running()
                for spec in specs:
                    if spec.num in stopped:
                        attempts_path(spec.marker_dir, spec.num).unlink(missing_ok=True)
                in_flight: FrozenSet[int] = (
                    frozenset({num}) if num is not None else frozenset(dispatched - ended)
                )
                raise PoolBroken(
                    str(error),
                    in_flight=in_flight,
                    exit_codes="more times than the Dask scheduler allows (KilledWorker, "
                    f"distributed.scheduler.allowed-failures={error.allowed_failures})",
                ) from None
            finally:
                stop_watch.set()
                self._generator = None

    def _stop_running(self) -> Set[int]:
        """Stop the jobs of this launch still running on the cluster; their numbers.

        Returns once the scheduler has seen those workers go, so that no new task
        is sent to a worker about to die.
        """
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()  # joblib releases the tasks: those not started never will
        client = self._connection.client
        stopped: Set[int] = set()
        dying: Set[str] = set()
        for marker_dir in self._marker_dirs:
            try:
                answers = client.run(_stop_jobs_of, marker_dir, on_error="ignore")
            except Exception as error:  # noqa: BLE001 - the cluster may be gone already
                log.warning(f"Could not reach the Dask workers to stop running jobs: {error}")
                continue
            for address, nums in answers.items():
                if nums:
                    stopped.update(nums)
                    dying.add(address)
        deadline = time.monotonic() + STOP_WAIT_S
        while dying and time.monotonic() < deadline:
            try:
                dying &= set(client.nthreads())
            except Exception:  # noqa: BLE001
                break
            time.sleep(0.1)
        return stopped

    def stop(self) -> None:
        """An interrupt: release the queued tasks and stop the running jobs.

        A cluster started here is closed; an external one keeps running, less the
        worker processes that were running this launch's jobs (their nannies restart them).
        """
        stopped = self._stop_running()
        if self._connection.local_cluster is not None:
            _close_dask(self._connection)  # and the workers it started with it
            return
        if stopped:
            log.warning(
                "Stopped jobs %s on the Dask cluster (their worker processes were killed)",
                ", ".join(f"#{num}" for num in sorted(stopped)),
            )

    def close(self) -> None:
        """The cluster stays up for the next batch; it is closed when the process exits."""


def _cannot_unpickle(error: ImportError) -> str:
    module = error.name or str(error)
    return (
        f"The workers cannot unpickle the launcher's task: they cannot import the module "
        f"{module!r} ({type(error).__name__}: {error}). Install this launcher "
        f"(pip install hydra-joblib-launcher), the app and the modules it imports in the "
        f"workers' Python environment on every worker host, then run again."
    )


def _close_dask(connection: _DaskConnection) -> None:
    for key, known in list(_dask_connections.items()):
        if known is connection:
            del _dask_connections[key]
    try:
        connection.client.close()
        if connection.local_cluster is not None:
            connection.local_cluster.close()
    except Exception as error:  # noqa: BLE001 - closing at exit or after an interrupt
        log.debug("Closing the Dask client failed: %s", error)


# -- Ray -----------------------------------------------------------------------------


@dataclass
class _RayConnection:
    cluster: Cluster
    n_actors: int


_ray_state: Dict[str, Any] = {}  # "connection": the _RayConnection of this process


def _import_ray() -> Any:
    try:
        import ray
        from ray.util.joblib.ray_backend import RayBackend  # noqa: F401
    except ImportError as error:
        raise _missing_extra("ray", "ray", error) from None
    return ray


def _ray_connection(options: LaunchOptions, n_workers: int) -> _RayConnection:
    ray = _import_ray()
    settings = options.ray
    connection: Optional[_RayConnection] = _ray_state.get("connection")
    if connection is None or not ray.is_initialized():
        started_here = False
        if ray.is_initialized():  # the app's own Ray: use it, leave it as it is
            owned = False
            address = "(initialized by the app)"
        elif settings.address is None:
            # joblib runs a one-worker call in the calling process: a pool has two
            # actors at least, so Ray needs two CPUs (n_workers still bounds jobs at once).
            kwargs = {"include_dashboard": False, **dict(settings.init)}
            kwargs.setdefault("num_cpus", max(n_workers, 2))
            context = ray.init(**kwargs)
            owned = started_here = True
            address = str(getattr(context, "address_info", {}).get("gcs_address", "local"))
        else:
            _probe_ray_address(settings.address)
            try:
                context = ray.init(address=settings.address, **dict(settings.init))
            except Exception as error:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
                raise LauncherError(
                    f"Cannot reach the Ray cluster at hydra.launcher.ray.address="
                    f"{settings.address} ({type(error).__name__}: {error}). Check that the "
                    f"cluster runs (ray start --head) and that the address is right: "
                    f'"auto" on a cluster node, host:6379 or ray://host:10001.'
                ) from None
            owned = True  # a connection of ours: dropped at exit, the cluster keeps running
            address = settings.address
        if owned:
            atexit.register(_shutdown_ray)
        capacity = int(ray.cluster_resources().get("CPU", 0))
        cluster = Cluster("ray", address, n_workers, capacity, started_here)
        connection = _RayConnection(cluster, max(n_workers, 2))
        _ray_state["connection"] = connection
    capacity = int(ray.cluster_resources().get("CPU", 0))
    if connection.cluster.started_here:
        n_at_once = min(n_workers, capacity)
    else:  # n_jobs counts the CPUs of the cluster
        n_at_once = _n_at_once(options.n_jobs, capacity)
    if capacity < 2:
        raise LauncherError(
            f"The Ray cluster {connection.cluster.address} offers {capacity} CPU(s); backend=ray "
            f"needs 2 at least (joblib's Ray pool has two actors at least, one CPU each)."
        )
    connection.cluster = replace(connection.cluster, n_workers=n_at_once, capacity=capacity)
    connection.n_actors = min(max(n_at_once, 2), capacity)
    return connection


def _probe_ray_address(address: str) -> None:
    """Fail fast on a host:port nothing listens on: ray.init would retry for many minutes."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # "auto", "local": Ray finds the address itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise LauncherError(
            f"Cannot reach the Ray cluster at hydra.launcher.ray.address={address}: nothing "
            f"answers at {host}:{port} within {RAY_PROBE_TIMEOUT_S:g}s ({error}). Check that the "
            f"cluster runs (ray start --head --port {port}) and that the address is right: "
            f'"auto" on a cluster node, host:6379 or ray://host:10001.'
        ) from None


def _not_about_context(record: logging.LogRecord) -> bool:
    # joblib hands every pool a multiprocessing context; Ray's pool warns that it
    # ignores it, once per process, about nothing the user set.
    return not record.getMessage().startswith("The 'context' argument is not supported")


@functools.lru_cache(maxsize=None)
def _ray_backend_class() -> Any:
    from ray.util.joblib.ray_backend import RayBackend

    logging.getLogger("ray.util.multiprocessing.pool").addFilter(_not_about_context)

    class StreamingRayBackend(RayBackend):  # type: ignore[misc,unused-ignore]
        # joblib turns generators off for multiprocessing pools (terminating one
        # from its own result-handler thread can deadlock); Ray's pool collects
        # results in threads of its own, so outcomes can stream as jobs end.
        supports_return_generator = True

        # Ray's pool closes by asking each actor to exit, a call Ray retries (and
        # reports as failed) on actors that may restart: kill them, as
        # Pool.terminate() does after that call anyway.
        def terminate(self) -> None:
            pool: Any = getattr(self, "_pool", None)
            self._pool = None
            if pool is not None:
                import ray

                for actor, _ in getattr(pool, "_actor_pool", ()):
                    ray.kill(actor, no_restart=True)
            self.reset_batch_stats()

    return StreamingRayBackend


def _ray_backend() -> Any:
    # An actor holds one CPU, so Ray spreads actors over the nodes by their
    # CPUs (zero-CPU actors would all land on one node). An actor that dies (a
    # crash, a job past its timeout) is restarted and its tasks retried: the job
    # counts the deaths itself and gives up after MAX_WORKER_DEATHS.
    remote_args = {
        "num_cpus": 1,
        "max_restarts": -1,
        "max_task_retries": MAX_WORKER_DEATHS + 1,
    }
    return _ray_backend_class()(ray_remote_args=remote_args)


class RayPool:
    """Jobs on the actors of Ray's joblib pool: one actor process per job at a time."""

    def __init__(self, options: LaunchOptions, connection: _RayConnection) -> None:
        self._options = options
        self._connection = connection
        self.n_workers = connection.cluster.n_workers
        self._generator: Optional[Any] = None

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from joblib import Parallel, delayed, parallel_config
        from ray.exceptions import RayError

        specs = [replace(spec, max_worker_deaths=MAX_WORKER_DEATHS) for spec in specs]
        n_actors = self._connection.n_actors
        with parallel_config(backend=_ray_backend()):
            # A task waits for its actor (round robin): n_workers in flight keeps
            # n_workers jobs running; n_actors is 2 at least (joblib would run a
            # one-actor pool in this process).
            parallel = Parallel(
                n_jobs=n_actors,
                return_as="generator_unordered",
                verbose=self._options.verbose,
                pre_dispatch=self.n_workers,
                batch_size=1,
            )
            self._generator = parallel(
                delayed(_JobTask(spec.num, dask=False))(spec) for spec in specs
            )
            try:
                yield from self._generator
            except WorkerCannotRun as error:
                raise LauncherError(str(error)) from None
            except ImportError as error:
                raise LauncherError(_cannot_unpickle(error)) from None
            except RayError as error:
                cause = getattr(error, "cause", None)
                if isinstance(cause, ImportError):
                    raise LauncherError(_cannot_unpickle(cause)) from None
                if isinstance(cause, WorkerCannotRun):
                    raise LauncherError(str(cause)) from None
                raise LauncherError(
                    f"The Ray cluster failed the launch: {type(error).__name__}: {error}"
                ) from None
            finally:
                self._generator = None

    def stop(self) -> None:
        """An interrupt: joblib kills the pool's actors (so the jobs); the cluster keeps running."""
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()

    def close(self) -> None:
        """Ray stays up for the next batch; it is shut down when the process exits."""


DistributedPool = Any  # DaskPool | RayPool


# -- end of the process --------------------------------------------------------------


def _shutdown_ray() -> None:
    """Disconnect from Ray; a local Ray started here stops with it, a cluster keeps running."""
    import ray

    _ray_state.pop("connection", None)
    ray.shutdown()
