"""backend=dask: sweeps on a Dask scheduler and workers started here on loopback, or on an
embedded LocalCluster. Real processes, no mocks; skipped without the [dask] extra."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest
from conftest import (
    APPS,
    REPO,
    Run,
    alive,
    assert_clear_error,
    free_port,
    jobs,
    run_app,
    session_processes,
    start_app,
)

pytestmark = [pytest.mark.dask, pytest.mark.slow]

EXAMPLE = REPO / "example" / "my_app.py"
FAULTY = APPS / "faulty.py"
DASK = ["hydra/launcher=joblib", "hydra.launcher.backend=dask"]


class Processes:
    """Processes a test starts, each in a session of its own, stopped by id at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: List["subprocess.Popen[bytes]"] = []

    def start(
        self,
        args: Sequence[str],
        *,
        name: str,
        ready: str,
        env: Optional[Dict[str, str]] = None,
        timeout: float = 60,
    ) -> "subprocess.Popen[bytes]":
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(args),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Dask's scratch space (locks, spilled data) in the test's dir, not /tmp
                env={**os.environ, "DASK_TEMPORARY_DIRECTORY": str(self.log_dir), **(env or {})},
                cwd="/",
                start_new_session=True,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
                proc.wait()


class DaskCluster:
    """A ``dask scheduler`` and its ``dask worker`` processes on loopback."""

    def __init__(self, procs: Processes, *, scheduler_env: Optional[Dict[str, str]] = None) -> None:
        pytest.importorskip("distributed")
        self.procs = procs
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        procs.start(
            [
                sys.executable,
                "-m",
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            name=f"scheduler-{port}",
            ready="Scheduler at:",
            env=scheduler_env,
        )
        self.n_workers = 0

    def add_worker(self, *options: str, prefix: Sequence[str] = ()) -> "subprocess.Popen[bytes]":
        self.n_workers += 1
        if "--nthreads" not in options:
            options = ("--nthreads", "1", *options)
        return self.procs.start(
            [
                *prefix,
                sys.executable,
                "-m",
                "dask",
                "worker",
                self.address,
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                *options,
            ],
            name=f"worker-{self.address.rsplit(':', 1)[1]}-{self.n_workers}",
            ready="Registered to:",
        )

    def worker_pids(self, n_workers: Optional[int] = None) -> Dict[str, int]:
        """Worker address -> pid of the process that runs the tasks (the nanny's child)."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:  # type: ignore[no-untyped-call]
            client.wait_for_workers(n_workers or self.n_workers, timeout=60)
            return dict(client.run(os.getpid))


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two single-threaded workers (with nannies), shared by this module."""
    procs = Processes(tmp_path_factory.mktemp("dask-logs"))
    try:
        cluster = DaskCluster(procs)
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        procs.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop()


def runs(count_dir: Path, name: str) -> List[int]:
    path = count_dir / f"{name}.runs"
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


# -- an external scheduler ------------------------------------------------------------


def test_sweep_runs_in_the_workers_and_writes_into_the_sweep_dir(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    workers = dask_cluster.worker_pids()
    run = run_app(
        EXAMPLE,
        [
            "-m",
            "task=1,2,3,4",
            *DASK,
            f"hydra.launcher.dask.address={dask_cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    sweep = tmp_path / "sweep"  # given relative: made absolute for the workers
    assert f"on Dask scheduler {dask_cluster.address} (2 workers, 2 jobs at once)" in run.output
    assert f"sweep output dir : {sweep}" in run.output
    records = jobs(sweep)
    assert [job["status"] for job in records] == ["COMPLETED"] * 4
    assert {job["pid"] for job in records} <= set(workers.values())
    for job in records:
        assert job["output_dir"] == str(sweep / str(job["num"]))
        log = (sweep / str(job["num"]) / "my_app.log").read_text()
        assert f"Process ID {job['pid']} executing task {job['num'] + 1}" in log
        assert (
            f"Job #{job['num']} running on host {socket.gethostname()}, process {job['pid']}" in log
        )
    assert not list(sweep.glob(".hydra-joblib-*")), "the run dir is removed at the end"


def test_a_worker_killed_mid_job_costs_nothing(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    """SIGKILL a worker while it runs a job: Dask runs the job again, all results come back."""
    dask_cluster.worker_pids()  # both workers up
    count_dir = tmp_path / "count"
    count_dir.mkdir()
    names = ["a", "b", "c", "d"]
    result: List[Run] = []
    launcher = threading.Thread(
        target=lambda: result.append(
            run_app(
                FAULTY,
                [
                    "-m",
                    f"+name={','.join(names)}",
                    "+work=4",
                    f"+count_dir={count_dir}",
                    *DASK,
                    "hydra.launcher.retries=1",  # a job whose worker died runs once more
                    f"hydra.launcher.dask.address={dask_cluster.address}",
                    "hydra.sweep.dir=sweep",
                ],
                cwd=tmp_path,
            )
        )
    )
    launcher.start()
    deadline = time.monotonic() + 60
    while not runs(count_dir, "a") and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = runs(count_dir, "a")[0]
    os.kill(killed, signal.SIGKILL)
    launcher.join(timeout=180)
    run = result[0]
    assert run.returncode == 0, run.output
    assert [job["status"] for job in jobs(tmp_path / "sweep")] == ["COMPLETED"] * 4
    assert runs(count_dir, "a")[0] == killed and len(runs(count_dir, "a")) == 2
    for name in names[1:]:
        assert len(runs(count_dir, name)) == 1, name


def test_a_job_that_keeps_killing_its_worker_fails_alone(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    dask_cluster.worker_pids()
    count_dir = tmp_path / "count"
    count_dir.mkdir()
    run = run_app(
        FAULTY,
        [
            "-m",
            "+name=a,b,c,d,e,f",
            "+work=1",
            "+modes.c=sigkill",
            f"+count_dir={count_dir}",
            *DASK,
            "hydra.launcher.retries=1",  # a job whose worker died runs once more
            f"hydra.launcher.dask.address={dask_cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
    )
    assert (tmp_path / "sweep" / "jobs.jsonl").exists(), run.output
    status = {job["num"]: job["status"] for job in jobs(tmp_path / "sweep")}
    assert status == {
        0: "COMPLETED",
        1: "COMPLETED",
        2: "FAILED",
        3: "COMPLETED",
        4: "COMPLETED",
        5: "COMPLETED",
    }, run.output
    assert "did not finish: the worker process running it died 2 times" in run.output
    assert len(runs(count_dir, "c")) == 2  # the third start gave up before running the task
    for name in "abdef":
        assert len(runs(count_dir, name)) == 1, name


def test_a_job_past_its_timeout_fails_and_the_others_complete(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    dask_cluster.worker_pids()
    run = run_app(
        FAULTY,
        [
            "-m",
            "+name=a,b,c",
            "+work=0.5",
            "+modes.b=sleep",
            *DASK,
            "hydra.launcher.timeout=3",
            f"hydra.launcher.dask.address={dask_cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
    )
    assert run.seconds < 60, run.output
    status = {job["num"]: job["status"] for job in jobs(tmp_path / "sweep")}
    assert status == {0: "COMPLETED", 1: "FAILED", 2: "COMPLETED"}, run.output
    assert "JobTimeout: job #1 ran longer than hydra.launcher.timeout=3s" in run.output


def test_a_scheduler_that_gives_up_on_a_task_fails_that_job_only(
    procs: Processes, tmp_path: Path
) -> None:
    """With allowed-failures=0 Dask fails the task itself (KilledWorker): no hang, one FAILED."""
    cluster = DaskCluster(
        procs, scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    )
    cluster.add_worker()
    cluster.add_worker()
    run = run_app(
        FAULTY,
        [
            "-m",
            "+name=a,b,c,d",
            "+work=1",
            "+modes.b=sigkill",
            *DASK,
            f"hydra.launcher.dask.address={cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    status = {job["num"]: job["status"] for job in jobs(tmp_path / "sweep")}
    assert status == {0: "COMPLETED", 1: "FAILED", 2: "COMPLETED", 3: "COMPLETED"}, run.output
    assert "more times than the Dask scheduler allows (KilledWorker" in run.output


def example_at(address: str, tmp_path: Path, *extra: str) -> Run:
    """The example's two-job sweep, sent to the Dask scheduler at ``address``."""
    return run_app(
        EXAMPLE,
        [
            "-m",
            "task=1,2",
            *DASK,
            f"hydra.launcher.dask.address={address}",
            *extra,
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
    )


def test_an_unreachable_scheduler_is_one_clear_error_in_bounded_time(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    run = example_at(address, tmp_path, "hydra.launcher.dask.connect_timeout=3")
    assert_clear_error(
        run,
        f"Cannot reach the Dask scheduler at hydra.launcher.dask.address={address}",
        "within hydra.launcher.dask.connect_timeout=3s",
    )
    assert run.seconds < 20, run.seconds


def test_an_address_that_is_not_a_scheduler_is_one_clear_error(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers (the dashboard's port, say)."""
    pytest.importorskip("distributed")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        run = example_at(address, tmp_path, "hydra.launcher.dask.connect_timeout=3")
    assert_clear_error(run, f"answers at hydra.launcher.dask.address={address}, but not as a Dask")
    assert run.seconds < 20, run.seconds


def test_a_worker_with_two_threads_is_refused(procs: Processes, tmp_path: Path) -> None:
    cluster = DaskCluster(procs)
    cluster.add_worker("--nthreads", "2")
    run = example_at(cluster.address, tmp_path)
    assert_clear_error(run, "(2 threads)", "--nthreads 1")
    assert not (tmp_path / "sweep" / "jobs.jsonl").exists()


def test_no_worker_left_is_one_clear_error(procs: Processes, tmp_path: Path) -> None:
    """The only worker (no nanny) dies with its job: the launch ends with an error, no hang."""
    cluster = DaskCluster(procs)
    cluster.add_worker("--no-nanny")
    run = run_app(
        FAULTY,
        [
            "-m",
            "+name=a,b",
            "+modes.a=sigkill",
            "+modes.b=sigkill",
            *DASK,
            f"hydra.launcher.dask.address={cluster.address}",
            "hydra.launcher.dask.connect_timeout=3",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert_clear_error(run, f"The Dask cluster at {cluster.address} has had no worker for 3s")
    assert run.seconds < 60, run.seconds


# -- workers that miss what the task needs ----------------------------------------------


def hiding(*directories: Path) -> List[str]:
    """A command prefix running a process that sees ``directories`` empty (a mount namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to give workers a filesystem without the app")
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    mounts = " && ".join(f'mount -t tmpfs tmpfs "{directory}"' for directory in directories)
    return [*prefix, "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def test_workers_that_cannot_import_the_apps_module(procs: Processes, tmp_path: Path) -> None:
    """The workers' filesystem has no app dir, as on a host the app is not installed on."""
    app_dir = tmp_path / "app"
    shutil.copytree(APPS / "with_helper", app_dir)
    cluster = DaskCluster(procs)
    cluster.add_worker(prefix=hiding(app_dir))
    run = run_app(
        app_dir / "app.py",
        [
            "-m",
            "+x=1,2,3",
            *DASK,
            f"hydra.launcher.dask.address={cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert_clear_error(
        run,
        "ModuleNotFoundError: No module named 'app_helper'",
        "The workers cannot import the module 'app_helper'",
    )
    assert run.seconds < 60, run.seconds


def test_workers_without_the_launcher_installed(procs: Processes, tmp_path: Path) -> None:
    """The workers' Python finds no copy of the launcher: neither this checkout nor an install."""
    import hydra_plugins

    copies = [Path(p) / "hydra_joblib_launcher" for p in hydra_plugins.__path__]
    cluster = DaskCluster(procs)
    cluster.add_worker(prefix=hiding(*[c for c in copies if c.is_dir()]))
    run = run_app(
        EXAMPLE,
        [
            "-m",
            "task=1,2",
            *DASK,
            f"hydra.launcher.dask.address={cluster.address}",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert_clear_error(
        run, "cannot import the module 'hydra_plugins.", "pip install hydra-joblib-launcher"
    )
    assert run.seconds < 60, run.seconds


# -- the embedded LocalCluster -----------------------------------------------------------


def test_embedded_local_cluster_is_started_once_and_shut_down(tmp_path: Path) -> None:
    """No address: a LocalCluster of n_jobs single-threaded worker processes, reused by every
    batch of the multirun (two here), gone when the app exits."""
    pytest.importorskip("distributed")
    run = run_app(
        EXAMPLE,
        [
            "-m",
            "task=1,2,3,4",
            *DASK,
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.max_batch_size=2",
            "hydra.sweep.dir=sweep",
        ],
        cwd=tmp_path,
        env={"DASK_TEMPORARY_DIRECTORY": str(tmp_path)},  # the workers' scratch space
    )
    assert run.returncode == 0, run.output
    lines = [line for line in run.output.splitlines() if "is launching" in line]
    assert len(lines) == 2, run.output
    assert "on embedded Dask LocalCluster tls://127.0.0.1:" in lines[0]
    assert "(2 worker processes, 2 jobs at once)" in lines[0]
    assert lines[0].split(" on ", 1)[1] == lines[1].split(" on ", 1)[1], (
        "one cluster for both batches"
    )
    records = jobs(tmp_path / "sweep")
    assert [job["status"] for job in records] == ["COMPLETED"] * 4
    pids = {job["pid"] for job in records}
    assert len(pids) == 2, pids  # two worker processes, reused
    time.sleep(1)
    assert not [pid for pid in pids if alive(pid)], "the workers are stopped when the app exits"


def test_jobs_in_the_embedded_cluster_can_start_processes(tmp_path: Path) -> None:
    """The LocalCluster's workers are not daemonic: a job can start a process (a data loader)."""
    pytest.importorskip("distributed")
    run = run_app(
        APPS / "child_process.py",
        ["-m", "+x=1,2", *DASK, "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        env={"DASK_TEMPORARY_DIRECTORY": str(tmp_path)},
    )
    assert run.returncode == 0, run.output
    assert [job["status"] for job in jobs(tmp_path / "sweep")] == ["COMPLETED"] * 2


# A Dask scheduler preload (distributed.scheduler.preload): the scheduler says when a
# client registers, then keeps it waiting, its event loop busy, as dask-jobqueue's is
# while it submits batch jobs.
SLOW_WELCOME = """
import pathlib
import time

from distributed.diagnostics.plugin import SchedulerPlugin


class SlowWelcome(SchedulerPlugin):
    def add_client(self, scheduler, client):
        pathlib.Path({marker!r}).touch()
        time.sleep({seconds})


def dask_setup(scheduler):
    scheduler.add_plugin(SlowWelcome())
"""

# Where the launcher's client connects in the test below: the embedded cluster, one built
# from dask.cluster, or a scheduler at dask.address (started by the test).
CONNECTIONS = ["embedded", "dask.cluster", "dask.address"]


@pytest.mark.parametrize("connection", CONNECTIONS)
def test_an_interrupt_while_the_client_connects_ends_the_app(
    procs: Processes, tmp_path: Path, connection: str
) -> None:
    """Ctrl-C while the launcher's Dask client connects: the app exits, and the cluster
    it started with it. (The half-built client was closed only by the interpreter's
    exit, when its event loop's thread no longer runs: the app waited for it forever.)"""
    pytest.importorskip("distributed")
    marker = tmp_path / "client-registered"
    preload = tmp_path / "slow_welcome.py"
    preload.write_text(SLOW_WELCOME.format(marker=str(marker), seconds=5))
    slow = {"DASK_DISTRIBUTED__SCHEDULER__PRELOAD": json.dumps([str(preload)])}
    where = {
        "embedded": [],
        "dask.cluster": [
            "hydra.launcher.dask.cluster={_target_:distributed.LocalCluster,"
            "threads_per_worker:1,n_workers:0,host:127.0.0.1,dashboard_address:'127.0.0.1:0'}"
        ],
    }
    if connection == "dask.address":
        cluster = DaskCluster(procs, scheduler_env=slow)
        where[connection] = [f"hydra.launcher.dask.address={cluster.address}"]
    args = ["-m", "task=1,2", *DASK, "hydra.launcher.n_jobs=2", *where[connection],
            "hydra.sweep.dir=sweep"]  # fmt: skip
    env = {**slow, "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}
    proc = start_app(EXAMPLE, args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.05)
        assert marker.exists(), "the launcher's client reached the scheduler"
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal's Ctrl-C
        output, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode not in (0, None), output  # Ctrl-C is not a success
    assert "KeyboardInterrupt" in output, output
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(proc.pid) == [], "the cluster's processes end with the app"
    assert not (tmp_path / "sweep" / "0").exists(), "no job started"


# -- without the extra ---------------------------------------------------------------------


def test_without_the_extra_the_backend_names_the_install_command(tmp_path: Path) -> None:
    run = run_app(
        APPS / "without_module.py",
        ["distributed", str(EXAMPLE), "-m", "task=1,2", *DASK, "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert_clear_error(run, 'pip install "hydra-joblib-launcher[dask]"')
