"""The device pool under threads: no id held twice at once, every id back when its job ends.

The launcher's feeder threads acquire and release at the same time; a deadlock
here would hang a sweep, so every wait in these tests has a timeout.
"""

import sys
import threading
import time
from typing import Iterator, List, Set, Tuple

import pytest

from hydra_plugins.hydra_joblib_launcher._devices import DevicePool

DEVICES = [str(i) for i in range(8)]
PER_JOB = 2
GROUPS = len(DEVICES) // PER_JOB
JOIN_TIMEOUT_S = 10.0


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every µs instead of every 5 ms, so that a race shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_thread_switches")
def test_concurrent_holders_never_share_an_id_and_all_come_back() -> None:
    pool = DevicePool(DEVICES, PER_JOB)
    held: Set[str] = set()
    holders = 0
    most_holders = 0
    problems: List[str] = []
    lock = threading.Lock()

    def job(rounds: int) -> None:
        nonlocal holders, most_holders
        try:
            for _ in range(rounds):
                taken = pool.acquire()
                with lock:
                    if len(taken) != PER_JOB or len(set(taken)) != PER_JOB:
                        problems.append(f"handed {taken}")
                    if held & set(taken):
                        problems.append(f"{sorted(held & set(taken))} held twice at once")
                    held.update(taken)
                    holders += 1
                    most_holders = max(most_holders, holders)
                time.sleep(0)  # let the others run
                with lock:
                    held.difference_update(taken)
                    holders -= 1
                pool.release(taken)
        except BaseException as error:  # asserted on below, in the test's thread
            with lock:
                problems.append(repr(error))

    threads = [threading.Thread(target=job, args=(50,), daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads stuck in acquire: deadlock"
    assert problems == []
    assert 1 <= most_holders <= GROUPS

    assert sorted(device for group in acquire_all(pool) for device in group) == sorted(DEVICES)


def acquire_all(pool: DevicePool) -> List[Tuple[str, ...]]:
    """Every group the pool can hand out at once; fails (instead of hanging) if one is missing."""
    groups: List[Tuple[str, ...]] = []

    def take() -> None:
        for _ in range(GROUPS):
            groups.append(pool.acquire())

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    taker.join(timeout=5)
    assert not taker.is_alive(), f"only {len(groups)} of {GROUPS} groups free: ids were lost"
    return groups


def test_an_acquire_waits_for_a_release() -> None:
    pool = DevicePool(DEVICES[:2], PER_JOB)
    first = pool.acquire()
    second: List[Tuple[str, ...]] = []
    waiter = threading.Thread(target=lambda: second.append(pool.acquire()), daemon=True)
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive(), "handed out ids that were held"
    pool.release(first)
    waiter.join(timeout=5)
    assert not waiter.is_alive(), "a release did not wake the waiting acquire"
    assert sorted(second[0]) == sorted(first)
