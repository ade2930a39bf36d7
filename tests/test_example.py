"""The launcher as a drop-in: the example sweep, and what a job sees, run as a user would."""

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, List

import pytest
from omegaconf import OmegaConf

from conftest import APPS, REPO, run_app
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

EXAMPLE = REPO / "example" / "my_app.py"
TINY = APPS / "tiny.py"
BACKENDS = ["loky", "multiprocessing"]
ONE_SECOND = timedelta(seconds=1)

# Hydra's log lines start with "[2024-01-31 12:00:00,123]"
STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]"


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def _seen(sweep_dir: Path, n_jobs: int) -> List[Dict[str, Any]]:
    """What each job of ``tests/apps/tiny.py`` wrote down, by job number."""
    seen = []
    for num in range(n_jobs):
        path = sweep_dir / str(num) / "seen.json"
        assert path.exists(), f"job #{num} wrote no {path}"
        seen.append(json.loads(path.read_text()))
    return seen


# -- the example sweep -------------------------------------------------------------------------


@pytest.mark.slow
def test_example_sweep_runs_five_jobs_in_parallel(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        EXAMPLE,
        ["--multirun", "task=1,2,3,4,5", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.output
    assert "Traceback" not in run.output

    # what the launcher logs, in this order
    launching = re.search(r"Joblib\.Parallel\((.*)\) is launching 5 jobs", run.stdout)
    assert launching, run.stdout
    assert "backend=loky" in launching.group(1)
    assert "n_jobs=10" in launching.group(1)
    order = [
        run.stdout.index(") is launching 5 jobs"),
        run.stdout.index(f"Launching jobs, sweep output dir : {sweep_dir}\n"),
        *(run.stdout.index(f"#{num} : task={num + 1}\n") for num in range(5)),
    ]
    assert order == sorted(order), run.stdout
    # verbose=0: joblib itself stays silent
    assert "[Parallel(" not in run.output

    # one job dir per task, each with the job's own log
    executing = re.compile(STAMP + r".* - Process ID (\d+) executing task (\d+)")
    pids = set()
    started = []
    for num in range(5):
        log_file = sweep_dir / str(num) / "my_app.log"
        assert log_file.exists(), f"no {log_file}"
        lines = executing.findall(log_file.read_text())
        assert len(lines) == 1, log_file.read_text()
        stamp, pid, task = lines[0]
        assert int(task) == num + 1
        pids.add(int(pid))
        started.append(_time(stamp))
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4"]

    # jobs ran in several processes, side by side. Each works 1 s after its
    # "executing" line, so it surely runs for that second: one after the other,
    # five jobs would take at least 5 s and never two at once.
    assert len(pids) >= 2, pids
    at_once = max(sum(1 for s in started if s <= t < s + ONE_SECOND) for t in started)
    assert at_once >= 3, f"at most {at_once} jobs ran at once; they started at {sorted(started)}"
    done = re.search(STAMP + r"\[HYDRA\] Batch done in", run.stdout)
    assert done, run.stdout
    took = (_time(done.group(1)) - min(started)).total_seconds()
    assert took < 4.0, f"the batch took {took:.2f}s after the first job started"


@pytest.mark.slow
def test_example_launcher_config_shows_every_key(tmp_path: Path) -> None:
    run = run_app(
        EXAMPLE,
        ["hydra/launcher=joblib", "--cfg", "hydra", "-p", "hydra.launcher"],
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 0, run.output
    assert run.stdout.startswith("# @package hydra.launcher\n"), run.stdout
    shown = OmegaConf.to_container(OmegaConf.create(run.stdout))
    assert isinstance(shown, dict)

    expected = OmegaConf.to_container(OmegaConf.structured(JobLibLauncherConf))
    assert isinstance(expected, dict)
    expected["n_jobs"] = 10  # example/config.yaml
    assert shown == expected
    for key in [
        "n_jobs", "backend", "prefer", "require", "verbose", "timeout", "pre_dispatch",
        "batch_size", "temp_folder", "max_nbytes", "mmap_mode", "inner_max_num_threads",
    ]:  # fmt: skip
        assert re.search(rf"^{key}: ", run.stdout, re.MULTILINE), f"{key} not shown"
    for line in [
        "n_jobs: 10", "backend: loky", "prefer: processes", "require: null", "verbose: 0",
        "timeout: null", "pre_dispatch: 2*n_jobs", "batch_size: auto", "temp_folder: null",
        "max_nbytes: null", "mmap_mode: r", "inner_max_num_threads: null",
    ]:  # fmt: skip
        assert f"\n{line}\n" in run.stdout, f"{line!r} not in:\n{run.stdout}"


# -- processes -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_multiprocessing_with_one_job_at_a_time_still_runs_each_job_in_its_own_process(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [
            sys.executable, "-Werror", str(TINY), "-m", "hydra/launcher=joblib",
            f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.backend=multiprocessing",
            "hydra.launcher.n_jobs=1", "+x=1,2,3", "+work=0.2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout + stderr
    assert "backend=multiprocessing,n_jobs=1," in stdout

    seen = _seen(sweep_dir, 3)
    pids = [job["pid"] for job in seen]
    assert len(set(pids)) == 3, pids
    assert proc.pid not in pids
    # started by the launcher, one after the other: by the launching process itself, or by
    # the fork server it forked (Linux, Python 3.10 to 3.13), a parent common to all jobs
    parents = {job["ppid"] for job in seen}
    assert len(parents) == 1 and not parents & {*pids}, (proc.pid, seen)
    spans = sorted((job["started"], job["ended"]) for job in seen)
    for (_, ended), (next_started, _) in zip(spans, spans[1:]):
        assert ended <= next_started, spans


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_verbose_shows_joblibs_progress_messages(tmp_path: Path, backend: str) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        TINY,
        [
            "-m", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.launcher.backend={backend}", "hydra.launcher.n_jobs=2",
            "hydra.launcher.verbose=5", "+x=1,2",
        ],
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.output
    assert "[Parallel(n_jobs=2)]: Done" in run.stderr, run.stderr
    assert len(_seen(sweep_dir, 2)) == 2


# -- what a job sees ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("chdir", [True, False], ids=["chdir", "no-chdir"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_job_sees_chdir_env_set_and_original_cwd(tmp_path: Path, backend: str, chdir: bool) -> None:
    sweep_dir = tmp_path / "sweep"
    launch_dir = tmp_path / "launch here"
    launch_dir.mkdir()
    run = run_app(
        TINY,
        [
            "-m", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.launcher.backend={backend}", "hydra.launcher.n_jobs=2",
            f"hydra.job.chdir={str(chdir).lower()}", "+hydra.job.env_set.MY_VAR=hello",
            "+x=1,2,3",
        ],
        cwd=launch_dir,
        env={"MY_VAR": "from the shell"},
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.output
    for num, job in enumerate(_seen(sweep_dir, 3)):
        job_dir = (sweep_dir / str(num)).resolve()
        assert job["num"] == num
        assert Path(job["output_dir"]).resolve() == job_dir
        assert Path(job["cwd"]).resolve() == (job_dir if chdir else launch_dir.resolve())
        assert Path(job["original_cwd"]).resolve() == launch_dir.resolve()
        assert Path(job["absolute"]) == launch_dir.resolve() / "data" / "in.txt"
        assert job["my_var"] == "hello"
