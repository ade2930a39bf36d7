"""A Dask LocalCluster that appends a line to ``count_file`` each time it is built.

Named by ``hydra.launcher.dask.cluster._target_=counting_cluster.CountingCluster``
(tests/apps is on PYTHONPATH), it tells how often, and in which process, the
launcher's cluster was built.
"""

import os
from typing import Any

from distributed import LocalCluster


class CountingCluster(LocalCluster):  # type: ignore[misc]
    def __init__(self, *, count_file: str, **kwargs: Any) -> None:
        with open(count_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        super().__init__(**kwargs)
