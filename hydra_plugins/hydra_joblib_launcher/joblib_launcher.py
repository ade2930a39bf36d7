"""The launcher Hydra calls: it wires the parts together and holds no logic of its own.

    setup()  ─▶ hold the sweep dir (_sweeplock) ─▶ validate(config) ─▶ warm_up (_pools)
    launch(job_overrides)
      ─▶ validate ─▶ jobs_at_once (_pools) ─▶ hold the sweep dir ─▶ the context, once (_plan)
      ─▶ [JobSpec] ─▶ resume: skip what completed before with the same config (_resume)
      ─▶ the first jobs' configs, composed while the workers start (_plan.compose_ahead)
      ─▶ open_pools (_pools) ─▶ supervise (_supervisor) ─ report (_report, _manifest, _status)
      ◀─ [JobReturn] in job order
"""

import atexit
import functools
import logging
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ._errors import LauncherConfigError, LauncherError

if TYPE_CHECKING:
    from ._options import LaunchOptions
    from ._plan import JobSpec

log = logging.getLogger(__name__)


class JoblibLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        # Validated in setup(): Hydra sets the launcher up before it makes the sweep
        # dir, so a bad value is one clear error and nothing is written.
        self.params = params
        self.options: Optional["LaunchOptions"] = None
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        from joblib import cpu_count  # here, not at import: Hydra imports plugins at every start

        from ._accelerators import with_found_devices
        from ._options import validate
        from ._pools import warm_up
        from ._usage import machine_memory

        # devices=auto: this machine's GPUs are looked for once, here, not at every app start.
        self.options = with_found_devices(
            validate(_plain(self.params), cpu_count=cpu_count(), memory=machine_memory())
        )
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        _hold_sweep_dir(config)
        # The workers start now, while Hydra composes the sweep's jobs.
        warm_up(self.options, task_function)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        if self.options is None or self.config is None:
            raise LauncherError("JoblibLauncher.launch() was called before setup()")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        with _interrupts_as_exceptions():
            return _launch(self, self.options, job_overrides, initial_job_idx)


def _hold_sweep_dir(config: DictConfig) -> None:
    """Hold the sweep dir from the start of a multirun, before the sweeper writes into it.

    What this process held for an earlier multirun is let go. A dir that cannot
    be named yet is held by ``launch()``.
    """
    from ._sweeplock import hold, release_all

    release_all()
    try:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    except Exception as error:  # noqa: BLE001 - launch() holds the dir it writes to
        log.debug("Not holding the sweep dir before launch: %r", error)
        return
    hold(sweep_dir)


