"""Validation: the user's ``hydra.launcher`` config becomes frozen :class:`LaunchOptions`.

Everything here is pure (no process, no file, no heavy import): a bad value
gives one :class:`LauncherConfigError` naming the key, the value and what is
allowed, before any job starts or any job directory is made.
"""

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from ._errors import LauncherConfigError

PROCESS_BACKENDS = ("loky", "multiprocessing")
DISTRIBUTED_BACKENDS = ("dask", "ray")
PROGRESS_MODES = ("auto", "bar", "log", "none")
MMAP_MODES = (None, "r", "r+", "w+", "c")

_THREAD_BACKENDS = ("threading", "sequential")
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_PRE_DISPATCH = re.compile(rf"^\s*(?:{_NUMBER}\s*\*\s*)?n_jobs(?:\s*\*\s*{_NUMBER})?\s*$")
_NBYTES = re.compile(rf"^\s*{_NUMBER}\s*([KMG]?)\s*$", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LaunchOptions:
    """The launcher's settings, checked and normalised; safe to share and to pickle."""

    backend: str
    n_jobs: int  # as configured (may be negative: counted from the number of cores)
    prefer: str
    verbose: int
    timeout: Optional[float]
    pre_dispatch: Union[int, str]  # a positive int, "all" or an "k*n_jobs" expression
    batch_size: Union[int, str]  # a positive int or "auto"
    temp_folder: Optional[str]
    max_nbytes: Optional[int]
    mmap_mode: Optional[str]
    inner_max_num_threads: Optional[int]
    devices: Optional[Tuple[str, ...]]
    devices_per_job: int
    device_env: str
    progress: str
    resume: bool
    dask: "DaskOptions"
    ray: "RayOptions"

    @property
    def distributed(self) -> bool:
        """Jobs run on workers the launcher does not start itself (maybe on other machines)."""
        return self.backend in DISTRIBUTED_BACKENDS

    def workers(self, cpu_count: int) -> int:
        """How many jobs may run at once: n_jobs as joblib reads it, capped by the device pool."""
        n = self.n_jobs if self.n_jobs > 0 else max(cpu_count + 1 + self.n_jobs, 1)
        if self.devices is not None:
            n = min(n, self.device_slots)
        return n

    @property
    def device_slots(self) -> int:
        """How many jobs the device pool can serve at once."""
        return len(self.devices or ()) // self.devices_per_job

    def joblib_settings(self, n_jobs: int) -> str:
        """The effective settings, as the launch log line shows them."""
        items = {
            "backend": self.backend,
            "n_jobs": n_jobs,
            "prefer": self.prefer,
            "require": None,
            "verbose": self.verbose,
            "timeout": self.timeout,
            "pre_dispatch": self.pre_dispatch,
            "batch_size": self.batch_size,
            "temp_folder": self.temp_folder,
            "max_nbytes": self.max_nbytes,
            "mmap_mode": self.mmap_mode,
        }
        if self.inner_max_num_threads is not None:
            items["inner_max_num_threads"] = self.inner_max_num_threads
        return ",".join(f"{key}={value}" for key, value in items.items())


@dataclass(frozen=True)
class DaskOptions:
    address: Optional[str]
    connect_timeout: float
    dashboard_address: Optional[str]


@dataclass(frozen=True)
class RayOptions:
    address: Optional[str]
    init: Tuple[Tuple[str, Any], ...]  # extra ray.init keyword arguments, as sorted pairs


def _dask(node: Any) -> DaskOptions:
    node = dict(node or {})
    timeout = node.get("connect_timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise _refuse("dask.connect_timeout", timeout, "give a positive number of seconds")
    address = node.get("address")
    if address is not None and not (isinstance(address, str) and "://" in address):
        raise _refuse(
            "dask.address", address, "give a scheduler address such as tcp://host:8786, or null"
        )
    return DaskOptions(
        address=address,
        connect_timeout=float(timeout),
        dashboard_address=node.get("dashboard_address"),
    )


def _ray(node: Any) -> RayOptions:
    node = dict(node or {})
    init = node.get("init") or {}
    if not isinstance(init, Mapping):
        raise _refuse("ray.init", init, "give a mapping of ray.init keyword arguments")
    if "address" in init:
        raise _refuse("ray.init", dict(init), "set the address as hydra.launcher.ray.address")
    address = node.get("address")
    if address is not None and not isinstance(address, str):
        raise _refuse("ray.address", address, 'give "auto", "ray://host:10001" or null')
    return RayOptions(address=address, init=tuple(sorted(init.items())))


def _refuse(key: str, value: Any, allowed: str, hint: str = "") -> LauncherConfigError:
    message = f"hydra.launcher.{key}={value!r} is not supported; {allowed}"
    if hint:
        message += f". {hint}"
    return LauncherConfigError(message)


def _backend(value: Any) -> str:
    if value is None:
        return "loky"
    choices = ", ".join(PROCESS_BACKENDS + DISTRIBUTED_BACKENDS)
    if value in _THREAD_BACKENDS:
        raise _refuse(
            "backend",
            value,
            f"choose one of: {choices}",
            "Hydra jobs change process-wide state (logging, working directory, "
            "Hydra's singletons), so two jobs cannot share a process",
        )
    if value not in PROCESS_BACKENDS + DISTRIBUTED_BACKENDS:
        raise _refuse("backend", value, f"choose one of: {choices}")
    return str(value)


def _int(key: str, value: Any, allowed: str) -> int:
    # bool is an int to Python, never to a user
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(key, value, allowed)
    return value


def _n_jobs(value: Any, backend: str, cpu_count: Optional[int]) -> int:
    allowed = "use a positive number of jobs, or -1 for one per CPU core (-2: all but one)"
    n_jobs = _int("n_jobs", value, allowed)
    if n_jobs == 0:
        raise _refuse("n_jobs", value, allowed)
    # On a cluster, n_jobs counts the cluster's workers: checked when it is reached.
    if cpu_count is not None and backend in PROCESS_BACKENDS and n_jobs < -cpu_count:
        raise _refuse(
            "n_jobs",
            value,
            f"this machine has {cpu_count} CPU cores, so a negative n_jobs goes down to "
            f"-{cpu_count} (one job at a time); {allowed}",
        )
    return n_jobs


def _maxtasksperchild(value: Any, backend: str) -> None:
    """Upstream's key: each job of backend=multiprocessing has a process of its own, so 1 or null."""
    if value is None:
        return
    if backend != "multiprocessing":
        raise _refuse(
            "maxtasksperchild",
            value,
            "it applies to backend=multiprocessing only (where it is 1: a fresh process per job); "
            "remove it",
        )
    if isinstance(value, bool) or value != 1:
        raise _refuse(
            "maxtasksperchild",
            value,
            "backend=multiprocessing runs every job in a process of its own: give 1 or null",
        )


def _timeout(value: Any) -> Optional[float]:
    if value is None:
        return None
    allowed = "give a positive number of seconds, or null for no limit"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _refuse("timeout", value, allowed)
    return float(value)


def _positive_int_text(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


def _pre_dispatch(value: Any) -> Union[int, str]:
    number = _positive_int_text(value)
    if number is not None:
        return number
    if isinstance(value, str) and value.strip() == "all":
        return "all"
    if isinstance(value, str) and _PRE_DISPATCH.match(value) and _factor(value) > 0:
        return value.strip()
    raise _refuse(
        "pre_dispatch",
        value,
        'give a positive integer, "all", or an expression such as "2*n_jobs"',
    )


def _factor(expression: str) -> float:
    """The multiplier of n_jobs in a ``pre_dispatch`` expression such as "1.5*n_jobs"."""
    match = _PRE_DISPATCH.match(expression)
    if match is None:
        raise ValueError(f"not a pre_dispatch expression: {expression!r}")
    return float(match.group(1) or 1) * float(match.group(2) or 1)


def pre_dispatch_count(pre_dispatch: Union[int, str], n_jobs: int) -> Union[int, str]:
    """Evaluate a validated ``pre_dispatch`` for ``n_jobs`` workers, as joblib would (never below 1)."""
    if isinstance(pre_dispatch, int) or pre_dispatch == "all":
        return pre_dispatch
    return max(int(n_jobs * _factor(pre_dispatch)), 1)


def _batch_size(value: Any, backend: str) -> Union[int, str]:
    number = _positive_int_text(value)
    if value == "auto" or (number is not None and backend != "multiprocessing"):
        return "auto" if number is None else number
    if number is None:
        raise _refuse("batch_size", value, 'give a positive integer or "auto"')
    if number != 1:  # backend=multiprocessing
        raise _refuse(
            "batch_size",
            value,
            'backend=multiprocessing runs every job in a process of its own: give 1 or "auto"',
        )
    return number


def _max_nbytes(value: Any) -> Optional[int]:
    if value is None:
        return None
    match = _NBYTES.match(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise _refuse(
            "max_nbytes",
            value,
            'give a size in bytes, optionally with a unit ("1M", "500K", "2G"), or null',
        )
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def _choice(key: str, value: Any, choices: Tuple[Optional[str], ...]) -> Any:
    if value not in choices:
        shown = ", ".join("null" if c is None else c for c in choices)
        raise _refuse(key, value, f"choose one of: {shown}")
    return value


def _devices(
    config: Mapping[str, Any], backend: str
) -> Tuple[Optional[Tuple[str, ...]], int, str]:
    per_job = _int("devices_per_job", config.get("devices_per_job", 1), "give a positive integer")
    if per_job < 1:
        raise _refuse("devices_per_job", per_job, "give a positive integer")
    env = config.get("device_env", "CUDA_VISIBLE_DEVICES")
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        raise _refuse(
            "device_env", env, "give an environment variable name such as CUDA_VISIBLE_DEVICES"
        )
    raw = config.get("devices")
    if raw is None:
        return None, per_job, env
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise _refuse("devices", raw, "give a list of device ids such as [0,1,2,3]")
    devices = tuple(str(d).strip() for d in raw)
    if any(not d or "," in d for d in devices) or len(set(devices)) != len(devices):
        raise _refuse(
            "devices", list(raw), "give a list of distinct, non-empty device ids such as [0,1]"
        )
    if len(devices) < per_job:
        raise LauncherConfigError(
            f"hydra.launcher.devices={list(raw)!r} holds {len(devices)} device id(s), but "
            f"hydra.launcher.devices_per_job={per_job} asks for {per_job} per job; "
            "list more devices or lower devices_per_job"
        )
    if backend in DISTRIBUTED_BACKENDS:
        raise _refuse(
            "devices",
            list(devices),
            f"backend={backend} cannot promise each job its own devices (the pool would be "
            "per launcher, not per worker host); use loky or multiprocessing",
            "On a cluster, give each worker its GPU where the worker starts "
            "(for example CUDA_VISIBLE_DEVICES per dask worker)",
        )
    return devices, per_job, env


def _inner_max_num_threads(value: Any, backend: str) -> Optional[int]:
    if value is None:
        return None
    inner = _int("inner_max_num_threads", value, "give a positive integer or null")
    if inner < 1:
        raise _refuse("inner_max_num_threads", inner, "give a positive integer or null")
    if backend in DISTRIBUTED_BACKENDS:
        raise _refuse(
            "inner_max_num_threads",
            inner,
            f"backend={backend} cannot apply it (its workers are started outside the "
            f"launcher); use loky or multiprocessing",
            "On a cluster, set OMP_NUM_THREADS and friends where the workers start",
        )
    return inner


def validate(config: Mapping[str, Any], *, cpu_count: Optional[int] = None) -> LaunchOptions:
    """Check the ``hydra.launcher`` node and return the options the launcher runs with.

    ``cpu_count``: this machine's, to check a negative ``n_jobs`` against.
    """
    backend = _backend(config.get("backend", "loky"))
    _maxtasksperchild(config.get("maxtasksperchild"), backend)
    require = config.get("require")
    if require is not None:
        raise _refuse(
            "require",
            require,
            "only null is allowed",
            "require=sharedmem asks for threads sharing one process, and Hydra jobs "
            "need a process each",
        )
    inner = _inner_max_num_threads(config.get("inner_max_num_threads"), backend)
    verbose = _int("verbose", config.get("verbose", 0), "give a whole number, 0 or more")
    if verbose < 0:
        raise _refuse("verbose", verbose, "give a whole number, 0 or more")
    devices, per_job, device_env = _devices(config, backend)
    resume = config.get("resume", False)
    if not isinstance(resume, bool):
        raise _refuse("resume", resume, "give true or false")
    return LaunchOptions(
        backend=backend,
        n_jobs=_n_jobs(config.get("n_jobs", -1), backend, cpu_count),
        prefer=_choice("prefer", config.get("prefer", "processes"), ("processes", "threads")),
        verbose=verbose,
        timeout=_timeout(config.get("timeout")),
        pre_dispatch=_pre_dispatch(config.get("pre_dispatch", "2*n_jobs")),
        batch_size=_batch_size(config.get("batch_size", "auto"), backend),
        temp_folder=config.get("temp_folder"),
        max_nbytes=_max_nbytes(config.get("max_nbytes")),
        mmap_mode=_choice("mmap_mode", config.get("mmap_mode", "r"), MMAP_MODES),
        inner_max_num_threads=inner,
        devices=devices,
        devices_per_job=per_job,
        device_env=device_env,
        progress=_choice("progress", config.get("progress", "auto"), PROGRESS_MODES),
        resume=resume,
        dask=_dask(config.get("dask")),
        ray=_ray(config.get("ray")),
    )
