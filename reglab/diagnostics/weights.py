"""Weight-norm measurements and their probe."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.registry import REGISTRY


@dataclass
class WeightNormResult:
    """Parameter norms: ``total`` = ||theta||_2 over all trainable parameters, ``per_layer`` by parameter name."""

    total: float
    per_layer: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def weight_norm(model: nn.Module) -> WeightNormResult:
    """The L2 norm of all trainable parameters and of each parameter tensor.

    .. math:: \\lVert\\theta\\rVert_2 = \\sqrt{\\textstyle\\sum_i \\theta_i^2}

    The weight norm is the quantity weight decay acts on; its growth marks the
    lazy-to-rich transition studied with grokking ("Omnigrok: Grokking Beyond
    Algorithmic Data", Liu et al., 2023). The model is not changed.
    """
    per_layer = {n: p.detach().norm().item() for n, p in model.named_parameters() if p.requires_grad}
    return WeightNormResult(math.sqrt(sum(v * v for v in per_layer.values())), per_layer)


@REGISTRY.register("weight_norm")
class WeightNormProbe(Probe):
    """Logs the total parameter norm ||theta||_2 (metric ``weight_norm``) every N steps."""

    report_section = ReportSection(
        "weight_norm", "Weight norm", "The Euclidean norm of all trainable parameters.", order=60
    )
    labels = {"weight_norm": r"$\|\theta\|_2$"}

    def measure(self, trainer: Any) -> dict[str, float]:
        return {"weight_norm": weight_norm(trainer.model).total}
