"""The sweep's live status, ``status.json`` in the sweep dir, written and read here only.

    launcher ── LiveStatus ──▶ status.json  (atomically rewritten by a thread of its own: at
       │            ▲                       job starts and ends, at most every MIN_GAP_S,
       │            │                       and every HEARTBEAT_S while the batch runs)
       │            └── the jobs' own started markers (JobFiles), looked at every POLL_S
       └── end(state): finished | interrupted | failed (with the error)

    hydra-joblib status ──▶ read_status(sweep_dir) ──▶ the dict, or one SweepDirError

Which jobs run is known from their started markers, never from what the
launcher handed to a pool. ``updated`` is the heartbeat another host reads to
tell a live launcher from a dead one.
"""

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._errors import SweepDirError
from ._jobfiles import JobFiles, write_atomically
from ._manifest import iso_time
from ._outcome import JobOutcome
from ._plan import JobSpec

STATUS = "status.json"
FORMAT = 1  # raised when a reader of the previous format would misread the file
HEARTBEAT_S = 5.0  # rewritten at least this often while a batch runs
POLL_S = 1.0  # how often the launcher looks for jobs that started
# At most one rewrite in this time: a burst of job ends is one write (an atomic rewrite
# costs ~1 ms on ext4, which flushes a file renamed over another).
MIN_GAP_S = 0.2
SILENT_AFTER_S = 60.0  # a launcher not heard from for this long is taken for gone
ENDED_STATES = ("finished", "interrupted", "failed")


@dataclass
class LiveStatus:
    """The status of one batch, kept in ``sweep_dir/status.json`` by the launching process."""

    specs: Sequence[JobSpec]
    sweep_dir: Path
    n_workers: int
    skipped: int = 0  # jobs a resumed sweep did not run again
    started: float = field(default_factory=time.time)
    _ended: Dict[int, bool] = field(default_factory=dict)  # num -> completed
    _durations: List[float] = field(default_factory=list)
    _running: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    _seen: Dict[int, int] = field(default_factory=dict)  # num -> mtime_ns of its started marker
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _writing: threading.Lock = field(default_factory=threading.Lock)  # the partial file is per pid
    _stop: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Event = field(default_factory=threading.Event)  # a job ended
    _thread: Optional[threading.Thread] = None

    def __post_init__(self) -> None:
        self._by_num = {spec.num: spec for spec in self.specs}
        self._marker_dirs = sorted({spec.marker_dir for spec in self.specs})
        self._batch = _next_batch(self.sweep_dir)
        self._launcher = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": iso_time(self.started),
            "python": sys.executable,
            "argv": list(sys.argv),
            "cwd": os.getcwd(),
        }
        self._write("running")
        self._thread = threading.Thread(target=self._watch, name="joblib-status", daemon=True)
        self._thread.start()

    # -- events ----------------------------------------------------------------
    def job_ended(self, outcome: JobOutcome) -> None:
        """Note the job's end; the watch writes it within MIN_GAP_S (not this thread)."""
        with self._lock:
            self._ended[outcome.num] = outcome.completed
            self._durations.append(outcome.duration_s)
            self._running.pop(outcome.num, None)
        self._changed.set()

    def end(self, state: str, *, error: Optional[BaseException] = None) -> None:
        """The batch ended: ``finished``, ``interrupted`` or ``failed`` (with ``error``)."""
        self._stop.set()
        self._changed.set()  # wakes the watch now, not at its next poll
        if self._thread is not None:
            self._thread.join()
        text = f"{type(error).__name__}: {error}" if error is not None else None
        self._write(state, error=text)

    # -- the watch -------------------------------------------------------------
    def _watch(self) -> None:
        """Rewrite the file when a job ended or started, and every HEARTBEAT_S."""
        written = scanned = time.monotonic()
        while not self._stop.is_set():
            self._changed.wait(POLL_S)
            # after a write, wait out the gap, so the ends of a burst are written once
            if self._stop.wait(max(0.0, written + MIN_GAP_S - time.monotonic())):
                return
            changed = self._changed.is_set()
            self._changed.clear()
            if time.monotonic() - scanned >= POLL_S:
                changed = self._look_for_starts() or changed
                scanned = time.monotonic()
            if changed or time.monotonic() - written >= HEARTBEAT_S:
                self._write("running")
                written = time.monotonic()

    def _look_for_starts(self) -> bool:
        """Note the jobs whose started marker is new or rewritten; True if any."""
        changed = False
        for directory in self._marker_dirs:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                num_text, _, kind = entry.name.partition(".")
                if kind != "started" or not num_text.isdigit():
                    continue
                num = int(num_text)
                if num not in self._by_num or num in self._ended:
                    continue
                try:
                    mtime = entry.stat().st_mtime_ns
                except OSError:
                    continue
                if self._seen.get(num) == mtime:
                    continue
                self._seen[num] = mtime
                note = JobFiles(directory, num).started()
                with self._lock:
                    if note and num not in self._ended:
                        self._running[num] = note
                        changed = True
        return changed

    # -- the file --------------------------------------------------------------
    def snapshot(self, state: str, *, error: Optional[str] = None) -> Dict[str, Any]:
        now = time.time()
        with self._lock:
            completed = sum(self._ended.values())
            failed = len(self._ended) - completed
            running = [
                _running_job(self._by_num[num], note) for num, note in sorted(self._running.items())
            ]
            durations = list(self._durations)
        left = len(self.specs) - completed - failed
        eta = None
        if durations and left and state == "running":
            eta = round(sum(durations) / len(durations) * left / max(self.n_workers, 1), 1)
        return {
            "format": FORMAT,
            "state": state,
            "error": error,
            "updated": iso_time(now),
            "updated_ts": now,
            "launcher": self._launcher,
            "sweep_dir": str(self.sweep_dir.absolute()),
            "batch": self._batch,
            "batch_started": iso_time(self.started),
            "jobs": len(self.specs),
            "workers": self.n_workers,
            "counts": {
                "completed": completed,
                "failed": failed,
                "running": len(running),
                "waiting": left - len(running),
                "skipped": self.skipped,
            },
            "running": running,
            "eta_s": eta,
        }

    def _write(self, state: str, *, error: Optional[str] = None) -> None:
        with self._writing:  # one writer at a time, so the last written is the newest
            data = json.dumps(self.snapshot(state, error=error), indent=1).encode()
            try:
                write_atomically(self.sweep_dir / STATUS, data)
            except OSError:  # the status is a courtesy: a full disk fails no job
                pass


