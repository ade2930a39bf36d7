"""The launcher's named exceptions.

Each message says what happened, why it may have, and what to do about it.
"""

from typing import FrozenSet, Optional

from hydra.errors import CompactHydraException


class LauncherError(CompactHydraException):
    """A problem with the launch as a whole, reported before or instead of running jobs.

    Hydra prints a ``CompactHydraException`` as its message alone, without a
    traceback: these are about the user's input or environment, not bugs.
    """


class LauncherConfigError(LauncherError):
    """A ``hydra.launcher`` setting that cannot be used."""


class UntrustedFile(LauncherError, PermissionError):
    """A file the launcher would unpickle that someone else owns or can write."""


class JobFailure(Exception):
    """Base of the errors a FAILED job carries when its task did not raise one itself."""


class WorkerCrashed(JobFailure):
    """The process running the job died before the job ended."""


class JobTimeout(JobFailure, TimeoutError):
    """The job ran longer than ``hydra.launcher.timeout``."""


class MemoryLimitExceeded(JobFailure, MemoryError):
    """The job's processes held more memory together than ``hydra.launcher.mem_limit``."""


class ResultNotSendable(JobFailure):
    """The job's return value (or its exception) could not be pickled back to the launcher."""


class ResultNotLoadable(JobFailure):
    """The job's return value was pickled in its process but cannot be unpickled in the launcher's."""


class RemoteJobError(JobFailure):
    """Stands in for a job's exception that could not be pickled, keeping its type, message and traceback."""


class PoolBroken(Exception):
    """A worker died and took its pool with it; the jobs ``in_flight`` may not have ended.

    Raised by a pool's ``run``, caught by the supervisor, never shown to a user.
    Of the jobs in flight, the supervisor suspects those that started (their files say so),
    unless the pool knows the one job whose worker died first (``culprit``).
    """

    def __init__(
        self,
        message: str,
        in_flight: FrozenSet[int],
        exit_codes: str,
        culprit: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.in_flight = in_flight
        self.exit_codes = exit_codes
        self.culprit = culprit


class WorkerCannotRun(LauncherError):
    """A cluster worker could not start a job: its environment lacks something the launch needs."""


class SweepDirError(LauncherError):
    """A dir that ``hydra-joblib status`` or ``report`` cannot read as a sweep dir of this launcher."""
