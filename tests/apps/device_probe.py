"""Imported by tests/apps/devices.py: reads the device variables when it is imported.

A module of its own (not the app's ``__main__``), so that each job process
imports it afresh, as it would ``torch``: what it read tells whether the
variables were in place before the task's imports ran.
"""

import os

VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "MY_VAR")

AT_IMPORT = {name: os.environ.get(name) for name in VARIABLES}
IMPORTED_IN = os.getpid()
