"""Entry points of a process started for one job.

``python -m hydra_plugins.hydra_joblib_launcher._worker`` (:func:`main`), a new
interpreter: reads one pickled :class:`JobSpec` from standard input. Or
:func:`run_forked`, in a process forked from the launcher's fork server (see
:mod:`._forked`). Either runs the job and writes the pickled
:class:`JobOutcome` into the job's files atomically, so the launcher reads
either a whole outcome or none: no outcome and a non-zero exit status means
the process died.
"""

import os
import pickle
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._plan import JobSpec


def main() -> int:
    from ._processes import follow_launcher
    from ._run import run_job_spec

    follow_launcher(os.getppid())  # the launcher started this process: it ends with it
    spec = pickle.load(sys.stdin.buffer)
    outcome = run_job_spec(spec, long_lived=False)
    spec.files.write_outcome(pickle.dumps(outcome))
    return 0


def run_forked(spec: "JobSpec", launcher_pid: int) -> None:
    """Run one job in this process, forked from the fork server for it alone.

    The process leads a group of its own, adopts its job's orphans and ends with
    the launching process, as a loky worker does. The exit hooks the job
    registered run as it ends, as at the exit of a new interpreter (the server
    dropped the launching process's).
    """
    import atexit

    from ._processes import init_worker
    from ._run import run_job_spec

    init_worker({}, launcher_pid)
    outcome = run_job_spec(spec, long_lived=False)
    spec.files.write_outcome(pickle.dumps(outcome))
    atexit._run_exitfuncs()


if __name__ == "__main__":
    sys.exit(main())
