"""A sweep app with a Hydra callback that writes down the task function it was given.

``SLOW_IMPORT_S=<seconds>`` in the environment makes an import of the script sleep that long.
"""

import os
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig

# Hydra 1.4 warns at every callback it instantiates from the config (no execution whitelist
# can be given for callbacks); the apps run with -Werror, as Hydra's test helpers run them.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_=", category=UserWarning)

if os.environ.get("SLOW_IMPORT_S") and __name__ != "__main__":
    time.sleep(float(os.environ["SLOW_IMPORT_S"]))  # where a job imports the script again


class RecordTask(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = kwargs.get("task_function")
        out = Path(HydraConfig.get().runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "task_name.txt").write_text(getattr(task, "__name__", repr(task)))


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def train_model(cfg: DictConfig) -> int:
    return 1


if __name__ == "__main__":
    train_model()
