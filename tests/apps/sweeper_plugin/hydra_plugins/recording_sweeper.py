"""Hydra's basic sweeper, writing down what the launcher handed back to it.

Tests put ``tests/apps/sweeper_plugin`` on PYTHONPATH and choose
``hydra/sweeper=recording``: after the sweep, ``<sweep dir>/returns.json``
lists every job's overrides, status and return value, in the order the
launcher returned them, with the ``name`` in each job's config, its job number
in its Hydra config, and whether a deep copy of the result equals it; that
is what any sweeper (Optuna, Nevergrad, ...) would see. Before each batch it
registers the resolver ``recording_batch`` anew: ``${recording_batch:}`` is the
number of the batch (1, 2, ...), a change of the launching process's state
between batches that the jobs must see.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
import omegaconf
from omegaconf import OmegaConf


@dataclass
class RecordingSweeperConf:
    _target_: str = "hydra_plugins.recording_sweeper.RecordingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="recording", node=RecordingSweeperConf)


def _register_resolver(name: str, resolver: Any) -> None:
    # OmegaConf 2.4 (Hydra 1.4) deprecates register_new_resolver for register_resolver,
    # the name 2.3 keeps for its deprecated legacy API.
    if tuple(int(part) for part in omegaconf.__version__.split(".")[:2]) >= (2, 4):
        OmegaConf.register_resolver(name, resolver, replace=True)
    else:
        OmegaConf.register_new_resolver(name, resolver, replace=True)


class RecordingSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        assert self.launcher is not None
        launch = self.launcher.launch
        launched = 0

        def launch_numbered(job_overrides: Any, initial_job_idx: int) -> Any:
            # ``${recording_batch:}`` is 1 in the jobs of the first batch, 2 in the next...
            nonlocal launched
            launched += 1
            _register_resolver("recording_batch", lambda batch=launched: batch)
            return launch(job_overrides, initial_job_idx)

        self.launcher.launch = launch_numbered  # type: ignore[method-assign]
        batches = super().sweep(arguments)
        assert self.config is not None
        seen = [
            {
                "overrides": list(ret.overrides or []),
                "status": ret.status.name,
                "return_value": ret.return_value,
                # the job's own configs, and the result whole in a copy
                "cfg_name": ret.cfg.get("name") if ret.cfg is not None else None,
                "job_num": ret.hydra_cfg.hydra.job.num if ret.hydra_cfg is not None else None,
                "copy_equal": copy.deepcopy(ret) == ret,
            }
            for batch in batches
            for ret in batch
        ]
        path = Path(str(self.config.hydra.sweep.dir)) / "returns.json"
        path.write_text(json.dumps(seen))
        return batches
