"""Search spaces: the ``search`` section of a study, one dimension per dotted config path.

A search study samples its configs instead of listing them::

    study: lr_and_l2
    base: {task: {name: mnist1d}, optimizer: {name: adam, lr: 1.0e-3}, penalties: [{name: l2, weight: 0}]}
    search:
      optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}   # a float range, sampled log-uniformly
      model.width: {low: 32, high: 256}                       # ints at both ends: an integer range
      penalties.0.weight: {choices: [0, 1.0e-4, 1.0e-3]}      # one of these values
    objective: test/accuracy
    direction: maximize

A range is ``{low, high}`` with ``low < high``, plus ``log: true`` for a
log-uniform draw (then ``low > 0``); both ends ints (not bools) make it an
integer range. A choice is ``{choices: [...]}`` of numbers, strings, booleans
or null (what Optuna stores as a parameter). Each path is set in ``base``
with :func:`~reglab.experiments.study.set_path`, so list items are addressed
by index (``penalties.0.weight``) and must exist in ``base``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reglab.core import ConfigError

__all__ = ["Choice", "Dimension", "Range", "parse_search"]

_RANGE_KEYS = ("low", "high", "log")


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (both included), log-uniform when ``log``; ints when ``integer``."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values a config must accept before any trial trains: both ends."""
        return (self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """One of ``choices``."""

    choices: tuple[Any, ...]

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values a config must accept before any trial trains: every choice."""
        return self.choices


Dimension = Range | Choice


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_dimension(path: str, spec: Any) -> Dimension:
    """One dimension of a search space from its YAML mapping.

    Raises:
        ConfigError: naming ``search.<path>``: not a mapping, unknown keys, both ``choices`` and ``low``/``high``,
            ends that are not finite numbers, ``low >= high``, ``log: true`` with ``low <= 0``, a non-bool ``log``,
            or choices that are not a non-empty list of distinct scalars.
    """
    where = f"search: {path}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be {{low: L, high: H[, log: true]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: 'choices' cannot be combined with {sorted(set(spec) - {'choices'})}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        for value in choices:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise ConfigError(
                    f"{where}: choice {value!r} is not a number, string, boolean or null; choose among scalars "
                    "(put a whole method in a variant of another study instead)"
                )
        if len({(type(v), v) for v in choices}) != len(choices):
            raise ConfigError(f"{where}: choices must be distinct, got {choices!r}")
        return Choice(tuple(choices))
    unknown = sorted(set(spec) - set(_RANGE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; a range takes low, high and log, a choice only choices")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both 'low' and 'high', got {dict(spec)!r}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for key, value in (("low", low), ("high", high)):
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if low >= high:
        raise ConfigError(f"{where}: low must be < high, got low={low!r}, high={high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (a log-uniform draw), got low={low!r}")
    integer = isinstance(low, int) and isinstance(high, int)
    return Range(low, high, log, integer)


def parse_search(data: Any) -> dict[str, Dimension]:
    """A study's ``search`` mapping ``{dotted path: dimension}``, validated (see :func:`parse_dimension`).

    Raises:
        ConfigError: naming the field, e.g. ``search: optimizer.lr: low must be < high, got low=0.1, high=0.01``.
    """
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"study: 'search' must map dotted field paths to ranges or choices, got {data!r}")
    out = {}
    for path, spec in data.items():
        if not isinstance(path, str) or not path or path.startswith(".") or path.endswith(".") or ".." in path:
            raise ConfigError(f"search: {path!r} is not a dotted field path like 'optimizer.lr'")
        if path == "train.seed" or path == "name":
            raise ConfigError(f"search: {path!r} is set by the study itself; use 'seeds' instead")
        out[path] = parse_dimension(path, spec)
    return out
