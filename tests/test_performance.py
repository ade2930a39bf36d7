"""What the performance work promises, as behaviour a user can check (timings are in benchmarks/).

* the loky workers start while Hydra composes the sweep (the launcher's setup), and
  the batch runs on them;
* forked from a server process that has loaded what jobs need, they still limit
  the native thread pools of each job to its share of the CPUs, as joblib does;
* they import the app's script only when it keeps its app under
  ``if __name__ == "__main__":`` (as multiprocessing's workers do); a script
  that calls its app at top level is not run again in each worker;
* a batch reuses the previous batch's shared-context file only when the bytes
  are the same: a resolver the sweeper registers between batches reaches the
  jobs of the next batch;
* a job's stored result holds its configs by reference to the classes their
  modules define, not a copy of those classes, and loads back in a new interpreter.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import joblib
import pytest

from conftest import APPS, jobs, run_app

TINY = APPS / "tiny.py"


@pytest.mark.slow
def test_the_batch_runs_on_the_workers_started_ahead_of_it(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        TINY,
        [
            "--multirun",
            "+x=range(0,6)",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.verbose=hydra_plugins.hydra_joblib_launcher",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    started = re.search(r"Workers ready ahead of the batch: processes ([\d, ]+)", run.output)
    assert started, run.output
    ahead = {int(pid) for pid in started.group(1).split(", ")}
    ran_on = {job["pid"] for job in jobs(sweep_dir)}
    # the batch reused them (a new pool would have new processes), and no third one started
    assert ahead <= ran_on and len(ran_on) == 2, (ran_on, ahead)


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 3])
def test_loky_workers_limit_native_threads_before_a_job_imports_anything(
    tmp_path: Path, limit: Optional[int]
) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APPS / "threads.py",
        [
            "--multirun",
            "+x=1,2,3,4",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.launcher.inner_max_num_threads={'null' if limit is None else limit}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    seen = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/threads.json"))]
    assert len(seen) == 4, run.output
    # joblib's rule: the configured limit; else what the shell set, else each of
    # the 2 workers its share of the CPUs
    share = str(max(joblib.cpu_count() // 2, 1))
    expected = {
        name: str(limit) if limit is not None else os.environ.get(name, share)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }
    for job in seen:
        assert {name: job[name] for name in expected} == expected, job


# The script's top level notes each process that runs it.
SCRIPT = """
import os

import hydra
from hydra_compat import MAIN_KWARGS

with open(os.environ["TOP_LEVEL_LOG"], "a") as log:
    log.write(f"{{os.getpid()}} {{__name__}}\\n")


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg):
    return os.getpid()


{call}
"""


@pytest.mark.slow
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_the_workers_run_the_apps_script_only_when_it_is_guarded(
    tmp_path: Path, guarded: bool
) -> None:
    app = tmp_path / "app.py"
    call = 'if __name__ == "__main__":\n    main()' if guarded else "main()"
    app.write_text(SCRIPT.format(call=call))
    sweep_dir = tmp_path / "sweep"
    top_level_log = tmp_path / "top-level.log"
    run = run_app(
        app,
        [
            "--multirun",
            "+x=range(0,4)",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        env={"TOP_LEVEL_LOG": str(top_level_log)},
    )
    assert run.returncode == 0, run.output
    assert "died" not in run.output, run.output
    ran = jobs(sweep_dir)
    assert [job["status"] for job in ran] == ["COMPLETED"] * 4, ran
    runs = [line.split() for line in top_level_log.read_text().splitlines()]
    assert runs[0][1] == "__main__", runs  # the launching process, first
    imported_by = {int(pid) for pid, name in runs if name == "__mp_main__"}
    if guarded and sys.platform != "win32" and not sys.platform.startswith("linux"):
        # forked from a fork server started anew, each of the two workers imported it once
        assert imported_by == {job["pid"] for job in ran} and len(runs) == 3, (runs, ran)
    else:
        # on Linux the fork server is forked from the launching process, script loaded
        assert len(runs) == 1, runs


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_each_batch_sees_what_the_launching_process_holds_when_it_starts(
    tmp_path: Path, backend: str
) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APPS / "paced.py",
        [
            "--multirun",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            "hydra/sweeper=recording",  # registers ${recording_batch:} anew before each batch
            "hydra.sweeper.max_batch_size=2",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
            "+x=1,2,3,4,5",
            "+name=${recording_batch:}",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(APPS / "sweeper_plugin")},
    )
    assert run.returncode == 0, run.output
    returns = json.loads((sweep_dir / "returns.json").read_text())
    # resolved in the workers, each job with the resolver of its own batch
    assert [r["return_value"]["name"] for r in returns] == ["1", "1", "2", "2", "3"], returns


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_stored_result_refers_to_the_config_classes_by_name(tmp_path: Path, backend: str) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        TINY,
        [
            "--multirun",
            "+x=1,2",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    stored = (sweep_dir / "0" / ".hydra" / "job_return.pkl").read_bytes()
    # cloudpickle's way of sending a class by value: no class travels with the result
    assert b"_make_skeleton_class" not in stored
    with pytest.raises(AttributeError):
        pickle.loads(stored.replace(b"JobLibLauncherConf", b"NoSuchLauncherConf"))

    check = (
        "import pickle, sys\n"
        "from omegaconf import OmegaConf\n"
        "from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf\n"
        "ret = pickle.load(open(sys.argv[1], 'rb'))\n"
        "node = ret.hydra_cfg.hydra.launcher\n"
        "assert OmegaConf.get_type(node) is JobLibLauncherConf, OmegaConf.get_type(node)\n"
        "print(ret.return_value > 0, node.backend)\n"
    )
    loaded = subprocess.run(
        [
            sys.executable,
            "-Werror",
            "-c",
            check,
            str(sweep_dir / "0" / ".hydra" / "job_return.pkl"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert loaded.stdout.split() == ["True", backend]
