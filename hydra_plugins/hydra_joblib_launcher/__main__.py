"""``python -m hydra_plugins.hydra_joblib_launcher status|report SWEEP_DIR``: the ``hydra-joblib`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
