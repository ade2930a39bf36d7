"""backend=dask and GPUs, with fake ids (there is no GPU here): the embedded LocalCluster's
workers each hold their own ids, and a scheduler reached by address hands each job a worker
offering the resource GPU. Real schedulers and workers on loopback, started by the tests."""

import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import APPS, assert_clear_error, jobs, run_app
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
    by_pid = {}
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
