"""backend=dask, the pool: jobs as tasks of a Dask cluster, through joblib's dask backend.

    DaskPool.run(specs) ─ joblib.Parallel(backend=OneJobPerTaskDaskBackend) ─▶ JobTask(spec) on a worker
                        ◀─ JobOutcome, as each job ends
      a watcher thread fails the waiting tasks when the cluster keeps no worker;
      delivered results are released, so a dying worker never makes Dask run them again

The cluster itself (address or embedded LocalCluster) is :mod:`._dask_cluster`;
what Dask and Ray share is :mod:`._cluster`.
"""

import functools
import logging
import threading
import time
from dataclasses import replace
from typing import Any, Dict, FrozenSet, Iterator, Optional, Sequence, Set

from ._cluster import (
    JobTask,
    cluster_thread_limits,
    job_of_task,
    stop_jobs_of,
    worker_deaths_allowed,
)
from ._dask_cluster import ONE_THREAD, DaskConnection, check_threads, close_dask
from ._dask_devices import GPU, gpu_workers
from ._errors import LauncherError, PoolBroken, WorkerCannotRun
from ._options import LaunchOptions
from ._outcome import JobOutcome, cannot_unpickle
from ._plan import JobSpec

log = logging.getLogger(__name__)

# How long to wait for the scheduler to see the workers stopped by an interrupt go.
STOP_WAIT_S = 10.0


def refuse_threaded_worker(where: str) -> None:
    """Run in the worker before a job: a worker with several threads could run two jobs at once."""
    from distributed import get_worker

    try:
        threads = int(get_worker().state.nthreads)
    except ValueError:  # not in a Dask worker
        return
    if threads > 1:
        raise WorkerCannotRun(
            f"The Dask worker in {where} runs {threads} threads, so it could run two "
            f"Hydra jobs at once in one process (they would share logging, the working "
            f"directory and Hydra's global state). {ONE_THREAD}"
        )


class _TaskFailed:
    """A task that failed outside the job: Dask gave up on it, or the cluster is gone."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


# Longer than our other functions: it is one class body, made in a function so
# that joblib's dask backend (and distributed) are imported only when used.
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
    client: Any,
    backend: Any,
    address: str,
    limit: float,
    stop: threading.Event,
    gpus: Optional[float] = None,
) -> None:
    """Fail the waiting tasks if the cluster keeps no worker for ``limit`` seconds.

    Workers that cannot unpickle a task (the launcher is not installed there)
    leave the cluster; with none left the tasks would wait for ever. With
    ``gpus`` (gpus_per_job), only workers offering that many GPUs count.
    """
    since: Optional[float] = None
    what = "worker" if gpus is None else f"worker offering {GPU}={gpus:g}"
    while not stop.wait(0.5):
        try:
            workers = len(client.nthreads() if gpus is None else gpu_workers(client, gpus))
        except Exception:  # noqa: BLE001 - the scheduler is unreachable: no worker either
            workers = 0
        if workers:
            since = None
            continue
        since = since if since is not None else time.monotonic()
        if time.monotonic() - since >= limit:
            backend.fail_pending(
                _NoWorkers(
                    f"The Dask cluster at {address} has had no {what} for {limit:g}s "
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
                if state.status == "finished" and job_of_task(key) in delivered
            ]
            break
        except RuntimeError:  # changed size while the client's thread updated it: look again
            continue
    else:
        return
    if keys:
        client.cancel([Future(key, client) for key in keys])


class DaskPool:
    """Jobs as tasks of a Dask cluster, through joblib's dask backend (one job per task)."""

    def __init__(self, options: LaunchOptions, connection: DaskConnection) -> None:
        self._options = options
        self._connection = connection
        self.n_workers = connection.cluster.n_workers
        self._generator: Optional[Any] = None
        self._marker_dirs: Set[str] = set()

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from joblib import Parallel, delayed, parallel_config

        client = self._connection.client
        check_threads(client)
        limits = cluster_thread_limits(self._options, self._connection.cluster)
        specs = [
            replace(
                spec,
                max_worker_deaths=worker_deaths_allowed(self._options, spec),
                process_setup=limits,
            )
            for spec in specs
        ]
        self._marker_dirs.update(spec.marker_dir for spec in specs)
        dispatched: Set[int] = set()
        ended: Set[int] = set()

        def tasks() -> Iterator[Any]:
            for spec in specs:
                dispatched.add(spec.num)
                yield delayed(JobTask(spec.num, check=refuse_threaded_worker))(spec)

        gpus = self._options.gpus_per_job
        # gpus_per_job: each task waits for a worker offering the resource GPU (joblib
        # passes the backend's further keywords to every Client.submit).
        resources = {"resources": {GPU: gpus}} if gpus is not None else {}
        backend = _dask_backend_class()(client=client, **resources)
        stop_watch = threading.Event()
        watch = threading.Thread(
            target=_watch_workers,
            args=(
                client,
                backend,
                self._connection.cluster.address,
                self._options.dask.connect_timeout,
                stop_watch,
                gpus,
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
            except Exception as error:  # noqa: BLE001 - _settle says what each means
                raise self._settle(error, specs, in_flight=frozenset(dispatched - ended)) from None
            finally:
                stop_watch.set()
                self._generator = None

    def _settle(
        self, error: Exception, specs: Sequence[JobSpec], *, in_flight: FrozenSet[int]
    ) -> Exception:
        """What ``run`` raises for ``error``: a LauncherError to show, or PoolBroken to settle."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        if isinstance(error, _NoWorkers):
            return LauncherError(str(error))
        if isinstance(error, WorkerCannotRun):
            self._stop_running()
            return LauncherError(str(error))
        if isinstance(error, ImportError):  # the task itself could not be unpickled there
            self._stop_running()
            return LauncherError(cannot_unpickle(error))
        if isinstance(error, CancelledError):  # Dask cancelled the tasks: the scheduler is gone
            reason = str(error).splitlines()[0] if str(error) else "cancelled"
            return LauncherError(
                f"The Dask cluster at {self._connection.cluster.address} cancelled the jobs' "
                f"tasks ({reason}). The scheduler stopped, or this host lost its connection "
                f"to it; jobs that completed are kept, hydra.launcher.resume=true runs the "
                f"others once the cluster is back."
            )
        if isinstance(error, KilledWorker):
            # Only if the scheduler allows fewer deaths than the job (a scheduler of the user's):
            # the job it names fails; the others, stopped, run again.
            num = job_of_task(error.task)
            stopped = self._stop_running()
            for spec in specs:
                if spec.num in stopped:
                    spec.files.forget_starts()
            return PoolBroken(
                str(error),
                in_flight=frozenset({num}) if num is not None else in_flight,
                exit_codes="more times than the Dask scheduler allows (KilledWorker, "
                f"distributed.scheduler.allowed-failures={error.allowed_failures})",
            )
        return error

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
                answers = client.run(stop_jobs_of, marker_dir, on_error="ignore")
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
            close_dask(self._connection)  # and the workers it started with it
            return
        if stopped:
            log.warning(
                "Stopped jobs %s on the Dask cluster (their worker processes were killed)",
                ", ".join(f"#{num}" for num in sorted(stopped)),
            )
