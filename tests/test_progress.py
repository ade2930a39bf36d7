"""What a user sees of a running sweep, and what stays on disk after it.

* progress: calm log lines (``progress=log``) at most every few seconds, a tqdm
  bar (``progress=bar``), or nothing (``progress=none``);
* a failure line the moment a job fails, not at the end of the batch;
* a summary of the batch;
* ``jobs.jsonl``, one JSON record per job.

Each test runs tests/apps/faulty.py or tests/apps/paced.py as a user would.
"""

import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import APPS, Run, run_app

BACKENDS = ["loky", "multiprocessing"]
NAMES = "abcdef"

# Hydra's log lines start with "[2024-01-31 12:00:00,123]", in local time
STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]"
PROGRESS = re.compile(
    STAMP + r".*Progress: (\d+)/(\d+) jobs ended \((\d+) completed, (\d+) failed\), "
    r"(\d+) running, (\d+) waiting; elapsed (\d+):(\d\d), left ~(\d+:\d\d|\?)$",
    re.MULTILINE,
)


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _stamp_of(output: str, text: str) -> float:
    match = re.search(STAMP + r".*" + re.escape(text), output)
    assert match, f"no log line with {text!r} in:\n{output}"
    return _epoch(match.group(1))


def faulty_sweep(sweep_dir: Path, *extra: str, backend: str = "loky") -> Run:
    return run_app(
        APPS / "faulty.py",
        [
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
            f"+name={','.join(NAMES)}",
            *extra,
        ],
        cwd=sweep_dir.parent,
    )


# -- progress ------------------------------------------------------------------------------------


def test_progress_log_lines_are_consistent_and_a_few_seconds_apart(sweep_dir: Path) -> None:
    # 6 jobs of 4 s on 2 workers: about 12 s, so at least two progress lines
    run = faulty_sweep(sweep_dir, "hydra.launcher.progress=log", "+work=4")

    assert run.returncode == 0, run.output
    lines = PROGRESS.findall(run.stdout)
    assert len(lines) >= 2, run.stdout
    stamps = []
    previous_ended = previous_elapsed = 0
    for stamp, ended, total, completed, failed, running, waiting, minutes, seconds, left in lines:
        ended, total, completed, failed, running, waiting = map(
            int, (ended, total, completed, failed, running, waiting)
        )
        elapsed = int(minutes) * 60 + int(seconds)
        assert total == 6
        assert ended == completed + failed
        assert completed + failed + running + waiting == 6
        assert running <= 2
        assert failed == 0
        assert ended >= previous_ended and elapsed >= previous_elapsed
        if ended == 0:
            assert left == "?"
        previous_ended, previous_elapsed = ended, elapsed
        stamps.append(_epoch(stamp))
    # the first after about LOG_INTERVAL_S, then no more often than that
    launched = _stamp_of(run.stdout, "Launching jobs, sweep output dir")
    assert stamps[0] - launched >= 4.5, run.stdout
    assert int(lines[0][7]) * 60 + int(lines[0][8]) >= 4
    for before, after in zip(stamps, stamps[1:]):
        assert after - before >= 4.5, run.stdout
    assert "Batch done" in run.stdout
    # progress lines stop with the batch
    assert run.stdout.rindex("Progress: ") < run.stdout.index("Batch done")


def test_progress_bar_is_a_tqdm_bar_on_stderr(sweep_dir: Path) -> None:
    run = faulty_sweep(sweep_dir, "hydra.launcher.progress=bar", "+work=0.3")

    assert run.returncode == 0, run.output
    # tqdm redraws with carriage returns; its last state is the full bar
    assert re.search(r"sweep: 100%\|.*\| 6/6 \[", run.stderr), run.stderr
    assert "6 ok, 0 failed" in run.stderr
    assert "Progress: " not in run.output


# -- a failure is reported when it happens; the summary at the end -------------------------------


@dataclass
class Watched:
    """A sweep whose output was read as it came, line by line."""

    output: str
    returncode: int
    sweep_dir: Path
    # the failure line, and whether the slow job had finished when it was read
    failure_line: Optional[str]
    slow_done_when_failure_seen: Optional[bool]


@pytest.fixture(scope="module", params=BACKENDS)
def early_failure(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Watched:
    """a raises after 0.2 s, b works 8 s, c to f 0.2 s each: a's failure is long before b ends."""
    sweep_dir = tmp_path_factory.mktemp(f"progress-{request.param}") / "sweep"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-Werror",
            str(APPS / "paced.py"),
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={request.param}",
            "hydra.launcher.n_jobs=2",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={sweep_dir}",
            f"+name={','.join(NAMES)}",
            "+work=0.2",
            "+slow.b=8",
            "+modes.a=raise",
        ],
        cwd=sweep_dir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: List[str] = []
    failure_line = None
    slow_done = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # as the launcher writes it: no buffering hides a line
            lines.append(line)
            if failure_line is None and "#0 : " in line and "FAILED" in line:
                failure_line = line.rstrip("\n")
                slow_done = (sweep_dir / "1" / "done.marker").exists()
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return Watched("".join(lines), proc.returncode, sweep_dir, failure_line, slow_done)


def test_a_failure_is_reported_while_the_other_jobs_still_run(early_failure: Watched) -> None:
    output = early_failure.output
    line = early_failure.failure_line
    assert line is not None, output
    assert "+name=a" in line and "ValueError: job a failed on purpose" in line
    assert str(early_failure.sweep_dir / "0" / "paced.log") in line  # the job's own log
    # read while the slow healthy job b was still working, and logged before it ended
    assert early_failure.slow_done_when_failure_seen is False
    b_ended = _manifest(early_failure.sweep_dir)[1]["ended"]
    stamp = re.match(STAMP, line)
    assert stamp, line
    assert _epoch(stamp.group(1)) < datetime.fromisoformat(b_ended).timestamp()
    assert output.index(line) < output.index("Batch done")


