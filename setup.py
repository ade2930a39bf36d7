from pathlib import Path

from setuptools import find_namespace_packages, setup


def version() -> str:
    init = Path(__file__).parent / "hydra_plugins" / "hydra_joblib_launcher" / "__init__.py"
    for line in init.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in " + str(init))


setup(
    name="hydra-joblib-launcher",
    version=version(),
    description="Hydra launcher that runs a sweep's jobs in parallel through joblib, and loses nothing",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_namespace_packages(include=["hydra_plugins.*"]),
    package_data={"hydra_plugins.hydra_joblib_launcher": ["py.typed"]},
    license="MIT",
    python_requires=">=3.10",
    # threadpoolctl: a job limits the native thread pools loaded before it started
    install_requires=[
        "hydra-core>=1.3.2,<1.5",
        "joblib>=1.5",
        "cloudpickle>=2.2",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        # the test suite on Hydra 1.3 (the default install)
        "test": [
            "pytest>=7",
            "pandas",
            # the Optuna sweeper test: hydra-optuna-sweeper 1.2/1.3 allow optuna 2 only, which
            # needs SQLAlchemy 1.x (and an alembic that accepts it) for its study storage
            "hydra-optuna-sweeper>=1.2,<1.4",
            "sqlalchemy<2",
            "alembic<1.10",
        ],
        # the test suite on Hydra 1.4: its Optuna sweeper takes optuna 4.9 or newer
        "test-hydra14": [
            "pytest>=7",
            "pandas",
            "hydra-core>=1.4.0rc3,<1.5",
            "hydra-optuna-sweeper>=1.4.0rc3,<1.5",
            "optuna>=4.9",
        ],
        # backend=dask: joblib's dask backend on a distributed.Client
        # (cryptography: the embedded cluster's TLS credentials, made for each launch)
        "dask": ["dask[distributed]>=2023.1", "cryptography"],
        # dask.cluster on an HPC queue: dask-jobqueue's SLURMCluster, PBSCluster, SGECluster...
        "slurm": ["dask[distributed]>=2023.1", "cryptography", "dask-jobqueue>=0.8.2"],
        "jobqueue": ["dask[distributed]>=2023.1", "cryptography", "dask-jobqueue>=0.8.2"],
        # backend=ray: joblib's ray backend (ray.util.joblib); [default] brings `ray start` and Ray Client
        # (2.59: a local Ray has token authentication on by default)
        "ray": ["ray[default]>=2.59"],
        # `hydra-joblib report`: the timeline is a Plotly chart, its JavaScript inlined in the page
        "report": ["plotly>=5"],
    },
    # `hydra-joblib status|report SWEEP_DIR`
    entry_points={
        "console_scripts": ["hydra-joblib = hydra_plugins.hydra_joblib_launcher.cli:main"]
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
    ],
    include_package_data=True,
)
