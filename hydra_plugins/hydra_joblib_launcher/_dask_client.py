"""A Dask client, connected whole or not at all.

    start_client(address or cluster, ...) ─ Ctrl-C waits while distributed.Client connects
        ├─ connected, no Ctrl-C ─▶ the client
        └─ Ctrl-C meanwhile ─▶ the client closed, then the interrupt goes on

distributed.Client connects in its constructor. Interrupted there (Ctrl-C while
the scheduler's event loop is busy, as it is while dask-jobqueue submits batch
jobs), the half-built client is left to the garbage collector, which may close
it only as the interpreter exits: by then the thread running its event loop no
longer runs, and the close waits for it forever. So the first Ctrl-C waits for
the constructor (its own timeout bounds it), and a second one interrupts it at
once, as before.

distributed is imported inside functions only.
"""

import logging
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator, List, Optional

log = logging.getLogger(__name__)

# How long closing a client that connected after a Ctrl-C may take.
CLOSE_TIMEOUT_S = 10.0


def start_client(*args: Any, **kwargs: Any) -> Any:
    """``distributed.Client(*args, **kwargs)``, connected, or closed again after a Ctrl-C."""
    import distributed

    client_class: Any = distributed.Client  # untyped: Any leaves mypy's strict mode out of it
    with interrupt_deferred() as interrupted:
        client = client_class(*args, **kwargs)
        if interrupted():
            try:
                client.close(timeout=CLOSE_TIMEOUT_S)
            except Exception as error:  # noqa: BLE001 - the interrupt goes on anyway
                log.debug("Closing the Dask client after an interrupt failed: %r", error)
    return client


@contextmanager
def interrupt_deferred() -> Iterator[Callable[[], bool]]:
    """Hold a Ctrl-C (SIGINT) back until the block ends; a second one is raised at once.

    Yields whether one came. The held signal is delivered again as the block ends, to
    the handler that was there before. Only where that handler is a Python function
    (Python's own raises KeyboardInterrupt), which runs in the main thread: an ignored
    Ctrl-C stays ignored, and one that kills the process still does.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: False
        return
    held: List[int] = []

    def hold(signum: int, frame: Optional[FrameType]) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield lambda: bool(held)
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)
