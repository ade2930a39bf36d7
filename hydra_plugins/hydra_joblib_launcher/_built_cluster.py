"""backend=dask with ``dask.cluster``: a Dask cluster built by its class, once per multirun.

    dask.cluster = {_target_: dask_jobqueue.SLURMCluster, cores: 1, processes: 1, ...}
      build_cluster ─ get_class: a distributed Cluster class, or one clear error (nothing built)
                    ─ instantiate (Hydra's): the scheduler starts in this process, no worker yet
                    ─ refuse workers with more than one thread, with the fix for the class
                    ─ scale(n_jobs) or adapt(adapt_minimum, n_jobs)
                    ─ wait for the first worker: "k of n workers up", the queue's word when none come
      close_cluster ─ cluster.close(), then the cancel command (scancel, qdel) for every batch
                      job it submitted: at exit, after an interrupt, after an error

Hydra 1.3 would build a nested ``_target_`` node when it creates the launcher
(``_recursive_: false`` in the launcher's config stops that); Hydra 1.4 passes
it raw. Either way the node reaches the launcher as plain data, and only a
launch that needs the cluster builds it.

dask, distributed and dask_jobqueue are imported inside functions only.
"""

import logging
import re
import shutil
import signal
import subprocess
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from ._cluster import Cluster, engine_retries, missing_extra
from ._dask_client import start_client
from ._errors import LauncherConfigError, LauncherError
from ._options import LaunchOptions

log = logging.getLogger(__name__)

# How often the wait for the first worker says where it stands.
PROGRESS_EVERY_S = 10.0
# How long a cancel command (scancel, qdel) may take at exit.
CANCEL_TIMEOUT_S = 30.0

_NTHREADS = re.compile(r"--nthreads\s+(\d+)")
# Keeps a batch job's worker able to start processes of its own (data loaders, joblib):
# Dask workers are daemonic processes otherwise.
_NON_DAEMONIC = "export DASK_DISTRIBUTED__WORKER__DAEMON=False"


@dataclass(frozen=True)
class BuiltCluster:
    """A cluster built here: its object (closed with :func:`close_cluster`), client and summary."""

    cluster: Any
    client: Any
    summary: Cluster


def build_cluster(options: LaunchOptions, n_workers: int) -> BuiltCluster:
    """Build ``dask.cluster``, size it for ``n_workers`` jobs at once and wait for a worker."""
    settings = options.dask
    assert settings.cluster is not None, "only called with dask.cluster set"
    node = dict(settings.cluster)
    target = str(node.pop("_target_"))
    cls = _cluster_class(target)
    jobqueue = _is_jobqueue(cls)
    if jobqueue:
        prologue = list(node.get("job_script_prologue") or [])
        node["job_script_prologue"] = [*prologue, _NON_DAEMONIC]
    cluster = _instantiate(target, node, allowed_failures=engine_retries(options) + 1)
    try:
        _refuse_threads(cluster, cls, jobqueue=jobqueue)
        if settings.adapt:
            # Dask's default (target_duration 5s) asks for workers to get the queued work
            # done in 5 s: the few tasks joblib keeps at the scheduler (n_jobs, one per job)
            # would get one worker. A tiny target asks for one worker per task, up to n_jobs.
            cluster.adapt(
                minimum=min(settings.adapt_minimum, n_workers),
                maximum=n_workers,
                target_duration="1ms",
            )
        else:
            cluster.scale(n_workers)
        client = start_client(
            cluster, security=getattr(cluster, "security", None), set_as_default=False
        )
        try:
            wanted = min(settings.adapt_minimum, n_workers) if settings.adapt else n_workers
            if wanted:
                _wait_for_workers(client, cluster, cls.__name__, wanted=wanted, options=options)
        except BaseException:
            client.close()
            raise
    except BaseException:  # an error, an interrupt while waiting: nothing stays in the queue
        close_cluster(cluster)
        raise
    address = str(cluster.scheduler_address)
    summary = Cluster("dask", address, n_workers, n_workers, True, kind=f"Dask {cls.__name__}")
    return BuiltCluster(cluster, client, summary)


