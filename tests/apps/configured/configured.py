"""A sweep app with a config file and a config group, for resume tests that change them.

``conf/config.yaml`` picks ``model: small`` (``conf/model/small.yaml``) and
sets ``lr``; sweep over ``model=small,large`` and ``+seed=...``. With
``+count_dir=<dir>`` (outside the sweep dir) each run of a job appends its
process id to ``<dir>/<model>-<seed>.runs``. A job returns
``{"model": <name>, "seed": <seed>, "width": <model.width>, "lr": <lr>}``.
"""

import os
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    if cfg.get("count_dir"):
        with open(Path(cfg.count_dir) / f"{cfg.model.name}-{cfg.seed}.runs", "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"model": cfg.model.name, "seed": cfg.seed, "width": cfg.model.width, "lr": cfg.lr}


if __name__ == "__main__":
    main()
