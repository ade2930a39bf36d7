"""backend=loky: joblib's reusable loky workers, fast for many short jobs.

    setup()  ─▶ warm_up(options): the workers start while Hydra composes the sweep
    launch() ─▶ LokyPool.run(specs) ─ joblib.Parallel(backend="loky",
                                         return_as="generator_unordered") ─▶ run_job_spec
             ◀─ JobOutcome, as each job ends

The workers are forked from a server process that has imported joblib and
Hydra, where the platform has one. A worker that dies breaks the whole pool
(loky's ``TerminatedWorkerError``): the pool raises :class:`PoolBroken`
naming the jobs that were in flight, and the supervisor sorts culprit from
innocents. Each worker leads a process group of its own (see ``init_worker``):
after a worker died, or on an interrupt, the groups of the workers that ran
jobs are stopped, so that no process a job started outlives it. joblib is
imported inside functions only: Hydra imports the plugin at every app start.
"""

import atexit
import dataclasses
import functools
import logging
import os
import queue
import shutil
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from ._errors import PoolBroken
from ._loky_workers import (
    Deaths,
    died_first,
    exit_codes,
    stop_workers_of,
    worker_pids,
    worker_processes,
)
from ._options import LaunchOptions
from ._outcome import INTERRUPTED, WORKER_DIED, JobOutcome
from ._plan import JobSpec
from ._processes import hangup_blocked, init_worker, process_setup
from ._run import run_job_spec, warm_worker
from ._script import script_is_guarded
from ._tree import stop_groups
from ._values import pre_dispatch_count
from ._zygote import runs_as_script, start_fork_server

log = logging.getLogger(__name__)


