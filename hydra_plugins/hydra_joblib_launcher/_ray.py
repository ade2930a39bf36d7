"""backend=ray: jobs on a Ray cluster, through joblib's ray backend (ray.util.joblib).

A cluster given by address ("auto", "host:port", "ray://..."), or a local Ray
sized by n_jobs, started here and shut down at exit. Each joblib worker is a
Ray actor running one job at a time. See _cluster.py for what the launcher adds to what Ray does.
"""

import atexit
import functools
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from ._cluster import (
    Cluster,
    JobTask,
    cluster_thread_limits,
    engine_retries,
    missing_extra,
    n_at_once,
    worker_deaths_allowed,
)
from ._errors import LauncherError, WorkerCannotRun
from ._options import LaunchOptions
from ._outcome import JobOutcome, cannot_unpickle
from ._plan import JobSpec

log = logging.getLogger(__name__)

CUDA = "CUDA_VISIBLE_DEVICES"

# How long to wait for a Ray address to accept a connection before ray.init.
RAY_PROBE_TIMEOUT_S = 10.0


@dataclass
class RayConnection:
    cluster: Cluster
    n_actors: int
    gpus_per_actor: float = 0.0  # what each actor (so each job) reserves of Ray's GPU resource


# Per process: Ray's connection is one per process ("connection": the RayConnection).
_ray_state: Dict[str, Any] = {}


def _import_ray() -> Any:
    try:
        import ray
        from ray.util.joblib.ray_backend import RayBackend  # noqa: F401
    except ImportError as error:
        raise missing_extra("ray", "ray", error) from None
    return ray


def ray_connection(options: LaunchOptions, n_workers: int) -> RayConnection:
    """This process's connection to Ray (made once), sized for this launch."""
    ray = _import_ray()
    connection: Optional[RayConnection] = _ray_state.get("connection")
    if connection is None or not ray.is_initialized():
        address, started_here = _connect(ray, options, n_workers)
        capacity = int(ray.cluster_resources().get("CPU", 0))
        cluster = Cluster("ray", address, n_workers, capacity, started_here)
        connection = RayConnection(cluster, max(n_workers, 2))
        _ray_state["connection"] = connection
    capacity = int(ray.cluster_resources().get("CPU", 0))
    if connection.cluster.started_here:
        jobs = min(n_workers, capacity)
    else:  # n_jobs counts the CPUs of the cluster
        jobs = n_at_once(options.n_jobs, capacity)
    if capacity < 2:
        raise LauncherError(
            f"The Ray cluster {connection.cluster.address} offers {capacity} CPU(s); backend=ray "
            f"needs 2 at least (joblib's Ray pool has two actors at least, one CPU each)."
        )
    gpus_per_actor, gpu_slots = _gpus(ray, options, connection.cluster.address)
    if gpu_slots is not None:
        jobs = min(jobs, gpu_slots)
    connection.cluster = replace(connection.cluster, n_workers=jobs, capacity=capacity)
    connection.n_actors = min(max(jobs, 2), capacity)
    connection.gpus_per_actor = gpus_per_actor
    return connection


