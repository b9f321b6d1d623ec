"""Argument checks shared by every family: messages name the argument, the rule and the value received.

Each returns the validated value or raises :class:`~reglab.core.errors.ConfigError`,
e.g. ``"rate must be in [0, 1), got 1.5"``.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


# --- constraint tables ------------------------------------------------------------------------------------
#
# A class declares its hyperparameters' rules as data, ``{"rho": Float(0.0), "mode": OneOf(("hard", "soft"))}``,
# checks them with :func:`check_table`, and one registry-driven test feeds every rule its ``invalid()`` examples.


class Constraint(abc.ABC):
    """A rule for one argument: calling it returns the validated value or raises ConfigError naming the argument."""

    @abc.abstractmethod
    def __call__(self, name: str, value: Any) -> Any:
        """The validated (possibly normalized) ``value``; ConfigError naming ``name`` if it breaks the rule."""

    @abc.abstractmethod
    def invalid(self) -> tuple[Any, ...]:
        """Values this rule refuses (for the generic constraint tests)."""


@dataclass(frozen=True)
class Float(Constraint):
    """A finite real in an interval (:func:`check_float`); ``Float(0.0)`` is ``>= 0``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, name: str, value: Any) -> float:
        return check_float(name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open)

    def invalid(self) -> tuple[Any, ...]:
        out: list[Any] = ["0.5", True, math.nan, math.inf]
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1.0)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1.0)
        return tuple(out)


@dataclass(frozen=True)
class Int(Constraint):
    """An int (not a bool) in ``[minimum, maximum]`` (:func:`check_int`)."""

    minimum: int | None = None
    maximum: int | None = None

    def __call__(self, name: str, value: Any) -> int:
        return check_int(name, value, self.minimum, self.maximum)

    def invalid(self) -> tuple[Any, ...]:
        out: list[Any] = [1.5, True, "1"]
        if self.minimum is not None:
            out.append(self.minimum - 1)
        if self.maximum is not None:
            out.append(self.maximum + 1)
        return tuple(out)


@dataclass(frozen=True)
class Bool(Constraint):
    """A bool; ``1``, ``"yes"`` and ``None`` are refused (:func:`check_bool`)."""

    def __call__(self, name: str, value: Any) -> bool:
        return check_bool(name, value)

    def invalid(self) -> tuple[Any, ...]:
        return (1, "yes", None)


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of a fixed set of strings (:func:`check_choice`)."""

    choices: tuple[str, ...]

    def __call__(self, name: str, value: Any) -> str:
        return check_choice(name, value, self.choices)

    def invalid(self) -> tuple[Any, ...]:
        return ("not-a-choice", 1)


@dataclass(frozen=True)
class Nullable(Constraint):
    """None, or a value the ``inner`` rule accepts."""

    inner: Constraint

    def __call__(self, name: str, value: Any) -> Any:
        return None if value is None else self.inner(name, value)

    def invalid(self) -> tuple[Any, ...]:
        return tuple(v for v in self.inner.invalid() if v is not None)


@dataclass(frozen=True)
class Rule(Constraint):
    """Any other rule: ``check(name, value)`` validates, ``refused`` lists values it refuses."""

    check: Callable[[str, Any], Any]
    refused: tuple[Any, ...]

    def __call__(self, name: str, value: Any) -> Any:
        return self.check(name, value)

    def invalid(self) -> tuple[Any, ...]:
        return self.refused


def check_table(table: Mapping[str, Constraint], values: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """``values`` with each key ``prefix + name`` of a rule in ``table`` validated; other keys pass unchanged.

    Raises:
        ConfigError: a value breaks its rule (the message names the key).
    """
    out = dict(values)
    for rule_name, rule in table.items():
        key = prefix + rule_name
        if key in out:
            out[key] = rule(key, out[key])
    return out
