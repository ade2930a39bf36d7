"""The process a job starts from: as a plain ``python app.py`` run would give it.

A worker of the launcher is not that process. multiprocessing makes the start
method a process was started with its default (``BaseProcess._bootstrap``), so
loky's workers have 'forkserver' (the launcher's own) where the user has
'fork'; native libraries imported before the first job (the app's script,
imported by the workers forked from the fork server) read their thread-limit
variables before the pool set them; and a previous job may have changed both.
The pools of this machine (loky, fresh processes, device pools) put a
:class:`ProcessSetup` in each JobSpec; :func:`as_launched` applies it as the
job starts:

    multiprocessing's default start method ─▶ the launching process's (the user's)
    the app's script                        ─▶ imported as __mp_main__, as spawn does
    thread-limit variables                  ─▶ os.environ, for processes the job starts
    native pools already loaded             ─▶ threadpoolctl (OpenMP, BLAS), torch.set_num_threads
    the script's classes sent by value      ─▶ bound under their names in __main__

The cluster backends' jobs get the two thread-limit lines alone (:func:`limits_only`):
their workers keep the start method and main module their cluster gave them.
"""

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

from ._options import LaunchOptions
from ._script import script_is_guarded
from ._tree import become_subreaper, lead_own_group

log = logging.getLogger(__name__)

# The variable joblib sets for each kind of native pool (threadpoolctl's internal_api).
POOL_VARIABLES = {
    "openmp": "OMP_NUM_THREADS",
    "openblas": "OPENBLAS_NUM_THREADS",
    "mkl": "MKL_NUM_THREADS",
    "blis": "BLIS_NUM_THREADS",
}


@dataclass(frozen=True)
class ProcessSetup:
    """What a pool of this machine sets its worker process back to as each job starts."""

    start_method: Optional[str]  # the launching process's; None: the platform's default, not fixed
    environ: Tuple[Tuple[str, str], ...]  # joblib's thread-limit variables for this pool
    # How multiprocessing's spawn would import the app's main module in a new process
    # (init_main_from_path or init_main_from_name); empty: not at all (an unguarded script).
    main: Tuple[Tuple[str, str], ...] = ()
    # False: the thread limits alone (a cluster's worker keeps its start method and main).
    plain_run: bool = True


@functools.lru_cache(maxsize=None)
def users_start_method() -> Optional[str]:
    """multiprocessing's start method in the launching process, as the app left it (read once).

    Read before the launcher starts a process: starting one fixes it
    (multiprocessing's preparation data asks for it). None, the app chose none:
    a job finds it unfixed, as on a plain run, free to choose one itself.
    """
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=True)


@functools.lru_cache(maxsize=None)
def users_main() -> Tuple[Tuple[str, str], ...]:
    """How multiprocessing's spawn would import the app's main module in a new process.

    Empty when the script calls its app at top level (see :mod:`._script`): importing
    it again would start the sweep again.
    """
    if not script_is_guarded():
        return ()
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return (("init_main_from_name", name),)
    path = getattr(main, "__file__", None)
    return (("init_main_from_path", os.path.abspath(path)),) if path is not None else ()


def thread_limits(options: LaunchOptions, n_jobs: int) -> Dict[str, str]:
    """The variables joblib gives a loky worker: native thread pools sized to its share of the CPUs.

    ``inner_max_num_threads``, else the shell's value, else CPUs // jobs at once:
    joblib's own rule computes them.
    """
    from joblib.parallel import LokyBackend

    backend = LokyBackend(inner_max_num_threads=options.inner_max_num_threads)
    environ: Dict[str, str] = backend._prepare_worker_env(n_jobs=n_jobs)
    return environ


def process_setup(options: LaunchOptions, n_jobs: int) -> ProcessSetup:
    """The setup of a local pool running at most ``n_jobs`` jobs at once."""
    return ProcessSetup(
        start_method=users_start_method(),
        environ=tuple(sorted(thread_limits(options, n_jobs).items())),
        main=users_main(),
    )


def limits_only(environ: Dict[str, str]) -> ProcessSetup:
    """The setup of a cluster's workers: thread limits, nothing else of a plain run."""
    return ProcessSetup(start_method=None, environ=tuple(sorted(environ.items())), plain_run=False)


def as_launched(setup: ProcessSetup) -> None:
    """Give the job the process a plain run of the app would: see the module's docstring."""
    if setup.plain_run:
        _as_plain_run(setup)
    environ = dict(setup.environ)
    os.environ.update(environ)  # for the processes the job starts (a previous job may have changed them)
    limit_thread_pools(environ)


