"""The JobReturn the launcher hands back, whose configs are unpickled only when first read.

A sweeper (and Hydra) may compare it, copy it, pickle it, ``dataclasses.replace``
it, and read it from several threads: each must behave as with a plain
JobReturn of the same fields.
"""

import copy
import dataclasses
import functools
import pickle
import sys
import threading
from typing import Callable, Iterator, List, Optional, Tuple

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome

OVERRIDES = ["lr=0.1", "seed=3"]


@functools.lru_cache(maxsize=None)
def pickled_configs() -> bytes:
    """A job's config and Hydra config; big enough that unpickling them takes a while (~2 ms)."""
    cfg = OmegaConf.create({"lr": 0.1, "seed": 3, "layers": {f"l{i}": i for i in range(500)}})
    hydra_cfg = OmegaConf.create({"hydra": {"job": {"name": "app", "num": 7}}})
    return pickle.dumps((cfg, hydra_cfg))


def configs() -> Tuple[DictConfig, DictConfig]:
    """New copies of the job's config and Hydra config."""
    cfg, hydra_cfg = pickle.loads(pickled_configs())
    return cfg, hydra_cfg


def plain() -> JobReturn:
    cfg, hydra_cfg = configs()
    return JobReturn(
        overrides=OVERRIDES,
        cfg=cfg,
        hydra_cfg=hydra_cfg,
        working_dir="/work/dir",
        task_name="app",
        status=JobStatus.COMPLETED,
        _return_value={"loss": 0.5},
    )


def outcome() -> JobOutcome:
    """As a worker sends it: the JobReturn without its configs, and the configs apart."""
    head = JobReturn(
        overrides=OVERRIDES,
        working_dir="/work/dir",
        task_name="app",
        status=JobStatus.COMPLETED,
        _return_value={"loss": 0.5},
    )
    return JobOutcome(
        num=7,
        completed=True,
        payload=pickle.dumps(head),
        started=1.0,
        ended=2.0,
        host="here",
        pid=1234,
        configs=pickled_configs(),
    )


def lazy() -> JobReturn:
    ret = outcome().job_return()
    assert type(ret) is not JobReturn  # else these tests check nothing lazy
    return ret


def test_it_equals_a_plain_job_return_either_way() -> None:
    assert lazy() == plain()
    assert plain() == lazy()
    assert lazy() == lazy()


def test_it_differs_from_a_job_return_with_other_fields() -> None:
    other = plain()
    other.status = JobStatus.FAILED
    assert lazy() != other
    assert other != lazy()


def test_its_fields_are_the_jobs() -> None:
    ret = lazy()
    cfg, hydra_cfg = configs()
    assert ret.cfg == cfg
    assert ret.hydra_cfg == hydra_cfg
    assert ret.overrides == OVERRIDES
    assert ret.return_value == {"loss": 0.5}


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_a_copy_is_a_plain_equal_job_return(copier: Callable[[JobReturn], JobReturn]) -> None:
    ret = lazy()
    copied = copier(ret)
    assert type(copied) is JobReturn
    assert copied == ret
    assert copied == plain()


def test_a_pickle_round_trip_gives_a_plain_job_return() -> None:
    restored = pickle.loads(pickle.dumps(lazy()))
    assert type(restored) is JobReturn
    assert restored == plain()


def test_a_pickle_of_one_already_read_gives_the_same() -> None:
    ret = lazy()
    assert ret.cfg is not None
    restored = pickle.loads(pickle.dumps(ret))
    assert restored == plain()


def test_dataclasses_replace_gives_the_new_status_and_the_same_configs() -> None:
    ret = lazy()
    replaced = dataclasses.replace(ret, status=JobStatus.FAILED)
    assert replaced.status == JobStatus.FAILED
    assert ret.status == JobStatus.COMPLETED  # the original is left as it was
    cfg, hydra_cfg = configs()
    assert replaced.cfg == cfg
    assert replaced.hydra_cfg == hydra_cfg
    assert replaced.overrides == OVERRIDES
    assert replaced._return_value == {"loss": 0.5}


def test_setting_a_config_before_reading_it_keeps_the_value_set() -> None:
    ret = lazy()
    new = OmegaConf.create({"other": 1})
    ret.cfg = new
    assert ret.cfg == new
    assert ret.hydra_cfg == configs()[1]


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every 10 µs instead of every 5 ms: a race shows in a few tries."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
@pytest.mark.parametrize("attempt", range(5))  # a race: a few tries
def test_threads_reading_first_at_once_all_see_the_configs(attempt: int) -> None:
    ret = lazy()
    cfg, hydra_cfg = configs()
    n = 16
    start = threading.Barrier(n)
    seen: List[Tuple[Optional[DictConfig], Optional[DictConfig]]] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def read(cfg_first: bool) -> None:
        try:
            start.wait(timeout=10)
            if cfg_first:
                pair = (ret.cfg, ret.hydra_cfg)
            else:
                seen_hydra_cfg = ret.hydra_cfg
                pair = (ret.cfg, seen_hydra_cfg)
            with lock:
                seen.append(pair)
        except BaseException as error:  # asserted on below, in the test's thread
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=read, args=(i % 2 == 0,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a reader is stuck"
    assert errors == []
    assert len(seen) == n
    blind = sum(c is None or h is None for c, h in seen)
    assert blind == 0, f"{blind} of {n} readers saw no config"
    # one object for every reader (what one thread changes in it, the others see) ...
    first_cfg, first_hydra_cfg = seen[0]
    assert all(c is first_cfg and h is first_hydra_cfg for c, h in seen), "configs unpickled twice"
    # ... and the job's
    assert first_cfg == cfg
    assert first_hydra_cfg == hydra_cfg


def test_the_stored_return_unpickles_to_a_plain_job_return_with_its_configs() -> None:
    restored = pickle.loads(outcome().stored_return())
    assert type(restored) is JobReturn
    assert restored == plain()
    cfg, hydra_cfg = configs()
    assert restored.cfg == cfg
    assert restored.hydra_cfg == hydra_cfg


def test_the_stored_return_without_configs_apart_is_the_payload() -> None:
    whole = JobOutcome(
        num=1,
        completed=True,
        payload=pickle.dumps(plain()),
        started=1.0,
        ended=2.0,
        host="here",
        pid=1,
    )
    assert type(whole.job_return()) is JobReturn
    assert pickle.loads(whole.stored_return()) == plain()
