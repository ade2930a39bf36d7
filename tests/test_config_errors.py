"""A bad ``hydra.launcher`` value, as a user meets it: one clear message, no traceback, no job run.

Each case runs a real Hydra app in a subprocess,
``app -m hydra/launcher=joblib hydra.sweep.dir=<tmp>/sweep +x=1,2 <bad value>``.
"""

from pathlib import Path
from typing import List

import pytest

from conftest import APPS, run_app

APP = APPS / "tiny.py"
ALL_BACKENDS = "choose one of: loky, multiprocessing, dask, ray"

# (overrides under hydra.launcher, what the message shows of the key and value, what is allowed)
CASES = [
    (["backend=nope"], "backend='nope'", ALL_BACKENDS),
    (["backend=threading"], "backend='threading'", ALL_BACKENDS),
    (["backend=sequential"], "backend='sequential'", ALL_BACKENDS),
    (["n_jobs=0"], "n_jobs=0", "use a positive number of jobs"),
    (["prefer=foo"], "prefer='foo'", "choose one of: processes, threads"),
    (["require=sharedmem"], "require='sharedmem'", "only null is allowed"),
    # timeout is a float field: Hydra hands the launcher 0.0 and -1.0
    (["timeout=0"], "timeout=0", "give a positive number of seconds"),
    (["timeout=-1"], "timeout=-1", "give a positive number of seconds"),
    (["pre_dispatch=lots"], "pre_dispatch='lots'", '"all", or an expression'),
    (["pre_dispatch=0"], "pre_dispatch='0'", "give a positive integer"),
    # joblib would dispatch no job at all with this
    (["pre_dispatch=0*n_jobs"], "pre_dispatch='0*n_jobs'", "give a positive integer"),
    (["batch_size=fast"], "batch_size='fast'", 'a positive integer or "auto"'),
    (["batch_size=0"], "batch_size='0'", 'a positive integer or "auto"'),
    (["max_nbytes=huge"], "max_nbytes='huge'", "give a size in bytes"),
    (["inner_max_num_threads=0"], "inner_max_num_threads=0", "give a positive integer or null"),
    # upstream's keys and limits (hydra-joblib-launcher 1.4)
    (["n_jobs=-100"], "n_jobs=-100", "a negative n_jobs goes down to"),
    (["maxtasksperchild=1"], "maxtasksperchild=1", "applies to backend=multiprocessing only"),
    (
        ["backend=multiprocessing", "maxtasksperchild=2"],
        "maxtasksperchild=2",
        "give 1 or null",
    ),
    (["backend=multiprocessing", "batch_size=2"], "batch_size='2'", 'give 1 or "auto"'),
    (
        ["devices=[0]", "devices_per_job=2"],
        "devices=[0] holds 1 device id(s), but hydra.launcher.devices_per_job=2",
        "list more devices or lower devices_per_job",
    ),
    (["gpus_per_job=1"], "gpus_per_job=1.0", "hydra.launcher.devices=auto"),
    (
        ["backend=dask", "dask.address=tcp://127.0.0.1:1", "devices=[0]"],
        "devices=[0]",
        "use hydra.launcher.gpus_per_job=1",
    ),
    (["progress=fancy"], "progress='fancy'", "choose one of: auto, bar, log, none"),
    (["mmap_mode=x"], "mmap_mode='x'", "choose one of: null, r, r+, w+, c"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, key_value, allowed", CASES, ids=[" ".join(bad) for bad, _, _ in CASES]
)
def test_bad_launcher_config_is_one_clear_error_before_any_job(
    tmp_path: Path, sweep_dir: Path, bad: List[str], key_value: str, allowed: str
) -> None:
    run = run_app(
        APP,
        [
            "-m", "hydra/launcher=joblib", f"hydra.sweep.dir={sweep_dir}", "+x=1,2",
            *(f"hydra.launcher.{override}" for override in bad),
        ],
        cwd=tmp_path,
        env={"HYDRA_FULL_ERROR": "0"},
        timeout=60,
    )  # fmt: skip
    assert run.returncode != 0, run.output
    assert "Traceback" not in run.stderr, run.stderr
    # one error line (and Hydra's hint about HYDRA_FULL_ERROR), nothing else
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    assert len(errors) == 1, run.stderr
    message = errors[0]
    assert message.startswith(f"hydra.launcher.{key_value}"), message
    assert "is not supported" in message or "asks for" in message, message
    assert allowed in message, message
    # refused when the launcher is set up: nothing announced, nothing written, not even
    # Hydra's multirun.yaml
    assert "Launching jobs" not in run.output, run.output
    assert not sweep_dir.exists(), sorted(p.name for p in sweep_dir.iterdir())
