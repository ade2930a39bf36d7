"""backend=ray and GPUs, with fake ids (there is no GPU here): the local Ray the launcher
starts gets exactly the devices' ids, and a cluster started here with ``ray start --head
--num-gpus 2`` hands each job of ``gpus_per_job=1`` a GPU of its own. Real Ray on loopback."""

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import APPS, Run, jobs, run_app
from test_devices import CUDA, assert_pool_kept, ids
from test_ray import ray_env, start_ray_head  # noqa: F401 - ray_env: the module's fixture

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = APPS / "devices.py"
RAY = ["hydra/launcher=joblib", "hydra.launcher.backend=ray", "hydra.launcher.progress=none"]


def ray_sweep(tmp_path: Path, n: int, *extra: str, env: Dict[str, str]) -> Run:
    return run_app(
        APP,
        ["-m", *RAY, "hydra.sweep.dir=sweep", f"+i=range({n})", *extra],
        cwd=tmp_path,
        env={CUDA: "launcher", **env},
    )


def seen(tmp_path: Path, n: int) -> List[Dict[str, Any]]:
    return [json.loads((tmp_path / "sweep" / str(i) / "seen.json").read_text()) for i in range(n)]


def test_local_ray_gets_exactly_the_devices_and_each_job_sees_only_its_own(
    ray_env: Dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short socket paths
    devices = ["GPU-a", "GPU-b", "GPU-c"]
    try:
        run = ray_sweep(
            tmp_path,
            8,
            f"hydra.launcher.devices=[{','.join(devices)}]",
            "hydra.launcher.n_jobs=4",
            "+work=0.5",
            f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
            env=ray_env,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)

    assert run.returncode == 0, run.output
    assert (
        f"Device pool {','.join(devices)} (1 per job, in {CUDA}): at most 3 jobs at once, "
        "Ray hands each job its ids" in run.output
    ), run.output
    assert re.search(r"on local Ray \S+ \(3 CPUs, 3 jobs at once\)", run.output), run.output
    jobs_seen = seen(tmp_path, 8)
    assert_pool_kept(jobs_seen, devices, per_job=1)  # never shared at once, at most 3 at once
    records = {record["num"]: record for record in jobs(tmp_path / "sweep")}
    for job in jobs_seen:
        assert records[job["num"]]["devices"] == list(ids(job))
        assert job["env"][CUDA] != "launcher"


def test_local_ray_with_one_device_runs_one_job_at_a_time_on_it(
    ray_env: Dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    # joblib's Ray pool has two actors: they share the one GPU, never at the same time
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        run = ray_sweep(
            tmp_path,
            3,
            "hydra.launcher.devices=[only]",
            "hydra.launcher.n_jobs=2",
            "+work=0.3",
            f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
            env=ray_env,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert run.returncode == 0, run.output
    assert "at most 1 jobs at once" in run.output, run.output
    assert_pool_kept(seen(tmp_path, 3), ["only"], per_job=1)


def test_gpus_per_job_on_a_ray_cluster_started_with_two_gpus(
    ray_env: Dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    # the head's GPUs are the ids in its CUDA_VISIBLE_DEVICES, as on a real node
    with start_ray_head(ray_env, "--num-gpus", "2", env={CUDA: "gpu-0,gpu-1"}) as head:
        run = ray_sweep(
            tmp_path,
            6,
            f"hydra.launcher.ray.address={head.address}",
            "hydra.launcher.gpus_per_job=1",
            "+work=0.5",
            env=ray_env,
        )
        assert run.returncode == 0, run.output
        assert f"on Ray cluster {head.address} (2 CPUs, 2 jobs at once)" in run.output
        jobs_seen = seen(tmp_path, 6)
        assert_pool_kept(jobs_seen, ["gpu-0", "gpu-1"], per_job=1)
        for record in jobs(tmp_path / "sweep"):
            assert record["devices"] in (["gpu-0"], ["gpu-1"]), record

        # more GPUs per job than the cluster has: one clear error, no job started
        (tmp_path / "more").mkdir()
        too_many = ray_sweep(
            tmp_path / "more",
            2,
            f"hydra.launcher.ray.address={head.address}",
            "hydra.launcher.gpus_per_job=3",
            env=ray_env,
        )
    assert too_many.returncode == 1, too_many.output
    assert "Traceback" not in too_many.output, too_many.output
    assert (
        f"hydra.launcher.gpus_per_job=3 asks each job for 3 GPU(s), and the Ray cluster "
        f"{head.address} offers 2" in too_many.stderr
    ), too_many.output
    assert not (tmp_path / "more" / "sweep" / "jobs.jsonl").exists()
