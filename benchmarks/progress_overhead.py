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
from typing import Dict, List, Optional, Sequence

APP = Path(__file__).parent / "apps" / "bench_app.py"


def run_once(python: str, jobs: int, overrides: Sequence[str], workdir: Path) -> float:
    """Wall time of one sweep of ``jobs`` trivial jobs with this launcher and ``overrides``."""
    return sweep_seconds(python, jobs, overrides, Path(tempfile.mkdtemp(dir=workdir)))


def sweep_seconds(
    python: str,
    jobs: int,
    overrides: Sequence[str],
    sweep: Path,
    env: Optional[Dict[str, str]] = None,
) -> float:
    """Wall time of one sweep of ``jobs`` trivial jobs into ``sweep``."""
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
            *overrides,
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return time.perf_counter() - started


def compare(
    python: str, jobs: int, reps: int, variants: Dict[str, Sequence[str]]
) -> Dict[str, float]:
    """The median wall time of each variant's sweep, run in turns (the order alternates by rep)."""
    times: Dict[str, List[float]] = {name: [] for name in variants}
    names = list(variants)
    with tempfile.TemporaryDirectory() as workdir:
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                seconds = run_once(python, jobs, variants[name], Path(workdir))
                times[name].append(seconds)
                print(f"rep {rep + 1}: {name:<16} {seconds:7.2f} s", flush=True)
    print(f"{jobs} trivial jobs, n_jobs=2, median of {reps}:")
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    for name, median in medians.items():
        print(f"  {name:<16} {median:7.2f} s")
    return medians


def arguments(doc: str) -> argparse.Namespace:
    """--jobs, --reps and --python, as every overhead benchmark takes them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    return parser.parse_args()


def main() -> int:
    args = arguments(__doc__)
    variants = {
        "progress=log": ["hydra.launcher.progress=log"],
        "progress=none": ["hydra.launcher.progress=none"],
    }
    medians = compare(args.python, args.jobs, args.reps, variants)
    print(f"  ratio {medians['progress=log'] / medians['progress=none']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
