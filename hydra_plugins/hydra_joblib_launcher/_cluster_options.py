"""Validation of the cluster backends' own settings (``hydra.launcher.dask``, ``hydra.launcher.ray``).

Pure, as _options: a bad value is one :class:`LauncherConfigError` naming the
key, the value and what is allowed.
"""

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from ._values import refuse, whole_number

_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


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


def dask_options(node: Any) -> DaskOptions:
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
    if not isinstance(target, str) or not _DOTTED.match(target):
        raise refuse("dask.cluster", dict(node), example)
    if address is not None:
        raise refuse(
            "dask.cluster",
            dict(node),
            f"it builds a cluster, and dask.address={address!r} names one already running",
            "Set one of them, the other null",
        )
    return tuple(sorted(node.items()))


def ray_options(node: Any) -> RayOptions:
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


def no_num_gpus(ray: RayOptions, backend: str) -> None:
    init = dict(ray.init)
    if backend == "ray" and "num_gpus" in init:
        raise refuse(
            "ray.init.num_gpus",
            init["num_gpus"],
            "with hydra.launcher.devices the local Ray gets exactly those GPUs; remove num_gpus",
        )
