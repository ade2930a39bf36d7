"""The sweep's manifest (jobs.jsonl): what ``resume`` reads back as the jobs already done.

The last record of a job (by its overrides) decides; a line that is not a job's
record (cut short by a crash of the launcher, or written by something else) is
skipped, never an error.
"""

import json
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.hydra_joblib_launcher._manifest import MANIFEST, read_records, record_job
from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome


def read_completed(sweep_dir: Path) -> Dict[Any, Dict[str, Any]]:
    """The jobs whose last record in the manifest says COMPLETED, by overrides."""
    return {
        key: record
        for key, record in read_records(sweep_dir).items()
        if record.get("status") == "COMPLETED"
    }


def record(overrides: Sequence[str], status: str, num: int = 0) -> Dict[str, Any]:
    return {
        "num": num,
        "overrides": list(overrides),
        "status": status,
        "host": "here",
        "ended": "2026-12-02T12:00:00.000+00:00",
    }


def write_manifest(sweep_dir: Path, lines: List[str]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / MANIFEST).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def lines_of(*records: Any) -> List[str]:
    return [json.dumps(r) for r in records]


def test_no_manifest_means_nothing_completed(tmp_path: Path) -> None:
    assert read_completed(tmp_path) == {}


def test_completed_jobs_are_read_by_overrides_and_failed_ones_are_not(tmp_path: Path) -> None:
    write_manifest(
        tmp_path,
        lines_of(
            record(["a=1"], "COMPLETED", 0),
            record(["a=2"], "FAILED", 1),
            record(["a=3", "b=x"], "COMPLETED", 2),
            record([], "COMPLETED", 3),
        ),
    )
    completed = read_completed(tmp_path)
    assert set(completed) == {("a=1",), ("a=3", "b=x"), ()}
    assert completed[("a=3", "b=x")]["num"] == 2


def test_a_later_failure_of_the_same_job_undoes_its_completion(tmp_path: Path) -> None:
    write_manifest(
        tmp_path,
        lines_of(record(["a=1"], "COMPLETED", 0), record(["a=1"], "FAILED", 5)),
    )
    assert read_completed(tmp_path) == {}


@pytest.mark.parametrize("between", [[], ["FAILED"]], ids=["completed-twice", "after-a-failure"])
def test_a_later_completion_of_the_same_job_wins(tmp_path: Path, between: List[str]) -> None:
    statuses = ["COMPLETED", *between, "COMPLETED"]
    write_manifest(
        tmp_path, lines_of(*(record(["a=1"], status, num) for num, status in enumerate(statuses)))
    )
    completed = read_completed(tmp_path)
    assert list(completed) == [("a=1",)]
    assert completed[("a=1",)]["num"] == len(statuses) - 1


def test_a_last_line_cut_short_is_skipped_and_the_earlier_ones_count(tmp_path: Path) -> None:
    last = json.dumps(record(["a=2"], "COMPLETED", 1))
    (tmp_path / MANIFEST).write_text(
        json.dumps(record(["a=1"], "COMPLETED", 0)) + "\n" + last[: len(last) // 2],
        encoding="utf-8",
    )
    assert set(read_completed(tmp_path)) == {("a=1",)}


@pytest.mark.parametrize(
    "foreign",
    [
        "[1, 2, 3]",
        "42",
        '"a string"',
        "null",
        '{"status": "COMPLETED"}',
        '{"overrides": "a=1", "status": "COMPLETED"}',
        '{"overrides": [1, 2], "status": "COMPLETED"}',
        '{"overrides": ["a=1", null], "status": "COMPLETED"}',
        '{"overrides": {"a": 1}, "status": "COMPLETED"}',
        "",
        "   ",
        "not json at all",
    ],
)
def test_a_foreign_line_is_skipped(tmp_path: Path, foreign: str) -> None:
    write_manifest(
        tmp_path,
        [
            json.dumps(record(["a=1"], "COMPLETED", 0)),
            foreign,
            json.dumps(record(["a=2"], "COMPLETED", 1)),
        ],
    )
    assert set(read_completed(tmp_path)) == {("a=1",), ("a=2",)}


def test_a_foreign_line_undoes_no_completion(tmp_path: Path) -> None:
    """A line without a job's overrides is no FAILED record of the job with no overrides."""
    write_manifest(tmp_path, [json.dumps(record([], "COMPLETED", 0)), '{"note": "hello"}', "[]"])
    assert set(read_completed(tmp_path)) == {()}


def outcome(
    num: int, *, completed: bool, output_dir: Optional[Path], configs: bytes = b""
) -> JobOutcome:
    ret = JobReturn(
        overrides=["a=1"],
        working_dir=str(output_dir),
        task_name="app",
        status=JobStatus.COMPLETED if completed else JobStatus.FAILED,
        _return_value={"loss": 0.5} if completed else RuntimeError("boom"),
    )
    return JobOutcome(
        num=num,
        completed=completed,
        payload=pickle.dumps(ret),
        started=1_700_000_000.0,
        ended=1_700_000_002.5,
        host="here",
        pid=1234,
        output_dir=str(output_dir) if output_dir is not None else None,
        error_type=None if completed else "RuntimeError",
        error=None if completed else "boom",
        devices=("0", "1"),
        configs=configs,
    )


def test_a_recorded_completed_job_is_read_back_with_its_result(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    output_dir = sweep_dir / "0"
    cfg = OmegaConf.create({"a": 1})
    hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": 0}}})
    ended = outcome(
        0, completed=True, output_dir=output_dir, configs=pickle.dumps((cfg, hydra_cfg))
    )

    record_job(sweep_dir, ended, ["a=1"])

    completed = read_completed(sweep_dir)
    assert list(completed) == [("a=1",)]
    entry = completed[("a=1",)]
    assert entry["status"] == "COMPLETED"
    assert entry["num"] == 0
    assert entry["output_dir"] == str(output_dir)
    assert entry["devices"] == ["0", "1"]
    assert entry["duration_s"] == 2.5
    # the job's own process keeps its result (see _durable); the record names no file it did not
    assert entry.get("return_file") is None


def test_a_recorded_failure_of_the_job_undoes_its_completion(tmp_path: Path) -> None:
    record_job(tmp_path, outcome(0, completed=True, output_dir=tmp_path / "0"), ["a=1"])
    record_job(tmp_path, outcome(1, completed=False, output_dir=tmp_path / "0"), ["a=1"])

    assert read_completed(tmp_path) == {}
    failed = json.loads((tmp_path / MANIFEST).read_text().splitlines()[-1])
    assert (failed["status"], failed["error_type"], failed["error"]) == (
        "FAILED",
        "RuntimeError",
        "boom",
    )
