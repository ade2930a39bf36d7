"""The worker side: run one JobSpec the way Hydra's basic launcher runs a job.

    run_job_spec(spec)
      ├─ settled before it starts? (a cluster re-ran a job that already ended, timed out or died too often)
      ├─ notes that it started (JobFiles): from now on a death of this process is this job's
      ├─ load_context (once per process) ─▶ Hydra's global state
      ├─ JobTree: what runs below this process before the job (see _tree)
      ├─ memory_watch (its peak; its limit) ─▶ time_limit ─▶ compose the job's config
      │      ─▶ hydra.core.utils.run_job(task): the task first notes where it runs (JobFiles)
      ├─ the processes the job started and left running: stopped, named in its log
      ├─ over its memory limit: FAILED (MemoryLimitExceeded), whatever the task did
      └─ JobOutcome: plain data, the JobReturn pickled (its configs apart),
         kept in the job dir (_durable) before it is returned

Never raises for anything the job does: a failing task gives a FAILED outcome.
Only the death of the process itself is left to the supervisor.
"""

import dataclasses
import functools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import TaskFunction
from omegaconf import DictConfig, open_dict

from ._digest import config_view, digest
from ._durable import forget, keep, recover
from ._errors import JobTimeout, MemoryLimitExceeded, RemoteJobError
from ._jobfiles import append_to_log
from ._limits import time_limit
from ._memory import memory_watch
from ._outcome import (
    ENDED,
    OVER_MEMORY,
    TIMED_OUT,
    JobOutcome,
    death_error,
    died_too_often,
    failed_outcome,
    memory_error,
    stopped_processes,
)
from ._plan import JobSpec, SharedContext, config_composed_ahead, load_context
from ._processes import as_launched, bind_main
from ._result import devices_seen, outcome_of
from ._tree import TERM_GRACE_S, JobTree, become_subreaper

# A job over its memory limit: how long the processes it started get to exit
# after SIGTERM (memory grows while they take their time).
MEMORY_STOP_GRACE_S = 0.5

log = logging.getLogger(__name__)