def _as_plain_run(setup: ProcessSetup) -> None:
    import multiprocessing

    # force: this process's own start fixed the method. The launcher's workers do
    # not depend on it: loky starts them through a context object of its own.
    multiprocessing.set_start_method(setup.start_method, force=True)
    if setup.main:
        from multiprocessing import spawn

        # The app's script as this process's __main__ (as __mp_main__), as in a child
        # of a plain run started anew: the task can come by reference, and a child of
        # the job imports the script, not the launcher's worker module, to find what
        # it is sent by name. Nothing happens where it is already (the fork server's).
        spawn.prepare(dict(setup.main))


def limit_thread_pools(environ: Dict[str, str]) -> None:
    """Limit the native thread pools already loaded here as ``environ`` limits those loaded later.

    A library reads its variable once, when it is loaded: torch or NumPy imported
    at the top of the app's script would keep a thread per core. Set as each job
    starts and not held: the job may raise its own limit, and the next job of
    the process starts at the pool's limit again.
    """
    limits = {
        api: int(environ[name])
        for api, name in POOL_VARIABLES.items()
        if environ.get(name, "").isdigit() and int(environ[name]) > 0
    }
    try:
        from threadpoolctl import ThreadpoolController  # here: not at Hydra's plugin scan

        controller = ThreadpoolController()
        for api, limit in limits.items():
            controller.select(internal_api=api).limit(limits=limit)
        torch = sys.modules.get("torch")
        if torch is not None and "openmp" in limits:
            # torch's own pool (and its MKL), whichever OpenMP runtime it carries
            torch.set_num_threads(limits["openmp"])
    except Exception as error:  # noqa: BLE001 - a limit not applied never fails the job
        log.warning("Could not limit the native thread pools of this job: %r", error)


def bind_main(task_function: Any) -> None:
    """Bind the classes and functions of the app's script under their names in ``__main__``.

    A task that came by value (cloudpickle) has its own copies of what the
    script defines. Pickle sends such an object to a process the job starts (a
    DataLoader's workers, a ``multiprocessing.Pool``) by name, ``__main__.Dataset``,
    and refuses when ``__main__`` here holds another object under that name (the
    script imported again) or none (the launcher's worker module). A child forked
    from the job then finds the job's own; one started anew imports the script.
    """
    main = sys.modules.get("__main__")
    shared = getattr(task_function, "__globals__", None)
    if main is None or not isinstance(shared, dict) or shared is vars(main):
        return
    for name, value in list(shared.items()):
        if (
            isinstance(value, (type, types.FunctionType))
            and getattr(value, "__module__", None) == "__main__"
            and getattr(value, "__qualname__", None) == name
        ):
            setattr(main, name, value)


def init_worker(environ: Dict[str, str], launcher_pid: int) -> None:
    """Set a worker's environment variables as it starts (before any job runs).

    The worker leads a process group of its own: the processes its jobs start
    join it, and the launcher stops the group when the worker dies or is
    interrupted, orphans included. (It then no longer gets the terminal's
    Ctrl-C itself: the launcher stops it.) It ends with the launching process.
    """
    os.environ.update(environ)
    if hasattr(signal, "SIGHUP"):  # blocked where the pool started it (see hangup_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    lead_own_group()
    become_subreaper()
    follow_launcher(launcher_pid)


@contextlib.contextmanager
def hangup_blocked() -> Iterator[None]:
    """The processes started in this thread meanwhile do not die of the terminal's SIGHUP.

    A closed terminal sends SIGHUP to the launcher's whole process group, where
    multiprocessing's fork server and the resource trackers run too: they ignore
    Ctrl-C (SIGINT) but die of SIGHUP, and with the fork server gone loky takes
    every worker for dead and kills their trees before the launcher can stop and
    name what each job left running. A blocked signal is inherited by the
    processes (and threads) started meanwhile; the launching process, whose other
    threads do not block it, still gets it. Workers unblock it as they start.
    """
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {hangup})
    try:
        yield
    finally:
        if hangup not in previous:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {hangup})


# How often a worker looks whether the process that launched it is still there.
LAUNCHER_POLL_S = 0.5


def follow_launcher(launcher_pid: int) -> None:
    """End this worker, with its job's processes, when the launching process is gone.

    A launcher killed outright (SIGKILL, the out-of-memory killer) cannot stop its
    workers: loky's are children of the fork server, and a job would run on,
    orphaned, and could then be run again by a resume. A worker that leads its
    own group takes the group (its job's processes) with it.
    """

    def watch() -> None:
        while _alive(launcher_pid):
            time.sleep(LAUNCHER_POLL_S)
        if os.getpgid(0) == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="hydra-joblib-launcher-follow", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed launcher whose parent has not reaped it yet is a zombie: gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
