"""What a launch hands its workers: the context every job shares, and the first jobs' configs."""

import dataclasses
from pathlib import Path
from typing import Iterator, List

from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_joblib_launcher._plan import (
    JobSpec,
    SharedContext,
    compose_ahead,
    config_composed_ahead,
    load_context,
    pickle_context,
    write_context,
)


def specs(tmp_path: Path, n: int) -> List[JobSpec]:
    return [
        JobSpec(num=num, overrides=(f"x={num}",), context_file="", marker_dir=str(tmp_path))
        for num in range(n)
    ]


def compose(spec: JobSpec) -> DictConfig:
    return OmegaConf.create({"x": spec.num})


def still_waiting(times: int) -> Iterator[bool]:
    """True ``times`` times, then False: the workers are ready after that many configs."""
    yield from [True] * times
    while True:
        yield False


def test_configs_are_composed_in_job_order_while_the_workers_start(tmp_path: Path) -> None:
    waiting = still_waiting(2)
    out = compose_ahead(
        specs(tmp_path, 5), compose=compose, waiting=lambda: next(waiting), at_most=4
    )

    assert [spec.num for spec in out] == [0, 1, 2, 3, 4]
    assert [config_composed_ahead(spec) for spec in out] == [{"x": 0}, {"x": 1}, None, None, None]
    assert [spec.overrides for spec in out] == [(f"x={num}",) for num in range(5)]


def test_no_more_than_the_jobs_handed_out_first(tmp_path: Path) -> None:
    out = compose_ahead(specs(tmp_path, 5), compose=compose, waiting=lambda: True, at_most=2)

    assert [spec.config is not None for spec in out] == [True, True, False, False, False]


def test_nothing_is_composed_once_the_workers_are_ready(tmp_path: Path) -> None:
    calls: List[int] = []

    def counted(spec: JobSpec) -> DictConfig:
        calls.append(spec.num)
        return compose(spec)

    out = compose_ahead(specs(tmp_path, 3), compose=counted, waiting=lambda: False, at_most=6)

    assert calls == []
    assert out == specs(tmp_path, 3)


def test_a_config_that_cannot_be_composed_is_left_to_the_jobs_process(tmp_path: Path) -> None:
    """That process composes it again and fails the job with Hydra's error."""

    def fails_on_1(spec: JobSpec) -> DictConfig:
        if spec.num == 1:
            raise ValueError("Could not override 'x'")
        return compose(spec)

    out = compose_ahead(specs(tmp_path, 3), compose=fails_on_1, waiting=lambda: True, at_most=6)

    assert [config_composed_ahead(spec) for spec in out] == [{"x": 0}, None, None]


def test_a_config_composed_ahead_that_cannot_be_read_is_composed_by_the_jobs_process(
    tmp_path: Path,
) -> None:
    """A type the job's process cannot import, say: it composes the config itself then."""
    spec = dataclasses.replace(specs(tmp_path, 1)[0], config=b"not a pickle")

    assert config_composed_ahead(spec) is None


def test_a_composed_config_is_not_in_the_specs_repr(tmp_path: Path) -> None:
    """A spec shows up in messages and logs; its config would flood them."""
    out = compose_ahead(specs(tmp_path, 1), compose=compose, waiting=lambda: True, at_most=1)

    assert out[0].config is not None
    assert "config=" not in repr(out[0])


def test_a_process_that_found_hydras_plugins_keeps_them_as_it_loads_a_context(
    tmp_path: Path,
) -> None:
    """A worker forked from the launching process has its plugin registry.

    Hydra's state leaves the registry out, and setting it would discover every
    plugin again: ~0.09 s in each worker's first job.
    """
    plugins = Plugins.instance()
    before = Singleton.get_state()
    context = SharedContext(
        hydra_context=HydraContext(config_loader=None, callbacks=None),  # type: ignore[arg-type]
        task_function=len,
        config=OmegaConf.create({"x": 1}),
        singleton_state=Singleton.get_state(),
    )
    path = write_context(pickle_context(context), tmp_path)
    try:
        loaded = load_context(str(path), long_lived=False)
        assert loaded.config == {"x": 1}
        assert Plugins.instance() is plugins
    finally:
        Singleton.set_state(before)
