"""A sweep app whose jobs end in each way Hydra's run_job tells apart.

``+mode=`` ok (returns 1), fail (raises ValueError), interrupt (raises
KeyboardInterrupt), exit (calls sys.exit(3)). Each job writes the directory it
runs in to ``cwd.txt`` in its output dir, and the callback ``app.RecordEnd``
writes what Hydra's ``on_job_end`` was given to ``job_end.txt``. The config group
``db`` has an option, ``launcher_change``, that changes ``hydra.launcher``.
"""

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig

# Hydra 1.4 warns at every callback it instantiates from the config; the apps run with -Werror.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_=", category=UserWarning)

log = logging.getLogger(__name__)


class RecordEnd(Callback):
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        out = Path(config.hydra.runtime.output_dir)
        value = type(job_return._return_value).__name__
        (out / "job_end.txt").write_text(f"{job_return.status.name} {value}")


@hydra.main(**MAIN_KWARGS, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    Path(HydraConfig.get().runtime.output_dir, "cwd.txt").write_text(os.getcwd())
    log.info("running")
    if cfg.mode == "fail":
        raise ValueError("bad value")
    if cfg.mode == "interrupt":
        raise KeyboardInterrupt
    if cfg.mode == "exit":
        sys.exit(3)
    return 1


if __name__ == "__main__":
    main()
