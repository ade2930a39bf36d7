"""What crosses the process boundary, and the function a worker runs.

    launcher                                   worker process (loky, fresh, dask, ...)
    ────────                                   ──────────────
    write_context(SharedContext) ─ once ─▶ context file ─▶ load_context()   (cached per process)
    JobSpec (num, overrides, ...) ─ per job ──────────────▶ run_job_spec(spec)
                                                                 │  Hydra's basic-launcher sequence
    JobOutcome (plain data + pickled JobReturn) ◀────────────────┘

What is the same for every job (the task function, the config, the Hydra
context, the singleton state, custom resolvers) is pickled once per launch
into a file and read once per worker process, not sent with every job.
"""

import dataclasses
import functools
import gc
import hashlib
import json
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from ._errors import JobTimeout, RemoteJobError, ResultNotSendable

log = logging.getLogger("hydra_joblib_launcher")

# A job over its timeout first gets JobTimeout raised in its thread; if it is
# stuck in native code and ignores it this long, its process is killed.
HARD_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class SharedContext:
    """Everything a job needs that is the same for every job of a launch."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig
    singleton_state: Dict[Any, Any]
    resolvers: Dict[str, Any]


@dataclass(frozen=True)
class JobSpec:
    """One job, as sent to a worker: plain data only."""

    num: int
    overrides: Tuple[str, ...]
    context_file: str
    marker_dir: str
    timeout: Optional[float] = None
    device_env: Optional[str] = None  # set when the job is handed devices through this variable
    # On clusters that re-run a job whose worker died (Dask), the job counts its
    # attempts in marker_dir and gives up, FAILED, after this many deaths.
    max_worker_deaths: Optional[int] = None
    sweep_dir: Optional[str] = None  # replaces hydra.sweep.dir (made absolute for remote workers)


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

    @property
    def duration_s(self) -> float:
        return self.ended - self.started

    def job_return(self) -> JobReturn:
        """The job's JobReturn; its configs are unpickled only when read (see :class:`LazyConfigs`)."""
        ret = pickle.loads(self.payload)
        assert isinstance(ret, JobReturn), "payloads are written by this module"
        return LazyConfigs(ret, self.configs) if self.configs else ret

    def stored_return(self) -> bytes:
        """The whole JobReturn as one pickle, for a file: it unpickles to a plain JobReturn."""
        if not self.configs:
            return self.payload
        return pickle.dumps(_Parts(self.payload, self.configs), protocol=pickle.HIGHEST_PROTOCOL)


class LazyConfigs(JobReturn):
    """A JobReturn whose ``cfg`` and ``hydra_cfg`` are unpickled the first time one is read.

    They are most of a result, and sweepers mostly read ``return_value``
    alone: unpickling them for every job as results arrive took the launching
    process 1.4 ms a job, CPU the workers need, and kept a whole sweep's
    configs in memory. It equals a JobReturn of the same fields; copied or
    pickled, it becomes a plain one.
    """

    _cfg: Optional[DictConfig]
    _hydra_cfg: Optional[DictConfig]

    def __init__(self, head: JobReturn, configs: bytes) -> None:
        self._configs = b""
        super().__init__(**_fields_of(head))
        self._configs = configs

    def _load(self) -> None:
        configs, self._configs = self._configs, b""
        if configs:
            self._cfg, self._hydra_cfg = pickle.loads(configs)

    @property
    def cfg(self) -> Optional[DictConfig]:
        self._load()
        return self._cfg

    @cfg.setter
    def cfg(self, value: Optional[DictConfig]) -> None:
        self._load()
        self._cfg = value

    @property
    def hydra_cfg(self) -> Optional[DictConfig]:
        self._load()
        return self._hydra_cfg

    @hydra_cfg.setter
    def hydra_cfg(self, value: Optional[DictConfig]) -> None:
        self._load()
        self._hydra_cfg = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobReturn):
            return NotImplemented
        return _fields_of(self) == _fields_of(other)

    __hash__ = None  # type: ignore[assignment]  # as JobReturn's

    def __reduce__(self) -> Any:
        return JobReturn, (), _fields_of(self)


def _fields_of(ret: JobReturn) -> Dict[str, Any]:
    return {f.name: getattr(ret, f.name) for f in dataclasses.fields(JobReturn)}


class _Parts:
    """Pickles to the JobReturn that :func:`_joined` makes of its two pickled parts."""

    def __init__(self, head: bytes, configs: bytes) -> None:
        self.head = head
        self.configs = configs

    def __reduce__(self) -> Any:
        return _joined, (self.head, self.configs)


