"""The optimizer contract: hyperparameters live in ``param_groups``, declared once as a constraint table.

Every reglab optimizer keeps all its hyperparameters in its param groups, as
``torch.optim`` does, so a learning-rate scheduler, a checkpoint and a
per-group setting treat them alike:

- :class:`ConstrainedOptimizer` is the base of reglab's own optimizers
  (CLASSP, the Muon family). ``constraints`` maps each hyperparameter to its
  rule (:mod:`reglab.core.validation`); the constructor's values and every
  group added later (``add_param_group``, a group dict passed as ``params``)
  are checked against it.
- :class:`OptimizerWrapper` is the base of the optimizers that wrap a base
  optimizer (the SAM family, SPECTRA, ⊥Grad, LAWN). Its ``param_groups``,
  ``state`` and ``defaults`` are the base's; the wrapper adds its own
  hyperparameters to the base's groups (and defaults, so groups added later
  get them) with ``setdefault``, under the key ``prefix + name``
  (``"sam_rho"``): a prefix per wrapper, so a wrapper's ``eps`` never reads
  Adam's. ``state_dict()`` is therefore the base's, which holds them, plus a
  ``"wrapper"`` entry with the wrapper's type and its own state (IGNITE's
  multiplier, LAWN's frozen norms).

A wrapper is built from ``params`` and a ``base`` given as a registry name or
a ``{"name": ..., **kwargs}`` mapping (what configs write), or around an
optimizer that is already built (``SAM(torch.optim.SGD(...), rho=0.05)``;
``base`` is then left at its default). The registry holds the classes
themselves, so every signature is written once.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from reglab.core.errors import ConfigError
from reglab.core.validation import Constraint, check_table
from reglab.optim.registry import build_base

__all__ = ["WRAPPER_KEY", "ConstrainedOptimizer", "OptimizerWrapper", "requires_closure"]

#: Key under which a wrapper keeps its type and its own state in ``state_dict()``, beside the base's entries.
WRAPPER_KEY = "wrapper"


def requires_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` must be given a closure that re-evaluates the loss.

    True when the optimizer says so (``requires_closure = True``, the SAM family)
    or when its ``step`` takes a ``closure`` argument without a default
    (``torch.optim.LBFGS``).
    """
    if hasattr(optimizer, "requires_closure"):
        return bool(optimizer.requires_closure)
    return _step_needs_closure(type(optimizer))


@functools.lru_cache(maxsize=256)
def _step_needs_closure(cls: type) -> bool:
    """Whether ``cls.step`` has a ``closure`` argument without a default (read once per class: it runs every step)."""
    try:
        closure = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


class ConstrainedOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose hyperparameters are checked against the class's ``constraints`` table.

    ``constraints`` maps each hyperparameter (a key of ``defaults`` and of every
    param group) to its rule. ``group_constraints(group)`` says which rules a
    group follows (all of them, unless a subclass keeps groups of several
    kinds, as the Muon family does). ``hyperparameter_constraints()`` maps each
    constructor argument to its rule, for the generic tests.
    """

    constraints: ClassVar[Mapping[str, Constraint]] = {}

    def __init__(self, params: Any, defaults: Mapping[str, Any]):
        super().__init__(params, check_table(self.constraints, defaults))

    def group_constraints(self, group: Mapping[str, Any]) -> Mapping[str, Constraint]:
        """The rules ``group``'s hyperparameters follow."""
        return self.constraints

    @classmethod
    def hyperparameter_constraints(cls) -> dict[str, Constraint]:
        """The rule of each hyperparameter argument of the constructor."""
        return dict(cls.constraints)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: missing hyperparameters take the defaults, every one is checked.

        Raises:
            ConfigError: a hyperparameter of the group breaks its rule (named in the message).
        """
        group = dict(param_group)
        rules = self.group_constraints(group)
        for key in rules:
            if key in self.defaults:
                group.setdefault(key, self.defaults[key])
        super().add_param_group(check_table(rules, group))


def _default_base(cls: type) -> Any:
    return inspect.signature(cls).parameters["base"].default


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class of optimizers that wrap a base optimizer.

    ``param_groups``, ``state`` and ``defaults`` are properties that read (and
    assign) the base's, so an LR scheduler built on the wrapper changes the
    base's learning rates and ``zero_grad``/``add_param_group`` act on the base.
    The wrapper's hyperparameters (``constraints``, one rule per constructor
    argument) are keys ``prefix + name`` of every base group; a subclass reads
    them per group, or with :meth:`common` where the method needs one value for
    all parameters. ``state_dict()`` is the base's state dict plus
    ``"wrapper": {"type": ..., "state": ...}`` (:meth:`_wrapper_state`);
    ``load_state_dict`` accepts that, a plain state dict of the base (the
    wrapper's hyperparameters then keep their current values), and the state
    dicts of earlier versions of these classes (hyperparameters kept beside the
    groups). ``requires_closure`` is the base's, so a wrapped SAM-like
    optimizer is driven with a closure; a subclass that re-evaluates the loss
    itself (the SAM family) sets ``requires_closure = True``. Subclasses
    implement ``step``.

    Per-parameter state of a wrapper is keyed by the parameter's position in
    the flat list of the base's parameters (the order torch's state dicts use),
    never stored in the base's ``state`` (optimizers such as Adam initialize
    themselves when ``state[p]`` is empty).

    Args:
        params: the parameters (or param groups) to optimize, or a constructed
            optimizer to wrap (then ``base`` must be left at its default).
        base: the base optimizer as a registry name or a ``{"name": ..., **kwargs}`` mapping.
        defaults: the wrapper's hyperparameters by argument name (checked against ``constraints``).

    Raises:
        ConfigError: ``base`` is not a name or mapping, both a built optimizer and a ``base`` were given,
            or a hyperparameter breaks its rule.
    """

    constraints: ClassVar[Mapping[str, Constraint]] = {}
    #: namespace of the wrapper's keys in the base's param groups
    prefix: ClassVar[str] = ""

    def __init__(self, params: Any, base: str | Mapping[str, Any], defaults: Mapping[str, Any]):
        if isinstance(params, torch.optim.Optimizer):
            if base != _default_base(type(self)):
                raise ConfigError(
                    f"{type(self).__name__}: give either a built optimizer or params with base={base!r}, not both"
                )
            self.base = params
        elif isinstance(params, (str, bytes, Mapping, torch.Tensor)) or not isinstance(params, Iterable):
            raise ConfigError(
                f"{type(self).__name__}: params must be an iterable of parameters or param groups, or a constructed "
                f"torch.optim.Optimizer to wrap, got {type(params).__name__}"
            )
        else:
            self.base = build_base(params, base)
        # torch.optim.Optimizer.__init__ would create fresh param_groups/state; only its hook tables are needed.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        values = check_table(self.constraints, defaults)
        for name, value in values.items():
            self.base.defaults.setdefault(self.prefix + name, value)
            for group in self.base.param_groups:
                group.setdefault(self.prefix + name, value)
        for group in self.base.param_groups:
            self._check_group(group)

    @classmethod
    def hyperparameter_constraints(cls) -> dict[str, Constraint]:
        """The rule of each hyperparameter argument of the constructor."""
        return dict(cls.constraints)

    def group_constraints(self, group: Mapping[str, Any]) -> dict[str, Constraint]:
        """The rules of the wrapper's keys in ``group`` (keyed ``prefix + name``)."""
        return {self.prefix + name: rule for name, rule in self.constraints.items()}

    def _check_group(self, group: dict[str, Any]) -> None:
        """Check (and normalize in place) the wrapper's keys of one base group; subclasses add cross-key rules."""
        group.update(check_table(self.constraints, group, prefix=self.prefix))

    def common(self, name: str) -> Any:
        """The value of hyperparameter ``name``, which must be the same in every param group.

        Raises:
            ConfigError: the groups hold different values.
        """
        key = self.prefix + name
        groups = self.param_groups
        value = groups[0][key]
        for group in groups[1:]:
            if group[key] != value:
                raise ConfigError(
                    f"{type(self).__name__} needs one {key} for all parameters, got {value!r} and {group[key]!r} "
                    "in different param groups; set the same value in every group"
                )
        return value

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """``{name: value}`` of the wrapper's hyperparameters (each must be the same in every group)."""
        return {name: self.common(name) for name in self.constraints}

    # --- delegation -------------------------------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.base.defaults = value

    @property
    def requires_closure(self) -> bool:
        """Whether ``step`` needs a closure: true when the base needs one."""
        return requires_closure(self.base)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)
        self._check_group(self.base.param_groups[-1])

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.base.state_dict())
        state[WRAPPER_KEY] = {"type": type(self).__name__, "state": self._wrapper_state()}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        own = dict(state.pop(WRAPPER_KEY, None) or {})
        if "type" in own and own["type"] not in {
            c.__name__ for c in type(self).__mro__
        }:  # before the base changes: a refusal changes nothing
            raise ConfigError(
                f"state_dict was saved by {own['type']}, cannot load it into {type(self).__name__}; build the same "
                f"optimizer class, or load state_dict without its '{WRAPPER_KEY}' entry"
            )
        keys = list(self.group_constraints({}))
        current = [{k: group[k] for k in keys} for group in self.param_groups]
        self.base.load_state_dict(state)
        # earlier versions kept the hyperparameters beside the groups ({"type", "hyperparameters", "state"}), or
        # kept the wrapper's state as the whole entry (LAWN); a plain base state dict has neither
        saved = own.get("hyperparameters", {})
        for group, values in zip(self.param_groups, current):
            for key, value in values.items():
                group.setdefault(key, saved.get(key.removeprefix(self.prefix), value))
            self._check_group(group)
        self._load_wrapper_state(own.get("state", {}) if "type" in own else own)

    def _wrapper_state(self) -> dict[str, Any]:
        """What the wrapper keeps besides the base and its groups (tensors are cloned); override with the loader."""
        return {}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_wrapper_state`'s output (an empty dict: a plain base state dict was loaded)."""

    def _flat_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        values = "".join(f"{k}={v!r}, " for k, v in self._repr_values().items())
        return f"{type(self).__name__}({values}base={self.base!r})"

    def _repr_values(self) -> dict[str, Any]:
        first = self.param_groups[0]
        return {name: first[self.prefix + name] for name in self.constraints}

    def _require_plain_base(self, why: str) -> None:
        if self.requires_closure:
            raise ConfigError(
                f"{type(self).__name__} {why} cannot wrap {type(self.base).__name__}, which re-evaluates the loss "
                "inside step (requires_closure=True) and so recomputes the gradients after the wrapper has "
                "changed them; use a base optimizer that takes one gradient per step"
            )
