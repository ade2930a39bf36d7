"""backend=dask, the cluster: reach a scheduler by address, or start an embedded LocalCluster.

One client per process and settings, made at the first launch and closed when
the process exits. A cluster that cannot serve Hydra jobs (no scheduler at the
address, no worker, workers without this launcher, workers with several
threads) is one clear :class:`LauncherError` before any job starts.
"""

import atexit
import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Dict, Tuple

from ._cluster import Cluster, engine_retries, missing_extra, n_at_once
from ._dask_client import start_client
from ._dask_devices import add_device_workers, check_gpu_workers
from ._errors import LauncherError
from ._options import LaunchOptions
from ._usage import machine_memory

log = logging.getLogger(__name__)


ONE_THREAD = (
    "Start each Dask worker with one thread: dask worker <scheduler address> --nthreads 1 "
    "(start several workers per host for several jobs at once: --nworkers N)."
)


@dataclass
class DaskConnection:
    client: Any
    local_cluster: Any  # the LocalCluster started here, or None
    cluster: Cluster


# Per process: the clients of this process, by settings; closed at exit.
_connections: Dict[Tuple[Any, ...], DaskConnection] = {}
_connections_lock = threading.Lock()


def import_distributed() -> Any:
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as error:
        raise missing_extra("dask", "dask", error) from None
    return distributed


def dask_connection(options: LaunchOptions, n_workers: int) -> DaskConnection:
    """The client of this process for these settings: made once, closed when the process exits."""
    settings = options.dask
    key = (
        settings.address,
        settings.dashboard_address,
        None if settings.address else n_workers,
        options.devices,
        options.devices_per_job,
        options.device_env,
        repr((settings.cluster, settings.adapt, settings.adapt_minimum)),
    )
    with _connections_lock:
        connection = _connections.get(key)
        if connection is None or connection.client.status != "running":
            if settings.cluster is not None:
                connection = _build_cluster(options, n_workers)
            elif settings.address is None:
                connection = _start_local_cluster(options, n_workers)
            else:
                connection = _connect_to_scheduler(options)
            _connections[key] = connection
            # Registered after distributed's own exit hooks, so it runs before them.
            atexit.register(close_dask, connection)
    check_threads(connection.client)
    if settings.address is not None:  # n_jobs counts the workers of the cluster, as they are now
        # (with gpus_per_job, those offering the GPUs a job asks for)
        capacity = check_gpu_workers(connection.client, options, settings.address)
        jobs = n_at_once(options.n_jobs, capacity)
        connection.cluster = replace(connection.cluster, n_workers=jobs, capacity=capacity)
    return connection


# With mem_limit set, the embedded cluster's nannies stop a worker whose process
# holds this much more (Dask's "terminate" at 95% of it): ~1.9x mem_limit, room for
# the job's own watch to act first and say why.
NANNY_BACKSTOP = 2.0
MEMORY_STAGES = ("target", "spill", "pause")


def _start_local_cluster(options: LaunchOptions, n_workers: int) -> DaskConnection:
    """A LocalCluster on loopback: the scheduler in this process, single-threaded worker processes.

    Its workers are restarted by their nanny when a job kills them.
    """
    distributed = import_distributed()
    import dask

    # Its INFO lines (workers joining, leaving) would drown the sweep's own log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    dashboard = options.dask.dashboard_address
    # Without a dashboard the scheduler still serves its health routes: on any free port.
    http = {} if dashboard else {"dashboard_address": "127.0.0.1:0"}
    # Jobs may start processes of their own (data loaders, joblib, multiprocessing),
    # which daemonic workers cannot. Nannies read this at every (re)start of a
    # worker, so it is set for the process; the cluster is closed at exit.
    dask.config.set({"distributed.worker.daemon": False})
    # The scheduler gives up on a task (KilledWorker) only after the job has given up itself.
    allowed = engine_retries(options) + 1  # Dask counts failures past which it gives up
    settings: Dict[str, Any] = {"distributed.scheduler.allowed-failures": allowed}
    memory: Dict[str, Any] = {}
    if options.mem_limit is not None:
        # Each job's own watch holds its processes together to mem_limit (see
        # _limits); the nanny, which sees the worker process alone, stops a worker a
        # well above it, as a backstop. Pausing and spilling are for data Dask
        # keeps in workers: jobs keep none, and a paused worker would stall its job.
        limit = options.mem_limit.on(machine_memory() or 0)
        memory = {"memory_limit": int(limit * NANNY_BACKSTOP)}
        settings.update({f"distributed.worker.memory.{k}": False for k in MEMORY_STAGES})
    with dask.config.set(settings):
        local = distributed.LocalCluster(
            **memory,
            # with devices, the workers are added below, each holding its own ids
            n_workers=0 if options.devices is not None else n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard,
            scheduler_kwargs=http,
            # TLS with credentials made for this launch (Security.temporary): only
            # this process and the cluster's workers hold them, so no other local
            # user can connect to the scheduler or a worker and run code as ours.
            security=True,
        )
    try:
        client = start_client(local, security=local.security, set_as_default=False)
    except BaseException:  # an interrupt while it connects: the workers go too
        local.close()
        raise
    if options.devices is not None:
        try:
            add_device_workers(local, client, options=options, n_workers=n_workers)
        except LauncherError:
            client.close()
            local.close()
            raise
    cluster = Cluster("dask", local.scheduler_address, n_workers, n_workers, True)
    return DaskConnection(client, local, cluster)


