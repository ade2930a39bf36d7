"""backend=dask with ``dask.cluster``: a cluster the launcher builds by its class.

Real sweeps in subprocesses on a distributed.LocalCluster named by ``_target_``
(no batch system needed), the config errors, and Hydra 1.3's habit of building
nested ``_target_`` nodes of a launcher's config (the cluster must be built
once, by the launcher). The SLURM-backed cluster is tests/test_slurm.py.
"""

from pathlib import Path
from typing import List

import pytest
from conftest import APPS, REPO, assert_clear_error, jobs, run_app

from hydra_plugins.hydra_joblib_launcher._errors import LauncherConfigError
from hydra_plugins.hydra_joblib_launcher._options import validate

EXAMPLE = REPO / "example" / "my_app.py"
DASK = ["hydra/launcher=joblib", "hydra.launcher.backend=dask"]
LOCAL = (
    "{_target_:distributed.LocalCluster,threads_per_worker:1,n_workers:0,host:127.0.0.1,"
    "dashboard_address:'127.0.0.1:0'}"  # any free port: 8787 may be taken (a warning, an error here)
)


def cluster(node: str) -> str:
    return f"hydra.launcher.dask.cluster={node}"


# -- the options (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dask, message",
    [
        ({"cluster": "dask_jobqueue.SLURMCluster"}, "give {_target_: dask_jobqueue.SLURMCluster"),
        ({"cluster": {"cores": 1}}, "hydra.launcher.dask.cluster={'cores': 1}"),
        ({"cluster": {"_target_": "SLURMCluster"}}, "give {_target_: dask_jobqueue.SLURMCluster"),
        (
            {"cluster": {"_target_": "distributed.LocalCluster"}, "address": "tcp://h:8786"},
            "names one already running",
        ),
        ({"adapt": "yes"}, "hydra.launcher.dask.adapt='yes' is not supported; give true or false"),
        ({"adapt_minimum": -1}, "hydra.launcher.dask.adapt_minimum=-1"),
        ({"worker_timeout": 0}, "hydra.launcher.dask.worker_timeout=0"),
    ],
)
def test_bad_cluster_settings_are_one_clear_error(dask: dict, message: str) -> None:
    with pytest.raises(LauncherConfigError) as error:
        validate({"backend": "dask", "dask": dask}, cpu_count=2)
    assert message in str(error.value)


def test_cluster_settings_are_kept() -> None:
    node = {"_target_": "dask_jobqueue.SLURMCluster", "cores": 1, "processes": 1}
    options = validate(
        {"backend": "dask", "dask": {"cluster": node, "adapt": True, "worker_timeout": 60}},
        cpu_count=2,
    )
    assert dict(options.dask.cluster or ()) == node
    assert options.dask.adapt and options.dask.adapt_minimum == 1
    assert options.dask.worker_timeout == 60.0


# -- sweeps -------------------------------------------------------------------------------


@pytest.mark.dask
@pytest.mark.slow
def test_example_sweep_on_a_local_cluster_named_by_its_class(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    run = run_app(
        EXAMPLE,
        ["-m", "task=1,2,3", *DASK, "hydra.launcher.n_jobs=2", cluster(LOCAL), "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "is launching 3 jobs on Dask LocalCluster tcp://127.0.0.1:" in run.output
    assert "(2 workers, 2 jobs at once)" in run.output
    assert [job["status"] for job in jobs(tmp_path / "s")] == ["COMPLETED"] * 3


@pytest.mark.dask
@pytest.mark.slow
def test_the_cluster_is_built_once_by_the_launcher(tmp_path: Path) -> None:
    """On Hydra 1.3 too, where nested ``_target_`` nodes of the launcher would be built by Hydra."""
    pytest.importorskip("distributed")
    count = tmp_path / "built.txt"
    node = (
        "{_target_:counting_cluster.CountingCluster,count_file:" + str(count) + ","
        "threads_per_worker:1,n_workers:0,host:127.0.0.1,dashboard_address:'127.0.0.1:0'}"
    )
    run = run_app(
        APPS / "faulty.py",
        ["-m", "+name=a,b,c", *DASK, "hydra.launcher.n_jobs=2", cluster(node), "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "on Dask CountingCluster tcp://127.0.0.1:" in run.output
    assert [job["status"] for job in jobs(tmp_path / "s")] == ["COMPLETED"] * 3
    assert len(count.read_text().split()) == 1, "built once, by the launcher"


def _refused(tmp_path: Path, node: str) -> str:
    run = run_app(
        EXAMPLE, ["-m", "task=1,2", *DASK, cluster(node), "hydra.sweep.dir=s"], cwd=tmp_path
    )
    assert_clear_error(run, "hydra.launcher.dask.cluster")
    assert not (tmp_path / "s" / "0").exists(), "no job started"
    return run.stderr


@pytest.mark.dask
@pytest.mark.slow
@pytest.mark.parametrize(
    "node, texts",
    [
        (
            "{_target_:no_such_module.SLURMCluster}",
            ["_target_='no_such_module.SLURMCluster' cannot be found", "dask_jobqueue.SLURMCluster"],
        ),
        (
            "{_target_:collections.OrderedDict}",
            ["names collections.OrderedDict, which is not a Dask cluster"],
        ),
        (
            "{_target_:distributed.LocalCluster,threads_per_worker:2,n_workers:1,host:127.0.0.1,"
            "dashboard_address:'127.0.0.1:0'}",
            ["would start workers with 2 threads", "set threads_per_worker: 1"],
        ),
    ],
)
def test_a_cluster_that_cannot_serve_is_one_clear_error(
    tmp_path: Path, node: str, texts: List[str]
) -> None:
    pytest.importorskip("distributed")
    stderr = _refused(tmp_path, node)
    for text in texts:
        assert text in stderr


@pytest.mark.dask
@pytest.mark.slow
def test_a_jobqueue_cluster_with_threaded_workers_is_refused_before_any_submission(
    tmp_path: Path,
) -> None:
    """Refused with the fix for its class, before a batch job is asked for (no sbatch needed)."""
    pytest.importorskip("dask_jobqueue")
    stderr = _refused(
        tmp_path,
        "{_target_:dask_jobqueue.SLURMCluster,cores:2,processes:1,memory:1GB,interface:lo}",
    )
    assert "(SLURMCluster) would start workers with 2 threads" in stderr
    assert "set processes equal to cores" in stderr


@pytest.mark.dask
@pytest.mark.slow
def test_a_jobqueue_cluster_missing_its_arguments_is_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    stderr = _refused(tmp_path, "{_target_:dask_jobqueue.SLURMCluster,interface:lo}")
    assert "could not build dask_jobqueue.SLURMCluster: ValueError" in stderr
    assert "Check its keyword arguments" in stderr


@pytest.mark.dask
@pytest.mark.slow
def test_an_adapting_cluster_grows_from_its_minimum_to_n_jobs(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    count = tmp_path / "count"
    count.mkdir()
    run = run_app(
        APPS / "faulty.py",
        ["-m", "+name=a,b,c,d", "+work=2", f"+count_dir={count}", *DASK, "hydra.launcher.n_jobs=2",
         "hydra.launcher.dask.adapt=true", cluster(LOCAL), "hydra.sweep.dir=s"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert [job["status"] for job in jobs(tmp_path / "s")] == ["COMPLETED"] * 4
    pids = {int(p) for name in "abcd" for p in (count / f"{name}.runs").read_text().split()}
    assert len(pids) == 2, "started with 1 worker (adapt_minimum), grown to n_jobs=2 by the work"
