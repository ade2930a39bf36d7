"""A sweep app whose jobs can misbehave on purpose.

Sweep over ``+name=a,b,c,...``; ``+modes.<name>=<mode>`` picks what job
``<name>`` does after working ``+work=<seconds>``: ok (default), raise, exit
(``os._exit(3)``), sigkill, sleep (far past any timeout) or unpicklable (returns
a lock). A job that returns writes ``done.marker`` into its output dir.
With ``+count_dir=<dir>`` (outside the sweep dir) each run of a job appends a
line to ``<dir>/<name>.runs``, so tests can tell how often a job ran.
"""

import os
import signal
import threading
import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> object:
    name = str(cfg.get("name", "job"))
    mode = (cfg.get("modes") or {}).get(name, "ok")
    if cfg.get("count_dir"):
        with open(Path(cfg.count_dir) / f"{name}.runs", "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(float(cfg.get("work", 0)))
    if mode == "raise":
        raise ValueError(f"job {name} failed on purpose")
    if mode == "exit":
        os._exit(3)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        time.sleep(600)
    marker = Path(HydraConfig.get().runtime.output_dir) / "done.marker"
    marker.write_text(name)
    if mode == "unpicklable":
        return threading.Lock()
    return f"value of {name}"


if __name__ == "__main__":
    main()
