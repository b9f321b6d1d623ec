"""Adversarial Model Perturbation (AMP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from reglab.core.validation import Float, Int, OneOf
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.vectors import NORM_EPS, global_norm
from reglab.optim.registry import REGISTRY


@REGISTRY.register("amp")
class AMP(PerturbationOptimizer):
    """Adversarial Model Perturbation (AMP): a few projected gradient-ascent steps on the weights, then descend.

    Update (``steps`` = N inner iterations, ``zeta`` = ``inner_lr``)::

        delta = 0;  g = grad L(w)
        repeat N times:
            delta <- delta + zeta * g
            delta <- delta * min(1, epsilon / (||delta|| + 1e-12))   # project onto the epsilon ball
            g     <- grad L(w + delta)
        w <- base_step(w, g)                                         # delta is removed first

    N + 1 forward/backward passes per step. ``norm="tensor"`` projects each
    parameter tensor onto its own ball, as the authors' code
    (hiyouga/AMP-Regularizer ``amp.py``) does; ``norm="global"`` uses one ball
    for all parameters, as the paper's ``max_{||Delta|| <= epsilon}`` is
    written. With N = 1 and a large ``epsilon`` the step is an unnormalized SAM step.

    Example:
        >>> import torch
        >>> from reglab.optim import AMP
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = AMP(torch.optim.SGD(model.parameters(), lr=0.1), epsilon=0.5, inner_lr=1.0, inner_steps=1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Zheng, Zhang, Mao. "Regularizing Neural Networks via Adversarial Model
        Perturbation", CVPR 2021.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        epsilon: radius of the perturbation ball; the authors' default 0.5 (usual 0.1-1).
        inner_lr: step size zeta of the inner ascent; authors' default 1.
        inner_steps: number N of inner ascent steps; authors' default 1 (0 gives the base optimizer).
        norm: ``"tensor"`` (one ball per parameter tensor, the authors' code) or ``"global"``.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: a negative ``epsilon`` or ``inner_lr``, ``inner_steps < 0``, an unknown ``norm``,
            or a bad base optimizer / model.
    """

    constraints: ClassVar = {
        "epsilon": Float(0.0),
        "inner_lr": Float(0.0),
        "inner_steps": Int(0),
        "norm": OneOf(("tensor", "global")),
    }
    prefix = "amp_"

    def __init__(
        self,
        params: Any,
        epsilon: float = 0.5,
        inner_lr: float = 1.0,
        inner_steps: int = 1,
        *,
        norm: str = "tensor",
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        super().__init__(
            params,
            base,
            {"epsilon": epsilon, "inner_lr": inner_lr, "inner_steps": inner_steps, "norm": norm},
            model=model,
        )

    def _project(self, delta: list[Tensor]) -> list[Tensor]:
        eps = self.hyperparameters["epsilon"]
        if self.hyperparameters["norm"] == "global":
            coef = torch.clamp(eps / (global_norm(delta) + NORM_EPS), max=1.0)
            return [t * coef for t in delta]
        return [t * torch.clamp(eps / (torch.linalg.vector_norm(t) + NORM_EPS), max=1.0) for t in delta]

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g: list[Tensor] | None = point.grad
        delta = [torch.zeros_like(p) for p in point.params]
        for _ in range(d["inner_steps"]):
            delta = self._project([t + gi * d["inner_lr"] for t, gi in zip(delta, g)])
            g = point.grad_at(delta)
            if g is None:
                return None
        return g
