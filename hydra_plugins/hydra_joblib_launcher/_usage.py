"""What a job uses: the memory its processes hold together, the job's peak, its CPU time.

On Linux, read from ``/proc`` (a few small reads per look):

* a lone process's memory is its resident set (``statm``);
* a job whose process started others counts each process's proportional
  share (``smaps_rollup``'s Pss): a DataLoader worker forked from the job
  shares most of its pages with it, and its resident set would count them
  twice;
* the job's own process's peak is its high-water mark (``VmHWM``), reset as
  the job starts, so that a worker reused job after job reports this job's.

Elsewhere, psutil's resident set where it is installed, else nothing.
Nothing heavy is imported here: every worker process imports this module.
"""

import os
import sys
from typing import Iterable, Optional

HAS_PROC = os.path.isdir("/proc/self")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def machine_memory() -> Optional[int]:
    """This machine's memory in bytes, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def resident(pid: int) -> Optional[int]:
    """The resident memory of ``pid`` in bytes; None when it is gone."""
    if HAS_PROC:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            return None
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def proportional(pid: int) -> Optional[int]:
    """The memory of ``pid`` with shared pages divided among their sharers, where Linux says (4.14+)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return resident(pid)


def tree_memory(pids: Iterable[int]) -> int:
    """The memory the processes ``pids`` hold together (see the module's docstring)."""
    pids = list(pids)
    if len(pids) == 1:
        return resident(pids[0]) or 0
    return sum(proportional(pid) or 0 for pid in pids)


def reset_peak() -> bool:
    """Start this process's high-water mark afresh (Linux 4.0+); whether it could be."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def own_peak() -> Optional[int]:
    """This process's peak resident memory since :func:`reset_peak` (else since it started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def cpu_seconds() -> float:
    """CPU time of this process and of its children that ended and were waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
