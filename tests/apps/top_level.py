"""A sweep app that notes where its top level and its exit hooks run.

Each note is an empty file in ``$NOTES_DIR``, named for what ran and the pid it
ran in: ``top-<pid>`` as the script's top level runs, ``script-exit-<pid>``
from the exit hook the top level registers, ``job-<x>-<pid>`` as a job's task
runs and ``job-exit-<x>-<pid>`` from the exit hook the task registers.
"""

import atexit
import os
from pathlib import Path

import hydra
from hydra_compat import MAIN_KWARGS
from omegaconf import DictConfig

NOTES = Path(os.environ["NOTES_DIR"])


def note(name: str) -> None:
    (NOTES / f"{name}-{os.getpid()}").touch()


note("top")
atexit.register(note, "script-exit")


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    note(f"job-{cfg.x}")
    atexit.register(note, f"job-exit-{cfg.x}")


if __name__ == "__main__":
    main()
