"""Resume: after Ctrl-C, the same command with ``hydra.launcher.resume=true`` runs what is missing.

The sweep is tests/apps/paced.py, six jobs on two workers: a and b end at once,
c to f wait for a gate file the test removes only after the interrupt. Each
job counts its runs in a folder outside the sweep dir. The sweeper is Hydra's
basic one, recording what the launcher hands back to it
(tests/apps/sweeper_plugin), as Optuna or any other sweeper would receive it.

Then what resume must not trust: a config file changed since the jobs ran
(tests/apps/configured), a launcher killed with SIGKILL whose jobs.jsonl
missed a completed job and ends in half a line, and a second launch on a
sweep dir in use.
"""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra.core.utils import JobReturn, JobStatus

from conftest import APPS, Run, run_app, session_processes

BACKENDS = ["loky", "multiprocessing"]
NAMES = "abcdef"
PLUGIN_PATH = str(APPS / "sweeper_plugin")


def command(backend: str, sweep_dir: Path, count_dir: Path, gate: Path) -> List[str]:
    return [
        "-m",
        "hydra/launcher=joblib",
        "hydra/sweeper=recording",
        f"hydra.launcher.backend={backend}",
        "hydra.launcher.n_jobs=2",
        "hydra.launcher.progress=none",
        f"hydra.sweep.dir={sweep_dir}",
        f"+name={','.join(NAMES)}",
        f"+count_dir={count_dir}",
        f"+gate={gate}",
        "+gated=[c,d,e,f]",
    ]


def run_counts(count_dir: Path) -> Dict[str, int]:
    counts = {}
    for name in NAMES:
        path = count_dir / f"{name}.runs"
        counts[name] = len(path.read_text().splitlines()) if path.exists() else 0
    return counts


def manifest(sweep_dir: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (sweep_dir / "jobs.jsonl").read_text().splitlines()]


def completed_in_manifest(sweep_dir: Path) -> int:
    path = sweep_dir / "jobs.jsonl"
    if not path.exists():
        return 0
    return sum(1 for record in manifest(sweep_dir) if record["status"] == "COMPLETED")


def expected_value(name: str) -> Dict[str, str]:
    return {"name": name, "value": f"value of {name}"}


@dataclass
class Resumed:
    sweep_dir: Path
    interrupted_output: str
    interrupted_returncode: int
    counts_after_interrupt: Dict[str, int]
    resumed: Run
    counts_after_resume: Dict[str, int]
    returns_after_resume: List[Dict[str, Any]]
    again: Run  # resume=true on the complete sweep
    counts_after_again: Dict[str, int]
    returns_after_again: List[Dict[str, Any]]


@pytest.fixture(scope="module", params=BACKENDS)
def resumed(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    backend = request.param
    root = tmp_path_factory.mktemp(f"resume-{backend}")
    sweep_dir, count_dir, gate = root / "sweep", root / "counts", root / "gate"
    count_dir.mkdir()
    gate.write_text("c to f wait while this file exists")
    args = command(backend, sweep_dir, count_dir, gate)
    env = {**os.environ, "PYTHONPATH": PLUGIN_PATH}

    # 1. the sweep, interrupted by Ctrl-C once a and b completed and c, d are running
    proc = subprocess.Popen(
        [sys.executable, "-Werror", str(APPS / "paced.py"), *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            counts = run_counts(count_dir)
            if completed_in_manifest(sweep_dir) == 2 and counts["c"] and counts["d"]:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0]
        assert completed_in_manifest(sweep_dir) == 2, "the sweep did not get going"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        interrupted_output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    counts_after_interrupt = run_counts(count_dir)

    # 2. the same command, resumed
    gate.unlink()
    resume = [*args, "hydra.launcher.resume=true"]
    resumed_run = run_app(APPS / "paced.py", resume, cwd=root, env={"PYTHONPATH": PLUGIN_PATH})
    counts_after_resume = run_counts(count_dir)
    returns_after_resume = json.loads((sweep_dir / "returns.json").read_text())

    # 3. and again, on the now complete sweep
    (sweep_dir / "returns.json").unlink()
    again = run_app(APPS / "paced.py", resume, cwd=root, env={"PYTHONPATH": PLUGIN_PATH})
    returns_file = sweep_dir / "returns.json"
    return Resumed(
        sweep_dir=sweep_dir,
        interrupted_output=interrupted_output,
        interrupted_returncode=proc.returncode,
        counts_after_interrupt=counts_after_interrupt,
        resumed=resumed_run,
        counts_after_resume=counts_after_resume,
        returns_after_resume=returns_after_resume,
        again=again,
        counts_after_again=run_counts(count_dir),
        returns_after_again=json.loads(returns_file.read_text()) if returns_file.exists() else [],
    )


def test_the_interrupt_leaves_two_jobs_completed(resumed: Resumed) -> None:
    assert resumed.interrupted_returncode != 0
    assert "Interrupted: 2 jobs completed, 0 failed, 4 stopped or never ran" in (
        resumed.interrupted_output
    )
    # a and b ran, c and d started and were stopped, e and f never started
    assert resumed.counts_after_interrupt == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 0, "f": 0}


def test_resume_runs_only_the_jobs_that_did_not_complete(resumed: Resumed) -> None:
    run = resumed.resumed
    assert run.returncode == 0, run.output
    assert "Resuming: 2 jobs completed before are skipped, 4 run" in run.stdout
    ran_now = {
        name: resumed.counts_after_resume[name] - resumed.counts_after_interrupt[name]
        for name in NAMES
    }
    # every job that had not completed ran exactly once more; a and b did not run again
    assert ran_now == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 1, "f": 1}
    assert "Batch done" in run.stdout and "4 jobs, 4 completed, 0 failed" in run.stdout
    assert sorted(p.read_text() for p in resumed.sweep_dir.glob("*/done.marker")) == list(NAMES)


