"""A sweep app whose jobs use a multiprocessing.Pool on a function of the script, and NumPy.

NumPy (with its OpenBLAS) is imported at the script's top, before any job starts.
Each job writes ``seen.json`` into its output dir: its process, the start method it
found as its task started and the native thread pools threadpoolctl saw then; then
again with the sum of ``Pool(2).map(square, range(+n))``. With ``START_METHOD`` in the environment,
the script sets that start method before its app runs, as a user may.
"""

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import hydra
import numpy
import threadpoolctl
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# Python 3.12+ warns when a process with threads forks (loky's workers have some);
# the fork is what this app tests, not the warning.
warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)


def square(i: int) -> int:
    return i * i


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> int:
    seen = {
        "pid": os.getpid(),
        "start_method": multiprocessing.get_start_method(),
        "threadpoolctl": {
            info["internal_api"]: info["num_threads"] for info in threadpoolctl.threadpool_info()
        },
        "numpy": numpy.__version__,
    }
    out = Path(HydraConfig.get().runtime.output_dir) / "seen.json"
    out.write_text(json.dumps(seen))
    with multiprocessing.Pool(2) as pool:
        seen["sum"] = sum(pool.map(square, range(int(cfg.get("n", 10)))))
    out.write_text(json.dumps(seen))
    return int(seen["sum"])


if __name__ == "__main__":
    if os.environ.get("START_METHOD"):
        multiprocessing.set_start_method(os.environ["START_METHOD"])
    main()
