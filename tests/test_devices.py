"""The device pool: each running job holds its own device ids, and sees only those.

Each test runs tests/apps/devices.py as a user would, with
``hydra.launcher.devices`` set; every job writes down (``seen.json``) the device
variables it saw, when its task started and ended, and its process id. From
those, the tests check what the pool promises: a job sees exactly the ids it
was handed, jobs that run at the same time never share one, no more jobs run at
once than the pool can serve, and an id comes back to the pool however its job
ends.
"""

import json
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import APPS, Run, run_app

BACKENDS = ["loky", "multiprocessing"]
APP = APPS / "devices.py"
CUDA = "CUDA_VISIBLE_DEVICES"
HIP = "HIP_VISIBLE_DEVICES"


@dataclass
class DeviceSweep:
    run: Run
    sweep_dir: Path
    seen: List[Dict[str, Any]]  # by job number
    manifest: Dict[int, Dict[str, Any]]  # the jobs.jsonl record of each job, by number


def device_sweep(
    backend: str,
    sweep_dir: Path,
    n: int,
    devices: str,
    *extra: str,
    env: Optional[Dict[str, str]] = None,
) -> DeviceSweep:
    run = run_app(
        APP,
        [
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            f"hydra.launcher.devices={devices}",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={sweep_dir}",
            f"+i=range({n})",
            *extra,
        ],
        cwd=sweep_dir.parent,
        # the launcher's own values, which no job must see in the variable it is handed
        env={CUDA: "launcher", HIP: "launcher", **(env or {})},
    )
    seen = []
    for num in range(n):
        path = sweep_dir / str(num) / "seen.json"
        assert path.exists(), f"job #{num} wrote no {path}\n{run.output}"
        seen.append(json.loads(path.read_text()))
    manifest = {}
    for line in (sweep_dir / "jobs.jsonl").read_text().splitlines():
        record = json.loads(line)
        manifest[record["num"]] = record
    return DeviceSweep(run, sweep_dir, seen, manifest)


def ids(job: Dict[str, Any], variable: str = CUDA) -> Tuple[str, ...]:
    value = job["env"][variable]
    assert value is not None, f"job #{job['num']} saw no {variable}"
    return tuple(value.split(","))


