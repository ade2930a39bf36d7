"""multiprocessing's fork server, forked from the launching process instead of started anew.

    setup() ─▶ warm_up ─▶ start_fork_server(): os.fork() ─▶ forkserver.main(listener, alive)
                                                 (multiprocessing's own loop and protocol)
    loky's workers ◀─ forked from that server: the app's script, torch, Hydra already loaded
    backend=multiprocessing: each job's own process ◀─ forked from it too (see _forked)

multiprocessing starts its fork server as a new interpreter, which imports the
modules it is told to preload; every worker forked from it then imports the
app's script, and with it what the script imports at its top: ~1.7 s of CPU
for torch in each worker, on the cores the jobs need. Forked from the launching
process as the launcher is set up, the server has all of that loaded already,
the script as ``__main__`` included, and so has every worker forked from it.
Only the server's birth differs: it runs ``multiprocessing.forkserver.main``,
and multiprocessing talks to it as to the server it would have started. Before
it serves, it imports what a library the app loaded imports lazily in every
process that uses it (:data:`LAZY_IMPORTS`), and drops the launching process's
exit hooks.

Only where it is sound: the launching process runs the app's own script (its
task is in ``__main__``; not an app run inside another program, such as a test
runner, whose state the workers would inherit), on Linux (fork without exec is
unsafe on macOS), Python 3.10 to 3.13 (3.14's server also checks an auth key),
from the main thread of a process with no other Python thread. Native pools already started
(OpenBLAS's at NumPy's import) register fork handlers of their own, as they do
for a plain ``fork`` of multiprocessing, which PyTorch's DataLoader uses.
"""

import atexit
import gc
import importlib
import inspect
import logging
import os
import select
import signal
import socket
import sys
import threading
import warnings
from typing import Callable, Dict, Optional

from ._processes import hangup_blocked
from ._sweeplock import release_all

log = logging.getLogger(__name__)


def runs_as_script(task_function: Callable[..., object]) -> bool:
    """Whether the task is the launching script's (``python app.py``, ``python -m pkg.app``)."""
    return getattr(inspect.unwrap(task_function), "__module__", None) == "__main__"


def fork_server_from_here() -> bool:
    """Whether this process may be forked into multiprocessing's fork server (see the docstring)."""
    from multiprocessing import forkserver

    return (
        sys.platform.startswith("linux")
        and (3, 10) <= sys.version_info[:2] <= (3, 13)
        and list(inspect.signature(forkserver.main).parameters) == SERVER_MAIN_PARAMETERS
        and not hasattr(forkserver._forkserver, "_forkserver_authkey")  # 3.14's protocol
        and threading.current_thread() is threading.main_thread()
        and threading.active_count() == 1
    )


def fork_server_started_here() -> bool:
    """Whether multiprocessing's fork server in this process is one forked from it here."""
    from multiprocessing import forkserver

    pid = forkserver._forkserver._forkserver_pid
    return pid is not None and _forked_from.get(pid) == os.getpid()


# The fork servers forked here: the server's pid, and the pid of the process it was
# forked from (a process forked from the server inherits this table, not the server).
_forked_from: Dict[int, int] = {}

# The read end of a pipe the server forked here writes to (or closes) once it serves.
_preparing: Optional[int] = None


def fork_server_preparing() -> bool:
    """Whether the fork server forked here still loads what it loads before it serves.

    Meanwhile a process started from it waits: the launching process may do
    the first jobs' work in the meantime (see ``_plan.compose_ahead``).
    """
    global _preparing
    fd = _preparing
    if fd is None:
        return False
    readable, _, _ = select.select([fd], [], [], 0)
    if not readable:
        return True
    os.close(fd)  # served, or died: nothing to wait for either way
    _preparing = None
    return False


# multiprocessing.forkserver.main's parameters, Python 3.10 to 3.13.
SERVER_MAIN_PARAMETERS = ["listener_fd", "alive_r", "preload", "main_path", "sys_path"]


def start_fork_server() -> bool:
    """Fork multiprocessing's fork server from this process, unless one runs; True if started here."""
    global _preparing
    from multiprocessing import connection, forkserver, resource_tracker, util

    server = forkserver._forkserver
    if server._forkserver_pid is not None or not fork_server_from_here():
        return False
    # Not under server._lock: the child would keep it held, and a job that starts a
    # fork server of its own would wait for it forever. No other thread runs here.
    with hangup_blocked():  # the server and the workers ignore the terminal's SIGHUP
        resource_tracker.ensure_running()  # its descriptor reaches each worker through the server
        address = connection.arbitrary_address("AF_UNIX")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(address)
            if not util.is_abstract_socket_namespace(address):
                os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()  # every client holds the write end: EOF when all are gone
            ready_r, ready_w = os.pipe()  # the server writes once it serves
            with warnings.catch_warnings():
                # Python 3.12+ warns of native threads (see the module's docstring)
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _serve(listener.fileno(), alive_r, alive_w, ready_w)  # never returns
            os.close(alive_r)
            os.close(ready_w)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    _forked_from[pid] = os.getpid()
    if _preparing is not None:  # a server forked before, that this process no longer uses
        os.close(_preparing)
    _preparing = ready_r
    log.debug("Fork server forked from the launching process: process %d", pid)
    return True


# Modules a library loaded by the app imports lazily in every job that uses it, at a cost
# worth paying once in the server instead of in every process forked from it. torch
# imports torch._dynamo (with sympy: ~1 s of CPU) at the first call of any function it
# wraps in torch._disable_dynamo, every optimizer's constructor among them (torch 2.13).
LAZY_IMPORTS = {"torch": ("torch._dynamo",)}


def _import_what_every_job_would() -> None:
    for library, modules in LAZY_IMPORTS.items():
        if library not in sys.modules:
            continue
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as error:  # noqa: BLE001 - each job then imports it, or fails, itself
                log.debug("Importing %s in the fork server failed: %r", name, error)


def _serve(listener_fd: int, alive_r: int, alive_w: int, ready_w: int) -> None:
    """The fork server's life, in the forked child: multiprocessing's loop, then exit."""
    code = 0
    try:
        os.close(alive_w)
        release_all()  # its copies: the sweep dir's lock is the launching process's alone
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the app's own handler, if it has one
        from multiprocessing import forkserver

        from . import _run  # noqa: F401 - this launcher's side of a job, as _fork_server loads it

        atexit._clear()  # the launching process's exit hooks: a job's process runs its own alone
        _import_what_every_job_would()
        # A worker's collections neither scan nor touch the pages it shares with the
        # server. Frozen as it is, not collected first: a collection takes 0.06-0.13 s
        # with torch loaded, before the first job can start.
        gc.freeze()
        os.write(ready_w, b"1")
        os.close(ready_w)
        forkserver.main(listener_fd, alive_r, [], main_path=None, sys_path=None)
    except SystemExit as end:  # the launching process and every worker are gone
        code = end.code if isinstance(end.code, int) else 0
    except BaseException:  # noqa: BLE001 - never unwind the launching process's stack here
        code = 1
    finally:
        os._exit(code)
