"""What the supervisor decides after a pool breaks, from what each job's own files say.

Fake pools (no process runs) do what a worker does to a job's files: note that
the job started, keep its outcome in its job dir as it ends (then deliver it,
or not, when the pool breaks first), leave a timeout marker. The promises:
a job whose outcome was kept never runs again, whether or not it was
delivered; only jobs that started and did not end are suspects; jobs that
never started go back to the main pool, whatever the pool had been handed; a
result the launcher cannot unpickle fails its job alone; every batch ends.
"""

import pickle
import socket
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence

import pytest
from fakes import FakeReport, Quarantine, completed, crashed
from hydra.core.utils import JobReturn, JobStatus

from hydra_plugins.hydra_joblib_launcher._errors import (
    JobTimeout,
    PoolBroken,
    ResultNotLoadable,
    WorkerCrashed,
)
from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome
from hydra_plugins.hydra_joblib_launcher._plan import JobSpec
from hydra_plugins.hydra_joblib_launcher._pools import Pools
from hydra_plugins.hydra_joblib_launcher._supervisor import supervise

EXIT_CODES = "(exit codes: -9)"


def refuse_to_load() -> None:
    raise RuntimeError("refuses to be unpickled")


class Unloadable:
    def __reduce__(self) -> object:
        return refuse_to_load, ()


@dataclass(frozen=True)
class Break:
    """The pool delivers the first ``delivered`` jobs it is handed, then breaks.

    Before it breaks, the jobs in ``ended`` ran to their end (their outcomes
    kept, not delivered), those in ``running`` started and did not end, and
    those in ``timed_out`` started and were killed for overrunning. The pool
    names ``in_flight`` as the jobs in flight (by default, every job handed
    and not delivered, as loky's pool does).
    """

    delivered: int
    ended: FrozenSet[int] = frozenset()
    running: FrozenSet[int] = frozenset()
    timed_out: FrozenSet[int] = frozenset()
    in_flight: Optional[FrozenSet[int]] = None


@dataclass
class Jobs:
    """Where the fake jobs write: their marker dir, their output dirs; how often each started."""

    root: Path
    starts: Counter = field(default_factory=Counter)  # type: ignore[type-arg]
    unloadable: FrozenSet[int] = frozenset()
    crashes_alone: FrozenSet[int] = frozenset()  # end FAILED (WorkerCrashed) in a fresh process

    def specs(self, n: int) -> List[JobSpec]:
        return [
            JobSpec(num=i, overrides=(f"x={i}",), context_file="unused", marker_dir=str(self.root))
            for i in range(n)
        ]

    def start(self, spec: JobSpec) -> str:
        """What a worker does as a job's task starts; the job's output dir."""
        from hydra_plugins.hydra_joblib_launcher._durable import forget

        self.starts[spec.num] += 1
        output_dir = self.root / "out" / str(spec.num)
        output_dir.mkdir(parents=True, exist_ok=True)
        forget(str(output_dir))
        spec.files.note_started(
            {
                "pid": 1234,
                "host": socket.gethostname(),
                "started": 1.0,
                "output_dir": str(output_dir),
            }
        )
        return str(output_dir)

    def run_to_end(self, spec: JobSpec) -> JobOutcome:
        """What a worker does for a job from its start to its end: the outcome it sends."""
        from hydra_plugins.hydra_joblib_launcher._durable import keep

        output_dir = self.start(spec)
        value = Unloadable() if spec.num in self.unloadable else None
        return keep(spec, completed(spec, value, output_dir))


class FakePool:
    """A pool whose n-th ``run`` call follows ``scripts[n]`` (past the end: runs every job)."""

    def __init__(self, jobs: Jobs, *scripts: Optional[Break]) -> None:
        self.jobs = jobs
        self.scripts = list(scripts)
        self.handed: List[List[int]] = []

    def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
        self.handed.append([spec.num for spec in specs])
        script = self.scripts.pop(0) if self.scripts else None
        for i, spec in enumerate(specs):
            if script is not None and i == script.delivered:
                self._break(script, specs[i:])
            if spec.num in self.jobs.crashes_alone:
                self.jobs.start(spec)
                yield crashed(spec)
            else:
                yield self.jobs.run_to_end(spec)
        if script is not None:
            self._break(script, [])

    def _break(self, script: Break, left: Sequence[JobSpec]) -> None:
        for spec in left:
            if spec.num in script.ended:
                self.jobs.run_to_end(spec)
            elif spec.num in script.running:
                self.jobs.start(spec)
            elif spec.num in script.timed_out:
                self.jobs.start(spec)
                spec.files.mark_timed_out(3)
        in_flight = script.in_flight
        if in_flight is None:
            in_flight = frozenset(spec.num for spec in left)
        raise PoolBroken("a worker died", in_flight=in_flight, exit_codes=EXIT_CODES)

    def stop(self) -> None:
        pass


