#!/usr/bin/env python3
"""Side-by-side benchmark: Hydra's basic launcher, this launcher, and hydra-joblib-launcher 1.2.0.

    python benchmarks/run.py                  # everything, ~40 min on 2 cores
    python benchmarks/run.py --quick          # fewer repetitions, d at 500 jobs, ~5 min
    python benchmarks/run.py --json out.json  # also write every run and the summary
    python benchmarks/run.py --guard          # CI: basic vs this only, exit 1 on a gross regression

It builds throwaway virtual environments in a cache dir (printed, see ``--env-dir``):

* ``env-this``: ``pip install <a snapshot of this repo>`` (not editable, no extras: what
  a user installs), made anew at every invocation, so the code measured is the code in
  the work tree now; Hydra's basic launcher runs here too (``hydra/launcher=basic``).
* ``env-this-slurm``: the same with the ``slurm`` extra (dask's and dask-jobqueue), made
  anew when scenario e runs (``this-dask`` and ``this-slurm`` run there).
* ``env-released``: ``pip install hydra-joblib-launcher==1.2.0`` constrained to
  the versions of ``env-this`` (hydra-core, omegaconf, joblib, ...), so the
  two plugins are never in one environment and differ only in the launcher;
  reused when present with those versions.

Every run is ``python benchmarks/apps/bench_app.py --multirun x='range(0,N)' ...``
in its own session (``start_new_session=True``). Per run it measures the wall
time, the CPU time of the launching process and all its descendants (this
process is made a child subreaper, so orphaned descendants are reaped here and
counted in the ``RUSAGE_CHILDREN`` delta), the peak RSS of the launching process
alone (reported by the app itself at exit: ``os.wait4``'s ``ru_maxrss`` is the
maximum over the child *and* its reaped descendants), when the first job's task
started, and, one second after the command ended, any process of its session
still alive (a leftover; it is then killed, by its pid).

Scenarios, each run for each launcher in alternating order (basic, this,
released, basic, this, released, ...):

  a   8 CPU-bound jobs of ~1 s each (calibrated busy loop)
  b   100 trivial jobs
  c   2 trivial jobs: time from the command's start to the first job's start
  d   2000 and 100 trivial jobs: wall time, peak RSS; with c (2 jobs) they show how
      wall time grows with the number of jobs (per-job cost 2->100 vs 100->2000)
  e   a on the embedded Dask cluster (``this-dask``: this launcher with
      ``hydra.launcher.backend=dask``, a LocalCluster it starts itself) against basic;
      1.2.0 cannot start a cluster, so it has no row. Where a SLURM node is up (.ci/slurm.sh),
      also on a ``dask_jobqueue.SLURMCluster`` the launcher builds (``this-slurm``: two batch
      jobs of one single-threaded worker each)
  f   4 small PyTorch training jobs (#20): apps/torch_train.py, torch imported at the
      script's top, a DataLoader with 2 worker processes per epoch; this launcher on loky
      (``this``) and on ``backend=multiprocessing`` (``this-mp``) against basic and 1.2.0,
      in their own envs with ``torch==2.13.0`` (``env-this-torch``, ``env-released-torch``);
      skipped, with a message, when torch cannot be installed

Both joblib launchers run with ``hydra.launcher.n_jobs=2``.
"""

import argparse
import ctypes
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "apps" / "bench_app.py"
TORCH_APP = HERE / "apps" / "torch_train.py"  # scenario f
TORCH = "torch==2.13.0"  # installed for scenario f only, in envs of their own
RELEASED = "hydra-joblib-launcher==1.2.0"
LAUNCHERS = ("basic", "this", "released")
DASK = "this-dask"  # this launcher on its embedded Dask cluster: scenario e only
SLURM = "this-slurm"  # this launcher on a dask_jobqueue.SLURMCluster it builds: scenario e, where SLURM runs
MP = "this-mp"  # this launcher with backend=multiprocessing: scenario f only
ORDER = (*LAUNCHERS, MP, DASK, SLURM)
N_JOBS = 2  # hydra.launcher.n_jobs for both joblib launchers
PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "joblib", "cloudpickle", "hydra-joblib-launcher")

# The targets, as ratios to the basic launcher in the same invocation.
TARGET_A = 0.57
TARGET_B = 0.80
TARGET_C_S = 0.5
TARGET_D_RSS = 1.5
LINEAR_TOLERANCE = 1.25  # per-job cost of the last size step may exceed the first's by this factor
TARGET_F_LOKY = 0.75  # (f) the PyTorch sweep on loky (this, and 1.2.0 for comparison)
TARGET_F_MP = 0.90  # (f) on backend=multiprocessing


def log(message: str) -> None:
    print(message, flush=True)


# -- environments ----------------------------------------------------------------------------