def test_the_sweeper_receives_every_return_value_after_resume(resumed: Resumed) -> None:
    returns = resumed.returns_after_resume
    assert [r["status"] for r in returns] == ["COMPLETED"] * 6
    assert [r["return_value"] for r in returns] == [expected_value(n) for n in NAMES]
    assert [r["overrides"][0] for r in returns] == [f"+name={n}" for n in NAMES]
    # each with its own configs, those run now and those read back from disk alike
    assert [r["cfg_name"] for r in returns] == list(NAMES)
    assert [r["job_num"] for r in returns] == list(range(6))
    assert all(r["copy_equal"] for r in returns), returns


def test_every_job_is_completed_on_disk_with_its_return_value(
    resumed: Resumed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A result's hydra_cfg names the sweeper's config class; on Hydra 1.4 by reference
    # (1.3 re-executes plugin modules at its scan, so cloudpickle sends the class by
    # value): whoever reads it back has the sweeper installed, as the app has.
    monkeypatch.syspath_prepend(PLUGIN_PATH)
    last: Dict[int, Dict[str, Any]] = {}
    for record in manifest(resumed.sweep_dir):
        last[record["num"]] = record
    assert sorted(last) == list(range(6))
    for num, record in last.items():
        assert record["status"] == "COMPLETED", record
        path = resumed.sweep_dir / str(num) / ".hydra" / "job_return.pkl"
        assert record["return_file"] == str(path)
        with open(path, "rb") as f:
            ret = pickle.load(f)
        assert isinstance(ret, JobReturn)
        assert ret.status == JobStatus.COMPLETED
        assert ret.return_value == expected_value(NAMES[num])
        assert ret.cfg.name == NAMES[num] and ret.hydra_cfg.hydra.job.num == num


def test_resume_of_a_complete_sweep_runs_nothing(resumed: Resumed) -> None:
    run = resumed.again
    assert run.returncode == 0, run.output
    assert "Resuming: 6 jobs completed before are skipped, 0 run" in run.stdout
    assert resumed.counts_after_again == resumed.counts_after_resume  # no job ran
    assert run.seconds < 20
    # and the sweeper still receives every job's return value
    assert [r["return_value"] for r in resumed.returns_after_again] == [
        expected_value(n) for n in NAMES
    ]


# -- a config that changed, a killed launcher, two launches at once -------------------------

CONFIGURED = APPS / "configured"
ENV = {"PYTHONPATH": os.pathsep.join([str(APPS), PLUGIN_PATH])}


def configured_sweep(app: Path, sweep_dir: Path, count_dir: Path, backend: str, *extra: str) -> Run:
    return run_app(
        app / "configured.py",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra/sweeper=recording",
            f"hydra.launcher.backend={backend}",
            "hydra.launcher.n_jobs=2",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={sweep_dir}",
            "model=small,large",
            "+seed=1,2",
            f"+count_dir={count_dir}",
            *extra,
        ],
        cwd=app.parent,
        env={**ENV, "DASK_TEMPORARY_DIRECTORY": str(app.parent)},
    )


