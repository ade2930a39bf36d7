"""What the user sees of a batch.

* a failure line the moment a job ends badly;
* live progress: a tqdm bar on a terminal, calm log lines elsewhere;
* a summary at the end of every batch;
* each job's record in the manifest, as it ends (see :mod:`._manifest`), and
  the live status file (see :mod:`._status`).

All of it runs in the launching process, on outcomes the workers send anyway.
"""

import logging
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._manifest import MANIFEST, record_job
from ._outcome import JobOutcome
from ._plan import JobSpec
from ._status import LiveStatus
from ._values import show_bytes

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 5.0
SLOWEST_SHOWN = 3
LARGEST_SHOWN = 3  # jobs by their peak memory
FAILURES_SHOWN = 20


def _clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Reporter:
    """Counts, progress, failure lines, the manifest and the summary of one batch."""

    specs: Sequence[JobSpec]
    sweep_dir: Path
    n_workers: int
    progress: str  # auto, bar, log or none
    skipped: int = 0  # jobs a resumed sweep did not run again
    status: Optional[LiveStatus] = None  # status.json, told of every job that ends
    started: float = field(default_factory=time.time)
    ended: Dict[int, JobOutcome] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _bar: Any = None
    _ticker: Optional[threading.Thread] = None

    def __post_init__(self) -> None:
        self._spec_overrides = {spec.num: spec.overrides for spec in self.specs}
        self._overrides = {num: " ".join(o) for num, o in self._spec_overrides.items()}
        mode = self.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.specs), desc="sweep", unit="job", file=sys.stderr)
        elif mode == "log":
            self._ticker = threading.Thread(target=self._tick, name="joblib-progress", daemon=True)
            self._ticker.start()

    # -- figures ---------------------------------------------------------------
    def counts(self) -> Dict[str, int]:
        with self._lock:
            failed = sum(1 for o in self.ended.values() if not o.completed)
            done = len(self.ended)
        left = len(self.specs) - done
        running = min(self.n_workers, left)
        return {
            "completed": done - failed,
            "failed": failed,
            "running": running,
            "waiting": left - running,
        }

    def progress_line(self) -> str:
        c = self.counts()
        done = c["completed"] + c["failed"]
        elapsed = time.time() - self.started
        left = "?" if done == 0 else _clock(elapsed / done * (len(self.specs) - done))
        return (
            f"Progress: {done}/{len(self.specs)} jobs ended ({c['completed']} completed, "
            f"{c['failed']} failed), {c['running']} running, {c['waiting']} waiting; "
            f"elapsed {_clock(elapsed)}, left ~{left}"
        )

    def _tick(self) -> None:
        while not self._stop.wait(LOG_INTERVAL_S):
            log.info(self.progress_line())

    # -- events ----------------------------------------------------------------
    def job_ended(self, outcome: JobOutcome) -> None:
        with self._lock:  # the figures only: the pickled result is written below, not kept
            self.ended[outcome.num] = replace(outcome, payload=b"", configs=b"")
        if not outcome.completed:
            where = (
                outcome.log_file or outcome.output_dir or "no log: the job did not start logging"
            )
            log.error(
                f"#{outcome.num} : {self._overrides.get(outcome.num, '')} FAILED after "
                f"{outcome.duration_s:.1f}s: {outcome.error_type}: {outcome.error} (log: {where})"
            )
        elif outcome.attempts > 1:
            log.info(
                f"#{outcome.num} : {self._overrides.get(outcome.num, '')} completed on attempt "
                f"{outcome.attempts}"
            )
        record_job(self.sweep_dir, outcome, self._spec_overrides[outcome.num])
        if self.status is not None:
            self.status.job_ended(outcome)
        if self._bar is not None:
            c = self.counts()
            self._bar.set_postfix_str(
                f"{c['completed']} ok, {c['failed']} failed, {c['running']} running", refresh=False
            )
            self._bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def interrupted(self) -> None:
        self.close()
        c = self.counts()
        never = len(self.specs) - c["completed"] - c["failed"]
        log.warning(
            f"Interrupted: {c['completed']} jobs completed, {c['failed']} failed, {never} stopped "
            "or never ran. Completed jobs' outputs are kept; hydra.launcher.resume=true runs the rest."
        )

    def summary(self) -> None:
        """Counts by outcome, wall time, failed jobs, the slowest few and the largest few."""
        self.close()
        c = self.counts()
        skipped = f" ({self.skipped} more completed before)" if self.skipped else ""
        log.info(
            f"Batch done in {_clock(time.time() - self.started)}: {len(self.specs)} jobs, "
            f"{c['completed']} completed, {c['failed']} failed{skipped}"
        )
        failed = sorted((o for o in self.ended.values() if not o.completed), key=lambda o: o.num)
        rows: List[str] = [
            f"  #{o.num:<4} FAILED  {self._overrides.get(o.num, '')}  {o.error_type}: {o.error}"
            for o in failed[:FAILURES_SHOWN]
        ]
        if len(failed) > FAILURES_SHOWN:
            rows.append(f"  ... and {len(failed) - FAILURES_SHOWN} more failures in {MANIFEST}")
        if len(self.specs) > 1:
            slowest = sorted(self.ended.values(), key=lambda o: o.duration_s, reverse=True)
            rows += [
                f"  #{o.num:<4} {_clock(o.duration_s):>7}  {self._overrides.get(o.num, '')}"
                for o in slowest[:SLOWEST_SHOWN]
                if o.completed
            ]
            measured = [o for o in self.ended.values() if o.max_rss_bytes]
            largest = sorted(measured, key=lambda o: o.max_rss_bytes or 0, reverse=True)
            rows += [
                f"  #{o.num:<4} {show_bytes(o.max_rss_bytes or 0):>7} peak  "
                f"{self._overrides.get(o.num, '')}"
                for o in largest[:LARGEST_SHOWN]
            ]
        for row in rows:
            log.info(row)
