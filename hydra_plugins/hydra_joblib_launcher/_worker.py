"""Entry point of a process started for one job: ``python -m hydra_plugins.hydra_joblib_launcher._worker``.

Reads one pickled :class:`JobSpec` from standard input, runs it, and writes
the pickled :class:`JobOutcome` into the job's files atomically, so the
launcher reads either a whole outcome or none: no outcome and a non-zero exit
status means the process died.
"""

import os
import pickle
import sys


def main() -> int:
    from ._processes import follow_launcher
    from ._run import run_job_spec

    follow_launcher(os.getppid())  # the launcher started this process: it ends with it
    spec = pickle.load(sys.stdin.buffer)
    outcome = run_job_spec(spec, long_lived=False)
    spec.files.write_outcome(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
