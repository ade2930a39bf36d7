"""Imported by the fork server from which loky's workers are forked (see ``_backends``).

What every job's process would otherwise do for itself, done once before the
workers are forked: import Hydra, this launcher's side of a job, and Hydra's
plugins (installing the launching process's Hydra state in a worker runs
Hydra's plugin discovery, which then only executes their modules again). Then
the server's objects are frozen out of the garbage collector: a worker's
collections neither scan them nor touch their pages, which the workers share
with the server. Never raises: the server would die with it, and no worker
could start.
"""

import gc
import logging

try:
    from hydra.core.plugins import Plugins

    from . import _run  # noqa: F401 - Hydra's job running, and this launcher's side of it

    Plugins.instance()
except Exception as error:  # noqa: BLE001 - each worker then does it for itself
    logging.getLogger(__name__).debug("Preparing the fork server failed: %r", error)
gc.collect()
gc.freeze()
