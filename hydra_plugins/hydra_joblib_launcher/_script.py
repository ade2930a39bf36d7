"""What the app's main script is: whether it keeps its app under ``if __name__ == "__main__":``.

A worker forked from multiprocessing's fork server first imports the
launching process's main script (as ``__mp_main__``), as with its spawn
method; loky's own workers do not. A script that calls its app at top level
would start the whole sweep again in each such worker.
"""

import ast
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional


def script_is_guarded(main: Optional[ModuleType] = None) -> bool:
    """Whether the main module (``__main__`` by default) can be imported again without running the app.

    True too when multiprocessing imports no main module (an interactive
    session, ``python -m`` of a package's ``__main__``).
    """
    if main is None:
        main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if path is None or spec_name == "__main__" or spec_name.endswith(".__main__"):
        return True
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.If) and _is_name_main(node.test) for node in tree.body)


def _is_name_main(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (
        isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
    ):
        return False
    sides = (test.left, test.comparators[0])
    return any(
        isinstance(name, ast.Name)
        and name.id == "__name__"
        and isinstance(value, ast.Constant)
        and value.value == "__main__"
        for name, value in (sides, sides[::-1])
    )
