"""A sweep app whose every job ends its own process at once: ``os._exit(3)``."""

import os

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    os._exit(3)


if __name__ == "__main__":
    main()
