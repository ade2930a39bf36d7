"""The sweep's manifest, written and read here only.

``jobs.jsonl`` in the sweep dir holds one JSON object per ended job, appended
as each job ends; each job's process keeps its whole ``JobReturn`` beside its
outputs (``.hydra/job_return.pkl``, see :mod:`._durable`), for ``resume``. A
later record of the same overrides replaces an earlier one.
"""

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ._errors import SweepDirError
from ._outcome import JobOutcome

log = logging.getLogger(__name__)

MANIFEST = "jobs.jsonl"
FORMAT = 1  # of a record; raised when a reader of the previous format would misread one


def iso_time(timestamp: float) -> str:
    """A time as the manifest writes it (UTC, to the millisecond): such strings sort by time."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds")


def record_job(sweep_dir: Path, outcome: JobOutcome, overrides: Sequence[str]) -> None:
    """Append the job's record to the manifest (its process kept its result, see :mod:`._durable`)."""
    record: Dict[str, Any] = {
        "format": FORMAT,
        "num": outcome.num,
        "overrides": list(overrides),
        "status": "COMPLETED" if outcome.completed else "FAILED",
        "started": iso_time(outcome.started),
        "ended": iso_time(outcome.ended),
        "duration_s": round(outcome.duration_s, 3),
        "host": outcome.host,
        "pid": outcome.pid,
        "output_dir": outcome.output_dir,
        "log_file": outcome.log_file,
        "devices": list(outcome.devices) if outcome.devices is not None else None,
        "config_digest": outcome.config_digest,
        "max_rss_bytes": outcome.max_rss_bytes,
        "cpu_s": outcome.cpu_s,
        "attempts": outcome.attempts,
    }
    if outcome.completed and outcome.return_file:
        record["return_file"] = outcome.return_file
    if outcome.value is not None:
        record["value"] = outcome.value
    if not outcome.completed:
        record["error_type"] = outcome.error_type
        record["error"] = outcome.error
    with open(sweep_dir / MANIFEST, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def close_cut_line(sweep_dir: Path) -> None:
    """End a last line cut short (the launcher was killed as it wrote it), so the next record starts whole."""
    path = sweep_dir / MANIFEST
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
    except FileNotFoundError:
        pass


def read_records(
    sweep_dir: Path, *, refuse_newer: bool = False
) -> Dict[Tuple[str, ...], Dict[str, Any]]:
    """The last record of each job (by overrides) in ``sweep_dir``'s manifest.

    A line that is not a job's record (cut short by a crash of the launcher,
    or written by something else) is skipped, with a warning. ``refuse_newer``:
    one SweepDirError if a record was written in a newer format.
    """
    records: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    path = sweep_dir / MANIFEST
    if not path.exists():
        return records
    skipped = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            record = _record(line)
            if record is None:
                skipped.append(number)
                continue
            if refuse_newer and _newer(record):
                raise SweepDirError(
                    f"{path} line {number} was written in manifest format {record['format']}, "
                    f"by a newer hydra-joblib-launcher than this one (it reads format {FORMAT}); "
                    "upgrade it: pip install -U hydra-joblib-launcher"
                )
            records[tuple(record["overrides"])] = record
    if skipped:
        lines = (
            f"line {skipped[0]} is not a whole record"
            if len(skipped) == 1
            else (f"lines {', '.join(map(str, skipped))} are not whole records")
        )
        log.warning(f"{path}: {lines} (cut short?); ignored")
    return records


def _record(line: str) -> Optional[Dict[str, Any]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    overrides = record.get("overrides") if isinstance(record, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return None
    return record if isinstance(record.get("ended"), str) else None


def _newer(record: Dict[str, Any]) -> bool:
    version = record.get("format", 1)
    return not isinstance(version, int) or version > FORMAT
