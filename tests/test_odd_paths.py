"""Odd paths a user still meets: what Hydra's callbacks see, and a slow start under a time limit."""

from pathlib import Path

import pytest
from conftest import APPS, jobs, run_app

APP = APPS / "odd" / "callbacks_app.py"
CALLBACK = "+hydra.callbacks.record._target_=callbacks_app.RecordTask"


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_callbacks_get_the_users_task_function(tmp_path: Path, backend: str) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APP,
        [
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            f"hydra.sweep.dir={sweep_dir}",
            CALLBACK,
            "+x=1,2",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{APPS}:{APPS / 'odd'}"},  # the callback's module, everywhere
    )
    assert run.returncode == 0, run.output
    for num in (0, 1):
        assert (sweep_dir / str(num) / "task_name.txt").read_text() == "train_model"


def test_a_slow_start_does_not_count_against_the_time_limit(tmp_path: Path) -> None:
    """backend=multiprocessing: the clock starts with the task, as in the job's own process."""
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APP,
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.backend=multiprocessing",
            "hydra.launcher.timeout=1",
            f"hydra.sweep.dir={sweep_dir}",
            "+x=1",
        ],
        cwd=tmp_path,
        # each job's process imports the script again: 14 s, past timeout + every grace (10 s)
        env={"SLOW_IMPORT_S": "14"},
    )
    assert run.returncode == 0, run.output
    assert [job["status"] for job in jobs(sweep_dir)] == ["COMPLETED"]
