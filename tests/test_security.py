"""Let no one else in: the embedded Dask cluster answers only to the launch that started it,
and the launcher unpickles only what its user wrote.

Real processes on loopback, as the tests' user: a sweep on the embedded LocalCluster
whose jobs wait on a gate file; while they wait, a plain ``distributed.Client`` (and a
bare Dask RPC to each worker) without the launch's credentials tries to connect. Then
real sweeps and resumes whose kept files are opened to others.
"""

import asyncio
import gc
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import APPS, Run, app_env, jobs, run_app

pytestmark = [pytest.mark.slow]

PACED = APPS / "paced.py"


def listening(processes: List[Any]) -> List[Any]:
    """The addresses (ip, port) on which ``processes`` (psutil's) listen for TCP connections."""
    import psutil

    return [
        conn.laddr
        for process in processes
        for conn in _connections(process)
        if conn.status == psutil.CONN_LISTEN
    ]


def refused(address: str) -> bool:
    """Whether a Dask identity call to ``address`` without credentials fails (within 10 s)."""
    from distributed.core import rpc

    async def identity() -> None:
        async with rpc(address, timeout=5) as remote:
            await asyncio.wait_for(remote.identity(), 10)

    try:
        asyncio.run(identity())
    except Exception:  # noqa: BLE001 - any failure to talk is a refusal
        return True
    return False