def _gpus(ray: Any, options: LaunchOptions, address: str) -> Tuple[float, Optional[int]]:
    """What each actor reserves of the GPU resource, and how many jobs the GPUs allow at once.

    Ray hands an actor holding GPUs their ids in CUDA_VISIBLE_DEVICES (the local Ray
    started with the devices' ids in it maps its GPUs onto them). joblib's pool has
    two actors at least: with GPUs for one job only, the two share them (half each),
    and one job runs at a time (pre_dispatch), so no two jobs use them at once.
    """
    per_job = options.gpus_per_job if options.gpus_per_job is not None else 0.0
    if options.devices is not None:
        per_job = float(options.devices_per_job)
    if not per_job:
        return 0.0, None
    offered = float(ray.cluster_resources().get("GPU", 0))
    slots = int(offered // per_job + 1e-9)
    if slots == 0:
        raise LauncherError(
            f"hydra.launcher.gpus_per_job={per_job:g} asks each job for {per_job:g} GPU(s), and "
            f"the Ray cluster {address} offers {offered:g}. Start its nodes with their GPUs "
            f"(ray start ... --num-gpus N, or let Ray detect them), or lower gpus_per_job."
        )
    if slots > 1:
        return per_job, slots
    if per_job > 1:
        raise LauncherError(
            f"The Ray cluster {address} has GPUs for one job at a time ({offered:g} GPUs, "
            f"{per_job:g} per job), and joblib's Ray pool needs two actors, which cannot both "
            f"hold {per_job:g} whole GPUs. Use backend=dask or multiprocessing for this sweep, "
            f"or give the cluster more GPUs."
        )
    return per_job / 2, 1


def _connect(ray: Any, options: LaunchOptions, n_workers: int) -> Tuple[str, bool]:
    """Use the app's Ray, start a local one, or connect to an address; (address, started here)."""
    settings = options.ray
    if ray.is_initialized():  # the app's own Ray: use it, leave it as it is
        return "(initialized by the app)", False
    if settings.address is None:
        # joblib runs a one-worker call in the calling process: a pool has two
        # actors at least, so Ray needs two CPUs (n_workers still bounds jobs at once).
        kwargs = {"include_dashboard": False, **dict(settings.init)}
        kwargs.setdefault("num_cpus", max(n_workers, 2))
        if options.devices is not None:
            kwargs["num_gpus"] = len(options.devices)
        with _on_loopback(kwargs), _visible_devices(options.devices):
            context = ray.init(**kwargs)
        atexit.register(_shutdown_ray)
        return str(getattr(context, "address_info", {}).get("gcs_address", "local")), True
    _probe_ray_address(settings.address)
    try:
        ray.init(address=settings.address, **dict(settings.init))
    except Exception as error:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
        raise LauncherError(
            f"Cannot reach the Ray cluster at hydra.launcher.ray.address="
            f"{settings.address} ({type(error).__name__}: {error}). Check that the "
            f"cluster runs (ray start --head) and that the address is right: "
            f'"auto" on a cluster node, host:6379 or ray://host:10001.'
        ) from None
    atexit.register(_shutdown_ray)  # a connection of ours: dropped at exit, the cluster stays
    return settings.address, False


@contextmanager
def _on_loopback(kwargs: Dict[str, Any]) -> Iterator[None]:
    """The local Ray started meanwhile listens on 127.0.0.1 only, unless the user chose an address.

    Ray takes 127.0.0.1 given as the node's address for "this machine" and puts its
    servers on the address others reach it by; its single-machine mode (the one of
    macOS and Windows) keeps them all on loopback. Ray reads the switch when it is
    imported (its processes, from the variable they inherit as they start) and when
    it picks the node's address (this process, from ray_constants); both are restored.
    """
    if "_node_ip_address" in kwargs or LOOPBACK_ONLY in os.environ:
        yield
        return
    from ray._private import ray_constants

    cluster = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[LOOPBACK_ONLY] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_ONLY, None)
        ray_constants.ENABLE_RAY_CLUSTER = cluster


@contextmanager
def _visible_devices(devices: Optional[Tuple[str, ...]]) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES holds ``devices`` while the local Ray starts, then is restored.

    Ray's node reads the GPUs it may use from it when it starts, its worker processes
    inherit it, and Ray maps the GPU slots it gives an actor onto those ids.
    """
    if devices is None:
        yield
        return
    before = os.environ.get(CUDA)
    os.environ[CUDA] = ",".join(devices)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CUDA, None)
        else:
            os.environ[CUDA] = before

# Ray's switch between a cluster and a single machine (ray_constants.ENABLE_RAY_CLUSTER).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _probe_ray_address(address: str) -> None:
    """Fail fast on a host:port nothing listens on: ray.init would retry for many minutes."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # "auto", "local": Ray finds the address itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise LauncherError(
            f"Cannot reach the Ray cluster at hydra.launcher.ray.address={address}: nothing "
            f"answers at {host}:{port} within {RAY_PROBE_TIMEOUT_S:g}s ({error}). Check that the "
            f"cluster runs (ray start --head --port {port}) and that the address is right: "
            f'"auto" on a cluster node, host:6379 or ray://host:10001.'
        ) from None


