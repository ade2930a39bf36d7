"""A sweep app whose jobs start processes of their own and may leave them running.

Sweep over ``+name=a,b,...``; ``+modes.<name>=<mode>`` picks what job ``<name>`` does:

* ok (default): starts nothing, returns;
* leave: starts a child, returns with the child still running;
* sleep: starts a child, then sleeps far past any timeout;
* stubborn: as sleep, but catches the JobTimeout raised in it, so that only a
  hard stop of its process ends it;
* sigkill: starts a child, then kills its own process.

The child is ``sleep 300``. ``+child=<how>`` says how it is started: plain (a
child of the job's process), orphan (through a process that exits at once, so
the sleep's parent is gone), session (an orphan in a session of its own, as a
daemon makes itself). The job writes the sleep's pid into ``child.pid`` in its
output dir and, with ``+pid_dir=<dir>``, into ``<dir>/<name>.pid``.
``+no_subreaper=true`` first makes the job's process stop adopting orphans (as
on a platform without Linux's child subreapers).

With ``+pid_dir``, each job first writes ``<dir>/<name>.saw.json``: for each
``*.pid`` file of another job already there, whether that pid was running
(alive and not a zombie) when this job started.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import hydra
from hydra_compat import MAIN_KWARGS
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# Kept referenced, so that no Popen object is collected (with a warning) while its child runs.
CHILDREN: List["subprocess.Popen[bytes]"] = []

# A child holding the app's output pipes would keep a test that reads them waiting.
QUIET = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

START_ORPHAN = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(['sleep', '300'], start_new_session=sys.argv[1] == 'session',\n"
    "                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
    "                     stderr=subprocess.DEVNULL)\n"
    "print(p.pid)\n"
)


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def start_child(how: str) -> int:
    if how == "plain":
        child = subprocess.Popen(["sleep", "300"], **QUIET)
        CHILDREN.append(child)
        return child.pid
    out = subprocess.run(
        [sys.executable, "-c", START_ORPHAN, how], check=True, capture_output=True, text=True
    ).stdout
    return int(out)


def note_others(pid_dir: Path, name: str) -> None:
    saw: Dict[str, bool] = {}
    for path in pid_dir.glob("*.pid"):
        if path.stem != name:
            pid = int(path.read_text())
            saw[str(pid)] = running(pid)
    (pid_dir / f"{name}.saw.json").write_text(json.dumps(saw))


@hydra.main(**MAIN_KWARGS, config_path=None, config_name=None)
def main(cfg: DictConfig) -> object:
    name = str(cfg.get("name", "job"))
    mode = (cfg.get("modes") or {}).get(name, "ok")
    pid_dir = Path(cfg.pid_dir) if cfg.get("pid_dir") else None
    if pid_dir is not None:
        note_others(pid_dir, name)
    if mode == "ok":
        return name
    if cfg.get("no_subreaper"):
        import ctypes

        ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER off
    pid = start_child(str(cfg.get("child", "plain")))
    (Path(HydraConfig.get().runtime.output_dir) / "child.pid").write_text(str(pid))
    if pid_dir is not None:
        partial = pid_dir / f"{name}.pid.partial"
        partial.write_text(str(pid))
        partial.rename(pid_dir / f"{name}.pid")
    if mode == "sleep":
        time.sleep(600)
    if mode == "stubborn":
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                time.sleep(1)
            except Exception:  # noqa: BLE001 - the JobTimeout: ignored on purpose
                pass
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    return name


if __name__ == "__main__":
    main()
