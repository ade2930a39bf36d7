"""What a launch sends to the workers: one JobSpec per job, and the context every job shares, once.

    launcher                                    worker process (loky, fresh, dask, ray)
    ────────                                    ──────────────
    write_context(SharedContext) ─ once ─▶ context file ─▶ load_context()   (once per process)
    JobSpec (num, overrides, ...) ─ per job ───────────▶ run_job_spec(spec)  (see _run)

What is the same for every job (the task function, the config, the Hydra
context, Hydra's singleton state with the app's resolvers) is pickled once per
launch into a file and read once per worker process, not sent with every job.
"""

import dataclasses
import gc
import hashlib
import io
import logging
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from hydra.core.singleton import Singleton
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from ._jobfiles import JobFiles, read_trusted, write_atomically
from ._options import LaunchOptions
from ._pickling import TaskByReference, dumps, task_reference
from ._processes import ProcessSetup, users_main
from ._values import MemoryLimit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedContext:
    """Everything a job needs that is the same for every job of a launch."""

    hydra_context: HydraContext
    task_function: Union[TaskFunction, TaskByReference]  # by reference where workers can import it
    config: DictConfig
    singleton_state: Dict[Any, Any]  # Hydra's, with OmegaConf's resolvers (the app's too)

    def task(self) -> TaskFunction:
        """The task function, found in this process when it came by reference."""
        if isinstance(self.task_function, TaskByReference):
            task: TaskFunction = self.task_function.resolve()
            return task
        return self.task_function


@dataclass(frozen=True)
class JobSpec:
    """One job, as sent to a worker: plain data only."""

    num: int
    overrides: Tuple[str, ...]
    context_file: str
    marker_dir: str  # where the job's files live (see JobFiles)
    timeout: Optional[float] = None
    mem_limit: Optional[MemoryLimit] = None
    attempt: int = 1  # 2 for its first retry (hydra.launcher.retries), and so on
    device_env: Optional[str] = None  # set when the job is handed devices through this variable
    # On clusters that re-run a job whose worker died (Dask, Ray), the job counts
    # its starts and gives up, FAILED, after this many deaths.
    max_worker_deaths: Optional[int] = None
    sweep_dir: Optional[str] = None  # replaces hydra.sweep.dir (made absolute for remote workers)
    process_setup: Optional[ProcessSetup] = None  # set by the pools of this machine (loky, fresh)
    # The job's config, pickled: composed by the launching process while the workers
    # were starting (compose_ahead); else the job's process composes it.
    config: Optional[bytes] = field(default=None, compare=False, repr=False)

    @property
    def files(self) -> JobFiles:
        return JobFiles(self.marker_dir, self.num)

    @property
    def shown(self) -> str:
        """The job's overrides as a user typed them, for messages."""
        return " ".join(self.overrides) or "(no overrides)"


def plan(
    jobs: Sequence[Tuple[int, Sequence[str]]],
    *,
    options: LaunchOptions,
    context_file: Path,
    marker_dir: Path,
    sweep_dir: Path,
) -> List[JobSpec]:
    """One JobSpec per (number, overrides)."""
    return [
        JobSpec(
            num=num,
            overrides=tuple(overrides),
            context_file=str(context_file),
            marker_dir=str(marker_dir),
            timeout=options.timeout,
            mem_limit=options.mem_limit,
            device_env=options.device_env if options.gives_gpus else None,
            sweep_dir=str(sweep_dir) if options.distributed else None,
        )
        for num, overrides in jobs
    ]


