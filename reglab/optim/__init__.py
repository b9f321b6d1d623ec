"""Optimizers: ``torch.optim.Optimizer``s registered by name.

``get(name, params, **kwargs)`` builds one; an optimizer that must re-evaluate
the loss (the SAM family) has ``requires_closure = True`` and is driven through
``step(closure)`` by :func:`reglab.train.train_step`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from reglab.optim.base import ConstrainedOptimizer, OptimizerWrapper, requires_closure
from reglab.optim.classp import CLASSP
from reglab.optim.lawn import LAWN
from reglab.optim.mup import MupParam, coord_check, mlp_roles, mup_init_, mup_param_groups, mup_table
from reglab.optim.orthogonal import (
    DEFAULT_HEAD_NAMES,
    ROOT,
    ROOT_COEFFICIENTS,
    AuON,
    Muon,
    NorMuon,
    OrthogonalOptimizer,
    lr_ratio,
    split_params,
)
from reglab.optim.orthograd import OrthoGrad, orthogonal_gradient
from reglab.optim.param_groups import (
    NO_WEIGHT_DECAY_KEYWORDS,
    no_weight_decay_names,
    split_no_weight_decay,
    weight_decay_groups,
)
from reglab.optim.perturbation import (
    AMP,
    ASAM,
    GAM,
    GSAM,
    IGNITE,
    SAM,
    FiniteDifferenceGR,
    Perturbation,
    PerturbationOptimizer,
    ascent_offsets,
)
from reglab.optim.registry import REGISTRY, build_base
from reglab.optim.schedules import (
    SCHEDULES,
    ConstantSchedule,
    FactorSchedule,
    GradNormRecorder,
    LinearSchedule,
    OneCycleSchedule,
    RefinedSchedule,
    WarmupCosineSchedule,
    get_schedule,
    median_smooth,
    refined_schedule,
)
from reglab.optim.spectra import SPECTRA


def get(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` (e.g. ``get("sgd", model.parameters(), lr=0.1)``)."""
    return REGISTRY.get(name, params, **kwargs)


__all__ = [
    "DEFAULT_HEAD_NAMES",
    "ROOT",
    "ROOT_COEFFICIENTS",
    "AuON",
    "Muon",
    "NorMuon",
    "OrthogonalOptimizer",
    "lr_ratio",
    "split_params",
    "AMP",
    "ASAM",
    "ConstrainedOptimizer",
    "GAM",
    "GSAM",
    "IGNITE",
    "SAM",
    "FiniteDifferenceGR",
    "Perturbation",
    "PerturbationOptimizer",
    "ascent_offsets",
    "CLASSP",
    "LAWN",
    "REGISTRY",
    "SCHEDULES",
    "SPECTRA",
    "ConstantSchedule",
    "FactorSchedule",
    "GradNormRecorder",
    "LinearSchedule",
    "MupParam",
    "NO_WEIGHT_DECAY_KEYWORDS",
    "OneCycleSchedule",
    "OptimizerWrapper",
    "OrthoGrad",
    "RefinedSchedule",
    "WarmupCosineSchedule",
    "build_base",
    "coord_check",
    "get",
    "get_schedule",
    "median_smooth",
    "mlp_roles",
    "mup_init_",
    "mup_param_groups",
    "mup_table",
    "no_weight_decay_names",
    "orthogonal_gradient",
    "refined_schedule",
    "requires_closure",
    "split_no_weight_decay",
    "weight_decay_groups",
]
