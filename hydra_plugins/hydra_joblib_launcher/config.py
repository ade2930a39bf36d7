"""The launcher's typed configuration, registered as ``hydra/launcher=joblib``.

Hydra imports this module at every application start (plugin discovery), so it
imports nothing heavier than Hydra itself.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class DaskConf:
    # address of a running Dask scheduler (tcp://host:8786, tls://...); null: start a LocalCluster on loopback
    address: Optional[str] = None
    # seconds to wait for the scheduler to answer before giving up
    connect_timeout: float = 30.0
    # serve the embedded LocalCluster's dashboard on this address (":8787"); null: no dashboard
    dashboard_address: Optional[str] = None
    # a cluster to build for the multirun, by class: {_target_: dask_jobqueue.SLURMCluster, cores: 1, processes: 1, memory: 4GB}; null: address or embedded
    cluster: Any = None
    # the built cluster adapts between adapt_minimum and n_jobs workers instead of keeping n_jobs
    adapt: bool = False
    # workers an adapting cluster keeps at least (0: it may give back every batch job while idle)
    adapt_minimum: int = 1
    # seconds to wait for the built cluster's first worker (batch jobs may pend); null: no limit
    worker_timeout: Optional[float] = None


@dataclass
class RayConf:
    # address of a running Ray cluster ("auto", "ray://host:10001"); null: start a local Ray sized by n_jobs
    address: Optional[str] = None
    # further keyword arguments for ray.init (for example num_gpus, runtime_env)
    init: Dict[str, Any] = field(default_factory=dict)


@dataclass
class JobLibLauncherConf:
    _target_: str = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    # Hydra 1.3 would build dask.cluster's _target_ when it creates the launcher; the launcher builds it
    _recursive_: bool = False

    # maximum number of jobs running at once; -1: one per CPU core, -2: all cores but one
    n_jobs: int = -1
    # where jobs run: loky (reused worker processes) or multiprocessing (a fresh process per job)
    backend: Optional[str] = "loky"
    # joblib's soft hint for threads or processes; jobs always run in processes here
    prefer: str = "processes"
    # joblib's hard constraint; only null is possible (sharedmem would need threads)
    require: Optional[str] = None
    # joblib's progress messages: 0 silent, higher prints more
    verbose: int = 0
    # seconds one job may run before it is stopped and reported FAILED; null: no limit
    timeout: Optional[float] = None
    # jobs handed to the workers ahead of time: an integer, "all" or an expression such as "2*n_jobs"
    pre_dispatch: str = "2*n_jobs"
    # jobs sent to a worker in one go: a positive integer or "auto"
    batch_size: str = "auto"
    # folder for joblib's memory-mapped arrays; null: joblib's default
    temp_folder: Optional[str] = None
    # arrays larger than this are memory-mapped (bytes, or "1M", "10K"); null: never
    max_nbytes: Optional[str] = None
    # how workers open memory-mapped arrays: r, r+, w+, c or null
    mmap_mode: Optional[str] = "r"
    # threads each worker's native pools (OpenMP, BLAS) may use; null: the library default
    inner_max_num_threads: Optional[int] = None
    # memory one job's processes may hold together ("8GB", "500MB", bytes, or "0.25": a share of the machine's); null: no limit
    mem_limit: Optional[str] = None
    # times a job runs again after its process died, or after a limit named in retry_on stopped it
    retries: int = 0
    # what may make a job run again: crash, timeout, memory (a job that raised never runs again)
    retry_on: List[str] = field(default_factory=lambda: ["crash"])
    # upstream's key for backend=multiprocessing, where every job has a fresh process: 1 or null
    maxtasksperchild: Optional[int] = None

    # device ids handed out to running jobs, such as [0,1,2,3] or MIG ids; auto: this machine's GPUs
    devices: Any = None
    # device ids each job holds while it runs
    devices_per_job: int = 1
    # environment variable that carries a job's device ids (comma-separated)
    device_env: str = "CUDA_VISIBLE_DEVICES"
    # GPUs each job asks of a cluster's scheduler (backend=dask or ray with an address); null: none
    gpus_per_job: Optional[float] = None

    # live progress: auto (bar on a terminal, log lines otherwise), bar, log or none
    progress: str = "auto"
    # re-run only the jobs of this sweep dir that did not complete (reads jobs.jsonl)
    resume: bool = False

    # settings of backend=dask
    dask: DaskConf = field(default_factory=DaskConf)
    # settings of backend=ray
    ray: RayConf = field(default_factory=RayConf)


ConfigStore.instance().store(
    group="hydra/launcher",
    name="joblib",
    node=JobLibLauncherConf,
    provider="joblib_launcher",
)
