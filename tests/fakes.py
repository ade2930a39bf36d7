"""What the supervisor's unit tests hand it in place of pools and a progress report.

The outcomes are the ones a worker sends: a ``JobReturn`` pickled in a ``JobOutcome``.
"""

import pickle
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_joblib_launcher._errors import WorkerCrashed
from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome
from hydra_plugins.hydra_joblib_launcher._plan import JobSpec
from hydra_plugins.hydra_joblib_launcher._pools import Pool


def completed(spec: JobSpec, value: object = None, output_dir: Optional[str] = None) -> JobOutcome:
    """Job ``spec`` completed, returning ``value`` (by default its number times 10)."""
    ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.COMPLETED)
    ret._return_value = spec.num * 10 if value is None else value
    return _sent(spec, ret, pid=1234, output_dir=output_dir)


def crashed(spec: JobSpec) -> JobOutcome:
    """As a pool that runs each job in a process of its own reports a job whose process died."""
    error = WorkerCrashed(f"job #{spec.num} died")
    ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
    ret._return_value = error
    return _sent(spec, ret, pid=None, error_type="WorkerCrashed", error=str(error))


def _sent(spec: JobSpec, ret: JobReturn, **fields: Any) -> JobOutcome:
    """The outcome a worker sends for ``ret``."""
    completed = ret.status == JobStatus.COMPLETED
    return JobOutcome(
        num=spec.num, completed=completed, payload=pickle.dumps(ret), started=1.0, ended=2.0,
        host="here", attempts=spec.attempt, **fields,
    )


@dataclass
class FakeReport:
    """The progress report: what ended, and how the batch closed."""

    ended: List[JobOutcome] = field(default_factory=list)
    interrupted_calls: int = 0
    closed: int = 0

    def job_ended(self, outcome: JobOutcome) -> None:
        self.ended.append(outcome)

    def interrupted(self) -> None:
        self.interrupted_calls += 1

    def close(self) -> None:
        self.closed += 1


@dataclass
class Quarantine:
    """The quarantine factory: hands out ``pool``, counting the calls."""

    pool: Any
    opened: int = 0

    def __call__(self) -> Pool:
        self.opened += 1
        return self.pool  # type: ignore[no-any-return]
