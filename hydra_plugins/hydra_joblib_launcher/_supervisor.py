"""Supervision of a running batch: every job ends with its own outcome, whatever happens to the others.

    specs ──▶ pool.run ──▶ outcome ──▶ report (at once)
                 │
                 └─ PoolBroken (a worker died, taking the pool with it)
                      ├─ in flight, left a timeout marker ─▶ FAILED (timeout); the others are innocent: run again
                      ├─ in flight, the only one          ─▶ FAILED (crash), the culprit
                      ├─ in flight, several               ─▶ quarantine: each again in a process of its own,
                      │                                      so a crash costs only the job that crashes
                      └─ never dispatched                 ─▶ back in the queue

An interrupt (Ctrl-C, SIGTERM) stops the pools, kills what runs, reports the
counts and propagates, so Hydra's own handling still runs.
"""

import logging
import time
from typing import Callable, Dict, List, Protocol, Sequence

from hydra.core.utils import JobReturn

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
    try:
        while queue:
            try:
                for outcome in pool.run(queue):
                    record(outcome)
                queue = []
            except PoolBroken as broken:
                queue = _after_break(queue, broken, outcomes, record, pools.quarantine, running)
    except BaseException as error:  # nothing more starts, nothing is left running
        for each in reversed(running):
            each.stop()
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            report.interrupted()
        else:
            report.close()
        raise
    return outcomes


def _after_break(
    queue: List[JobSpec],
    broken: PoolBroken,
    outcomes: Dict[int, JobReturn],
    record: Callable[[JobOutcome], None],
    quarantine: Callable[[], Pool],
    running: List[Pool],
) -> List[JobSpec]:
    """Settle the jobs a broken pool left behind; return those to run again on the pool."""
    now = time.time()
    unfinished = [spec for spec in queue if spec.num not in outcomes]
    in_flight = [spec for spec in unfinished if spec.num in broken.in_flight]
    later = [spec for spec in unfinished if spec.num not in broken.in_flight]
    timed_out = [spec for spec in in_flight if spec.files.timed_out()]
    for spec in timed_out:
        record(failed_outcome(spec, timeout_error(spec), started=now))
    suspects = [spec for spec in in_flight if spec not in timed_out]
    if timed_out or not suspects:
        return suspects + later
    if len(suspects) == 1:
        record(
            failed_outcome(
                suspects[0], crash_error(suspects[0], f"died {broken.exit_codes}"), started=now
            )
        )
        return later
    log.warning(
        "A worker process died while jobs %s were in flight; running them again, each in a "
        "process of its own, so that only the job that crashed fails",
        ", ".join(f"#{spec.num}" for spec in suspects),
    )
    isolated = quarantine()
    running.append(isolated)
    for outcome in isolated.run(suspects):
        record(outcome)
    running.remove(isolated)
    return later
