"""backend=dask on ``dask_jobqueue.SLURMCluster``: sweeps through a real SLURM on this machine.

SLURM is started by .ci/slurm.sh (as root: one node named after ``hostname -s``
on localhost). Without it these tests skip with the reason; with CI=true they
fail instead. Each test names its batch jobs (``job_name``) and checks that
none of them is left in ``squeue`` when the launcher is gone.
"""

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import List

import pytest
from conftest import APPS, REPO, assert_clear_error, jobs, run_app, start_app

pytestmark = [pytest.mark.dask, pytest.mark.slurm, pytest.mark.slow]

EXAMPLE = REPO / "example" / "my_app.py"
DASK = ["hydra/launcher=joblib", "hydra.launcher.backend=dask"]


def _slurm_missing() -> str:
    """Why SLURM cannot run jobs here, or "" when it can."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (run .ci/slurm.sh as root to start a one-node SLURM)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as error:
        return f"sinfo failed: {error}"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no SLURM node up (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return ""


@pytest.fixture(scope="module")
def slurm() -> None:
    pytest.importorskip("dask_jobqueue")
    reason = _slurm_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM is required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def job_name() -> str:
    return f"hj-{uuid.uuid4().hex[:8]}"


def queued(name: str) -> List[str]:
    """The ids of the batch jobs named ``name`` still in the queue."""
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, timeout=20
    ).stdout
    return out.split()


def none_queued(name: str, within: float = 15.0) -> List[str]:
    deadline = time.monotonic() + within
    while queued(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    return queued(name)


def slurm_cluster(tmp_path: Path, name: str, *extra: str) -> str:
    items = [
        "_target_:dask_jobqueue.SLURMCluster",
        "cores:1",
        "processes:1",
        "memory:1GB",
        "walltime:'00:10:00'",
        "interface:lo",  # the scheduler and the workers listen on loopback only
        # its dashboard too, on a free port (8787 may be taken: a warning, an error under -Werror)
        "scheduler_options:{dashboard_address:'127.0.0.1:0'}",
        f"job_name:{name}",
        f"log_directory:{tmp_path / 'slurm-logs'}",
        *extra,
    ]
    return "hydra.launcher.dask.cluster={" + ",".join(items) + "}"


@pytest.fixture(autouse=True)
def _cancel_leftovers(job_name: str) -> object:
    yield
    left = queued(job_name) if shutil.which("squeue") else []
    if left:  # the test fails on them itself; do not leave them to the next test
        subprocess.run(["scancel", *left], timeout=20)


def test_the_example_sweep_runs_in_slurm_jobs(slurm: None, tmp_path: Path, job_name: str) -> None:
    run = run_app(
        EXAMPLE,
        ["-m", "task=1,2,3", *DASK, "hydra.launcher.n_jobs=2", slurm_cluster(tmp_path, job_name),
         "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "on Dask SLURMCluster tcp://127.0.0.1:" in run.output
    assert "(2 workers, 2 jobs at once)" in run.output
    assert [job["status"] for job in jobs(tmp_path / "s")] == ["COMPLETED"] * 3
    assert none_queued(job_name) == [], "the batch jobs are cancelled at exit"


def test_every_job_runs_inside_a_slurm_job(slurm: None, tmp_path: Path, job_name: str) -> None:
    count = tmp_path / "count"
    count.mkdir()
    run = run_app(
        APPS / "batch_job.py",
        ["-m", "+name=a,b,c,d", f"+count_dir={count}", *DASK, "hydra.launcher.n_jobs=2",
         slurm_cluster(tmp_path, job_name), "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    ids = {name: (count / f"{name}.runs").read_text().split()[1] for name in "abcd"}
    assert all(job_id.isdigit() for job_id in ids.values()), ids
    assert len(set(ids.values())) <= 2, "two workers: two batch jobs at most"
    for job in jobs(tmp_path / "s"):
        assert job["status"] == "COMPLETED"
        log = (tmp_path / "s" / str(job["num"]) / "batch_job.log").read_text()
        assert "in SLURM_JOB_ID=" in log and "SLURM_JOB_ID=None" not in log
    assert none_queued(job_name) == []


def test_a_job_that_kills_its_worker_fails_alone(slurm: None, tmp_path: Path, job_name: str) -> None:
    run = run_app(
        APPS / "faulty.py",
        ["-m", "+name=a,b,c,d", "+work=1", "+modes.b=sigkill", *DASK, "hydra.launcher.n_jobs=2",
         slurm_cluster(tmp_path, job_name), "hydra.sweep.dir=s"],
        cwd=tmp_path,
        timeout=300,
    )
    status = [job["status"] for job in jobs(tmp_path / "s")]
    assert status == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"], run.output
    # hydra.launcher.retries=0: the job whose worker died does not run again
    assert "did not finish: the worker process running it died once" in run.output
    assert none_queued(job_name) == []


def test_an_interrupt_cancels_the_batch_jobs(slurm: None, tmp_path: Path, job_name: str) -> None:
    count = tmp_path / "count"
    count.mkdir()
    args = ["-m", "+name=a,b,c,d", "+work=120", f"+count_dir={count}", *DASK,
            "hydra.launcher.n_jobs=2", slurm_cluster(tmp_path, job_name), "hydra.sweep.dir=s"]
    proc = start_app(
        APPS / "batch_job.py", args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(count.glob("*.runs"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        assert len(queued(job_name)) == 2, "two batch jobs run the jobs"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode not in (0, None), output  # Ctrl-C is not a success
    assert none_queued(job_name, within=5) == [], output
    assert not (count / "c.runs").exists(), "no job started after the interrupt"


def test_no_worker_in_time_says_what_squeue_says(slurm: None, tmp_path: Path, job_name: str) -> None:
    """Batch jobs held in the queue: the error names SLURM's pending reason, and cancels them."""
    run = run_app(
        EXAMPLE,
        ["-m", "task=1,2", *DASK, "hydra.launcher.n_jobs=1", "hydra.launcher.dask.worker_timeout=3",
         slurm_cluster(tmp_path, job_name, "job_extra_directives:['--begin=now+3600']"),
         "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert_clear_error(run, "SLURMCluster has no worker after 3s", "PENDING (BeginTime)")
    assert not (tmp_path / "s" / "0").exists()
    assert none_queued(job_name) == []


def test_a_job_past_its_timeout_fails_and_the_others_complete(
    slurm: None, tmp_path: Path, job_name: str
) -> None:
    run = run_app(
        APPS / "faulty.py",
        ["-m", "+name=a,b,c", "+modes.b=sleep", *DASK, "hydra.launcher.n_jobs=2",
         "hydra.launcher.timeout=5", slurm_cluster(tmp_path, job_name), "hydra.sweep.dir=s"],
        cwd=tmp_path,
        timeout=300,
    )
    status = [job["status"] for job in jobs(tmp_path / "s")]
    assert status == ["COMPLETED", "FAILED", "COMPLETED"], run.output
    assert "JobTimeout" in run.output
    assert none_queued(job_name) == []


def test_tls_with_credentials_made_for_the_launch(slurm: None, tmp_path: Path, job_name: str) -> None:
    """``security: true``: the workers speak TLS; their credentials are gone after the sweep."""
    shared = tmp_path / "credentials"
    shared.mkdir(mode=0o700)
    run = run_app(
        EXAMPLE,
        ["-m", "task=1,2", *DASK, "hydra.launcher.n_jobs=2",
         slurm_cluster(tmp_path, job_name, "security:true", f"shared_temp_directory:{shared}"),
         "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "on Dask SLURMCluster tls://127.0.0.1:" in run.output
    assert "ResourceWarning" not in run.output
    assert list(shared.iterdir()) == [], "the workers' credentials are removed"
    assert none_queued(job_name) == []


def test_an_interrupt_while_the_batch_jobs_pend_cancels_them(
    slurm: None, tmp_path: Path, job_name: str
) -> None:
    args = ["-m", "task=1,2", *DASK, "hydra.launcher.n_jobs=2",
            slurm_cluster(tmp_path, job_name, "job_extra_directives:['--begin=now+3600']"),
            "hydra.sweep.dir=s"]
    proc = start_app(
        EXAMPLE, args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while len(queued(job_name)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        assert len(queued(job_name)) == 2, "the batch jobs pend"
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode not in (0, None), output
    assert none_queued(job_name, within=5) == [], output
    assert not (tmp_path / "s" / "0").exists()


def test_an_adapting_cluster_submits_batch_jobs_for_the_work(
    slurm: None, tmp_path: Path, job_name: str
) -> None:
    """``adapt_minimum=0``: no batch job until the jobs are sent, then one per job, up to n_jobs."""
    count = tmp_path / "count"
    count.mkdir()
    run = run_app(
        APPS / "batch_job.py",
        ["-m", "+name=a,b,c,d", "+work=2", f"+count_dir={count}", *DASK, "hydra.launcher.n_jobs=2",
         "hydra.launcher.dask.adapt=true", "hydra.launcher.dask.adapt_minimum=0",
         slurm_cluster(tmp_path, job_name), "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert [job["status"] for job in jobs(tmp_path / "s")] == ["COMPLETED"] * 4
    ids = {(count / f"{name}.runs").read_text().split()[1] for name in "abcd"}
    assert all(job_id.isdigit() for job_id in ids) and len(ids) >= 2, ids  # it grew past one
    assert none_queued(job_name) == []
