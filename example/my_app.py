"""The example sweep: each job logs its process and works for about a second.

    python example/my_app.py --multirun task=1,2,3,4,5
"""

import logging
import os
import time

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Hydra 1.4 deprecates version_base (it warns when given); Hydra 1.3 warns when it is missing.
VERSION_BASE = {"version_base": None} if hydra.__version__.startswith("1.3") else {}


@hydra.main(**VERSION_BASE, config_path=".", config_name="config")
def my_app(cfg: DictConfig) -> int:
    log.info(f"Process ID {os.getpid()} executing task {cfg.task} ...")
    time.sleep(1)
    return int(cfg.task)


if __name__ == "__main__":
    my_app()