def default_cache_dir() -> Path:
    explicit = os.environ.get("HYDRA_JOBLIB_BENCH_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hydra-joblib-launcher-bench"


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _run_logged(cmd: Sequence[str], log_file: Path) -> None:
    with open(log_file, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n" + "\n".join(tail))


def _create_venv(base_python: str, env_dir: Path, log_file: Path) -> None:
    shutil.rmtree(env_dir, ignore_errors=True)
    _run_logged([base_python, "-m", "venv", str(env_dir)], log_file)


def _snapshot_repo(dest: Path) -> None:
    """Copy the package sources, so that building the wheel writes nothing into the work tree."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".*_cache",
            "multirun", "outputs", "benchmarks", "tests",
        ),
    )


SNAPSHOT_OF: Dict[str, Any] = {}  # the repo's commit when env-this was installed from it


def git_state() -> Dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)  # fmt: skip
    return {"repo_commit": commit.stdout.strip() or None, "repo_dirty": bool(dirty.stdout.strip())}


def build_this_env(cache: Path, base_python: str, extra: str = "", packages: Sequence[str] = (), tag: str = "") -> Path:
    """A new venv with this repo installed as a user installs it, with ``extra`` and ``packages`` if given.

    New every time: an extra's packages (psutil, which loky imports when it is
    there) must not linger in the environment that measures the default install.
    ``tag`` names the env when ``packages`` are given (``env-this-torch``).
    """
    name = f"env-this-{extra or tag}" if extra or tag else "env-this"
    env_dir = cache / name
    log_file = cache / f"{name}.log"
    python = venv_python(env_dir)
    log(f"creating {env_dir} ...")
    _create_venv(base_python, env_dir, log_file)
    snapshot = cache / "src-snapshot"
    SNAPSHOT_OF.update(git_state())
    _snapshot_repo(snapshot)
    log(f"installing this repo ({REPO}) into {env_dir} (pip install, not editable) ...")
    _run_logged([python, "-m", "pip", "install", f"{snapshot}[{extra}]" if extra else str(snapshot), *packages],
                log_file)  # fmt: skip
    shutil.rmtree(snapshot, ignore_errors=True)
    return python


def _isolated(python: Path, code: str) -> str:
    """Run ``code`` in ``python`` seeing only its own packages (``-I``: no cwd, no PYTHON* variables).

    Run from the repo, ``python -c`` would find ``./hydra_plugins`` and the
    repo's ``*.egg-info``, whatever the environment holds.
    """
    proc = subprocess.run(
        [str(python), "-I", "-B", "-c", code], cwd=python.parent, capture_output=True, text=True, check=True
    )
    return proc.stdout


def package_versions(python: Path, also: Sequence[str] = ()) -> Dict[str, Optional[str]]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for name in {[*PACKAGES, *also]!r}:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = None\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(_isolated(python, code))


def build_released_env(
    cache: Path, base_python: str, pins: Dict[str, Optional[str]], packages: Sequence[str] = (), tag: str = ""
) -> Path:
    name = f"env-released-{tag}" if tag else "env-released"
    env_dir = cache / name
    log_file = cache / f"{name}.log"
    python = venv_python(env_dir)
    wanted = {name: pins[name] for name in ("hydra-core", "omegaconf", "antlr4-python3-runtime", "joblib")}
    if python.exists():
        have = package_versions(python, [p.split("==")[0] for p in packages])
        # a local version label counts as the pin (torch's wheels: 2.13.0+cpu for torch==2.13.0)
        extra_ok = all((have.get(p.split("==")[0]) or "").split("+")[0] == p.split("==")[1]
                       for p in packages if "==" in p)  # fmt: skip
        if have.get("hydra-joblib-launcher") == "1.2.0" and all(have.get(k) == v for k, v in wanted.items()) and extra_ok:
            log(f"reusing {env_dir}")
            return python
    log(f"creating {env_dir} with {RELEASED} and hydra-core=={pins['hydra-core']} ...")
    _create_venv(base_python, env_dir, log_file)
    constraints = cache / "released-constraints.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in wanted.items() if v))
    _run_logged(
        [python, "-m", "pip", "install", "-c", str(constraints), RELEASED, f"hydra-core=={pins['hydra-core']}",
         *packages],
        log_file,
    )  # fmt: skip
    return python


def plugin_check(python: Path) -> str:
    """Which hydra-joblib-launcher the environment imports (it must be that env's own)."""
    code = (
        "import importlib.metadata as m, hydra_plugins.hydra_joblib_launcher as p\n"
        "print(m.version('hydra-joblib-launcher'), p.__file__)\n"
    )
    return _isolated(python, code).strip()


def calibrate_loops(python: Path) -> int:
    code = f"import sys; sys.path.insert(0, {str(APP.parent)!r}); import bench_app; print(bench_app.calibrate())"
    return int(_isolated(python, code).strip())


# -- one run ---------------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Orphaned descendants of a run get re-parented to this process, so their CPU time is counted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, ppid, session id) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def find_leftovers(session: int) -> List[Dict[str, Any]]:
    """Live processes of the run's session, or re-parented to this (subreaper) process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        stat = _proc_stat(int(entry))
        if stat is None:
            continue
        state, ppid, sid = stat
        if state in ("Z", "X"):
            continue
        if sid == session or ppid == me:
            found.append({"pid": int(entry), "state": state, "cmdline": _cmdline(int(entry))})
    return found


def _kill_leftovers(leftovers: List[Dict[str, Any]]) -> None:
    for proc in leftovers:
        try:
            os.kill(proc["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    def alive(pid: int) -> bool:
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _reap_all()
        if not any(alive(p["pid"]) for p in leftovers):
            break
        time.sleep(0.05)
    _reap_all()


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores; steal included)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def wait_until_quiet(max_cores: float, timeout_s: float, window_s: float = 1.0) -> float:
    """Wait until other processes use less than ``max_cores`` for ``window_s``; the seconds waited."""
    started = time.monotonic()
    while True:
        before = machine_busy_s()
        time.sleep(window_s)
        busy = (machine_busy_s() - before) / window_s
        waited = time.monotonic() - started
        if busy < max_cores:
            return waited
        if waited > timeout_s:
            log(f"  machine still busy ({busy:.2f} cores used by other processes) after {waited:.0f}s: going on")
            return waited


@dataclass
class Run:
    scenario: str
    launcher: str
    rep: int
    n: int
    work: str
    ok: bool
    returncode: int
    wall_s: float
    cpu_s: float  # launching process + all descendants
    self_cpu_s: Optional[float]  # launching process alone
    peak_rss_mib: Optional[float]  # launching process alone
    tree_maxrss_mib: float  # os.wait4's ru_maxrss: max over the child and its reaped descendants
    first_job_s: Optional[float]  # command start -> first task start
    jobs_seen: int
    foreign_cores: float  # mean CPU use of processes outside the run while it ran (other users, steal)
    leftovers: List[Dict[str, Any]] = field(default_factory=list)
    log_tail: str = ""
    disturbed: bool = False  # foreign_cores above --max-foreign: measured again
    waited_quiet_s: float = 0.0


def launcher_overrides(launcher: str) -> List[str]:
    if launcher == "basic":
        return ["hydra/launcher=basic"]
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={N_JOBS}"]
    if launcher == MP:
        return [*joblib, "hydra.launcher.backend=multiprocessing"]
    if launcher == SLURM:  # one single-threaded worker per batch job, the batch jobs' output dropped
        cluster = ("{_target_:dask_jobqueue.SLURMCluster,cores:1,processes:1,memory:1GB,interface:lo,"
                   "job_extra_directives:['--output=/dev/null']}")  # fmt: skip
        return [*joblib, "hydra.launcher.backend=dask", f"hydra.launcher.dask.cluster={cluster}"]
    return [*joblib, "hydra.launcher.backend=dask"] if launcher == DASK else joblib


def run_once(
    python: Path,
    launcher: str,
    *,
    scenario: str,
    rep: int,
    n: int,
    work: str,
    loops: int,
    workdir: Path,
    timeout_s: float,
    grace_s: float = 1.0,
    app: Path = APP,
) -> Run:
    tag = f"{scenario}-{launcher}-{rep}"
    sweep = workdir / f"sweep-{tag}"
    stamps = workdir / f"stamps-{tag}.txt"
    self_file = workdir / f"self-{tag}.json"
    out_file = workdir / f"out-{tag}.log"
    work_args = [f"work={work}", f"loops={loops}"] if app == APP else []  # the torch app trains, always
    cmd = [
        str(python), str(app), "--multirun",
        f"x=range(0,{n})", *work_args, f"stamp_file={stamps}",
        f"hydra.sweep.dir={sweep}", *launcher_overrides(launcher),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["BENCH_SELF_FILE"] = str(self_file)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    me_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before, window_start = machine_busy_s(), time.perf_counter()
    with open(out_file, "wb") as out:
        started_epoch = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        killer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    time.sleep(grace_s)
    _reap_all()
    leftovers = find_leftovers(proc.pid)
    if leftovers:
        _kill_leftovers(leftovers)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    me_after = resource.getrusage(resource.RUSAGE_SELF)
    busy, window = machine_busy_s() - busy_before, time.perf_counter() - window_start
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    mine = cpu + (me_after.ru_utime - me_before.ru_utime) + (me_after.ru_stime - me_before.ru_stime)
    foreign_cores = max(0.0, busy - mine) / window

    times = []
    if stamps.exists():
        times = [float(line.split()[0]) for line in stamps.read_text().splitlines() if line.strip()]
    self_usage: Dict[str, Any] = {}
    if self_file.exists():
        self_usage = json.loads(self_file.read_text())
    ok = proc.returncode == 0 and len(times) == n
    tail = ""
    if not ok:
        tail = "\n".join(out_file.read_text(errors="replace").splitlines()[-25:])
    for path in (stamps, self_file, out_file):
        path.unlink(missing_ok=True)
    shutil.rmtree(sweep, ignore_errors=True)
    return Run(
        scenario=scenario,
        launcher=launcher,
        rep=rep,
        n=n,
        work=work,
        ok=ok,
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=cpu,
        self_cpu_s=self_usage.get("cpu_s"),
        peak_rss_mib=self_usage["maxrss_kib"] / 1024 if "maxrss_kib" in self_usage else None,
        tree_maxrss_mib=usage.ru_maxrss / 1024,
        first_job_s=(min(times) - started_epoch) if times else None,
        jobs_seen=len(times),
        foreign_cores=foreign_cores,
        leftovers=leftovers,
        log_tail=tail,
    )


# -- scenarios and summary -------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int
    work: str
    reps: int
    what: str
    app: Path = APP
    torch: bool = False  # runs in the envs with torch (env-this-torch, env-released-torch)

    def launchers(self, chosen: Sequence[str]) -> List[str]:
        """Who runs this scenario, of the launchers chosen on the command line."""
        if self.name == "e":
            return ["basic", DASK, *([SLURM] if slurm_runs() else [])] if "this" in chosen else ["basic"]
        if self.name == "f":  # this launcher on loky and on multiprocessing
            return sorted({*chosen, *([MP] if "this" in chosen else [])}, key=ORDER.index)
        return list(chosen)


@functools.lru_cache(maxsize=None)
def slurm_runs() -> bool:
    """A SLURM node is up here (.ci/slurm.sh starts one): scenario e adds this-slurm."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    up = any(state.startswith(("idle", "mix", "alloc")) for state in out.split())
    if not up:
        log("scenario e: no SLURM node up here (sinfo), so no this-slurm row (.ci/slurm.sh starts one)")
    return up


def scenarios(args: argparse.Namespace) -> List[Scenario]:
    chosen = set(args.scenarios.split(","))
    out = []
    if "a" in chosen:
        out.append(Scenario("a", 8, "cpu", args.reps, "8 CPU-bound jobs of ~1 s"))
    if "b" in chosen:
        out.append(Scenario("b", 100, "trivial", args.reps, "100 trivial jobs"))
    if "c" in chosen:
        out.append(Scenario("c", 2, "trivial", args.reps, "2 trivial jobs: time to first job"))
    if "d" in chosen:
        for size in args.d_sizes:
            out.append(Scenario(f"d-{size}", size, "trivial", args.reps_d, f"{size} trivial jobs"))
    if "e" in chosen:
        out.append(Scenario("e", 8, "cpu", args.reps, "8 CPU-bound jobs of ~1 s, this launcher on Dask"))
    if "f" in chosen:
        out.append(Scenario("f", 4, "train", args.reps, "4 small PyTorch training jobs, DataLoader(num_workers=2)",
                            app=TORCH_APP, torch=True))  # fmt: skip
    return out


@dataclass(frozen=True)
class Quiet:
    """How runs are kept clear of other processes on a shared machine."""

    max_foreign: float = 0.2  # cores used by others during a run above which it is measured again
    retries: int = 3  # measurements of a disturbed run, at most
    wait_s: float = 120.0  # waiting for a quiet machine before a run, at most
    retry_max_wall_s: float = 60.0  # longer runs are kept even when disturbed (flagged), not repeated


def run_scenario(
    scenario: Scenario,
    pythons: Dict[str, Path],
    launchers: Sequence[str],
    *,
    loops: int,
    workdir: Path,
    timeout_s: float,
    quiet: Quiet = Quiet(),
    discarded: Optional[List[Run]] = None,
) -> List[Run]:
    runs = []
    for rep in range(scenario.reps):
        for launcher in scenario.launchers(launchers):
            for attempt in range(1, quiet.retries + 1):
                waited = wait_until_quiet(quiet.max_foreign, quiet.wait_s)
                run = run_once(
                    pythons[launcher], launcher, scenario=scenario.name, rep=rep, n=scenario.n,
                    work=scenario.work, loops=loops, workdir=workdir, timeout_s=timeout_s, app=scenario.app,
                )  # fmt: skip
                run.waited_quiet_s = waited
                run.disturbed = run.foreign_cores > quiet.max_foreign
                _log_run(scenario, rep, run)
                if not run.disturbed or attempt == quiet.retries or run.wall_s > quiet.retry_max_wall_s:
                    break
                log(f"    disturbed: other processes used {run.foreign_cores:.2f} cores meanwhile; measuring again")
                if discarded is not None:
                    discarded.append(run)
            runs.append(run)
    return runs


def _log_run(scenario: Scenario, rep: int, run: Run) -> None:
    status = "ok" if run.ok else f"FAILED (exit {run.returncode}, {run.jobs_seen}/{run.n} jobs)"
    extra = f", first job {run.first_job_s:.2f}s" if run.first_job_s is not None else ""
    rss = f"{run.peak_rss_mib:.0f}" if run.peak_rss_mib is not None else "?"
    log(
        f"  {scenario.name:7} rep {rep + 1}/{scenario.reps} {run.launcher:8} wall {run.wall_s:7.2f}s "
        f"cpu {run.cpu_s:7.2f}s rss {rss:>4} MiB{extra} leftovers {len(run.leftovers)} "
        f"others {run.foreign_cores:.2f} cores {status}"
    )
    if not run.ok:
        log("    " + run.log_tail.replace("\n", "\n    "))
    for proc in run.leftovers:
        log(f"    leftover pid {proc['pid']} ({proc['state']}): {proc['cmdline']}")


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(
    runs: Sequence[Run],
    scenario_list: Sequence[Scenario],
    launchers: Sequence[str],
    discarded: Sequence[Run] = (),
) -> List[Dict[str, Any]]:
    """Medians per scenario and launcher; leftovers count the discarded (disturbed) runs too."""
    rows = []
    for scenario in scenario_list:
        basic_wall = None
        basic_first = None
        for launcher in scenario.launchers(launchers):
            mine = [r for r in runs if r.scenario == scenario.name and r.launcher == launcher]
            again = [r for r in discarded if r.scenario == scenario.name and r.launcher == launcher]
            good = [r for r in mine if r.ok]
            row: Dict[str, Any] = {
                "scenario": scenario.name,
                "what": scenario.what,
                "launcher": launcher,
                "n": scenario.n,
                "runs": len(mine),
                "ok": len(good),
                "wall_s": _median([r.wall_s for r in good]),
                "cpu_s": _median([r.cpu_s for r in good]),
                "self_cpu_s": _median([r.self_cpu_s for r in good]),
                "peak_rss_mib": _median([r.peak_rss_mib for r in good]),
                "tree_maxrss_mib": _median([r.tree_maxrss_mib for r in good]),
                "first_job_s": _median([r.first_job_s for r in good]),
                "leftovers": sum(len(r.leftovers) for r in [*mine, *again]),
                "runs_with_leftovers": sum(1 for r in [*mine, *again] if r.leftovers),
                "measured_again": len(again),
                "kept_disturbed": sum(1 for r in mine if r.disturbed),
                "foreign_cores": _median([r.foreign_cores for r in mine]),
            }
            if launcher == "basic":
                basic_wall, basic_first = row["wall_s"], row["first_job_s"]
            row["wall_ratio"] = (row["wall_s"] / basic_wall) if basic_wall and row["wall_s"] is not None else None
            row["first_job_vs_basic_s"] = (
                row["first_job_s"] - basic_first
                if basic_first is not None and row["first_job_s"] is not None
                else None
            )
            # Paired ratios: each repetition's run against the basic run of the same repetition.
            pairs = []
            for r in good:
                base = [b for b in runs if b.scenario == scenario.name and b.launcher == "basic" and b.rep == r.rep and b.ok]
                if base:
                    pairs.append(r.wall_s / base[0].wall_s)
            row["paired_wall_ratios"] = [round(p, 3) for p in pairs]
            rows.append(row)
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[Dict[str, Any]]) -> str:
    header = ["scenario", "launcher", "runs ok", "wall s", "CPU s", "launcher CPU s", "peak RSS MiB",
              "wall / basic", "1st job s", "leftovers"]  # fmt: skip
    lines = [header]
    for row in rows:
        leftovers = str(row["leftovers"])
        if row["leftovers"]:
            leftovers += f" (in {row['runs_with_leftovers']}/{row['runs'] + row['measured_again']} runs)"
        lines.append([
            row["scenario"], row["launcher"], f"{row['ok']}/{row['runs']}", _fmt(row["wall_s"], ".2f"),
            _fmt(row["cpu_s"], ".2f"), _fmt(row["self_cpu_s"], ".2f"), _fmt(row["peak_rss_mib"], ".0f"),
            _fmt(row["wall_ratio"], ".2f"), _fmt(row["first_job_s"], ".2f"), leftovers,
        ])  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _row(rows: Sequence[Dict[str, Any]], scenario: str, launcher: str) -> Optional[Dict[str, Any]]:
    for row in rows:
        if row["scenario"] == scenario and row["launcher"] == launcher:
            return row
    return None


def _trivial_points(rows: Sequence[Dict[str, Any]], launcher: str) -> List[Tuple[int, float]]:
    """(number of jobs, median wall s) of every trivial-job scenario (c, b, d-*), by number of jobs."""
    by_n: Dict[int, List[float]] = {}
    for row in rows:
        if row["launcher"] == launcher and row["wall_s"] is not None and row["scenario"][0] in "bcd":
            by_n.setdefault(row["n"], []).append(row["wall_s"])
    return sorted((n, statistics.mean(walls)) for n, walls in by_n.items())


def check_targets(rows: Sequence[Dict[str, Any]], d_sizes: Sequence[int], launcher: str = "this") -> List[Dict[str, Any]]:
    """The issue's targets for ``launcher``, each with the measured value and whether it holds."""
    checks: List[Dict[str, Any]] = []

    def add(name: str, holds: Optional[bool], measured: str, target: str, who: str = launcher) -> None:
        checks.append({"target": name, "launcher": who, "holds": holds, "measured": measured, "wanted": target})

    for scen, limit in (("a", TARGET_A), ("b", TARGET_B)):
        row = _row(rows, scen, launcher)
        if row and row["wall_ratio"] is not None:
            add(f"({scen}) wall / basic", row["wall_ratio"] <= limit, f"{row['wall_ratio']:.2f}", f"<= {limit}")
    row = _row(rows, "c", launcher)
    if row and row["first_job_vs_basic_s"] is not None:
        add("(c) first job vs basic", row["first_job_vs_basic_s"] <= TARGET_C_S,
            f"{row['first_job_vs_basic_s']:+.2f} s", f"<= +{TARGET_C_S} s")  # fmt: skip
    if d_sizes:
        big = max(d_sizes)
        row, base = _row(rows, f"d-{big}", launcher), _row(rows, f"d-{big}", "basic")
        if row and base and row["peak_rss_mib"] and base["peak_rss_mib"]:
            ratio = row["peak_rss_mib"] / base["peak_rss_mib"]
            add(f"(d) peak RSS / basic at {big} jobs", ratio <= TARGET_D_RSS, f"{ratio:.2f}", f"<= {TARGET_D_RSS}")
    points = _trivial_points(rows, launcher)
    if len(points) >= 3:
        (n0, w0), (n1, w1) = points[0], points[1]
        (m0, v0), (m1, v1) = points[-2], points[-1]
        first, last = (w1 - w0) / (n1 - n0), (v1 - v0) / (m1 - m0)
        growth = last / first if first > 0 else float("inf")
        add(f"(d) linear growth: per-job cost {n0}->{n1} vs {m0}->{m1} jobs", growth <= LINEAR_TOLERANCE,
            f"{first * 1000:.1f} -> {last * 1000:.1f} ms/job ({growth:.2f})", f"<= {LINEAR_TOLERANCE}")  # fmt: skip
    for who, limit in ((launcher, TARGET_F_LOKY), *(((MP, TARGET_F_MP),) if launcher == "this" else ())):
        row = _row(rows, "f", who)
        if row and row["wall_ratio"] is not None:
            add("(f) PyTorch sweep wall / basic", row["wall_ratio"] <= limit, f"{row['wall_ratio']:.2f}",
                f"<= {limit}", who)  # fmt: skip
    mine = [r for r in rows if r["launcher"] in ((launcher, MP) if launcher == "this" else (launcher,))]
    if mine:
        total = sum(r["leftovers"] for r in mine)
        add("no process left behind", total == 0, f"{total} leftover processes", "0")
    return checks


def machine() -> Dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        **(SNAPSHOT_OF or git_state()),
    }


