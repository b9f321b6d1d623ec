"""Losses: ``nn.Module``s called as ``loss(logits, targets)`` with a torch-style ``reduction``."""

from __future__ import annotations

from typing import Any

from torch import nn

from reglab.losses.base import REDUCTIONS, REGISTRY, Loss, reduce
from reglab.losses.calibrated import ACLS, TSLA, MaxSup
from reglab.losses.classification import (
    CircleLoss,
    CompSumLoss,
    CrossEntropy,
    EncouragingLoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    PolyLoss,
    SphericalZLoss,
    Squentropy,
    log1m_softmax,
    soft_cross_entropy,
)
from reglab.losses.distillation import PSKD, TeacherGuidedDistillation
from reglab.losses.normalizations import SparsemaxLoss, StableMaxCrossEntropy, log_stablemax, sparsemax, stablemax
from reglab.losses.regression import MSE
from reglab.losses.robust import (
    ELR,
    LDRKL,
    MAE,
    ActivePassiveLoss,
    Bootstrapping,
    GeneralizedCrossEntropy,
    NormalizedCrossEntropy,
    ReverseCrossEntropy,
    SymmetricCrossEntropy,
)


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` (e.g. ``get("label_smoothing", smoothing=0.1)``)."""
    return REGISTRY.get(name, **kwargs)


__all__ = [
    "ACLS",
    "ELR",
    "LDRKL",
    "MAE",
    "MSE",
    "PSKD",
    "ActivePassiveLoss",
    "Bootstrapping",
    "GeneralizedCrossEntropy",
    "NormalizedCrossEntropy",
    "ReverseCrossEntropy",
    "SymmetricCrossEntropy",
    "TeacherGuidedDistillation",
    "TSLA",
    "CircleLoss",
    "CompSumLoss",
    "EncouragingLoss",
    "FocalLoss",
    "MaxSup",
    "PolyLoss",
    "SparsemaxLoss",
    "SphericalZLoss",
    "Squentropy",
    "StableMaxCrossEntropy",
    "log1m_softmax",
    "log_stablemax",
    "sparsemax",
    "stablemax",
    "REDUCTIONS",
    "REGISTRY",
    "CrossEntropy",
    "LabelSmoothingCrossEntropy",
    "Loss",
    "get",
    "reduce",
    "soft_cross_entropy",
]
