"""Watching a sweep from its dir alone: ``status.json``, ``hydra-joblib status`` and ``report``.

One sweep of tests/apps/watched.py runs in the background as a user starts it:
while two of its jobs wait on a gate, ``hydra-joblib status`` must show the
counts and the running jobs, ``--json`` must agree with ``jobs.jsonl``; after
SIGKILL of the launcher, status must say it is gone and print a command that
resumes the sweep, which then finishes; ``report`` then writes a report.html
whose timeline, rendered by headless Chromium, holds one bar per job.
"""

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from conftest import APPS, app_env, jobs, session_processes, start_app
from fakes import crashed

from hydra_plugins.hydra_joblib_launcher import _status
from hydra_plugins.hydra_joblib_launcher._plan import JobSpec

HYDRA_JOBLIB = Path(sys.executable).parent / "hydra-joblib"  # the console script
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI") == "true"


def cli(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    command = (
        [sys.executable, "-m", "hydra_plugins.hydra_joblib_launcher"]
        if module
        else [str(HYDRA_JOBLIB)]
    )
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=app_env({"COLUMNS": "200"}),
    )


def status_file(sweep_dir: Path) -> Dict[str, Any]:
    try:
        return json.loads((sweep_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(sweep_dir: Path, counts: Dict[str, int], within: float = 60) -> Dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = status_file(sweep_dir)
        if status and all(status["counts"][k] == v for k, v in counts.items()):
            return status
        time.sleep(0.1)
    raise AssertionError(f"status.json never showed {counts}: {status_file(sweep_dir)}")


def assert_plain(text: str) -> None:
    """Readable in an 80-column terminal and a CI log: no escape codes, no long lines but commands and paths."""
    assert "\x1b" not in text
    for line in text.splitlines():
        if not line.lstrip().startswith(("cd ", "log: ")):
            assert len(line) <= 80, line


class _Fetches(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: List[str] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        for name, value in attrs:  # script bodies are not parsed: plotly.js's strings don't count
            if name in ("src", "href") and value and not value.startswith("#"):
                self.found.append(f"<{tag} {name}={value}>")


def fetched(page: str) -> List[str]:
    """What a browser would fetch to show ``page``: its tags' src and href."""
    parser = _Fetches()
    parser.feed(page)
    return parser.found


def render(html_file: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran in headless Chromium, with no network."""
    profile = Path(tempfile.mkdtemp(dir=tmp_path, prefix="chromium-"))
    run = subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_status_of_a_running_sweep_then_of_a_killed_one_then_its_report(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    gate = tmp_path / "gate"
    gate.touch()
    # 2 workers: x=1 completes, x=2 fails, x=3 and x=4 run until the gate goes, x=5 waits
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        "+x=1,2,3,4,5",
        "+fail=[2]",
        f"+gate={gate}",
        "+gated=[3,4,5]",
    ]
    proc = start_app(
        APPS / "watched.py", args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        live = wait_for(sweep_dir, {"completed": 1, "failed": 1, "running": 2, "waiting": 1})
        assert {job["num"] for job in live["running"]} == {2, 3}
        assert live["launcher"]["pid"] == proc.pid and live["state"] == "running"

        shown = cli("status", str(sweep_dir))
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert_plain(text)
        assert "5 jobs: 1 completed, 1 failed, 2 running, 1 waiting" in text, text
        assert re.search(r"running \(updated \d+:\d\d ago\)", text), text
        assert "left ~" in text, text
        for num, x in ((2, 3), (3, 4)):
            assert re.search(rf"#{num} +\d+:\d\d  {socket.gethostname()}:\d+ +\+x={x} ", text), text
        assert "ValueError: job x=2 failed on purpose" in text, text
        assert f"log: {sweep_dir / '1' / 'watched.log'}" in text, text
        assert "Resume it with" not in text, text

        as_json = json.loads(cli("status", str(sweep_dir), "--json").stdout)
        assert as_json["state"] == "running" and as_json["launcher_alive"] is True
        assert as_json["jobs"] == jobs(sweep_dir)
        assert [job["num"] for job in as_json["status"]["running"]] == [2, 3]
        assert as_json["resume_command"] is None

        # a report made now draws the running jobs too
        assert cli("report", str(sweep_dir), "-o", str(tmp_path / "live.html")).returncode == 0
        live_page = (tmp_path / "live.html").read_text()
        assert live_page.count('"name":"running"') == 1 and "RUNNING for" in live_page
    finally:
        os.kill(
            proc.pid, signal.SIGKILL
        )  # the launcher alone: its workers lead groups of their own
        proc.wait()
    deadline = time.monotonic() + 15
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)

    gone = cli("status", str(sweep_dir), module=True)  # python -m ... too
    assert gone.returncode == 0, gone.stderr
    assert_plain(gone.stdout)
    assert "GONE: its process is gone" in gone.stdout, gone.stdout
    assert "#2 " not in gone.stdout.split("Failed")[0], "a dead launcher's jobs shown as running"
    command = gone.stdout.split("Resume it with:\n")[1].strip()
    assert command == json.loads(cli("status", str(sweep_dir), "--json").stdout)["resume_command"]
    assert f"hydra.launcher.resume=true hydra.sweep.dir={sweep_dir}" in command, command

    # The printed command resumes the sweep: what completed is skipped, the rest runs,
    # while `status --watch` (not on a terminal: a new table at each change) follows it
    resumed = subprocess.Popen(
        ["bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=app_env(),
    )
    try:
        wait_for(sweep_dir, {"completed": 0, "failed": 1, "running": 2, "skipped": 1})
        with subprocess.Popen(
            [str(HYDRA_JOBLIB), "status", str(sweep_dir), "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE,
            text=True,
        ) as watch:
            assert watch.stdout is not None
            first_line = watch.stdout.readline()  # the first table is out: the jobs may end
            gate.unlink()
            watched = first_line + watch.stdout.read()  # until it ends, with the sweep
        resumed_output, _ = resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.communicate()
    assert "Resuming: 1 jobs completed before are skipped, 4 run" in resumed_output, resumed_output
    assert watch.returncode == 0 and watched.count("Sweep ") >= 2, watched
    assert_plain(watched)
    first, last = watched.split("Sweep ")[1], watched.split("Sweep ")[-1]
    assert "4 jobs: 0 completed, 1 failed, 2 running, 1 waiting; 1 skipped" in first, watched
    assert "finished at" in last and "0 running, 0 waiting" in last, watched
    finished = cli("status", str(sweep_dir), "--watch")  # ended: shown once
    assert finished.returncode == 0 and finished.stdout.count("Sweep ") == 1, finished.stdout
    assert_plain(finished.stdout)
    assert "finished at" in finished.stdout, finished.stdout
    assert "4 jobs: 3 completed, 1 failed, 0 running, 0 waiting; 1 skipped" in finished.stdout
    records = jobs(sweep_dir)
    assert {r["num"]: r.get("value") for r in records} == {
        0: 1.0,
        1: None,
        2: 9.0,
        3: 16.0,
        4: 25.0,
    }

    report = cli("report", str(sweep_dir))
    assert report.returncode == 0, report.stderr
    page = (sweep_dir / "report.html").read_text()
    assert fetched(page) == []  # self-contained: no script, style or image from elsewhere
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    dom = render(sweep_dir / "report.html", tmp_path)
    assert 'id="script-error" class="error" hidden' in dom, "the page hit a script error"
    bars = re.findall(r'<g class="point">', dom)
    assert len(bars) == len({r["num"] for r in records}) == 5, dom[-3000:]  # x=2 ran twice
    assert "ValueError: job x=2 failed on purpose" in dom
    assert "<th>returned</th>" in dom and ">25.0</td>" in dom

    # Without status.json (a sweep of an older version), the command is rebuilt from multirun.yaml
    (sweep_dir / "status.json").unlink()
    unknown = cli("status", str(sweep_dir)).stdout
    assert "Launcher  unknown: no status.json" in unknown, unknown
    assert "Ended     5 jobs: 4 completed, 1 failed" in unknown, unknown
    rebuilt = unknown.split("If it stopped short, resume it with (rebuilt from multirun.yaml):\n")[
        1
    ]
    assert rebuilt.strip() == (
        f"cd {tmp_path} && python watched.py --multirun hydra/launcher=joblib "
        f"hydra.launcher.n_jobs=2 +x=1,2,3,4,5 '+fail=[2]' +gate={gate} '+gated=[3,4,5]' "
        f"hydra.launcher.resume=true hydra.sweep.dir={sweep_dir}"
    ), unknown


def test_status_tells_a_launcher_not_heard_from_on_another_host(tmp_path: Path) -> None:
    def status_of(age: float) -> subprocess.CompletedProcess:
        now = time.time()
        status = {
            "format": 1,
            "state": "running",
            "updated": "2026-01-31T12:00:00.000+00:00",
            "updated_ts": now - age,
            "launcher": {
                "host": "another-host",
                "pid": 1,
                "argv": ["app.py", "-m", "+x=1,2"],
                "python": "python3",
                "cwd": "/home/me/project",
            },
            "sweep_dir": "/shared/sweep",
            "batch": 1,
            "batch_started": "2026-01-31T12:00:00.000+00:00",
            "jobs": 2,
            "counts": {"completed": 0, "failed": 0, "running": 1, "waiting": 1, "skipped": 0},
            "running": [],
            "eta_s": None,
        }
        (tmp_path / "status.json").write_text(json.dumps(status))
        return cli("status", str(tmp_path), module=True)

    recent = status_of(5)
    assert re.search(r"running \(updated 0:(0\d|1\d) ago\)", recent.stdout), recent.stdout
    silent = status_of(600)
    assert "GONE: not heard from" in silent.stdout, silent.stdout
    assert (
        "cd /home/me/project && python3 app.py -m +x=1,2 hydra.launcher.resume=true "
        "hydra.sweep.dir=/shared/sweep"
    ) in silent.stdout, silent.stdout


@pytest.mark.parametrize(
    "args, files, message",
    [
        (["status", "{dir}/nowhere"], {}, "nowhere does not exist"),
        (
            ["status", "{dir}"],
            {},
            "is not a sweep dir: it holds none of status.json, jobs.jsonl or multirun.yaml",
        ),
        (["report", "{dir}"], {"0/.hydra/config.yaml": "a: 1\n"}, "is not a sweep dir"),
        (["status", "{dir}/file"], {"file": ""}, "file is not a directory"),
        (["status", "{dir}"], {"status.json": '{"format": 99}'}, "status format 99, by a newer"),
        (["status", "{dir}"], {"status.json": "{not json"}, "status.json cannot be read"),
        (["status", "{dir}"], {"status.json": "[1]"}, "is not a status file"),
        (
            ["report", "{dir}"],
            {"jobs.jsonl": '{"format": 2, "overrides": [], "ended": "x"}\n'},
            "manifest format 2, by a newer",
        ),
        (["status", "{dir}", "--watch", "--json"], {}, "--watch and --json go apart"),
        (
            ["status", "{dir}", "--interval", "0"],
            {},
            "--interval 0: give a number of seconds above 0",
        ),
        (["status"], {}, "the following arguments are required: SWEEP_DIR"),
        (["watch", "{dir}"], {}, "invalid choice: 'watch'"),
        ([], {}, "the following arguments are required: COMMAND"),
    ],
)
def test_bad_arguments_each_give_their_error(
    tmp_path: Path, args: List[str], files: Dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    run = cli(*(arg.format(dir=tmp_path) for arg in args), module=True)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_sigterm_leaves_the_sweep_interrupted_with_the_command_that_resumes_it(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "sweep"
    gate = tmp_path / "gate"
    gate.touch()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-Werror",
            str(APPS / "watched.py"),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep_dir}",
            "+x=1,2,3",
            f"+gate={gate}",
            "+gated=[2,3]",
        ],
        cwd=tmp_path,
        env=app_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(sweep_dir, {"completed": 1, "running": 2})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
    finally:
        gate.unlink()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert status_file(sweep_dir)["state"] == "interrupted"
    shown = cli("status", str(sweep_dir))
    assert "interrupted at" in shown.stdout, shown.stdout
    assert "3 jobs: 1 completed, 0 failed, 2 stopped, 0 waiting" in shown.stdout, shown.stdout
    assert "hydra.launcher.resume=true" in shown.stdout.split("Resume it with:")[1], shown.stdout


# -- the launcher's side, in one process --------------------------------------------------------


def test_live_status_follows_the_started_markers_and_ends_with_the_error(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    specs = [
        JobSpec(num=n, overrides=(f"x={n}",), context_file="", marker_dir=str(markers))
        for n in (4, 5, 6)
    ]
    live = _status.LiveStatus(specs, sweep_dir=tmp_path, n_workers=2, skipped=4)
    try:
        first = status_file(tmp_path)
        assert first["counts"] == {
            "completed": 0,
            "failed": 0,
            "running": 0,
            "waiting": 3,
            "skipped": 4,
        }
        assert first["launcher"]["pid"] == os.getpid() and first["batch"] == 1
        specs[0].files.note_started(
            {"pid": 123, "host": "h", "started": time.time(), "devices": ["1"]}
        )
        running = wait_for(tmp_path, {"running": 1}, within=5)["running"]
        assert [(job["num"], job["pid"], job["devices"]) for job in running] == [(4, 123, ["1"])]
        live.job_ended(crashed(specs[0]))
        wait_for(tmp_path, {"running": 0, "failed": 1, "waiting": 2}, within=5)
    finally:
        live.end("failed", error=RuntimeError("the pool could not start"))
    ended = status_file(tmp_path)
    assert ended["state"] == "failed" and ended["error"] == "RuntimeError: the pool could not start"
    # a second batch of the same process counts on
    second = _status.LiveStatus(specs[:1], sweep_dir=tmp_path, n_workers=2)
    second.end("finished")
    assert status_file(tmp_path)["batch"] == 2


def test_report_rows_are_worker_slots_and_show_what_the_records_hold(tmp_path: Path) -> None:
    def record(num: int, start: str, end: str, **extra: Any) -> str:
        return json.dumps(
            {
                "num": num,
                "overrides": [f"lr={num / 10}", "seed=1"],
                "status": "COMPLETED",
                "started": f"2026-01-31T12:00:{start}.000+00:00",
                "ended": f"2026-01-31T12:00:{end}.000+00:00",
                "duration_s": float(end) - float(start),
                "host": "h",
                "pid": 7,
                **extra,
            }
        )

    lines = [
        record(0, "00", "10", max_rss_bytes=512 * 2**20, cpu_s=9.5, attempts=1),
        record(1, "01", "05"),  # while #0 runs: a second slot
        record(2, "05", "09", value=0.25),  # #1's slot is free again
        record(3, "10", "12"),  # #0's too
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    run = cli("report", str(tmp_path), "--output", str(tmp_path / "r.html"))
    assert run.returncode == 0 and run.stdout == f"Wrote {tmp_path / 'r.html'}\n", run.stderr
    page = (tmp_path / "r.html").read_text()
    rows = re.findall(r"<tr><td data-sort=\"(\d)\.0\">.*?<td>(slot \d)</td></tr>", page)
    assert rows == [("0", "slot 1"), ("1", "slot 2"), ("2", "slot 2"), ("3", "slot 1")], rows
    for head in ("<th>lr</th>", "<th>returned</th>", "<th>peak memory</th>", "<th>CPU s</th>"):
        assert head in page
    assert "<th>seed</th>" not in page  # the same for every job
    assert '<td data-sort="536870912.0">537 MB</td>' in page
    assert "peak memory 537 MB" in page  # in the bar's hover text


@pytest.mark.parametrize(
    "backend", ["multiprocessing", pytest.param("dask", marks=pytest.mark.dask)]
)
def test_status_and_report_of_a_sweep_in_batches_on_any_backend(
    tmp_path: Path, backend: str
) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")
    sweep_dir = tmp_path / "sweep"
    run = subprocess.run(
        [
            sys.executable,
            "-Werror",
            str(APPS / "watched.py"),
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.backend={backend}",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.max_batch_size=2",
            f"hydra.sweep.dir={sweep_dir}",
            "+x=1,2,3",
        ],
        cwd=tmp_path,
        env=app_env({"DASK_TEMPORARY_DIRECTORY": str(tmp_path)}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    shown = cli("status", str(sweep_dir)).stdout
    assert "Batch 2  1 jobs: 1 completed, 0 failed, 0 running, 0 waiting" in shown, shown
    assert "finished at" in shown and "Resume" not in shown, shown
    assert cli("report", str(sweep_dir)).returncode == 0
    page = (sweep_dir / "report.html").read_text()
    # the rows' third cells (after the job's number and x): what each job returned, x * x
    values = re.findall(r'<tr><td data-sort="[\d.]+">\d+</td><td data-sort="[\d.]+">\d+</td><td data-sort="([\d.]+)">', page)
    assert values == ["1.0", "4.0", "9.0"], values


def test_watch_on_a_terminal_redraws_in_place(tmp_path: Path) -> None:
    status = {
        "format": 1,
        "state": "finished",
        "updated_ts": time.time(),
        "launcher": {"host": "h", "pid": 1},
        "jobs": 1,
        "counts": {"completed": 1, "failed": 0, "running": 0, "waiting": 0, "skipped": 0},
    }
    (tmp_path / "status.json").write_text(json.dumps(status))
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [str(HYDRA_JOBLIB), "status", str(tmp_path), "--watch"], stdout=follower, env=app_env()
    ) as watch:
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            shown += chunk
        assert watch.wait(timeout=30) == 0
    os.close(leader)
    assert shown.startswith(b"\x1b[H\x1b[2J") and b"1 jobs: 1 completed" in shown, shown