# -- entry points ----------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 repetitions for a-c, 1 for d, d at 100 and 500 jobs")  # fmt: skip
    parser.add_argument("--guard", action="store_true",
                        help="CI: scenario b at --guard-jobs jobs, basic vs this only; exit 1 if "
                        "this launcher's median wall time exceeds --guard-max-ratio x basic")  # fmt: skip
    parser.add_argument("--guard-jobs", type=int, default=30)
    parser.add_argument("--guard-reps", type=int, default=3)
    parser.add_argument("--guard-max-ratio", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=None, help="repetitions of a, b and c (default 5)")
    parser.add_argument("--reps-d", type=int, default=None, help="repetitions of d (default 3)")
    parser.add_argument("--d-sizes", default=None, help="numbers of jobs for d (default 100,2000)")
    parser.add_argument("--scenarios", default="a,b,c,d,e,f", help="which of a,b,c,d,e,f to run (default all)")
    parser.add_argument("--launchers", default=",".join(LAUNCHERS), help="default basic,this,released")
    parser.add_argument("--python", default=None,
                        help="an interpreter with this launcher installed (and the dask extra, for e), used "
                        "for basic, this and this-dask instead of building env-this (for example CI's venv)")  # fmt: skip
    parser.add_argument("--base-python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--env-dir", type=Path, default=default_cache_dir(),
                        help="where the throwaway venvs live, reused if present "
                        "(default $HYDRA_JOBLIB_BENCH_DIR or ~/.cache/hydra-joblib-launcher-bench)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before one run is killed")
    parser.add_argument("--max-foreign", type=float, default=Quiet.max_foreign,
                        help="a run during which other processes used more than this many cores "
                        "(mean) is measured again (default %(default)s)")  # fmt: skip
    parser.add_argument("--retries", type=int, default=Quiet.retries,
                        help="measurements of a disturbed run, at most (default %(default)s)")  # fmt: skip
    parser.add_argument("--quiet-wait", type=float, default=Quiet.wait_s,
                        help="seconds to wait for a quiet machine before each run, at most")  # fmt: skip
    parser.add_argument("--retry-max-wall", type=float, default=Quiet.retry_max_wall_s,
                        help="a disturbed run longer than this is kept (flagged), not measured again")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write all runs and the summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = args.reps or 2
        args.reps_d = args.reps_d or 1
        args.d_sizes = args.d_sizes or "100,500"
    args.reps = args.reps or 5
    args.reps_d = args.reps_d or 3
    args.d_sizes = [int(s) for s in (args.d_sizes or "100,2000").split(",") if s.strip()]
    return args


