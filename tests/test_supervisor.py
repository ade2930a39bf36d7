"""The supervisor's decisions after a pool breaks, driven by fake pools (no process runs).

A fake pool completes the jobs it is handed, in order, unless its script for
that call says to break (raise PoolBroken) or to be interrupted after a given
number of them. What the tests check is what the supervisor promises: every
job ends with exactly one outcome; the job alone in flight (and started, by
its own files) when a worker died is the culprit; several suspects run again each alone (in the quarantine
pool); a job that overran its time limit is the cause, and the others in flight
are innocent; jobs never dispatched run again on the main pool; an interrupt
stops every pool and propagates.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import AbstractSet, Dict, FrozenSet, Iterator, List, Optional, Sequence, Type, Union

import pytest
from fakes import FakeReport, Quarantine, completed, crashed
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_joblib_launcher._errors import JobTimeout, PoolBroken, WorkerCrashed
from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome
from hydra_plugins.hydra_joblib_launcher._plan import JobSpec
from hydra_plugins.hydra_joblib_launcher._pools import Pools
from hydra_plugins.hydra_joblib_launcher._supervisor import Retries, supervise

EXIT_CODES = "(exit codes: -9)"


@dataclass(frozen=True)
class Break:
    """Yield the first ``after`` jobs' outcomes, then raise PoolBroken with ``in_flight``."""

    after: int
    in_flight: FrozenSet[int]
    culprit: Optional[int] = None  # the job whose worker the pool saw die first


@dataclass(frozen=True)
class Interrupt:
    """Yield the first ``after`` jobs' outcomes, then raise KeyboardInterrupt."""

    after: int


Script = Union[Break, Interrupt, None]  # None: complete every job


class FakePool:
    """A pool whose n-th ``run`` call follows ``scripts[n]`` (past the end: runs every job).

    A job it runs completes, unless its number is in ``crashes``: then it ends FAILED.
    """

    def __init__(self, *scripts: Script, crashes: AbstractSet[int] = frozenset()) -> None:
        self.scripts = list(scripts)
        self.crashes = crashes
        self.handed: List[List[int]] = []  # the job numbers of each run call, in order
        self.stopped = 0

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        self.handed.append([spec.num for spec in specs])
        script = self.scripts.pop(0) if self.scripts else None
        for i, spec in enumerate(specs):
            if isinstance(script, Break) and i == script.after:
                # A job in flight had started: it notes so in its files, as a worker does.
                for running in specs:
                    if running.num in script.in_flight:
                        running.files.note_started({"pid": 4321, "host": "here", "started": 1.0})
                raise PoolBroken(
                    "a worker died",
                    in_flight=script.in_flight,
                    exit_codes=EXIT_CODES,
                    culprit=script.culprit,
                )
            if isinstance(script, Interrupt) and i == script.after:
                raise KeyboardInterrupt
            yield crashed(spec) if spec.num in self.crashes else completed(spec)

    def stop(self) -> None:
        self.stopped += 1


def make_specs(tmp_path: Path, n: int) -> List[JobSpec]:
    return [
        JobSpec(num=i, overrides=(f"x={i}",), context_file="unused", marker_dir=str(tmp_path))
        for i in range(n)
    ]


def assert_each_job_ended_once(
    specs: Sequence[JobSpec], report: FakeReport, returns: Dict[int, JobReturn]
) -> None:
    assert sorted(outcome.num for outcome in report.ended) == [spec.num for spec in specs]
    assert sorted(returns) == [spec.num for spec in specs]


def assert_completed(returns: Dict[int, JobReturn], nums: Sequence[int]) -> None:
    for num in nums:
        assert returns[num].status == JobStatus.COMPLETED, num
        assert returns[num].return_value == num * 10
        assert returns[num].overrides == [f"x={num}"]


def failure(returns: Dict[int, JobReturn], num: int, error_type: Type[Exception]) -> str:
    """The message of job ``num``'s error, which must be FAILED with an ``error_type``."""
    ret = returns[num]
    assert ret.status == JobStatus.FAILED
    assert ret.overrides == [f"x={num}"]
    error = ret._return_value
    assert isinstance(error, error_type), repr(error)
    return str(error)