class GatedSweep:
    """Two paced jobs on ``backend`` that wait at a gate file until :meth:`finish` opens it.

    ``address`` is the cluster's address as the launch line names it (``where`` matches
    the words before it).
    """

    def __init__(self, tmp_path: Path, backend: List[str], where: str, env: Dict[str, str]) -> None:
        self.gate = tmp_path / "gate"
        self.gate.write_text("closed")
        self.sweep_dir = tmp_path / "sweep"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-Werror",
                str(PACED),
                "-m",
                "hydra/launcher=joblib",
                *backend,
                "hydra.launcher.n_jobs=2",
                f"hydra.sweep.dir={self.sweep_dir}",
                "+name=a,b",
                f"+gate={self.gate}",
                "+gated=[a,b]",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.output = ""
        for line in self.proc.stdout:
            self.output += line
            if "is launching" in line:
                break
        found = re.search(rf"on {where} (\S+) \(", self.output)
        assert found, self.output
        self.address = found.group(1)
        deadline = time.monotonic() + 60
        while len(list(self.sweep_dir.glob("*/.hydra"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both jobs started, waiting at the gate

    def finish(self) -> None:
        """Open the gate; the sweep must then complete unharmed."""
        self.gate.unlink()
        output, _ = self.proc.communicate(timeout=180)
        self.output += output
        assert self.proc.returncode == 0, self.output
        assert [job["status"] for job in jobs(self.sweep_dir)] == ["COMPLETED", "COMPLETED"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.dask
def test_the_embedded_cluster_refuses_a_client_without_the_launchs_credentials(
    tmp_path: Path,
) -> None:
    distributed = pytest.importorskip("distributed")
    import psutil

    env = app_env({"DASK_TEMPORARY_DIRECTORY": str(tmp_path)})
    sweep = GatedSweep(tmp_path, ["hydra.launcher.backend=dask"], "embedded Dask LocalCluster", env)
    try:
        assert sweep.address.startswith("tls://127.0.0.1:"), sweep.address
        port = sweep.address.rsplit(":", 1)[1]
        for attempt in (sweep.address, f"tcp://127.0.0.1:{port}"):
            started = time.monotonic()
            with pytest.raises(Exception):
                distributed.Client(attempt, timeout=5, set_as_default=False)
            assert time.monotonic() - started < 30, attempt
            # The refused client is collected now: collected inside the next client's start
            # (its __del__ closes its loop), it deadlocked the test (distributed 2026.8).
            gc.collect()
        addresses = listening(psutil.Process(sweep.proc.pid).children(recursive=True))
        assert addresses, "the workers listen somewhere"
        assert all(address.ip in LOOPBACK for address in addresses), addresses
        for address in addresses:
            for scheme in ("tls", "tcp"):
                assert refused(f"{scheme}://127.0.0.1:{address.port}"), address
        sweep.finish()
    finally:
        sweep.stop()


# -- no pickle from a stranger ------------------------------------------------------------


def paced_sweep(tmp_path: Path, *extra: str) -> Run:
    return run_app(
        PACED,
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "+name=a,b,c",
            f"+count_dir={tmp_path}",
            *extra,
        ],
        cwd=tmp_path,
    )


def runs_of(tmp_path: Path, name: str) -> int:
    return len((tmp_path / f"{name}.runs").read_text().splitlines())


def test_what_a_job_keeps_to_be_unpickled_is_its_owners_alone(tmp_path: Path) -> None:
    run = paced_sweep(tmp_path)
    assert run.returncode == 0, run.output
    for num in range(3):
        for kept in ("job_return.pkl", "job_outcome.json"):
            mode = (tmp_path / "sweep" / str(num) / ".hydra" / kept).stat().st_mode & 0o777
            assert mode == 0o600, (num, kept, oct(mode))


def test_resume_runs_again_a_job_whose_stored_result_others_could_write(tmp_path: Path) -> None:
    first = paced_sweep(tmp_path)
    assert first.returncode == 0, first.output
    stored = tmp_path / "sweep" / "1" / ".hydra" / "job_return.pkl"
    stored.chmod(0o660)  # chmod g+w: anyone in the group could have put code in it
    again = paced_sweep(tmp_path, "hydra.launcher.resume=true")
    output = again.output
    assert again.returncode == 0, output
    assert [runs_of(tmp_path, name) for name in "abc"] == [1, 2, 1]
    warning = [line for line in output.splitlines() if "#1 :" in line and "running it again" in line]
    assert warning, output
    assert "its group or others can write it (mode 660)" in warning[0]
    latest = {job["num"]: job["status"] for job in jobs(tmp_path / "sweep")}
    assert latest == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}


def test_a_context_file_of_another_user_is_refused(tmp_path: Path) -> None:
    import os

    from hydra_plugins.hydra_joblib_launcher._errors import UntrustedFile
    from hydra_plugins.hydra_joblib_launcher._plan import load_context

    if os.geteuid() != 0:
        pytest.skip("making a file of another user takes root (os.chown)")
    context = tmp_path / "context-0.pkl"
    context.write_bytes(b"not even a pickle")
    context.chmod(0o600)
    os.chown(context, 65534, 65534)  # nobody's
    refusal = r"Refusing to unpickle .*context-0\.pkl: it is owned by user id 65534, not by you \(0\)"
    with pytest.raises(UntrustedFile, match=refusal):
        load_context(str(context), long_lived=False)


@pytest.mark.ray
def test_local_ray_listens_on_loopback_and_refuses_a_driver_without_its_token(tmp_path: Path) -> None:
    """Ray started by the launcher listens on loopback only and keeps Ray's token
    authentication (on by default from 2.59); HOME is the test's, so the token is made
    there, and the outsider's HOME has none."""
    import importlib.util
    import shutil
    import tempfile

    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs the [ray] extra")
    import ray

    if tuple(int(part) for part in ray.__version__.split(".")[:2]) < (2, 59):
        pytest.skip(f"Ray {ray.__version__} starts a local Ray without authentication (2.59 on)")
    home, outsider = tmp_path / "home", tmp_path / "outsider"
    home.mkdir()
    outsider.mkdir()
    env = {k: v for k, v in app_env().items() if not k.startswith("RAY_AUTH")}
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    backend = ["hydra.launcher.backend=ray", f"+hydra.launcher.ray.init._temp_dir={temp_dir}"]
    try:
        sweep = GatedSweep(tmp_path, backend, "local Ray", {**env, "HOME": str(home)})
        try:
            assert sweep.address.startswith("127.0.0.1:"), sweep.address
            import psutil

            addresses = listening(psutil.Process(sweep.proc.pid).children(recursive=True))
            assert addresses, "local Ray listens somewhere"
            assert all(address.ip in LOOPBACK for address in addresses), addresses
            driver = f"import ray; ray.init(address={sweep.address!r}); print('CONNECTED')"
            for who in ({"HOME": str(outsider)}, {"HOME": str(outsider), "RAY_AUTH_TOKEN": "0" * 64}):
                attempt = subprocess.run(
                    [sys.executable, "-c", driver],
                    env={**env, **LOOPBACK_DRIVER, **who},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert attempt.returncode != 0 and "CONNECTED" not in attempt.stdout, who
            # with the token (the test's HOME), the same driver gets in
            attempt = subprocess.run(
                [sys.executable, "-c", driver],
                env={**env, "HOME": str(home), **LOOPBACK_DRIVER},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "CONNECTED" in attempt.stdout, attempt.stdout + attempt.stderr
            sweep.finish()
        finally:
            sweep.stop()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

# A driver of the user's for that Ray, as the README says: token authentication (Ray's
# default for a driver from 2.61 only) and Ray's single-machine mode (its address is loopback).
LOOPBACK_DRIVER = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _connections(process: Any) -> List[Any]:
    import psutil

    try:
        return list(process.net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return []
