#!/usr/bin/env python3
"""Where this launcher spends its time on a sweep of trivial jobs (scenarios b and d of run.py).

    python benchmarks/profile_launcher.py                 # cProfile at 100 jobs, py-spy at 100 and 2000
    python benchmarks/profile_launcher.py --sizes 100     # py-spy at 100 jobs only
    python benchmarks/profile_launcher.py --keep DIR      # keep the raw profiles (.prof, py-spy stacks)

Uses ``env-this`` of run.py (built if missing) and a third venv, ``env-tools``,
holding py-spy only. It runs the benchmark app with trivial jobs:

1. under ``python -m cProfile`` (``--cprofile-sizes``), with ``hydra/launcher=basic``
   and with ``hydra/launcher=joblib hydra.launcher.n_jobs=2``: exact per-function
   times of the launching process, and Hydra's own per-job cost;
2. under ``py-spy record --subprocesses --threads`` (``--sizes``), this launcher only:
   sampled stacks of the launching process *and* of every loky worker (workers
   are SIGKILLed at shutdown, so nothing inside them could write a profile at
   exit), split into phases. It prints, per process kind, the share of wall time of each
phase, and the launcher's own functions ranked by time.
"""

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

sys.dont_write_bytecode = True  # importing run.py must leave no __pycache__ behind
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

PKG = "hydra_joblib_launcher"

# Phases of a worker, by the first of these functions found walking a stack from the root.
# Checked in order: the first match wins. (file fragment, function) pairs; None means any.
WORKER_PHASES: List[Tuple[str, Tuple[str, ...]]] = [
    ("task (bench_app)", ("bench_app",)),
    ("load_context (unpickle shared context)", ("load_context",)),
    ("hydra load_sweep_config (compose)", ("load_sweep_config",)),
    ("hydra run_job (dirs, yaml, logging)", ("run_job",)),
    ("_pickle_return (cloudpickle JobReturn)", ("_pickle_return",)),
    ("run_job_spec, other", ("run_job_spec",)),
    ("loky: receiving a task (unpickle)", ("get", "_recv", "_recv_bytes", "loads")),
    ("loky: sending the result (pickle)", ("put", "_send", "send_bytes", "dumps", "send")),
]

LAUNCHER_PHASES: List[Tuple[str, Tuple[str, ...]]] = [
    ("hydra: sweeper validate_batch_is_legal (1 compose per job)", ("validate_batch_is_legal",)),
    ("launcher: pickle/write shared context", ("pickle_context", "write_context", "capture_resolvers")),
    ("launcher: Reporter.job_ended (manifest, job_return.pkl)", ("job_ended",)),
    ("launcher: outcome.job_return (unpickle JobReturn)", ("job_return",)),
    ("launcher: reporter summary", ("summary",)),
    ("launcher: loky shutdown", ("shutdown_loky",)),
    ("launcher: waiting on results (joblib/loky)", ("_retrieve", "_get_outputs", "__next__", "_wait_retrieval")),
    ("launcher: launch, other", ("launch",)),
    ("hydra: compose + startup, other", ("run_hydra", "_run_hydra", "<module>")),
]


def tools_python(cache: Path) -> Path:
    env_dir = cache / "env-tools"
    python = bench.venv_python(env_dir)
    if not (env_dir / "bin" / "py-spy").exists():
        bench.log(f"creating {env_dir} with py-spy ...")
        bench._create_venv(sys.executable, env_dir, cache / "env-tools.log")
        bench._run_logged([python, "-m", "pip", "install", "py-spy"], cache / "env-tools.log")
    return env_dir / "bin" / "py-spy"


def app_cmd(python: Path, n: int, workdir: Path, launcher: str, tag: str) -> List[str]:
    return [
        str(python), str(bench.APP), "--multirun", f"x=range(0,{n})", "work=trivial",
        f"stamp_file={workdir / f'stamps-{tag}.txt'}", f"hydra.sweep.dir={workdir / f'sweep-{tag}'}",
        *bench.launcher_overrides(launcher),
    ]  # fmt: skip


