"""Supervision of a running batch: every job ends with its own outcome, whatever happens to the others.

    specs ──▶ pool.run ──▶ outcome ──▶ report (at once)
                 │
                 └─ PoolBroken (a worker died, taking the pool with it): triage, by what each
                    job's own files say (never by what was handed to the pool)
                      ├─ ended, its outcome kept in its job dir ─▶ that outcome: it never runs again
                      ├─ left a timeout marker      ─▶ FAILED (timeout); those running are innocent: run again
                      ├─ started, in flight, alone  ─▶ FAILED (crash), the culprit
                      ├─ started, in flight, several ─▶ quarantine: each again in a process of its own,
                      │                                 so a crash costs only the job that crashes
                      └─ never started (or stopped by the pool, innocent) ─▶ back in the queue

After two breaks in a row in which no job ended, started or left a marker
(workers that die before they can run anything), the jobs in flight are
suspects anyway, so that every batch ends.

An interrupt (Ctrl-C, SIGTERM) stops the pools, kills what runs, reports the
counts and propagates, so Hydra's own handling still runs.
"""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol, Sequence

from hydra.core.utils import JobReturn

from ._durable import recover
from ._errors import PoolBroken
from ._outcome import (
    JobOutcome,
    crash_error,
    failed_outcome,
    timeout_error,
    unloadable_outcome,
)
from ._plan import JobSpec
from ._pools import Pool, Pools

log = logging.getLogger(__name__)


class Report(Protocol):
    def job_ended(self, outcome: JobOutcome) -> None: ...

    def interrupted(self) -> None: ...

    def close(self) -> None: ...


def supervise(specs: Sequence[JobSpec], *, pools: Pools, report: Report) -> Dict[int, JobReturn]:
    """Run ``specs`` on ``pools.main`` and return every job's JobReturn, by job number.

    Each result is unpickled as it arrives, while other jobs still run, so the
    batch has no tail of unpickling at its end and keeps no pickled copies. A
    result that cannot be unpickled here fails its job alone.
    """
    outcomes: Dict[int, JobReturn] = {}
    by_num = {spec.num: spec for spec in specs}
    pool = pools.main
    running: List[Pool] = [pool]

    def record(outcome: JobOutcome) -> None:
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
        while queue:
            ended = len(outcomes)
            try:
                for outcome in pool.run(queue):
                    record(outcome)
                queue = []
            except PoolBroken as broken:
                unfinished = [spec for spec in queue if spec.num not in outcomes]
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
    timed_out: List[JobSpec]
    suspects: List[JobSpec]  # started, in flight, not ended: one of them may have crashed
    waiting: List[JobSpec]  # never started, or stopped by the pool: to run (again)

    @property
    def fruitless(self) -> bool:
        return not (self.recovered or self.timed_out or self.suspects)


def triage(unfinished: Sequence[JobSpec], broken: PoolBroken, *, blind: bool = False) -> Triage:
    """Sort the jobs without an outcome after ``broken`` by what their files say.

    ``blind``: the previous break was fruitless; every job in flight is a
    suspect, started or not (all of them when the pool names none).
    """
    recovered: List[JobOutcome] = []
    timed_out: List[JobSpec] = []
    suspects: List[JobSpec] = []
    waiting: List[JobSpec] = []
    for spec in unfinished:
        in_flight = spec.num in broken.in_flight or (blind and not broken.in_flight)
        outcome = recover(spec)
        if outcome is not None:
            recovered.append(outcome)
        elif spec.files.timed_out():
            timed_out.append(spec)
        elif in_flight and (blind or spec.files.started()):
            suspects.append(spec)
        else:
            waiting.append(spec)
    return Triage(recovered, timed_out, suspects, waiting)


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
    for spec in found.timed_out:
        record(failed_outcome(spec, timeout_error(spec), started=now))
    if found.recovered or found.waiting:
        parts = [
            _nums("ended before it, their outcomes kept", [o.num for o in found.recovered]),
            _nums("back in the queue", [spec.num for spec in found.waiting]),
        ]
        log.info(f"A worker process died. {'; '.join(part for part in parts if part)}")
    if found.timed_out or not found.suspects:
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


def _nums(what: str, nums: Sequence[int]) -> str:
    return f"{what}: {', '.join(f'#{num}' for num in nums)}" if nums else ""


def _in_order(specs: List[JobSpec]) -> List[JobSpec]:
    return sorted(specs, key=lambda spec: spec.num)
