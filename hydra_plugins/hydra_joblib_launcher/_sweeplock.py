"""One launching process per sweep dir at a time.

    setup() / launch() ─▶ hold(sweep_dir): flock <sweep dir>/.hydra-joblib.lock, exclusive
                          held until this process ends or starts its next multirun (release_all);
                          the kernel releases it however the process ends, SIGKILL included

Two launches on one sweep dir would write the same job dirs and jobs.jsonl
over each other: the second stops with one error naming the dir and the
process that holds it (written into the lock file by its holder). The file
stays: removing it while another process may be opening it would let two
processes hold two different files.
"""

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Dict

from ._errors import LauncherError

LOCK_FILE = ".hydra-joblib.lock"

# Per process: the sweep dirs it holds (resolved path -> the lock file's descriptor).
_held: Dict[str, int] = {}


def hold(sweep_dir: Path) -> None:
    """Hold ``sweep_dir`` for this process, or raise a LauncherError naming the process that does."""
    key = str(sweep_dir.resolve())
    if key in _held:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 1024, 0).decode(errors="replace").strip()
        os.close(fd)
        raise LauncherError(
            f"The sweep dir {sweep_dir} is in use by another launch ({holder or 'process unknown'}): "
            "two launches there would write the same job dirs and jobs.jsonl over each other. "
            "Wait for it to end (hydra.launcher.resume=true then runs what it left), or give "
            "this launch another hydra.sweep.dir."
        ) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(
        fd, f"process {os.getpid()} on host {socket.gethostname()}, since {since}\n".encode(), 0
    )
    _held[key] = fd


def release_all() -> None:
    """Let go of every sweep dir this process holds (a new multirun starts).

    In a child forked from the holder (the fork server, see _zygote) this closes the
    child's copies only: the lock stays with the holder's own descriptors.
    """
    for fd in _held.values():
        os.close(fd)  # closing the last descriptor of the lock file releases its lock
    _held.clear()
