"""A job's process tree: the processes a job started, found and stopped.

    worker process (run_job_spec)                 launcher (the local pools)
    ─────────────────────────────                 ──────────────────────────
    become_subreaper(): orphans of the job's       stop_groups([worker pid]): a worker that died
      processes are adopted, so stay findable        or is interrupted, with every process of its
    JobTree() as the job starts: what runs           process group (the orphans of a crashed job)
    JobTree.stop() as it ends: what the job
      started and left running

Stopping is SIGTERM (and SIGCONT, for a stopped process), then SIGKILL for what
is still running after a grace period. Processes are found through the
operating system's own links, never by name: on Linux the kernel's list of
each process's children (``/proc/<pid>/task/<tid>/children``: a few small
reads, where psutil's ``children()`` reads every process's stat file) and
``/proc/<pid>/stat``; elsewhere psutil where it is installed, else ``ps``.
Nothing heavy is imported here: every process of a sweep imports this module.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set

# How long a process may take to exit after SIGTERM before it gets SIGKILL.
TERM_GRACE_S = 3.0
# How long to wait for a process to die after SIGKILL (it cannot refuse: only
# an uninterruptible sleep in the kernel delays it).
KILL_WAIT_S = 1.0
POLL_S = 0.02

# prctl(2): make this process the reaper of its descendants' orphans (Linux 3.4+).
PR_SET_CHILD_SUBREAPER = 36

HAS_PROC = os.path.isdir("/proc/self/task")  # Linux's view of processes


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    pgid: int
    running: bool  # alive and not a zombie
    name: str


# -- this process ------------------------------------------------------------------------

# Per process (a fork does not inherit the setting): whether it is a subreaper.
_subreaper: Dict[int, bool] = {}


def become_subreaper() -> bool:
    """Adopt the orphans of this process's descendants (Linux), so that they stay its descendants.

    A job's process that starts a daemon, or whose parent exits first, would
    otherwise be handed to init, out of the job's tree.
    """
    pid = os.getpid()
    if pid not in _subreaper:
        done = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL(None, use_errno=True)
                done = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):  # no prctl in this libc
                done = False
        _subreaper[pid] = done
    return _subreaper[pid]


def lead_own_group() -> None:
    """Make this process the leader of a process group of its own.

    What it starts joins the group, and stays in it after this process dies:
    the launcher stops the group then. A session leader leads its group already.
    """
    try:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
    except OSError:
        pass


# -- finding processes -------------------------------------------------------------------


def _stat(pid: int) -> Optional[Process]:
    """What Linux says of ``pid`` (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The name is between the first "(" and the last ")", and may hold either.
    fields = text[text.rindex(")") + 2 :].split()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return Process(pid, int(fields[1]), int(fields[2]), fields[0] not in ("Z", "X"), name)


def _has_children_lists() -> bool:
    """Whether Linux lists each process's children (CONFIG_PROC_CHILDREN, in most kernels)."""
    if not _children_lists:
        pid = os.getpid()
        _children_lists.append(os.path.exists(f"/proc/{pid}/task/{pid}/children"))
    return _children_lists[0]


_children_lists: List[bool] = []


def _children_of(pid: int) -> List[int]:
    """The children of ``pid`` in the kernel's lists: one per thread that started or adopted some."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: List[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children.extend(int(child) for child in f.read().split())
        except OSError:  # the thread ended meanwhile
            continue
    return children


def process_table() -> Dict[int, Process]:
    """Every process of this machine that this platform lets us see."""
    if HAS_PROC:
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                found = _stat(int(entry))
                if found is not None:
                    table[found.pid] = found
        return table
    try:
        import psutil
    except ImportError:
        return _ps_table()
    table = {}
    for proc in psutil.process_iter(["pid", "ppid", "status", "name"]):
        info = proc.info
        try:
            pgid = os.getpgid(info["pid"])
        except OSError:
            continue
        running = info["status"] not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        table[info["pid"]] = Process(info["pid"], info["ppid"], pgid, running, info["name"])
    return table


def _ps_table() -> Dict[int, Process]:
    """The process table as POSIX ``ps`` shows it (a Unix without /proc or psutil)."""
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid=", "-o", "stat=", "-o", "comm="],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].isdigit():
            pid, ppid, pgid = int(parts[0]), int(parts[1]), int(parts[2])
            table[pid] = Process(pid, ppid, pgid, not parts[3].startswith("Z"), parts[4])
    return table


def descendants(pid: int) -> List[Process]:
    """The processes below ``pid`` in the tree, zombies included (they are yet to be reaped)."""
    found: List[Process] = []
    if _has_children_lists():
        queue = _children_of(pid)
        seen: Set[int] = set()
        while queue:
            child = queue.pop()
            if child in seen:
                continue
            seen.add(child)
            process = _stat(child)
            if process is not None:
                found.append(process)
                queue.extend(_children_of(child))
        return found
    table = process_table()
    below: Dict[int, List[Process]] = {}
    for process in table.values():
        below.setdefault(process.ppid, []).append(process)
    queue_of = list(below.get(pid, []))
    while queue_of:
        process = queue_of.pop()
        found.append(process)
        queue_of.extend(below.get(process.pid, []))
    return found


def group_members(pgid: int) -> List[Process]:
    """The running processes of process group ``pgid``."""
    try:
        os.killpg(pgid, 0)  # no group: no need to read the process table
    except ProcessLookupError:
        return []
    except PermissionError:  # members we may not signal: see what they are
        pass
    return [p for p in process_table().values() if p.pgid == pgid and p.running]


# -- stopping them -----------------------------------------------------------------------


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:  # gone already, or not ours to signal
            pass


def _reap(candidates: Iterable[Process]) -> None:
    """Collect the exit status of this process's dead children among ``candidates``.

    multiprocessing first collects those it started itself, so that its objects
    know they ended; the others (subprocesses, adopted orphans) are waited for here.
    """
    me = os.getpid()
    zombies = [p.pid for p in candidates if p.ppid == me and not p.running]
    if not zombies:
        return
    if "multiprocessing.process" in sys.modules:
        import multiprocessing

        multiprocessing.active_children()
    for pid in zombies:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            pass


def _helpers() -> Set[int]:
    """This process's multiprocessing helpers: started for a job, but kept for the next.

    multiprocessing starts its resource tracker and fork server once per
    process, on first use, and reuses them; killing them would break the next
    job of a long-lived worker. They exit with this process. (Private
    attributes of CPython 3.10-3.13 and loky; read defensively.)
    """
    found: Set[int] = set()
    for module, holder, attribute in (
        ("multiprocessing.resource_tracker", "_resource_tracker", "_pid"),
        ("multiprocessing.forkserver", "_forkserver", "_forkserver_pid"),
        ("joblib.externals.loky.backend.resource_tracker", "_resource_tracker", "_pid"),
    ):
        pid = getattr(getattr(sys.modules.get(module), holder, None), attribute, None)
        if isinstance(pid, int):
            found.add(pid)
    return found


class JobTree:
    """The processes a job starts in this process, as its descendants that were not there before.

    Made as the job starts; :meth:`stop` stops those still running as it
    ends. This process's multiprocessing helpers are left alone, not what runs below them.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._before: FrozenSet[int] = frozenset(p.pid for p in descendants(self._pid))
        self._lock = threading.Lock()

    def _new(self) -> List[Process]:
        exempt = self._before | _helpers()
        return [p for p in descendants(self._pid) if p.pid not in exempt]

    def processes(self) -> List[int]:  # those the job started that still run
        return [p.pid for p in self._new() if p.running]

    def stop(self, grace_s: float = TERM_GRACE_S) -> Dict[int, str]:
        """Stop what the job left running; the pids and names of the processes stopped."""
        with self._lock:
            stopped: Dict[int, str] = {}
            deadline = time.monotonic() + grace_s
            signum = signal.SIGTERM
            while True:
                new = self._new()
                _reap(new)
                alive = [p for p in new if p.running]
                if not alive:
                    return stopped
                fresh = [p for p in alive if p.pid not in stopped]
                stopped.update((p.pid, p.name) for p in fresh)
                if signum == signal.SIGTERM and time.monotonic() >= deadline:
                    signum, deadline = signal.SIGKILL, time.monotonic() + KILL_WAIT_S
                    fresh = alive
                elif signum == signal.SIGKILL and time.monotonic() >= deadline:
                    return stopped  # beyond our reach (a process in the kernel's grip)
                _signal((p.pid for p in fresh), signum)
                if signum == signal.SIGTERM:
                    _signal((p.pid for p in fresh), signal.SIGCONT)
                time.sleep(POLL_S)


def stop_groups(pgids: Sequence[int], grace_s: float = TERM_GRACE_S) -> Dict[int, Dict[int, str]]:
    """Stop every process of the process groups ``pgids``, all at once.

    Returns, for each group that had running processes, their pids and names.
    The launcher's own group is never one of them.
    """
    own = os.getpgrp()
    members = {pgid: group_members(pgid) for pgid in set(pgids) if pgid != own and pgid > 0}
    stopped = {pgid: {p.pid: p.name for p in found} for pgid, found in members.items() if found}
    if not stopped:
        return {}
    for signum in (signal.SIGTERM, signal.SIGCONT):
        for pgid in stopped:
            try:
                os.killpg(pgid, signum)
            except OSError:
                pass
    left = _wait_for_groups(list(stopped), grace_s)
    for pgid in left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    _wait_for_groups(left, KILL_WAIT_S)
    return stopped


def _wait_for_groups(pgids: List[int], limit: float) -> List[int]:
    """Those of ``pgids`` with running processes still after ``limit`` seconds at most."""
    deadline = time.monotonic() + limit
    while pgids:
        pgids = [pgid for pgid in pgids if group_members(pgid)]
        if not pgids or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S * 2)
    return pgids
