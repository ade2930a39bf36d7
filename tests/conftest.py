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
    """``python -Werror APP OVERRIDES...`` in ``cwd``, as Hydra's own test helpers run apps."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-Werror", str(app), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "sweep"
