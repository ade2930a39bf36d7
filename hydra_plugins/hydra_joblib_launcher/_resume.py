"""Resume: the jobs of a sweep dir that completed before, with the config they would run with now.

    jobs.jsonl: each job's last record ─────────┐
    the records kept in the job dirs (_durable) ─┴▶ the run that ended last, for each job's overrides
        not COMPLETED                        ─▶ run
        recorded without a config digest     ─▶ skipped on its overrides alone (an older launcher's)
        digest ≠ that of its config now      ─▶ run again; the log says which keys changed
        its JobReturn cannot be read back    ─▶ run again, with a warning
        else                                 ─▶ skipped: the sweeper gets the stored JobReturn

The job dirs know what jobs.jsonl may have missed (the launching process was
killed between a job's end and its line): such a job is skipped all the same,
and its record is appended to jobs.jsonl.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from ._digest import changed_keys, config_view, digest, job_view
from ._durable import kept_records, outcome_of, read_return
from ._manifest import iso_time, read_records, record_job
from ._outcome import JobOutcome
from ._plan import JobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Earlier:
    """The last run of a job that the sweep dir knows of."""

    completed: bool
    ended: str  # as jobs.jsonl writes it
    digest: Optional[str]
    return_file: Optional[str]
    missed: Optional[JobOutcome] = None  # known from its job dir alone


def earlier_runs(sweep_dir: Path) -> Dict[Tuple[str, ...], Earlier]:
    """The last run of each job (by overrides), from jobs.jsonl and the job dirs."""
    runs = {
        overrides: Earlier(
            completed=record.get("status") == "COMPLETED",
            ended=record["ended"],
            digest=record.get("config_digest"),
            return_file=record.get("return_file"),
        )
        for overrides, record in read_records(sweep_dir).items()
    }
    for overrides, record in kept_records(sweep_dir).items():
        outcome = outcome_of(record, b"")
        ended = iso_time(outcome.ended)
        known = runs.get(overrides)
        if known is None or ended > known.ended:  # the same run: jobs.jsonl has the last word
            runs[overrides] = Earlier(
                outcome.completed, ended, outcome.config_digest, outcome.return_file, outcome
            )
    return runs


def load_completed(
    specs: Sequence[JobSpec], sweep_dir: Path, *, compose: Callable[[JobSpec], DictConfig]
) -> Dict[int, JobReturn]:
    """JobReturns of the ``specs`` that completed before with their config of now, by job number.

    ``compose`` composes a job's config as its process would. What it skips,
    and why it runs a job again, is logged.
    """
    runs = earlier_runs(sweep_dir)
    found: Dict[int, JobReturn] = {}
    changed: List[Tuple[JobSpec, Earlier, Optional[DictConfig]]] = []
    unchecked, missed = 0, []
    for spec in specs:
        run = runs.get(spec.overrides)
        if run is None or not run.completed:
            continue
        if run.digest is None:
            unchecked += 1
        else:
            config = _composed(compose, spec)
            if config is None or digest(config_view(config)) != run.digest:
                changed.append((spec, run, config))
                continue
        ret = _stored(spec, run)
        if ret is not None:
            found[spec.num] = ret
            if run.missed is not None:
                missed.append((spec, run.missed))
    for spec, outcome in missed:
        record_job(sweep_dir, outcome, spec.overrides)
    _log(changed, unchecked, missed)
    return found


def _composed(compose: Callable[[JobSpec], DictConfig], spec: JobSpec) -> Optional[DictConfig]:
    try:
        return compose(spec)
    except Exception as error:  # noqa: BLE001 - the job itself will say what is wrong
        log.debug(f"#{spec.num}: its config cannot be composed now: {error!r}")
        return None


def _stored(spec: JobSpec, run: Earlier) -> Optional[JobReturn]:
    try:
        return read_return(run.return_file or "")
    except Exception as error:  # noqa: BLE001 - any unreadable result means: run again
        log.warning(
            f"#{spec.num} : {spec.shown} completed before, but its stored result cannot be "
            f"read back ({type(error).__name__}: {error}); running it again"
        )
        return None


def _log(
    changed: List[Tuple[JobSpec, Earlier, Optional[DictConfig]]],
    unchecked: int,
    missed: List[Tuple[JobSpec, JobOutcome]],
) -> None:
    if missed:
        spec = missed[0][0]
        others = "".join(f", #{s.num}" for s, _ in missed[1:])
        their = "its outcome is" if len(missed) == 1 else "their outcomes are"
        log.info(
            f"Resuming: jobs.jsonl missed {_jobs(len(missed))} that completed before (the "
            f"launching process stopped before recording them); {their} read from the job "
            f"dirs: #{spec.num} : {spec.shown}{others}"
        )
    if changed:
        spec, run, config = changed[0]
        log.info(
            f"Resuming: {_jobs(len(changed))} completed before {_run_again(len(changed))}: "
            f"their config changed since they ran; #{spec.num} : {spec.shown} changed: "
            f"{_what_changed(run, config)}"
        )
    if unchecked:
        log.info(
            f"Resuming: {_jobs(unchecked)} recorded without their config's digest (by an older "
            "version of this launcher) are skipped on their overrides alone: a change to the "
            "app's config since they ran is not detected for them"
        )


def _what_changed(run: Earlier, config: Optional[DictConfig]) -> str:
    if config is None:
        return "its config cannot be composed now (the job will say why)"
    try:
        ret = read_return(run.return_file or "")
        if ret.cfg is None or ret.hydra_cfg is None:
            raise ValueError("it holds no config")
        hydra = ret.hydra_cfg._get_node("hydra")
        old = job_view(ret.cfg, hydra if isinstance(hydra, DictConfig) else None)
    except Exception as error:  # noqa: BLE001 - what changed is a courtesy
        return f"(its earlier config cannot be read back: {type(error).__name__}: {error})"
    return ", ".join(changed_keys(old, config_view(config))) or "(no key shows the change)"


def _jobs(n: int) -> str:
    return "1 job" if n == 1 else f"{n} jobs"


def _run_again(n: int) -> str:
    return "runs again" if n == 1 else "run again"
