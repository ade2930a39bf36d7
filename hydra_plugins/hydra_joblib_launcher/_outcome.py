"""How a job ended, and every message that tells a user what happened to a job.

A worker builds a :class:`JobOutcome` when its job ends; the supervisor builds
one with :func:`failed_outcome` for a job that could not tell its own (its
process died, it overran its time limit, it never started). The messages of
those failures are made here and nowhere else.
"""

import dataclasses
import logging
import pickle
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from hydra.core.utils import JobReturn, JobStatus

from ._errors import (
    JobTimeout,
    MemoryLimitExceeded,
    RemoteJobError,
    ResultNotLoadable,
    ResultNotSendable,
    WorkerCrashed,
)
from ._lazy import LazyConfigs
from ._plan import JobSpec
from ._values import show_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    """How one job ended, as the worker (or the supervisor, for a crash) saw it."""

    num: int
    completed: bool
    payload: bytes  # the pickled JobReturn, without the two configs when ``configs`` has them
    started: float
    ended: float
    host: str
    pid: Optional[int]
    output_dir: Optional[str] = None
    log_file: Optional[str] = None
    error_type: Optional[str] = None
    error: Optional[str] = None
    devices: Optional[Tuple[str, ...]] = None
    configs: bytes = b""  # the JobReturn's (cfg, hydra_cfg), pickled apart from the rest
    return_type: Optional[str] = None  # the class of a completed job's return value, for messages
    return_file: Optional[str] = None  # where its process kept the whole JobReturn (_durable)
    config_digest: Optional[str] = None  # of what in its config decides what it does (_digest)
    max_rss_bytes: Optional[int] = None  # the peak memory of its processes together (_usage)
    cpu_s: Optional[float] = None  # CPU time of its process and the children it waited for
    attempts: int = 1  # how many times it started (retries, and a cluster's re-runs)
    value: Optional[float] = None  # a completed job's return value, when it is a number

    @property
    def duration_s(self) -> float:
        return self.ended - self.started

    def job_return(self) -> JobReturn:
        """The job's JobReturn; its configs are unpickled only when read (see :class:`LazyConfigs`)."""
        ret = pickle.loads(self.payload)
        if not isinstance(ret, JobReturn):
            raise TypeError(f"job #{self.num}'s outcome holds a {type(ret).__name__}")
        return LazyConfigs(ret, configs=self.configs) if self.configs else ret

    def stored_return(self) -> bytes:
        """The whole JobReturn as one pickle, for a file: it unpickles to a plain JobReturn."""
        if not self.configs:
            return self.payload
        return pickle.dumps(_Parts(self.payload, self.configs), protocol=pickle.HIGHEST_PROTOCOL)


class _Parts:
    """Pickles to the JobReturn that :func:`joined_return` makes of its two pickled parts."""

    def __init__(self, head: bytes, configs: bytes) -> None:
        self.head = head
        self.configs = configs

    def __reduce__(self) -> Any:
        return joined_return, (self.head, self.configs)


def joined_return(head: bytes, configs: bytes) -> JobReturn:
    """A stored result read back: the JobReturn and its configs in one object."""
    ret = pickle.loads(head)
    if not isinstance(ret, JobReturn):
        raise TypeError(f"a stored result holds a {type(ret).__name__}, not a JobReturn")
    ret.cfg, ret.hydra_cfg = pickle.loads(configs)
    return ret


def describe(error: Any) -> Tuple[str, str]:
    """An error's type name and first line, for the failure line and the manifest."""
    return type(error).__name__, str(error).split("\n", 1)[0]


def failed_outcome(
    spec: JobSpec,
    error: BaseException,
    *,
    started: float,
    pid: Optional[int] = None,
    devices: Optional[Tuple[str, ...]] = None,
) -> JobOutcome:
    """The outcome of a job that could not tell its own (its process died, or it never ran).

    What the job noted as its task started (process, start time, output dir,
    log file) fills in what the caller does not know.
    """
    ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
    ret._return_value = error
    error_type, text = describe(error)
    noted = spec.files.started()
    return JobOutcome(
        num=spec.num,
        completed=False,
        payload=pickle.dumps(ret),
        started=float(noted.get("started", started)),
        ended=time.time(),
        host=str(noted.get("host", socket.gethostname())),
        pid=noted.get("pid", pid),
        output_dir=noted.get("output_dir"),
        log_file=noted.get("log_file"),
        error_type=error_type,
        error=text,
        devices=devices,
        max_rss_bytes=(spec.files.over_memory() or {}).get("peak"),
        attempts=spec.attempt,
    )


def death_error(spec: JobSpec, how: str) -> Exception:
    """Why the job's process died: its own watch killed it (memory, time), or it crashed (``how``)."""
    memory = spec.files.over_memory()
    if memory is not None:
        return memory_error(
            spec, limit=int(memory.get("limit", 0)), peak=int(memory.get("peak", 0))
        )
    if spec.files.timed_out():
        return timeout_error(spec)
    return crash_error(spec, how)


def unloadable_outcome(spec: JobSpec, outcome: JobOutcome, error: BaseException) -> JobOutcome:
    """``outcome``, FAILED, when the launcher cannot unpickle the job's return value (or error).

    The job ran to its end, so what it noted (times, process, output dir) stays;
    its configs travel apart from the value and still reach the sweeper. A job
    that failed keeps its own error, in words.
    """
    failure: Exception
    error_type: Optional[str]
    text: Optional[str]
    if outcome.completed:
        failure = not_loadable(spec, outcome, error)
        error_type, text = describe(failure)
    else:
        failure = RemoteJobError(
            f"{outcome.error_type}: {outcome.error} (the launching process cannot unpickle "
            f"the job's exception: {type(error).__name__}: {error})"
        )
        error_type, text = outcome.error_type, outcome.error
    ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
    ret._return_value = failure
    return dataclasses.replace(
        outcome, completed=False, payload=pickle.dumps(ret), error_type=error_type, error=text
    )


