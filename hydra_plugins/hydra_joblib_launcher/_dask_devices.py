"""backend=dask and GPUs: workers holding their own device ids on the embedded cluster, and
the GPU resource of a cluster reached by address.

    embedded LocalCluster, devices set:
      one single-threaded worker per group of devices_per_job ids ─ its nanny spawns the
      worker process with device_env=<its ids> already in the environment, so the job
      (and every module it imports) sees only those; a worker a job killed comes back
      with the same ids
    a scheduler by address, gpus_per_job=k:
      each job's task asks for the worker resource GPU=k (dask worker --resources GPU=n);
      a cluster where no worker offers it is one error before any job starts

distributed is imported inside functions only.
"""

import asyncio
import functools
import os
from typing import Any, Dict, List, Optional, Tuple

from ._errors import LauncherError
from ._options import LaunchOptions

GPU = "GPU"  # the resource name workers are started with: dask worker --resources GPU=n


def device_groups(options: LaunchOptions, n_workers: int) -> List[Tuple[str, ...]]:
    """The ids of each of the ``n_workers`` workers: consecutive groups of devices_per_job."""
    devices, per_job = options.devices or (), options.devices_per_job
    return [devices[i * per_job : (i + 1) * per_job] for i in range(n_workers)]


# Per event loop: one nanny at a time puts its ids in this process's environment
# while it spawns its worker process (see DeviceNanny).
_spawn_locks: Dict[Any, asyncio.Lock] = {}


@functools.lru_cache(maxsize=None)
def device_nanny_class() -> Any:
    from distributed import Nanny

    class DeviceNanny(Nanny):  # type: ignore[misc,unused-ignore]
        """A nanny whose worker process starts with the device ids in its environment.

        distributed 2026.8 sets a nanny's ``env`` in the worker process only after
        that process has started and imported the launching script again (spawn
        does, for ``python app.py``): what the script imports at its top would read
        the launcher's value. Variables in the process's environment when the
        worker is spawned (``pre_spawn_env``, which distributed never takes back)
        are there from the first instruction: this nanny sets its ids there only
        while it (re)starts its worker, one nanny at a time, and restores them.
        """

        def __init__(self, *args: Any, device_env: Dict[str, str], **kwargs: Any) -> None:
            kwargs["env"] = {**(kwargs.get("env") or {}), **device_env}
            super().__init__(*args, **kwargs)
            self.device_env = dict(device_env)
            self.pre_spawn_env = {**self.pre_spawn_env, **self.device_env}

        async def instantiate(self) -> Any:
            loop = asyncio.get_running_loop()
            lock = _spawn_locks.setdefault(loop, asyncio.Lock())
            async with lock:
                before = {name: os.environ.get(name) for name in self.device_env}
                try:
                    return await super().instantiate()
                finally:
                    for name, value in before.items():
                        if value is None:
                            os.environ.pop(name, None)
                        else:
                            os.environ[name] = value

    return DeviceNanny


def add_device_workers(local: Any, client: Any, *, options: LaunchOptions, n_workers: int) -> None:
    """Start ``n_workers`` workers on ``local`` (made with none), each holding its own ids;
    return once they are all up."""
    base = dict(local.new_spec["options"])
    nanny = device_nanny_class()
    specs = {}
    for ids in device_groups(options, n_workers):
        name = f"devices-{'-'.join(ids)}"
        env = {options.device_env: ",".join(ids)}
        specs[name] = {"cls": nanny, "options": {**base, "name": name, "device_env": env}}
    local.worker_spec.update(specs)
    local.scale(len(local.worker_spec))  # starts those specs (no new ones: as many as asked)
    timeout = options.dask.connect_timeout
    try:
        client.wait_for_workers(n_workers, timeout=timeout)
    except Exception:  # noqa: BLE001 - a timeout, in whatever type this version raises
        up = len(client.nthreads())
        raise LauncherError(
            f"The embedded Dask cluster started {up} of its {n_workers} device workers within "
            f"hydra.launcher.dask.connect_timeout={timeout:g}s (they start one after another, "
            f"each with its ids in {options.device_env}). Raise dask.connect_timeout on a "
            f"loaded machine; the workers' errors, if any, are in the log above."
        ) from None


def gpu_workers(client: Any, per_job: float) -> List[str]:
    """The workers of ``client``'s cluster offering the resource GPU >= ``per_job``."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return sorted(
        address
        for address, info in workers.items()
        if float((info.get("resources") or {}).get(GPU, 0)) >= per_job
    )


def check_gpu_workers(client: Any, options: LaunchOptions, address: str) -> int:
    """How many workers can take a job asking for gpus_per_job; none is one clear error."""
    per_job: Optional[float] = options.gpus_per_job
    if per_job is None:
        return len(client.nthreads())
    able = gpu_workers(client, per_job)
    if able:
        return len(able)
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    offered = ", ".join(
        f"{addr} ({dict(info.get('resources') or {}) or 'no resources'})"
        for addr, info in sorted(workers.items())
    )
    raise LauncherError(
        f"hydra.launcher.gpus_per_job={per_job:g} asks each job for the worker resource "
        f"{GPU}={per_job:g}, and no worker of the Dask scheduler at {address} offers it: "
        f"{offered}. Start the workers with their GPUs as a resource and their own ids, one "
        f"worker per GPU: CUDA_VISIBLE_DEVICES=0 dask worker {address} --nthreads 1 "
        f"--resources {GPU}=1 (and so on for each GPU), or remove gpus_per_job."
    )
