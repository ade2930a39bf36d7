"""Nothing lost: a job that fails, crashes, hangs or is interrupted costs only itself.

Each test runs tests/apps/faulty.py as a user would, with six jobs on two
workers, one of which misbehaves.
"""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest
from conftest import APPS, Run, app_env, jobs, run_app, session_processes, start_app

BACKENDS = ["loky", "multiprocessing"]
NAMES = "abcdef"


def launcher_args(backend: str, sweep_dir: Path, n_jobs: int = 2) -> List[str]:
    return [
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.backend={backend}",
        f"hydra.launcher.n_jobs={n_jobs}",
        "hydra.launcher.progress=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def sweep(backend: str, sweep_dir: Path, *extra: str, timeout: float = 180, n_jobs: int = 2) -> Run:
    return run_app(
        APPS / "faulty.py",
        [
            *launcher_args(backend, sweep_dir, n_jobs),
            f"+name={','.join(NAMES)}",
            "+work=0.3",
            *extra,
        ],
        cwd=sweep_dir.parent,
        timeout=timeout,
    )


def start_in_own_session(args: List[str], cwd: Path, **kwargs: Any) -> "subprocess.Popen[str]":
    """The faulty app, as the leader of a new session: its whole tree can be found later."""
    return start_app(APPS / "faulty.py", args, cwd=cwd, **kwargs)


def finished(sweep_dir: Path) -> List[str]:
    """Names of the jobs whose task returned (each writes done.marker)."""
    return sorted(p.read_text() for p in sweep_dir.glob("*/done.marker"))


def others_finished(sweep_dir: Path, culprit: str = "c") -> None:
    assert finished(sweep_dir) == [n for n in NAMES if n != culprit]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_raising_job_fails_alone_and_is_reported_at_once(backend: str, sweep_dir: Path) -> None:
    run = sweep(backend, sweep_dir, "+modes.c=raise")

    assert run.returncode != 0  # Hydra's basic sweeper re-raises the first failure
    others_finished(sweep_dir)
    assert "ValueError: job c failed on purpose" in run.output
    failure_line = next(
        line for line in run.output.splitlines() if "#2 : " in line and "FAILED" in line
    )
    assert "+name=c" in failure_line and "ValueError: job c failed on purpose" in failure_line
    assert str(sweep_dir / "2" / "faulty.log") in failure_line
    # logged the moment it happened: before the batch summary
    assert run.output.index(failure_line) < run.output.index("Batch done")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode, how", [("exit", "exited with status 3"), ("sigkill", "killed by signal SIGKILL")]
)
def test_a_job_that_kills_its_worker_fails_alone(
    backend: str, mode: str, how: str, sweep_dir: Path
) -> None:
    run = sweep(backend, sweep_dir, f"+modes.c={mode}")

    assert run.returncode != 0
    others_finished(sweep_dir)
    assert f"WorkerCrashed: job #2 (+name=c +work=0.3 +modes.c={mode}) did not finish" in run.output
    assert how in run.output
    assert "out-of-memory" in run.output  # the likely causes are named
    assert "Batch done" in run.output and "5 completed, 1 failed" in run.output


def test_a_loky_worker_crash_runs_again_no_job_that_finished_or_never_started(
    tmp_path: Path,
) -> None:
    """Jobs go to workers in batches of three: [a, b, c] and [d, e, f]. a ends at once, b
    kills its worker 1.5 s later, c never starts; d, e and f have long ended by then.

    a finished, but its result waits for the batch's end, which never comes; c
    was handed to loky but never started. Neither runs again: only b, the job
    that crashed, was running, and it alone fails.
    """
    sweep_dir, count_dir = tmp_path / "sweep", tmp_path / "counts"
    count_dir.mkdir()
    run = run_app(
        APPS / "paced.py",
        [
            *launcher_args("loky", sweep_dir),
            "hydra.launcher.batch_size=3",
            "hydra.launcher.pre_dispatch=all",
            f"+name={','.join(NAMES)}",
            f"+count_dir={count_dir}",
            "+modes.b=exit",
            "+slow.b=1.5",
        ],
        cwd=tmp_path,
    )

    starts = {name: len((count_dir / f"{name}.runs").read_text().split()) for name in NAMES}
    assert starts == dict.fromkeys(NAMES, 1), run.output
    assert "WorkerCrashed: job #1 (+name=b" in run.output
    assert "6 jobs, 5 completed, 1 failed" in run.output
    assert "each in a process of its own" not in run.output  # nothing for quarantine
    records = jobs(sweep_dir)
    assert [r["status"] for r in records] == ["COMPLETED", "FAILED"] + ["COMPLETED"] * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_past_its_timeout_is_stopped_alone(backend: str, sweep_dir: Path) -> None:
    run = sweep(backend, sweep_dir, "+modes.c=sleep", "hydra.launcher.timeout=3")

    assert run.returncode != 0
    others_finished(sweep_dir)
    assert "JobTimeout: job #2 ran longer than hydra.launcher.timeout=3s" in run.output
    assert run.seconds < 60  # the job sleeps 600 s


