"""The launcher Hydra calls: it wires the parts together and holds no logic of its own.

    setup()  ─▶ validate(config) ─▶ warm_up (_pools)
    launch(job_overrides)
      ─▶ validate ─▶ jobs_at_once (_pools) ─▶ the context, once (_plan) ─▶ [JobSpec]
      ─▶ resume: skip what completed before (_resume)
      ─▶ open_pools (_pools) ─▶ supervise (_supervisor) ─ report (_report, _manifest)
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
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

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
        # Validated at launch, so that a bad value is reported as a Hydra error
        # the user can act on, before any job dir exists.
        self.params = params
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
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        _start_workers(self.params)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise LauncherError("JoblibLauncher.launch() was called before setup()")
        from ._options import validate  # here, not at import: Hydra imports plugins at every start

        options = validate(_plain(self.params))
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        with _interrupts_as_exceptions():
            return _launch(self, options, job_overrides, initial_job_idx)


def _start_workers(params: Dict[str, Any]) -> None:
    """Start the worker pool now, while Hydra composes the sweep's jobs, if the config is valid.

    A config that is not is left for ``launch()`` to report.
    """
    from ._options import validate
    from ._pools import warm_up

    try:
        options = validate(_plain(params))
    except Exception as error:  # noqa: BLE001 - launch() validates again and says what is wrong
        log.debug("Not starting workers before launch: %r", error)
        return
    warm_up(options)


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
    from ._plan import plan
    from ._resume import load_completed

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
    sweep_dir.mkdir(parents=True, exist_ok=True)

    # Context and markers: on the shared sweep dir when workers may be elsewhere.
    run_dir = Path(
        tempfile.mkdtemp(prefix=".hydra-joblib-", dir=sweep_dir if options.distributed else None)
    )
    try:
        context_file = _send_once(
            launcher, run_dir if options.distributed else _local_context_dir()
        )
        specs = plan(
            jobs, options=options, context_file=context_file, marker_dir=run_dir, sweep_dir=sweep_dir
        )
        done = load_completed(specs, sweep_dir) if options.resume else {}
        to_run = [spec for spec in specs if spec.num not in done]
        if options.resume:
            log.info(f"Resuming: {len(done)} jobs completed before are skipped, {len(to_run)} run")
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


def _refuse_device_override(options: "LaunchOptions", config: DictConfig) -> None:
    env_set = config.hydra.job.get("env_set") or {}
    if options.devices is not None and options.device_env in env_set:
        raise LauncherConfigError(
            f"hydra.job.env_set.{options.device_env}={env_set[options.device_env]!r} would "
            f"replace the device ids hydra.launcher.devices hands each job, so two jobs could "
            f"share a device; remove it, or remove hydra.launcher.devices"
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
        log.info(
            f"Device pool {','.join(options.devices)} ({options.devices_per_job} per job, in "
            f"{options.device_env}): at most {n_workers} jobs at once, each in a fresh process"
        )
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    for num, overrides in jobs:
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")


def _send_once(launcher: JoblibLauncher, directory: Path) -> Path:
    """Pickle what every job shares into a file in ``directory``; one clear error if it cannot be."""
    from ._plan import SharedContext, pickle_context, write_context

    assert launcher.config is not None, "checked by launch()"
    assert launcher.hydra_context is not None and launcher.task_function is not None
    context = SharedContext(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
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
    from ._supervisor import supervise

    reporter = Reporter(
        specs, sweep_dir=sweep_dir, n_workers=n_workers, progress=options.progress, skipped=skipped
    )
    returns: Dict[int, JobReturn] = {}
    if specs:
        pools = open_pools(options, n_workers=n_workers)
        returns = supervise(specs, pools=pools, report=reporter)
    reporter.summary()
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
