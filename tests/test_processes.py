"""Jobs that start processes and threads work as under the basic launcher (#20).

Each sweep runs an app of tests/apps as a user would, with two jobs at once on
every local pool: loky's reused workers, a fresh process per job
(``backend=multiprocessing``) and a device pool (``hydra.launcher.devices``
with fake ids, a fresh process per job on the default backend). Every job
writes what it saw into ``seen.json`` in its output dir.

* tests/apps/torch_loader.py imports torch at its top, defines a Dataset class
  holding a lambda and iterates a ``DataLoader(num_workers=2)`` over it;
* tests/apps/mp_pool.py imports NumPy at its top and maps a function of the
  script over a ``multiprocessing.Pool(2)``.

What a job must see: the multiprocessing start method of a plain ``python app.py``
run (whatever the launcher starts its own workers with), and native thread pools
(OpenMP, BLAS, torch's) limited to its share of the CPUs (joblib's rule, or
``inner_max_num_threads``) even when loaded before the job started; a job may
still raise its own limit.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import joblib
import pytest
from omegaconf import OmegaConf

from conftest import APPS, Run, run_app

pytestmark = pytest.mark.slow

POOLS = {
    "loky": ["hydra.launcher.backend=loky"],
    "multiprocessing": ["hydra.launcher.backend=multiprocessing"],
    "devices": ["hydra.launcher.devices=[a,b]"],
}
# The clusters a sweep starts itself: the embedded Dask LocalCluster, a local Ray.
CLUSTERS = {
    "dask": ["hydra.launcher.backend=dask"],
    "ray": ["hydra.launcher.backend=ray"],
}
N_JOBS = 2
JOBS = 4  # two per worker: a reused loky worker runs a job after another one
SQUARES_100 = sum(i * i for i in range(100))
SQUARES_10 = sum(i * i for i in range(10))
NO_TORCH = "torch is not installed (pip install torch==2.13.0, CPU): the PyTorch cases cannot run"

Sweep = Tuple[Run, List[Dict[str, Any]]]


def sweep(
    app: str,
    pool: str,
    sweep_dir: Path,
    *extra: str,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 150,
) -> Sweep:
    """``JOBS`` jobs of ``app`` on ``pool``, ``N_JOBS`` at once; the run and each job's seen.json."""
    run = run_app(
        APPS / app,
        [
            "-m",
            "hydra/launcher=joblib",
            *{**POOLS, **CLUSTERS}[pool],
            f"hydra.launcher.n_jobs={N_JOBS}",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={sweep_dir}",
            f"+x=range({JOBS})",
            *extra,
        ],
        cwd=sweep_dir.parent,
        timeout=timeout,
        env=env,
    )
    seen = [json.loads((sweep_dir / str(num) / "seen.json").read_text())
            for num in range(JOBS) if (sweep_dir / str(num) / "seen.json").exists()]  # fmt: skip
    return run, seen


def assert_every_job_completed(result: Sweep) -> None:
    run, seen = result
    assert run.returncode == 0, run.output
    assert len(seen) == JOBS, run.output


def assert_every_job_started(result: Sweep) -> None:
    """Every job's task started and wrote what it found (whatever it did next)."""
    run, seen = result
    assert len(seen) == JOBS, run.output


