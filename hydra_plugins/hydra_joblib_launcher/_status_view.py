"""The status of a sweep as text: a table that reads in a plain 80-column terminal and in a CI log.

    Sweep ─▶ render(sweep) ─▶ lines: the launcher and its state, the counts and ETA,
                              the running jobs with their elapsed time, the failed jobs
                              with their error and log file, the command that resumes it

Plain ASCII, no escape codes: ``hydra-joblib status --watch`` redraws it in place.
"""

import socket
import textwrap
from datetime import datetime
from typing import Any, Dict, List, Optional

from ._sweepdir import Sweep

WIDTH = 80
FAILED_SHOWN = 20
_WHOLE = ("cd ", "log: ")


def clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def timestamp(iso: Any) -> Optional[float]:
    """Seconds since the epoch of a time as the manifest and status.json write it."""
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


def _utc(iso: Any) -> str:
    """``2026-01-31T12:00:00.123+00:00`` as ``2026-01-31 12:00:00 UTC``."""
    text = str(iso) if iso else "?"
    return f"{text[:10]} {text[11:19]} UTC" if len(text) >= 19 else text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def render(sweep: Sweep, *, width: int = WIDTH) -> List[str]:
    """The status table of ``sweep``, one string a line, none longer than ``width`` but commands."""
    lines = [_cut(f"Sweep     {sweep.path}", width)]
    status = sweep.status
    if status is None:
        lines.append(
            "Launcher  unknown: no status.json (a launcher before 1.5, or it died before its first job)"
        )
        lines += _counts_from_records(sweep)
    else:
        lines += _launcher(sweep, status, width)
        lines += _batch(sweep, status)
        lines += _running(sweep, status.get("running") or [], width)
    lines += _failed(sweep.failed, width)
    command = sweep.resume_command()
    if command and sweep.needs_resume():
        lines += ["", "Resume it with:", f"  {command}"]
    elif command and sweep.state == "unknown":
        lines += ["", "If it stopped short, resume it with (rebuilt from multirun.yaml):"]
        lines.append(f"  {command}")
    # Commands and paths are kept whole, to be copied: the terminal wraps them.
    return [line if line.lstrip().startswith(_WHOLE) else _cut(line, width) for line in lines]


def _launcher(sweep: Sweep, status: Dict[str, Any], width: int) -> List[str]:
    launcher = status.get("launcher") or {}
    host, pid = launcher.get("host", "?"), launcher.get("pid", "?")
    updated = status.get("updated_ts")
    ago = clock(sweep.read_at - updated) if isinstance(updated, (int, float)) else "?"
    head = f"Launcher  {host} pid {pid}, started {_utc(launcher.get('started'))}"
    state = sweep.state
    if state == "running":
        said = f"running (updated {ago} ago)"
    elif state == "gone":
        where = "its process is gone" if host == socket.gethostname() else "not heard from"
        said = f"GONE: {where}; last update {_utc(status.get('updated'))}, {ago} ago"
    elif state == "failed":
        said = f"FAILED at {_utc(status.get('updated'))}: {status.get('error')}"
    else:
        said = f"{state} at {_utc(status.get('updated'))}"
    lines = [head]
    lines += textwrap.wrap(said, width, initial_indent="  ", subsequent_indent="    ")
    return lines


def _batch(sweep: Sweep, status: Dict[str, Any]) -> List[str]:
    counts = status.get("counts") or {}
    skipped = counts.get("skipped") or 0
    # the jobs running when the launcher died or was interrupted were stopped with it
    running = "stopped" if sweep.state in ("gone", "interrupted") else "running"
    line = (
        f"Batch {status.get('batch', 1)}  {status.get('jobs', '?')} jobs: "
        f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
        f"{counts.get('running', 0)} {running}, {counts.get('waiting', 0)} waiting"
    )
    lines = [line + (f"; {skipped} skipped" if skipped else "")]  # completed before a resume
    began = timestamp(status.get("batch_started"))
    updated = status.get("updated_ts")
    if began is not None and isinstance(updated, (int, float)):
        live = sweep.state == "running"
        elapsed = (sweep.read_at if live else updated) - began
        eta = status.get("eta_s")
        left = ""
        if live and isinstance(eta, (int, float)):
            left = f", left ~{clock(eta - (sweep.read_at - updated))}"
        elif live:
            left = ", left ~?"
        lines.append(f"Elapsed   {clock(elapsed)}{left}")
    return lines


def _counts_from_records(sweep: Sweep) -> List[str]:
    failed = len(sweep.failed)
    return [
        f"Ended     {len(sweep.records)} jobs: {len(sweep.records) - failed} completed, {failed} failed"
    ]


def _running(sweep: Sweep, running: List[Dict[str, Any]], width: int) -> List[str]:
    if not running or sweep.state != "running":
        return []
    lines = ["", f"Running   {'elapsed':>7}  {'host:pid':<18}  overrides"]
    for job in running:
        began = job.get("started_ts")
        elapsed = clock(sweep.read_at - began) if isinstance(began, (int, float)) else "?"
        where = _cut(f"{job.get('host', '?')}:{job.get('pid', '?')}", 18)
        devices = job.get("devices")
        shown = " ".join(job.get("overrides") or []) or "(no overrides)"
        if devices:
            shown += f" [devices {','.join(map(str, devices))}]"
        lines.append(_cut(f"  #{job.get('num', '?'):<5} {elapsed:>7}  {where:<18}  {shown}", width))
    return lines


def _failed(failed: List[Dict[str, Any]], width: int) -> List[str]:
    if not failed:
        return []
    lines = ["", f"Failed ({len(failed)})"]
    for record in failed[:FAILED_SHOWN]:
        shown = " ".join(record.get("overrides") or []) or "(no overrides)"
        lines.append(_cut(f"  #{record.get('num', '?'):<5} {shown}", width))
        error = f"{record.get('error_type')}: {record.get('error')}"
        first = error.splitlines()[0] if error else ""
        lines.append(_cut(f"         {first}", width))
        where = record.get("log_file") or record.get("output_dir") or "no log: it did not start"
        lines.append(f"         log: {where}")
    if len(failed) > FAILED_SHOWN:
        lines.append(f"  ... and {len(failed) - FAILED_SHOWN} more in jobs.jsonl")
    return lines
