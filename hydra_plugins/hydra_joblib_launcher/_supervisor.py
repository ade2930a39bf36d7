"""Supervision of a running batch: every job ends with its own outcome, whatever happens to the others.

    specs ──▶ pool.run ──▶ outcome ──▶ report (at once)
                 │
                 └─ PoolBroken (a worker died, taking the pool with it): triage, by what each
                    job's own files say (never by what was handed to the pool)
                      ├─ ended, its outcome kept in its job dir ─▶ that outcome: it never runs again
                      ├─ left a timeout or memory marker ─▶ FAILED (its limit); those running are
                      │                                 innocent: run again
                      ├─ started, in flight, alone, or the one whose worker the pool saw
                      │  die first ─▶ FAILED (crash), the culprit; the others: back in the queue
                      ├─ started, in flight, several ─▶ quarantine: each again in a process of its own,
                      │                                 so a crash costs only the job that crashes
                      └─ never started (or stopped by the pool, innocent) ─▶ back in the queue

A job that crashed, or that a limit named in ``retry_on`` stopped, runs again
(``retries`` times at most), each time in a process of its own, after the
pass that ended it; a job that raised never does. Only its last attempt's
outcome is reported.

After two breaks in a row in which no job ended, started or left a marker
(workers that die before they can run anything), the jobs in flight are
suspects anyway, so that every batch ends.

An interrupt (Ctrl-C, SIGTERM) stops the pools, kills what runs, reports the
counts and propagates, so Hydra's own handling still runs.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol, Sequence, Tuple

from hydra.core.utils import JobReturn

from ._durable import recover
from ._errors import PoolBroken
from ._outcome import (
    JobOutcome,
    crash_error,
    death_error,
    failed_outcome,
    unloadable_outcome,
)
from ._plan import JobSpec
from ._pools import Pool, Pools

log = logging.getLogger(__name__)


class Report(Protocol):
    def job_ended(self, outcome: JobOutcome) -> None: ...

    def interrupted(self) -> None: ...

    def close(self) -> None: ...


# The error types each word of ``hydra.launcher.retry_on`` stands for.
RETRY_CAUSES = {"crash": "WorkerCrashed", "timeout": "JobTimeout", "memory": "MemoryLimitExceeded"}


@dataclass(frozen=True)
class Retries:
    """``hydra.launcher.retries`` and ``retry_on``: how often, and after what, a job runs again."""

    retries: int = 0
    retry_on: Tuple[str, ...] = ("crash",)

    def again(self, outcome: JobOutcome) -> bool:
        """Whether the job that ended so runs again."""
        causes = {RETRY_CAUSES[word] for word in self.retry_on}
        return (
            not outcome.completed
            and outcome.error_type in causes
            and outcome.attempts <= self.retries
        )


def supervise(
    specs: Sequence[JobSpec],
    *,
    pools: Pools,
    report: Report,
    retries: Retries = Retries(),
) -> Dict[int, JobReturn]:
    """Run ``specs`` on ``pools.main`` and return every job's JobReturn, by job number.

    Each result is unpickled as it arrives, while other jobs still run, so the
    batch has no tail of unpickling at its end and keeps no pickled copies. A
    result that cannot be unpickled here fails its job alone.
    """
    outcomes: Dict[int, JobReturn] = {}
    by_num = {spec.num: spec for spec in specs}
    pool = pools.main
    running: List[Pool] = [pool]
    again: List[JobSpec] = []  # to run again, after this pass

    def record(outcome: JobOutcome) -> None:
        if retries.again(outcome):
            again.append(_next_attempt(by_num[outcome.num], outcome, retries))
            return
        try:
            ret = outcome.job_return()
        except Exception as error:  # noqa: BLE001 - whatever unpickling raises: that job alone fails
            outcome = unloadable_outcome(by_num[outcome.num], outcome, error)
            ret = outcome.job_return()
        outcomes[outcome.num] = ret
        report.job_ended(outcome)

    queue = list(specs)
    fruitless = 0  # breaks in a row in which no job ended, started or left a marker
    try:
        while queue or again:
            if not queue:  # the retries, each in a process of its own
                queue, again[:] = _in_order(again), []
                pool = pools.quarantine()
                running.append(pool)
            ended = len(outcomes)
            try:
                for outcome in pool.run(queue):
                    record(outcome)
                queue = []
            except PoolBroken as broken:
                retrying = {spec.num for spec in again}  # ended; their next attempt waits
                unfinished = [
                    spec for spec in queue if spec.num not in outcomes and spec.num not in retrying
                ]
                found = triage(unfinished, broken, blind=fruitless > 0)
                progress = len(outcomes) > ended or not found.fruitless
                fruitless = 0 if progress else fruitless + 1
                queue = _settle(found, broken, record, pools.quarantine, running)
    except BaseException as error:  # nothing more starts, nothing is left running
        for each in reversed(running):
            each.stop()
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            report.interrupted()
        else:
            report.close()
        raise
    return outcomes


@dataclass(frozen=True)
class Triage:
    """What a broken pool left behind, job by job (see the module's docstring)."""

    recovered: List[JobOutcome]  # ended: the outcome the job kept
    stopped: List[JobSpec]  # its own limit (time, memory) killed its process
    suspects: List[JobSpec]  # started, in flight, not ended: one of them may have crashed
    waiting: List[JobSpec]  # never started, or stopped by the pool: to run (again)

    @property
    def fruitless(self) -> bool:
        return not (self.recovered or self.stopped or self.suspects)


def triage(unfinished: Sequence[JobSpec], broken: PoolBroken, *, blind: bool = False) -> Triage:
    """Sort the jobs without an outcome after ``broken`` by what their files say.

    ``blind``: the previous break was fruitless; every job in flight is a
    suspect, started or not (all of them when the pool names none).
    """
    recovered: List[JobOutcome] = []
    stopped: List[JobSpec] = []
    suspects: List[JobSpec] = []
    waiting: List[JobSpec] = []
    for spec in unfinished:
        in_flight = spec.num in broken.in_flight or (blind and not broken.in_flight)
        outcome = recover(spec)
        if outcome is not None:
            recovered.append(outcome)
        elif spec.files.timed_out() or spec.files.over_memory() is not None:
            stopped.append(spec)
        elif in_flight and (blind or spec.files.started()):
            # the pool saw which worker died first: the others were killed after it
            known = broken.culprit is not None and not blind
            (suspects if not known or spec.num == broken.culprit else waiting).append(spec)
        else:
            waiting.append(spec)
    return Triage(recovered, stopped, suspects, waiting)


def _settle(
    found: Triage,
    broken: PoolBroken,
    record: Callable[[JobOutcome], None],
    quarantine: Callable[[], Pool],
    running: List[Pool],
) -> List[JobSpec]:
    """Give every job of ``found`` its outcome, or return it to run again on the pool."""
    now = time.time()
    for outcome in found.recovered:
        record(outcome)
    for spec in found.stopped:
        record(failed_outcome(spec, death_error(spec, ""), started=now))
    if found.recovered or found.waiting:
        parts = [
            _nums("ended before it, their outcomes kept", [o.num for o in found.recovered]),
            _nums("back in the queue", [spec.num for spec in found.waiting]),
        ]
        said = "; ".join(part for part in parts if part)
        log.info(f"A worker process died. {said[:1].upper()}{said[1:]}")
    if found.stopped or not found.suspects:
        return _in_order(found.suspects + found.waiting)
    if len(found.suspects) == 1:
        culprit = found.suspects[0]
        record(
            failed_outcome(culprit, crash_error(culprit, f"died {broken.exit_codes}"), started=now)
        )
        return _in_order(found.waiting)
    log.warning(
        "A worker process died while jobs %s were running; running them again, each in a "
        "process of its own, so that only the job that crashed fails",
        ", ".join(f"#{spec.num}" for spec in found.suspects),
    )
    isolated = quarantine()
    running.append(isolated)
    for outcome in isolated.run(found.suspects):
        record(outcome)
    running.remove(isolated)
    return _in_order(found.waiting)


def _next_attempt(spec: JobSpec, outcome: JobOutcome, retries: Retries) -> JobSpec:
    """``spec`` for its next attempt, its files cleared; the attempt that ended said so."""
    message = (
        f"Job #{spec.num} ({spec.shown}) failed on attempt {outcome.attempts} of "
        f"{retries.retries + 1}: {outcome.error_type}: {(outcome.error or '').rstrip('.')}; "
        "running it again in "
        "a process of its own"
    )
    log.warning(message)
    spec.files.warn_in_log(message)
    spec.files.forget_attempt()
    return dataclasses.replace(spec, attempt=outcome.attempts + 1)


def _nums(what: str, nums: Sequence[int]) -> str:
    return f"{what}: {', '.join(f'#{num}' for num in nums)}" if nums else ""


def _in_order(specs: List[JobSpec]) -> List[JobSpec]:
    return sorted(specs, key=lambda spec: spec.num)
