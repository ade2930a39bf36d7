"""Hydra launcher plugin that runs a sweep's jobs in parallel through joblib."""

__version__ = "2.0.0.dev0"
