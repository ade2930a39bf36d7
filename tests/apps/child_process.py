"""A sweep app whose jobs start a process of their own, as data loaders do."""

import multiprocessing
import os

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> int:
    child = multiprocessing.get_context("spawn").Process(target=os.getpid)
    child.start()
    child.join()
    return int(child.exitcode or 0)


if __name__ == "__main__":
    main()
