"""A job ends with its whole process tree.

Each test runs tests/apps/with_children.py as a user would: some jobs start a
``sleep 300`` of their own and then return, overrun their timeout, crash or are
interrupted. However the job ends, its child must not outlive it, the job's
log must name the processes that were stopped, and with a device pool the next
job must not start before the child is gone.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import APPS, Run, app_env, gone, jobs, run_app, session_processes

APP = APPS / "with_children.py"
LOG = "with_children.log"

# Where jobs run on this machine: loky's workers, a fresh process per job, and a
# device pool (fresh processes handed fake device ids).
LOCAL = {
    "loky": ["hydra.launcher.backend=loky"],
    "multiprocessing": ["hydra.launcher.backend=multiprocessing"],
    "devices": ["hydra.launcher.backend=loky", "hydra.launcher.devices=[gpu0,gpu1]"],
}
CHILD_OF_A_LIVE_WORKER_WAYS = ["plain", "orphan", "session"]


def launcher_args(where: List[str], sweep_dir: Path, n_jobs: int = 2) -> List[str]:
    return [
        "-m",
        "hydra/launcher=joblib",
        *where,
        f"hydra.launcher.n_jobs={n_jobs}",
        "hydra.launcher.progress=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def sweep(
    where: List[str], sweep_dir: Path, *extra: str, names: str = "a,b,c", env: Dict[str, str] = {}
) -> Run:
    return run_app(
        APP,
        [*launcher_args(where, sweep_dir), f"+name={names}", *extra],
        cwd=sweep_dir.parent,
        env=env,
    )


def child_of(sweep_dir: Path, num: int) -> int:
    path = sweep_dir / str(num) / "child.pid"
    assert path.exists(), f"job #{num} started no child"
    return int(path.read_text())


def statuses(sweep_dir: Path) -> Dict[int, str]:
    return {job["num"]: job["status"] for job in jobs(sweep_dir)}


def blocks_hangup(pid: int) -> bool:
    """Whether the process ``pid`` has SIGHUP blocked (its SigBlk mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    return bool(blocked & (1 << (signal.SIGHUP - 1)))


def assert_stopped_in_log(sweep_dir: Path, num: int, pid: int) -> None:
    log = (sweep_dir / str(num) / LOG).read_text()
    lines = [line for line in log.splitlines() if "WARNING" in line and str(pid) in line]
    assert lines, f"job #{num}'s log names no stopped process {pid}:\n{log}"


# -- a job that returns, its child still running -------------------------------------------


@pytest.mark.parametrize("child", CHILD_OF_A_LIVE_WORKER_WAYS)
@pytest.mark.parametrize("where", LOCAL)
def test_a_child_left_running_by_a_completed_job_is_stopped_and_named_in_its_log(
    where: str, child: str, sweep_dir: Path
) -> None:
    run = sweep(LOCAL[where], sweep_dir, "+modes.a=leave", f"+child={child}")

    assert run.returncode == 0, run.output
    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived it"
    assert statuses(sweep_dir) == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}
    assert_stopped_in_log(sweep_dir, 0, pid)


@pytest.mark.parametrize("where", ["loky", "multiprocessing"])
def test_without_a_subreaper_an_orphan_is_stopped_with_its_workers_group(
    where: str, sweep_dir: Path
) -> None:
    # As on macOS: the orphan leaves the worker's tree, but not its process group.
    run = sweep(LOCAL[where], sweep_dir, "+modes.a=leave", "+child=orphan", "+no_subreaper=true")

    assert run.returncode == 0, run.output
    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived the sweep"


# -- a job past its timeout -------------------------------------------------------------


@pytest.mark.parametrize("where", LOCAL)
def test_the_child_of_a_job_past_its_timeout_is_stopped(where: str, sweep_dir: Path) -> None:
    run = sweep(LOCAL[where], sweep_dir, "+modes.a=sleep", "hydra.launcher.timeout=2")

    assert run.returncode != 0  # Hydra's basic sweeper re-raises the failure
    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived it"
    records = jobs(sweep_dir)
    assert [job["status"] for job in records] == ["FAILED", "COMPLETED", "COMPLETED"]
    assert records[0]["error_type"] == "JobTimeout"
    assert_stopped_in_log(sweep_dir, 0, pid)


@pytest.mark.parametrize("where", ["loky", "multiprocessing"])
def test_the_child_of_a_job_that_ignores_its_timeout_is_stopped_with_it(
    where: str, sweep_dir: Path
) -> None:
    # The job swallows the JobTimeout: its process is killed after the grace period.
    run = sweep(LOCAL[where], sweep_dir, "+modes.a=stubborn", "hydra.launcher.timeout=1")

    assert run.returncode != 0
    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived it"
    records = jobs(sweep_dir)
    assert [job["status"] for job in records] == ["FAILED", "COMPLETED", "COMPLETED"]
    assert records[0]["error_type"] == "JobTimeout"
    assert_stopped_in_log(sweep_dir, 0, pid)


