"""Imported by tests/apps/threads.py: reads the native-thread limits when it is imported.

A module of its own, imported by the task, as NumPy or PyTorch would be: what
it read tells whether the variables were in place before the job's imports ran.
"""

import os

VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

AT_IMPORT = {name: os.environ.get(name) for name in VARIABLES}