def overlap(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def most_at_once(jobs: Sequence[Dict[str, Any]]) -> int:
    """The largest number of jobs whose tasks ran at the same moment."""
    events = sorted(
        [(job["started"], 1) for job in jobs] + [(job["ended"], -1) for job in jobs],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def assert_pool_kept(
    jobs: Sequence[Dict[str, Any]], pool: Sequence[str], per_job: int, variable: str = CUDA
) -> None:
    """Each job saw ``per_job`` distinct ids of ``pool``; jobs running together shared none."""
    slots = len(pool) // per_job
    for job in jobs:
        held = ids(job, variable)
        assert len(held) == per_job and len(set(held)) == per_job, job
        assert set(held) <= set(pool), job
    for a, b in combinations(jobs, 2):
        if overlap(a, b):
            assert not set(ids(a, variable)) & set(ids(b, variable)), (
                f"jobs #{a['num']} and #{b['num']} ran at the same time on the same device: "
                f"{a['env'][variable]} / {b['env'][variable]}"
            )
    assert most_at_once(jobs) <= slots


# -- one device per job, on a pool smaller than n_jobs ------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def two_devices(request: Any, tmp_path_factory: pytest.TempPathFactory) -> DeviceSweep:
    """8 jobs of 0.5 s asking for n_jobs=4 on a pool of two devices."""
    sweep_dir = tmp_path_factory.mktemp(f"devices-{request.param}") / "sweep"
    sweep = device_sweep(
        request.param, sweep_dir, 8, "[0,1]", "hydra.launcher.n_jobs=4", "+work=0.5"
    )
    assert sweep.run.returncode == 0, sweep.run.output
    return sweep


def test_each_job_sees_one_device_never_shared_and_the_pool_caps_concurrency(
    two_devices: DeviceSweep,
) -> None:
    stdout = two_devices.run.stdout
    assert (
        "Device pool 0,1 (1 per job, in CUDA_VISIBLE_DEVICES): at most 2 jobs at once" in stdout
    )
    launching = re.search(r"Joblib\.Parallel\((.*)\) is launching 8 jobs", stdout)
    assert launching and "n_jobs=2," in launching.group(1), stdout

    jobs = two_devices.seen
    assert_pool_kept(jobs, ["0", "1"], per_job=1)
    assert {ids(job)[0] for job in jobs} == {"0", "1"}  # both devices were used
    # with devices, every job runs in a process of its own
    assert len({job["pid"] for job in jobs}) == len(jobs)
    # the launcher's own CUDA_VISIBLE_DEVICES ("launcher") never reaches a job
    assert all(job["env"][CUDA] != "launcher" for job in jobs)


def test_the_device_variable_is_set_before_the_job_imports_its_modules(
    two_devices: DeviceSweep,
) -> None:
    for job in two_devices.seen:
        assert job["probe_imported_in"] == job["pid"]  # imported in the job's own process...
        assert job["at_import"][CUDA] == job["env"][CUDA]  # ...with the job's devices in place


def test_the_job_log_and_the_manifest_name_the_devices(two_devices: DeviceSweep) -> None:
    for job in two_devices.seen:
        num = job["num"]
        log_file = two_devices.sweep_dir / str(num) / "devices.log"
        assert log_file.exists(), f"no {log_file}"
        line = re.search(
            rf"Job #{num} running on host \S+, process (\d+), CUDA_VISIBLE_DEVICES=(\S+)\n",
            log_file.read_text(),
        )
        assert line, log_file.read_text()
        assert int(line.group(1)) == job["pid"]
        assert line.group(2) == job["env"][CUDA]

        record = two_devices.manifest[num]
        assert record["status"] == "COMPLETED"
        assert record["devices"] == list(ids(job))
        assert record["pid"] == job["pid"]


# -- several devices per job ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_jobs_holding_two_devices_each_never_share_one(backend: str, tmp_path: Path) -> None:
    sweep = device_sweep(
        backend,
        tmp_path / "sweep",
        6,
        "[0,1,2,3]",
        "hydra.launcher.devices_per_job=2",
        "hydra.launcher.n_jobs=4",
        "+work=0.5",
    )

    assert sweep.run.returncode == 0, sweep.run.output
    assert (
        "Device pool 0,1,2,3 (2 per job, in CUDA_VISIBLE_DEVICES): at most 2 jobs at once"
        in sweep.run.stdout
    )
    assert_pool_kept(sweep.seen, ["0", "1", "2", "3"], per_job=2)
    for job in sweep.seen:
        assert re.fullmatch(r"\d,\d", job["env"][CUDA]), job  # "0,1" style, no spaces
        assert sweep.manifest[job["num"]]["devices"] == list(ids(job))


# -- another variable, ids that are not numbers --------------------------------------------------

MIG_IDS = ["MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f", "MIG-GPU-8c2f1e5a/7/0"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_env_carries_string_ids_in_the_chosen_variable(
    backend: str, tmp_path: Path
) -> None:
    # one id as a bare word, one quoted: both are Hydra override syntax for a string
    devices = f"[{MIG_IDS[0]},'{MIG_IDS[1]}']"
    sweep = device_sweep(
        backend,
        tmp_path / "sweep",
        4,
        devices,
        f"hydra.launcher.device_env={HIP}",
        "hydra.launcher.n_jobs=2",
        "+work=0.3",
    )

    assert sweep.run.returncode == 0, sweep.run.output
    assert (
        f"Device pool {','.join(MIG_IDS)} (1 per job, in {HIP}): at most 2 jobs at once"
        in sweep.run.stdout
    )
    assert_pool_kept(sweep.seen, MIG_IDS, per_job=1, variable=HIP)
    for job in sweep.seen:
        assert job["at_import"][HIP] == job["env"][HIP]
        assert job["env"][CUDA] == "launcher"  # the other variable is left as it was
        log_file = sweep.sweep_dir / str(job["num"]) / "devices.log"
        assert f"{HIP}={job['env'][HIP]}" in log_file.read_text()


# -- a device comes back to the pool when its job's process dies ---------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_device_held_by_a_job_that_crashes_is_free_again(backend: str, tmp_path: Path) -> None:
    sweep = device_sweep(
        backend,
        tmp_path / "sweep",
        6,
        "[0,1]",
        "hydra.launcher.n_jobs=2",
        "+work=0.5",
        "+crash=1",  # job #1 kills its process (os._exit) while holding its device
    )

    assert sweep.run.returncode != 0  # Hydra's basic sweeper re-raises the failure
    crashed = sweep.seen[1]
    assert crashed.get("crashed"), crashed
    record = sweep.manifest[1]
    assert record["status"] == "FAILED" and record["error_type"] == "WorkerCrashed", record
    assert record["devices"] == list(ids(crashed))
    assert "6 jobs, 5 completed, 1 failed" in sweep.run.stdout

    others = [job for job in sweep.seen if job["num"] != 1]
    assert all(not job.get("crashed") for job in others)
    assert all(sweep.manifest[job["num"]]["status"] == "COMPLETED" for job in others)
    assert_pool_kept(sweep.seen, ["0", "1"], per_job=1)
    # the jobs started after the crash used both devices, the crashed job's one included
    later = [job for job in sweep.seen if job["started"] > crashed["ended"]]
    assert len(later) >= 3, sweep.seen
    assert {ids(job)[0] for job in later} == {"0", "1"}


# -- hydra.job.env_set ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_devices_are_set_alongside_variables_of_hydra_job_env_set(
    backend: str, tmp_path: Path
) -> None:
    sweep = device_sweep(
        backend,
        tmp_path / "sweep",
        4,
        "[0,1]",
        "hydra.launcher.n_jobs=2",
        "+work=0.3",
        "+hydra.job.env_set.MY_VAR=hello",
    )

    assert sweep.run.returncode == 0, sweep.run.output
    assert_pool_kept(sweep.seen, ["0", "1"], per_job=1)
    for job in sweep.seen:
        assert job["env"]["MY_VAR"] == "hello"
        assert job["at_import"][CUDA] == job["env"][CUDA]
        assert sweep.manifest[job["num"]]["devices"] == list(ids(job))
