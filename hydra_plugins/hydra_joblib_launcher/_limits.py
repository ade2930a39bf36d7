"""The limits a job runs under: its time limit (its memory: see _memory).

In a process's main thread a SIGALRM raises :class:`JobTimeout` inside the
task, which Hydra records as the job's failure; the worker survives. Where
signals cannot reach the job (another thread) or it does not stop within the
grace period, a watchdog notes the timeout in the job's files, stops the
processes the job started (``before_kill``: the process's death would orphan
them) and kills the process: the supervisor reads the note and reports the
timeout. The process alone is killed, never its process group: on a cluster
that group holds the worker's nanny.
"""

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ._outcome import timeout_error
from ._plan import JobSpec

# A job over its timeout first gets JobTimeout raised in its thread; if it is
# stuck in native code and ignores it this long, its process is killed.
HARD_STOP_GRACE_S = 5.0


def _nothing() -> None:
    pass


@contextmanager
def time_limit(spec: JobSpec, *, before_kill: Callable[[], None] = _nothing) -> Iterator[None]:
    """Stop the job after ``spec.timeout`` seconds, and its process if the job will not stop.

    ``before_kill`` runs in the watchdog's thread before the process is killed.
    """
    if spec.timeout is None:
        yield
        return
    limit = spec.timeout
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_alarm(signum: int, frame: Any) -> None:
        raise timeout_error(spec, killed=False)

    def hard_stop() -> None:
        spec.files.mark_timed_out(limit)
        try:
            before_kill()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

    watchdog = threading.Timer(limit + (HARD_STOP_GRACE_S if in_main_thread else 0), hard_stop)
    watchdog.daemon = True
    watchdog.start()
    previous = None
    if in_main_thread:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        if in_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()
