"""Penalties and their algebra.

A penalty is an ``nn.Module`` called on a :class:`~reglab.core.context.StepContext`
that returns a scalar, already multiplied by its weight::

    total = L2(1e-4) + SoftOrthogonality(1e-3)    # a PenaltySum
    value = total(ctx)                            # sum of the weighted terms
    total.breakdown(ctx)                          # {"l2": ..., "soft_orthogonality": ...}
    half = 0.5 * total                            # every weight halved
"""

from __future__ import annotations

import abc
import copy
import numbers
import re
from collections.abc import Iterable

from torch import Tensor, nn

from reglab.core.context import CONTEXT_FIELDS, StepContext
from reglab.core.errors import ConfigError
from reglab.core.validation import check_float


def snake_case(name: str) -> str:
    """``"SoftOrthogonality"`` -> ``"soft_orthogonality"``, ``"L2ToInit"`` -> ``"l2_to_init"``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return s.lower()


class Penalty(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a weighted regularization term ``weight * compute(ctx)``.

    Subclasses implement :meth:`compute` (the unweighted value) and declare the
    context fields they read in the class attribute ``needs``, a subset of
    ``{"inputs", "outputs", "features", "loss_fn", "indices",
    "differentiable_inputs"}`` (:data:`~reglab.core.context.CONTEXT_FIELDS`);
    ``model``, ``targets`` and ``step`` are always present.

    Args:
        weight: the coefficient, finite and >= 0.
        name: the key of this term in :meth:`breakdown`; defaults to the class
            name in snake_case (``L2ToInit`` -> ``l2_to_init``).

    Raises:
        ConfigError: the weight is negative, not finite or not a number.
    """

    needs: frozenset[str] = frozenset()

    def __init__(self, weight: float, *, name: str | None = None):
        super().__init__()
        self.weight = check_float(f"{type(self).__name__} weight", weight, 0.0)
        self.name = name or snake_case(type(self).__name__)
        unknown = set(self.needs) - CONTEXT_FIELDS
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}.needs has unknown fields {sorted(unknown)}; allowed: {sorted(CONTEXT_FIELDS)}"
            )

    @abc.abstractmethod
    def compute(self, ctx: StepContext) -> Tensor:
        """The unweighted penalty value, a scalar tensor."""

    def forward(self, ctx: StepContext) -> Tensor:
        return self.weight * self.compute(ctx)

    def breakdown(self, ctx: StepContext) -> dict[str, Tensor]:
        """Each weighted term by name (a single penalty has one)."""
        return {self.name: self(ctx)}

    def terms(self) -> list[Penalty]:
        """The leaf penalties this penalty is made of."""
        return [self]

    def __add__(self, other: object) -> Penalty:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # p + 0 == p, like 0 + p (so that sum([p1, p2]) works)
        if not isinstance(other, Penalty):
            return NotImplemented
        return PenaltySum([*self.terms(), *other.terms()])

    def __radd__(self, other: object) -> Penalty:
        return self.__add__(other)

    def __mul__(self, scale: object) -> Penalty:
        if isinstance(scale, Tensor) and scale.ndim == 0:
            scale = scale.item()
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            return NotImplemented
        scale = check_float("penalty scale factor", scale, 0.0)
        scaled = copy.deepcopy(self)
        # a term that occurs twice (p + p) is one object after deepcopy: scale each distinct object once
        for term in {id(t): t for t in scaled.terms()}.values():
            term.weight *= scale
        return scaled

    __rmul__ = __mul__

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class PenaltySum(Penalty):
    """The sum of several penalties, built by ``+``; ``breakdown`` reports each term.

    Terms with the same name are reported as ``name``, ``name#2``, ...
    """

    def __init__(self, terms: Iterable[Penalty]):
        terms = list(terms)
        if not terms:
            raise ConfigError("PenaltySum needs at least one term")
        for t in terms:
            if not isinstance(t, Penalty):
                raise ConfigError(f"PenaltySum terms must be Penalty instances, got {type(t).__name__}")
        super().__init__(1.0, name="penalty_sum")
        self.parts = nn.ModuleList(terms)
        self.needs = frozenset().union(*(t.needs for t in terms))

    def terms(self) -> list[Penalty]:
        return list(self.parts)

    def compute(self, ctx: StepContext) -> Tensor:
        """The sum of the weighted terms (the sum's own weight is 1)."""
        values = list(self.breakdown(ctx).values())
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    def breakdown(self, ctx: StepContext) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for term in self.parts:
            key, k = term.name, 1
            while key in out:
                k += 1
                key = f"{term.name}#{k}"
            out[key] = term(ctx)
        return out

    def extra_repr(self) -> str:
        return ""
