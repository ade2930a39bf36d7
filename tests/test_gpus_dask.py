"""backend=dask and GPUs, with fake ids (there is no GPU here): the embedded LocalCluster's
workers each hold their own ids, and a scheduler reached by address hands each job a worker
offering the resource GPU. Real schedulers and workers on loopback, started by the tests."""

import json
import re
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import APPS, Run, assert_clear_error, jobs, run_app
from test_dask import DaskCluster, Processes
from test_devices import CUDA, DeviceSweep, assert_pool_kept, device_sweep, ids

pytestmark = [pytest.mark.dask, pytest.mark.slow]

IDS = ["GPU-a", "GPU-b", "GPU-c"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> DeviceSweep:
    """8 jobs of 0.5 s asking for n_jobs=4 on the embedded cluster with three devices."""
    pytest.importorskip("distributed")
    sweep_dir = tmp_path_factory.mktemp("dask-devices") / "sweep"
    sweep = device_sweep(
        "dask", sweep_dir, 8, f"[{','.join(IDS)}]", "hydra.launcher.n_jobs=4", "+work=0.5"
    )
    assert sweep.run.returncode == 0, sweep.run.output
    return sweep


def test_embedded_cluster_one_worker_per_device_each_job_sees_only_its_own(
    embedded: DeviceSweep,
) -> None:
    stdout = embedded.run.stdout
    assert (
        f"Device pool {','.join(IDS)} (1 per job, in {CUDA}): at most 3 jobs at once" in stdout
    ), stdout
    assert re.search(
        r"embedded Dask LocalCluster tls://127\.0\.0\.1:\d+ \(3 worker processes, 3 jobs at once\)",
        stdout,
    ), stdout
    jobs_seen = embedded.seen
    assert_pool_kept(jobs_seen, IDS, per_job=1)  # never shared at once, at most 3 at once
    assert {ids(job)[0] for job in jobs_seen} == set(IDS)
    by_pid: Dict[int, str] = {}
    for job in jobs_seen:
        # a worker process keeps its ids: the same pid always saw the same id
        assert by_pid.setdefault(job["pid"], job["env"][CUDA]) == job["env"][CUDA], jobs_seen
        # in place before the worker's interpreter imported anything of the job
        assert job["at_import"][CUDA] == job["env"][CUDA], job
        assert job["env"][CUDA] != "launcher"


def test_embedded_cluster_manifest_and_job_log_name_the_ids(embedded: DeviceSweep) -> None:
    for job in embedded.seen:
        num = job["num"]
        record = embedded.manifest[num]
        assert record["status"] == "COMPLETED"
        assert record["devices"] == list(ids(job))
        log = (embedded.sweep_dir / str(num) / "devices.log").read_text()
        assert f"{CUDA}={job['env'][CUDA]}" in log, log


def test_embedded_cluster_two_devices_per_job(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    sweep = device_sweep(
        "dask",
        tmp_path / "sweep",
        4,
        "[0,1,2,3]",
        "hydra.launcher.devices_per_job=2",
        "+work=0.3",
    )
    assert sweep.run.returncode == 0, sweep.run.output
    assert "at most 2 jobs at once" in sweep.run.stdout
    assert_pool_kept(sweep.seen, ["0", "1", "2", "3"], per_job=2)
    assert {job["env"][CUDA] for job in sweep.seen} <= {"0,1", "2,3"}


def test_a_job_that_kills_its_worker_fails_alone_and_the_ids_stay_in_place(
    tmp_path: Path,
) -> None:
    pytest.importorskip("distributed")
    sweep = device_sweep(
        "dask",
        tmp_path / "sweep",
        6,
        "[GPU-a,GPU-b]",
        "hydra.launcher.n_jobs=2",
        "+work=0.5",
        "+crash=1",  # job #1 kills its worker process (os._exit) each time it runs
    )
    assert sweep.run.returncode != 0
    assert sweep.manifest[1]["status"] == "FAILED", sweep.manifest[1]
    assert sweep.manifest[1]["error_type"] == "WorkerCrashed", sweep.manifest[1]
    others = [job for job in sweep.seen if job["num"] != 1]
    assert all(sweep.manifest[job["num"]]["status"] == "COMPLETED" for job in others)
    assert_pool_kept(sweep.seen, ["GPU-a", "GPU-b"], per_job=1)
    # jobs after the crash ran on the workers the nannies spawned again, with the ids in
    # place from the start of their process, as the first processes had them
    crashed = sweep.seen[1]
    assert [job for job in others if job["started"] > crashed["ended"]], sweep.seen
    for job in sweep.seen:
        assert job["at_import"][CUDA] == job["env"][CUDA], job


# -- a scheduler reached by address: gpus_per_job asks for the worker resource GPU --------------

APP = APPS / "devices.py"


def gpu_worker(cluster: DaskCluster, *options: str, cuda: str) -> None:
    """A worker started as a GPU host starts one: its own CUDA_VISIBLE_DEVICES, and the app's
    modules importable (tests/apps)."""
    cluster.add_worker(*options, prefix=("env", f"{CUDA}={cuda}", f"PYTHONPATH={APPS}"))


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler, two workers offering GPU=1 (ids gpu-0 and gpu-1), one offering none."""
    procs = Processes(tmp_path_factory.mktemp("dask-gpu-logs"))
    try:
        cluster = DaskCluster(procs)
        gpu_worker(cluster, "--resources", "GPU=1", cuda="gpu-0")
        gpu_worker(cluster, "--resources", "GPU=1", cuda="gpu-1")
        gpu_worker(cluster, cuda="cpu-only")
        yield cluster
    finally:
        procs.stop()


def gpu_sweep(address: str, tmp_path: Path, n: int, *extra: str) -> Run:
    return run_app(
        APP,
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.backend=dask",
            f"hydra.launcher.dask.address={address}",
            "hydra.launcher.progress=none",
            "hydra.sweep.dir=sweep",
            f"+i=range({n})",
            *extra,
        ],
        cwd=tmp_path,
        env={CUDA: "launcher"},
    )


def test_gpus_per_job_runs_each_job_on_a_worker_offering_a_gpu(
    gpu_cluster: DaskCluster, tmp_path: Path
) -> None:
    run = gpu_sweep(gpu_cluster.address, tmp_path, 6, "hydra.launcher.gpus_per_job=1", "+work=0.5")

    assert run.returncode == 0, run.output
    assert f"on Dask scheduler {gpu_cluster.address} (2 workers, 2 jobs at once)" in run.output
    assert "GPUs: each job asks the cluster for 1" in run.output
    records = jobs(tmp_path / "sweep")
    assert [record["status"] for record in records] == ["COMPLETED"] * 6
    # every job ran on a GPU worker (never the one without the resource), and saw its id
    assert {tuple(record["devices"]) for record in records} <= {("gpu-0",), ("gpu-1",)}
    seen = [json.loads((tmp_path / "sweep" / str(i) / "seen.json").read_text()) for i in range(6)]
    assert_pool_kept(seen, ["gpu-0", "gpu-1"], per_job=1)
    for record in records:
        log = Path(record["log_file"]).read_text()
        assert f"{CUDA}={record['devices'][0]}" in log, log


def test_a_cluster_without_the_gpu_resource_is_one_clear_error(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        cluster = DaskCluster(procs)
        gpu_worker(cluster, cuda="cpu-only")
        run = gpu_sweep(cluster.address, tmp_path, 2, "hydra.launcher.gpus_per_job=1")
    finally:
        procs.stop()
    assert_clear_error(
        run,
        "hydra.launcher.gpus_per_job=1 asks each job for the worker resource GPU=1, and no "
        f"worker of the Dask scheduler at {cluster.address} offers it",
        "--resources GPU=1",
    )
    assert run.seconds < 60
    assert not (tmp_path / "sweep" / "jobs.jsonl").exists()  # no job started
    assert not (tmp_path / "sweep" / "0").exists()


def test_env_set_of_the_device_variable_is_refused_with_gpus_per_job(tmp_path: Path) -> None:
    run = gpu_sweep(
        "tcp://127.0.0.1:1",  # never reached: refused before the cluster is
        tmp_path,
        2,
        "hydra.launcher.gpus_per_job=1",
        f"+hydra.job.env_set.{CUDA}=0",
    )
    assert_clear_error(
        run,
        f"hydra.job.env_set.{CUDA}='0' would replace the device ids "
        "hydra.launcher.gpus_per_job gives each job",
    )
