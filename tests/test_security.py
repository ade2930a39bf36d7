"""Let no one else in: the embedded Dask cluster answers only to the launch that started it.

Real processes on loopback, as the tests' user: a sweep on the embedded LocalCluster
whose jobs wait on a gate file; while they wait, a plain ``distributed.Client`` (and a
bare Dask RPC to each worker) without the launch's credentials tries to connect.
"""

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from conftest import APPS, app_env, jobs

pytestmark = [pytest.mark.dask, pytest.mark.slow]

PACED = APPS / "paced.py"


def listening_ports(pids: List[int]) -> List[int]:
    """The TCP ports on which the processes ``pids`` listen."""
    import psutil

    ports = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    ports.add(conn.laddr.port)
        except psutil.NoSuchProcess:
            pass
    return sorted(ports)


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


def test_the_embedded_cluster_refuses_a_client_without_the_launchs_credentials(
    tmp_path: Path,
) -> None:
    distributed = pytest.importorskip("distributed")
    import psutil

    gate = tmp_path / "gate"
    gate.write_text("closed")
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-Werror",
            str(PACED),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.backend=dask",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
            "+name=a,b",
            f"+gate={gate}",
            "+gated=[a,b]",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=app_env({"DASK_TEMPORARY_DIRECTORY": str(tmp_path)}),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "is launching" in line:
                break
        found = re.search(r"embedded Dask LocalCluster (\S+) \(", "".join(seen))
        assert found, "".join(seen)
        address = found.group(1)
        assert address.startswith("tls://127.0.0.1:"), address  # named in the launch line
        deadline = time.monotonic() + 60
        while len(list(sweep_dir.glob("*/.hydra"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both jobs started, waiting at the gate

        port = address.rsplit(":", 1)[1]
        for attempt in (address, f"tcp://127.0.0.1:{port}"):
            started = time.monotonic()
            with pytest.raises(Exception):
                distributed.Client(attempt, timeout=5, set_as_default=False)
            assert time.monotonic() - started < 30, attempt
        workers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        ports = listening_ports(workers)
        assert ports, "the workers listen somewhere"
        for worker_port in ports:
            for scheme in ("tls", "tcp"):
                assert refused(f"{scheme}://127.0.0.1:{worker_port}"), worker_port

        gate.unlink()  # the jobs may end
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen) + output
    assert [job["status"] for job in jobs(sweep_dir)] == ["COMPLETED", "COMPLETED"]