# -- what happened to a job, in words ----------------------------------------------------

LIKELY_CRASH_CAUSES = (
    "Likely causes: a crash in native code (segmentation fault), the kernel's "
    "out-of-memory killer (see `dmesg`), or os._exit()/a signal in the task."
)


def describe_exit(returncode: int) -> str:
    """'was killed by signal SIGKILL' or 'exited with status 3'."""
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def crash_error(spec: JobSpec, how: str) -> WorkerCrashed:
    """The job's process died: ``how`` says how ("was killed by signal SIGKILL")."""
    return WorkerCrashed(
        f"job #{spec.num} ({spec.shown}) did not finish: its worker process {how}. "
        f"{LIKELY_CRASH_CAUSES}"
    )


def died_too_often(spec: JobSpec, deaths: int) -> WorkerCrashed:
    """A cluster re-ran the job after each death of its worker, until it gave up."""
    return WorkerCrashed(
        f"job #{spec.num} ({spec.shown}) did not finish: the worker process running it "
        f"died {'once' if deaths == 1 else f'{deaths} times'}. {LIKELY_CRASH_CAUSES}"
    )


def timeout_error(spec: JobSpec, *, killed: bool = True) -> JobTimeout:
    """The job overran ``hydra.launcher.timeout``: stopped in its task, or its process killed."""
    limit = spec.timeout if spec.timeout is not None else float("nan")
    how = "its process was killed" if killed else "was stopped"
    return JobTimeout(
        f"job #{spec.num} ran longer than hydra.launcher.timeout={limit:g}s and {how}"
    )


def memory_error(spec: JobSpec, *, limit: int, peak: int) -> MemoryLimitExceeded:
    """The job's processes went over ``hydra.launcher.mem_limit`` together."""
    return MemoryLimitExceeded(
        f"job #{spec.num} held {show_bytes(peak)} in its processes, over its memory limit "
        f"of {show_bytes(limit)} (hydra.launcher.mem_limit), and was stopped; give it a "
        "higher mem_limit, or run fewer jobs at once (n_jobs)"
    )


def not_sendable(spec: JobSpec, value: Any, error: BaseException) -> ResultNotSendable:
    """The job's return value cannot be pickled back to the launcher."""
    return ResultNotSendable(
        f"job #{spec.num} ({' '.join(spec.overrides)}) returned a {type(value).__name__} "
        f"that cannot be pickled back to the launcher ({error}). Return plain data "
        "(numbers, strings, lists, dicts, arrays), or define its class at module level."
    )


def not_loadable(spec: JobSpec, outcome: JobOutcome, error: BaseException) -> ResultNotLoadable:
    """The job's return value pickled in its process, but does not unpickle in the launcher's."""
    what = f" (a {outcome.return_type})" if outcome.return_type else ""
    kept = f"; its outputs are kept in {outcome.output_dir}" if outcome.output_dir else ""
    return ResultNotLoadable(
        f"job #{spec.num} ({spec.shown}) completed, but the launching process cannot unpickle "
        f"its return value{what}: {type(error).__name__}: {error}. A return value is pickled "
        "in the job's process and unpickled in the launching one: its class must be "
        "importable there by the same name, and unpickling it must not raise (see the "
        "class's __reduce__ or __setstate__). Return plain data (numbers, strings, lists, "
        "dicts, arrays), or define its class at module level in a module the launching "
        f"process imports too{kept}."
    )


def cannot_run(spec: JobSpec, error: BaseException, where: str) -> str:
    """A cluster worker could not start the job: what it lacks, and what to do."""
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


def cannot_unpickle(error: ImportError) -> str:
    """Cluster workers could not even unpickle the launcher's task."""
    module = error.name or str(error)
    return (
        f"The workers cannot unpickle the launcher's task: they cannot import the module "
        f"{module!r} ({type(error).__name__}: {error}). Install this launcher "
        f"(pip install hydra-joblib-launcher), the app and the modules it imports in the "
        f"workers' Python environment on every worker host, then run again."
    )


# How a job ended, as the warning about the processes it left running says it.
ENDED = "ended"
TIMED_OUT = "ran past its timeout"
OVER_MEMORY = "went over its memory limit"
WORKER_DIED = "lost its worker process"
INTERRUPTED = "was interrupted"
STOPPED = "was stopped"


def stopped_processes(num: int, how: str, processes: Mapping[int, str]) -> str:
    """The warning naming the processes a job left running, stopped as it ended ``how``."""
    shown = ", ".join(f"{pid} ({name})" for pid, name in sorted(processes.items()))
    text = (
        f"Job #{num} {how}; stopped the processes it had started and left running "
        f"(SIGTERM, then SIGKILL): {shown}"
    )
    if how == ENDED:
        text += ". A task should wait for the processes it starts, or stop them, before it returns."
    return text


def report_stopped(spec: JobSpec, how: str, processes: Mapping[int, str]) -> None:
    """Say in the launcher's log and in the job's own log which of its processes were stopped."""
    if not processes:
        return
    message = stopped_processes(spec.num, how, processes)
    log.warning(message)
    spec.files.warn_in_log(message)
