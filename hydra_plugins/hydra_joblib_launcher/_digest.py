"""What a job's config is, for resume: a digest of what decides what the job does, and what changed.

    job's process: composed config ─▶ job_view ─▶ digest ─▶ JobOutcome.config_digest ─▶ jobs.jsonl
    resume:        composed again  ─▶ job_view ─▶ digest ─▶ the same? skip : run again,
                   and for the first job that runs again, changed_keys(stored JobReturn's view, now)

A job's view is its task config (everything but ``hydra``) and the part of
``hydra`` that changes what the job does: ``hydra.job`` (its name, config
name, ``chdir``, ``env_set``, ``env_copy``), ``hydra.callbacks``,
``hydra.env``, and any key a later Hydra adds. Left out, because they say
where and how a launch runs, not what its jobs compute: :data:`RUN_TIME_KEYS`
of ``hydra`` (dirs, launcher and sweeper settings, logging, what was typed on
the command line, the run-time facts) and :data:`RUN_TIME_JOB_KEYS` of
``hydra.job`` (its number, id and dir name). The task's overrides are compared
apart, as they are.

The view is taken before interpolations are resolved: ``${now:...}`` or a
resolver's value does not make a job look changed, and a changed value an
interpolation points to is itself in the view. Environment variables read
through ``${oc.env:...}``, and code, are not part of it.
"""

import enum
import hashlib
import json
from typing import Any, Dict, Iterable, List, Optional, Tuple

from omegaconf import Container, DictConfig, OmegaConf

RUN_TIME_KEYS = frozenset(
    {
        "run",
        "sweep",
        "launcher",
        "sweeper",
        "hydra_logging",
        "job_logging",
        "verbose",
        "output_subdir",
        "overrides",
        "runtime",
        "mode",
        "searchpath",  # what it finds is in the composed config
        "defaults",
        "help",
        "hydra_help",
    }
)
RUN_TIME_JOB_KEYS = frozenset({"id", "num", "override_dirname", "config"})

SHOWN_CHANGES = 5
SHOWN_VALUE_CHARS = 40


def job_view(task: DictConfig, hydra: Optional[DictConfig]) -> Dict[str, Any]:
    """The parts of a job's config that decide what it does, as plain data, unresolved.

    ``task``: the task config (a ``hydra`` key in it is left out); ``hydra``:
    the ``hydra`` node, if known.
    """
    view = _plain(task, [key for key in task.keys() if key != "hydra"])
    if hydra is not None:
        kept = _plain(hydra, [k for k in hydra.keys() if k not in RUN_TIME_KEYS | {"job"}])
        job = hydra._get_node("job")
        if isinstance(job, DictConfig):
            kept["job"] = _plain(job, [k for k in job.keys() if k not in RUN_TIME_JOB_KEYS])
        view["hydra"] = kept
    return view


def config_view(config: DictConfig) -> Dict[str, Any]:
    """The view of a job's whole composed config (the task's keys and ``hydra``)."""
    hydra = config._get_node("hydra") if "hydra" in config else None
    return job_view(config, hydra if isinstance(hydra, DictConfig) else None)


def digest(view: Dict[str, Any]) -> str:
    text = json.dumps(view, sort_keys=True, default=_json_value, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(parent: DictConfig, keys: Iterable[Any]) -> Dict[str, Any]:
    # Node by node: converting the whole config (help texts, logging, launcher)
    # took a job 2 ms; these few subtrees, 0.2 ms.
    out: Dict[str, Any] = {}
    for key in keys:
        node = parent._get_node(key)
        if node is None:
            continue
        if isinstance(node, Container) and not (
            node._is_none() or node._is_missing() or node._is_interpolation()
        ):
            out[str(key)] = OmegaConf.to_container(node, resolve=False)
        else:
            out[str(key)] = node._value()
    return out


def _json_value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    return repr(value)


def changed_keys(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """'model.width 10 -> 20', one per key whose value differs (at most SHOWN_CHANGES, then '...')."""
    before, after = dict(_flat(old)), dict(_flat(new))
    keys = sorted(set(before) | set(after))
    changes = [
        f"{key} {_shown(before, key)} -> {_shown(after, key)}"
        for key in keys
        if before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]
    if len(changes) > SHOWN_CHANGES:
        changes = changes[:SHOWN_CHANGES] + [f"and {len(changes) - SHOWN_CHANGES} more"]
    return changes


_ABSENT = object()


def _flat(value: Any, prefix: str = "") -> Iterable[Tuple[str, Any]]:
    """Leaves by dotted key; an empty dict has none (a key added to it shows as added)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def _shown(values: Dict[str, Any], key: str) -> str:
    if key not in values:
        return "(absent)"
    text = json.dumps(values[key], default=_json_value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."
