"""The device pool: each running job holds its own device ids, released whatever way it ends."""

import threading
from typing import List, Sequence, Tuple


class DevicePool:
    """A thread-safe pool of device ids, handed out ``per_job`` at a time."""

    def __init__(self, devices: Sequence[str], per_job: int) -> None:
        self._free: List[str] = list(devices)
        self._per_job = per_job
        self._changed = threading.Condition()

    def acquire(self) -> Tuple[str, ...]:
        """Block until ``per_job`` ids are free, then take them (the longest free first)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._free) >= self._per_job)
            taken, self._free = self._free[: self._per_job], self._free[self._per_job :]
            return tuple(taken)

    def release(self, devices: Sequence[str]) -> None:
        with self._changed:
            self._free.extend(devices)
            self._changed.notify_all()
