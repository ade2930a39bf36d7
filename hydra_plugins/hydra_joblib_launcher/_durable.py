"""An ended job's outcome, durable in its job dir before anyone else hears of it.

    job's process (run_job_spec)                   launching process
    ────────────────────────────                   ─────────────────
    task starts ─▶ forget(output_dir)
    job ends    ─▶ keep(spec, outcome)              a pool broke ─▶ recover(spec): the outcome, or None
                     <output_dir>/.hydra/job_return.pkl    (the JobReturn, as Hydra's class)
                     <output_dir>/.hydra/job_outcome.json  (how it ended; written last)
                   ─▶ then the outcome is sent back  resume ─▶ kept_records(sweep_dir), read_return(path)

The record vouches for the pickle beside it: both are written atomically, the
record last, and both are removed as the job's task starts, so a record is
never older than its pickle. A job that ended before it had an output dir (its
config could not be composed) keeps its pickled outcome in the launch's marker
dir instead (:class:`JobFiles`), where only the launch that ran it looks.
"""

import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from hydra.core.utils import JobReturn

from ._errors import UntrustedFile
from ._jobfiles import read_trusted, write_atomically
from ._outcome import JobOutcome
from ._plan import JobSpec

log = logging.getLogger(__name__)

RETURN_FILE = "job_return.pkl"  # in the job's .hydra folder
RECORD_FILE = "job_outcome.json"  # idem

# The record holds every field of JobOutcome but the two pickles (in RETURN_FILE).
_PICKLED = ("payload", "configs")


def return_file(output_dir: str) -> Path:
    """Where a job's JobReturn is kept."""
    return Path(output_dir) / ".hydra" / RETURN_FILE


def record_file(output_dir: str) -> Path:
    return Path(output_dir) / ".hydra" / RECORD_FILE


def forget(output_dir: str) -> None:
    """The job starts again in ``output_dir``: what an earlier run kept there no longer holds."""
    record_file(output_dir).unlink(missing_ok=True)
    return_file(output_dir).unlink(missing_ok=True)


def keep(spec: JobSpec, outcome: JobOutcome) -> JobOutcome:
    """Make ``outcome`` durable; it comes back naming the file that keeps its JobReturn.

    In the job's output dir when it has one; a job that has none, or whose
    dir cannot be written, keeps it in the launch's marker dir.
    """
    output_dir = outcome.output_dir
    if output_dir:
        path = return_file(output_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, outcome.stored_return())
            outcome = dataclasses.replace(outcome, return_file=str(path))
            record = {**_fields(outcome), "overrides": list(spec.overrides)}
            write_atomically(record_file(output_dir), json.dumps(record).encode())
            return outcome
        except OSError as error:
            log.warning(f"#{spec.num}: cannot keep its outcome in {path.parent} ({error})")
            outcome = dataclasses.replace(outcome, return_file=None)
    spec.files.write_outcome(pickle.dumps(outcome))
    return outcome


def _fields(outcome: JobOutcome) -> Dict[str, Any]:
    return {
        field.name: getattr(outcome, field.name)
        for field in dataclasses.fields(outcome)
        if field.name not in _PICKLED
    }


def recover(spec: JobSpec) -> Optional[JobOutcome]:
    """The outcome ``spec``'s process kept in this launch, or None if it kept none (it did not end)."""
    output_dir = spec.files.started().get("output_dir")
    if output_dir:
        record = read_record(record_file(output_dir))
        if record is not None and _is_of(record, spec):
            try:
                return outcome_of(record, read_trusted(return_file(output_dir)))
            except UntrustedFile as error:
                log.warning(f"Job #{spec.num} is run again: {error}")
            except OSError:
                pass
    payload = spec.files.take_outcome()
    if payload is None:
        return None
    outcome = pickle.loads(payload)
    return outcome if isinstance(outcome, JobOutcome) else None


def _is_of(record: Dict[str, Any], spec: JobSpec) -> bool:
    return record.get("num") == spec.num and record.get("overrides") == list(spec.overrides)


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """A kept record, or None where there is none (or something else is there)."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def outcome_of(record: Dict[str, Any], stored_return: bytes) -> JobOutcome:
    """The JobOutcome a kept record and its JobReturn's pickle stand for."""
    names = {field.name for field in dataclasses.fields(JobOutcome)} - set(_PICKLED)
    fields = {name: value for name, value in record.items() if name in names}
    if fields.get("devices") is not None:
        fields["devices"] = tuple(fields["devices"])
    return JobOutcome(payload=stored_return, **fields)


def kept_records(sweep_dir: Path) -> Dict[Tuple[str, ...], Dict[str, Any]]:
    """The records kept in the job dirs under ``sweep_dir``, by overrides (the one that ended last)."""
    found: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    for path in _record_files(sweep_dir):
        record = read_record(path)
        if record is None or not _is_whole(record):
            continue
        key = tuple(record["overrides"])
        if key not in found or record["ended"] > found[key]["ended"]:
            found[key] = record
    return found


def _is_whole(record: Dict[str, Any]) -> bool:
    overrides = record.get("overrides")
    return (
        isinstance(overrides, list)
        and all(isinstance(o, str) for o in overrides)
        and isinstance(record.get("ended"), (int, float))
        and isinstance(record.get("num"), int)
    )


def _record_files(sweep_dir: Path) -> Iterator[Path]:
    """The record files under ``sweep_dir``, found without walking the jobs' own outputs.

    A dir holding a ``.hydra`` folder is a job's dir: its record is there, or
    nowhere. Hidden dirs (the launch's marker dirs) hold no job.
    """
    for top, dirs, _ in os.walk(sweep_dir):
        if ".hydra" in dirs:
            path = Path(top, ".hydra", RECORD_FILE)
            if path.is_file():
                yield path
            dirs.clear()
        else:
            dirs[:] = [name for name in dirs if not name.startswith(".")]


def read_return(path: str) -> JobReturn:
    """A kept JobReturn, read back (with the classes of its value, which must be importable)."""
    ret = pickle.loads(read_trusted(Path(path)))
    if not isinstance(ret, JobReturn):
        raise TypeError(f"{path} holds a {type(ret).__name__}, not a JobReturn")
    return ret
