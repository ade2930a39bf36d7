"""Validation: the user's ``hydra.launcher`` config becomes frozen :class:`LaunchOptions`.

Everything here is pure (no process, no file, no heavy import): a bad value
gives one :class:`LauncherConfigError` naming the key, the value and what is
allowed, before any job starts or any job directory is made.
"""

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from ._errors import LauncherConfigError
from ._values import (
    choice,
    max_nbytes,
    positive_int_text,
    pre_dispatch,
    refuse,
    timeout_seconds,
    whole_number,
)

PROCESS_BACKENDS = ("loky", "multiprocessing")
DISTRIBUTED_BACKENDS = ("dask", "ray")
PROGRESS_MODES = ("auto", "bar", "log", "none")
MMAP_MODES = (None, "r", "r+", "w+", "c")

_THREAD_BACKENDS = ("threading", "sequential")
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
    cluster: Optional[Tuple[Tuple[str, Any], ...]] = None  # dask.cluster's keys, as sorted pairs
    adapt: bool = False
    adapt_minimum: int = 1
    worker_timeout: Optional[float] = None


@dataclass(frozen=True)
class RayOptions:
    address: Optional[str]
    init: Tuple[Tuple[str, Any], ...]  # extra ray.init keyword arguments, as sorted pairs


def _dask(node: Any) -> DaskOptions:
    node = dict(node or {})
    timeout = node.get("connect_timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise refuse("dask.connect_timeout", timeout, "give a positive number of seconds")
    address = node.get("address")
    if address is not None and not (isinstance(address, str) and "://" in address):
        raise refuse(
            "dask.address", address, "give a scheduler address such as tcp://host:8786, or null"
        )
    cluster = _dask_cluster(node.get("cluster"), address)
    adapt = node.get("adapt", False)
    if not isinstance(adapt, bool):
        raise refuse("dask.adapt", adapt, "give true or false")
    minimum = whole_number(
        "dask.adapt_minimum", node.get("adapt_minimum", 1), "give a whole number, 0 or more"
    )
    if minimum < 0:
        raise refuse("dask.adapt_minimum", minimum, "give a whole number, 0 or more")
    worker_timeout = node.get("worker_timeout")
    if worker_timeout is not None and (
        isinstance(worker_timeout, bool)
        or not isinstance(worker_timeout, (int, float))
        or not worker_timeout > 0
    ):
        raise refuse(
            "dask.worker_timeout", worker_timeout, "give a positive number of seconds, or null"
        )
    return DaskOptions(
        address=address,
        connect_timeout=float(timeout),
        dashboard_address=node.get("dashboard_address"),
        cluster=cluster,
        adapt=adapt,
        adapt_minimum=minimum,
        worker_timeout=None if worker_timeout is None else float(worker_timeout),
    )


def _dask_cluster(node: Any, address: Optional[str]) -> Optional[Tuple[Tuple[str, Any], ...]]:
    """dask.cluster: a mapping with a dotted ``_target_`` (its class is checked when built)."""
    if node is None:
        return None
    example = "give {_target_: dask_jobqueue.SLURMCluster, cores: 1, processes: 1, ...} or null"
    if not isinstance(node, Mapping):
        raise refuse("dask.cluster", node, example)
    target = node.get("_target_")
    if not isinstance(target, str) or not re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$", target):
        raise refuse("dask.cluster", dict(node), example)
    if address is not None:
        raise refuse(
            "dask.cluster",
            dict(node),
            f"it builds a cluster, and dask.address={address!r} names one already running",
            "Set one of them, the other null",
        )
    return tuple(sorted(node.items()))


def _ray(node: Any) -> RayOptions:
    node = dict(node or {})
    init = node.get("init") or {}
    if not isinstance(init, Mapping):
        raise refuse("ray.init", init, "give a mapping of ray.init keyword arguments")
    if "address" in init:
        raise refuse("ray.init", dict(init), "set the address as hydra.launcher.ray.address")
    address = node.get("address")
    if address is not None and not isinstance(address, str):
        raise refuse("ray.address", address, 'give "auto", "ray://host:10001" or null')
    return RayOptions(address=address, init=tuple(sorted(init.items())))


def _backend(value: Any) -> str:
    if value is None:
        return "loky"
    choices = ", ".join(PROCESS_BACKENDS + DISTRIBUTED_BACKENDS)
    if value in _THREAD_BACKENDS:
        raise refuse(
            "backend",
            value,
            f"choose one of: {choices}",
            "Hydra jobs change process-wide state (logging, working directory, "
            "Hydra's singletons), so two jobs cannot share a process",
        )
    if value not in PROCESS_BACKENDS + DISTRIBUTED_BACKENDS:
        raise refuse("backend", value, f"choose one of: {choices}")
    return str(value)


def _n_jobs(value: Any, backend: str, cpu_count: Optional[int]) -> int:
    allowed = "use a positive number of jobs, or -1 for one per CPU core (-2: all but one)"
    n_jobs = whole_number("n_jobs", value, allowed)
    if n_jobs == 0:
        raise refuse("n_jobs", value, allowed)
    # On a cluster, n_jobs counts the cluster's workers: checked when it is reached.
    if cpu_count is not None and backend in PROCESS_BACKENDS and n_jobs < -cpu_count:
        raise refuse(
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
        raise refuse(
            "maxtasksperchild",
            value,
            "it applies to backend=multiprocessing only (where it is 1: a fresh process per job); "
            "remove it",
        )
    if isinstance(value, bool) or value != 1:
        raise refuse(
            "maxtasksperchild",
            value,
            "backend=multiprocessing runs every job in a process of its own: give 1 or null",
        )


def _batch_size(value: Any, backend: str) -> Union[int, str]:
    number = positive_int_text(value)
    if value == "auto" or (number is not None and backend != "multiprocessing"):
        return "auto" if number is None else number
    if number is None:
        raise refuse("batch_size", value, 'give a positive integer or "auto"')
    if number != 1:  # backend=multiprocessing
        raise refuse(
            "batch_size",
            value,
            'backend=multiprocessing runs every job in a process of its own: give 1 or "auto"',
        )
    return number


def _devices(
    config: Mapping[str, Any], backend: str
) -> Tuple[Optional[Tuple[str, ...]], int, str]:
    per_job = whole_number("devices_per_job", config.get("devices_per_job", 1), "give a positive integer")
    if per_job < 1:
        raise refuse("devices_per_job", per_job, "give a positive integer")
    env = config.get("device_env", "CUDA_VISIBLE_DEVICES")
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        raise refuse(
            "device_env", env, "give an environment variable name such as CUDA_VISIBLE_DEVICES"
        )
    raw = config.get("devices")
    if raw is None:
        return None, per_job, env
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise refuse("devices", raw, "give a list of device ids such as [0,1,2,3]")
    devices = tuple(str(d).strip() for d in raw)
    if any(not d or "," in d for d in devices) or len(set(devices)) != len(devices):
        raise refuse(
            "devices", list(raw), "give a list of distinct, non-empty device ids such as [0,1]"
        )
    if len(devices) < per_job:
        raise LauncherConfigError(
            f"hydra.launcher.devices={list(raw)!r} holds {len(devices)} device id(s), but "
            f"hydra.launcher.devices_per_job={per_job} asks for {per_job} per job; "
            "list more devices or lower devices_per_job"
        )
    if backend in DISTRIBUTED_BACKENDS:
        raise refuse(
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
    inner = whole_number("inner_max_num_threads", value, "give a positive integer or null")
    if inner < 1:
        raise refuse("inner_max_num_threads", inner, "give a positive integer or null")
    if backend in DISTRIBUTED_BACKENDS:
        raise refuse(
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
        raise refuse(
            "require",
            require,
            "only null is allowed",
            "require=sharedmem asks for threads sharing one process, and Hydra jobs "
            "need a process each",
        )
    inner = _inner_max_num_threads(config.get("inner_max_num_threads"), backend)
    verbose = whole_number("verbose", config.get("verbose", 0), "give a whole number, 0 or more")
    if verbose < 0:
        raise refuse("verbose", verbose, "give a whole number, 0 or more")
    devices, per_job, device_env = _devices(config, backend)
    resume = config.get("resume", False)
    if not isinstance(resume, bool):
        raise refuse("resume", resume, "give true or false")
    return LaunchOptions(
        backend=backend,
        n_jobs=_n_jobs(config.get("n_jobs", -1), backend, cpu_count),
        prefer=choice("prefer", config.get("prefer", "processes"), ("processes", "threads")),
        verbose=verbose,
        timeout=timeout_seconds(config.get("timeout")),
        pre_dispatch=pre_dispatch(config.get("pre_dispatch", "2*n_jobs")),
        batch_size=_batch_size(config.get("batch_size", "auto"), backend),
        temp_folder=config.get("temp_folder"),
        max_nbytes=max_nbytes(config.get("max_nbytes")),
        mmap_mode=choice("mmap_mode", config.get("mmap_mode", "r"), MMAP_MODES),
        inner_max_num_threads=inner,
        devices=devices,
        devices_per_job=per_job,
        device_env=device_env,
        progress=choice("progress", config.get("progress", "auto"), PROGRESS_MODES),
        resume=resume,
        dask=_dask(config.get("dask")),
        ray=_ray(config.get("ray")),
    )
