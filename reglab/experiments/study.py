"""Studies: a base config, named variants and seeds, expanded into runs.

A study file looks like::

    study: demo
    base: {task: {name: mnist1d}, optimizer: {name: adam, lr: 1.0e-3}, train: {steps: 1500}}
    variants:
      baseline: {}
      l2: {penalties: [{name: l2, weight: 1.0e-4}]}
      label_smoothing: {loss: {name: label_smoothing, smoothing: 0.1}}
    seeds: [0, 1]

Each variant is deep-merged into the base (dicts merge, lists replace) and run
once per seed; the run's name is the variant's name, its seed ``train.seed``.

Axes sweep any config field by its dotted path (list items by index,
``penalties.0.weight``)::

    grid:                       # every combination (Cartesian product)
      optimizer.lr: [0.01, 0.1]
      penalties.0.weight: [1.0e-4, 1.0e-3]
    zip:                        # lists of equal length, taken element by element
      optimizer.name: [sgd, adam]
      optimizer.lr: [0.1, 0.001]

Runs are every variant × grid point × zip position × seed, in that order;
a run swept by axes is named ``variant[path=value, ...]`` (``path=value, ...``
when the study has no variants). Two runs whose
configs are identical (same :meth:`RunConfig.config_hash`) are run once.

A search study (``reglab tune``) samples its runs instead: ``search`` gives a
range or a list of choices per dotted path (:mod:`reglab.experiments.search`),
``objective`` the metric to optimize (``split/name`` as a run logs it, e.g.
``test/accuracy``) and ``direction`` ``minimize`` or ``maximize``::

    search:
      optimizer.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
      penalties.0.weight: {choices: [0, 1.0e-4, 1.0e-3]}
    objective: test/accuracy
    direction: maximize

Each trial is ``base`` with the sampled values set, named ``trial N``, trained
on the study's one seed; variants, grid and zip do not combine with a search
(give the alternatives as choices), and :meth:`Study.expand` refuses a search.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reglab.core import ConfigError
from reglab.experiments.config import RunConfig, deep_merge, parse_config, read_yaml
from reglab.experiments.search import Dimension, parse_search

_STUDY_KEYS = ("study", "base", "variants", "grid", "zip", "seeds", "search", "objective", "direction")
#: The directions a search study's objective can be optimized in.
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Study:
    """A named set of runs: every variant of ``base`` under every seed."""

    name: str
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    search: dict[str, Dimension] = field(default_factory=dict)
    objective: str | None = None
    direction: str | None = None

    @property
    def is_search(self) -> bool:
        """Whether the study samples its runs (``reglab tune``) rather than listing them."""
        return bool(self.search)

    def trial_data(self, params: Mapping[str, Any], name: str) -> dict[str, Any]:
        """The config mapping of one trial of a search: ``base`` with each ``{path: value}`` of ``params`` set,
        named ``name``, on the study's seed (not validated; :func:`parse_config` it).

        Raises:
            ConfigError: a path crosses a value that is not a mapping or list, or a list index out of range.
        """
        data = dict(self.base)
        for path, value in params.items():
            data = set_path(data, path, value)
        return deep_merge(data, {"name": name, "train": {"seed": self.seeds[0]}})

    @property
    def named_variants(self) -> bool:
        """False when the study gave no variants (its runs are named by their axis values alone)."""
        return list(self.variants) != ["base"]

    def points(self) -> list[dict[str, Any]]:
        """The axis settings ``{path: value}`` of every grid × zip point (one empty point without axes)."""
        grid = [dict(zip(self.grid, values, strict=True)) for values in itertools.product(*self.grid.values())]
        length = len(next(iter(self.zip.values()))) if self.zip else 1
        zipped = [{path: values[i] for path, values in self.zip.items()} for i in range(length)]
        return [{**g, **z} for g in grid for z in zipped]

    def expand(self) -> list[RunConfig]:
        """The run configs (variant × grid × zip × seed), each validated, duplicates (same config hash) dropped.

        Raises:
            ConfigError: a run's config is invalid; the message names the variant and axis values; or the study is
                a search, whose runs are sampled by ``reglab tune``.
        """
        if self.is_search:
            raise ConfigError(
                f"study {self.name!r} is a search (it has 'search'): its runs are sampled; run it with "
                "`reglab tune STUDY.yaml --trials N`"
            )
        runs, seen = [], set()
        for variant, overrides in self.variants.items():
            for point in self.points():
                axes = ", ".join(f"{p}={_short(v)}" for p, v in point.items())
                name = (f"{variant}[{axes}]" if self.named_variants else axes) if point else variant
                for seed in self.seeds:
                    data = deep_merge(self.base, overrides)
                    for path, value in point.items():
                        data = set_path(data, path, value)
                    data = deep_merge(data, {"name": name, "train": {"seed": seed}})
                    try:
                        cfg = parse_config(data)
                    except ConfigError as err:
                        raise ConfigError(f"study {self.name!r}, run {name!r}: {err}") from None
                    if cfg.config_hash() not in seen:
                        seen.add(cfg.config_hash())
                        runs.append(cfg)
        return runs


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=repr)


def set_path(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the field at dotted ``path`` (list items by index) set to ``value``.

    Missing mapping keys are created; a list index must exist.

    Raises:
        ConfigError: the path crosses a value that is neither a mapping nor a list, or a list index is out of range.
    """
    head, _, rest = path.partition(".")
    if isinstance(data, list):
        if not head.isdigit() or int(head) >= len(data):
            raise ConfigError(f"axis {path!r}: {head!r} is not an index of a list of {len(data)} items")
        out_list = list(data)
        out_list[int(head)] = set_path(out_list[int(head)], rest, value) if rest else value
        return out_list  # type: ignore[return-value]
    if not isinstance(data, Mapping):
        raise ConfigError(f"axis {path!r}: cannot set a field inside the value {data!r}")
    out = dict(data)
    out[head] = set_path(out.get(head, {}), rest, value) if rest else value
    return out


