"""A sweep app whose jobs can misbehave on purpose.

Sweep over ``+name=a,b,c,...``; ``+modes.<name>=<mode>`` picks what job
``<name>`` does after working ``+work=<seconds>``: ok (default), raise, exit
(``os._exit(3)``), sigkill, sleep (far past any timeout), unpicklable (returns
a lock), unloadable (returns a value that pickles, but whose unpickling raises)
or worker_only (returns an instance of a class from a module that only the
job's process can import). A job that returns writes ``done.marker`` into its
output dir.
With ``+count_dir=<dir>`` (outside the sweep dir) each run of a job appends a
line to ``<dir>/<name>.runs``, so tests can tell how often a job ran.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def refuse_to_load(name: str) -> None:
    raise RuntimeError(f"the value of job {name} refuses to be unpickled")


class Unloadable:
    """Pickles anywhere; unpickling it (in the launching process) raises."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> object:
        return refuse_to_load, (self.name,)


def worker_only_value(output_dir: Path) -> object:
    """An instance of a class from a module written into ``output_dir``, importable here only."""
    (output_dir / "worker_only_module.py").write_text("class WorkerOnly:\n    pass\n")
    sys.path.insert(0, str(output_dir))
    import worker_only_module

    return worker_only_module.WorkerOnly()


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
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    (output_dir / "done.marker").write_text(name)
    if mode == "unpicklable":
        return threading.Lock()
    if mode == "unloadable":
        return Unloadable(name)
    if mode == "worker_only":
        return worker_only_value(output_dir)
    return f"value of {name}"


if __name__ == "__main__":
    main()
