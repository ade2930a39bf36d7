"""What the launcher tells of a completed job's return value: its class, and a number if it is one.

The value itself stays pickled in the job's outcome; a number is small and
safe to copy into ``jobs.jsonl``, where ``hydra-joblib report`` tables it
against the job's overrides.
"""

import math
import numbers
from typing import Any, Optional


def type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def returned_number(value: Any) -> Optional[float]:
    """``value`` as a float if it is a real, finite number (NumPy's scalars too, not bools); else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