def _build_cluster(options: LaunchOptions, n_workers: int) -> DaskConnection:
    """The cluster of ``dask.cluster``, built here (see :mod:`._built_cluster`)."""
    from ._built_cluster import build_cluster, close_cluster

    built = build_cluster(options, n_workers)
    try:
        _check_imports(built.client, built.summary.address)
    except LauncherError:
        built.client.close()
        close_cluster(built.cluster)
        raise
    return DaskConnection(built.client, built.cluster, built.summary)


def _connect_to_scheduler(options: LaunchOptions) -> DaskConnection:
    import_distributed()  # one clear error without the [dask] extra
    dask = options.dask
    address, timeout = str(dask.address), dask.connect_timeout
    try:
        _probe_scheduler(address, timeout)
        client = start_client(address, timeout=timeout, set_as_default=False)
    except LauncherError:
        raise
    except Exception as error:  # noqa: BLE001 - OSError, TimeoutError, ValueError (bad address)...
        raise LauncherError(
            f"Cannot reach the Dask scheduler at hydra.launcher.dask.address={address} "
            f"within hydra.launcher.dask.connect_timeout={timeout:g}s "
            f"({type(error).__name__}: {error}). Check that the scheduler runs "
            f"(dask scheduler), that the host and port are right and reachable from here, "
            f"and that the protocol (tcp://, tls://) matches the scheduler's."
        ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:  # noqa: BLE001 - a timeout, in whatever type this version raises
        client.close()
        raise LauncherError(
            f"The Dask scheduler at {address} has no worker after {timeout:g}s "
            f"(hydra.launcher.dask.connect_timeout). Start workers "
            f"with: dask worker {address} --nthreads 1"
        ) from None
    try:
        _check_imports(client, address)
    except LauncherError:
        client.close()
        raise
    capacity = len(client.nthreads())
    return DaskConnection(client, None, Cluster("dask", address, capacity, capacity, False))


def _probe_scheduler(address: str, timeout: float) -> None:
    """Fail within ``timeout`` unless a Dask scheduler answers at ``address``.

    distributed.Client waits without end on a server that accepts the connection
    but does not speak Dask's protocol (the dashboard's port 8787 given for the
    scheduler's 8786, say); this exchange can be given up.
    """
    import asyncio

    import distributed.comm
    import distributed.security

    # untyped: as Any, they leave mypy's strict mode to the code around them
    comms: Any = distributed.comm
    security_class: Any = distributed.security.Security
    security = security_class()

    async def identity() -> Any:
        args = security.get_connection_args("client")
        comm = await comms.connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    try:  # connect() gives up on an unreachable address by itself (an OSError), a bit sooner
        answer = asyncio.run(asyncio.wait_for(identity(), timeout + 1))
    except asyncio.TimeoutError:
        answer = None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise LauncherError(
            f"Something answers at hydra.launcher.dask.address={address}, but not as a Dask "
            f"scheduler within hydra.launcher.dask.connect_timeout={timeout:g}s. Give the "
            f"scheduler's address (port 8786 by default; 8787 is its dashboard)."
        )


def _check_imports(client: Any, address: str) -> None:
    """Refuse workers that cannot import this launcher: they could not even unpickle a task.

    Such a worker drops its connection and leaves the cluster at the first task
    sent to it, without a word to the launcher. ``exec`` of an import statement
    is what a worker can always unpickle (a builtin) and run.
    """
    answers = client.run(exec, f"import {__name__}", {}, on_error="return")
    missing = {addr: error for addr, error in answers.items() if isinstance(error, BaseException)}
    if not missing:
        return
    error = next(iter(missing.values()))
    module = getattr(error, "name", None) or __name__
    shown = ", ".join(sorted(missing))
    raise LauncherError(
        f"The Dask workers {shown} at {address} cannot import the module {module!r} "
        f"({type(error).__name__}: {error}), so they cannot unpickle the launcher's tasks. "
        f"Install this launcher (pip install hydra-joblib-launcher), the app and the modules "
        f"it imports in the workers' Python environment on every worker host, then start "
        f"the workers again."
    )


def check_threads(client: Any) -> None:
    """Refuse a cluster whose workers may run two jobs at once in one process."""
    threaded = {addr: n for addr, n in client.nthreads().items() if n > 1}
    if threaded:
        shown = ", ".join(f"{addr} ({n} threads)" for addr, n in sorted(threaded.items()))
        raise LauncherError(
            f"backend=dask runs each Hydra job alone in a worker process, and these workers "
            f"run several threads: {shown}. Two jobs in one process would share logging, the "
            f"working directory and Hydra's global state. {ONE_THREAD}"
        )


def close_dask(connection: DaskConnection) -> None:
    """Close the client, and the LocalCluster started here with its workers."""
    for key, known in list(_connections.items()):
        if known is connection:
            del _connections[key]
    try:
        connection.client.close()
        if connection.local_cluster is not None:
            from ._built_cluster import close_cluster  # and the batch jobs it submitted

            close_cluster(connection.local_cluster)
    except Exception as error:  # noqa: BLE001 - closing at exit or after an interrupt
        log.debug("Closing the Dask client failed: %s", error)
