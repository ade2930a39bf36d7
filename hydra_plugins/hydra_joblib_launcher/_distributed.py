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

import logging
import os
import re
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, List

from ._errors import LauncherConfigError, LauncherError
from ._job import JobOutcome, JobSpec, run_job_spec
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
        from ._dask import _dask_connection

        return _dask_connection(options, n_workers).cluster
    if options.backend == "ray":
        from ._ray import _ray_connection

        return _ray_connection(options, n_workers).cluster
    raise LauncherConfigError(f"hydra.launcher.backend={options.backend} is not a cluster backend")


def open_pool(options: LaunchOptions, *, n_workers: int) -> "DistributedPool":
    """The pool of ``options.backend``, on the cluster :func:`connect` reached (or reaches now)."""
    if options.backend == "dask":
        from ._dask import DaskPool, _dask_connection

        return DaskPool(options, _dask_connection(options, n_workers))
    from ._ray import RayPool, _ray_connection

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


def _cannot_unpickle(error: ImportError) -> str:
    module = error.name or str(error)
    return (
        f"The workers cannot unpickle the launcher's task: they cannot import the module "
        f"{module!r} ({type(error).__name__}: {error}). Install this launcher "
        f"(pip install hydra-joblib-launcher), the app and the modules it imports in the "
        f"workers' Python environment on every worker host, then run again."
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


_ONE_THREAD = (
    "Start each Dask worker with one thread: dask worker <scheduler address> --nthreads 1 "
    "(start several workers per host for several jobs at once: --nworkers N)."
)


DistributedPool = Any  # DaskPool | RayPool