def _running_job(spec: JobSpec, note: Dict[str, Any]) -> Dict[str, Any]:
    started = note.get("started")
    return {
        "num": spec.num,
        "overrides": list(spec.overrides),
        "started": iso_time(started) if isinstance(started, (int, float)) else None,
        "started_ts": started,
        "host": note.get("host"),
        "pid": note.get("pid"),
        "devices": note.get("devices"),
        "output_dir": note.get("output_dir"),
        "log_file": note.get("log_file"),
    }


def _next_batch(sweep_dir: Path) -> int:
    """1, or one more than the batch this same process wrote last (sweepers launch several)."""
    try:
        previous = read_status(sweep_dir)
    except SweepDirError:
        return 1
    launcher = (previous or {}).get("launcher") or {}
    if launcher.get("pid") == os.getpid() and launcher.get("host") == socket.gethostname():
        return int(previous.get("batch", 0)) + 1 if previous else 1
    return 1


def read_status(sweep_dir: Path) -> Optional[Dict[str, Any]]:
    """What ``sweep_dir/status.json`` says, or None if there is none.

    One SweepDirError if it cannot be read, or was written by a newer version.
    """
    path = sweep_dir / STATUS
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise SweepDirError(f"{path} cannot be read: {error}") from None
    if not isinstance(status, dict) or not isinstance(status.get("format"), int):
        raise SweepDirError(f"{path} is not a status file of hydra-joblib-launcher")
    if status["format"] > FORMAT:
        raise SweepDirError(
            f"{path} was written in status format {status['format']}, by a newer "
            f"hydra-joblib-launcher than this one (it reads format {FORMAT}); "
            "upgrade it: pip install -U hydra-joblib-launcher"
        )
    return status


def launcher_alive(status: Dict[str, Any], *, now: Optional[float] = None) -> Optional[bool]:
    """Whether the launcher that writes ``status`` still runs: True, False, or None (cannot tell).

    On its own host: its pid, and a recent heartbeat. From elsewhere: a heartbeat
    older than SILENT_AFTER_S means gone.
    """
    launcher = status.get("launcher") or {}
    updated = status.get("updated_ts")
    silent = (
        isinstance(updated, (int, float))
        and ((now if now is not None else time.time()) - updated) > SILENT_AFTER_S
    )
    pid = launcher.get("pid")
    if launcher.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process with that pid: the heartbeat decides
        return not silent
    if not isinstance(updated, (int, float)):
        return None
    return not silent
