"""A sweep dir read after the fact, from any host that mounts it: for ``hydra-joblib status`` and ``report``.

    sweep dir ─▶ status.json (_status)  what runs now, and whether its launcher lives
              ─▶ jobs.jsonl (_manifest) every job that ended
              ─▶ multirun.yaml (Hydra)  how the sweep was started, when status.json cannot say
              ══▶ Sweep: the state, the jobs, the command that resumes it

A dir that is not a sweep dir, or files written by a newer version, are one
SweepDirError.
"""

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ._errors import SweepDirError
from ._manifest import MANIFEST, read_records
from ._status import ENDED_STATES, STATUS, launcher_alive, read_status

MULTIRUN = "multirun.yaml"
_REPLACED = ("hydra.launcher.resume=", "hydra.sweep.dir=")


@dataclass(frozen=True)
class Sweep:
    """What a sweep dir says of its sweep, read at ``read_at``."""

    path: Path
    status: Optional[Dict[str, Any]]
    records: List[Dict[str, Any]]  # the last record of each ended job, by job number
    hydra: Dict[str, Any]  # multirun.yaml's ``hydra`` section, or {}
    alive: Optional[bool]  # the launcher runs (None: cannot tell)
    read_at: float

    @property
    def state(self) -> str:
        """running, gone (its launcher died), finished, interrupted, failed, or unknown."""
        if self.status is None:
            return "unknown"
        state = str(self.status.get("state"))
        if state in ENDED_STATES:
            return state
        return "gone" if self.alive is False else "running"

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [record for record in self.records if record.get("status") == "FAILED"]

    def needs_resume(self) -> bool:
        """The sweep stopped short of its end: resuming it would run what is left."""
        return self.state in ("gone", "interrupted", "failed")

    def resume_command(self) -> Optional[str]:
        """The command that resumes the sweep: its own, with resume on and the same sweep dir."""
        status = self.status or {}
        launcher = status.get("launcher") or {}
        sweep_dir = str(status.get("sweep_dir") or self.path.absolute())
        extra = ["hydra.launcher.resume=true", f"hydra.sweep.dir={sweep_dir}"]
        argv = launcher.get("argv")
        if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
            kept = [arg for arg in argv[1:] if not arg.startswith(_REPLACED)]
            command = [str(launcher.get("python") or "python"), argv[0], *kept, *extra]
            return f"cd {shlex.quote(str(launcher.get('cwd') or '.'))} && {shlex.join(command)}"
        return self._command_from_hydra(extra)

    def _command_from_hydra(self, extra: List[str]) -> Optional[str]:
        """The command rebuilt from multirun.yaml (the app's script is named after its job)."""
        job, runtime = self.hydra.get("job") or {}, self.hydra.get("runtime") or {}
        overrides = self.hydra.get("overrides") or {}
        if not job.get("name"):
            return None
        given = [*(overrides.get("hydra") or []), *(overrides.get("task") or [])]
        kept = [str(arg) for arg in given if not str(arg).startswith((*_REPLACED, "hydra.mode="))]
        command = ["python", f"{job['name']}.py", "--multirun", *kept, *extra]
        cwd = shlex.quote(str(runtime.get("cwd") or "."))
        return f"cd {cwd} && {shlex.join(command)}"

    def as_json(self) -> Dict[str, Any]:
        return {
            "sweep_dir": str(self.path.absolute()),
            "state": self.state,
            "launcher_alive": self.alive,
            "status": self.status,
            "jobs": self.records,
            # unknown: no status.json says whether it ended; the command, in case it did not
            "resume_command": (
                self.resume_command() if self.needs_resume() or self.state == "unknown" else None
            ),
        }


def read_sweep(path: Path) -> Sweep:
    """The sweep in ``path``, or one SweepDirError saying why ``path`` is not one this can read."""
    if not path.is_dir():
        why = "does not exist" if not path.exists() else "is not a directory"
        raise SweepDirError(f"{path} {why}: give the sweep dir (hydra.sweep.dir) of a multirun")
    if not any((path / name).exists() for name in (STATUS, MANIFEST, MULTIRUN)):
        raise SweepDirError(
            f"{path} is not a sweep dir: it holds none of {STATUS}, {MANIFEST} or {MULTIRUN}. "
            "Give the dir a multirun writes into (hydra.sweep.dir, by default "
            "multirun/<date>/<time>), not one of its job dirs or its parent"
        )
    status = read_status(path)
    records = sorted(
        read_records(path, refuse_newer=True).values(), key=lambda record: record.get("num", -1)
    )
    now = time.time()
    alive = launcher_alive(status, now=now) if status is not None else None
    return Sweep(path, status, records, _hydra_section(path), alive, now)


def _hydra_section(path: Path) -> Dict[str, Any]:
    try:
        import yaml  # PyYAML, which OmegaConf depends on

        with open(path / MULTIRUN, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except (OSError, ValueError, ImportError):
        return {}
    except Exception:  # noqa: BLE001 - yaml's errors: an unreadable file tells nothing
        return {}
    section = loaded.get("hydra") if isinstance(loaded, dict) else None
    return section if isinstance(section, dict) else {}