def _not_about_context(record: logging.LogRecord) -> bool:
    # joblib hands every pool a multiprocessing context; Ray's pool warns that it
    # ignores it, once per process, about nothing the user set.
    return not record.getMessage().startswith("The 'context' argument is not supported")


@functools.lru_cache(maxsize=None)
def _ray_backend_class() -> Any:
    from ray.util.joblib.ray_backend import RayBackend

    logging.getLogger("ray.util.multiprocessing.pool").addFilter(_not_about_context)

    class StreamingRayBackend(RayBackend):  # type: ignore[misc,unused-ignore]
        # joblib turns generators off for multiprocessing pools (terminating one
        # from its own result-handler thread can deadlock); Ray's pool collects
        # results in threads of its own, so outcomes can stream as jobs end.
        supports_return_generator = True

        # Ray's pool closes by asking each actor to exit, a call Ray retries (and
        # reports as failed) on actors that may restart: kill them, as
        # Pool.terminate() does after that call anyway.
        def terminate(self) -> None:
            pool: Any = getattr(self, "_pool", None)
            self._pool = None
            if pool is not None:
                import ray

                for actor, _ in getattr(pool, "_actor_pool", ()):
                    ray.kill(actor, no_restart=True)
            self.reset_batch_stats()

    return StreamingRayBackend


def _ray_backend(options: LaunchOptions, gpus_per_actor: float) -> Any:
    # An actor holds one CPU, so Ray spreads actors over the nodes by their
    # CPUs (zero-CPU actors would all land on one node). An actor that dies (a
    # crash, a job past its timeout) is restarted and its tasks retried: the job
    # counts the deaths itself and gives up after those its retries allow.
    remote_args: Dict[str, Any] = {
        "num_cpus": 1,
        "max_restarts": -1,
        "max_task_retries": engine_retries(options),
    }
    if gpus_per_actor:
        remote_args["num_gpus"] = gpus_per_actor
    return _ray_backend_class()(ray_remote_args=remote_args)


class RayPool:
    """Jobs on the actors of Ray's joblib pool: one actor process per job at a time."""

    def __init__(self, options: LaunchOptions, connection: RayConnection) -> None:
        self._options = options
        self._connection = connection
        self.n_workers = connection.cluster.n_workers
        self._generator: Optional[Any] = None

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        from joblib import Parallel, delayed, parallel_config
        from ray.exceptions import RayError

        limits = cluster_thread_limits(self._options, self._connection.cluster)
        specs = [
            replace(
                spec,
                max_worker_deaths=worker_deaths_allowed(self._options, spec),
                process_setup=limits,
            )
            for spec in specs
        ]
        n_actors = self._connection.n_actors
        with parallel_config(
            backend=_ray_backend(self._options, self._connection.gpus_per_actor)
        ):
            # A task waits for its actor (round robin): n_workers in flight keeps
            # n_workers jobs running; n_actors is 2 at least (joblib would run a
            # one-actor pool in this process).
            parallel = Parallel(
                n_jobs=n_actors,
                return_as="generator_unordered",
                verbose=self._options.verbose,
                pre_dispatch=self.n_workers,
                batch_size=1,
            )
            self._generator = parallel(delayed(JobTask(spec.num))(spec) for spec in specs)
            try:
                yield from self._generator
            except WorkerCannotRun as error:
                raise LauncherError(str(error)) from None
            except ImportError as error:
                raise LauncherError(cannot_unpickle(error)) from None
            except RayError as error:
                cause = getattr(error, "cause", None)
                if isinstance(cause, ImportError):
                    raise LauncherError(cannot_unpickle(cause)) from None
                if isinstance(cause, WorkerCannotRun):
                    raise LauncherError(str(cause)) from None
                raise LauncherError(
                    f"The Ray cluster failed the launch: {type(error).__name__}: {error}"
                ) from None
            finally:
                self._generator = None

    def stop(self) -> None:
        """An interrupt: joblib kills the pool's actors (so the jobs); the cluster keeps running."""
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()


def _shutdown_ray() -> None:
    """Disconnect from Ray; a local Ray started here stops with it, a cluster keeps running."""
    import ray

    _ray_state.pop("connection", None)
    ray.shutdown()
