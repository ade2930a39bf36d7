"""Hydra's own launcher test suites, against both process backends."""

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from pytest import mark

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

BACKENDS = ["loky", "multiprocessing"]


def test_discovery() -> None:
    launchers = [plugin.__name__ for plugin in Plugins.instance().discover(Launcher)]
    assert JoblibLauncher.__name__ in launchers


@mark.parametrize("launcher_name", ["joblib"])
@mark.parametrize("overrides", [[f"hydra.launcher.backend={b}"] for b in BACKENDS], ids=BACKENDS)
class TestJoblibLauncher(LauncherTestSuite):
    pass


@mark.parametrize("launcher_name", ["joblib"])
@mark.parametrize(
    "overrides",
    [[f"hydra.launcher.backend={b}", "hydra.sweeper.max_batch_size=2"] for b in BACKENDS],
    ids=BACKENDS,
)
class TestJoblibLauncherBatched(BatchedSweeperTestSuite):
    pass


@mark.parametrize("task_launcher_cfg", [{}])
@mark.parametrize(
    "extra_flags",
    [["-m", "hydra/launcher=joblib", f"hydra.launcher.backend={b}"] for b in BACKENDS],
    ids=BACKENDS,
)
class TestJoblibLauncherIntegration(IntegrationTestSuite):
    pass
