"""What resume compares, without running a sweep: the config digest, the manifest reader, the job dirs.

A job's digest must change with what decides what the job does (its task
config, ``hydra.job``'s settings, callbacks) and with nothing that says where
or how a launch runs (dirs, launcher and sweeper settings, what was typed on
the command line, run-time facts, the job's number).
"""

import json
import logging
import pickle
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.hydra_joblib_launcher._digest import changed_keys, config_view, digest
from hydra_plugins.hydra_joblib_launcher._durable import kept_records
from hydra_plugins.hydra_joblib_launcher._manifest import MANIFEST, close_cut_line, read_records


def composed(**task: object) -> DictConfig:
    """A job's composed config: ``task`` and a ``hydra`` node shaped as Hydra's."""
    config = OmegaConf.create(
        {
            "lr": 0.1,
            "model": {"name": "small", "width": 5},
            "stamp": "${now:%H-%M-%S}",
            **task,
            "hydra": {
                "run": {"dir": "outputs/${now:%Y-%m-%d}"},
                "sweep": {"dir": "multirun/a", "subdir": "${hydra.job.num}"},
                "launcher": {"n_jobs": 2, "resume": False},
                "sweeper": {"max_batch_size": None},
                "job_logging": {"root": {"level": "INFO"}},
                "verbose": False,
                "overrides": {"hydra": ["hydra.launcher.n_jobs=2"], "task": ["model=small"]},
                "runtime": {"cwd": "/here", "output_dir": "???"},
                "callbacks": {},
                "env": {},
                "job": {
                    "name": "app",
                    "chdir": None,
                    "override_dirname": "model=small",
                    "id": "???",
                    "num": "???",
                    "config_name": "config",
                    "env_set": {},
                    "env_copy": [],
                },
            },
        }
    )
    assert isinstance(config, DictConfig)
    return config


def digest_of(config: DictConfig) -> str:
    return digest(config_view(config))


@pytest.mark.parametrize(
    "key, value",
    [
        ("hydra.launcher.resume", True),
        ("hydra.launcher.n_jobs", 8),
        ("hydra.sweep.dir", "/elsewhere"),
        ("hydra.overrides.hydra", ["hydra.launcher.resume=true"]),
        ("hydra.runtime.output_dir", "/elsewhere/0"),
        ("hydra.job.num", 3),
        ("hydra.job.id", "app_3"),
        ("hydra.job_logging.root.level", "DEBUG"),
        ("hydra.verbose", True),
    ],
)
def test_where_and_how_a_launch_runs_is_not_part_of_a_job(key: str, value: object) -> None:
    config = composed()
    before = digest_of(config)
    OmegaConf.update(config, key, value, force_add=True)
    assert digest_of(config) == before


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.width", 10),
        ("lr", 0.2),
        ("extra", 1),
        ("hydra.job.chdir", True),
        ("hydra.job.env_set", {"SEED": "1"}),
        ("hydra.callbacks", {"save": {"_target_": "x.Save"}}),
    ],
)
def test_what_a_job_does_is_part_of_it(key: str, value: object) -> None:
    config = composed()
    before = digest_of(config)
    OmegaConf.update(config, key, value, force_add=True)
    assert digest_of(config) != before


def test_interpolations_are_compared_as_written_not_resolved() -> None:
    assert digest_of(composed()) == digest_of(composed())  # ${now:...} resolves differently
    assert digest_of(composed()) != digest_of(composed(stamp="${now:%H}"))


def test_the_changed_keys_name_old_and_new_values() -> None:
    old, new = composed(), composed(lr=0.2, extra=1)
    new.model.width = 10
    new.hydra.launcher.n_jobs = 8  # not part of the job
    assert changed_keys(config_view(old), config_view(new)) == [
        "extra (absent) -> 1",
        "lr 0.1 -> 0.2",
        "model.width 5 -> 10",
    ]


def record(
    num: int, status: str = "COMPLETED", ended: str = "2026-01-01T00:00:00.000+00:00"
) -> str:
    return json.dumps({"num": num, "overrides": [f"x={num}"], "status": status, "ended": ended})


