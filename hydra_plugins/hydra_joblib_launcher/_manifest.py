"""The sweep's manifest, written and read here only.

``jobs.jsonl`` in the sweep dir holds one JSON object per ended job, appended
as each job ends; each job's process keeps its whole ``JobReturn`` beside its
outputs (``.hydra/job_return.pkl``, see :mod:`._durable`), for ``resume``. A
later record of the same overrides replaces an earlier one.
"""

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

from ._outcome import JobOutcome

log = logging.getLogger(__name__)

MANIFEST = "jobs.jsonl"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def record_job(sweep_dir: Path, outcome: JobOutcome, overrides: Sequence[str]) -> None:
    """Append the job's record to the manifest (its process kept its result, see :mod:`._durable`)."""
    record: Dict[str, Any] = {
        "num": outcome.num,
        "overrides": list(overrides),
        "status": "COMPLETED" if outcome.completed else "FAILED",
        "started": _iso(outcome.started),
        "ended": _iso(outcome.ended),
        "duration_s": round(outcome.duration_s, 3),
        "host": outcome.host,
        "pid": outcome.pid,
        "output_dir": outcome.output_dir,
        "log_file": outcome.log_file,
        "devices": list(outcome.devices) if outcome.devices is not None else None,
    }
    if outcome.completed and outcome.return_file:
        record["return_file"] = outcome.return_file
    if not outcome.completed:
        record["error_type"] = outcome.error_type
        record["error"] = outcome.error
    with open(sweep_dir / MANIFEST, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_completed(sweep_dir: Path) -> Dict[Tuple[str, ...], Dict[str, Any]]:
    """The last record of each job (by overrides) in ``sweep_dir`` whose job COMPLETED.

    A line that is not a job's record (cut short by a crash of the launcher,
    or written by something else) is skipped.
    """
    completed: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    path = sweep_dir / MANIFEST
    if not path.exists():
        return completed
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            overrides = record.get("overrides") if isinstance(record, dict) else None
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                continue
            key = tuple(overrides)
            if record.get("status") == "COMPLETED":
                completed[key] = record
            else:
                completed.pop(key, None)
    return completed