def _env_pythons(args: argparse.Namespace, launchers: Sequence[str], dask: bool = False) -> Dict[str, Path]:
    args.env_dir.mkdir(parents=True, exist_ok=True)
    log(f"environments in {args.env_dir}")
    if args.python:
        this = with_dask = Path(args.python)
    else:
        this = build_this_env(args.env_dir, args.base_python)
        # the slurm extra: dask's, and dask-jobqueue for this-slurm
        with_dask = build_this_env(args.env_dir, args.base_python, "slurm") if dask else this
    pythons = {"basic": this, "this": this, DASK: with_dask, SLURM: with_dask}
    if "released" in launchers:
        pythons["released"] = build_released_env(args.env_dir, args.base_python, package_versions(this))
    return pythons


def _torch_pythons(args: argparse.Namespace, launchers: Sequence[str], pins: Dict[str, Optional[str]]
                   ) -> Optional[Dict[str, Path]]:  # fmt: skip
    """The interpreters of scenario f, with torch; None (f is skipped) when torch cannot be had."""
    try:
        if args.python:
            this = Path(args.python)
            _isolated(this, "import torch")
        else:
            this = build_this_env(args.env_dir, args.base_python, packages=[TORCH], tag="torch")
        pythons = {"basic": this, "this": this, MP: this}
        if "released" in launchers:
            pythons["released"] = build_released_env(args.env_dir, args.base_python, pins, packages=[TORCH],
                                                     tag="torch")  # fmt: skip
    except (SystemExit, subprocess.CalledProcessError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        log(f"scenario f skipped: no {TORCH} in its environments ({first}; see the env logs in {args.env_dir})")
        return None
    return pythons


def _warm_up(pythons: Dict[str, Path], launchers: Sequence[str], workdir: Path, timeout_s: float,
             app: Path = APP) -> None:  # fmt: skip
    """One untimed 2-job sweep per launcher: imports compiled and cached, nothing measured cold.

    A launcher that cannot run the PyTorch app (1.2.0: see the table) is measured all the
    same: its runs are counted as failed, the others go on.
    """
    for launcher in launchers:
        run = run_once(pythons[launcher], launcher, scenario="warmup", rep=0, n=2, work="trivial",
                       loops=0, workdir=workdir, timeout_s=timeout_s, app=app)  # fmt: skip
        if not run.ok and app == TORCH_APP:
            log(f"warm-up run of {launcher} on the PyTorch app failed (exit {run.returncode}); its runs "
                f"of f will fail too:\n    " + run.log_tail.replace("\n", "\n    "))  # fmt: skip
        elif not run.ok:
            raise SystemExit(f"warm-up run of {launcher} failed (exit {run.returncode}):\n{run.log_tail}")


def _quiet(args: argparse.Namespace) -> Quiet:
    return Quiet(max_foreign=args.max_foreign, retries=max(1, args.retries), wait_s=args.quiet_wait,
                 retry_max_wall_s=args.retry_max_wall)  # fmt: skip


def guard(args: argparse.Namespace) -> int:
    launchers = ("basic", "this")
    pythons = _env_pythons(args, launchers)
    log(f"this launcher: {plugin_check(pythons['this'])}")
    become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="hydra-joblib-bench-"))
    try:
        _warm_up(pythons, launchers, workdir, args.timeout)
        scenario = Scenario("guard", args.guard_jobs, "trivial", args.guard_reps, f"{args.guard_jobs} trivial jobs")
        runs = run_scenario(scenario, pythons, launchers, loops=0, workdir=workdir, timeout_s=args.timeout,
                            quiet=_quiet(args))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(runs, [scenario], launchers)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "summary": rows}, indent=1))
    if not all(r.ok for r in runs):
        log("guard: some runs failed, nothing to compare")
        return 2
    this = _row(rows, "guard", "this")
    assert this is not None and this["wall_ratio"] is not None
    ratio = this["wall_ratio"]
    if this["leftovers"]:
        log(f"guard: warning: {this['leftovers']} processes were left alive by this launcher's runs")
    verdict = "FAIL" if ratio > args.guard_max_ratio else "ok"
    log(f"guard: this / basic median wall time = {ratio:.2f} (fails above {args.guard_max_ratio:g}): {verdict}")
    return 1 if ratio > args.guard_max_ratio else 0


