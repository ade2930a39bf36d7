"""Holding Ctrl-C back while a Dask client connects (_dask_client.interrupt_deferred), in
this process's main thread, with real signals."""

import signal
import threading
from typing import Iterator, List

import pytest

from hydra_plugins.hydra_joblib_launcher._dask_client import interrupt_deferred


@pytest.fixture(autouse=True)
def python_ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler (KeyboardInterrupt) during each test: another test's
    import of dask_jobqueue, say, may have replaced it in this process."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_is_held_until_the_block_ends() -> None:
    reached: List[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_deferred() as interrupted:
            assert not interrupted()
            signal.raise_signal(signal.SIGINT)
            reached.append("after the Ctrl-C")
            assert interrupted()
    assert reached == ["after the Ctrl-C"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_interrupts_at_once() -> None:
    reached: List[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            reached.append("after the second Ctrl-C")
    assert reached == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_a_ctrl_c_nothing_changes() -> None:
    with interrupt_deferred() as interrupted:
        pass
    assert not interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_held_ctrl_c_goes_to_the_handler_that_was_there() -> None:
    got: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        with interrupt_deferred():
            signal.raise_signal(signal.SIGINT)
            assert got == []
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_nothing_is_held() -> None:
    seen: List[bool] = []

    def block() -> None:
        with interrupt_deferred() as interrupted:
            seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
            seen.append(interrupted())

    thread = threading.Thread(target=block)
    thread.start()
    thread.join()
    assert seen == [True, False]


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a sweep started with nohup ... &
    with interrupt_deferred() as interrupted:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    assert not interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
