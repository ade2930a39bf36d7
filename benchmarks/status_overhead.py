"""What does the live status file (status.json, issue 19) cost? Two measures.

1. ``--unit``: in one process, the launcher's own work for status.json per job:
   a rewrite at each job's end, and the look for started markers every second
   (a scan of the marker dir, a read of each new marker), on a batch of
   ``--jobs`` jobs with ``--workers`` running at once. Prints microseconds per job.

2. ``--base DIR``: the same sweep of trivial jobs, alternating between this
   checkout and an older one (``DIR``, e.g. ``git archive <commit> | tar -x -C DIR``),
   put first on PYTHONPATH; prints the median wall time of each and their ratio.

    python benchmarks/status_overhead.py --unit [--jobs 2000]
    python benchmarks/status_overhead.py --base /tmp/before [--jobs 1000] [--reps 3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from progress_overhead import sweep_seconds


def unit(jobs: int, workers: int) -> None:
    from hydra_plugins.hydra_joblib_launcher import _status
    from hydra_plugins.hydra_joblib_launcher._outcome import JobOutcome
    from hydra_plugins.hydra_joblib_launcher._plan import JobSpec

    _status.POLL_S = _status.HEARTBEAT_S = (
        3600.0  # the watch thread idle: its work is timed by hand
    )
    with tempfile.TemporaryDirectory() as root:
        markers, sweep = Path(root, "markers"), Path(root, "sweep")
        markers.mkdir()
        sweep.mkdir()
        specs = [
            JobSpec(
                num=n,
                overrides=(f"x={n}", "work=trivial"),
                context_file="",
                marker_dir=str(markers),
            )
            for n in range(jobs)
        ]
        status = _status.LiveStatus(specs, sweep_dir=sweep, n_workers=workers)
        took = {"end": 0.0, "scan": 0.0, "write": 0.0}  # wall time
        cpu = dict(took)  # CPU time of this thread

        def timed(what: str, action: Callable[[], object]) -> None:
            began, began_cpu = time.perf_counter(), time.thread_time()
            action()
            took[what] += time.perf_counter() - began
            cpu[what] += time.thread_time() - began_cpu

        for spec in specs:  # a job starts, the launcher notices it and writes, the job ends
            spec.files.note_started({"pid": os.getpid(), "host": "here", "started": time.time()})
            timed("scan", status._look_for_starts)
            timed("write", lambda: status._write("running"))
            outcome = JobOutcome(
                num=spec.num,
                completed=True,
                payload=b"",
                started=0.0,
                ended=0.1,
                host="here",
                pid=1,
            )
            timed("end", lambda: status.job_ended(outcome))
        status.end("finished")
    per = {what: seconds / jobs * 1e6 for what, seconds in took.items()}
    per_cpu = {what: seconds / jobs * 1e6 for what, seconds in cpu.items()}
    print(f"{jobs} jobs, {workers} at once (microseconds: wall, CPU; under this machine's load):")
    print(f"  job_ended, on the launcher's thread   {per['end']:8.1f} {per_cpu['end']:8.1f} us/job")
    print(
        f"  a rewrite of status.json (watch)      {per['write']:8.1f} {per_cpu['write']:8.1f} us/write"
    )
    print(
        f"  a look for started markers (watch)    {per['scan']:8.1f} {per_cpu['scan']:8.1f} us/scan"
    )
    gap = _status.MIN_GAP_S
    print(
        f"  the watch writes at most {1 / gap:.0f} times a second and scans once: at most "
        f"{(per_cpu['write'] / gap + per_cpu['scan']) / 1e4:.2f}% of one CPU, however short the jobs"
    )


def run_once(python: str, jobs: int, pythonpath: Optional[str], workdir: Path) -> float:
    sweep = Path(tempfile.mkdtemp(dir=workdir))
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    seconds = sweep_seconds(python, jobs, ["hydra.launcher.progress=none"], sweep, env)
    assert (sweep / "status.json").exists() != bool(pythonpath), "the wrong launcher ran"
    return seconds


def compare(python: str, base: str, jobs: int, reps: int) -> None:
    times: Dict[str, List[float]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(reps):
            for which in ("this", "base") if rep % 2 == 0 else ("base", "this"):
                path = base if which == "base" else None
                seconds = run_once(python, jobs, path, Path(workdir))
                times[which].append(seconds)
                print(f"rep {rep + 1}: {which:<4} {seconds:7.2f} s", flush=True)
    this, before = statistics.median(times["this"]), statistics.median(times["base"])
    print(f"{jobs} trivial jobs, n_jobs=2, median of {reps}:")
    print(f"  with status.json    {this:7.2f} s")
    print(f"  without (base)      {before:7.2f} s")
    print(f"  ratio {this / before:.3f}; {(this - before) / jobs * 1e3:+.2f} ms per job")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", action="store_true")
    parser.add_argument("--base", help="an older checkout, without status.json, to compare with")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if args.unit:
        unit(args.jobs or 2000, args.workers)
    if args.base:
        compare(args.python, str(Path(args.base).absolute()), args.jobs or 1000, args.reps)
    if not (args.unit or args.base):
        parser.error("give --unit, --base DIR, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