def full(args: argparse.Namespace) -> int:
    launchers = [name for name in args.launchers.split(",") if name]
    unknown = set(launchers) - set(LAUNCHERS)
    if unknown or "basic" not in launchers:
        raise SystemExit(f"--launchers: choose among {','.join(LAUNCHERS)}, basic included")
    pythons = _env_pythons(args, launchers, dask="e" in args.scenarios.split(","))
    versions = {name: package_versions(pythons[name]) for name in ("this", "released") if name in pythons}
    for name in ("this", "released"):
        if name in pythons:
            log(f"{name:8}: {plugin_check(pythons[name])}")
    subreaper = become_subreaper()
    loops = calibrate_loops(pythons["this"]) if {"a", "e"} & set(args.scenarios.split(",")) else 0
    info = machine()
    log(f"machine: {info}")
    log(f"versions: {json.dumps(versions)}")
    log(f"cpu loop: {loops} iterations ~ 1 s; subreaper: {subreaper}")
    scenario_list = scenarios(args)
    torch_pythons = None
    if any(s.torch for s in scenario_list):
        torch_pythons = _torch_pythons(args, launchers, package_versions(pythons["this"]))
        if torch_pythons is None:
            scenario_list = [s for s in scenario_list if not s.torch]
        else:
            for name in ("this", "released"):
                if name in torch_pythons:
                    versions[f"{name}-torch"] = package_versions(torch_pythons[name], ["torch"])
                    log(f"{name}-torch: {plugin_check(torch_pythons[name])}, {versions[f'{name}-torch']['torch']}")
    workdir = Path(tempfile.mkdtemp(prefix="hydra-joblib-bench-"))
    runs: List[Run] = []
    discarded: List[Run] = []
    started = time.time()
    try:
        for group, group_pythons, app in ((False, pythons, APP), (True, torch_pythons, TORCH_APP)):
            chosen = {name for s in scenario_list if s.torch == group for name in s.launchers(launchers)}
            if chosen and group_pythons is not None:
                _warm_up(group_pythons, sorted(chosen, key=ORDER.index), workdir, args.timeout, app)
        for scenario in scenario_list:
            log(f"scenario {scenario.name}: {scenario.what}, {scenario.reps} alternating repetitions")
            scenario_pythons = torch_pythons if scenario.torch and torch_pythons is not None else pythons
            runs += run_scenario(scenario, scenario_pythons, launchers, loops=loops, workdir=workdir,
                                 timeout_s=args.timeout, quiet=_quiet(args), discarded=discarded)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(runs, scenario_list, launchers, discarded)
    d_sizes = args.d_sizes if "d" in args.scenarios else []
    checks = check_targets(rows, d_sizes, "this")
    if "released" in launchers:
        checks += check_targets(rows, d_sizes, "released")
    print()
    print(f"Medians over alternating repetitions; n_jobs={N_JOBS} for both joblib launchers; "
          f"total {time.time() - started:.0f} s; {len(discarded)} disturbed runs measured again; "
          f"{sum(r.disturbed for r in runs)} kept disturbed")  # fmt: skip
    print(table(rows))
    print()
    for check in checks:
        verdict = {True: "holds", False: "MISSED", None: "?"}[check["holds"]]
        print(f"  {check['launcher']:8} {check['target']}: {check['measured']} (target {check['wanted']}): {verdict}")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "versions": versions, "cpu_loops": loops, "n_jobs": N_JOBS,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "runs": [asdict(r) for r in runs], "summary": rows, "targets": checks,
            "discarded_disturbed_runs": [asdict(r) for r in discarded],
        }, indent=1))  # fmt: skip
        log(f"wrote {args.json}")
    return 0 if all(r.ok for r in runs) else 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return guard(args) if args.guard else full(args)


if __name__ == "__main__":
    sys.exit(main())
