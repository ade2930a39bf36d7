"""Shared helpers: run a small Hydra app as a user would, in a subprocess."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import pytest

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).parent.parent


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_app(
    app: Path,
    overrides: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 180,
    env: Optional[Dict[str, str]] = None,
) -> Run:
    """``python -Werror APP OVERRIDES...`` in ``cwd``, as Hydra's own test helpers run apps.

    tests/apps is on PYTHONPATH, so apps written by a test can import ``hydra_compat``.
    """
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-Werror", str(app), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=app_env(env),
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def app_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    paths = [str(APPS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(extra or {})}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "sweep"
