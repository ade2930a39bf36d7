"""Run a Hydra app as if a package were not installed.

    python without_module.py MODULE APP [ARGS...]


``sys.modules[MODULE] = None`` makes every ``import MODULE`` fail with
ModuleNotFoundError, as in an environment without it.
"""

import runpy
import sys

if __name__ == "__main__":
    module, app = sys.argv[1], sys.argv[2]
    sys.modules[module] = None  # type: ignore[assignment]
    sys.argv = [app, *sys.argv[3:]]
    runpy.run_path(app, run_name="__main__")