# -- a job that kills its own process ------------------------------------------------------


@pytest.mark.parametrize("where", LOCAL)
def test_the_child_of_a_job_that_crashes_is_stopped(where: str, sweep_dir: Path) -> None:
    run = sweep(LOCAL[where], sweep_dir, "+modes.a=sigkill")

    assert run.returncode != 0
    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived its crash"
    records = jobs(sweep_dir)
    assert [job["status"] for job in records] == ["FAILED", "COMPLETED", "COMPLETED"]
    assert records[0]["error_type"] == "WorkerCrashed"
    assert_stopped_in_log(sweep_dir, 0, pid)


# -- a device goes back to the pool after the job's processes are gone -------------------------


@pytest.mark.parametrize("mode", ["leave", "sigkill"])
def test_with_one_device_the_next_job_starts_after_the_child_is_gone(
    mode: str, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    run = run_app(
        APP,
        [
            *launcher_args(["hydra.launcher.devices=[gpu0]"], sweep_dir),
            "+name=a,b",
            f"+modes.a={mode}",
            f"+pid_dir={pid_dir}",
        ],
        cwd=tmp_path,
    )

    assert (pid_dir / "b.saw.json").exists(), run.output
    pid = int((pid_dir / "a.pid").read_text())
    # b ran after a (one device): when b started, a's child had to be gone
    assert json.loads((pid_dir / "b.saw.json").read_text()) == {str(pid): False}
    assert gone([pid]) == []


# -- the launcher is interrupted -------------------------------------------------------------


@pytest.mark.parametrize("where", ["loky", "multiprocessing"])
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_an_interrupt_stops_the_children_of_running_jobs(
    where: str, signum: int, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-Werror",
            str(APP),
            *launcher_args(LOCAL[where], sweep_dir),
            "+name=a,b,c,d",
            "+modes.a=sleep",
            "+modes.b=sleep",
            "+modes.c=sleep",
            "+modes.d=sleep",
            f"+pid_dir={pid_dir}",
        ],
        cwd=tmp_path,
        start_new_session=True,  # its whole tree can be found, and signalled as a terminal would
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=app_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pid_dir.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        children = [int(path.read_text()) for path in pid_dir.glob("*.pid")]
        assert len(children) == 2, "the jobs did not get going"
        assert [blocks_hangup(pid) for pid in children] == [False, False], "as under `python app.py`"
        sent = time.monotonic()
        if signum == signal.SIGTERM:
            os.kill(proc.pid, signum)  # `kill PID` reaches the launcher alone
        else:
            os.killpg(proc.pid, signum)  # Ctrl-C, a closed terminal: the foreground group
        output, _ = proc.communicate(timeout=30)
        exited_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode != 0
    assert exited_after < 10, output
    assert gone(children) == [], f"children of interrupted jobs outlived the launcher\n{output}"
    assert gone(session_processes(proc.pid)) == [], "processes of the sweep outlived it"
    assert "Interrupted: 0 jobs completed, 0 failed, 4 stopped or never ran" in output
    assert "resource_tracker" not in output, "multiprocessing's helpers died with the launcher's group"
    started = [num for num in range(4) if (sweep_dir / str(num) / "child.pid").exists()]
    assert len(started) == 2, started
    for num in started:
        assert_stopped_in_log(sweep_dir, num, child_of(sweep_dir, num))


# -- Dask: processes a job started inside its worker ---------------------------------------------

DASK = ["hydra.launcher.backend=dask"]


@pytest.mark.dask
@pytest.mark.parametrize("mode", ["leave", "sleep"])
def test_on_dask_the_child_of_a_job_is_stopped_as_the_job_ends(
    mode: str, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    sweep_dir = tmp_path / "sweep"
    run = sweep(
        DASK,
        sweep_dir,
        f"+modes.a={mode}",
        "hydra.launcher.timeout=3",
        names="a,b",
        env={"DASK_TEMPORARY_DIRECTORY": str(tmp_path)},
    )

    pid = child_of(sweep_dir, 0)
    assert gone([pid]) == [], f"job #0's child {pid} outlived it\n{run.output}"
    records = jobs(sweep_dir)
    assert records[1]["status"] == "COMPLETED"
    if mode == "leave":
        assert run.returncode == 0, run.output
        assert records[0]["status"] == "COMPLETED"
    else:
        assert records[0]["status"] == "FAILED"
        assert records[0]["error_type"] == "JobTimeout"
    assert_stopped_in_log(sweep_dir, 0, pid)
