"""Unit tests of ``_options.validate``: the ``hydra.launcher`` node becomes ``LaunchOptions``.

A bad value gives one ``LauncherConfigError`` whose message names the key, the
value given and what is allowed; a good one is normalised to what joblib is
handed.
"""

import pickle
from dataclasses import FrozenInstanceError, asdict
from typing import Any, Dict, List

import pytest
from joblib._utils import eval_expr
from joblib.disk import memstr_to_bytes

from hydra_plugins.hydra_joblib_launcher._errors import LauncherConfigError, LauncherError
from hydra_plugins.hydra_joblib_launcher._options import LaunchOptions, validate
from hydra_plugins.hydra_joblib_launcher._values import pre_dispatch_count
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

ALL_BACKENDS = "choose one of: loky, multiprocessing, dask, ray"


def refused(config: Dict[str, Any]) -> str:
    with pytest.raises(LauncherConfigError) as info:
        validate(config)
    # Hydra prints a CompactHydraException as its message alone, no traceback.
    assert isinstance(info.value, LauncherError)
    return str(info.value)


# -- bad values: one error naming the key, the value and what is allowed -------------------------


BAD_VALUES = [
    ({"backend": "nope"}, "hydra.launcher.backend='nope'", ALL_BACKENDS),
    ({"backend": "threading"}, "hydra.launcher.backend='threading'", ALL_BACKENDS),
    ({"backend": "sequential"}, "hydra.launcher.backend='sequential'", ALL_BACKENDS),
    ({"n_jobs": 0}, "hydra.launcher.n_jobs=0", "use a positive number of jobs, or -1"),
    ({"n_jobs": "4"}, "hydra.launcher.n_jobs='4'", "use a positive number of jobs, or -1"),
    ({"n_jobs": True}, "hydra.launcher.n_jobs=True", "use a positive number of jobs, or -1"),
    ({"prefer": "foo"}, "hydra.launcher.prefer='foo'", "choose one of: processes, threads"),
    ({"require": "sharedmem"}, "hydra.launcher.require='sharedmem'", "only null is allowed"),
    ({"timeout": 0}, "hydra.launcher.timeout=0", "give a positive number of seconds, or null"),
    ({"timeout": -1}, "hydra.launcher.timeout=-1", "give a positive number of seconds, or null"),
    ({"timeout": "soon"}, "hydra.launcher.timeout='soon'", "positive number of seconds"),
    ({"pre_dispatch": "lots"}, "hydra.launcher.pre_dispatch='lots'", '"all", or an expression'),
    ({"pre_dispatch": "0"}, "hydra.launcher.pre_dispatch='0'", "give a positive integer"),
    ({"pre_dispatch": 0}, "hydra.launcher.pre_dispatch=0", "give a positive integer"),
    ({"pre_dispatch": "-2"}, "hydra.launcher.pre_dispatch='-2'", "give a positive integer"),
    # joblib would eval() this; the launcher must not hand it over
    (
        {"pre_dispatch": "__import__('os').getpid()"},
        "hydra.launcher.pre_dispatch=\"__import__('os').getpid()\"",
        "give a positive integer",
    ),
    ({"batch_size": "fast"}, "hydra.launcher.batch_size='fast'", 'positive integer or "auto"'),
    ({"batch_size": "0"}, "hydra.launcher.batch_size='0'", 'positive integer or "auto"'),
    ({"batch_size": 0}, "hydra.launcher.batch_size=0", 'positive integer or "auto"'),
    ({"batch_size": -3}, "hydra.launcher.batch_size=-3", 'positive integer or "auto"'),
    ({"max_nbytes": "huge"}, "hydra.launcher.max_nbytes='huge'", 'with a unit ("1M"'),
    ({"max_nbytes": "-1M"}, "hydra.launcher.max_nbytes='-1M'", "give a size in bytes"),
    (
        {"inner_max_num_threads": 0},
        "hydra.launcher.inner_max_num_threads=0",
        "give a positive integer or null",
    ),
    (
        {"inner_max_num_threads": -1},
        "hydra.launcher.inner_max_num_threads=-1",
        "give a positive integer or null",
    ),
    ({"progress": "fancy"}, "hydra.launcher.progress='fancy'", "choose one of: auto, bar, log"),
    ({"mmap_mode": "x"}, "hydra.launcher.mmap_mode='x'", "choose one of: null, r, r+, w+, c"),
    ({"verbose": -1}, "hydra.launcher.verbose=-1", "give a whole number, 0 or more"),
    ({"resume": "yes"}, "hydra.launcher.resume='yes'", "give true or false"),
    ({"devices_per_job": 0}, "hydra.launcher.devices_per_job=0", "give a positive integer"),
    ({"device_env": "CUDA DEVICES"}, "hydra.launcher.device_env='CUDA DEVICES'", "variable name"),
    ({"devices": "0,1"}, "hydra.launcher.devices='0,1'", "give a list of device ids"),
    ({"devices": [0, 0]}, "hydra.launcher.devices=[0, 0]", "distinct, non-empty device ids"),
]


