"""A task that is a callable object, not a function: ``hydra.main(...)(instance)``."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


class WritesMarker:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, cfg: DictConfig) -> None:
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "result.txt").write_text(f"{self.marker}-{cfg.job}")


app = hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)(WritesMarker("callable"))

if __name__ == "__main__":
    app()