def run_logged(cmd: Sequence[str], workdir: Path, tag: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with open(workdir / f"out-{tag}.log", "wb") as out:
        proc = subprocess.run(list(cmd), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    if proc.returncode != 0:
        tail = (workdir / f"out-{tag}.log").read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(f"{tag} failed ({proc.returncode}):\n" + "\n".join(tail))


# -- cProfile of the launching process -------------------------------------------------------


def cprofile(python: Path, n: int, workdir: Path, launcher: str) -> pstats.Stats:
    tag = f"cprofile-{launcher}-{n}"
    out = workdir / f"{tag}.prof"
    run_logged([str(python), "-m", "cProfile", "-o", str(out), *app_cmd(python, n, workdir, launcher, tag)[1:]],
               workdir, tag)  # fmt: skip
    return pstats.Stats(str(out))


def _fn_total(stats: pstats.Stats, name: str, file_part: str = "") -> Tuple[float, int]:
    """Cumulative seconds and calls of every function called ``name`` (in a file containing ``file_part``)."""
    total, calls = 0.0, 0
    for (file, _, fn), (_, nc, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if fn == name and file_part in file:
            total += ct
            calls += nc
    return total, calls


def report_launcher_cprofile(stats: pstats.Stats, n: int, label: str) -> None:
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\n== launching process, {label}, {n} jobs, cProfile: {total:.2f} s profiled ==")
    rows = [
        ("BasicSweeper.sweep (all of the multirun)", "sweep", "basic_sweeper"),
        ("  validate_batch_is_legal (Hydra: 1 compose per job)", "validate_batch_is_legal", ""),
        ("  launcher.launch", "launch", "launcher"),
        ("    pickle_context", "pickle_context", PKG),
        ("    capture_resolvers", "capture_resolvers", PKG),
        ("    Reporter.__init__ / __post_init__", "__post_init__", "_report"),
        ("    supervise", "supervise", PKG),
        ("      Reporter.job_ended", "job_ended", PKG),
        ("        Reporter._write (jobs.jsonl + job_return.pkl)", "_write", "_report"),
        ("    JobOutcome.job_return (unpickle JobReturn)", "job_return", PKG),
        ("    Reporter.summary", "summary", "_report"),
        ("  basic launcher: run_job (Hydra)", "run_job", "hydra/core/utils"),
        ("  basic launcher: load_sweep_config", "load_sweep_config", "config_loader_impl"),
        ("joblib/loky: Parallel.__call__", "__call__", "joblib/parallel"),
        ("loky: _ReusablePoolExecutor / get_reusable_executor", "get_reusable_executor", "loky"),
        ("logging: Logger.info (all)", "info", "logging/__init__"),
    ]
    for label_, fn, part in rows:
        secs, calls = _fn_total(stats, fn, part)
        if calls:
            print(f"  {label_:60} {secs:7.2f} s  {secs / n * 1000:7.1f} ms/job  ({calls} calls)")
    own = [
        (tt, ct, nc, f"{Path(file).name}:{line} {fn}")
        for (file, line, fn), (_, nc, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
        if PKG in file
    ]
    own.sort(reverse=True)
    print(f"  the launcher's own functions by own time (tottime), top 12:")
    for tt, ct, nc, where in own[:12]:
        print(f"    {tt:7.3f} s own {ct:7.3f} s cum  {nc:6} calls  {where}")


# -- py-spy of the launcher and its workers --------------------------------------------------

_PROCESS = re.compile(r'^process (\d+):"(.*)"$', re.S)
_THREAD = re.compile(r"^thread \((\d+)\)")
RATE = 200  # samples per second


def pyspy(spy: Path, python: Path, n: int, workdir: Path) -> Tuple[Path, float]:
    """py-spy's raw stacks of a run (on-CPU samples only, per thread), and the run's wall time."""
    tag = f"pyspy-this-{n}"
    out = workdir / f"{tag}.txt"
    cmd = [str(spy), "record", "--subprocesses", "--threads", "--rate", str(RATE), "--format", "raw",
           "--nonblocking", "-o", str(out), "--", *app_cmd(python, n, workdir, "this", tag)]  # fmt: skip
    started = time.perf_counter()
    run_logged(cmd, workdir, tag)
    return out, time.perf_counter() - started


def _phase(frames: Sequence[str], phases: List[Tuple[str, Tuple[str, ...]]]) -> Optional[str]:
    # py-spy names frames "function (file:line)" or "Class.method (file:line)"
    names = {f.split(" (", 1)[0].strip().rsplit(".", 1)[-1] for f in frames}
    for phase, functions in phases:
        if names.intersection(functions):
            return phase
    return None


def _split(stack: str) -> Tuple[str, str, bool, List[str]]:
    """(process kind, pid, main thread?, frames) of one py-spy stack; the innermost process counts."""
    kind, pid, main, frames = "other", "?", True, []
    for frame in stack.split(";"):
        process = _PROCESS.match(frame)
        thread = _THREAD.match(frame)
        if process:
            pid, cmdline = process.group(1), process.group(2)
            kind = "worker" if "loky" in cmdline else "launcher" if "bench_app" in cmdline else "other"
            frames = []
        elif thread:
            main = thread.group(1) == pid
        else:
            frames.append(frame)
    return kind, pid, main, frames


_ROOTS = ("<module>", "_run_module_as_main", "Thread._bootstrap")
DRILL = (("worker", "run_job_spec", 1), ("worker", "dumps", 2), ("launcher", "job_return", 1))


def _stacks(stacks: Path) -> Iterator[Tuple[str, str, bool, List[str], int]]:
    text = stacks.read_text(errors="replace")
    for line in re.split(r"(?<=\d)\n", text):  # a stack ends with its count; command lines may hold newlines
        stack, _, count = line.strip().rpartition(" ")
        if stack and count.isdigit():
            yield (*_split(stack), int(count))


def _short(frame: str) -> str:
    """``Class.method (file.py)``, without the line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name


def report_pyspy(stacks: Path, wall_s: float, n: int) -> None:
    phases: Dict[Tuple[str, str], Counter] = defaultdict(Counter)
    pids: Dict[str, set] = defaultdict(set)
    below: Dict[str, Counter] = defaultdict(Counter)
    for kind, pid, main, frames, count in _stacks(stacks):
        pids[kind].add(pid)
        table = WORKER_PHASES if kind == "worker" else LAUNCHER_PHASES
        if not frames or not frames[0].startswith(_ROOTS):
            phase = "unattributed: py-spy got no or a truncated Python stack"
        else:
            phase = _phase(frames, table) or f"{kind}, other"
        if phase == "worker, other":
            phase = "worker, other (loky's loop, incl. its gc.collect() every second; imports)"
        if kind == "launcher" and not main:
            phase = "joblib/loky threads (result handler, queue feeder, manager)"
        phases[(kind, "main thread" if main else "other threads")][phase] += count
        names = [f.split(" (", 1)[0].rsplit(".", 1)[-1] for f in frames]
        for drill_kind, anchor, depth in DRILL:
            if kind == drill_kind and anchor in names:
                i = len(names) - 1 - names[::-1].index(anchor)
                below[anchor][" > ".join(_short(f) for f in frames[i + 1 : i + 1 + depth]) or "(itself)"] += count
    print(f"\n== py-spy ({RATE} Hz, on-CPU samples), this launcher, {n} jobs, run wall {wall_s:.1f} s ==")
    for (kind, threads), counter in sorted(phases.items()):
        total = sum(counter.values())
        nproc = len(pids[kind])
        print(f"  {kind} ({nproc} process{'es' if nproc != 1 else ''}), {threads}: {total / RATE:.2f} s on CPU")
        for phase, samples in counter.most_common():
            secs = samples / RATE
            print(f"    {samples / total:6.1%}  {secs:7.2f} s  {secs / n * 1000:7.2f} ms/job  {phase}")
    for anchor, counter in below.items():
        total = sum(counter.values())
        print(f"  inside {anchor}: {total / RATE:.2f} s, {total / RATE / n * 1000:.2f} ms/job; top callees:")
        for where, samples in counter.most_common(6):
            print(f"    {samples / total:6.1%}  {samples / RATE / n * 1000:7.2f} ms/job  {where}")


def _clean(workdir: Path) -> None:
    for sweep in workdir.glob("sweep-*"):
        shutil.rmtree(sweep, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,2000", help="numbers of jobs profiled with py-spy")
    parser.add_argument("--cprofile-sizes", default="100",
                        help="numbers of jobs profiled with cProfile (basic and this launcher)")  # fmt: skip
    parser.add_argument("--env-dir", type=Path, default=bench.default_cache_dir())
    parser.add_argument("--python", default=None, help="an interpreter with this launcher installed")
    parser.add_argument("--keep", type=Path, default=None, help="keep the raw profiles in this dir")
    parser.add_argument("--no-pyspy", action="store_true")
    args = parser.parse_args(argv)
    args.env_dir.mkdir(parents=True, exist_ok=True)
    if args.python:
        python = Path(args.python)
    elif bench.venv_python(args.env_dir / "env-this").exists():
        python = bench.venv_python(args.env_dir / "env-this")
    else:
        python = bench.build_this_env(args.env_dir, sys.executable)
    spy = None if args.no_pyspy else tools_python(args.env_dir)
    workdir = Path(tempfile.mkdtemp(prefix="hydra-joblib-profile-"))
    try:
        for n in [int(s) for s in args.cprofile_sizes.split(",") if s]:
            report_launcher_cprofile(cprofile(python, n, workdir, "basic"), n, "basic launcher")
            report_launcher_cprofile(cprofile(python, n, workdir, "this"), n, "this launcher")
            _clean(workdir)
        for n in [int(s) for s in args.sizes.split(",") if s] if spy is not None else []:
            stacks, wall = pyspy(spy, python, n, workdir)
            report_pyspy(stacks, wall, n)
            _clean(workdir)
    finally:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in workdir.iterdir():
                if path.is_file():
                    shutil.copy2(path, args.keep / path.name)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