@pytest.mark.parametrize(
    "config, key_value, allowed",
    BAD_VALUES,
    ids=[key_value[len("hydra.launcher."):] for _, key_value, _ in BAD_VALUES],
)
def test_bad_value_names_key_value_and_what_is_allowed(
    config: Dict[str, Any], key_value: str, allowed: str
) -> None:
    message = refused(config)
    assert message.startswith(f"{key_value} is not supported; "), message
    assert allowed in message


def test_thread_backends_say_why() -> None:
    for backend in ("threading", "sequential"):
        message = refused({"backend": backend})
        assert "cannot share a process" in message


def test_require_sharedmem_says_why() -> None:
    assert "need a process each" in refused({"require": "sharedmem"})


def test_devices_fewer_than_devices_per_job() -> None:
    message = refused({"devices": [0], "devices_per_job": 2})
    assert "hydra.launcher.devices=[0]" in message
    assert "holds 1 device id(s)" in message
    assert "hydra.launcher.devices_per_job=2" in message
    assert "list more devices or lower devices_per_job" in message


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "dask", "ray"])
def test_inner_max_num_threads_accepted_by_every_backend(backend: str) -> None:
    options = validate({"backend": backend, "inner_max_num_threads": 2})
    assert options.inner_max_num_threads == 2
    assert "inner_max_num_threads=2" in options.joblib_settings(4)


@pytest.mark.parametrize("expression", ["0*n_jobs", "n_jobs*0", "0 * n_jobs * 3"])
def test_pre_dispatch_expression_worth_zero_jobs_is_refused(expression: str) -> None:
    # joblib hands out nothing with pre_dispatch=0: the sweep would run no job at all
    message = refused({"pre_dispatch": expression})
    assert f"hydra.launcher.pre_dispatch={expression!r}" in message


# -- good values: normalised -------------------------------------------------------------------


def test_defaults_of_the_typed_config_are_valid() -> None:
    conf = asdict(JobLibLauncherConf())
    options = validate(conf)
    assert options.backend == "loky"
    assert options.n_jobs == -1
    assert options.prefer == "processes"
    assert options.verbose == 0
    assert options.timeout is None
    assert options.pre_dispatch == "2*n_jobs"
    assert options.batch_size == "auto"
    assert options.temp_folder is None
    assert options.max_nbytes is None
    assert options.mmap_mode == "r"
    assert options.inner_max_num_threads is None
    assert options.devices is None
    assert options.devices_per_job == 1
    assert options.device_env == "CUDA_VISIBLE_DEVICES"
    assert options.progress == "auto"
    assert options.resume is False
    assert options.mem_limit is None
    assert options.retries == 0
    assert options.retry_on == ("crash",)
    assert validate({}) == options


def test_backend_null_means_loky() -> None:
    assert validate({"backend": None}).backend == "loky"


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "dask", "ray"])
def test_supported_backends(backend: str) -> None:
    assert validate({"backend": backend}).backend == backend


