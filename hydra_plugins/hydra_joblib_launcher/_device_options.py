"""Validation of the GPU keys: ``devices`` (a list or ``auto``), ``devices_per_job``,
``device_env`` and ``gpus_per_job``, for each backend.

Pure, as :mod:`._options`. Two ways to give jobs GPUs, one per kind of place:

* ``devices`` (+ ``devices_per_job``): machines the launcher starts the workers
  of itself (loky, multiprocessing, the embedded Dask cluster, local Ray): it
  hands each job its own ids;
* ``gpus_per_job``: a cluster reached by address (Dask, Ray), whose scheduler
  knows its workers' GPUs: each job asks it for that many.
"""

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from ._errors import LauncherConfigError
from ._values import refuse, whole_number

AUTO = "auto"
CUDA = "CUDA_VISIBLE_DEVICES"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DeviceSettings:
    devices: Optional[Tuple[str, ...]]  # None: no pool (or not found yet, with auto)
    per_job: int
    env: str
    auto: bool  # devices=auto: the ids are found at setup (see _accelerators)
    gpus_per_job: Optional[float]  # asked of a cluster's scheduler per job


def device_settings(
    config: Mapping[str, Any], *, backend: str, address: Optional[str]
) -> DeviceSettings:
    """The GPU keys of ``config`` for ``backend`` (``address``: its cluster's, if any)."""
    per_job = whole_number(
        "devices_per_job", config.get("devices_per_job", 1), "give a positive integer"
    )
    if per_job < 1:
        raise refuse("devices_per_job", per_job, "give a positive integer")
    env = config.get("device_env", CUDA)
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        raise refuse(
            "device_env", env, "give an environment variable name such as CUDA_VISIBLE_DEVICES"
        )
    raw = config.get("devices")
    gpus = _gpus_per_job(config.get("gpus_per_job"), backend=backend, address=address)
    if raw is not None and gpus is not None:
        raise refuse(
            "gpus_per_job",
            gpus,
            "give either devices (ids the launcher hands out on workers it starts) or "
            "gpus_per_job (asked of a cluster's scheduler), not both",
        )
    if gpus is not None:
        return DeviceSettings(None, per_job, env, False, gpus)
    if raw is None:
        return DeviceSettings(None, per_job, env, False, None)
    _where_devices_go(raw, backend=backend, address=address, env=env)
    if raw == AUTO:
        return DeviceSettings(None, per_job, env, True, None)
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise refuse("devices", raw, "give a list of device ids such as [0,1,2,3], or auto")
    devices = tuple(str(d).strip() for d in raw)
    if any(not d or "," in d for d in devices) or len(set(devices)) != len(devices):
        raise refuse(
            "devices", list(raw), "give a list of distinct, non-empty device ids such as [0,1]"
        )
    enough_devices(devices, per_job, shown=repr(list(raw)))
    return DeviceSettings(devices, per_job, env, False, None)


def enough_devices(devices: Tuple[str, ...], per_job: int, *, shown: str) -> None:
    """Refuse a pool that cannot serve one job."""
    if len(devices) < per_job:
        raise LauncherConfigError(
            f"hydra.launcher.devices={shown} holds {len(devices)} device id(s), but "
            f"hydra.launcher.devices_per_job={per_job} asks for {per_job} per job; "
            "list more devices or lower devices_per_job"
        )


def _where_devices_go(raw: Any, *, backend: str, address: Optional[str], env: str) -> None:
    shown = raw if isinstance(raw, str) else list(raw) if hasattr(raw, "__iter__") else raw
    if backend in ("dask", "ray") and address is not None:
        raise refuse(
            "devices",
            shown,
            f"on a {backend} cluster reached by address the launcher does not start the "
            f"workers, so it cannot hand them device ids; use "
            f"hydra.launcher.gpus_per_job=1 (the cluster's scheduler gives each job its GPUs)",
        )
    if backend == "ray" and env != CUDA:
        raise refuse(
            "device_env",
            env,
            f"backend=ray hands each job its GPUs in {CUDA} (Ray sets it); remove device_env",
        )


def _gpus_per_job(value: Any, *, backend: str, address: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    allowed = "give a positive number of GPUs (1, 2, or 0.5 to share one on Ray), or null"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise refuse("gpus_per_job", value, allowed)
    if backend not in ("dask", "ray"):
        raise refuse(
            "gpus_per_job",
            value,
            "it asks a cluster's scheduler for GPUs (backend=dask or ray with an address); "
            "on this machine give the ids: hydra.launcher.devices=auto (or [0,1,...])",
        )
    if address is None:
        raise refuse(
            "gpus_per_job",
            value,
            f"backend={backend} without {backend}.address starts its workers here, and hands "
            f"them ids from hydra.launcher.devices: give devices=auto (or [0,1,...]) and "
            f"devices_per_job instead",
        )
    if backend == "dask" and value != int(value):
        raise refuse("gpus_per_job", value, "Dask gives each job whole GPUs: give 1, 2, ...")
    return float(value) if value != int(value) else int(value)