@functools.lru_cache(maxsize=None)
def _local_context_dir() -> Path:
    """Where this process keeps the contexts it sends to workers on this machine, until it exits.

    A context file outlives its batch: the next batch, with the same bytes, reuses it.
    """
    path = Path(tempfile.mkdtemp(prefix="hydra-joblib-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _plain(params: Dict[str, Any]) -> Dict[str, Any]:
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in params.items()
    }


def _launch(
    launcher: JoblibLauncher,
    options: "LaunchOptions",
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> List[JobReturn]:
    from ._manifest import close_cut_line
    from ._plan import compose_ahead, plan
    from ._pools import warming
    from ._sweeplock import hold

    assert launcher.config is not None, "checked by launch()"
    config = launcher.config
    _refuse_device_override(options, config)
    n_workers, where = _workers(options)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if options.distributed:
        # Workers on other machines write into the same tree (a shared filesystem).
        sweep_dir = sweep_dir.absolute()
    jobs = list(zip(range(initial_job_idx, initial_job_idx + len(job_overrides)), job_overrides))
    _log_launch(options, n_workers=n_workers, where=where, sweep_dir=sweep_dir, jobs=jobs)
    hold(sweep_dir)  # one clear error if another launch writes there
    close_cut_line(sweep_dir)

    # Context and markers: on the shared sweep dir when workers may be elsewhere.
    run_dir = Path(
        tempfile.mkdtemp(prefix=".hydra-joblib-", dir=sweep_dir if options.distributed else None)
    )
    try:
        context_file = _send_once(
            launcher, options, run_dir if options.distributed else _local_context_dir()
        )
        specs = plan(
            jobs,
            options=options,
            context_file=context_file,
            marker_dir=run_dir,
            sweep_dir=sweep_dir,
        )
        done = _completed_before(launcher, specs, sweep_dir) if options.resume else {}
        to_run = compose_ahead(
            [spec for spec in specs if spec.num not in done],
            compose=_composer(launcher),
            waiting=lambda: warming(options),
            at_most=2 * n_workers,  # the jobs handed out first (joblib's default pre_dispatch)
        )
        returns = {**done, **_run(to_run, options, n_workers, sweep_dir, len(done))}
        missing = [f"#{spec.num}" for spec in specs if spec.num not in returns]
        if missing:  # a bug of ours, never the user's: say so rather than lose the batch silently
            raise LauncherError(
                f"jobs {', '.join(missing)} ended without an outcome; please report this "
                "to hydra-joblib-launcher with the launch log"
            )
        return [returns[spec.num] for spec in specs]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)


def _completed_before(
    launcher: JoblibLauncher, specs: Sequence["JobSpec"], sweep_dir: Path
) -> Dict[int, JobReturn]:
    """Resume: the JobReturns of the jobs not to run again, by number."""
    from ._resume import load_completed

    # Composed as the job's process composes it (see _run), for the config digest.
    done = load_completed(specs, sweep_dir, compose=_composer(launcher))
    log.info(
        f"Resuming: {len(done)} jobs completed before are skipped, {len(specs) - len(done)} run"
    )
    return done


def _composer(launcher: JoblibLauncher) -> Callable[["JobSpec"], DictConfig]:
    """A job's config, composed as Hydra's launchers compose it (its number set in its process)."""
    assert launcher.hydra_context is not None and launcher.config is not None
    loader, config = launcher.hydra_context.config_loader, launcher.config
    return lambda spec: loader.load_sweep_config(config, list(spec.overrides))


def _refuse_device_override(options: "LaunchOptions", config: DictConfig) -> None:
    env_set = config.hydra.job.get("env_set") or {}
    if options.gives_gpus and options.device_env in env_set:
        key = "devices" if options.gpus_per_job is None else "gpus_per_job"
        raise LauncherConfigError(
            f"hydra.job.env_set.{options.device_env}={env_set[options.device_env]!r} would "
            f"replace the device ids hydra.launcher.{key} gives each job, so two jobs could "
            f"share a device; remove it, or remove hydra.launcher.{key}"
        )


def _workers(options: "LaunchOptions") -> Tuple[int, str]:
    """How many jobs run at once, and where (for the launch line)."""
    from joblib import cpu_count

    from ._pools import jobs_at_once

    # Before any dir is made: a cluster that cannot be used is one clear error.
    return jobs_at_once(options, cpu_count())


def _log_launch(
    options: "LaunchOptions",
    *,
    n_workers: int,
    where: str,
    sweep_dir: Path,
    jobs: Sequence[Tuple[int, Sequence[str]]],
) -> None:
    """The lines users of the released plugin know, and where the jobs go."""
    log.info(
        f"Joblib.Parallel({options.joblib_settings(n_workers)}) is launching "
        f"{len(jobs)} jobs{where}"
    )
    if options.devices is not None:
        found = f", found by {options.devices_found_by}" if options.devices_found_by else ""
        how = {
            "dask": "each on a worker process holding its ids",
            "ray": "Ray hands each job its ids",
        }.get(options.backend, "each in a fresh process")
        log.info(
            f"Device pool {','.join(options.devices)} ({options.devices_per_job} per job, in "
            f"{options.device_env}{found}): at most {n_workers} jobs at once, {how}"
        )
    if options.gpus_per_job is not None:
        log.info(
            f"GPUs: each job asks the cluster for {options.gpus_per_job:g} "
            f"(its ids in {options.device_env}, recorded in jobs.jsonl)"
        )
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for num, overrides in jobs:
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")


def _send_once(launcher: JoblibLauncher, options: "LaunchOptions", directory: Path) -> Path:
    """Pickle what every job shares into a file in ``directory``; one clear error if it cannot be."""
    from ._plan import SharedContext, pickle_context, task_to_send, write_context

    assert launcher.config is not None, "checked by launch()"
    assert launcher.hydra_context is not None and launcher.task_function is not None
    context = SharedContext(
        hydra_context=launcher.hydra_context,
        task_function=task_to_send(launcher.task_function, options),
        config=launcher.config,
        singleton_state=Singleton.get_state(),
    )
    try:
        payload = pickle_context(context)
    except Exception as error:  # noqa: BLE001 - whatever pickling raises means the same
        raise LauncherError(
            f"The task cannot be sent to worker processes: pickling it failed with "
            f"{type(error).__name__}: {error}. Define the task function, and the objects it "
            "uses, at module level (not inside another function), and keep open files, "
            "locks and connections out of the config and of global state the task refers to."
        ) from None
    return write_context(payload, directory)


def _run(
    specs: Sequence["JobSpec"],
    options: "LaunchOptions",
    n_workers: int,
    sweep_dir: Path,
    skipped: int,
) -> Dict[int, JobReturn]:
    """Run ``specs`` under supervision, reporting as they end; their JobReturns by number."""
    from ._pools import open_pools
    from ._report import Reporter
    from ._status import LiveStatus
    from ._supervisor import Retries, supervise

    # The pools first: an error opening them leaves no reporter thread ticking.
    pools = open_pools(options, n_workers=n_workers) if specs else None
    status = LiveStatus(specs, sweep_dir=sweep_dir, n_workers=n_workers, skipped=skipped)
    reporter = Reporter(
        specs,
        sweep_dir=sweep_dir,
        n_workers=n_workers,
        progress=options.progress,
        skipped=skipped,
        status=status,
    )
    returns: Dict[int, JobReturn] = {}
    try:
        if pools is not None:
            retries = Retries(options.retries, options.retry_on)
            returns = supervise(specs, pools=pools, report=reporter, retries=retries)
    except (KeyboardInterrupt, SystemExit):
        status.end("interrupted")
        raise
    except BaseException as error:
        status.end("failed", error=error)
        raise
    reporter.summary()
    status.end("finished")
    return returns


@contextmanager
def _interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while jobs run, so workers are stopped before the launcher goes.

    So does SIGHUP (129), the terminal closing, unless it is ignored (``nohup``):
    workers lead process groups of their own, which the terminal no longer reaches.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    handled = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is signal.SIG_DFL:
        handled.append(hangup)
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
