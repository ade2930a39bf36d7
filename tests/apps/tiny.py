"""A sweep app that writes down what its job saw, for tests to read back.

Each job writes ``seen.json`` into its output dir: its process id and parent's,
its working directory, its output dir, Hydra's original cwd, the
``MY_VAR`` environment variable, ``to_absolute_path("data/in.txt")`` and when
it started and ended. ``+work=<seconds>`` makes it sleep that long first.
"""

import json
import os
import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> int:
    started = time.time()
    time.sleep(float(cfg.get("work", 0)))
    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    seen = {
        "num": hydra_cfg.job.num,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "output_dir": output_dir,
        "original_cwd": get_original_cwd(),
        "my_var": os.environ.get("MY_VAR"),
        "absolute": to_absolute_path("data/in.txt"),
        "started": started,
        "ended": time.time(),
    }
    (Path(output_dir) / "seen.json").write_text(json.dumps(seen))
    return os.getpid()


if __name__ == "__main__":
    main()
