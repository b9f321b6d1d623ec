"""Optimizers: ``torch.optim.Optimizer``s registered by name.

``get(name, params, **kwargs)`` builds one; an optimizer that must re-evaluate
the loss (the SAM family) has ``requires_closure = True`` and is driven through
``step(closure)`` by :func:`reglab.train.train_step`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any

import torch

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
from reglab.optim.perturbation import (
    AMP,
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
    RefinedSchedule,
    WarmupCosineSchedule,
    get_schedule,
    median_smooth,
    refined_schedule,
)
from reglab.optim.spectra import SPECTRA
from reglab.optim.wrappers import CLASSP, LAWN, OptimizerWrapper, OrthoGrad, orthogonal_gradient


def get(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` (e.g. ``get("sgd", model.parameters(), lr=0.1)``)."""
    return REGISTRY.get(name, params, **kwargs)


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
    "orthogonal_gradient",
    "refined_schedule",
    "requires_closure",
]
