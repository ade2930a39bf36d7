"""Entry point of a fresh worker process: ``python -m hydra_plugins.hydra_joblib_launcher._worker OUT``.

Reads one pickled :class:`JobSpec` from standard input, runs it, and writes
the pickled :class:`JobOutcome` to ``OUT`` atomically (a temporary file, then
a rename), so the launcher reads either a whole outcome or none: no outcome
and a non-zero exit status means the process died.
"""

import os
import pickle
import sys


def main(out_path: str) -> int:
    from . import _job

    _job.long_lived_worker = False
    spec = pickle.load(sys.stdin.buffer)
    outcome = _job.run_job_spec(spec)
    partial = f"{out_path}.partial"
    with open(partial, "wb") as f:
        pickle.dump(outcome, f)
    os.replace(partial, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
