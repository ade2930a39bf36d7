"""Limits and second chances: a memory limit per job, its peak and CPU time, and retries.

Real sweeps of tests/apps/limits.py on loky, multiprocessing and the embedded
Dask cluster, each started as the leader of a session of its own, so that
whatever a job started and left behind can be found afterwards.
"""

import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import (
    APPS,
    Run,
    assert_clear_error,
    gone,
    jobs,
    run_app,
    session_processes,
    start_app,
)

LIMITS = APPS / "limits.py"
BACKENDS = [
    "loky",
    "multiprocessing",
    pytest.param("dask", marks=[pytest.mark.dask, pytest.mark.slow]),
]
NAMES = "abcde"


def sweep(backend: str, tmp_path: Path, *extra: str, names: str = NAMES) -> Run:
    """The sweep, in a session of its own; asserts that nothing of that session outlives it."""
    if backend == "dask":
        pytest.importorskip("distributed")
    started = start_app(
        LIMITS,
        [
            "-m",
            f"+name={','.join(names)}",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            "hydra.launcher.n_jobs=2",
            "hydra.launcher.progress=none",
            "hydra.sweep.dir=sweep",
            *extra,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = started.communicate(timeout=240)
    finally:
        left = gone(session_processes(started.pid), within=5)
        shown = {pid: _name(pid) for pid in left}
        for pid in left:
            os.kill(pid, 9)
    assert left == [], f"processes of the sweep still running: {shown}\n{stdout}{stderr}"
    return Run(started.returncode, stdout, stderr, 0.0)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "?"


def by_name(tmp_path: Path) -> Dict[str, Dict[str, Any]]:
    records = jobs(tmp_path / "sweep")
    return {NAMES[record["num"]]: record for record in records}


def innocent_runs(backend: str) -> int:
    """How often a job may run when another job killed its worker: loky kills every worker
    of its pool then, and a job that was running beside the culprit runs again (its
    ``attempts`` stay 1: the crash was not its own)."""
    return 2 if backend == "loky" else 1


def runs(tmp_path: Path, name: str) -> List[str]:
    return (tmp_path / "sweep" / str(NAMES.index(name)) / "runs").read_text().split()


# -- memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_whose_child_goes_past_mem_limit_fails_alone(backend: str, tmp_path: Path) -> None:
    run = sweep(backend, tmp_path, "+modes.c=child_hog", "hydra.launcher.mem_limit=300MB")

    records = by_name(tmp_path)
    assert {name: r["status"] for name, r in records.items()} == {
        "a": "COMPLETED",
        "b": "COMPLETED",
        "c": "FAILED",
        "d": "COMPLETED",
        "e": "COMPLETED",
    }, run.output
    failed = records["c"]
    assert failed["error_type"] == "MemoryLimitExceeded"
    assert "over its memory limit of 300 MB (hydra.launcher.mem_limit)" in failed["error"]
    assert failed["max_rss_bytes"] >= 300_000_000
    peak_shown = f"held {failed['max_rss_bytes'] / 1e6:.3g} MB"
    assert peak_shown in failed["error"], failed
    log = (tmp_path / "sweep" / "2" / "limits.log").read_text()
    assert "MemoryLimitExceeded" in run.output and "over its memory limit" in log
    child = int((tmp_path / "sweep" / "2" / "child.pid").read_text())
    assert f"{child} (python" in log  # named among the processes stopped
    assert run.returncode == 1  # the basic sweeper re-raises the failure, as for any


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_that_grows_past_mem_limit_in_its_own_process_fails_alone(
    backend: str, tmp_path: Path
) -> None:
    run = sweep(backend, tmp_path, "+modes.b=hog", "hydra.launcher.mem_limit=300MB", names="abc")
    records = by_name(tmp_path)
    assert [records[n]["status"] for n in "abc"] == ["COMPLETED", "FAILED", "COMPLETED"], run.output
    assert records["b"]["error_type"] == "MemoryLimitExceeded"
    assert records["b"]["max_rss_bytes"] >= 300_000_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_job_records_its_peak_memory_and_cpu_time(backend: str, tmp_path: Path) -> None:
    run = sweep(backend, tmp_path, "+modes.b=big", names="ab")

    assert run.returncode == 0, run.output
    records = by_name(tmp_path)
    assert records["b"]["max_rss_bytes"] >= 200_000_000
    assert 0 < records["a"]["max_rss_bytes"] < records["b"]["max_rss_bytes"]
    for record in records.values():
        assert record["cpu_s"] > 0 and record["attempts"] == 1
    # the summary names the job with the highest peak first
    peaks = [line for line in run.output.splitlines() if " peak  " in line]
    assert peaks and "+name=b" in peaks[0], run.output


# -- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_that_died_runs_again_with_retries(backend: str, tmp_path: Path) -> None:
    run = sweep(backend, tmp_path, "+modes.c=die_once", "+work=0.5", "hydra.launcher.retries=1")

    assert run.returncode == 0, run.output
    records = by_name(tmp_path)
    assert all(r["status"] == "COMPLETED" for r in records.values()), run.output
    assert records["c"]["attempts"] == 2
    assert len(runs(tmp_path, "c")) == 2
    for name in "abde":
        assert records[name]["attempts"] == 1, name
        assert len(runs(tmp_path, name)) <= innocent_runs(backend), name
    log = (tmp_path / "sweep" / "2" / "limits.log").read_text()
    if backend != "dask":  # the cluster runs it again itself: the job's log says so
        assert "failed on attempt 1 of 2: WorkerCrashed" in run.output
    assert "attempt 1" in log


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_retries_a_job_that_died_fails(backend: str, tmp_path: Path) -> None:
    run = sweep(backend, tmp_path, "+modes.c=die_once", "+work=0.5")

    assert run.returncode == 1
    records = by_name(tmp_path)
    assert records["c"]["status"] == "FAILED" and records["c"]["error_type"] == "WorkerCrashed"
    assert records["c"]["attempts"] == 1 and len(runs(tmp_path, "c")) == 1, run.output
    for name in "abde":
        assert records[name]["status"] == "COMPLETED" and records[name]["attempts"] == 1, name
        assert len(runs(tmp_path, name)) <= innocent_runs(backend), name


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_job_that_raised_never_runs_again(backend: str, tmp_path: Path) -> None:
    run = sweep(backend, tmp_path, "+modes.b=raise", "hydra.launcher.retries=3", names="abc")

    assert run.returncode == 1
    records = by_name(tmp_path)
    assert records["b"]["error_type"] == "ValueError" and records["b"]["attempts"] == 1
    assert len(runs(tmp_path, "b")) == 1, run.output


def test_retry_on_memory_runs_a_job_again_and_reports_its_last_attempt(tmp_path: Path) -> None:
    run = sweep(
        "loky",
        tmp_path,
        "+modes.b=child_hog",
        "hydra.launcher.mem_limit=300MB",
        "hydra.launcher.retries=1",
        "hydra.launcher.retry_on=[crash,memory]",
        names="ab",
    )
    records = by_name(tmp_path)
    assert records["b"]["status"] == "FAILED" and records["b"]["attempts"] == 2, run.output
    assert records["b"]["error_type"] == "MemoryLimitExceeded"
    assert len(runs(tmp_path, "b")) == 2
    assert "failed on attempt 1 of 2: MemoryLimitExceeded" in run.output


# -- bad values: one clear error, before anything is written ------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "hydra.launcher.retries=-1",
            "hydra.launcher.retries=-1 is not supported; give a whole number, 0 or more",
        ),
        (
            "hydra.launcher.retry_on=[crash,oom]",
            "give a list of: crash, timeout, memory (for example [crash,memory]). 'oom' is not one of them",
        ),
        (
            "hydra.launcher.mem_limit=50MB",
            "that is 50 MB, and a job's process with Python and Hydra",
        ),
        ("hydra.launcher.mem_limit=100TB", "that is more than this machine's memory"),
        ("hydra.launcher.mem_limit=lots", 'give a size such as "8GB", "500MB" or "2GiB"'),
    ],
)
def test_bad_values_are_one_clear_error(override: str, expected: str, tmp_path: Path) -> None:
    run = run_app(
        LIMITS,
        ["-m", "+name=a,b", "hydra/launcher=joblib", override, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert_clear_error(run, expected)
    assert not (tmp_path / "sweep").exists()