def run_job_spec(spec: JobSpec, *, long_lived: bool = True) -> JobOutcome:
    """Run one job and report how it ended.

    ``long_lived``: this process runs job after job (loky, Dask, Ray workers),
    not one job alone (a fresh process).
    """
    started = time.time()
    settled = _settled_before_start(spec, started)
    if settled is not None:
        return settled
    spec.files.note_started({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    context = load_context(spec.context_file, long_lived=long_lived)
    setup_globals()
    where_logged: Dict[str, Any] = {}
    become_subreaper()  # what the job's processes leave orphaned stays below this process
    processes = JobProcesses(spec, where_logged)
    digest_of: Dict[str, str] = {}
    with memory_watch(
        spec,
        processes=processes.tree.processes,
        stop_processes=lambda: processes.stop(OVER_MEMORY, grace_s=MEMORY_STOP_GRACE_S),
    ) as usage:
        try:
            ret = _run_task(spec, context, processes, where_logged, digest_of)
        except MemoryLimitExceeded as error:  # raised as the task's own handling ended
            ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
            ret._return_value = error
    ret = _over_memory(spec, ret, where_logged)
    attempts = spec.attempt + max(spec.files.starts() - 1, 0)  # and the cluster's re-runs
    if spec.max_worker_deaths is not None:
        spec.files.forget_starts()
    outcome = outcome_of(spec, ret, started=started, where_logged=where_logged)
    outcome = dataclasses.replace(
        outcome,
        config_digest=digest_of.get("config"),
        max_rss_bytes=usage.max_rss_bytes,
        cpu_s=usage.cpu_s,
        attempts=attempts,
    )
    return keep(spec, outcome)


def _run_task(
    spec: JobSpec,
    context: SharedContext,
    processes: "JobProcesses",
    where_logged: Dict[str, Any],
    digest_of: Dict[str, str],
) -> JobReturn:
    """Hydra's job sequence for ``spec``; a FAILED JobReturn for whatever it raises."""
    ret: Optional[JobReturn] = None
    try:
        task_function = _task_of(context, spec)  # the script's errors fail the job
        with time_limit(spec, before_kill=lambda: processes.stop(TIMED_OUT)):
            config = _sweep_config(context, spec)
            digest_of["config"] = digest(config_view(config))  # before run_job adds run-time facts
            ret = run_job(
                hydra_context=context.hydra_context,
                task_function=_announced(task_function, spec, where_logged),
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
    except Exception as error:  # noqa: BLE001 - raised outside the task: config, callbacks
        ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
        ret._return_value = error
    except (KeyboardInterrupt, SystemExit) as error:
        # The task's sys.exit() or KeyboardInterrupt fails this job alone; the sweeper
        # re-raises it. Hydra 1.4 ran the end callbacks and hung the JobReturn on the
        # exception, which then cannot be pickled: a fresh one goes back.
        shown = f"{type(error).__name__}({', '.join(map(repr, error.args))})"
        ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
        try:
            ret._return_value = type(error)(*error.args)
        except Exception:  # noqa: BLE001 - a subclass that takes other arguments
            ret._return_value = RemoteJobError(shown)
        _to_job_log_file(f"Job #{spec.num} failed: {shown}")
    finally:
        timed_out = ret is not None and isinstance(ret._return_value, JobTimeout)
        processes.stop(TIMED_OUT if timed_out else ENDED)
    if ret is None:  # cannot be: every way out of the try sets it
        raise RuntimeError(f"job #{spec.num} ended without a JobReturn")
    return ret


def _over_memory(spec: JobSpec, ret: JobReturn, where_logged: Dict[str, Any]) -> JobReturn:
    """``ret``, FAILED with MemoryLimitExceeded if the job went over its memory limit (and said so)."""
    noted = spec.files.over_memory()
    if noted is None:
        return ret
    error = memory_error(spec, limit=int(noted.get("limit", 0)), peak=int(noted.get("peak", 0)))
    _, log_file = where_logged.get("paths") or (None, None)
    _warn(str(error), log_file)
    ret.status = JobStatus.FAILED
    ret._return_value = error
    return ret


def _task_of(context: SharedContext, spec: JobSpec) -> TaskFunction:
    """The task, in the process a plain run of the app would give it (local pools)."""
    if spec.process_setup is None:
        return context.task()
    as_launched(spec.process_setup)
    task_function = context.task()
    if spec.process_setup.plain_run:
        bind_main(task_function)
    return task_function


class JobProcesses:
    """The processes a job starts in this process; those it leaves running are stopped and named.

    The job running in this process is :data:`running_job` meanwhile, so that
    a worker told to stop (a cluster's interrupt) stops them first.
    """

    def __init__(self, spec: JobSpec, where_logged: Dict[str, Any]) -> None:
        self.spec = spec
        self.tree = JobTree()
        self._where_logged = where_logged
        running_job[:] = [self]

    def stop(self, how: str, *, grace_s: float = TERM_GRACE_S) -> None:
        """Stop what the job left running; say so in the job's log."""
        stopped = self.tree.stop(grace_s)  # one caller at a time: a second finds nothing left
        if stopped:
            _, log_file = self._where_logged.get("paths") or (None, None)
            _warn(stopped_processes(self.spec.num, how, stopped), log_file)
        if running_job and running_job[0] is self:
            running_job.clear()


# Per process: the job running now (at most one: Hydra jobs own their process).
running_job: List[JobProcesses] = []


def stop_running_job(how: str) -> None:
    """Stop the processes of the job this process runs, if any (before the process is killed)."""
    for job in list(running_job):
        job.stop(how)


def _settled_before_start(spec: JobSpec, started: float) -> Optional[JobOutcome]:
    """The outcome of a job re-run by the cluster after it already ended, else None."""
    files = spec.files
    if files.over_memory() is not None or (spec.timeout is not None and files.timed_out()):
        # its own watch killed its process: the cluster runs it again, and it ends here
        stopped = death_error(spec, "")
        return keep(spec, failed_outcome(spec, stopped, started=started, pid=os.getpid()))
    if spec.max_worker_deaths is None:
        return None
    ended = recover(spec)  # and its worker died before the cluster had its result
    if ended is not None:
        return ended
    deaths = files.starts()
    attempt = spec.attempt + deaths
    if deaths >= spec.max_worker_deaths:
        failed = failed_outcome(
            spec, died_too_often(spec, deaths), started=started, pid=os.getpid()
        )
        return keep(spec, dataclasses.replace(failed, attempts=attempt - 1))
    if deaths:
        files.warn_in_log(
            f"Job #{spec.num}: its worker process died on attempt {attempt - 1}; the cluster "
            f"runs it again (attempt {attempt}, hydra.launcher.retries)"
        )
    files.count_start()
    return None


def _note_started(spec: JobSpec) -> Tuple[Optional[str], Optional[str]]:
    """Note where the job runs and logs; returns its output dir and log file.

    Called as the task starts: Hydra has set the job's config and its logging up.
    """
    output_dir = str(HydraConfig.get().runtime.output_dir)
    forget(output_dir)  # before the note: a kept outcome in a noted dir is this run's
    log_file = next(
        (
            handler.baseFilename
            for handler in logging.getLogger().handlers
            if isinstance(handler, logging.FileHandler)
        ),
        None,
    )
    spec.files.note_started(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "output_dir": output_dir,
            "log_file": log_file,
            "devices": devices_seen(spec),
        }
    )
    return output_dir, log_file


def _announced(
    task_function: TaskFunction, spec: JobSpec, where_logged: Dict[str, Any]
) -> TaskFunction:
    """The task, preceded by a line in the job's own log saying where it runs.

    ``where_logged`` receives the job's output dir and log file.
    """

    # functools.wraps: Hydra's callbacks (on_job_start) see the user's function by name.
    @functools.wraps(task_function)
    def task(cfg: DictConfig) -> Any:
        where_logged["paths"] = _note_started(spec)
        where = f"host {socket.gethostname()}, process {os.getpid()}"
        if spec.device_env is not None:
            where += f", {spec.device_env}={os.environ.get(spec.device_env, '')}"
        _to_job_log_file(f"Job #{spec.num} running on {where}")
        return task_function(cfg)

    return task


def _to_job_log_file(message: str) -> None:
    """Log ``message`` to the job's log file only: the console keeps the lines users know."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _warn(message: str, log_file: Optional[str]) -> None:
    """A warning for the console and the job's log file (``log_file``, when the job logged).

    Another job's log file, still open in a reused worker, is left alone.
    """
    record = log.makeRecord(log.name, logging.WARNING, __file__, 0, message, (), None)
    written = False
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.handle(record)
        elif handler.baseFilename == log_file:
            handler.handle(record)
            written = True
    if not written and log_file is not None:
        append_to_log(log_file, message)


def _sweep_config(context: SharedContext, spec: JobSpec) -> DictConfig:
    config = config_composed_ahead(spec)  # by the launching process, or composed here
    if config is None:
        config = context.hydra_context.config_loader.load_sweep_config(
            context.config, list(spec.overrides)
        )
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{spec.num}"
        config.hydra.job.num = spec.num
        if spec.sweep_dir is not None:
            config.hydra.sweep.dir = spec.sweep_dir
    return config


# -- what a long-lived worker runs besides jobs (see also _processes.init_worker) --------


def warm_worker(meeting_dir: str, count: int, wait_s: float = 10.0) -> int:
    """Hold this worker until ``count`` workers hold one such task each (at most ``wait_s``).

    Unpickling this function imports what jobs need (Hydra, this module); the
    meeting makes ``count`` workers do so, not the first one ready ``count`` times.
    """
    Path(meeting_dir, str(os.getpid())).touch()
    deadline = time.monotonic() + wait_s
    while len(os.listdir(meeting_dir)) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()