@pytest.mark.parametrize(
    "value, kept, n_jobs, count",
    [
        ("3*n_jobs", "3*n_jobs", 4, 12),
        ("2 * n_jobs", "2 * n_jobs", 5, 10),  # joblib's own default spelling
        (" n_jobs ", "n_jobs", 3, 3),
        ("n_jobs*2", "n_jobs*2", 3, 6),
        ("2*n_jobs*3", "2*n_jobs*3", 2, 12),
        ("all", "all", 4, "all"),
        ("7", 7, 4, 7),
        (7, 7, 4, 7),
    ],
)
def test_pre_dispatch_normalised_and_counted(
    value: Any, kept: Any, n_jobs: int, count: Any
) -> None:
    options = validate({"pre_dispatch": value})
    assert options.pre_dispatch == kept
    assert pre_dispatch_count(options.pre_dispatch, n_jobs) == count


@pytest.mark.parametrize(
    "expression", ["3*n_jobs", "2 * n_jobs", "n_jobs", "n_jobs*2", "1.5*n_jobs"]
)
def test_pre_dispatch_expressions_joblib_accepts_are_accepted(expression: str) -> None:
    # A drop-in launcher takes the pre_dispatch strings joblib takes ("1.5*n_jobs" is
    # joblib's documented example), and counts them as joblib would.
    options = validate({"pre_dispatch": expression})
    joblib_count = int(eval_expr(expression.replace("n_jobs", "4")))
    assert pre_dispatch_count(options.pre_dispatch, 4) == joblib_count


@pytest.mark.parametrize(
    "value, nbytes",
    [
        ("1M", 1048576),
        ("10K", 10240),
        ("500k", 512000),
        ("2G", 2 * 1024**3),
        ("1000", 1000),
        (64, 64),
    ],
)
def test_max_nbytes_in_bytes(value: Any, nbytes: int) -> None:
    assert validate({"max_nbytes": value}).max_nbytes == nbytes


@pytest.mark.parametrize("value", ["1M", "10K", "2G", "1.5M"])
def test_max_nbytes_strings_joblib_accepts_are_accepted(value: str) -> None:
    assert validate({"max_nbytes": value}).max_nbytes == memstr_to_bytes(value)


def test_max_nbytes_null_means_never() -> None:
    assert validate({"max_nbytes": None}).max_nbytes is None


@pytest.mark.parametrize("value, size", [("4", 4), (4, 4), (" 16 ", 16), ("auto", "auto")])
def test_batch_size(value: Any, size: Any) -> None:
    assert validate({"batch_size": value}).batch_size == size


@pytest.mark.parametrize("value, seconds", [(2, 2.0), (0.5, 0.5), (None, None)])
def test_timeout(value: Any, seconds: Any) -> None:
    timeout = validate({"timeout": value}).timeout
    assert timeout == seconds
    assert timeout is None or isinstance(timeout, float)


@pytest.mark.parametrize("mode", [None, "r", "r+", "w+", "c"])
def test_mmap_modes(mode: Any) -> None:
    assert validate({"mmap_mode": mode}).mmap_mode == mode


@pytest.mark.parametrize("progress", ["auto", "bar", "log", "none"])
def test_progress_modes(progress: str) -> None:
    assert validate({"progress": progress}).progress == progress


def test_devices_become_strings() -> None:
    options = validate({"devices": [0, 1, "MIG-3"], "devices_per_job": 1, "device_env": "MY_GPUS"})
    assert options.devices == ("0", "1", "MIG-3")
    assert options.device_env == "MY_GPUS"
    assert options.device_slots == 3


# -- LaunchOptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_jobs, cpus, workers",
    [(3, 8, 3), (16, 2, 16), (-1, 8, 8), (-2, 8, 7), (-1, 1, 1), (-8, 8, 1), (-20, 8, 1)],
)
def test_workers_reads_n_jobs_as_joblib_does(n_jobs: int, cpus: int, workers: int) -> None:
    assert validate({"n_jobs": n_jobs}).workers(cpus) == workers