@pytest.mark.parametrize("mode", ["exit", "sigkill"])
def test_with_one_worker_a_crash_still_costs_only_its_job(mode: str, sweep_dir: Path) -> None:
    # joblib alone would run a one-worker loky call in the launching process
    run = sweep("loky", sweep_dir, f"+modes.c={mode}", n_jobs=1)

    assert run.returncode != 0
    others_finished(sweep_dir)
    assert "WorkerCrashed: job #2" in run.output
    assert "Batch done" in run.output and "5 completed, 1 failed" in run.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_result_that_cannot_be_pickled_fails_its_job_with_a_clear_error(
    backend: str, sweep_dir: Path
) -> None:
    run = sweep(backend, sweep_dir, "+modes.c=unpicklable")

    assert run.returncode != 0
    assert finished(sweep_dir) == list(NAMES)  # c's task ran to its end...
    assert "ResultNotSendable: job #2" in run.output  # ...but its result could not come back
    assert "cannot be pickled back to the launcher" in run.output
    assert "define its class at module level" in run.output


UNLOADABLE = [
    pytest.param("loky", "unloadable", "RuntimeError: the value of job c refuses to be unpickled"),
    pytest.param("loky", "worker_only", "No module named 'worker_only_module'"),
    pytest.param("multiprocessing", "unloadable", "RuntimeError: the value of job c refuses"),
    pytest.param("multiprocessing", "worker_only", "No module named 'worker_only_module'"),
    pytest.param(
        "dask", "unloadable", "RuntimeError: the value of job c refuses", marks=pytest.mark.dask
    ),
]


@pytest.mark.parametrize("backend, mode, why", UNLOADABLE)
def test_a_result_the_launcher_cannot_unpickle_fails_its_job_alone(
    backend: str, mode: str, why: str, sweep_dir: Path
) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")
    run = run_app(
        APPS / "faulty.py",
        [
            *launcher_args(backend, sweep_dir),
            f"+name={','.join(NAMES)}",
            "+work=0.3",
            f"+modes.c={mode}",
        ],
        cwd=sweep_dir.parent,
        env={"DASK_TEMPORARY_DIRECTORY": str(sweep_dir.parent)},
    )

    assert run.returncode != 0  # Hydra's basic sweeper re-raises the first failure
    assert finished(sweep_dir) == list(NAMES)  # c's task ran to its end
    assert "6 jobs, 5 completed, 1 failed" in run.output, run.output
    assert "_supervisor.py" not in run.output  # no traceback of the launcher's own
    line = next(line for line in run.output.splitlines() if "#2 : " in line and "FAILED" in line)
    assert f"ResultNotLoadable: job #2 (+name=c +work=0.3 +modes.c={mode}) completed" in line
    assert why in line
    assert "Return plain data" in line  # and what to return instead
    records = jobs(sweep_dir)
    assert [r["status"] for r in records] == ["COMPLETED"] * 2 + ["FAILED"] + ["COMPLETED"] * 3
    assert records[2]["error_type"] == "ResultNotLoadable"


