"""Explicit regularizers: :class:`~reglab.core.Penalty` subclasses, composable with ``+``.

``get(name, weight, **kwargs)`` builds a registered penalty; ``reglab list penalty``
lists them.
"""

from __future__ import annotations

from typing import Any

from reglab.core import Penalty, PenaltySum
from reglab.penalties.compander import WeightCompander, remove_weight_compander, weight_compander
from reglab.penalties.continual import EWC, FISHER_KINDS, consolidate_all, fisher_diagonal
from reglab.penalties.gradient import Flooding, GradientNorm, ImplicitGradientRegularization, squared_gradient_norm
from reglab.penalties.norms import (
    L1,
    L2,
    ElasticNet,
    GroupLasso,
    L2ToInit,
    NormLoss,
    WassersteinToInit,
    selected_parameters,
)
from reglab.penalties.output import ConfidencePenalty, LogPartition, SpectralDecoupling
from reglab.penalties.registry import REGISTRY
from reglab.penalties.representation import (
    CenterLoss,
    NCBetween,
    NCWithin,
    PairwiseOrthogonality,
    SingularValueUniformity,
)
from reglab.penalties.shrinkage import HyperSparse, SelectiveDecay
from reglab.penalties.smoothness import (
    VAT,
    FlipInvariance,
    InputGradientNorm,
    JacobianNorm,
    LocalLinearity,
    ShiftInvariance,
    SoftEquivariance,
    circular_shift,
)
from reglab.penalties.spectral import (
    SRIP,
    ConditionNumber,
    KernelOrthogonality,
    NuclearNorm,
    SoftOrthogonality,
    SpectralNorm,
    SpectralRegularizer,
    conv_orthogonality_loss,
    weight_matrices,
)


def get(name: str, *args: Any, **kwargs: Any) -> Penalty:
    """Build the penalty registered as ``name`` (e.g. ``get("l2", 1e-4)``)."""
    return REGISTRY.get(name, *args, **kwargs)


__all__ = [
    "VAT",
    "ConfidencePenalty",
    "FlipInvariance",
    "Flooding",
    "GradientNorm",
    "ImplicitGradientRegularization",
    "InputGradientNorm",
    "JacobianNorm",
    "LocalLinearity",
    "LogPartition",
    "ShiftInvariance",
    "SoftEquivariance",
    "SpectralDecoupling",
    "circular_shift",
    "squared_gradient_norm",
    "SRIP",
    "ConditionNumber",
    "KernelOrthogonality",
    "NuclearNorm",
    "SoftOrthogonality",
    "SpectralNorm",
    "SpectralRegularizer",
    "conv_orthogonality_loss",
    "weight_matrices",
    "EWC",
    "FISHER_KINDS",
    "CenterLoss",
    "NCBetween",
    "NCWithin",
    "PairwiseOrthogonality",
    "SingularValueUniformity",
    "consolidate_all",
    "fisher_diagonal",
    "L1",
    "L2",
    "REGISTRY",
    "ElasticNet",
    "GroupLasso",
    "HyperSparse",
    "L2ToInit",
    "NormLoss",
    "Penalty",
    "PenaltySum",
    "SelectiveDecay",
    "WassersteinToInit",
    "WeightCompander",
    "get",
    "remove_weight_compander",
    "selected_parameters",
    "weight_compander",
]