@dataclass
class Batch:
    returns: Dict[int, JobReturn]
    report: FakeReport
    main: FakePool
    quarantine: Quarantine


def run_batch(jobs: Jobs, n: int, *scripts: Optional[Break]) -> Batch:
    main = FakePool(jobs, *scripts)
    quarantine = Quarantine(FakePool(jobs))
    report = FakeReport()
    returns = supervise(jobs.specs(n), pools=Pools(main, quarantine), report=report)
    assert sorted(o.num for o in report.ended) == list(range(n)), "one outcome per job"
    assert sorted(returns) == list(range(n))
    return Batch(returns, report, main, quarantine)


def assert_completed(batch: Batch, nums: Sequence[int]) -> None:
    for num in nums:
        ret = batch.returns[num]
        assert ret.status == JobStatus.COMPLETED, (num, ret._return_value)
        assert ret.return_value == num * 10


def error_of(batch: Batch, num: int) -> BaseException:
    ret = batch.returns[num]
    assert ret.status == JobStatus.FAILED
    assert ret.overrides == [f"x={num}"]
    error = ret._return_value
    assert isinstance(error, BaseException)
    return error


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path)


def test_jobs_handed_to_the_pool_but_never_started_go_back_to_the_main_pool(jobs: Jobs) -> None:
    # 2 crashed its worker; 3, 4, 5 were queued in the pool (pre-dispatched), never started
    batch = run_batch(jobs, 6, Break(delivered=2, running=frozenset({2})))

    assert isinstance(error_of(batch, 2), WorkerCrashed)
    assert batch.main.handed == [[0, 1, 2, 3, 4, 5], [3, 4, 5]]
    assert batch.quarantine.opened == 0
    assert_completed(batch, [0, 1, 3, 4, 5])
    assert jobs.starts == dict.fromkeys(range(6), 1)


def test_a_job_that_ended_but_was_not_delivered_is_not_run_again(jobs: Jobs) -> None:
    # 1 and 3 ran to their end, but the pool broke before their results came back
    batch = run_batch(jobs, 6, Break(delivered=1, ended=frozenset({1, 3}), running=frozenset({2})))

    assert isinstance(error_of(batch, 2), WorkerCrashed)  # the one that was running: the culprit
    assert_completed(batch, [0, 1, 3, 4, 5])
    assert batch.main.handed == [[0, 1, 2, 3, 4, 5], [4, 5]]
    assert batch.quarantine.opened == 0
    assert jobs.starts == dict.fromkeys(range(6), 1)


def test_only_jobs_that_started_and_did_not_end_are_suspects(jobs: Jobs) -> None:
    batch = run_batch(jobs, 8, Break(delivered=1, ended=frozenset({1}), running=frozenset({2, 4})))

    assert batch.quarantine.opened == 1
    assert batch.quarantine.pool.handed == [[2, 4]]  # not 3, 5, 6, 7: they never started
    assert batch.main.handed == [list(range(8)), [3, 5, 6, 7]]
    assert_completed(batch, range(8))
    assert jobs.starts == {0: 1, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1, 6: 1, 7: 1}


def test_a_crash_in_quarantine_costs_only_the_job_that_crashes(jobs: Jobs) -> None:
    jobs.crashes_alone = frozenset({4})
    batch = run_batch(jobs, 6, Break(delivered=1, running=frozenset({2, 4})))

    assert isinstance(error_of(batch, 4), WorkerCrashed)
    assert_completed(batch, [0, 1, 2, 3, 5])


def test_a_timed_out_job_fails_and_the_running_ones_are_innocent(jobs: Jobs) -> None:
    batch = run_batch(
        jobs,
        5,
        Break(delivered=1, ended=frozenset({3}), running=frozenset({1}), timed_out=frozenset({2})),
    )

    assert isinstance(error_of(batch, 2), JobTimeout)
    assert batch.main.handed == [[0, 1, 2, 3, 4], [1, 4]]
    assert batch.quarantine.opened == 0
    assert_completed(batch, [0, 1, 3, 4])
    assert jobs.starts == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1}


