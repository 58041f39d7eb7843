"""One-line input checks shared by the library: each returns the checked value or raises a
``ValueError`` naming the argument, what is valid and what was given (before any heavy work).

    positive_int("steps", 10)                 -> 10     ("steps must be an integer >= 1, got 0")
    positive_int("n_corrector", 0, low=0)     -> 0
    probability("p_uncond", 0.1)              -> 0.1    ("p_uncond must be a number in [0, 1], got 1.5")
    finite_float("eta", 0.5, low=0)           -> 0.5    ("eta must be a finite number >= 0, got nan")
    choice("variant", "bh2", ("bh1", "bh2"))  -> "bh2"  ("variant must be one of bh1, bh2, got 'bh3'")

Booleans are refused where numbers are expected (``True`` is an ``int`` in Python). Imports nothing
from the package, so every module can use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional

__all__ = ["positive_int", "probability", "finite_float", "choice"]


def positive_int(name: str, value, low: int = 1) -> int:
    """``value`` as an int, which must be an integer (not a bool) >= ``low`` (default 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def finite_float(name: str, value, low: Optional[float] = None, *, strict: bool = False,
                 high: Optional[float] = None) -> float:
    """``value`` as a float, which must be a finite real number (not a bool) with ``value >= low``
    (``> low`` if ``strict``) and ``value <= high`` where given."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if strict else '>='} {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, got {value!r}")
    return float(value)


def probability(name: str, value) -> float:
    """``value`` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def choice(name: str, value, valid: Iterable):
    """``value``, which must be one of ``valid``."""
    valid = tuple(valid)
    if isinstance(value, bool) or value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(str, valid))}, got {value!r}")
    return value