class LokyPool:
    """joblib's loky workers, reused across jobs and batches."""

    def __init__(self, options: LaunchOptions, n_workers: int) -> None:
        self._setup = process_setup(options, n_workers)  # before the fork server fixes the method
        _shutdown_loky_at_exit()
        _fork_workers_from_a_server()
        self._options = options
        self._n_workers = n_workers
        self._drain: Optional[threading.Thread] = None  # joblib's results, drained
        self._in_flight: Dict[int, JobSpec] = {}  # handed to the workers, not ended

    @contextmanager
    def _parallel(self, **overrides: Any) -> Iterator[Any]:
        """joblib's Parallel on loky, as every call of this pool makes it.

        loky reuses its running workers only for a call whose settings equal
        the previous call's: the warm-up and the batches share this one place.
        ``overrides`` may change what is not such a setting (batching, verbosity up to 50).
        """
        from joblib import Parallel, parallel_config

        options = self._options
        n_jobs = self._n_workers
        pre_dispatch: Any = pre_dispatch_count(options.pre_dispatch, n_jobs)
        if n_jobs == 1:
            # joblib runs a one-worker loky call in this process, where a job that
            # crashes or overruns would take the sweep with it: two workers, one
            # job at a time.
            n_jobs, pre_dispatch = 2, 1
        settings = dict(
            n_jobs=n_jobs,
            return_as="generator_unordered",
            verbose=options.verbose,
            pre_dispatch=pre_dispatch,
            batch_size=options.batch_size,
            temp_folder=options.temp_folder,
            max_nbytes=options.max_nbytes,
            mmap_mode=options.mmap_mode,
        )
        with parallel_config(
            backend="loky",
            inner_max_num_threads=options.inner_max_num_threads,
            initializer=init_worker,
            # loky sets these only in workers of its own start method; forked from the
            # fork server, a worker sets them itself before its first job's imports.
            initargs=(dict(self._setup.environ), os.getpid()),
        ):
            yield Parallel(**{**settings, **overrides})

    def warm(self, ready: int) -> None:
        """Start the workers; load what jobs need in the first ``ready`` (see :func:`warm_up`)."""
        from joblib import delayed

        # joblib hands a verbosity above 50 on to loky, which then counts it as a setting.
        verbose = self._options.verbose if self._options.verbose > 50 else 0
        meeting = tempfile.mkdtemp(prefix="hydra-joblib-warm-up-")
        try:
            tasks = (delayed(warm_worker)(meeting, ready) for _ in range(ready))
            with self._parallel(verbose=verbose, batch_size=1, pre_dispatch="all") as parallel:
                pids = sorted(set(parallel(tasks)))
            log.debug(f"Workers ready ahead of the batch: processes {', '.join(map(str, pids))}")
        except Exception as error:  # noqa: BLE001 - the batch starts its workers itself then
            log.debug("Starting the workers ahead of the batch failed: %r", error)
        finally:
            shutil.rmtree(meeting, ignore_errors=True)

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        _wait_for_warm_up()
        in_flight = self._in_flight
        in_flight.clear()
        deaths = Deaths(worker_processes)
        try:
            yield from self._run(specs, deaths)
        finally:
            deaths.close()

    def _run(self, specs: Sequence[JobSpec], deaths: Deaths) -> Iterator[JobOutcome]:
        from joblib import delayed
        from joblib.externals.loky.process_executor import BrokenProcessPool

        in_flight = self._in_flight

        def tasks() -> Iterator[Any]:
            for spec in specs:
                in_flight[spec.num] = spec
                yield delayed(run_job_spec)(dataclasses.replace(spec, process_setup=self._setup))

        with self._parallel() as parallel:
            # joblib's results are drained in a thread of their own, so that an
            # interrupt lands here and stop() stops the workers' groups, SIGTERM
            # first, naming what each job started. Raised inside joblib's generator,
            # it made joblib SIGKILL the workers' trees at once, orphans left
            # (joblib 1.6: Parallel._get_outputs -> LokyBackend.abort_everything).
            results: "queue.Queue[Any]" = queue.Queue()
            with hangup_blocked():  # for the workers and helpers joblib starts here
                outputs = parallel(tasks())
            self._drain = threading.Thread(
                target=_drain,
                args=(outputs, results),
                name="hydra-joblib-launcher-results",
                daemon=True,
            )
            self._drain.start()
            while True:
                item = results.get()
                if isinstance(item, JobOutcome):
                    in_flight.pop(item.num, None)
                    yield item
                elif item is _DRAINED:
                    _last_workers[:] = worker_pids()
                    return
                elif isinstance(item, BrokenProcessPool):
                    # The dead worker's group holds what its job started; loky kills
                    # the other workers (and their children) itself.
                    culprit = died_first(list(in_flight.values()), deaths)
                    stop_workers_of(list(in_flight.values()), [], WORKER_DIED)
                    raise PoolBroken(
                        str(item),
                        in_flight=frozenset(in_flight),
                        exit_codes=exit_codes(item),
                        culprit=culprit,
                    ) from None
                else:
                    raise item

    def stop(self) -> None:
        """Stop the workers now (an interrupt), with what their jobs started.

        Their process groups get SIGTERM, then SIGKILL after a grace period;
        joblib's call, its workers gone, ends, and the executor is shut down.
        """
        stop_workers_of(list(self._in_flight.values()), worker_pids(), INTERRUPTED)
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.join(timeout=DRAIN_WAIT_S)
        shutdown_loky()


# How long an interrupted pool waits for joblib's call to end once its workers are gone.
DRAIN_WAIT_S = 5.0

# Put by _drain when joblib's results are all there.
_DRAINED = object()


def _drain(outputs: Iterator[JobOutcome], results: "queue.Queue[Any]") -> None:
    """Hand each of joblib's results to ``results``, then _DRAINED or what joblib raised."""
    try:
        with hangup_blocked():
            for outcome in outputs:
                results.put(outcome)
    except BaseException as error:  # noqa: BLE001 - the pool's thread raises it
        results.put(error)
    else:
        results.put(_DRAINED)


# Per process: the warm-up started by setup(), joined by the first batch.
_warming: Optional[threading.Thread] = None


