"""A job's own process, forked from the launcher's fork server (backend=multiprocessing).

    FreshProcessPool ─▶ ForkedProcess.start(spec) ─ multiprocessing's forkserver context
                           ─▶ a process forked from _zygote's server ─▶ _worker.run_forked(spec)
                      ◀─ wait(): its exit status, sent back by the server

A new interpreter per job imports the app's script, and with it what the script
imports at its top, before the job can start: ~1.7 s of CPU for torch. The
server forked from the launching process has all of that loaded already (see
:mod:`._zygote`), and a process forked from it for one job is as much the job's
own as a new interpreter: it runs that job alone and exits. Used where the
server runs: never with devices, whose variables (``CUDA_VISIBLE_DEVICES``)
must be in place before anything in the process could have read them.
"""

import os
import pickle
import subprocess
from typing import Any, Optional

from ._plan import JobSpec
from ._worker import run_forked


class ForkedProcess:
    """A job's process forked from the fork server, waited for as a ``subprocess.Popen``."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid

    @classmethod
    def start(cls, spec: JobSpec) -> "ForkedProcess":
        import multiprocessing

        process = multiprocessing.get_context("forkserver").Process(
            target=run_forked,
            args=(pickle.dumps(spec), os.getpid()),
            name=f"hydra-joblib-launcher-job-{spec.num}",
        )
        process.start()
        return cls(process)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Its exit status (minus the signal that killed it); ``subprocess.TimeoutExpired`` if it runs on."""
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0.0)
        return int(code)

    def kill(self) -> None:
        if self._process.exitcode is None:
            self._process.kill()
