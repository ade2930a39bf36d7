"""A sweep app whose jobs each take their own time, for progress and resume tests.

Sweep over ``+name=a,b,c,...``. Every job works ``+work=<seconds>`` (default 0),
job ``<name>`` works ``+slow.<name>=<seconds>`` instead when given;
``+modes.<name>=raise`` makes it raise ValueError afterwards, ``exit`` kill its
process (``os._exit(3)``). With ``+gate=<file>``, the jobs named in
``+gated=[...]`` wait, before their work, for as long as ``<file>`` exists (at
most 300 s), so that a test decides when they may end. With
``+count_dir=<dir>`` (outside the sweep dir) each run of a job appends its
process id to ``<dir>/<name>.runs``. A job that returns writes ``done.marker``
into its output dir and returns ``{"name": <name>, "value": "value of <name>"}``.
"""

import os
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
    if cfg.get("gate") and name in (cfg.get("gated") or []):
        gate = Path(cfg.gate)
        deadline = time.monotonic() + 300
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(float((cfg.get("slow") or {}).get(name, cfg.get("work", 0))))
    if mode == "raise":
        raise ValueError(f"job {name} failed on purpose")
    if mode == "exit":
        os._exit(3)
    (Path(HydraConfig.get().runtime.output_dir) / "done.marker").write_text(name)
    return {"name": name, "value": f"value of {name}"}


if __name__ == "__main__":
    main()
