"""One object per job for its files in the launch's marker dir: where each lives, how it is written, how it is read.

    <num>.started    JSON, written as the job's process picks it up (where it runs), and again as
                     its task starts (where it writes and logs): the job started
    <num>.timeout    the job overran its time limit and had its own process killed
    <num>.memory     JSON: the job went over its memory limit (the limit, the peak it reached)
    <num>.attempts   one line per start, on clusters that re-run a job whose worker died
    <num>.outcome    the pickled JobOutcome, written by a process started for that job alone
                     (or by one that could not keep it in the job's dir, see _durable)

Workers write them, the launcher reads them (after a crash, a timeout, a
fresh process's exit). Every write is atomic where a reader may look at any
moment: a temporary file, then a rename. Every file is written for its owner
alone (mode 0600), and a file to unpickle is read only if it is the reader's
own and no one else can write it (:func:`read_trusted`): unpickling runs code.
"""

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, Optional

from ._errors import UntrustedFile


def append_to_log(log_file: str, message: str, *, level: int = logging.WARNING) -> None:
    """Add one line to a job's log file, as Hydra's default job logging writes them.

    For a process other than the job's (the launcher, after the job's process
    died), or when the job's logging is gone.
    """
    record = logging.LogRecord(__package__ or __name__, level, __file__, 0, message, (), None)
    line = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s").format(record)
    try:
        with open(log_file, "a") as f:
            f.write(line + "\n")
    except OSError:  # a log line is a courtesy, never a failure
        pass


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` for its owner alone, so that a reader sees the whole file or none."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)  # a leftover of a process with this pid
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def read_trusted(path: Path) -> bytes:
    """The content of ``path``, a file to unpickle: only if this user owns it and no one else can write it."""
    with open(path, "rb") as f:
        why = _untrusted(os.fstat(f.fileno()))
        if why:
            raise UntrustedFile(
                f"Refusing to unpickle {path}: {why}. This launcher unpickles only files "
                "that you own and that no one else can write, since unpickling runs code. "
                "If you did not change it, someone else may have: look at who wrote it. If "
                "the sweep dir is shared on purpose, see the README's Security section."
            )
        return f.read()


def _untrusted(stat: os.stat_result) -> Optional[str]:
    if not hasattr(os, "geteuid"):
        return None  # no owners to compare here (Windows)
    if stat.st_uid != os.geteuid():
        return f"it is owned by user id {stat.st_uid}, not by you ({os.geteuid()})"
    if stat.st_mode & 0o022:
        return f"its group or others can write it (mode {stat.st_mode & 0o777:o})"
    return None


class JobFiles:
    """The files of job ``num`` in ``directory`` (the launch's marker dir)."""

    def __init__(self, directory: str, num: int) -> None:
        self.directory = Path(directory)
        self.num = num

    def _path(self, kind: str) -> Path:
        return self.directory / f"{self.num}.{kind}"

    # -- started: where the job runs, noted as its task starts ---------------------------
    def note_started(self, record: Dict[str, Any]) -> None:
        write_atomically(self._path("started"), json.dumps(record).encode())

    def started(self) -> Dict[str, Any]:
        """What the job noted as it started (pid, host, started, output_dir, log_file, devices), or {}."""
        try:
            record = json.loads(self._path("started").read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def worker_pid(self) -> Optional[int]:
        """The process the job started in, if on this host (None: it did not start, or elsewhere)."""
        record = self.started()
        pid = record.get("pid")
        if record.get("host") != socket.gethostname() or not isinstance(pid, int):
            return None
        return pid

    def warn_in_log(self, message: str) -> None:
        """Add a warning to the job's own log file, if it started and has one."""
        log_file = self.started().get("log_file")
        if isinstance(log_file, str):
            append_to_log(log_file, message)

    # -- timeout: the job's own process was killed for overrunning ---------------------
    def mark_timed_out(self, limit: float) -> None:
        self._path("timeout").write_text(f"{limit:g}")

    def timed_out(self) -> bool:
        return self._path("timeout").exists()

    # -- memory: the job went over its memory limit and was stopped ---------------------
    def mark_over_memory(self, limit: int, peak: int) -> None:
        write_atomically(self._path("memory"), json.dumps({"limit": limit, "peak": peak}).encode())

    def over_memory(self) -> Optional[Dict[str, int]]:
        """The limit and the peak of a job stopped for its memory, or None."""
        try:
            record = json.loads(self._path("memory").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def forget_attempt(self) -> None:
        """The job runs again: what its previous attempt left here no longer holds."""
        for kind in ("started", "timeout", "memory", "attempts", "outcome"):
            self._path(kind).unlink(missing_ok=True)

    # -- attempts: starts on a cluster that re-runs a job whose worker died ------------
    def count_start(self) -> None:
        with open(self._path("attempts"), "a") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")

    def starts(self) -> int:
        """How many times the job started before (each start that did not end)."""
        try:
            return len(self._path("attempts").read_text().splitlines())
        except OSError:
            return 0

    def forget_starts(self) -> None:
        self._path("attempts").unlink(missing_ok=True)

    # -- outcome: from a process started for this job alone -----------------------------
    def write_outcome(self, payload: bytes) -> None:
        write_atomically(self._path("outcome"), payload)

    def take_outcome(self) -> Optional[bytes]:
        """The pickled outcome the job's process wrote, removed from disk; None if it wrote none."""
        path = self._path("outcome")
        try:
            payload = read_trusted(path)
        except FileNotFoundError:
            return None
        path.unlink()
        return payload
