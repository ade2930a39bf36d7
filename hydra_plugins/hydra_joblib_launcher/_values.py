"""Single values of joblib's own settings, read as joblib reads them, or one clear error.

Pure: each function gives the normalised value or a :class:`LauncherConfigError`
naming the key, the value and what is allowed.
"""

import re
from typing import Any, Optional, Tuple, Union

from ._errors import LauncherConfigError

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_PRE_DISPATCH = re.compile(rf"^\s*(?:{_NUMBER}\s*\*\s*)?n_jobs(?:\s*\*\s*{_NUMBER})?\s*$")
_NBYTES = re.compile(rf"^\s*{_NUMBER}\s*([KMG]?)\s*$", re.IGNORECASE)


def refuse(key: str, value: Any, allowed: str, hint: str = "") -> LauncherConfigError:
    message = f"hydra.launcher.{key}={value!r} is not supported; {allowed}"
    if hint:
        message += f". {hint}"
    return LauncherConfigError(message)


def whole_number(key: str, value: Any, allowed: str) -> int:
    # bool is an int to Python, never to a user
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(key, value, allowed)
    return value


def timeout_seconds(value: Any) -> Optional[float]:
    if value is None:
        return None
    allowed = "give a positive number of seconds, or null for no limit"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise refuse("timeout", value, allowed)
    return float(value)


def positive_int_text(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


def pre_dispatch(value: Any) -> Union[int, str]:
    number = positive_int_text(value)
    if number is not None:
        return number
    if isinstance(value, str) and value.strip() == "all":
        return "all"
    if isinstance(value, str) and _PRE_DISPATCH.match(value) and _factor(value) > 0:
        return value.strip()
    raise refuse(
        "pre_dispatch",
        value,
        'give a positive integer, "all", or an expression such as "2*n_jobs"',
    )


def _factor(expression: str) -> float:
    """The multiplier of n_jobs in a ``pre_dispatch`` expression such as "1.5*n_jobs"."""
    match = _PRE_DISPATCH.match(expression)
    if match is None:
        raise ValueError(f"not a pre_dispatch expression: {expression!r}")
    return float(match.group(1) or 1) * float(match.group(2) or 1)


def pre_dispatch_count(pre_dispatch: Union[int, str], n_jobs: int) -> Union[int, str]:
    """Evaluate a validated ``pre_dispatch`` for ``n_jobs`` workers, as joblib would (never below 1)."""
    if isinstance(pre_dispatch, int) or pre_dispatch == "all":
        return pre_dispatch
    return max(int(n_jobs * _factor(pre_dispatch)), 1)


def max_nbytes(value: Any) -> Optional[int]:
    if value is None:
        return None
    match = _NBYTES.match(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise refuse(
            "max_nbytes",
            value,
            'give a size in bytes, optionally with a unit ("1M", "500K", "2G"), or null',
        )
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def choice(key: str, value: Any, choices: Tuple[Optional[str], ...]) -> Any:
    if value not in choices:
        shown = ", ".join("null" if c is None else c for c in choices)
        raise refuse(key, value, f"choose one of: {shown}")
    return value