def _cluster_class(target: str) -> Any:
    from hydra.utils import get_class

    try:
        import distributed.deploy
    except ImportError as error:
        raise missing_extra("dask", "dask", error) from None
    key = f"hydra.launcher.dask.cluster._target_={target!r}"
    try:
        with _sigint_kept():
            cls = get_class(target)
    except Exception as error:  # noqa: BLE001 - ImportError, ValueError, InstantiationException
        cause = error.__cause__ or error
        extra = " (pip install \"hydra-joblib-launcher[slurm]\")" if "jobqueue" in target else ""
        raise LauncherConfigError(
            f"{key} cannot be found: {type(cause).__name__}: {cause}. Name an installed Dask "
            f"cluster class, such as dask_jobqueue.SLURMCluster{extra}, dask_jobqueue.PBSCluster "
            f"or distributed.LocalCluster."
        ) from None
    if not issubclass(cls, distributed.deploy.Cluster):
        raise LauncherConfigError(
            f"{key} names {cls.__module__}.{cls.__qualname__}, which is not a Dask cluster "
            f"(a subclass of distributed.deploy.Cluster). Name a cluster class, such as "
            f"dask_jobqueue.SLURMCluster, dask_jobqueue.PBSCluster or distributed.LocalCluster."
        )
    return cls