def test_the_summary_counts_the_jobs_and_lists_the_failed_one(early_failure: Watched) -> None:
    output = early_failure.output
    assert early_failure.returncode != 0  # Hydra's basic sweeper re-raises the failure
    assert re.search(r"Batch done in \d+:\d\d: 6 jobs, 5 completed, 1 failed\n", output), output
    summary = output[output.index("Batch done") :]
    assert re.search(
        r"#0\s+FAILED\s+\+name=a \S.* ValueError: job a failed on purpose\n", summary
    ), summary
    assert not re.search(r"#[1-5]\s+FAILED", summary), summary
    # the slowest completed job is shown: b
    assert re.search(r"#1\s+\d+:\d\d\s+\+name=b ", summary), summary


def test_progress_none_prints_no_progress(early_failure: Watched) -> None:
    # the batch lasts about 8 s: progress=log would have printed a line
    assert "Progress: " not in early_failure.output
    assert "sweep: " not in early_failure.output  # nor a bar


# -- the manifest --------------------------------------------------------------------------------


def _manifest(sweep_dir: Path) -> Dict[int, Dict[str, Any]]:
    records: Dict[int, Dict[str, Any]] = {}
    for line in (sweep_dir / "jobs.jsonl").read_text().splitlines():
        record = json.loads(line)  # every line is a JSON object of its own
        assert record["num"] not in records, f"job #{record['num']} has two records"
        records[record["num"]] = record
    return records


@pytest.fixture(scope="module", params=BACKENDS)
def raise_and_crash(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """b raises ValueError, d kills its process (os._exit(3)); the others complete."""
    sweep_dir = tmp_path_factory.mktemp(f"manifest-{request.param}") / "sweep"
    run = faulty_sweep(
        sweep_dir,
        "hydra.launcher.progress=none",
        "+work=0.3",
        "+modes.b=raise",
        "+modes.d=exit",
        backend=request.param,
    )
    assert run.returncode != 0
    assert "6 jobs, 4 completed, 2 failed" in run.stdout, run.output
    return sweep_dir


FIELDS = {
    "num", "overrides", "status", "started", "ended", "duration_s", "host", "pid", "output_dir"
}


def test_the_manifest_has_one_record_per_job(raise_and_crash: Path) -> None:
    sweep_dir = raise_and_crash
    records = _manifest(sweep_dir)
    assert sorted(records) == list(range(6))
    for num, record in records.items():
        assert FIELDS <= set(record), record
        assert record["overrides"][0] == f"+name={NAMES[num]}"
        assert "+work=0.3" in record["overrides"]
        started = datetime.fromisoformat(record["started"]).timestamp()
        ended = datetime.fromisoformat(record["ended"]).timestamp()
        assert ended >= started
        assert abs(record["duration_s"] - (ended - started)) < 0.01
        assert record["host"] == socket.gethostname()
        if NAMES[num] == "d":
            continue
        assert isinstance(record["pid"], int)
        assert record["output_dir"] == str(sweep_dir / str(num))
        assert record["duration_s"] >= 0.3  # the job's work

    completed = [n for n, r in records.items() if r["status"] == "COMPLETED"]
    assert sorted(completed) == [0, 2, 4, 5]
    for num in completed:
        assert "error_type" not in records[num] and "error" not in records[num]

    raised, crashed = records[1], records[3]
    assert raised["status"] == "FAILED"
    assert raised["error_type"] == "ValueError"
    assert raised["error"] == "job b failed on purpose"
    assert crashed["status"] == "FAILED"
    assert crashed["error_type"] == "WorkerCrashed"
    assert crashed["error"].startswith("job #3 (+name=d +work=0.3 +modes.b=raise +modes.d=exit)")
    assert "exited with status 3" in crashed["error"]


def test_the_manifest_names_the_output_dir_of_a_crashed_job(raise_and_crash: Path) -> None:
    crashed = _manifest(raise_and_crash)[3]
    assert crashed["output_dir"] == str(raise_and_crash / "3")
    assert (raise_and_crash / "3" / "faulty.log").exists()
    assert crashed["log_file"] == str(raise_and_crash / "3" / "faulty.log")


def test_a_job_crashing_alone_on_loky_is_recorded_with_the_time_it_ran(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run = run_app(
        APPS / "faulty.py",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.backend=loky",
            "hydra.launcher.progress=none",
            f"hydra.sweep.dir={sweep_dir}",
            "+name=a",
            "+work=2",
            "+modes.a=exit",
        ],
        cwd=tmp_path,
    )
    assert run.returncode != 0
    record = _manifest(sweep_dir)[0]
    assert record["error_type"] == "WorkerCrashed"
    assert record["duration_s"] >= 1.5, record  # it worked 2 s before it exited
    assert isinstance(record["pid"], int), record


def test_the_manifest_reads_as_a_table_with_pandas(raise_and_crash: Path) -> None:
    pandas = pytest.importorskip("pandas")
    table = pandas.read_json(raise_and_crash / "jobs.jsonl", lines=True)
    assert len(table) == 6
    assert FIELDS <= set(table.columns)
    by_num = table.set_index("num")
    assert by_num.loc[1, "error_type"] == "ValueError"
    assert by_num.loc[3, "error_type"] == "WorkerCrashed"
    assert (table["status"] == "COMPLETED").sum() == 4