def _joined(head: bytes, configs: bytes) -> JobReturn:
    ret = pickle.loads(head)
    assert isinstance(ret, JobReturn), "stored by JobOutcome.stored_return"
    ret.cfg, ret.hydra_cfg = pickle.loads(configs)
    return ret


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` as cloudpickle does (``__main__`` and local functions by value).

    Unlike plain cloudpickle, code sent by value keeps its file name, so that
    tracebacks of a failed job point at the user's file, not ``<dynamic-code>``.
    """
    import io

    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


@functools.lru_cache(maxsize=None)
def _pickler_class() -> Any:
    import copyreg
    import types

    import cloudpickle

    code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)
    if code_reduce is None:  # a cloudpickle that works differently: keep its behaviour
        return cloudpickle.Pickler

    def keep_filename(code: types.CodeType) -> Any:
        constructor, args = code_reduce(code)
        args = tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)
        return constructor, args

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        # A plain dict: the C pickler looks every object's type up in it, and a
        # ChainMap would make each look-up a Python call.
        dispatch_table = {
            **copyreg.dispatch_table,
            **dict(cloudpickle.Pickler.dispatch_table),
            types.CodeType: keep_filename,
        }

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and _rebound(obj) is not None:
                return _class_by_name, (obj.__module__, obj.__qualname__)
            return super().reducer_override(obj)

    return Pickler


# Modules whose classes a stored result may name: whoever reads it back (the
# launcher resuming a sweep) has Hydra and this package.
_BY_NAME = ("hydra.", f"{__package__}.")


def _rebound(cls: type) -> Optional[type]:
    """The class that ``cls``'s module now binds to its name, when that is another class.

    Hydra's plugin scan executes plugin modules again (this package's config,
    its own core plugins), so their names point to new classes while the
    configs Hydra composed keep the first ones as structured-config types.
    cloudpickle would send such a class by value, in every job's result; when
    it comes from Hydra or this package, it goes by name. (Other plugins'
    classes still go by value: a result must load where they are not installed.)
    """
    module = sys.modules.get(cls.__module__) if cls.__module__.startswith(_BY_NAME) else None
    if module is None:
        return None
    try:
        current: Any = functools.reduce(getattr, cls.__qualname__.split("."), module)
    except AttributeError:
        return None
    if (
        current is cls
        or not isinstance(current, type)
        or (current.__module__, current.__qualname__) != (cls.__module__, cls.__qualname__)
    ):
        return None
    return current


def _class_by_name(module: str, qualname: str) -> type:
    import importlib

    cls = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
    assert isinstance(cls, type), "pickled by _rebound: a class"
    return cls


def capture_resolvers() -> Dict[str, bytes]:
    """The OmegaConf resolvers of this process (custom ones registered by the app included), each pickled.

    OmegaConf keeps them in a class attribute that no pickle carries, so a
    worker would not know the resolvers the app registered in ``__main__``.
    A resolver that cannot be pickled is left out: a job using it fails with
    OmegaConf's own "unsupported interpolation" error, naming it.
    """
    from omegaconf.basecontainer import BaseContainer

    pickled = {}
    for name, resolver in BaseContainer._resolvers.items():
        try:
            pickled[name] = dumps(resolver)
        except Exception as error:  # noqa: BLE001 - any pickling failure means the same
            log.debug("Resolver %r cannot be sent to workers: %s", name, error)
    return pickled


def pickle_context(context: SharedContext) -> bytes:
    """Pickle ``context``: this is where a task that cannot be sent to workers fails."""
    return bytes(dumps(context))


def write_context(payload: bytes, directory: Path) -> Path:
    """Write a pickled context into ``directory``, for every worker to read; its path.

    The file starts with this process's ``sys.path``, so that a fresh worker
    can import the app's own modules before it unpickles the task. It is
    named after its content: a batch whose context is the previous batch's
    finds the file there, and the workers that loaded it do not load it again.
    """
    global long_lived_worker
    long_lived_worker = False  # this process is the user's app
    content = pickle.dumps(list(sys.path)) + payload
    path = directory / f"context-{hashlib.sha256(content).hexdigest()[:24]}.pkl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_bytes(content)
        os.replace(partial, path)
    return path


def update_environ(environ: Dict[str, str]) -> None:
    """Set a worker's environment variables as it starts (before any job runs)."""
    os.environ.update(environ)


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


_loaded: Dict[str, SharedContext] = {}
# A process that runs job after job (loky, Dask, Ray) keeps what it loads for
# the launch; not so the launching app itself, nor a process started for one job.
long_lived_worker = True


def load_context(path: str) -> SharedContext:
    """Read a launch's context once per process, and install its global state."""
    context = _loaded.get(path)
    if context is not None:
        return context
    if long_lived_worker and _loaded:
        gc.unfreeze()  # what the previous context froze (and what was frozen with it)
    _loaded.clear()  # keep only the newest context
    with open(path, "rb") as f:
        sys_path = pickle.load(f)
        sys.path.extend(p for p in sys_path if p not in sys.path)
        context = pickle.load(f)
    assert isinstance(context, SharedContext), "context files are written by write_context"
    from omegaconf.basecontainer import BaseContainer

    for name, resolver in context.resolvers.items():
        if name not in BaseContainer._resolvers:
            BaseContainer._resolvers[name] = pickle.loads(resolver)
    Singleton.set_state(context.singleton_state)
    _loaded[path] = context
    if long_lived_worker:
        # What is loaded now lives as long as the launch: keep it out of the
        # garbage collector's full scans (loky's workers run one every second).
        gc.collect()
        gc.freeze()
    return context


def marker_path(marker_dir: str, num: int) -> Path:
    """Where a job that had to kill its own process leaves word why."""
    return Path(marker_dir) / f"{num}.timeout"


def started_path(marker_dir: str, num: int) -> Path:
    """Where a job notes, as its task starts, where it runs and logs (read if its process dies)."""
    return Path(marker_dir) / f"{num}.started"


def _write_started(spec: JobSpec) -> Tuple[Optional[str], Optional[str]]:
    """Note where the job runs and logs; returns its output dir and log file.

    Called as the task starts: Hydra has set the job's config and its logging up.
    """
    output_dir = str(HydraConfig.get().runtime.output_dir)
    log_file = next(
        (
            handler.baseFilename
            for handler in logging.getLogger().handlers
            if isinstance(handler, logging.FileHandler)
        ),
        None,
    )
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "output_dir": output_dir,
        "log_file": log_file,
    }
    started_path(spec.marker_dir, spec.num).write_text(json.dumps(record))
    return output_dir, log_file


def _read_started(spec: JobSpec) -> Dict[str, Any]:
    try:
        record = json.loads(started_path(spec.marker_dir, spec.num).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def attempts_path(marker_dir: str, num: int) -> Path:
    """One line per start of the job, for clusters that re-run jobs whose worker died."""
    return Path(marker_dir) / f"{num}.attempts"


def _settled_before_start(spec: JobSpec, started: float) -> Optional[JobOutcome]:
    """The outcome of a job re-run by the cluster after it already ended badly, else None."""
    from ._errors import WorkerCrashed

    if spec.timeout is not None and marker_path(spec.marker_dir, spec.num).exists():
        error: Exception = JobTimeout(
            f"job #{spec.num} ran longer than hydra.launcher.timeout={spec.timeout:g}s "
            "and its process was killed"
        )
        return failed_outcome(spec, error, started=started, pid=os.getpid())
    if spec.max_worker_deaths is None:
        return None
    path = attempts_path(spec.marker_dir, spec.num)
    deaths = len(path.read_text().splitlines()) if path.exists() else 0
    if deaths >= spec.max_worker_deaths:
        overrides = " ".join(spec.overrides) or "(no overrides)"
        error = WorkerCrashed(
            f"job #{spec.num} ({overrides}) did not finish: the worker process running it "
            f"died {deaths} times. Likely causes: a crash in native code (segmentation fault), "
            "the out-of-memory killer, or os._exit()/a signal in the task."
        )
        return failed_outcome(spec, error, started=started, pid=os.getpid())
    with open(path, "a") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
    return None


@contextmanager
def _time_limit(spec: JobSpec) -> Iterator[None]:
    """Stop the job after ``spec.timeout`` seconds, and its process if the job will not stop.

    In a process's main thread a SIGALRM raises :class:`JobTimeout` inside the
    task, which Hydra records as the job's failure; the worker survives. Where
    signals cannot reach the job (another thread) or it does not stop within
    the grace period, a watchdog leaves a marker and kills the process: the
    supervisor reads the marker and reports the timeout.
    """
    if spec.timeout is None:
        yield
        return
    limit = spec.timeout
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_alarm(signum: int, frame: Any) -> None:
        raise JobTimeout(
            f"job #{spec.num} ran longer than hydra.launcher.timeout={limit:g}s and was stopped"
        )

    def hard_stop() -> None:
        marker_path(spec.marker_dir, spec.num).write_text(f"{limit:g}")
        os.kill(os.getpid(), signal.SIGKILL)

    watchdog = threading.Timer(limit + (HARD_STOP_GRACE_S if in_main_thread else 0), hard_stop)
    watchdog.daemon = True
    watchdog.start()
    previous = None
    if in_main_thread:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        if in_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()


def _devices(spec: JobSpec) -> Optional[Tuple[str, ...]]:
    if spec.device_env is None or spec.device_env not in os.environ:
        return None
    return tuple(os.environ[spec.device_env].split(","))


def _announced(
    task_function: TaskFunction, spec: JobSpec, where_logged: Dict[str, Any]
) -> TaskFunction:
    """The task, preceded by a line in the job's own log saying where it runs.

    ``where_logged`` receives the job's output dir and log file.
    """

    def task(cfg: DictConfig) -> Any:
        where_logged["paths"] = _write_started(spec)
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


def _sweep_config(context: SharedContext, spec: JobSpec) -> DictConfig:
    config = context.hydra_context.config_loader.load_sweep_config(
        context.config, list(spec.overrides)
    )
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{spec.num}"
        config.hydra.job.num = spec.num
        if spec.sweep_dir is not None:
            config.hydra.sweep.dir = spec.sweep_dir
    return config


def _log_file(hydra_cfg: Optional[DictConfig]) -> Tuple[Optional[str], Optional[str]]:
    """The job's output dir and the file its job logging writes to, when Hydra says."""
    if hydra_cfg is None:
        return None, None
    try:
        output_dir = str(hydra_cfg.hydra.runtime.output_dir)
        handlers = hydra_cfg.hydra.job_logging.get("handlers") or {}
        for handler in handlers.values():
            if "filename" in handler:
                return output_dir, str(Path(output_dir) / Path(str(handler.filename)).name)
        return output_dir, None
    except Exception:  # noqa: BLE001 - a log path is a courtesy, never a failure
        return None, None


def _sendable_error(error: BaseException) -> BaseException:
    """``error`` if it survives pickling both ways, else a stand-in keeping its text."""
    try:
        pickle.loads(dumps(error))
        return error
    except Exception:  # noqa: BLE001
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return RemoteJobError(f"{type(error).__name__}: {error}\n{text}")


def _pickle_return(ret: JobReturn, spec: JobSpec) -> Tuple[bytes, bytes, JobReturn]:
    """``ret`` without its configs, pickled; its (cfg, hydra_cfg), pickled; and ``ret``."""
    if ret.status == JobStatus.FAILED:
        ret._return_value = _sendable_error(ret._return_value)
    configs = dumps((ret.cfg, ret.hydra_cfg)) if ret.cfg is not None else b""
    head = dataclasses.replace(ret, cfg=None, hydra_cfg=None) if configs else ret
    try:
        return dumps(head), configs, ret
    except Exception as error:  # noqa: BLE001
        value = ret._return_value
        ret._return_value = head._return_value = ResultNotSendable(
            f"job #{spec.num} ({' '.join(spec.overrides)}) returned a {type(value).__name__} "
            f"that cannot be pickled back to the launcher ({error}). Return plain data "
            "(numbers, strings, lists, dicts, arrays), or define its class at module level."
        )
        ret.status = head.status = JobStatus.FAILED
        return dumps(head), configs, ret


def _describe(error: Any) -> Tuple[str, str]:
    return type(error).__name__, str(error).split("\n", 1)[0]


def run_job_spec(spec: JobSpec) -> JobOutcome:
    """Run one job the way Hydra's basic launcher does, and report how it ended.

    Never raises for anything the job does: a failing task gives a FAILED
    outcome. Only the death of the process itself is left to the supervisor.
    """
    started = time.time()
    settled = _settled_before_start(spec, started)
    if settled is not None:
        return settled
    context = load_context(spec.context_file)
    setup_globals()
    where_logged: Dict[str, Any] = {}
    try:
        with _time_limit(spec):
            config = _sweep_config(context, spec)
            ret = run_job(
                hydra_context=context.hydra_context,
                task_function=_announced(context.task_function, spec, where_logged),
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
    except Exception as error:  # noqa: BLE001 - raised outside the task: config, callbacks
        ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
        ret._return_value = error
    if spec.max_worker_deaths is not None:
        attempts_path(spec.marker_dir, spec.num).unlink(missing_ok=True)
    payload, configs, ret = _pickle_return(ret, spec)
    output_dir, log_file = where_logged.get("paths") or _log_file(ret.hydra_cfg)
    error_type = error_text = None
    if ret.status != JobStatus.COMPLETED:
        error_type, error_text = _describe(ret._return_value)
    return JobOutcome(
        num=spec.num,
        completed=ret.status == JobStatus.COMPLETED,
        payload=payload,
        started=started,
        ended=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        output_dir=output_dir,
        log_file=log_file,
        error_type=error_type,
        error=error_text,
        devices=_devices(spec),
        configs=configs,
    )


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
    error_type, text = _describe(error)
    noted = _read_started(spec)
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
    )
