"""What does watching each job's memory cost? (issue 17)

Two measures, side by side in one run:

* the same sweep of trivial jobs with ``hydra.launcher.mem_limit`` set (the watch
  samples every 0.2 s and enforces the limit) and unset (it keeps the peak only,
  sampling every second), alternating, median wall time of each and their ratio;
* the watch's own cost per job in one process: entering and leaving
  ``memory_watch`` (a thread, the peak reset and read, CPU times), without a
  limit and with one, against an empty block.

    python benchmarks/memory_watch_overhead.py [--jobs 1000] [--reps 3] [--python PYTHON]
"""

import subprocess
import sys

from progress_overhead import arguments, compare

PER_JOB = """
import time, tempfile
from hydra_plugins.hydra_joblib_launcher._memory import memory_watch
from hydra_plugins.hydra_joblib_launcher._plan import JobSpec
from hydra_plugins.hydra_joblib_launcher._values import MemoryLimit
from hydra_plugins.hydra_joblib_launcher._tree import JobTree

marker = tempfile.mkdtemp()
tree = JobTree()
for limit in (None, MemoryLimit(nbytes=8 * 1000**3)):
    spec = JobSpec(num=0, overrides=(), context_file="", marker_dir=marker, mem_limit=limit)
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        with memory_watch(spec, processes=tree.processes, stop_processes=lambda: None):
            pass
    print(f"{'with' if limit else 'without'} a limit: {(time.perf_counter() - started) / n * 1e6:.0f} us per job")
"""


def main() -> int:
    args = arguments(__doc__)
    variants = {
        "mem_limit=8GB": ["hydra.launcher.progress=none", "hydra.launcher.mem_limit=8GB"],
        "mem_limit=null": ["hydra.launcher.progress=none"],
    }
    medians = compare(args.python, args.jobs, args.reps, variants)
    print(f"  ratio {medians['mem_limit=8GB'] / medians['mem_limit=null']:.3f}")
    print("The watch alone, in one process:")
    subprocess.run([args.python, "-c", PER_JOB], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
