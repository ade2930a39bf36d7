"""``devices=auto``: the GPUs of this machine, found once at setup, or one clear error.

    JoblibLauncher.setup ─▶ with_found_devices(options)
        the ids already in device_env (CUDA_VISIBLE_DEVICES set by a scheduler or the user)
        ─▶ NVIDIA: nvidia-smi -L   (GPU indices; the MIG devices' UUIDs where a GPU is split)
        ─▶ AMD:    HIP_VISIBLE_DEVICES, then rocm-smi --showid   (GPU indices)
      ◀─ options with the ids, and how they were found (the launch line says both)

NVML is not read directly: nvidia-smi comes with every NVIDIA driver (it is
NVML's own command line), so it is there wherever NVML is.
"""

import dataclasses
import os
import re
import shutil
import subprocess
from typing import Callable, List, Optional, Tuple

from ._device_options import enough_devices
from ._errors import LauncherConfigError
from ._options import LaunchOptions

HIP = "HIP_VISIBLE_DEVICES"
Found = Optional[Tuple[Tuple[str, ...], str]]  # the ids, and how they were found
COMMAND_TIMEOUT_S = 30.0

# nvidia-smi -L: "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-...)", and under a GPU in MIG
# mode one line per MIG device: "  MIG 1g.5gb     Device  0: (UUID: MIG-...)" (older
# drivers: "MIG-GPU-<uuid>/<gi>/<ci>"); CUDA_VISIBLE_DEVICES takes either UUID form.
_NVIDIA_GPU = re.compile(r"^GPU (\d+):")
_NVIDIA_MIG = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")
# rocm-smi --showid: "GPU[0]          : Device ID: 0x740f" (one or more lines per GPU).
_ROCM_GPU = re.compile(r"^GPU\[(\d+)\]")


def with_found_devices(options: LaunchOptions) -> LaunchOptions:
    """``options`` with ``devices=auto`` replaced by the ids found here; as it is otherwise."""
    if not options.devices_auto or options.devices is not None:
        return options
    looked: List[str] = []
    finders = [_from_env(options.device_env), _nvidia, _rocm]
    if options.device_env != HIP:
        finders.insert(2, _from_env(HIP))
    for find in finders:
        found = find(looked)
        if found is not None:
            devices, how = found
            enough_devices(devices, options.devices_per_job, shown=f"auto ({how}: {devices})")
            return dataclasses.replace(options, devices=devices, devices_found_by=how)
    raise LauncherConfigError(
        f"hydra.launcher.devices=auto found no GPU on this machine; it looked at "
        f"{'; '.join(looked)}. Give the ids yourself (hydra.launcher.devices=[0,1]), set "
        f"{options.device_env} to them, or put nvidia-smi (NVIDIA) or rocm-smi (AMD) on PATH."
    )


def _from_env(variable: str) -> Callable[[List[str]], Found]:
    def find(looked: List[str]) -> Found:
        value = os.environ.get(variable)
        if value is None:
            looked.append(f"{variable} (not set)")
            return None
        ids = tuple(part.strip() for part in value.split(",") if part.strip())
        if not ids or value.strip() == "NoDevFiles":
            looked.append(f"{variable}={value!r} (no device)")
            return None
        return ids, f"{variable} as set"

    return find


def _run(command: List[str], looked: List[str]) -> Optional[str]:
    """The output of ``command``, or None (what went wrong noted in ``looked``)."""
    shown = " ".join(command)
    if shutil.which(command[0]) is None:
        looked.append(f"{shown} (no {command[0]} on PATH)")
        return None
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        looked.append(f"{shown} ({type(error).__name__}: {error})")
        return None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        looked.append(f"{shown} (exit status {done.returncode}{': ' + said[0] if said else ''})")
        return None
    return done.stdout


def nvidia_ids(listing: str) -> Tuple[str, ...]:
    """The ids ``nvidia-smi -L`` shows: a GPU's index, or its MIG devices' UUIDs if it has any."""
    gpus: List[Tuple[str, List[str]]] = []  # (index, its MIG devices' UUIDs)
    for line in listing.splitlines():
        gpu, mig = _NVIDIA_GPU.match(line), _NVIDIA_MIG.match(line)
        if gpu:
            gpus.append((gpu.group(1), []))
        elif mig and gpus:
            gpus[-1][1].append(mig.group(1))
    return tuple(device for index, migs in gpus for device in (migs or [index]))


def _nvidia(looked: List[str]) -> Found:
    output = _run(["nvidia-smi", "-L"], looked)
    if output is None:
        return None
    ids = nvidia_ids(output)
    if not ids:
        looked.append("nvidia-smi -L (no GPU listed)")
        return None
    return ids, "nvidia-smi -L"


def _rocm(looked: List[str]) -> Found:
    output = _run(["rocm-smi", "--showid"], looked)
    if output is None:
        return None
    ids: List[str] = []
    for line in output.splitlines():
        match = _ROCM_GPU.match(line.strip())
        if match and match.group(1) not in ids:
            ids.append(match.group(1))
    if not ids:
        looked.append("rocm-smi --showid (no GPU listed)")
        return None
    return tuple(ids), "rocm-smi --showid"
