"""The benchmark app: a Hydra app whose jobs burn ~1 s of CPU or return at once.

    python bench_app.py --multirun x='range(0,100)' work=trivial stamp_file=/tmp/stamps \
        hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=/tmp/sweep

* Each job appends ``time.time()`` to ``stamp_file`` as soon as its task starts,
  so the runner can count the jobs that ran and see when the first one started.
* The launching process (the one started by the command, and only that one)
  writes, at interpreter exit, its own peak RSS and CPU time
  (``getrusage(RUSAGE_SELF)``) as JSON to the file named by ``$BENCH_SELF_FILE``.
  ``os.wait4`` cannot give the peak RSS of the launching process alone: on
  Linux its ``ru_maxrss`` is the maximum over the child and every descendant it
  reaped (here: the pool's workers).
"""

import os
import time

import hydra
from omegaconf import DictConfig


def spin(loops: int) -> int:
    """Pure-Python busy loop: CPU work that holds the GIL, no sleeping."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def calibrate(target_s: float = 1.0) -> int:
    """Loop count that takes ``target_s`` of CPU time in this interpreter (best of 5)."""
    probe = 1_000_000
    spin(probe)  # warm up
    best = min(_cpu_time_of(probe) for _ in range(5))
    return max(1, int(probe * target_s / best))


def _cpu_time_of(loops: int) -> float:
    start = time.process_time()
    spin(loops)
    return time.process_time() - start


@hydra.main(version_base=None, config_path=".", config_name="config")
def bench_app(cfg: DictConfig) -> int:
    if cfg.stamp_file:
        with open(cfg.stamp_file, "a", encoding="ascii") as f:
            f.write(f"{time.time():.6f} {os.getpid()}\n")
    if cfg.work == "cpu":
        spin(int(cfg.loops))
    elif cfg.work != "trivial":
        raise ValueError(f"work={cfg.work!r}: choose cpu or trivial")
    return int(cfg.x)


def _report_self_usage_at_exit() -> None:
    path = os.environ.get("BENCH_SELF_FILE")
    if not path:
        return
    import atexit
    import json
    import resource

    def write() -> None:
        me = resource.getrusage(resource.RUSAGE_SELF)
        usage = {"maxrss_kib": me.ru_maxrss, "cpu_s": me.ru_utime + me.ru_stime}
        with open(path, "w", encoding="ascii") as f:
            json.dump(usage, f)

    # Registered before the app runs: atexit runs last-in first-out, so this
    # runs after the launchers' own exit handlers (loky's shutdown included).
    atexit.register(write)


if __name__ == "__main__":
    _report_self_usage_at_exit()
    bench_app()
