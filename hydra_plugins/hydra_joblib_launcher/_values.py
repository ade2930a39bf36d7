"""Single values of joblib's own settings, read as joblib reads them, or one clear error.

Pure: each function gives the normalised value or a :class:`LauncherConfigError`
naming the key, the value and what is allowed.
"""

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

from ._errors import LauncherConfigError

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_PRE_DISPATCH = re.compile(rf"^\s*(?:{_NUMBER}\s*\*\s*)?n_jobs(?:\s*\*\s*{_NUMBER})?\s*$")
_NBYTES = re.compile(rf"^\s*{_NUMBER}\s*([KMG]?)\s*$", re.IGNORECASE)
_SIZE = re.compile(rf"^\s*{_NUMBER}\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)

# A job's process with Python, Hydra and joblib loaded holds about 60 MB.
MIN_MEM_LIMIT = 100 * 1000**2
RETRY_CAUSES = ("crash", "timeout", "memory")


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


@dataclass(frozen=True)
class MemoryLimit:
    """What a job's processes may hold together: a size, or a share of the memory of the machine it runs on."""

    nbytes: Optional[int] = None
    share: Optional[float] = None

    def on(self, total: int) -> int:
        """The limit in bytes on a machine with ``total`` bytes of memory."""
        return self.nbytes if self.nbytes is not None else int(total * (self.share or 1.0))

    def __str__(self) -> str:
        if self.nbytes is not None:
            return show_bytes(self.nbytes)
        return f"{self.share:g} of the machine's memory"


def show_bytes(nbytes: float) -> str:
    """A size as people read it: 300 MB, 1.5 GB (powers of 1000, as the limit is written)."""
    for unit, scale in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


def mem_limit(value: Any, *, total: Optional[int]) -> Optional[MemoryLimit]:
    """``hydra.launcher.mem_limit``: bytes, a size ("8GB", "500MB", "2GiB"), a share ("0.25"), or null.

    ``total``: this machine's memory, when jobs run on it (else the workers' is unknown here).
    """
    if value is None:
        return None
    allowed = (
        'give a size such as "8GB", "500MB" or "2GiB" (or bytes), a share of the machine\'s '
        'memory such as "0.25", or null for no limit'
    )
    limit = _memory_limit(value)
    if limit is None:
        raise refuse("mem_limit", value, allowed)
    nbytes = limit.on(total) if total is not None else limit.nbytes
    if nbytes is not None and nbytes < MIN_MEM_LIMIT:
        raise refuse(
            "mem_limit",
            value,
            f"that is {show_bytes(nbytes)}, and a job's process with Python and Hydra loaded "
            f"already holds about 60 MB: give at least {show_bytes(MIN_MEM_LIMIT)}",
        )
    if total is not None and nbytes is not None and nbytes > total:
        raise refuse(
            "mem_limit",
            value,
            f"that is more than this machine's memory ({show_bytes(total)}): give less, "
            'or a share such as "0.5"',
        )
    return limit


def _memory_limit(value: Any) -> Optional[MemoryLimit]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if 0 < number <= 1:
            return MemoryLimit(share=number)
        if number > 1 and number == int(number):
            return MemoryLimit(nbytes=int(number))
        return None
    match = _SIZE.match(text)
    if match is None or (not match.group(2) and not match.group(3)):
        return None
    unit = match.group(2).upper()
    # "MB" counts in thousands, "MiB" and a bare "M" (as max_nbytes) in 1024s.
    binary = bool(match.group(3) and match.group(3).lower() == "ib") or not match.group(3)
    base = 1024 if binary else 1000
    power = " KMGT".index(unit) if unit else 0
    nbytes = int(float(match.group(1)) * base**power)
    return MemoryLimit(nbytes=nbytes) if nbytes > 0 else None


def retry_on(value: Any) -> Tuple[str, ...]:
    """``hydra.launcher.retry_on``: which of crash, timeout, memory make a job run again."""
    allowed = f"give a list of: {', '.join(RETRY_CAUSES)} (for example [crash,memory])"
    words: Sequence[Any] = [value] if isinstance(value, str) else value
    if words is None or not hasattr(words, "__iter__"):
        raise refuse("retry_on", value, allowed)
    words = list(words)
    unknown = [w for w in words if w not in RETRY_CAUSES]
    if unknown:
        raise refuse("retry_on", words, allowed, f"{unknown[0]!r} is not one of them")
    return tuple(cause for cause in RETRY_CAUSES if cause in words)