@contextmanager
def _sigint_kept() -> Iterator[None]:
    """Keep this process's SIGINT handler across the import of a cluster's module.

    dask_jobqueue.runner (imported with dask_jobqueue, seen in 0.9.0) sets SIGINT to
    ``sys.exit()`` when imported: Ctrl-C would end the sweep with exit status 0, as if
    it had succeeded. The launcher's interrupt handling (KeyboardInterrupt) stays.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is not handler and handler is not None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, handler)


def _is_jobqueue(cls: Any) -> bool:
    try:
        with _sigint_kept():
            from dask_jobqueue import JobQueueCluster
    except ImportError:
        return False
    return issubclass(cls, JobQueueCluster)


def _instantiate(target: str, node: Dict[str, Any], *, allowed_failures: int) -> Any:
    import inspect

    import dask
    from hydra.utils import instantiate

    # Its INFO lines (workers joining, leaving, jobs submitted) would drown the sweep's own log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("dask_jobqueue").setLevel(logging.WARNING)
    # Workers a LocalCluster's nannies start may start processes of their own; read at
    # every (re)start of a worker, so set for the process (the cluster is closed at exit).
    dask.config.set({"distributed.worker.daemon": False})
    extra: Dict[str, Any] = {}
    # Hydra 1.4 asks who allows a config to name code to run: this key is the user's own.
    if "_execution_whitelist_" in inspect.signature(instantiate).parameters:
        extra["_execution_whitelist_"] = target
    # The scheduler (in this process) gives up on a task only after the job has given up itself.
    # (Dask counts the failures past which it gives up: one more than the job allows.)
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        try:
            return instantiate({"_target_": target, **node}, _convert_="all", **extra)
        except Exception as error:  # noqa: BLE001 - whatever the class raises on bad arguments
            cause = error.__cause__ or error
            message = (
                f"hydra.launcher.dask.cluster could not build {target}: "
                f"{type(cause).__name__}: {str(cause).rstrip('.')}. Check its keyword "
                f"arguments against the class's documentation."
            )
    # dask-jobqueue 0.9 checks its arguments after Cluster.__init__, so a refused one is
    # half-built and says "unclosed cluster" (a ResourceWarning, an error under -Werror)
    # when it is collected, at exit at the latest: the launcher refused it, nothing to add.
    warnings.filterwarnings("ignore", message="unclosed cluster", category=ResourceWarning)
    raise LauncherConfigError(message)


def _refuse_threads(cluster: Any, cls: Any, *, jobqueue: bool) -> None:
    """Refuse a cluster whose workers would run several threads, before any is asked for.

    (The caller closes the cluster.)
    """
    threads: Optional[int] = None
    if jobqueue:
        match = _NTHREADS.search(str(cluster.job_script()))
        threads = int(match.group(1)) if match else None
    else:
        counts = [int(spec.get("options", {}).get("nthreads", 1)) for spec in _worker_specs(cluster)]
        threads = max(counts, default=None)
    if threads is None or threads <= 1:
        return
    if jobqueue:
        fix = (
            "set processes equal to cores (cores: 1, processes: 1 for one single-threaded "
            "worker per batch job; cores: 4, processes: 4 for four in one job)"
        )
    else:
        fix = "set threads_per_worker: 1 (and processes: true)"
    raise LauncherConfigError(
        f"hydra.launcher.dask.cluster ({cls.__name__}) would start workers with {threads} "
        f"threads, and backend=dask runs each Hydra job alone in a worker process (two jobs "
        f"in one process would share logging, the working directory and Hydra's global "
        f"state); {fix}."
    )


def _worker_specs(cluster: Any) -> List[Mapping[str, Any]]:
    """The worker specs of a SpecCluster (LocalCluster), as far as it has them."""
    specs: List[Mapping[str, Any]] = []
    for spec in [getattr(cluster, "new_spec", None), *getattr(cluster, "worker_spec", {}).values()]:
        if isinstance(spec, Mapping):
            specs.append(spec)
    return specs


def _wait_for_workers(
    client: Any, cluster: Any, name: str, *, wanted: int, options: LaunchOptions
) -> None:
    """Return once a worker is up, saying how many are; raise past ``dask.worker_timeout``."""
    timeout = options.dask.worker_timeout
    started = time.monotonic()
    said = started
    while True:
        up = len(client.nthreads())
        elapsed = time.monotonic() - started
        if up:
            if elapsed >= 1.0:
                log.info(f"{name}: {up} of {wanted} workers up after {elapsed:.0f}s")
            return
        if timeout is not None and elapsed > timeout:
            raise LauncherError(
                f"{name} has no worker after {timeout:g}s (hydra.launcher.dask.worker_timeout): "
                f"{queue_state(cluster)}. Check the cluster's keyword arguments (queue or "
                f"partition, account, walltime, memory) against what the queue allows, or "
                f"wait longer (dask.worker_timeout=null waits as long as the queue takes)."
            )
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            log.info(
                f"{name}: 0 of {wanted} workers up after {elapsed:.0f}s; {queue_state(cluster)}"
            )
        time.sleep(0.2)


def batch_jobs(cluster: Any) -> List[str]:
    """The ids of the batch jobs ``cluster`` submitted and still holds (dask-jobqueue's)."""
    ids = []
    for job in list(getattr(cluster, "workers", {}).values()):
        job_id = getattr(job, "job_id", None)
        if job_id:
            ids.append(str(job_id))
    return ids


def queue_state(cluster: Any) -> str:
    """What the queue says of the cluster's batch jobs: SLURM's state and pending reason."""
    ids = batch_jobs(cluster)
    if not ids:
        return "no batch job submitted yet (look for errors of the submit command above)"
    squeue = shutil.which("squeue")
    if squeue is None or _cancel_command(cluster) != "scancel":
        return f"batch jobs {', '.join(ids)} submitted"
    try:
        out = subprocess.run(
            [squeue, "-h", "-o", "%i %T %r", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"batch jobs {', '.join(ids)} submitted (squeue: {error})"
    states = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    shown = [f"job {s[0]} {s[1]} ({s[2] if len(s) > 2 else '-'})" for s in states if len(s) >= 2]
    return "squeue: " + ("; ".join(shown) if shown else f"jobs {', '.join(ids)} not in the queue")


def _cancel_command(cluster: Any) -> Optional[str]:
    job_cls = getattr(cluster, "job_cls", None)
    command = getattr(job_cls, "cancel_command", None)
    return str(command) if command else None


def close_cluster(cluster: Any) -> None:
    """Close ``cluster`` and cancel every batch job it submitted, whatever close() managed."""
    ids = batch_jobs(cluster)
    command = _cancel_command(cluster)
    try:
        cluster.close()
    except Exception as error:  # noqa: BLE001 - closing at exit or after an interrupt
        log.debug("Closing the Dask cluster failed: %s", error)
    _remove_worker_credentials(cluster)
    if ids and command:
        _cancel(command.split(), ids)


def _remove_worker_credentials(cluster: Any) -> None:
    """Close (and so delete) the TLS files dask-jobqueue wrote for its workers (``security: true``).

    dask-jobqueue (seen in 0.9.0) keeps them open as ``_job_<key>`` temporary files for
    the cluster's life and never closes them: at exit each would be an "unclosed file"
    ResourceWarning, and the credentials would stay in shared_temp_directory until then.
    """
    for name, value in list(vars(cluster).items()):
        if name.startswith("_job_") and callable(getattr(value, "close", None)):
            try:
                value.close()
            except OSError as error:
                log.debug("Removing %s failed: %s", name, error)


def _cancel(command: Sequence[str], ids: Sequence[str]) -> None:
    try:  # jobs that ended already make the command complain: nothing to tell
        subprocess.run(
            [*command, *ids],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=CANCEL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning(f"Could not cancel the batch jobs {', '.join(ids)} ({' '.join(command)}): {error}")
