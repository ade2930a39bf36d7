"""What the cluster backends (_dask, _ray) share; it imports neither of them.

    launcher process                                   cluster worker process (one job at a time)
    ────────────────                                   ──────────────────────
    connect once per process (cached) ─▶ Dask scheduler / Ray cluster
      embedded LocalCluster or local Ray if no address  (started here, closed at exit)
    DaskPool / RayPool.run(specs)
      joblib.Parallel(backend=dask | ray,              JobTask(spec) ─▶ run_job_spec(spec)
                      return_as="generator_unordered") ──▶ reads the context file from the
      ◀── JobOutcome, as each job ends ─────────────────  shared sweep dir, writes outputs there

The cluster does the scheduling: there is no queue or RPC of ours. What the
launcher adds is what Hydra jobs need:

* one job per worker process at a time (Hydra jobs change process-wide state):
  Dask workers must run one thread (checked at connect, at every batch, and by
  the job itself); Ray's joblib pool runs one task at a time per actor process;
* a job whose worker dies is re-run by the cluster (Dask reschedules the task,
  Ray restarts the actor and retries); the job counts its own starts
  (``JobSpec.max_worker_deaths``: one, and one more per retry left when
  ``retry_on`` names crash) and then ends FAILED on its next start instead of
  killing more workers. A job past its
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

import os
import re
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ._errors import LauncherConfigError, WorkerCannotRun
from ._options import LaunchOptions
from ._outcome import STOPPED, JobOutcome, cannot_run
from ._plan import JobSpec
from ._processes import ProcessSetup, limits_only, thread_limits
from ._run import run_job_spec, stop_running_job


def worker_deaths_allowed(options: LaunchOptions, spec: JobSpec) -> int:
    """Deaths of its worker after which a job gives up (FAILED) instead of running again."""
    if "crash" not in options.retry_on:
        return 1
    return max(options.retries + 2 - spec.attempt, 1)


def engine_retries(options: LaunchOptions) -> int:
    """How often the cluster may re-run a task whose worker died: more than any job allows itself.

    So the job's own count decides (the same count as on the local backends),
    and a job that was only queued on a worker that died runs again.
    """
    return options.retries + 2


def cluster_thread_limits(options: LaunchOptions, cluster: "Cluster") -> Optional[ProcessSetup]:
    """The thread limits of a job on ``cluster``, set as it starts (see _processes.as_launched).

    On a cluster started here (the embedded LocalCluster, a local Ray), the jobs
    share this machine: each gets its share, as on loky (joblib's rule, or
    ``inner_max_num_threads``). On another machine, ``inner_max_num_threads`` if
    given; else the cluster's own (Dask's nannies and Ray set 1 thread per worker).
    """
    if cluster.started_here and not cluster.kind:
        return limits_only(thread_limits(options, cluster.n_workers))
    if options.inner_max_num_threads is not None:
        return limits_only(thread_limits(options, 1))
    return None


INSTALL = 'pip install "hydra-joblib-launcher[{extra}]"'
TASK_NAME = re.compile(r"hydra_job_(\d+)")


@dataclass(frozen=True)
class Cluster:
    """Where a distributed launch runs, for the launch log line."""

    backend: str
    address: str
    n_workers: int  # jobs at once: n_jobs as the cluster can serve it
    capacity: int  # single-threaded workers (Dask) or CPUs (Ray) the cluster offers
    started_here: bool
    kind: str = ""  # a cluster built from dask.cluster: "Dask SLURMCluster"

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
        if self.kind:
            what, unit = self.kind, ("worker", "workers")
        return (
            f"{what} {self.address} ({_count(self.capacity, *unit)}, "
            f"{_count(self.n_workers, 'job', 'jobs')} at once)"
        )


def _count(n: int, one: str, many: str) -> str:
    """'1 worker', '2 workers'."""
    return f"{n} {one if n == 1 else many}"


def n_at_once(n_jobs: int, capacity: int) -> int:
    """n_jobs counted on a cluster of ``capacity``: -1 all of it, -2 all but one, k at most k."""
    if n_jobs < 0:
        return max(capacity + 1 + n_jobs, 1)
    return max(min(n_jobs, capacity), 1)


def missing_extra(backend: str, extra: str, error: ImportError) -> LauncherConfigError:
    return LauncherConfigError(
        f"hydra.launcher.backend={backend} needs {error.name or extra}, which is not installed "
        f"here ({error}); install it with: {INSTALL.format(extra=extra)}"
    )


def job_of_task(key: object) -> Optional[int]:
    """The job number in a task's key or name (``hydra_job_<num>``), if any."""
    match = TASK_NAME.search(str(key))
    return int(match.group(1)) if match else None


# -- the worker side -----------------------------------------------------------------

# Per worker process: the jobs it runs right now (job number -> marker dir), so
# that an interrupted launch can find and stop its own jobs, and no other.
_running: Dict[int, str] = {}


class JobTask:
    """``run_job_spec`` for one job, named after it.

    Dask shows the name on its dashboard and puts it in the task's key, which is
    how a ``KilledWorker`` error tells which job it gave up on. ``check`` runs
    in the worker first and raises :class:`WorkerCannotRun` when the worker
    must not run a job (it is pickled by reference: a module-level function).
    """

    def __init__(self, num: int, *, check: Optional[Callable[[str], None]] = None) -> None:
        self.__name__ = f"hydra_job_{num}"
        self._check = check

    def __call__(self, spec: JobSpec) -> JobOutcome:
        where = f"host {socket.gethostname()}, process {os.getpid()}"
        if self._check is not None:
            self._check(where)
        _running[spec.num] = spec.marker_dir
        try:
            return run_job_spec(spec)
        except Exception as error:  # noqa: BLE001 - run_job_spec raises only before the job starts
            raise WorkerCannotRun(cannot_run(spec, error, where)) from None
        finally:
            _running.pop(spec.num, None)


def stop_jobs_of(marker_dir: str) -> List[int]:
    """Run on every worker: kill this worker process if it runs a job of the launch ``marker_dir``.

    Threads cannot be stopped from outside, so the process goes, as it does for a
    job past its timeout; a worker with a nanny is restarted. The processes the
    job started go first (the worker's death would orphan them). Returns the job
    numbers it will stop; the kill comes a moment later, after the answer is sent.
    """
    mine = [num for num, where in list(_running.items()) if where == marker_dir]
    if mine:
        threading.Timer(0.2, _stop_and_die).start()
    return mine


def _stop_and_die() -> None:
    try:
        stop_running_job(STOPPED)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
