"""A sweep app whose jobs train as PyTorch users' do: torch imported at the script's top,
a Dataset class defined in the script, a DataLoader with worker processes.

The Dataset holds a lambda: no pickle can carry it, so a DataLoader worker gets it
only by fork, the default start method of a plain ``python app.py`` run on Linux.
Each job writes ``seen.json`` into its output dir: what it found as its task started
(process, start method, native thread pools), then again with the sum of ``+n=<items>``
squares read through ``DataLoader(num_workers=2)``. ``+raise_to=<k>`` makes the job raise
its own thread limit to ``k`` first (``torch.set_num_threads``).
"""

import json
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import hydra
import threadpoolctl
import torch
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

# Python 3.12+ warns when a process with threads forks (loky's workers have some);
# the fork is what this app tests, not the warning.
warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)


class Squares(Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int) -> None:
        self.n = n
        self.square = lambda i: float(i * i)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(self.square(i), dtype=torch.float64)


def thread_pools() -> dict:
    return {
        "torch": torch.get_num_threads(),
        "threadpoolctl": {
            info["internal_api"]: info["num_threads"] for info in threadpoolctl.threadpool_info()
        },
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    seen = {
        "pid": os.getpid(),
        "dynamo_loaded": "torch._dynamo" in sys.modules,
        "start_method": multiprocessing.get_start_method(),
        "at_start": thread_pools(),
    }
    if cfg.get("raise_to") is not None:
        torch.set_num_threads(int(cfg.raise_to))
        seen["after_raise"] = thread_pools()
    out = Path(HydraConfig.get().runtime.output_dir) / "seen.json"
    out.write_text(json.dumps(seen))
    loader = DataLoader(Squares(int(cfg.get("n", 100))), batch_size=10, num_workers=2)
    seen["sum"] = sum(float(batch.sum()) for batch in loader)
    out.write_text(json.dumps(seen))
    return float(seen["sum"])


if __name__ == "__main__":
    main()
