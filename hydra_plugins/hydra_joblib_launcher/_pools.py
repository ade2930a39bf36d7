"""The pool contract the supervisor drives, and the factory that opens a backend's pools.

    options.backend ─▶ loky            LokyPool          (quarantine: FreshProcessPool)
                       multiprocessing FreshProcessPool  (quarantine: FreshProcessPool)
                       devices set     FreshProcessPool with a DevicePool (loky, multiprocessing)
                       dask            DaskPool          (the cluster re-runs a dead worker's jobs;
                                                          devices: a worker per group of ids)
                       ray             RayPool           (idem; devices: Ray hands out the GPUs)

Every pool yields :class:`JobOutcome` objects as jobs end, in the order they
end, and raises :class:`PoolBroken` when a worker death took the pool with it.
The backend modules import nothing from each other; only this one knows them all.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, Tuple

from ._cluster import Cluster
from ._devices import DevicePool
from ._errors import LauncherConfigError
from ._fresh import FreshProcessPool
from ._loky import LokyPool
from ._loky import warm_up as warm_up_loky
from ._loky import warming as loky_warming
from ._options import LaunchOptions
from ._outcome import JobOutcome
from ._plan import JobSpec
from ._processes import users_start_method
from ._zygote import fork_server_preparing, runs_as_script, start_fork_server


class Pool(Protocol):
    """Where jobs run. ``run`` yields each job's outcome as it ends; ``stop`` kills what runs."""

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Pools:
    """The pool a batch runs on, and how to make a pool that runs each suspect of a crash alone."""

    main: Pool
    quarantine: Callable[[], Pool]


def warm_up(options: LaunchOptions, task_function: Callable[..., object]) -> None:
    """Start what the jobs' processes come from while Hydra composes the sweep.

    loky's workers; for backend=multiprocessing, the fork server each job's process
    is forked from. Device pools start a new interpreter per job and clusters live
    elsewhere: nothing to warm.
    """
    if options.devices is not None:
        return
    if options.backend == "loky":
        warm_up_loky(options, task_function)
    elif options.backend == "multiprocessing" and runs_as_script(task_function):
        users_start_method()  # read before the fork server starts processes
        start_fork_server()  # each job's process is forked from it (see _forked)


def warming(options: LaunchOptions) -> bool:
    """Whether what :func:`warm_up` started would still keep the first jobs waiting."""
    if options.backend == "loky":
        return loky_warming()
    return options.backend == "multiprocessing" and fork_server_preparing()


def jobs_at_once(options: LaunchOptions, cpu_count: int) -> Tuple[int, str]:
    """How many jobs run at once, and where (for the launch line).

    A cluster is reached (or started) here: one that cannot be used is one clear
    error before any directory is made.
    """
    n_workers = options.workers(cpu_count)
    if not options.distributed:
        return n_workers, ""
    cluster = _connect(options, n_workers)
    return cluster.n_workers, f" on {cluster.description}"


def _connect(options: LaunchOptions, n_workers: int) -> Cluster:
    if options.backend == "dask":
        from ._dask_cluster import dask_connection

        return dask_connection(options, n_workers).cluster
    from ._ray import ray_connection

    return ray_connection(options, n_workers).cluster


def open_pools(options: LaunchOptions, *, n_workers: int) -> Pools:
    """The pools of ``options.backend`` for a batch of at most ``n_workers`` jobs at once."""

    def fresh() -> Pool:
        devices = None
        if options.devices is not None:
            devices = DevicePool(options.devices, options.devices_per_job)
        return FreshProcessPool(options, n_workers, devices)

    local_devices = options.devices is not None and not options.distributed
    if options.backend == "multiprocessing" or local_devices:
        return Pools(fresh(), fresh)
    if options.backend == "loky":
        return Pools(LokyPool(options, n_workers), fresh)
    if options.backend == "dask":
        from ._dask import DaskPool
        from ._dask_cluster import dask_connection

        dask = DaskPool(options, dask_connection(options, n_workers))
        return Pools(dask, lambda: dask)  # the cluster re-runs the jobs of a dead worker itself
    if options.backend == "ray":
        from ._ray import RayPool, ray_connection

        ray = RayPool(options, ray_connection(options, n_workers))
        return Pools(ray, lambda: ray)
    raise LauncherConfigError(f"hydra.launcher.backend={options.backend} has no worker pool")
