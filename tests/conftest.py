"""Shared helpers: run a small Hydra app as a user would, in a subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).parent.parent

# Tests send Ctrl-C (SIGINT) and a closed terminal's SIGHUP to the apps they start, which
# must start with these signals' default actions, as from a terminal. A test run started
# in the background by a non-interactive shell ignores SIGINT, and under nohup SIGHUP too,
# and an ignored signal stays ignored across exec: this process takes the defaults back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_app(
    app: Path,
    overrides: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 180,
    env: Optional[Dict[str, str]] = None,
) -> Run:
    """``python -Werror APP OVERRIDES...`` in ``cwd``, as Hydra's own test helpers run apps.

    tests/apps is on PYTHONPATH, so apps written by a test can import ``hydra_compat``.
    """
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-Werror", str(app), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=app_env(env),
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def start_app(
    app: Path,
    args: Sequence[str],
    *,
    cwd: Path,
    env: Optional[Dict[str, str]] = None,
    **kwargs: Any,
) -> "subprocess.Popen[str]":
    """``python -Werror APP ARGS...`` started in the background, as the leader of a new
    session (its whole tree can be found later), with tests/apps on PYTHONPATH."""
    return subprocess.Popen(
        [sys.executable, "-Werror", str(app), *args],
        cwd=cwd,
        env=app_env(env),
        start_new_session=True,
        text=True,
        **kwargs,
    )


def app_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    paths = [str(APPS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(extra or {})}


def free_port() -> int:
    """A TCP port free on loopback now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jobs(sweep: Path) -> List[Dict[str, Any]]:
    """The records of jobs.jsonl in ``sweep``, by job number."""
    lines = (sweep / "jobs.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda job: job["num"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """``pid`` is alive and not a zombie (here an orphan's zombie may never be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def gone(pids: Sequence[int], within: float = 3.0) -> List[int]:
    """Those of ``pids`` still running after ``within`` seconds at most."""
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid in pids if running(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def session_processes(sid: int) -> List[int]:
    """The processes of session ``sid`` that still run (zombies are gone for good)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is the state, fields[3] the session id
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def assert_clear_error(run: Run, *texts: str) -> None:
    """The launch failed with one message holding ``texts``, and no traceback."""
    assert run.returncode == 1, run.output
    for text in texts:
        assert text in run.stderr, run.output
    assert "Traceback" not in run.output, run.output


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "sweep"