def test_started_jobs_the_pool_does_not_name_go_back_to_the_queue(jobs: Jobs) -> None:
    # a cluster names the job it gave up on (1); it stopped 2 and 3, which were running
    batch = run_batch(
        jobs, 5, Break(delivered=1, running=frozenset({1, 2, 3}), in_flight=frozenset({1}))
    )

    assert isinstance(error_of(batch, 1), WorkerCrashed)
    assert batch.main.handed == [[0, 1, 2, 3, 4], [2, 3, 4]]
    assert batch.quarantine.opened == 0
    assert_completed(batch, [0, 2, 3, 4])


def test_a_pool_that_breaks_before_any_job_starts_still_ends_the_batch(jobs: Jobs) -> None:
    # workers that die at start: twice nothing happens, then the jobs in flight are suspects
    batch = run_batch(jobs, 4, Break(delivered=0), Break(delivered=0), Break(delivered=0))

    assert batch.main.handed == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert batch.quarantine.pool.handed == [[0, 1, 2, 3]]
    assert_completed(batch, range(4))


def test_a_result_the_launcher_cannot_unpickle_fails_its_job_alone(jobs: Jobs) -> None:
    jobs.unloadable = frozenset({1, 3})  # 1 delivered, 3 recovered from its job dir
    batch = run_batch(jobs, 5, Break(delivered=2, ended=frozenset({3}), running=frozenset({2})))

    for num in (1, 3):
        error = error_of(batch, num)
        assert isinstance(error, ResultNotLoadable)
        assert f"job #{num} (x={num}) completed, but the launching process cannot unpickle" in str(
            error
        )
        assert "RuntimeError: refuses to be unpickled" in str(error)
        assert "Return plain data" in str(error)
    assert_completed(batch, [0, 4])
    assert [o.error_type for o in batch.report.ended if o.num in (1, 3)] == [
        "ResultNotLoadable"
    ] * 2


def test_a_job_a_cluster_runs_again_after_it_ended_returns_its_kept_outcome(jobs: Jobs) -> None:
    """Dask computes a task again when the worker holding its result dies before delivering it."""
    from hydra_plugins.hydra_joblib_launcher._run import run_job_spec

    spec = replace(jobs.specs(1)[0], max_worker_deaths=2, context_file="/nonexistent")
    kept = jobs.run_to_end(spec)

    again = run_job_spec(spec)  # would fail to load the context if it ran the job

    assert again.completed and again.num == 0
    assert again.job_return().return_value == 0
    assert (again.started, again.ended, again.return_file) == (
        kept.started,
        kept.ended,
        kept.return_file,
    )
    assert jobs.starts[0] == 1


class UnloadableError(Exception):
    def __reduce__(self) -> object:
        return refuse_to_load, ()


def test_a_failed_job_whose_error_cannot_be_unpickled_keeps_its_error_in_words(
    jobs: Jobs,
) -> None:
    class RaisingPool(FakePool):
        def run(self, specs: Sequence[JobSpec]) -> Iterator[JobOutcome]:
            for spec in specs:
                outcome = self.jobs.run_to_end(spec)
                if spec.num == 1:
                    ret = JobReturn(overrides=list(spec.overrides), status=JobStatus.FAILED)
                    ret._return_value = UnloadableError("bad input")
                    outcome = replace(
                        outcome,
                        completed=False,
                        payload=pickle.dumps(ret),
                        error_type="UnloadableError",
                        error="bad input",
                    )
                yield outcome

    report = FakeReport()
    pool = RaisingPool(jobs)
    returns = supervise(jobs.specs(3), pools=Pools(pool, Quarantine(pool)), report=report)

    error = returns[1]._return_value
    assert returns[1].status == JobStatus.FAILED
    assert "UnloadableError: bad input" in str(error)
    if "__getstate__" not in vars(JobReturn):
        # Hydra 1.3's JobReturn pickles the exception as it is: the launcher says why it
        # could not load it. Hydra 1.4's keeps an error in words itself when it cannot.
        assert "RuntimeError: refuses to be unpickled" in str(error)
    assert "completed" not in str(error)
    failed = [o for o in report.ended if o.num == 1]
    assert [(o.error_type, o.error) for o in failed] == [("UnloadableError", "bad input")]
    assert [returns[n].return_value for n in (0, 2)] == [0, 20]