def test_the_job_alone_in_flight_is_the_culprit(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 6)
    main = FakePool(Break(after=2, in_flight=frozenset({2})))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    message = failure(returns, 2, WorkerCrashed)
    assert "job #2 (x=2)" in message
    assert EXIT_CODES in message
    failed = [outcome for outcome in report.ended if outcome.num == 2]
    assert [(o.completed, o.error_type) for o in failed] == [(False, "WorkerCrashed")]
    # the jobs not yet dispatched run again on the main pool, not the crashed one
    assert main.handed == [[0, 1, 2, 3, 4, 5], [3, 4, 5]]
    assert_completed(returns, [0, 1, 3, 4, 5])
    assert quarantine.opened == 0
    assert_each_job_ended_once(specs, report, returns)


def test_several_in_flight_each_run_again_in_quarantine(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 6)
    main = FakePool(Break(after=1, in_flight=frozenset({1, 2, 3})))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    assert quarantine.opened == 1
    assert quarantine.pool.handed == [[1, 2, 3]]
    assert main.handed == [[0, 1, 2, 3, 4, 5], [4, 5]]
    assert_completed(returns, range(6))
    assert_each_job_ended_once(specs, report, returns)


def test_a_known_culprit_fails_and_the_others_in_flight_run_again_on_the_main_pool(
    tmp_path: Path,
) -> None:
    """The pool saw whose worker died first: no quarantine, the innocents are back in the queue."""
    specs = make_specs(tmp_path, 6)
    main = FakePool(Break(after=1, in_flight=frozenset({1, 2, 3}), culprit=2))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    assert "job #2 (x=2)" in failure(returns, 2, WorkerCrashed)
    assert quarantine.opened == 0
    assert main.handed == [[0, 1, 2, 3, 4, 5], [1, 3, 4, 5]]
    assert_completed(returns, [0, 1, 3, 4, 5])
    assert_each_job_ended_once(specs, report, returns)


def test_with_retries_a_crashed_job_runs_again_in_a_process_of_its_own(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 4)
    main = FakePool(Break(after=2, in_flight=frozenset({2})))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(
        specs, pools=Pools(main, quarantine), report=report, retries=Retries(retries=1)
    )

    assert quarantine.opened == 1 and quarantine.pool.handed == [[2]]
    assert_completed(returns, range(4))
    assert [o.attempts for o in report.ended if o.num == 2] == [2]  # its last attempt, once
    assert_each_job_ended_once(specs, report, returns)


def test_retries_are_spent_then_the_last_attempt_is_the_outcome(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 3)
    main = FakePool(crashes={1})
    quarantine = Quarantine(FakePool(crashes={1}))
    report = FakeReport()

    returns = supervise(
        specs, pools=Pools(main, quarantine), report=report, retries=Retries(retries=2)
    )

    assert quarantine.pool.handed == [[1], [1]]  # attempts 2 and 3
    assert failure(returns, 1, WorkerCrashed) == "job #1 died"
    assert [o.attempts for o in report.ended if o.num == 1] == [3]
    assert_each_job_ended_once(specs, report, returns)


def test_a_job_waiting_for_its_retry_is_not_run_again_when_the_pool_breaks(
    tmp_path: Path,
) -> None:
    specs = make_specs(tmp_path, 5)
    main = FakePool(Break(after=3, in_flight=frozenset({3})), crashes={1})
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(
        specs, pools=Pools(main, quarantine), report=report, retries=Retries(retries=1)
    )

    assert main.handed == [[0, 1, 2, 3, 4], [4]]  # not #1: it waits for its retry
    assert quarantine.pool.handed == [[1, 3]]  # #3 broke the pool, alone: its retry too
    assert_completed(returns, range(5))
    assert_each_job_ended_once(specs, report, returns)


def test_what_runs_again() -> None:
    spec = make_specs(Path("unused"), 1)[0]
    died = crashed(spec)
    raised = replace(died, error_type="ValueError")
    assert Retries(retries=1).again(died)
    assert not Retries(retries=0).again(died)
    assert not Retries(retries=1).again(replace(died, attempts=2))  # its retry was spent
    assert not Retries(retries=3, retry_on=("crash", "timeout", "memory")).again(raised)
    assert not Retries(retries=1).again(completed(spec))
    assert not Retries(retries=1, retry_on=("memory",)).again(died)
    memory = replace(died, error_type="MemoryLimitExceeded")
    assert Retries(retries=1, retry_on=("memory",)).again(memory)
    assert not Retries(retries=1).again(memory)  # crash alone, by default


