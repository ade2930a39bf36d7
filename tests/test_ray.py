"""backend=ray: sweeps on a local Ray the launcher starts, and on a Ray cluster started here
(``ray start --head`` on loopback) reached by its address. Real processes, no mocks; skipped
without the [ray] extra."""

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from conftest import APPS, REPO, alive, assert_clear_error, free_port, jobs, run_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXAMPLE = REPO / "example" / "my_app.py"
FAULTY = APPS / "faulty.py"
RAY = ["hydra/launcher=joblib", "hydra.launcher.backend=ray"]


@pytest.fixture(scope="module")
def ray_env() -> Dict[str, str]:
    """Token authentication (Ray's default) with a token of these tests, not one in ~/.ray."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs the [ray] extra")
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


class RayHead:
    def __init__(self, address: str, proc: "subprocess.Popen[bytes]") -> None:
        self.address = address
        self.proc = proc


@pytest.fixture(scope="module")
def ray_head(ray_env: Dict[str, str]) -> Iterator[RayHead]:
    """``ray start --head --block`` on 127.0.0.1, 2 CPUs; SIGTERM to it stops what it started."""
    with start_ray_head(ray_env) as head:
        yield head


@contextmanager
def start_ray_head(
    ray_env: Dict[str, str], *options: str, env: Optional[Dict[str, str]] = None
) -> Iterator[RayHead]:
    """A Ray head on 127.0.0.1 with 2 CPUs (and ``options``), stopped on leaving."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    log = Path(temp_dir) / "head.log"
    port = free_port()
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "node-manager-port",
            "object-manager-port",
        )
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--include-dashboard",
                "false",
                "--temp-dir",
                temp_dir,
                *ports,
                *options,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ray_env, **(env or {})},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield RayHead(f"127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this fixture started
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def assert_one_job_at_a_time_per_process(records: List[Dict[str, Any]]) -> None:
    by_pid: Dict[int, List[Any]] = {}
    for job in records:
        span = (datetime.fromisoformat(job["started"]), datetime.fromisoformat(job["ended"]))
        by_pid.setdefault(job["pid"], []).append(span)
    for spans in by_pid.values():
        spans.sort()
        for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
            assert ended <= started, by_pid


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return False
    return True


def test_a_local_ray_is_started_sized_and_shut_down(
    ray_env: Dict[str, str], tmp_path: Path
) -> None:
    """No address: the launcher starts Ray (ray.init keywords passed on), stops it at exit."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # not /tmp/ray; short socket paths
    try:
        run = run_app(
            EXAMPLE,
            [
                "-m",
                "task=1,2,3,4,5",
                *RAY,
                "hydra.launcher.n_jobs=2",
                "+hydra.launcher.ray.init.num_cpus=3",
                f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
                "hydra.sweep.dir=sweep",
            ],
            cwd=tmp_path,
            env=ray_env,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert run.returncode == 0, run.output
    assert "on local Ray " in run.output and "(3 CPUs, 2 jobs at once)" in run.output, run.output
    records = jobs(tmp_path / "sweep")
    assert [job["status"] for job in records] == ["COMPLETED"] * 5
    pids = {job["pid"] for job in records}
    assert len(pids) == 2, pids  # the pool's two actor processes
    assert_one_job_at_a_time_per_process(records)
    for job in records:
        log = (tmp_path / "sweep" / str(job["num"]) / "my_app.log").read_text()
        assert f"Process ID {job['pid']} executing task {job['num'] + 1}" in log
    time.sleep(1)
    assert not [pid for pid in pids if alive(pid)], "Ray started by the launcher stops with it"


def test_a_cluster_reached_by_address_runs_the_sweep_and_keeps_running(
    ray_head: RayHead, ray_env: Dict[str, str], tmp_path: Path
) -> None:
    run = run_app(
        EXAMPLE,
        [
            "-m",
            "task=1,2,3,4",
            *RAY,
            f"hydra.launcher.ray.address={ray_head.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        env=ray_env,
    )
    assert run.returncode == 0, run.output
    assert f"on Ray cluster {ray_head.address} (2 CPUs, 2 jobs at once)" in run.output, run.output
    sweep = tmp_path / "sweep"
    records = jobs(sweep)
    assert [job["status"] for job in records] == ["COMPLETED"] * 4
    assert all(job["output_dir"] == str(sweep / str(job["num"])) for job in records)
    assert_one_job_at_a_time_per_process(records)
    assert ray_head.proc.poll() is None and _listening(ray_head.address), (
        "the cluster keeps running"
    )


def test_on_a_cluster_a_crashing_job_and_a_job_past_its_timeout_fail_alone(
    ray_head: RayHead, ray_env: Dict[str, str], tmp_path: Path
) -> None:
    count_dir = tmp_path / "count"
    count_dir.mkdir()
    run = run_app(
        FAULTY,
        [
            "-m",
            "+name=a,b,c,d,e",
            "+work=0.5",
            "+modes.b=sleep",
            "+modes.c=sigkill",
            f"+count_dir={count_dir}",
            *RAY,
            "hydra.launcher.retries=1",  # a job whose worker died runs once more
            "hydra.launcher.timeout=4",
            f"hydra.launcher.ray.address={ray_head.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        env=ray_env,
    )
    status = {job["num"]: job["status"] for job in jobs(tmp_path / "sweep")}
    assert status == {0: "COMPLETED", 1: "FAILED", 2: "FAILED", 3: "COMPLETED", 4: "COMPLETED"}, (
        run.output
    )
    assert "JobTimeout: job #1 ran longer than hydra.launcher.timeout=4s" in run.output
    assert "did not finish: the worker process running it died 2 times" in run.output
    assert len((count_dir / "c.runs").read_text().split()) == 2
    for name in "ade":
        assert len((count_dir / f"{name}.runs").read_text().split()) == 1, name
    assert ray_head.proc.poll() is None and _listening(ray_head.address)


def test_an_unreachable_address_is_one_clear_error_in_bounded_time(
    ray_env: Dict[str, str], tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    run = run_app(
        EXAMPLE,
        ["-m", "task=1,2", *RAY, f"hydra.launcher.ray.address={address}", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env=ray_env,
    )
    assert_clear_error(run, f"Cannot reach the Ray cluster at hydra.launcher.ray.address={address}")
    assert run.seconds < 30, run.seconds


def test_without_the_extra_the_backend_names_the_install_command(tmp_path: Path) -> None:
    run = run_app(
        APPS / "without_module.py",
        ["ray", str(EXAMPLE), "-m", "task=1,2", *RAY, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert_clear_error(run, 'pip install "hydra-joblib-launcher[ray]"')