def _axes(data: Mapping[str, Any], key: str) -> dict[str, list[Any]]:
    axes = data.get(key) or {}
    if not isinstance(axes, Mapping):
        raise ConfigError(f"study: {key!r} must map dotted field paths to lists of values, got {axes!r}")
    for path, values in axes.items():
        if not isinstance(path, str) or not path or path.startswith(".") or ".." in path:
            raise ConfigError(f"study: {key}: {path!r} is not a dotted field path like 'optimizer.lr'")
        if path == "train.seed" or path.startswith("name"):
            raise ConfigError(f"study: {key}: {path!r} is set by the study itself; use 'seeds' (or variants) instead")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"study: {key}: {path!r} must have a non-empty list of values, got {values!r}")
    return {p: list(v) for p, v in axes.items()}


def is_study(data: Mapping[str, Any]) -> bool:
    """Whether a config mapping is a study (has ``base`` or ``variants``) rather than a single run."""
    return any(key in data for key in ("base", "variants", "grid", "zip", "search"))


def parse_study(data: Mapping[str, Any]) -> Study:
    """Validate a study mapping.

    Raises:
        ConfigError: an unknown top-level key, a missing ``study`` name, variants that are not
            mappings, seeds that are not non-negative ints; for a search, a bad dimension
            (:func:`~reglab.experiments.search.parse_search`), a missing or malformed ``objective`` or
            ``direction``, or variants, grid, zip or several seeds alongside ``search``.
    """
    for key in data:
        if key not in _STUDY_KEYS:
            raise ConfigError(f"study: unknown key {key!r}; allowed: {', '.join(_STUDY_KEYS)}")
    name = data.get("study")
    if not isinstance(name, str) or not name:
        raise ConfigError("study: the key 'study' must give the study a name")
    base = data.get("base") or {}
    variants = data.get("variants") or {"base": {}}
    if not isinstance(base, Mapping) or not isinstance(variants, Mapping):
        raise ConfigError("study: 'base' and 'variants' must be mappings")
    for variant, overrides in variants.items():
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ConfigError(f"study: variant {variant!r} must be a mapping of overrides (empty or null for none)")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"study: 'seeds' must be a list of non-negative ints, got {seeds!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"study: 'seeds' must be a non-empty list of distinct seeds, got {seeds!r}")
    grid, zipped = _axes(data, "grid"), _axes(data, "zip")
    if len({len(v) for v in zipped.values()}) > 1:
        raise ConfigError(
            f"study: the 'zip' lists must have equal lengths, got { ({p: len(v) for p, v in zipped.items()}) }"
        )
    if set(grid) & set(zipped):
        raise ConfigError(f"study: {sorted(set(grid) & set(zipped))} appear in both 'grid' and 'zip'")
    search, objective, direction = _search(data, seeds)
    variants = {k: dict(v or {}) for k, v in variants.items()}
    return Study(name, dict(base), variants, tuple(seeds), grid, zipped, search, objective, direction)


def _search(data: Mapping[str, Any], seeds: list[int]) -> tuple[dict[str, Dimension], str | None, str | None]:
    """The ``search``, ``objective`` and ``direction`` of a study mapping (empty and None for a plain study)."""
    if "search" not in data:
        for key in ("objective", "direction"):
            if key in data:
                raise ConfigError(f"study: {key!r} belongs to a search study; add 'search' or remove {key!r}")
        return {}, None, None
    search = parse_search(data["search"])
    mixed = [key for key in ("variants", "grid", "zip") if data.get(key)]
    if mixed:
        raise ConfigError(
            f"study: 'search' cannot be combined with {mixed}: a search samples its runs; give the alternatives "
            "as choices, e.g. search: {optimizer.name: {choices: [sgd, adam]}}"
        )
    if len(seeds) != 1:
        raise ConfigError(f"study: a search trains each trial once, on one seed; give seeds: [S], got {seeds!r}")
    objective, direction = data.get("objective"), data.get("direction")
    split, _, metric = objective.partition("/") if isinstance(objective, str) else ("", "", "")
    if split not in ("train", "test", "probe") or not metric:
        raise ConfigError(
            f"study: 'objective' must name a metric the runs log as split/name (train/..., test/... or probe/...), "
            f"e.g. 'test/accuracy'; got {objective!r}"
        )
    if direction not in DIRECTIONS:
        raise ConfigError(f"study: 'direction' must be minimize or maximize, got {direction!r}")
    return search, objective, direction


def load_study(path: str | Path) -> Study:
    """Load a study from a YAML file."""
    return parse_study(read_yaml(path))