@pytest.mark.parametrize(
    "backend", ["loky", "multiprocessing", pytest.param("dask", marks=pytest.mark.dask)]
)
def test_resume_runs_again_the_jobs_whose_config_changed(backend: str, tmp_path: Path) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")
    app, sweep_dir, count_dir = tmp_path / "app", tmp_path / "sweep", tmp_path / "counts"
    shutil.copytree(CONFIGURED, app)
    count_dir.mkdir()
    first = configured_sweep(app, sweep_dir, count_dir, backend)
    assert first.returncode == 0, first.output
    large = app / "conf" / "model" / "large.yaml"
    large.write_text(large.read_text().replace("width: 10", "width: 20"))

    run = configured_sweep(app, sweep_dir, count_dir, backend, "hydra.launcher.resume=true")

    assert run.returncode == 0, run.output
    runs = {path.stem: len(path.read_text().split()) for path in count_dir.glob("*.runs")}
    assert runs == {"small-1": 1, "small-2": 1, "large-1": 2, "large-2": 2}
    assert "Resuming: 2 jobs completed before are skipped, 2 run" in run.stdout
    assert "2 jobs completed before run again: their config changed since" in run.stdout
    assert f"#2 : model=large +seed=1 +count_dir={count_dir} changed: model.width 10 -> 20" in (
        run.stdout
    )
    returns = json.loads((sweep_dir / "returns.json").read_text())
    assert [(r["return_value"]["model"], r["return_value"]["width"]) for r in returns] == [
        ("small", 5),
        ("small", 5),
        ("large", 20),
        ("large", 20),
    ]
    digests = {r["num"]: r["config_digest"] for r in manifest(sweep_dir)}
    assert len(set(digests.values())) == 4  # one per job config


def whole_records(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The records of jobs.jsonl, less lines that are not one (cut short)."""
    records = []
    for line in (sweep_dir / "jobs.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_the_launcher_was_killed_runs_no_completed_job_again(
    backend: str, tmp_path: Path
) -> None:
    sweep_dir, count_dir, gate = tmp_path / "sweep", tmp_path / "counts", tmp_path / "gate"
    count_dir.mkdir()
    gate.write_text("c to f wait while this file exists")
    args = command(backend, sweep_dir, count_dir, gate)
    temp = tmp_path / "tmp"  # what the killed launcher leaves in its temp dir stays here
    temp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-Werror", str(APPS / "paced.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PLUGIN_PATH, "TMPDIR": str(temp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            counts = run_counts(count_dir)
            if completed_in_manifest(sweep_dir) == 2 and counts["c"] and counts["d"]:
                break
            time.sleep(0.1)
        assert completed_in_manifest(sweep_dir) == 2, "the sweep did not get going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher (its workers lead groups of their own)
        proc.wait()
    # The workers end with the launcher, the jobs they ran (c, d) unfinished.
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(proc.pid) == [], "workers outlived their launcher"
    # The launcher died before it recorded b whole: its line is cut short, its outcome is
    # only in its job dir.
    first, second = (sweep_dir / "jobs.jsonl").read_text().splitlines()[:2]
    (sweep_dir / "jobs.jsonl").write_text(first + "\n" + second[: len(second) // 2])
    missed = json.loads(second)["num"]
    gate.unlink()

    resume = [*args, "hydra.launcher.resume=true"]
    run = run_app(APPS / "paced.py", resume, cwd=tmp_path, env={"PYTHONPATH": PLUGIN_PATH})

    assert run.returncode == 0, run.output
    assert run_counts(count_dir) == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 1, "f": 1}
    assert "Resuming: 2 jobs completed before are skipped, 4 run" in run.stdout
    assert "jobs.jsonl: line 2 is not a whole record (cut short?); ignored" in run.output
    assert f"#{missed} : +name={NAMES[missed]}" in run.stdout
    assert "jobs.jsonl missed 1 job that completed before" in run.stdout
    returns = json.loads((sweep_dir / "returns.json").read_text())
    assert [r["return_value"] for r in returns] == [expected_value(n) for n in NAMES]
    last = {record["num"]: record["status"] for record in whole_records(sweep_dir)}
    assert last == dict.fromkeys(range(6), "COMPLETED")  # the missed record is whole again


def test_a_second_launch_on_a_sweep_dir_in_use_stops_with_one_clear_error(tmp_path: Path) -> None:
    sweep_dir, count_dir, gate = tmp_path / "sweep", tmp_path / "counts", tmp_path / "gate"
    count_dir.mkdir()
    gate.write_text("c to f wait while this file exists")
    args = command("loky", sweep_dir, count_dir, gate)
    proc = subprocess.Popen(
        [sys.executable, "-Werror", str(APPS / "paced.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": PLUGIN_PATH},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and completed_in_manifest(sweep_dir) < 2:
            time.sleep(0.1)
        second = run_app(APPS / "paced.py", args, cwd=tmp_path, env={"PYTHONPATH": PLUGIN_PATH})
        gate.unlink()
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert second.returncode == 1, second.output
    assert f"{sweep_dir} is in use by another launch" in second.stderr
    assert f"process {proc.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.output
    assert proc.returncode == 0, output
    assert run_counts(count_dir) == dict.fromkeys(NAMES, 1)  # the second launch ran nothing
    assert [r["status"] for r in manifest(sweep_dir)] == ["COMPLETED"] * 6