def test_a_task_that_cannot_be_pickled_fails_before_any_job_starts(tmp_path: Path) -> None:
    # A script that calls its app at top level cannot be imported by the workers, so
    # its task goes by value (a guarded one goes by reference: the lock never matters).
    app = tmp_path / "app.py"
    app.write_text(
        "import threading\n"
        "import hydra\n"
        "LOCK = threading.Lock()\n"
        "from hydra_compat import MAIN_KWARGS\n"
        "@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)\n"
        "def main(cfg):\n"
        "    return LOCK\n"
        "main()\n"
    )
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        app,
        ["-m", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep_dir}", "+x=1,2"],
        cwd=tmp_path,
    )

    assert run.returncode != 0
    assert "The task cannot be sent to worker processes" in run.stderr
    assert "lock" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (sweep_dir / "0").exists()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_every_process_and_reports_the_counts(
    backend: str, signum: int, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    count_dir = tmp_path / "counts"
    count_dir.mkdir()
    proc = start_in_own_session(
        [
            *launcher_args(backend, sweep_dir),
            f"+count_dir={count_dir}",
            "+name=a,b,c,d,e,f",
            "+work=1",
            "+modes.d=sleep",
            "+modes.e=sleep",
            "+modes.f=sleep",
        ],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        # a, b, c work 1 s each; d and e start as c and one of a, b end
        while not (count_dir / "e.runs").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (count_dir / "e.runs").exists(), "the sweep did not get going"
        time.sleep(0.5)
        sent = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # Ctrl-C reaches the whole foreground group
        else:
            os.kill(proc.pid, signum)  # `kill PID` reaches the launcher alone
        output, _ = proc.communicate(timeout=30)
        exited_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode != 0
    assert exited_after < 10
    time.sleep(3)
    assert session_processes(proc.pid) == [], "processes of the sweep outlived it"
    assert "Interrupted: 3 jobs completed, 0 failed, 3 stopped or never ran" in output
    assert finished(sweep_dir) == ["a", "b", "c"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_process_outlives_a_normal_multirun(backend: str, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = start_in_own_session(
        [*launcher_args(backend, sweep_dir), "+name=a,b,c"],
        tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.wait(timeout=120) == 0
    time.sleep(2)
    assert session_processes(proc.pid) == []


def test_optuna_sees_every_healthy_trial_when_jobs_crash(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    db = tmp_path / "study.db"
    app = tmp_path / "objective.py"
    app.write_text(
        "import os\n"
        "import hydra\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "from hydra_compat import MAIN_KWARGS\n"
        "@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)\n"
        "def main(cfg):\n"
        "    if HydraConfig.get().job.num == 1:\n"
        "        os._exit(3)\n"
        "    if HydraConfig.get().job.num == 6:\n"
        "        raise ValueError('bad trial')\n"
        "    return float(cfg.x)\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    # Optuna 2 warns at import under -Werror (SQLAlchemy deprecations): not ours.
    proc = subprocess.run(
        [
            sys.executable,
            str(app),
            "-m",
            "hydra/sweeper=optuna",
            "hydra/sweeper/sampler=grid",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "+x=choice(0,1,2,3,4,5,6,7)",
            "hydra.sweeper.n_trials=8",
            "hydra.sweeper.n_jobs=4",  # two batches of four
            "hydra.sweeper.direction=maximize",
            "hydra.sweeper.max_failure_rate=1.0",  # the study goes on whatever fails
            f"hydra.sweeper.storage=sqlite:///{db}",
            "hydra.sweeper.study_name=faults",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=app_env(),
    )
    assert proc.returncode == 0, proc.stderr
    with contextlib.closing(sqlite3.connect(db)) as connection:  # Python 3.13 warns if left open
        rows = connection.execute(
            "SELECT t.state, p.param_value, v.value FROM trials t "
            "JOIN trial_params p ON p.trial_id = t.trial_id "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id"
        ).fetchall()
    # the grid sampler stores the index of the choice, here the same as x
    states = {int(x): (state, value) for state, x, value in rows}
    assert sorted(states) == list(range(8))
    # Jobs #1 (first batch) and #6 (second) fail, whatever x the sampler gave them. (Not
    # #7: hydra-optuna-sweeper 1.2 crashes when the last trial of a grid study fails.)
    crashed, raised = (_override(tmp_path / "sweep" / str(num), "x") for num in (1, 6))
    assert states.pop(crashed) == ("FAIL", None)
    assert states.pop(raised) == ("FAIL", None)
    assert states == {x: ("COMPLETE", float(x)) for x in states}


def _override(job_dir: Path, key: str) -> int:
    """The value job ``job_dir`` got for ``+key``, from the overrides Hydra saved there."""
    saved = (job_dir / ".hydra" / "overrides.yaml").read_text().split()
    return int(next(item.split("=", 1)[1] for item in saved if item.startswith(f"+{key}=")))


def test_many_short_jobs_that_kill_their_process_are_each_told_with_their_exit_status(
    tmp_path: Path,
) -> None:
    """On multiprocessing, 150 jobs end with os._exit(3), 6 at a time: each is FAILED with status 3.

    A job's process forked from the fork server is started and waited for by one of
    several threads at once; its exit status, read from the server, once came back
    as 255 (two threads had read it at once).
    """
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APPS / "exits.py",
        [*launcher_args("multiprocessing", sweep_dir, n_jobs=6), "+x=range(150)"],
        cwd=tmp_path,
    )
    assert "150 jobs, 0 completed, 150 failed" in run.stdout, run.output
    for num in range(150):
        told = f"job #{num} (+x={num}) did not finish: its worker process exited with status 3"
        assert told in run.output, num
