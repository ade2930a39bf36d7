"""Whether the app's main script may be imported again without starting the app.

The launcher forks loky's workers from multiprocessing's fork server only for a
script that may (see _loky); a wrong True would have each worker start the
whole sweep again, a wrong False only costs start-up time. So when in doubt,
False.
"""

import importlib.machinery
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

from hydra_plugins.hydra_joblib_launcher._script import script_is_guarded

HEADER = """\
import hydra

@hydra.main(version_base=None)
def main(cfg):
    pass

"""


def main_module(
    path: Optional[Path], spec: Optional[importlib.machinery.ModuleSpec] = None
) -> ModuleType:
    """A stand-in for ``sys.modules["__main__"]`` run from the script at ``path``."""
    module = ModuleType("__main__")
    if path is not None:
        module.__file__ = str(path)
    module.__spec__ = spec
    return module


def script(tmp_path: Path, tail: str) -> ModuleType:
    path = tmp_path / "app.py"
    path.write_text(HEADER + textwrap.dedent(tail))
    return main_module(path)


@pytest.mark.parametrize(
    "tail",
    [
        'if __name__ == "__main__":\n    main()\n',
        'if "__main__" == __name__:\n    main()\n',
        "if __name__ == '__main__':\n    main()\nelse:\n    pass\n",
    ],
    ids=["guarded", "reversed", "with-else"],
)
def test_a_guarded_script_is_guarded(tmp_path: Path, tail: str) -> None:
    assert script_is_guarded(script(tmp_path, tail)) is True


@pytest.mark.parametrize(
    "tail",
    [
        "main()\n",
        'if True:\n    if __name__ == "__main__":\n        main()\n',
        'def run():\n    if __name__ == "__main__":\n        main()\nrun()\n',
        'if __name__ != "__main__":\n    pass\nmain()\n',
        'if __name__ == "__mp_main__":\n    pass\nmain()\n',
        'if name == "__main__":\n    main()\n',
        'if __name__ is "__main__":\n    main()\n',
    ],
    ids=[
        "top-level-call",
        "nested-in-if",
        "nested-in-def",
        "not-equal",
        "other-name",
        "other-variable",
        "is",
    ],
)
def test_a_script_without_a_top_level_guard_is_not_guarded(tmp_path: Path, tail: str) -> None:
    assert script_is_guarded(script(tmp_path, tail)) is False


def test_a_guard_with_a_condition_joined_by_and_is_not_recognised(tmp_path: Path) -> None:
    # _is_name_main accepts a single ``==`` comparison only: ``... and x`` is an
    # ast.BoolOp, so the script counts as unguarded. That is the safe side (the
    # launcher keeps loky's own start method), not a promise that it is unsafe.
    module = script(tmp_path, 'x = True\nif __name__ == "__main__" and x:\n    main()\n')
    assert script_is_guarded(module) is False


def test_a_script_with_a_syntax_error_is_not_guarded(tmp_path: Path) -> None:
    module = script(tmp_path, 'if __name__ == "__main__":\n    main(\n')
    assert script_is_guarded(module) is False


def test_a_missing_script_is_not_guarded(tmp_path: Path) -> None:
    assert script_is_guarded(main_module(tmp_path / "gone.py")) is False


def test_a_script_with_a_null_byte_is_not_guarded(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    path.write_bytes(b'if __name__ == "__main__":\n    pass\n\x00\n')
    assert script_is_guarded(main_module(path)) is False


def test_an_interactive_session_has_nothing_to_import_again() -> None:
    assert script_is_guarded(main_module(None)) is True


@pytest.mark.parametrize("name", ["pkg.__main__", "__main__"])
def test_a_package_run_with_python_m_is_not_imported_again(tmp_path: Path, name: str) -> None:
    path = tmp_path / "__main__.py"
    path.write_text(HEADER + "main()\n")  # would start the app, were it imported again
    spec = importlib.machinery.ModuleSpec(name, loader=None, origin=str(path))
    assert script_is_guarded(main_module(path, spec)) is True


def test_a_module_run_with_python_m_is_read_as_a_script(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    path.write_text(HEADER + "main()\n")
    spec = importlib.machinery.ModuleSpec("app", loader=None, origin=str(path))
    assert script_is_guarded(main_module(path, spec)) is False
