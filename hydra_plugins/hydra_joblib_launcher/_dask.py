"""backend=dask: jobs as tasks of a Dask cluster, through joblib's dask backend.

A scheduler given by address, or an embedded LocalCluster of single-threaded
worker processes on loopback, started once per process and closed at exit.
See _distributed.py for what the launcher adds to what Dask does.
"""

import atexit
import functools
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, FrozenSet, Iterator, Optional, Sequence, Set, Tuple

from ._distributed import (
    _ONE_THREAD,
    _TASK_NAME,
    MAX_WORKER_DEATHS,
    STOP_WAIT_S,
    Cluster,
    WorkerCannotRun,
    _cannot_unpickle,
    _JobTask,
    _missing_extra,
    _n_at_once,
    _stop_jobs_of,
)
from ._errors import LauncherError
from ._job import JobOutcome, JobSpec, attempts_path
from ._options import LaunchOptions

log = logging.getLogger(__name__)


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
