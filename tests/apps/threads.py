"""A sweep app whose jobs write down the native-thread limits their process had.

Each job writes ``threads.json`` into its output dir: its process id and what
``thread_probe`` read as the task imported it.
"""

import json
import os
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    import thread_probe

    seen = {"pid": os.getpid(), **thread_probe.AT_IMPORT}
    (Path(HydraConfig.get().runtime.output_dir) / "threads.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