@pytest.mark.parametrize(
    "n_jobs, devices, per_job, cpus, workers",
    [
        (10, [0, 1, 2, 3], 1, 8, 4),
        (10, [0, 1, 2, 3], 2, 8, 2),
        (10, [0, 1, 2, 3, 4], 2, 8, 2),  # a device left over serves no job
        (-1, [0, 1, 2], 1, 8, 3),
        (-1, [0, 1, 2, 3], 1, 2, 2),  # the cores cap it first
        (1, [0, 1, 2, 3], 1, 8, 1),
    ],
)
def test_workers_capped_by_the_device_pool(
    n_jobs: int, devices: Any, per_job: int, cpus: int, workers: int
) -> None:
    options = validate({"n_jobs": n_jobs, "devices": devices, "devices_per_job": per_job})
    assert options.workers(cpus) == workers


def test_joblib_settings_line() -> None:
    options = validate(
        {"n_jobs": -1, "pre_dispatch": "3*n_jobs", "max_nbytes": "1M", "batch_size": "4"}
    )
    assert options.joblib_settings(2) == (
        "backend=loky,n_jobs=2,prefer=processes,require=None,verbose=0,timeout=None,"
        "pre_dispatch=3*n_jobs,batch_size=4,temp_folder=None,max_nbytes=1048576,mmap_mode=r"
    )


def test_launch_options_are_frozen_and_picklable() -> None:
    options = validate({"devices": [0, 1], "timeout": 3})
    assert isinstance(options, LaunchOptions)
    with pytest.raises(FrozenInstanceError):
        options.n_jobs = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(options)) == options


# -- upstream's keys and limits (hydra-joblib-launcher 1.4) ---------------------------------


@pytest.mark.parametrize("value", [1, None])
def test_maxtasksperchild_is_accepted_as_upstream_does(value: Any) -> None:
    options = validate({"backend": "multiprocessing", "maxtasksperchild": value})
    assert options.backend == "multiprocessing"


@pytest.mark.parametrize("batch_size", ["auto", 1, "1"])
def test_multiprocessing_takes_one_job_per_batch(batch_size: Any) -> None:
    assert validate({"backend": "multiprocessing", "batch_size": batch_size}).batch_size in (
        "auto",
        1,
    )


@pytest.mark.parametrize("n_jobs, cpus", [(-2, 2), (-8, 8), (-1, 1), (3, 1)])
def test_negative_n_jobs_down_to_minus_the_cpu_count(n_jobs: int, cpus: int) -> None:
    assert validate({"n_jobs": n_jobs}, cpu_count=cpus).workers(cpus) >= 1


@pytest.mark.parametrize("n_jobs, cpus", [(-3, 2), (-100, 8)])
def test_n_jobs_below_minus_the_cpu_count_is_refused(n_jobs: int, cpus: int) -> None:
    with pytest.raises(LauncherConfigError) as error:
        validate({"n_jobs": n_jobs}, cpu_count=cpus)
    assert f"hydra.launcher.n_jobs={n_jobs} is not supported" in str(error.value)
    assert f"goes down to -{cpus}" in str(error.value)


def test_n_jobs_on_a_cluster_counts_its_workers_not_this_machine() -> None:
    assert validate({"backend": "dask", "n_jobs": -10}, cpu_count=2).n_jobs == -10


@pytest.mark.parametrize(
    "value, nbytes",
    [
        ("8GB", 8 * 1000**3),
        ("500MB", 500 * 1000**2),
        ("2GiB", 2 * 1024**3),
        ("1.5G", int(1.5 * 1024**3)),
        ("300 MB", 300 * 1000**2),
        (300_000_000, 300_000_000),
        ("0.25", 4 * 1000**3),  # a quarter of the 16 GB machine below
        (0.5, 8 * 1000**3),
    ],
)
def test_mem_limit_is_a_size_or_a_share_of_the_machine(value: object, nbytes: int) -> None:
    options = validate({"mem_limit": value}, memory=16 * 1000**3)
    assert options.mem_limit is not None and options.mem_limit.on(16 * 1000**3) == nbytes


