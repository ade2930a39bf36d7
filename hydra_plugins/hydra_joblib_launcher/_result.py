"""A job that ran, as plain data for the launcher: its JobReturn pickled, and what it says of the job.

The JobReturn goes back without its two configs (pickled apart, unpickled
only when read, see :class:`LazyConfigs`); an error or a return value that
cannot be pickled fails the job with a message saying so, never the batch.
"""

import dataclasses
import os
import pickle
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from ._errors import RemoteJobError
from ._outcome import JobOutcome, describe, not_sendable
from ._pickling import dumps
from ._plan import JobSpec
from ._returned import returned_number, type_name


def outcome_of(
    spec: JobSpec, ret: JobReturn, *, started: float, where_logged: Dict[str, Any]
) -> JobOutcome:
    payload, configs, ret = _pickle_return(ret, spec)
    output_dir, log_file = where_logged.get("paths") or _log_file(ret.hydra_cfg)
    error_type = error_text = None
    if ret.status != JobStatus.COMPLETED:
        error_type, error_text = describe(ret._return_value)
    return JobOutcome(
        num=spec.num,
        completed=ret.status == JobStatus.COMPLETED,
        payload=payload,
        started=started,
        ended=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        output_dir=output_dir,
        log_file=log_file,
        error_type=error_type,
        error=error_text,
        devices=devices_seen(spec),
        configs=configs,
        return_type=type_name(ret._return_value) if error_type is None else None,
        value=returned_number(ret._return_value) if error_type is None else None,
    )


def devices_seen(spec: JobSpec) -> Optional[Tuple[str, ...]]:
    if spec.device_env is None or spec.device_env not in os.environ:
        return None
    return tuple(os.environ[spec.device_env].split(","))


def _log_file(hydra_cfg: Optional[DictConfig]) -> Tuple[Optional[str], Optional[str]]:
    """The job's output dir and the file its job logging writes to, when Hydra says."""
    if hydra_cfg is None:
        return None, None
    try:
        output_dir = str(hydra_cfg.hydra.runtime.output_dir)
        handlers = hydra_cfg.hydra.job_logging.get("handlers") or {}
        for handler in handlers.values():
            if "filename" in handler:
                return output_dir, str(Path(output_dir) / Path(str(handler.filename)).name)
        return output_dir, None
    except Exception:  # noqa: BLE001 - a log path is a courtesy, never a failure
        return None, None


def _sendable_error(error: BaseException) -> BaseException:
    """``error`` if it survives pickling both ways, else a stand-in keeping its text."""
    try:
        pickle.loads(dumps(error))
        return error
    except Exception:  # noqa: BLE001
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return RemoteJobError(f"{type(error).__name__}: {error}\n{text}")


def _pickle_return(ret: JobReturn, spec: JobSpec) -> Tuple[bytes, bytes, JobReturn]:
    """``ret`` without its configs, pickled; its (cfg, hydra_cfg), pickled; and ``ret``."""
    if ret.status == JobStatus.FAILED:
        ret._return_value = _sendable_error(ret._return_value)
    configs = dumps((ret.cfg, ret.hydra_cfg)) if ret.cfg is not None else b""
    head = dataclasses.replace(ret, cfg=None, hydra_cfg=None) if configs else ret
    try:
        return dumps(head), configs, ret
    except Exception as error:  # noqa: BLE001
        ret._return_value = head._return_value = not_sendable(spec, ret._return_value, error)
        ret.status = head.status = JobStatus.FAILED
        return dumps(head), configs, ret
