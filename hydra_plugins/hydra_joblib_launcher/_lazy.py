"""A JobReturn whose two configs are unpickled only when first read.

The launcher receives every job's JobReturn as it ends; sweepers mostly read
its ``return_value`` alone. See :class:`LazyConfigs`.
"""

import dataclasses
import pickle
import threading
from typing import Any, Dict, Optional

from hydra.core.utils import JobReturn
from omegaconf import DictConfig


def _fields_of(ret: JobReturn) -> Dict[str, Any]:
    return {f.name: getattr(ret, f.name) for f in dataclasses.fields(JobReturn)}


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

    def __init__(
        self, head: Optional[JobReturn] = None, *, configs: bytes = b"", **fields: Any
    ) -> None:
        # ``fields`` instead of ``head``: dataclasses.replace() builds ``type(self)(**fields)``.
        self._configs = b""
        self._loading = threading.Lock()  # two threads reading first unpickle once
        super().__init__(**(_fields_of(head) if head is not None else fields))
        self._configs = configs

    def _load(self) -> None:
        with self._loading:
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
