"""Conformance with the released plugin: every black-box behaviour its own tests check.

The upstream plugin (hydra-joblib-launcher 1.2 and the 1.4 line) tests
discovery, Hydra's launcher and integration suites, the example app, a
multiprocessing app whose module holds an object that refuses pickling and
whose ``@hydra.main`` function wears an outer decorator, a callable task, a
lambda return value, the null backend, the refused backends and keys,
``inner_max_num_threads`` and some launcher overrides. These tests check the
same behaviours, written for this launcher (its extensions, such as
``backend=dask``, stay accepted). CI runs them on Hydra 1.3 and on Hydra 1.4.
"""

import json
import os
from pathlib import Path
from typing import Any, List

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from hydra.test_utils.test_utils import TSweepRunner

from conftest import APPS, REPO, Run, jobs, run_app
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

EXAMPLE = REPO / "example"
CONFORMANCE = APPS / "conformance"


def test_discovery() -> None:
    assert JoblibLauncher.__name__ in [p.__name__ for p in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("joblib", [])])
class TestLauncherSuite(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {},
            [
                "-m",
                "hydra/job_logging=hydra_debug",
                "hydra/job_logging=disabled",
                "hydra/launcher=joblib",
            ],
        )
    ],
)
class TestIntegrationSuite(IntegrationTestSuite):
    pass


# -- the example app ----------------------------------------------------------------------------


def sweep_example(runner: TSweepRunner, overrides: List[str]) -> Any:
    return runner(
        calling_file=str(EXAMPLE / "my_app.py"),
        calling_module=None,
        task_function=None,
        config_path=".",
        config_name="config",
        overrides=overrides,
    )


def test_example_app_sweeps(hydra_sweep_runner: TSweepRunner, tmp_path: Path) -> None:
    with sweep_example(hydra_sweep_runner, ["task=1,2,3,4", f"hydra.sweep.dir={tmp_path}"]) as sweep:
        assert sweep.returns is not None and len(sweep.returns[0]) == 4
        assert sorted(tuple(ret.overrides) for ret in sweep.returns[0]) == [
            (f"task={n}",) for n in (1, 2, 3, 4)
        ]


def test_example_app_loads_its_config_and_logs_each_job(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        EXAMPLE / "my_app.py",
        ["--multirun", "task=1,2", f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.n_jobs=1"],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    assert "Joblib.Parallel(" in run.stdout
    assert (sweep_dir / "0" / "my_app.log").exists()
    assert (sweep_dir / "1" / "my_app.log").exists()


@pytest.mark.parametrize(
    "override",
    [
        "hydra.launcher.batch_size=1",
        "hydra.launcher.max_nbytes=10000",
        "hydra.launcher.max_nbytes=1M",
        "hydra.launcher.pre_dispatch=all",
        "hydra.launcher.pre_dispatch=10",
        "hydra.launcher.pre_dispatch=3*n_jobs",
    ],
)
def test_example_app_takes_joblibs_settings(
    hydra_sweep_runner: TSweepRunner, tmp_path: Path, override: str
) -> None:
    with sweep_example(hydra_sweep_runner, [override, f"hydra.sweep.dir={tmp_path}"]) as sweep:
        assert sweep.returns is not None and len(sweep.returns[0]) == 1


# -- apps that need more than pickling by value --------------------------------------------------


def launch(app: Path, tmp_path: Path, *overrides: str) -> Run:
    run = run_app(
        app,
        ["--multirun", "hydra/launcher=joblib", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.output
    return run


def results(tmp_path: Path, n_jobs: int) -> List[str]:
    return [(tmp_path / "sweep" / str(num) / "result.txt").read_text() for num in range(n_jobs)]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_module_that_refuses_pickling_and_an_outer_decorator(
    tmp_path: Path, backend: str, n_jobs: int
) -> None:
    """The task travels by reference: the facade in its module is never pickled."""
    launch(
        CONFORMANCE / "facade_app.py",
        tmp_path,
        f"hydra.launcher.backend={backend}",
        f"hydra.launcher.n_jobs={n_jobs}",
        "+job=0,1,2,3",
        "+runtime_value=${runtime_test:ok}",  # a resolver the app registers under its guard
    )
    seen = [line.split() for line in results(tmp_path, 4)]
    assert {value for _, value in seen} == {"resolved-ok"}
    if backend == "multiprocessing":  # a process of its own for every job
        assert len({pid for pid, _ in seen}) == 4
    assert str(os.getpid()) not in {pid for pid, _ in seen}


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_callable_object_as_the_task(tmp_path: Path, backend: str) -> None:
    launch(
        CONFORMANCE / "callable_app.py",
        tmp_path,
        f"hydra.launcher.backend={backend}",
        "hydra.launcher.n_jobs=2",
        "+job=0,1",
    )
    assert sorted(results(tmp_path, 2)) == ["callable-0", "callable-1"]


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_a_lambda_comes_back(tmp_path: Path, backend: str) -> None:
    """Plain pickle cannot send a lambda back; the job still COMPLETES and the sweeper gets it."""
    launch(
        CONFORMANCE / "facade_app.py",
        tmp_path,
        f"hydra.launcher.backend={backend}",
        "hydra.launcher.n_jobs=2",
        "+job=0",
        "+runtime_value=${runtime_test:ok}",
        "+return_lambda=true",
    )
    assert results(tmp_path, 1)[0].endswith("resolved-ok")
    (record,) = jobs(tmp_path / "sweep")
    assert record["status"] == "COMPLETED", record


# -- backends and keys ---------------------------------------------------------------------------

TINY = APPS / "tiny.py"


def test_a_null_backend_is_loky(tmp_path: Path) -> None:
    run = launch(TINY, tmp_path, "hydra.launcher.backend=null", "+x=1,2")
    assert "Joblib.Parallel(backend=loky," in run.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["backend=threading"], "hydra.launcher.backend='threading' is not supported"),
        (["backend=sequential"], "hydra.launcher.backend='sequential' is not supported"),
        (["maxtasksperchild=1"], "applies to backend=multiprocessing only"),
        (["backend=multiprocessing", "batch_size=2"], 'give 1 or "auto"'),
        (["backend=multiprocessing", "maxtasksperchild=2"], "give 1 or null"),
        (["require=sharedmem"], "hydra.launcher.require='sharedmem' is not supported"),
    ],
)
def test_refused_backends_and_keys(tmp_path: Path, overrides: List[str], message: str) -> None:
    run = run_app(
        TINY,
        [
            "--multirun",
            "hydra/launcher=joblib",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "+x=1,2",
            *(f"hydra.launcher.{override}" for override in overrides),
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 1, run.output
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.output
    assert not (tmp_path / "sweep").exists()


def test_multiprocessing_takes_upstreams_maxtasksperchild(tmp_path: Path) -> None:
    launch(
        TINY,
        tmp_path,
        "hydra.launcher.backend=multiprocessing",
        "hydra.launcher.maxtasksperchild=1",
        "hydra.launcher.batch_size=1",
        "+x=1,2",
    )
    assert (tmp_path / "sweep" / "1").is_dir()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_inner_max_num_threads_reaches_the_jobs(tmp_path: Path, n_jobs: int) -> None:
    launch(
        APPS / "threads.py",
        tmp_path,
        f"hydra.launcher.n_jobs={n_jobs}",
        "hydra.launcher.inner_max_num_threads=2",
        "+x=1,2",
    )
    for num in (0, 1):
        seen = json.loads((tmp_path / "sweep" / str(num) / "threads.json").read_text())
        assert seen["OMP_NUM_THREADS"] == "2", seen
