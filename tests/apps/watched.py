"""A sweep app for the status and report tests: job ``+x=<n>`` returns ``n * n``, a number.

``+fail=[...]``: the values of x whose job raises ValueError. With
``+gate=<file>``, the jobs whose x is in ``+gated=[...]`` wait for as long as
``<file>`` exists (at most 300 s), so that a test decides when they may end.
"""

import time
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    x = int(cfg.x)
    if cfg.get("gate") and x in (cfg.get("gated") or []):
        gate = Path(cfg.gate)
        deadline = time.monotonic() + 300
        while gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if x in (cfg.get("fail") or []):
        raise ValueError(f"job x={x} failed on purpose")
    return float(x * x)


if __name__ == "__main__":
    main()
