"""Does live progress and the manifest cost the jobs anything? (issue 5)

Runs the same sweep of trivial jobs with ``hydra.launcher.progress=log`` and
``progress=none``, alternating, and prints the median wall time of each and
their ratio. The manifest (jobs.jsonl) and the stored results are written in
both, as they always are.

    python benchmarks/progress_overhead.py [--jobs 1000] [--reps 3] [--python PYTHON]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

APP = Path(__file__).parent / "apps" / "bench_app.py"


def run_once(python: str, jobs: int, progress: str, workdir: Path) -> float:
    sweep = Path(tempfile.mkdtemp(dir=workdir))
    started = time.perf_counter()
    subprocess.run(
        [
            python,
            str(APP),
            "--multirun",
            f"x=range(0,{jobs})",
            "work=trivial",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.launcher.progress={progress}",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    times: Dict[str, List[float]] = {"log": [], "none": []}
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(args.reps):
            for progress in ("log", "none") if rep % 2 == 0 else ("none", "log"):
                seconds = run_once(args.python, args.jobs, progress, Path(workdir))
                times[progress].append(seconds)
                print(f"rep {rep + 1}: progress={progress:<4} {seconds:7.2f} s", flush=True)
    on, off = statistics.median(times["log"]), statistics.median(times["none"])
    print(f"{args.jobs} trivial jobs, n_jobs=2, median of {args.reps}:")
    print(f"  progress=log  {on:7.2f} s")
    print(f"  progress=none {off:7.2f} s")
    print(f"  ratio {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
