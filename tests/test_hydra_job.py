"""What Hydra's run_job does around a job, kept as the basic launcher keeps it, on Hydra 1.3 and 1.4.

Hydra 1.4 writes a failure to the job's log file, records a KeyboardInterrupt as
FAILED after running the job's end callbacks, runs a job in the launch's dir by
default (hydra.job.chdir=False), and refuses a swept config that changes the
launcher. Each test runs the same sweep with the basic launcher and with this
one, and compares what the user sees.
"""

import signal
from pathlib import Path
from typing import Dict, List

import hydra
import pytest
from conftest import APPS, Run, jobs, run_app

HYDRA_1_4 = tuple(int(part) for part in hydra.__version__.split(".")[:2]) >= (1, 4)

APP = APPS / "hydra_job" / "app.py"
CALLBACK = "+hydra.callbacks.end._target_=app.RecordEnd"
LAUNCHERS = {"basic": ["hydra/launcher=basic"], "joblib": ["hydra/launcher=joblib"]}


def sweep(tmp_path: Path, launcher: str, *overrides: str) -> Run:
    return run_app(
        APP,
        ["-m", *LAUNCHERS[launcher], f"hydra.sweep.dir={tmp_path / launcher}", *overrides],
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": f"{APPS}:{APP.parent}"},  # the callback's module, everywhere
    )


def job_files(tmp_path: Path, launcher: str, name: str, count: int) -> List[str]:
    files = [tmp_path / launcher / str(num) / name for num in range(count)]
    return [path.read_text() if path.exists() else "" for path in files]


def test_a_failure_is_in_the_jobs_log_as_under_the_basic_launcher(tmp_path: Path) -> None:
    logs: Dict[str, str] = {}
    for launcher in LAUNCHERS:
        sweep(tmp_path, launcher, "mode=fail")
        logs[launcher] = (tmp_path / launcher / "0" / "app.log").read_text()
    for launcher, log in logs.items():
        assert ("ValueError: bad value" in log) == HYDRA_1_4, f"{launcher}:\n{log}"
        assert "running" in log


@pytest.mark.parametrize(
    # Python ends on an uncaught KeyboardInterrupt by killing itself with SIGINT
    "mode, error, code", [("interrupt", "KeyboardInterrupt", -signal.SIGINT), ("exit", "SystemExit", 3)]
)
def test_a_task_that_raises_keyboardinterrupt_or_exits_fails_its_job(
    tmp_path: Path, mode: str, error: str, code: int
) -> None:
    """As a plain run, the app ends with the task's exit; the other jobs run to their end."""
    runs = {launcher: sweep(tmp_path, launcher, CALLBACK, f"mode=ok,{mode}") for launcher in LAUNCHERS}
    ends = {launcher: job_files(tmp_path, launcher, "job_end.txt", 2) for launcher in LAUNCHERS}

    assert runs["basic"].returncode == code, runs["basic"].output
    assert runs["joblib"].returncode == code, runs["joblib"].output
    # Hydra 1.4 runs the end callbacks with the job FAILED; Hydra 1.3 skips them
    expected = ["COMPLETED int", f"FAILED {error}" if HYDRA_1_4 else ""]
    assert ends["basic"] == expected
    assert ends["joblib"] == expected
    records = jobs(tmp_path / "joblib")
    assert [(job["status"], job.get("error_type")) for job in records] == [
        ("COMPLETED", None),
        ("FAILED", error),
    ]


def test_a_job_runs_where_the_basic_launcher_runs_it(tmp_path: Path) -> None:
    for launcher in LAUNCHERS:
        run = sweep(tmp_path, launcher, "mode=ok")
        assert run.returncode == 0, run.output
    assert job_files(tmp_path, "joblib", "cwd.txt", 1) == job_files(tmp_path, "basic", "cwd.txt", 1)
    assert job_files(tmp_path, "joblib", "cwd.txt", 1) == [str(tmp_path)]  # chdir=False


def test_a_swept_option_that_changes_the_launcher(tmp_path: Path) -> None:
    """Hydra 1.4 refuses it before any job runs; on 1.3 the launch's settings hold, as upstream."""
    run = sweep(tmp_path, "joblib", "db=plain,launcher_change")
    if HYDRA_1_4:
        assert run.returncode == 1
        assert "'hydra.launcher' must be configured before the sweep starts" in run.output
        assert not (tmp_path / "joblib" / "0").exists()
    else:
        assert run.returncode == 0, run.output
        assert [job["status"] for job in jobs(tmp_path / "joblib")] == ["COMPLETED", "COMPLETED"]