def test_mem_limit_on_a_cluster_is_not_checked_against_this_machine() -> None:
    options = validate({"backend": "dask", "mem_limit": "100TB"}, memory=16 * 1000**3)
    assert options.mem_limit is not None and options.mem_limit.nbytes == 100 * 1000**4


@pytest.mark.parametrize("value", ["0", "-1GB", "lots", "1.5", True, "10XB"])
def test_a_mem_limit_that_is_no_size_is_refused(value: object) -> None:
    message = refused({"mem_limit": value})
    assert "hydra.launcher.mem_limit=" in message and 'give a size such as "8GB"' in message


def test_retry_on_words_are_kept_in_a_fixed_order() -> None:
    assert validate({"retry_on": ["memory", "crash"]}).retry_on == ("crash", "memory")
    assert validate({"retry_on": []}).retry_on == ()


# -- GPUs: devices on machines the launcher starts, gpus_per_job on clusters with an address ----


@pytest.mark.parametrize("backend", ["loky", "multiprocessing", "dask", "ray"])
def test_devices_list_or_auto_on_workers_the_launcher_starts(backend: str) -> None:
    assert validate({"backend": backend, "devices": [0, 1]}).devices == ("0", "1")
    auto = validate({"backend": backend, "devices": "auto"})
    assert auto.devices is None and auto.devices_auto and auto.gives_gpus


@pytest.mark.parametrize(
    "config, texts",
    [
        (
            {"backend": "dask", "dask": {"address": "tcp://h:8786"}, "devices": [0]},
            ["hydra.launcher.devices=[0]", "use hydra.launcher.gpus_per_job=1"],
        ),
        (
            {"backend": "ray", "ray": {"address": "h:6379"}, "devices": "auto"},
            ["hydra.launcher.devices='auto'", "use hydra.launcher.gpus_per_job=1"],
        ),
        ({"gpus_per_job": 1}, ["hydra.launcher.gpus_per_job=1", "devices=auto"]),
        (
            {"backend": "dask", "gpus_per_job": 1},
            ["backend=dask without dask.address starts its workers here", "devices=auto"],
        ),
        (
            {"backend": "dask", "dask": {"address": "tcp://h:8786"}, "gpus_per_job": 0.5},
            ["Dask gives each job whole GPUs"],
        ),
        (
            {"backend": "ray", "ray": {"address": "h:6379"}, "gpus_per_job": -1},
            ["give a positive number of GPUs"],
        ),
        (
            {"backend": "ray", "ray": {"address": "h:6379"}, "gpus_per_job": 1, "devices": [0]},
            ["give either devices", "not both"],
        ),
        (
            {"backend": "ray", "devices": [0], "device_env": "HIP_VISIBLE_DEVICES"},
            ["hydra.launcher.device_env='HIP_VISIBLE_DEVICES'", "CUDA_VISIBLE_DEVICES (Ray sets it)"],
        ),
        (
            {"backend": "ray", "devices": [0, 1], "ray": {"init": {"num_gpus": 4}}},
            ["hydra.launcher.ray.init.num_gpus=4", "remove num_gpus"],
        ),
    ],
)
def test_gpu_keys_refused_where_they_cannot_hold(config: Dict[str, Any], texts: List[str]) -> None:
    message = refused(config)
    for text in texts:
        assert text in message


@pytest.mark.parametrize("backend, address", [("dask", "tcp://h:8786"), ("ray", "auto")])
def test_gpus_per_job_on_a_cluster_with_an_address(backend: str, address: str) -> None:
    options = validate({"backend": backend, backend: {"address": address}, "gpus_per_job": 1.0})
    assert options.gpus_per_job == 1 and options.devices is None and options.gives_gpus
