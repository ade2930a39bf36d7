"""loky's worker processes: their table, which of them died first, stopping their groups.

loky kills every worker of its pool once one died (``TerminatedWorkerError``
names no process). The worker that died first ran the job that broke the
pool; the others died after, killed. :class:`Deaths` waits on the workers'
sentinels (as loky does) from a thread of its own and notes each group of
processes that ended together, in order: the supervisor then knows the
culprit without running the jobs in flight again to find it. When the culprit
and the others were seen ending together (this thread ran late), it cannot
tell, and says so.
"""

import os
import re
import threading
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set

from ._outcome import describe_exit, report_stopped
from ._plan import JobSpec
from ._tree import stop_groups

# How often the watch looks for workers started since it last looked.
REFRESH_S = 0.5


class Deaths:
    """The groups of ``workers()`` (pid ─▶ multiprocessing process) that ended together, in order."""

    def __init__(self, workers: Callable[[], Dict[int, Any]]) -> None:
        self._workers = workers
        self._wake_read, self._wake_write = os.pipe()
        self._lock = threading.Lock()
        self._groups: List[FrozenSet[int]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name="hydra-joblib-deaths", daemon=True)
        self._thread.start()

    def first_among(self, pids: Set[int], *, wait_s: float = 0.5) -> Optional[int]:
        """The one of ``pids`` that ended first, alone; None if none did, or several together.

        Waits up to ``wait_s`` for this thread to see one of them end.
        """
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                groups = list(self._groups)
            for group in groups:
                found = group & pids
                if found:
                    return next(iter(found)) if len(found) == 1 else None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def close(self) -> None:
        self._stopped = True
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass
        self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _sentinels(self, dead: Set[int]) -> Dict[int, int]:
        try:
            workers = dict(self._workers())
        except RuntimeError:  # changed as it was read: next time
            return {}
        sentinels = {}
        for pid, process in workers.items():
            sentinel = getattr(process, "sentinel", None)
            if pid not in dead and isinstance(sentinel, int):
                sentinels[sentinel] = pid
        return sentinels

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        dead: Set[int] = set()
        while not self._stopped:
            sentinels = self._sentinels(dead)
            try:
                ready = wait([*sentinels, self._wake_read], timeout=REFRESH_S)
            except (OSError, ValueError):  # a sentinel closed meanwhile (its process reaped)
                continue
            ended = frozenset(sentinels[fd] for fd in ready if fd in sentinels)
            if ended:
                dead |= ended
                with self._lock:
                    self._groups.append(ended)


def worker_processes() -> Dict[int, Any]:
    """The processes of joblib's reusable loky executor by pid, if one runs (loky's own table)."""
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    return dict(getattr(executor, "_processes", None) or {})


def worker_pids() -> List[int]:
    return list(worker_processes())


def died_first(specs: Sequence[JobSpec], deaths: Deaths) -> Optional[int]:
    """The job of ``specs`` whose worker died before the others, if the watch could tell."""
    started_in = {spec.files.worker_pid(): spec.num for spec in specs}
    started_in.pop(None, None)
    first = deaths.first_among({pid for pid in started_in if pid is not None})
    return started_in.get(first) if first is not None else None


def stop_workers_of(specs: Iterable[JobSpec], workers: Sequence[int], how: str) -> None:
    """Stop the process groups of ``workers`` and of the workers ``specs`` started in, at once.

    Each job whose worker's group held more than the worker is told which of its
    processes were stopped.
    """
    started_in = {spec.num: spec.files.worker_pid() for spec in specs}
    stopped = stop_groups([*workers, *(pid for pid in started_in.values() if pid is not None)])
    for spec in specs:
        worker = started_in[spec.num]
        if worker is not None and worker in stopped:
            processes = dict(stopped[worker])
            processes.pop(worker, None)
            report_stopped(spec, how, processes)


def exit_codes(broken: BaseException) -> str:
    """The dead workers' exit codes in loky's message, in words when there is one code."""
    found = re.search(r"exit codes of the workers are (\{[^}]*\})", str(broken))
    if found is None:
        return "(exit codes unknown)"
    codes = {int(code) for code in re.findall(r"\((-?\d+)\)", found.group(1))}
    if len(codes) != 1:
        return found.group(1)
    return f"({found.group(1)}: {describe_exit(codes.pop())})"
