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
import subprocess
import threading
from typing import Any, Optional

from ._plan import JobSpec
from ._worker import run_forked

# multiprocessing reads a process's exit status from the server once, in
# Popen.poll(), which is not thread-safe: Process.start() polls every process
# started before (multiprocessing.process._cleanup), and two threads polling one
# process at once left one of them without the status (seen as exit status 255,
# CPython 3.11). Every start and poll of these processes holds this lock.
_polling = threading.Lock()


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
            args=(spec, os.getpid()),  # pickled once, with the process, for the server
            name=f"hydra-joblib-launcher-job-{spec.num}",
        )
        with _polling:
            process.start()
        return cls(process)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Its exit status (minus the signal that killed it).

        Raises ``subprocess.TimeoutExpired`` if it still runs after ``timeout`` seconds.
        """
        from multiprocessing.connection import wait

        wait([self._process.sentinel], timeout)  # readable once the server sent the status
        with _polling:
            code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0.0)
        return int(code)

    def kill(self) -> None:
        with _polling:
            if self._process.exitcode is None:
                self._process.kill()