def warm_up(options: LaunchOptions, task_function: Callable[..., object]) -> None:
    """Start the loky workers in the background, with the settings the batches will use.

    Called from the launcher's ``setup()``: Hydra then composes every job's
    config once in this process (the sweeper's check of the batch) before it
    calls ``launch()``, and the workers start meanwhile. The first batch waits
    for the warm-up to end (up to one worker per CPU ready) and finds them
    running.
    """
    global _warming
    if _warming is not None and _warming.is_alive():
        return  # a warm-up is under way (a finished one that no batch joined is stale)
    # Imported here, in the main thread: importing registers exit handlers, which
    # Python refuses once it is shutting down (an interrupt while Hydra composes).
    from joblib import cpu_count

    cpus = cpu_count()
    n_workers = options.workers(cpus)
    pool = LokyPool(options, n_workers)
    if _forks_from_a_server() and runs_as_script(task_function):
        start_fork_server()  # forked from this process, with the app's imports loaded

    def warm() -> None:
        if threading.main_thread().is_alive():  # else the app is exiting: start nothing
            # loky starts all the workers; wait for as many as can start at once. With
            # more workers than CPUs, the first jobs need not wait for the last ones.
            with hangup_blocked():
                pool.warm(ready=min(n_workers, cpus))

    # A daemon: an interrupt while Hydra composes the sweep never waits for it.
    _warming = threading.Thread(target=warm, name="hydra-joblib-launcher-warm-up", daemon=True)
    _warming.start()


def warming() -> bool:
    """Whether the workers :func:`warm_up` starts are not ready yet."""
    thread = _warming
    return thread is not None and thread.is_alive()


def _wait_for_warm_up() -> None:
    global _warming
    thread, _warming = _warming, None
    if thread is not None:
        thread.join()


# What a worker forked from the server has loaded before its first job: joblib's
# worker loop, Hydra's config composition, and what _fork_server prepares.
FORKSERVER_PRELOAD = (
    "joblib.externals.loky.process_executor",
    "hydra._internal.config_loader_impl",
    "hydra_plugins.hydra_joblib_launcher._fork_server",
)


@functools.lru_cache(maxsize=None)
def _fork_workers_from_a_server() -> None:
    """Have loky fork its workers from multiprocessing's fork server.

    loky's own start method runs a new interpreter for each worker, which
    imports joblib and Hydra before its first job: ~0.2 s of CPU per worker,
    taken from the cores on which the sweeper is composing the jobs. The fork
    server imports them once, and each worker forked from it starts with them
    loaded. The server is a process of its own, without threads, so forking
    from it is safe; it exits with this process. Left as it is when the
    platform has no fork server (Windows), when loky's start method was
    chosen in this process already (``loky.set_start_method``), or when the
    app's script may not be imported again (see :mod:`._script`).
    The server's preload list is multiprocessing's, for the whole process:
    this sets it.
    """
    import multiprocessing

    from joblib.externals.loky.backend.context import get_start_method, set_start_method

    if (
        "forkserver" not in multiprocessing.get_all_start_methods()
        or get_start_method() is not None
        or not script_is_guarded()
    ):
        return
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORKSERVER_PRELOAD))
    set_start_method("forkserver")


def _forks_from_a_server() -> bool:
    from joblib.externals.loky.backend.context import get_start_method

    return get_start_method() == "forkserver"


@functools.lru_cache(maxsize=None)
def _shutdown_loky_at_exit() -> None:
    # loky keeps its workers for the next Parallel call (the next batch); they
    # must not outlive the launching process.
    atexit.register(shutdown_loky)


def shutdown_loky() -> None:
    """Stop joblib's reusable loky executor and its workers, if one is running.

    Then their process groups: where a worker cannot adopt orphans (no
    subreaper outside Linux), what a job left behind stays in its worker's group.
    """
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    workers = {*worker_pids(), *_last_workers}
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    stop_groups(sorted(workers))
    _last_workers.clear()


# Per process: loky's workers as the last batch ended. At exit loky's own hook,
# which runs first, stops them and empties its table; their groups go after.
_last_workers: List[int] = []
