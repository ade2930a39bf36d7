"""The memory a job holds: its peak, and its limit (``hydra.launcher.mem_limit``).

    memory_watch(spec) around the job        one thread per process, kept for its next jobs
    ───────────────────────────────         ──────────────────────────────────────────────
    watch(job) ─────────────────────────▶   every 0.2 s (1 s without a limit): the memory of
                                             the job's process and of those it started
                                             (see _usage); the peak
                                             past the limit: a note in the job's files, the
                                             processes it started stopped, MemoryLimitExceeded
                                             raised in its main thread; its own process
                                             killed if still over a second later
    unwatch(job) ◀──────────────────────     (waits for a look under way)
    Usage: peak, CPU time

The supervisor reads the note when the job's process was killed; a job that
ended by itself reports the error in its outcome (see _run).
"""

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

from ._outcome import memory_error
from ._plan import JobSpec
from ._usage import cpu_seconds, machine_memory, own_peak, reset_peak, tree_memory

# How often the watch looks at a job's processes: often when it enforces a
# limit (memory grows fast), seldom when it only keeps the peak.
WATCH_LIMIT_S = 0.2
WATCH_PEAK_S = 1.0
# A job over its limit whose own process still holds too much this long after
# it was told to stop is killed.
MEMORY_GRACE_S = 1.0
# The signal that raises MemoryLimitExceeded in a job's main thread.
MEMORY_SIGNAL = getattr(signal, "SIGUSR2", None)


@dataclass
class Usage:
    """What a job used, complete once its watch ends."""

    max_rss_bytes: Optional[int] = None
    cpu_s: Optional[float] = None


@dataclass
class _Watched:
    """A job under watch, and what the watch found so far."""

    spec: JobSpec
    limit: Optional[int]
    processes: Callable[[], List[int]]
    stop_processes: Callable[[], None]
    signal_main: bool  # the job runs in the main thread: the signal reaches it
    pid: int = field(default_factory=os.getpid)
    peak: int = 0
    kill_at: Optional[float] = None  # over its limit: when its process is killed if still over
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def interval(self) -> float:
        return WATCH_LIMIT_S if self.limit is not None else WATCH_PEAK_S

    def look(self) -> None:
        if self.kill_at is not None:
            assert self.limit is not None, "set only past a limit"
            if time.monotonic() >= self.kill_at and tree_memory([self.pid]) > self.limit:
                os.kill(self.pid, signal.SIGKILL)  # the note tells the supervisor why
            return
        held = tree_memory([self.pid, *self.processes()])
        self.peak = max(self.peak, held)
        if self.limit is not None and held > self.limit:
            self.spec.files.mark_over_memory(self.limit, held)
            self.stop_processes()
            if self.signal_main and MEMORY_SIGNAL is not None:
                signal.pthread_kill(threading.main_thread().ident or 0, MEMORY_SIGNAL)
            self.kill_at = time.monotonic() + MEMORY_GRACE_S


class _Watch:
    """The thread that looks at the job this process runs (one at a time: Hydra jobs own theirs)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._job: Optional[_Watched] = None
        thread = threading.Thread(target=self._run, name="hydra-joblib-memory", daemon=True)
        thread.start()

    def watch(self, job: _Watched) -> None:
        with self._changed:
            self._job = job
            self._changed.notify()

    def unwatch(self, job: _Watched) -> None:
        with self._changed:
            self._job = None
            self._changed.notify()
        with job.lock:  # a look under way ends first
            pass

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._job is None:
                    self._changed.wait()
                job = self._job
                self._changed.wait(job.interval)
                if self._job is not job:
                    continue
                job.lock.acquire()
            try:
                job.look()
            finally:
                job.lock.release()


# Per process (a forked child has no thread of its parent's): its watch.
_watches: Dict[int, _Watch] = {}


def _watch() -> _Watch:
    pid = os.getpid()
    if pid not in _watches:
        _watches.clear()
        _watches[pid] = _Watch()
    return _watches[pid]


@contextmanager
def memory_watch(
    spec: JobSpec,
    *,
    processes: Callable[[], List[int]],
    stop_processes: Callable[[], None],
) -> Iterator[Usage]:
    """Watch the memory of the job's process and of ``processes()`` (those it started) while it runs.

    Yields the job's :class:`Usage`, complete once the block ends. Past the
    job's limit, ``stop_processes`` runs in the watch's thread.
    """
    usage = Usage()
    total = machine_memory() or 0
    limit = spec.mem_limit.on(total) if spec.mem_limit is not None else None
    if limit is not None and limit <= 0:
        limit = None  # a share of a memory this platform does not tell
    in_main_thread = threading.current_thread() is threading.main_thread()
    job = _Watched(spec, limit, processes, stop_processes, in_main_thread and limit is not None)
    armed = [True]  # the job runs: the signal may raise in it

    def on_signal(signum: int, frame: Any) -> None:
        if not armed[0]:
            return
        armed[0] = False
        noted = spec.files.over_memory() or {}
        raise memory_error(spec, limit=noted.get("limit", limit or 0), peak=noted.get("peak", 0))

    previous = None
    if job.signal_main and MEMORY_SIGNAL is not None:
        previous = signal.signal(MEMORY_SIGNAL, on_signal)
    own_peak_reset = reset_peak()
    cpu_before = cpu_seconds()
    watch = _watch()
    watch.watch(job)
    try:
        yield usage
    finally:
        armed[0] = False
        watch.unwatch(job)
        if previous is not None:
            signal.signal(MEMORY_SIGNAL, previous)
        own = own_peak() if own_peak_reset else None
        usage.max_rss_bytes = max(job.peak, own or 0, tree_memory([job.pid])) or None
        usage.cpu_s = round(cpu_seconds() - cpu_before, 3)