def plain_run(app: str, tmp: Path, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """What the app's one job sees on a plain ``python app.py`` run (no multirun)."""
    out = tmp / "plain"
    run = run_app(APPS / app, [f"hydra.run.dir={out}"], cwd=tmp, env=env)
    assert run.returncode == 0, run.output
    seen: Dict[str, Any] = json.loads((out / "seen.json").read_text())
    return seen


def share(limit: Optional[int] = None) -> Dict[str, int]:
    """The thread limit each job gets, per variable: joblib's rule for N_JOBS workers."""
    default = max(joblib.cpu_count() // N_JOBS, 1)
    return {
        name: int(limit if limit is not None else os.environ.get(name, default))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }


# -- PyTorch: a DataLoader with workers, torch loaded at the script's top ---------------------


@pytest.fixture(scope="module", params=list(POOLS))
def torch_sweep(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """torch_loader.py, every job raising its own limit to 2 after noting what it found."""
    pytest.importorskip("torch", reason=NO_TORCH)
    sweep_dir = tmp_path_factory.mktemp(f"torch-{request.param}") / "sweep"
    return sweep("torch_loader.py", request.param, sweep_dir, "+raise_to=2", COMPOSED_AHEAD_SHOWN)


@pytest.fixture(scope="module", params=list(POOLS))
def torch_sweep_2_threads(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    pytest.importorskip("torch", reason=NO_TORCH)
    sweep_dir = tmp_path_factory.mktemp(f"torch-2-threads-{request.param}") / "sweep"
    return sweep(
        "torch_loader.py", request.param, sweep_dir, "hydra.launcher.inner_max_num_threads=2"
    )


@pytest.fixture(scope="module")
def torch_plain(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    pytest.importorskip("torch", reason=NO_TORCH)
    return plain_run("torch_loader.py", tmp_path_factory.mktemp("torch-plain"))


def test_a_dataset_of_the_script_feeds_a_dataloader_with_workers_in_every_job(
    torch_sweep: Sweep,
) -> None:
    assert_every_job_completed(torch_sweep)
    assert [job["sum"] for job in torch_sweep[1]] == [SQUARES_100] * JOBS


def test_a_torch_job_sees_the_start_method_of_a_plain_run(
    torch_sweep: Sweep, torch_plain: Dict[str, Any]
) -> None:
    assert_every_job_started(torch_sweep)
    assert [job["start_method"] for job in torch_sweep[1]] == [torch_plain["start_method"]] * JOBS


def test_torch_loaded_at_the_scripts_top_is_limited_to_the_jobs_share(torch_sweep: Sweep) -> None:
    assert_every_job_started(torch_sweep)
    limit = share()
    for job in torch_sweep[1]:
        found = job["at_start"]
        assert found["torch"] == limit["OMP_NUM_THREADS"], job
        assert found["threadpoolctl"]["openmp"] == limit["OMP_NUM_THREADS"], job
        assert found["threadpoolctl"]["openblas"] == limit["OPENBLAS_NUM_THREADS"], job
        assert found["OMP_NUM_THREADS"] == str(limit["OMP_NUM_THREADS"]), job


def test_a_job_can_raise_its_own_limit(torch_sweep: Sweep) -> None:
    assert_every_job_started(torch_sweep)
    # ...and the next job of the same worker process starts at the limit again (above)
    assert [job["after_raise"]["torch"] for job in torch_sweep[1]] == [2] * JOBS


def test_inner_max_num_threads_2_gives_each_job_2_threads(torch_sweep_2_threads: Sweep) -> None:
    assert_every_job_started(torch_sweep_2_threads)
    for job in torch_sweep_2_threads[1]:
        found = job["at_start"]
        assert found["torch"] == 2, job
        assert found["threadpoolctl"] == {"openmp": 2, "openblas": 2}, job
        assert found["OMP_NUM_THREADS"] == "2", job


# -- multiprocessing.Pool on a function of the script; NumPy loaded at the script's top -------


@pytest.fixture(scope="module", params=list(POOLS))
def pool_sweep(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    sweep_dir = tmp_path_factory.mktemp(f"pool-{request.param}") / "sweep"
    return sweep("mp_pool.py", request.param, sweep_dir)


@pytest.fixture(scope="module")
def pool_plain(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    return plain_run("mp_pool.py", tmp_path_factory.mktemp("pool-plain"))


def test_a_pool_maps_a_function_of_the_script_in_every_job(pool_sweep: Sweep) -> None:
    assert_every_job_completed(pool_sweep)
    assert [job["sum"] for job in pool_sweep[1]] == [SQUARES_10] * JOBS


def test_a_job_sees_the_start_method_of_a_plain_run(
    pool_sweep: Sweep, pool_plain: Dict[str, Any]
) -> None:
    assert_every_job_started(pool_sweep)
    assert [job["start_method"] for job in pool_sweep[1]] == [pool_plain["start_method"]] * JOBS


def test_numpys_blas_loaded_at_the_scripts_top_is_limited_to_the_jobs_share(
    pool_sweep: Sweep,
) -> None:
    assert_every_job_started(pool_sweep)
    limit = share()["OPENBLAS_NUM_THREADS"]
    for job in pool_sweep[1]:
        assert job["threadpoolctl"].get("openblas") == limit, job


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("pool", list(POOLS))
def test_a_start_method_the_script_sets_holds_in_every_job(
    pool: str, method: str, tmp_path: Path
) -> None:
    """forkserver: a job's pool starts a fork server of its own, as in a plain run."""
    env = {"START_METHOD": method}
    assert plain_run("mp_pool.py", tmp_path, env=env)["start_method"] == method
    result = sweep("mp_pool.py", pool, tmp_path / "sweep", env=env, timeout=60)
    assert_every_job_started(result)
    assert [job["start_method"] for job in result[1]] == [method] * JOBS
    assert_every_job_completed(result)  # the Pool's spawned processes found the function
    assert [job["sum"] for job in result[1]] == [SQUARES_10] * JOBS


# -- backend=multiprocessing: each job's process forked from the launcher's fork server -------

ZYGOTE = pytest.mark.skipif(
    not (os.uname().sysname == "Linux" and (3, 10) <= sys.version_info[:2] <= (3, 13)),
    reason="the fork server is forked from the launching process on Linux, Python 3.10 to 3.13",
)


@ZYGOTE
def test_on_multiprocessing_the_script_runs_once_and_each_job_its_own_exit_hooks(
    tmp_path: Path,
) -> None:
    """A process per job, as before, but not a new interpreter that imports the script again.

    The script's top level (torch's import, in a training script) runs once, in the
    launching process, and its exit hook there alone, as under the basic launcher; the
    exit hooks a job registers run as its process ends.
    """
    notes = tmp_path / "notes"
    notes.mkdir()
    result = sweep("top_level.py", "multiprocessing", tmp_path / "sweep",
                   env={"NOTES_DIR": str(notes)})  # fmt: skip
    assert result[0].returncode == 0, result[0].output
    ran = sorted(path.name for path in notes.iterdir())
    [top] = [name for name in ran if name.startswith("top-")]
    launcher = top.split("-")[1]
    assert [name for name in ran if name.startswith("script-exit-")] == [f"script-exit-{launcher}"]
    jobs = {name.split("-")[1]: name.split("-")[2] for name in ran if name.startswith("job-") and "exit" not in name}  # fmt: skip
    assert sorted(jobs) == [str(x) for x in range(JOBS)], ran
    assert len(set(jobs.values())) == JOBS and launcher not in jobs.values(), ran  # a process each
    for x, pid in jobs.items():
        assert f"job-exit-{x}-{pid}" in ran, ran


@ZYGOTE
def test_a_torch_job_finds_what_torch_imports_lazily_loaded_already(
    torch_sweep: Sweep, request: pytest.FixtureRequest
) -> None:
    """torch._dynamo (~1 s of CPU at the first optimizer) is imported once, in the fork server.

    A device pool starts a new interpreter per job instead (its devices set before
    anything loads): there each job imports it itself.
    """
    assert_every_job_started(torch_sweep)
    forked = request.node.callspec.params["torch_sweep"] != "devices"
    assert [job["dynamo_loaded"] for job in torch_sweep[1]] == [forked] * JOBS


# The launcher's debug log says which jobs' configs it composed while the workers started.
COMPOSED_AHEAD_SHOWN = "hydra.verbose=hydra_plugins.hydra_joblib_launcher._plan"


@pytest.fixture(scope="module")
def torch_basic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch_sweep's jobs under the basic launcher: its sweep dir."""
    pytest.importorskip("torch", reason=NO_TORCH)
    sweep_dir = tmp_path_factory.mktemp("torch-basic") / "sweep"
    run = run_app(
        APPS / "torch_loader.py",
        ["-m", f"hydra.sweep.dir={sweep_dir}", f"+x=range({JOBS})", "+raise_to=2"],
        cwd=sweep_dir.parent,
        timeout=150,
    )
    assert run.returncode == 0, run.output
    return sweep_dir


def saved_configs(sweep_dir: Path) -> List[Dict[str, Any]]:
    """What each job saved of its config, less what names the launcher and the dirs."""
    saved = []
    for num in range(JOBS):
        hydra_dir = sweep_dir / str(num) / ".hydra"
        hydra = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
        choices = OmegaConf.to_container(hydra.runtime.choices)
        assert isinstance(choices, dict)
        choices.pop("hydra/launcher")
        job = OmegaConf.to_container(hydra.job)
        assert isinstance(job, dict)
        job.pop("id")  # the basic launcher's is the number, the joblib launcher's name_number
        saved.append(
            {
                "config.yaml": (hydra_dir / "config.yaml").read_text(),
                "overrides.yaml": (hydra_dir / "overrides.yaml").read_text(),
                "hydra.job": job,
                "hydra.overrides.task": list(hydra.overrides.task),
                "hydra.runtime.choices": choices,
            }
        )
    return saved


@ZYGOTE
def test_the_configs_composed_while_the_workers_start_are_the_basic_launchers(
    torch_sweep: Sweep, torch_basic: Path, request: pytest.FixtureRequest
) -> None:
    """While the fork server imports torch._dynamo, the launcher composes the first jobs' configs.

    Each job then saves the config a job of the basic launcher saves (a device
    pool's jobs compose their own, in their new interpreters).
    """
    assert_every_job_completed(torch_sweep)
    run, _ = torch_sweep
    pool = request.node.callspec.params["torch_sweep"]
    shown = "Composed while the workers started: the configs of #0, #1"
    assert (shown in run.output) == (pool != "devices"), run.output
    sweep_dir = Path(str(run.output).split("sweep output dir : ")[1].split()[0])
    assert saved_configs(sweep_dir) == saved_configs(torch_basic)
    # The joblib launcher names a job as the released plugin does.
    saved = [OmegaConf.load(sweep_dir / str(num) / ".hydra" / "hydra.yaml") for num in range(JOBS)]
    assert [job.hydra.job.id for job in saved] == [f"torch_loader_{num}" for num in range(JOBS)]


# -- the embedded Dask cluster and a local Ray: thread limits as on loky ----------------------

@pytest.mark.parametrize("threads", [None, 2])
@pytest.mark.parametrize("cluster", list(CLUSTERS))
def test_a_torch_job_on_a_cluster_started_here_gets_its_share_of_threads(
    cluster: str, threads: Optional[int], tmp_path: Path
) -> None:
    """The jobs share this machine: joblib's rule, or inner_max_num_threads, as on loky.

    (Dask's nannies and Ray would give each worker 1 thread: 2 asks for more.)
    """
    pytest.importorskip("torch", reason=NO_TORCH)
    pytest.importorskip({"dask": "distributed", "ray": "ray"}[cluster])
    extra = [] if threads is None else [f"hydra.launcher.inner_max_num_threads={threads}"]
    result = sweep("torch_loader.py", cluster, tmp_path / "sweep", *extra, timeout=240)
    assert_every_job_started(result)  # the DataLoader then starts as Dask's and Ray's workers do
    limit = share(threads)
    for job in result[1]:
        found = job["at_start"]
        assert found["torch"] == limit["OMP_NUM_THREADS"], job
        assert found["threadpoolctl"]["openmp"] == limit["OMP_NUM_THREADS"], job
        assert found["threadpoolctl"]["openblas"] == limit["OPENBLAS_NUM_THREADS"], job


# -- the global random generators: not shared by processes forked from one server ------------


@pytest.mark.parametrize("pool", list(POOLS))
def test_jobs_in_different_processes_draw_different_random_numbers(
    pool: str, tmp_path: Path
) -> None:
    """Unseeded draws differ between jobs, as they do between two plain runs of the app.

    A process forked from the launcher's fork server starts with a copy of its
    memory; Python's ``random`` and NumPy's global generator reseed themselves from
    the OS after a fork (NumPy 2), as a new interpreter seeds them as it starts.
    (torch's default generator starts from the same fixed seed in every process.)
    """
    pytest.importorskip("numpy")
    run, seen = sweep("random_draws.py", pool, tmp_path / "sweep")
    assert_every_job_completed((run, seen))
    assert len({job["numpy"] for job in seen}) == JOBS, seen
    assert len({job["random"] for job in seen}) == JOBS, seen
