"""A sweep app that imports a module of its own, next to it (``app_helper.py``).

A worker that cannot import ``app_helper`` cannot unpickle the task function,
as on a host where the app is not installed.
"""

import app_helper
import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> str:
    return app_helper.describe(cfg.get("x", 0))


if __name__ == "__main__":
    main()
