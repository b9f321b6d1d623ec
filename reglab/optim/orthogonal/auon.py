"""AuON: a linear-time cosh-RMS scaling of the momentum instead of orthogonalization (Maity, 2025)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.validation import (
    Bool,
    Float,
)
from reglab.linalg.newton_schulz import QUINTIC, Coefficients, newton_schulz
from reglab.optim.orthogonal.base import MATRIX_CONSTRAINTS, NS_COEFFICIENTS, OrthogonalOptimizer
from reglab.optim.registry import REGISTRY


@REGISTRY.register("auon")
class AuON(OrthogonalOptimizer):
    """AuON: linear-time cosh-RMS scaling of the momentum instead of orthogonalization (Maity, 2025).

    For each matrix parameter ``W`` with gradient ``G``::

        B <- mu B + (1 - mu) G;   M = G + mu (B - G) if nesterov else B
        M <- NS_1(M)                                   # only with hybrid=True: one NS step
        r  = sqrt(mean(cosh(gamma * M / (||M||_F + 1e-7))^2))
        W <- (1 - lr * weight_decay) W - lr * M / (r + 1e-8)

    No matrix product: ``O(rows * cols)``. Follows the reference code
    (github.com/ryyzn9/AuON, ``auon/optimizer.py``): EMA momentum with the
    Nesterov blend, decoupled weight decay, the constants 1e-7 and 1e-8, gamma
    1.5. Note that ``cosh(x)^2 ~ 1 + x^2`` for the small entries of a
    unit-norm matrix, so ``r ~ 1 + gamma^2 / (2 rows cols)``: for a matrix of
    more than a few entries the step is close to momentum SGD on ``M`` with a
    brake that only bites when a few entries carry most of the norm. A
    secondary write-up (junaidaliop.github.io/zij/math/auon) instead steps by
    ``M / ||M||_F / r`` times ``sqrt(max(1, m / n))``; this class follows the
    code. The hybrid variant's code is not public: ``hybrid=True``
    applies one Newton–Schulz step (``ns_coefficients``, default quintic) to
    ``M`` before the scaling, as the paper's abstract describes; its scale is
    then that of the NS output (singular values up to about 1), not of ``M``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = AuON(model, lr=0.08)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        D. Maity, "AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
        Updates", 2025 (arXiv:2509.24320).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (0.08–0.24 in the reference code).
        weight_decay: decoupled weight decay, >= 0 (0–0.01).
        momentum: in [0, 1) (0.95).
        nesterov: Nesterov blend (the reference always uses it).
        gamma: the cosh scale, > 0 (1.5).
        hybrid: one Newton–Schulz step before the scaling (Hybrid-AuON).
        ns_coefficients: the ``(a, b, c)`` of that step (``hybrid=True`` only).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {
        **MATRIX_CONSTRAINTS,
        "gamma": Float(0.0, low_open=True),
        "hybrid": Bool(),
        "ns_coefficients": NS_COEFFICIENTS,
    }

    def __init__(
        self,
        params: Any,
        lr: float = 0.08,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        gamma: float = 1.5,
        hybrid: bool = False,
        *,
        ns_coefficients: Coefficients = QUINTIC,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            gamma=gamma,
            hybrid=hybrid,
            ns_coefficients=ns_coefficients,
        )
        super().__init__(
            params,
            defaults,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        M = self._momentum(grad, state, group)
        if group["hybrid"]:
            M = newton_schulz(M, 1, group["ns_coefficients"], 1e-7)
        unit = M / (M.norm() + 1e-7)
        r = torch.cosh(group["gamma"] * unit).square().mean().sqrt()
        return M / (r + 1e-8), 1.0
