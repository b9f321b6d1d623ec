"""Argument checks shared by every family: messages name the argument, the rule and the value received.

Each returns the validated value or raises :class:`~reglab.core.errors.ConfigError`,
e.g. ``"rate must be in [0, 1), got 1.5"``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from reglab.core.errors import ConfigError


def _rule(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``; else ConfigError ("n must be an int >= 1")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be an int {_rule(minimum, maximum)}, got {value!r}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if it is a finite real in the interval (ends open on request); else ConfigError.

    Messages read "rate must be in [0, 1), got 1.5" or "gamma must be > 0, got 0.0".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    x = float(value)
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        raise ConfigError(f"{name} must be {_rule(low, high, low_open, high_open)}, got {value!r}")
    return x


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``1``, ``"yes"`` and ``None`` are refused, not coerced); else ConfigError."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool (true or false), got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ConfigError."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value
