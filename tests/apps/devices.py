"""A sweep app whose jobs write down the devices they were given, for tests to read back.

Each job writes ``seen.json`` into its output dir: its process id, when its task
started and ended (``time.time()``), the device variables (CUDA_VISIBLE_DEVICES,
HIP_VISIBLE_DEVICES, and MY_VAR) as the task reads them, as
``tests/apps/device_probe.py`` read them when the job's process imported it,
and as this module read them at its own top level. ``+work=<seconds>`` makes the
task sleep that long; ``+crash=<n>`` makes job ``+i=<n>`` write what it saw and
then kill its process (``os._exit(3)``) while holding its devices.
"""

import json
import os
import time
from pathlib import Path
from typing import Any, Dict

import device_probe
import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

AT_MAIN_IMPORT = {name: os.environ.get(name) for name in device_probe.VARIABLES}


def _write(path: Path, seen: Dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(seen))
    os.replace(partial, path)


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> int:
    started = time.time()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    seen: Dict[str, Any] = {
        "num": HydraConfig.get().job.num,
        "i": cfg.get("i"),
        "pid": os.getpid(),
        "started": started,
        "env": {name: os.environ.get(name) for name in device_probe.VARIABLES},
        "at_import": device_probe.AT_IMPORT,
        "probe_imported_in": device_probe.IMPORTED_IN,
        "at_main_import": AT_MAIN_IMPORT,
    }
    time.sleep(float(cfg.get("work", 0)))
    seen["ended"] = time.time()
    if cfg.get("crash") is not None and cfg.get("i") == cfg.crash:
        seen["crashed"] = True
        _write(output_dir / "seen.json", seen)
        os._exit(3)
    _write(output_dir / "seen.json", seen)
    return os.getpid()


if __name__ == "__main__":
    main()
