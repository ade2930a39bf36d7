"""Validation: the user's ``hydra.launcher`` config becomes frozen :class:`LaunchOptions`.

Everything here is pure (no process, no file, no heavy import): a bad value
gives one :class:`LauncherConfigError` naming the key, the value and what is
allowed, before any job starts or any job directory is made.
"""

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

from ._cluster_options import (
    DaskOptions,
    RayOptions,
    dask_options,
    no_num_gpus,
    ray_options,
)
from ._device_options import device_settings
from ._values import (
    MemoryLimit,
    choice,
    max_nbytes,
    mem_limit,
    positive_int_text,
    pre_dispatch,
    refuse,
    retry_on,
    timeout_seconds,
    whole_number,
)

PROCESS_BACKENDS = ("loky", "multiprocessing")
DISTRIBUTED_BACKENDS = ("dask", "ray")
PROGRESS_MODES = ("auto", "bar", "log", "none")
MMAP_MODES = (None, "r", "r+", "w+", "c")

_THREAD_BACKENDS = ("threading", "sequential")


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
    mem_limit: Optional[MemoryLimit]
    retries: int
    retry_on: Tuple[str, ...]  # of RETRY_CAUSES
    devices: Optional[Tuple[str, ...]]  # the ids handed out (found at setup with devices=auto)
    devices_per_job: int
    device_env: str
    gpus_per_job: Optional[float]  # GPUs each job asks of a cluster's scheduler
    progress: str
    resume: bool
    dask: "DaskOptions"
    ray: "RayOptions"
    devices_auto: bool = False  # devices=auto: found at setup (see _accelerators)
    devices_found_by: Optional[str] = None  # how devices=auto found them, for the launch line

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
    def gives_gpus(self) -> bool:
        """Each job is handed GPUs (a device pool, or gpus_per_job): its device_env is recorded."""
        return self.devices is not None or self.devices_auto or self.gpus_per_job is not None

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


def _inner_max_num_threads(value: Any) -> Optional[int]:
    if value is None:
        return None
    inner = whole_number("inner_max_num_threads", value, "give a positive integer or null")
    if inner < 1:
        raise refuse("inner_max_num_threads", inner, "give a positive integer or null")
    return inner


def _retries(value: Any) -> int:
    retries = whole_number("retries", value, "give a whole number, 0 or more")
    if retries < 0:
        raise refuse("retries", retries, "give a whole number, 0 or more")
    return retries


def validate(
    config: Mapping[str, Any], *, cpu_count: Optional[int] = None, memory: Optional[int] = None
) -> LaunchOptions:
    """Check the ``hydra.launcher`` node and return the options the launcher runs with.

    ``cpu_count``, ``memory``: this machine's, to check a negative ``n_jobs``
    and ``mem_limit`` against.
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
    inner = _inner_max_num_threads(config.get("inner_max_num_threads"))
    verbose = whole_number("verbose", config.get("verbose", 0), "give a whole number, 0 or more")
    if verbose < 0:
        raise refuse("verbose", verbose, "give a whole number, 0 or more")
    dask, ray = dask_options(config.get("dask")), ray_options(config.get("ray"))
    address = dask.address if backend == "dask" else ray.address if backend == "ray" else None
    gpus = device_settings(config, backend=backend, address=address)
    if gpus.devices is not None or gpus.auto:
        no_num_gpus(ray, backend)
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
        mem_limit=mem_limit(
            config.get("mem_limit"),
            total=memory if backend in PROCESS_BACKENDS else None,
        ),
        retries=_retries(config.get("retries", 0)),
        retry_on=retry_on(config.get("retry_on", ["crash"])),
        devices=gpus.devices,
        devices_per_job=gpus.per_job,
        device_env=gpus.env,
        gpus_per_job=gpus.gpus_per_job,
        devices_auto=gpus.auto,
        progress=choice("progress", config.get("progress", "auto"), PROGRESS_MODES),
        resume=resume,
        dask=dask,
        ray=ray,
    )
