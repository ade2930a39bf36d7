"""A sweep app that says which batch job it ran in: it logs ``SLURM_JOB_ID`` and returns it.

Sweep over ``+name=a,b,...``; every job works ``+work=<seconds>`` first. With
``+count_dir=<dir>`` each run of a job appends ``<pid> <SLURM_JOB_ID>`` to
``<dir>/<name>.runs`` as it starts.
"""

import logging
import os
import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> object:
    name = str(cfg.get("name", "job"))
    job_id = os.environ.get("SLURM_JOB_ID")
    if cfg.get("count_dir"):
        with open(Path(cfg.count_dir) / f"{name}.runs", "a") as f:
            f.write(f"{os.getpid()} {job_id}\n")
    log.info(f"job {name} in SLURM_JOB_ID={job_id}")
    time.sleep(float(cfg.get("work", 0)))
    return job_id


if __name__ == "__main__":
    main()