def test_the_manifest_reader_keeps_each_jobs_last_record_and_warns_of_cut_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cut = record(2)[:20]
    (tmp_path / MANIFEST).write_text(
        "\n".join(
            [record(0, "FAILED"), record(1), record(0, ended="2026-01-01T00:00:01.000+00:00"), cut]
        )
    )
    with caplog.at_level(logging.WARNING):
        records = read_records(tmp_path)
    assert {key: r["status"] for key, r in records.items()} == {
        ("x=0",): "COMPLETED",
        ("x=1",): "COMPLETED",
    }
    assert (
        f"{tmp_path / MANIFEST}: line 4 is not a whole record (cut short?); ignored" in caplog.text
    )

    close_cut_line(tmp_path)  # the next record starts on a line of its own
    with open(tmp_path / MANIFEST, "a") as f:
        f.write(record(2) + "\n")
    assert ("x=2",) in read_records(tmp_path)


def test_job_dirs_are_found_without_walking_the_jobs_outputs(tmp_path: Path) -> None:
    for num, subdir in [(0, "lr=0.1/seed=1"), (1, "lr=0.1/seed=2"), (2, "2")]:
        hydra_dir = tmp_path / subdir / ".hydra"
        hydra_dir.mkdir(parents=True)
        kept = {"num": num, "overrides": [f"x={num}"], "ended": 1.0, "completed": True}
        (hydra_dir / "job_outcome.json").write_text(json.dumps(kept))
    # a job's own output that looks like a job dir is not one
    nested = tmp_path / "2" / "checkpoints" / ".hydra"
    nested.mkdir(parents=True)
    (nested / "job_outcome.json").write_text(json.dumps({**kept, "overrides": ["x=9"]}))
    (tmp_path / ".hydra-joblib-abc" / "x" / ".hydra").mkdir(parents=True)  # a marker dir

    assert sorted(kept_records(tmp_path)) == [("x=0",), ("x=1",), ("x=2",)]


def stored_job(sweep_dir: Path, num: int, *, digest_: "str | None", value: int) -> str:
    """A job that completed before: its JobReturn on disk and its line in jobs.jsonl."""
    from hydra.core.utils import JobReturn, JobStatus

    path = sweep_dir / str(num) / ".hydra" / "job_return.pkl"
    path.parent.mkdir(parents=True)
    ret = JobReturn(overrides=[f"x={num}"], status=JobStatus.COMPLETED, _return_value=value)
    ret.cfg = OmegaConf.create({"x": num})
    ret.hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": num}}})
    path.write_bytes(pickle.dumps(ret))
    line = {
        "num": num,
        "overrides": [f"x={num}"],
        "status": "COMPLETED",
        "ended": "2026-01-01T00:00:00.000+00:00",
        "return_file": str(path),
    }
    if digest_ is not None:
        line["config_digest"] = digest_
    with open(sweep_dir / MANIFEST, "a") as f:
        f.write(json.dumps(line) + "\n")
    return str(path)


def test_resume_skips_a_job_only_when_its_config_is_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hydra_plugins.hydra_joblib_launcher._plan import JobSpec
    from hydra_plugins.hydra_joblib_launcher._resume import load_completed

    def config(num: int, x: int) -> DictConfig:
        composed = OmegaConf.create({"x": x, "hydra": {"job": {"num": num}}})
        assert isinstance(composed, DictConfig)
        return composed

    same, changed = digest_of(config(0, 0)), digest_of(config(1, 1))
    stored_job(tmp_path, 0, digest_=same, value=10)
    stored_job(tmp_path, 1, digest_=changed, value=11)
    stored_job(tmp_path, 2, digest_=None, value=12)  # recorded by an older launcher
    specs = [
        JobSpec(num=n, overrides=(f"x={n}",), context_file="", marker_dir=str(tmp_path))
        for n in range(4)
    ]
    now = {0: config(0, 0), 1: config(1, 5), 2: config(2, 7), 3: config(3, 3)}

    with caplog.at_level(logging.INFO):
        done = load_completed(specs, tmp_path, compose=lambda spec: now[spec.num])

    assert {num: ret.return_value for num, ret in done.items()} == {0: 10, 2: 12}
    assert "1 job completed before runs again: their config changed" in caplog.text
    assert "#1 : x=1 changed: x 1 -> 5" in caplog.text
    assert "1 job recorded without their config's digest" in caplog.text
