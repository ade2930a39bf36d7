"""``hydra.launcher.devices=auto``: the GPUs this machine shows become the device pool.

There is no GPU here: a fake ``nvidia-smi`` first on ``PATH`` prints what the real
one prints for ``-L`` (a GPU split into MIG devices, two whole GPUs), and a
``PATH`` with no ``nvidia-smi`` or ``rocm-smi`` at all stands for a machine without
any. Each sweep is the real app, run as a user runs it (tests/apps/devices.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import APPS, Run, app_env
from test_devices import assert_pool_kept

APP = APPS / "devices.py"
CUDA = "CUDA_VISIBLE_DEVICES"
HIP = "HIP_VISIBLE_DEVICES"

# As nvidia-smi -L prints it (NVIDIA's MIG user guide): GPU 0 is split into two MIG devices.
NVIDIA_SMI_L = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 3g.20gb     Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-8c2f1e5a-9d0b-4b8e-a7c3-2f6e1d0c9b8a)
GPU 2: NVIDIA GeForce RTX 3090 (UUID: GPU-0e4b5a4d-7e2c-4a5e-9a3d-1b2c3d4e5f60)
"""
NVIDIA_IDS = [
    "MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
    "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
    "1",
    "2",
]


def fake_tool(directory: Path, name: str, output: str) -> Path:
    """An executable ``name`` in ``directory`` printing ``output``, as the real one would."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "output.txt").write_text(output)
    tool = directory / name
    # A Python script: PATH holds nothing else, not even cat.
    tool.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(directory / 'output.txt')!r}).read())\n"
    )
    tool.chmod(0o755)
    return directory


def sweep(
    tmp_path: Path, path: List[Path], *extra: str, env: Optional[Dict[str, str]] = None
) -> Run:
    """The devices app with devices=auto, with ``PATH`` exactly ``path`` and no device variables
    but those in ``env``."""
    environ = app_env(env)
    for name in (CUDA, HIP):
        if name not in (env or {}):
            environ.pop(name, None)
    environ["PATH"] = os.pathsep.join(str(p) for p in path)
    proc = subprocess.run(
        [
            sys.executable,
            "-Werror",
            str(APP),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.devices=auto",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *extra,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=environ,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, 0.0)


def seen(tmp_path: Path, n: int) -> List[Dict[str, object]]:
    return [json.loads((tmp_path / "sweep" / str(i) / "seen.json").read_text()) for i in range(n)]


def test_auto_hands_out_the_gpus_and_mig_devices_nvidia_smi_lists(tmp_path: Path) -> None:
    tools = fake_tool(tmp_path / "bin", "nvidia-smi", NVIDIA_SMI_L)
    run = sweep(tmp_path, [tools], "+i=range(6)", "+work=0.4", "hydra.launcher.n_jobs=4")

    assert run.returncode == 0, run.output
    assert (
        f"Device pool {','.join(NVIDIA_IDS)} (1 per job, in {CUDA}, found by nvidia-smi -L): "
        "at most 4 jobs at once" in run.stdout
    ), run.stdout
    jobs = seen(tmp_path, 6)
    assert_pool_kept(jobs, NVIDIA_IDS, per_job=1)
    records = [
        json.loads(line) for line in (tmp_path / "sweep" / "jobs.jsonl").read_text().splitlines()
    ]
    assert all(record["devices"][0] in NVIDIA_IDS for record in records)


def test_auto_honours_the_ids_already_in_cuda_visible_devices(tmp_path: Path) -> None:
    # a scheduler (SLURM, a container runtime) gave this process GPUs 5 and 7 only
    tools = fake_tool(tmp_path / "bin", "nvidia-smi", NVIDIA_SMI_L)
    run = sweep(tmp_path, [tools], "+i=range(3)", "hydra.launcher.n_jobs=2", env={CUDA: "5,7"})

    assert run.returncode == 0, run.output
    assert f"Device pool 5,7 (1 per job, in {CUDA}, found by {CUDA} as set)" in run.stdout
    assert {job["env"][CUDA] for job in seen(tmp_path, 3)} <= {"5", "7"}  # type: ignore[index]


def test_auto_reads_rocm_smi_on_an_amd_machine(tmp_path: Path) -> None:
    output = (
        "============================ ROCm System Management Interface ============================\n"
        "=========================================== ID ===========================================\n"
        "GPU[0]\t\t: Device Name: \t\tAMD Instinct MI210\n"
        "GPU[0]\t\t: Device ID: \t\t0x740f\n"
        "GPU[1]\t\t: Device Name: \t\tAMD Instinct MI210\n"
        "GPU[1]\t\t: Device ID: \t\t0x740f\n"
        "==========================================================================================\n"
    )
    tools = fake_tool(tmp_path / "bin", "rocm-smi", output)
    run = sweep(
        tmp_path,
        [tools],
        "+i=range(2)",
        f"hydra.launcher.device_env={HIP}",
        "hydra.launcher.n_jobs=2",
    )

    assert run.returncode == 0, run.output
    assert f"Device pool 0,1 (1 per job, in {HIP}, found by rocm-smi --showid)" in run.stdout


def test_a_machine_without_gpus_is_one_clear_error_before_anything_is_written(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    run = sweep(tmp_path, [empty], "+i=range(2)")

    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output, run.output
    message = run.stderr
    assert "hydra.launcher.devices=auto found no GPU on this machine" in message
    for looked in (
        f"{CUDA} (not set)",
        "nvidia-smi -L (no nvidia-smi on PATH)",
        f"{HIP} (not set)",
        "rocm-smi --showid (no rocm-smi on PATH)",
    ):
        assert looked in message, message
    assert "hydra.launcher.devices=[0,1]" in message
    assert not (tmp_path / "sweep").exists()


def test_too_few_gpus_for_devices_per_job_is_one_clear_error(tmp_path: Path) -> None:
    tools = fake_tool(tmp_path / "bin", "nvidia-smi", "GPU 0: Tesla T4 (UUID: GPU-1)\n")
    run = sweep(tmp_path, [tools], "+i=range(2)", "hydra.launcher.devices_per_job=2")

    assert run.returncode == 1, run.output
    assert "holds 1 device id(s), but hydra.launcher.devices_per_job=2" in run.stderr, run.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("status", [1, 9])
def test_an_nvidia_smi_that_fails_is_named_in_the_error(tmp_path: Path, status: int) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    tool = tools / "nvidia-smi"
    tool.write_text(
        f"#!{sys.executable}\nprint('NVIDIA-SMI has failed because it could not communicate "
        f"with the NVIDIA driver.')\nraise SystemExit({status})\n"
    )
    tool.chmod(0o755)
    run = sweep(tmp_path, [tools], "+i=range(2)")

    assert run.returncode == 1, run.output
    assert (
        f"nvidia-smi -L (exit status {status}: NVIDIA-SMI has failed because it could not "
        "communicate with the NVIDIA driver.)" in run.stderr
    ), run.output
