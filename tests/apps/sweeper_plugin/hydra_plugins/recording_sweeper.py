"""Hydra's basic sweeper, writing down what the launcher handed back to it.

Tests put ``tests/apps/sweeper_plugin`` on PYTHONPATH and choose
``hydra/sweeper=recording``: after the sweep, ``<sweep dir>/returns.json``
lists every job's overrides, status and return value, in the order the
launcher returned them, with the ``name`` in each job's config, its job number
in its Hydra config, and whether a deep copy of the result equals it; that
is what any sweeper (Optuna, Nevergrad, ...) would see.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class RecordingSweeperConf:
    _target_: str = "hydra_plugins.recording_sweeper.RecordingSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="recording", node=RecordingSweeperConf)


class RecordingSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
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