def test_a_crash_in_quarantine_costs_only_the_job_that_crashes(tmp_path: Path) -> None:
    """What the quarantine pool reports for a suspect (here: FAILED) is that job's outcome."""
    specs = make_specs(tmp_path, 4)
    main = FakePool(Break(after=0, in_flight=frozenset({0, 1, 2})))
    quarantine = Quarantine(FakePool(crashes={1}))
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    assert quarantine.pool.handed == [[0, 1, 2]]
    assert failure(returns, 1, WorkerCrashed) == "job #1 died"
    assert_completed(returns, [0, 2, 3])
    assert_each_job_ended_once(specs, report, returns)


def test_a_timed_out_job_is_the_cause_and_the_others_in_flight_are_innocent(
    tmp_path: Path,
) -> None:
    specs = make_specs(tmp_path, 6)
    specs[2].files.mark_timed_out(1.0)
    main = FakePool(Break(after=1, in_flight=frozenset({1, 2, 3})))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    assert "job #2 ran longer than" in failure(returns, 2, JobTimeout)
    # the other jobs in flight run again on the main pool, with those never dispatched
    assert main.handed == [[0, 1, 2, 3, 4, 5], [1, 3, 4, 5]]
    assert quarantine.opened == 0
    assert_completed(returns, [0, 1, 3, 4, 5])
    assert_each_job_ended_once(specs, report, returns)


@pytest.mark.parametrize("after", [0, 2])
def test_with_nothing_in_flight_every_unfinished_job_runs_again(tmp_path: Path, after: int) -> None:
    specs = make_specs(tmp_path, 5)
    main = FakePool(Break(after=after, in_flight=frozenset()))
    quarantine = Quarantine(FakePool())
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, quarantine), report=report)

    assert main.handed == [[0, 1, 2, 3, 4], list(range(after, 5))]
    assert quarantine.opened == 0
    assert_completed(returns, range(5))
    assert_each_job_ended_once(specs, report, returns)


def test_the_pool_breaking_again_is_settled_again(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 6)
    main = FakePool(
        Break(after=1, in_flight=frozenset({1})),
        Break(after=1, in_flight=frozenset({3})),  # handed [2, 3, 4, 5]
    )
    report = FakeReport()

    returns = supervise(specs, pools=Pools(main, Quarantine(FakePool())), report=report)

    assert main.handed == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5], [4, 5]]
    failure(returns, 1, WorkerCrashed)
    failure(returns, 3, WorkerCrashed)
    assert_completed(returns, [0, 2, 4, 5])
    assert_each_job_ended_once(specs, report, returns)


def test_an_interrupt_stops_the_pool_and_propagates(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 4)
    main = FakePool(Interrupt(after=2))
    report = FakeReport()

    with pytest.raises(KeyboardInterrupt):
        supervise(specs, pools=Pools(main, Quarantine(FakePool())), report=report)

    assert main.stopped == 1
    assert report.interrupted_calls == 1
    assert report.closed == 0
    assert [outcome.num for outcome in report.ended] == [0, 1]  # those that ended, once each


def test_an_interrupt_in_quarantine_stops_every_pool(tmp_path: Path) -> None:
    specs = make_specs(tmp_path, 4)
    main = FakePool(Break(after=0, in_flight=frozenset({0, 1})))
    quarantine = Quarantine(FakePool(Interrupt(after=1)))
    report = FakeReport()

    with pytest.raises(KeyboardInterrupt):
        supervise(specs, pools=Pools(main, quarantine), report=report)

    assert quarantine.pool.stopped == 1
    assert main.stopped == 1
    assert report.interrupted_calls == 1
    assert [outcome.num for outcome in report.ended] == [0]


def test_an_unexpected_error_stops_the_pool_closes_the_report_and_propagates(
    tmp_path: Path,
) -> None:
    class Failing(FakePool):
        def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
            yield completed(specs[0])
            raise RuntimeError("the pool's own bug")

    main = Failing()
    report = FakeReport()

    with pytest.raises(RuntimeError, match="the pool's own bug"):
        supervise(make_specs(tmp_path, 3), pools=Pools(main, Quarantine(FakePool())), report=report)

    assert main.stopped == 1
    assert report.closed == 1
    assert report.interrupted_calls == 0