def compose_ahead(
    specs: Sequence[JobSpec],
    *,
    compose: Callable[[JobSpec], DictConfig],
    waiting: Callable[[], bool],
    at_most: int,
) -> List[JobSpec]:
    """``specs``, the first ones with their config composed here while ``waiting()`` holds.

    The launching process waits for its workers before it hands out the first
    jobs (a fork server importing what every job needs, loky's workers
    starting): composing their configs meanwhile takes that work off the
    jobs' processes. A config that cannot be composed is left to the job's
    process, which fails the job with the error. Each config goes pickled:
    the job's process reads it once it has loaded the launch's context (the
    app's ``sys.path``, Hydra's state), and composes it itself if it cannot.
    """
    ahead: List[JobSpec] = []
    for spec in specs[:at_most]:
        if not waiting():
            break
        try:
            config = pickle.dumps(compose(spec), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - the job's process composes it again and fails with it
            break
        ahead.append(dataclasses.replace(spec, config=config))
    if ahead:
        shown = ", ".join(f"#{spec.num}" for spec in ahead)
        log.debug(f"Composed while the workers started: the configs of {shown}")
    return ahead + list(specs[len(ahead) :])


def task_to_send(
    task_function: TaskFunction, options: LaunchOptions
) -> Union[TaskFunction, TaskByReference]:
    """The task by reference where the workers can import it, else the task itself (by value).

    A task of the app's script (``__main__``) can be found by reference only in
    local workers that import the script as spawn does (a script that keeps its
    app under ``if __name__ == "__main__":``); cluster workers get it by value.
    """
    reference = task_reference(task_function)
    if reference is None:
        return task_function
    if reference.module == "__main__" and (options.distributed or not users_main()):
        return task_function
    return reference


def pickle_context(context: SharedContext) -> bytes:
    """Pickle ``context``: this is where a task that cannot be sent to workers fails."""
    return bytes(dumps(context))


def write_context(payload: bytes, directory: Path) -> Path:
    """Write a pickled context into ``directory``, for every worker to read; its path.

    The file starts with this process's ``sys.path``, so that a fresh worker
    can import the app's own modules before it unpickles the task. It is
    named after its content: a batch whose context is the previous batch's
    finds the file there, and the workers that loaded it do not load it again.
    """
    content = pickle.dumps(list(sys.path)) + payload
    path = directory / f"context-{hashlib.sha256(content).hexdigest()[:24]}.pkl"
    if not path.exists():
        write_atomically(path, content)
    return path


# Per process: the context this worker process loaded last, by file. A worker
# runs job after job of a launch and loads the launch's context once.
_loaded: Dict[str, SharedContext] = {}


def load_context(path: str, *, long_lived: bool) -> SharedContext:
    """Read a launch's context once per process, and install Hydra's global state from it.

    ``long_lived``: this process runs job after job (loky, Dask, Ray), so what
    it loads is kept out of the garbage collector's scans for the launch.
    """
    context = _loaded.get(path)
    if context is not None:
        return context
    if long_lived and _loaded:
        gc.unfreeze()  # what the previous context froze (and what was frozen with it)
    _loaded.clear()  # keep only the newest context
    with io.BytesIO(read_trusted(Path(path))) as f:
        sys_path = pickle.load(f)
        sys.path.extend(p for p in sys_path if p not in sys.path)
        context = pickle.load(f)
    if not isinstance(context, SharedContext):
        raise TypeError(f"{path} holds no context of this launcher")
    Singleton.set_state(_with_plugins_found_here(context.singleton_state))
    _loaded[path] = context
    if long_lived:
        # What is loaded now lives as long as the launch: keep it out of the
        # garbage collector's full scans (loky's workers run one every second).
        gc.collect()
        gc.freeze()
    return context


def _with_plugins_found_here(state: Dict[Any, Any]) -> Dict[Any, Any]:
    """Hydra's singleton ``state``, with this process's plugin registry if it has one.

    Hydra leaves its registry out of the state and, setting it, discovers every
    plugin again: ~0.09 s, in each worker's first job. A worker forked from the
    launching process has the launching process's registry, as it would find it.
    """
    from hydra.core.plugins import Plugins

    found = Singleton._instances.get(Plugins)
    if found is not None:
        state["instances"].setdefault(Plugins, found)
    return state


def config_composed_ahead(spec: JobSpec) -> Optional[DictConfig]:
    """The config :func:`compose_ahead` gave ``spec``, if any and if it can be read here."""
    if spec.config is None:
        return None
    try:
        config = pickle.loads(spec.config)
    except Exception as error:  # noqa: BLE001 - the job's process composes it
        log.debug(f"#{spec.num}: the config composed ahead cannot be read here: {error!r}")
        return None
    return config if isinstance(config, DictConfig) else None
