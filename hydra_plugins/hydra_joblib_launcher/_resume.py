"""Resume: the jobs of a sweep dir that completed before, read back with their return values."""

import logging
import pickle
from pathlib import Path
from typing import Dict, Sequence

from hydra.core.utils import JobReturn

from ._manifest import read_completed
from ._plan import JobSpec

log = logging.getLogger(__name__)


def load_completed(specs: Sequence[JobSpec], sweep_dir: Path) -> Dict[int, JobReturn]:
    """JobReturns of the ``specs`` that the manifest records as COMPLETED, by job number.

    A job is the same job when its overrides are the same. One whose stored
    result cannot be read back is run again, with a warning saying why.
    """
    completed = read_completed(sweep_dir)
    found: Dict[int, JobReturn] = {}
    for spec in specs:
        record = completed.get(spec.overrides)
        if record is None:
            continue
        path = record.get("return_file")
        try:
            with open(path or "", "rb") as f:
                found[spec.num] = pickle.load(f)
        except Exception as error:  # noqa: BLE001 - any unreadable result means: run again
            log.warning(
                f"#{spec.num} : {' '.join(spec.overrides)} completed before, but its stored "
                f"result cannot be read back ({type(error).__name__}: {error}); running it again"
            )
    return found
