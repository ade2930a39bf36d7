"""A sweep app for memory limits and retries.

Sweep over ``+name=a,b,c,...``; ``+modes.<name>=<mode>`` picks what job
``<name>`` does: ok (default), child_hog (starts a process that allocates 100 MB
every 100 ms, far past any limit here, and waits for it), hog (allocates so in
its own process), big (holds 200 MB for a moment, then returns), die_once
(kills its own process on its first attempt only: a file in its output dir
counts the attempts) or raise. A job that starts a process writes its pid to
``child.pid`` in its output dir; every run of a job appends a line to
``runs`` in its output dir.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

HOG = "import time\nheld = []\nfor _ in range(100):\n    held.append(b'x' * 100_000_000)\n    time.sleep(0.1)\ntime.sleep(600)\n"


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> str:
    name = str(cfg.get("name", "job"))
    mode = (cfg.get("modes") or {}).get(name, "ok")
    out = Path(HydraConfig.get().runtime.output_dir)
    with open(out / "runs", "a") as f:
        f.write(f"{os.getpid()}\n")
    if mode == "child_hog":
        child = subprocess.Popen([sys.executable, "-c", HOG])
        (out / "child.pid").write_text(str(child.pid))
        child.wait()
    elif mode == "hog":
        held = []
        for _ in range(100):
            held.append(b"x" * 100_000_000)
            time.sleep(0.1)
    elif mode == "big":
        held = b"x" * 200_000_000
        time.sleep(0.3)
        del held
    elif mode == "die_once":
        if len((out / "runs").read_text().split()) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "raise":
        raise ValueError(f"job {name} failed on purpose")
    time.sleep(float(cfg.get("work", 0)))
    return name


if __name__ == "__main__":
    main()
