"""A sweep app whose jobs draw from the global random generators without seeding them.

NumPy is imported at the script's top. Each job writes ``seen.json`` into its
output dir: its pid, and a draw from NumPy's global generator and from Python's
``random``.
"""

import json
import os
import random
from pathlib import Path

import hydra
import numpy
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    seen = {
        "pid": os.getpid(),
        "numpy": int(numpy.random.randint(2**62)),
        "random": random.getrandbits(62),
    }
    (Path(HydraConfig.get().runtime.output_dir) / "seen.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
