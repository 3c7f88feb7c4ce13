"""The one test of "is this a usable number" (standard library only: the report and the CLIs import it cheaply)."""
from __future__ import annotations

import math
from typing import Any


def finite_or_none(v: Any) -> float | None:
    """``float(v)`` when ``v`` is a finite int or float (bools and strings excluded), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:                                   # numpy and torch scalars
            v = v.item() if hasattr(v, "item") and not isinstance(v, bool) else None
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
    f = float(v)
    return f if math.isfinite(f) else None


class NonFiniteError(FloatingPointError):
    """A loss, gradient norm, probability or metric that is NaN or infinite: the stage stops before anything is
    saved or registered (DESIGN invariant 9)."""


def require_finite(value: Any, what: str) -> float:
    """``float(value)``, or NonFiniteError naming ``what`` (e.g. "gradient norm at step 12")."""
    f = finite_or_none(value)
    if f is None:
        raise NonFiniteError(f"{what} is {value!r}, not a finite number")
    return f
