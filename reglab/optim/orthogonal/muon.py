"""Muon and NorMuon: orthogonalized momentum, and its neuron-wise normalized form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.validation import (
    Float,
)
from reglab.linalg.newton_schulz import QUINTIC, Coefficients, newton_schulz
from reglab.optim.orthogonal.base import (
    MATRIX_CONSTRAINTS,
    NS_CONSTRAINTS,
    UNIT,
    OrthogonalOptimizer,
    lr_ratio,
    ns_compute_dtype,
)
from reglab.optim.registry import REGISTRY


@REGISTRY.register("muon")
class Muon(OrthogonalOptimizer):
    """Muon: momentum orthogonalized by Newton–Schulz for matrices, AdamW for the rest (Jordan et al., 2024).

    For each matrix parameter ``W`` (``rows x cols``; convolution kernels
    flattened to ``(out, -1)``) with gradient ``G``::

        B <- mu B + (1 - mu) G                      # momentum buffer (an EMA, as torch.optim.Muon)
        M  = G + mu (B - G)   if nesterov  else  B
        O  = NS(M)                                  # ns_steps Newton–Schulz steps, in ns_dtype
        W <- (1 - lr * weight_decay) W
        W <- W - lr * r(rows, cols) * O             # r: see adjust_lr_fn

    ``NS`` is :func:`reglab.linalg.newton_schulz.newton_schulz`; with the
    quintic coefficients its singular values land in about ``[0.68, 1.2]``
    (not 1). The defaults are ``torch.optim.Muon``'s, and on 2-D parameters
    the iterates are the same as torch's to the bit (tested): the EMA
    momentum (torch's docs write ``B <- mu B + G``; the code, and this class,
    use the EMA, which only rescales ``M`` before the normalisation), the NS in
    bfloat16 with the same ``addmm`` calls, weight decay with the unscaled
    ``lr`` before the step. Beyond torch: ``>= 3``-D kernels, any NS schedule
    (``ns_coefficients="polar_express"``), ``ns_dtype=None`` for a full-precision
    NS, and AdamW for non-matrix parameters (module docstring: routing).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = Muon(model, lr=0.02, adamw_lr=3e-4)  # hidden weight -> Muon; head, biases -> AdamW
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein,
        "Muon: An optimizer for hidden layers in neural networks", 2024
        (kellerjordan.github.io/posts/muon); J. Liu et al., "Muon is Scalable for
        LLM Training", 2025 (``adjust_lr_fn="match_rms_adamw"``); ``torch.optim.Muon``.

    Args:
        params: a module, a list of tensors or parameter groups (module docstring).
        lr: learning rate of the matrix update, >= 0 (0.02 usual with ``"original"``;
            the AdamW lr, 1e-4–1e-3, with ``"match_rms_adamw"``).
        weight_decay: decoupled weight decay of the matrices, >= 0 (0–0.1).
        momentum: ``mu`` in [0, 1) (0.95).
        nesterov: Nesterov momentum.
        ns_coefficients: ``(a, b, c)``, a preset name or a per-step schedule.
        eps: added to the Frobenius norm before the NS, >= 0.
        ns_steps: Newton–Schulz steps, in [1, 100] (5).
        adjust_lr_fn: ``None``/``"original"``: ``r = sqrt(max(1, rows / cols))``;
            ``"match_rms_adamw"``: ``r = 0.2 sqrt(max(rows, cols))``.
        ns_dtype: NS compute dtype: ``"auto"`` (default: bfloat16 on an accelerator, float32 on the
            CPU, whose bfloat16 products are ~90x slower), ``"bfloat16"`` (torch's, needed for
            bit-identical iterates with ``torch.optim.Muon``), ``"float32"``, ``"float64"``,
            ``"float16"`` or None (the parameter's).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the
            non-matrix parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {**MATRIX_CONSTRAINTS, **NS_CONSTRAINTS}

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str | torch.dtype | None = "auto",
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
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
        )
        super().__init__(
            params,
            defaults,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )

    def _orthogonalize(self, M: Tensor, group: Mapping[str, Any], coefficients: Coefficients | None = None) -> Tensor:
        coefficients = group["ns_coefficients"] if coefficients is None else coefficients
        dtype = ns_compute_dtype(group["ns_dtype"], M.device)
        return newton_schulz(M, group["ns_steps"], coefficients, group["eps"], dtype=dtype)

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        ortho = self._orthogonalize(self._momentum(grad, state, group), group)
        return ortho, lr_ratio(group["adjust_lr_fn"], grad.size(0), grad.size(1))


@REGISTRY.register("normuon")
class NorMuon(Muon):
    """NorMuon: Muon with a neuron-wise (row-wise) second moment that equalises row norms (Li et al., 2025).

    For each matrix parameter ``W`` (``m x n``, rows = output neurons)::

        O  = NS(Nesterov-momentum of G)                 # as Muon
        v <- beta2 v + (1 - beta2) mean_j O[:, j]^2     # one scalar per row (neuron)
        Ô  = O / (sqrt(v) + norm_eps)                   # row-wise
        Ô <- Ô * ||O||_F / (||Ô||_F + norm_eps)         # keep Muon's total norm
        W <- (1 - lr * weight_decay) W - lr * sqrt(max(1, m / n)) * Ô

    Follows the authors' reference code (github.com/zichongli5/NorMuon,
    ``normuon.py``, read through its mirror ShizukaKuze/NorMuon): NS5 with
    the quintic coefficients in bfloat16, the row mean over columns, eps 1e-10
    in both places, the ``sqrt(max(1, m / n))`` factor, defaults lr 0.02,
    beta2 0.95, weight decay 0. Departures: ``v`` is not bias-corrected there
    either, but here it is kept in the parameter's dtype (float32 at least)
    instead of always float32, and ``adjust_lr_fn`` (Muon's) may replace the
    factor. With a constant gradient ``v`` stays proportional to the row mean
    square, so every row of ``Ô`` has the same norm from the first step.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = NorMuon(model, lr=0.02)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Z. Li, L. Liu, C. Liang, W. Chen, T. Zhao, "NorMuon: Making Muon more
        efficient and scalable", 2025 (arXiv:2510.05491).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (0.02 usual).
        weight_decay: decoupled weight decay, >= 0 (0–0.1).
        momentum: in [0, 1) (0.95).
        beta2: decay of the neuron-wise second moment, in [0, 1) (0.95).
        nesterov, ns_coefficients, eps, ns_steps, ns_dtype: as :class:`Muon`.
        adjust_lr_fn: as :class:`Muon`; the default ``"original"`` is the paper's ``sqrt(max(1, m / n))``.
        norm_eps: added to ``sqrt(v)`` and to ``||Ô||_F``, >= 0 (1e-10).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {**Muon.constraints, "beta2": UNIT, "norm_eps": Float(0.0)}

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        beta2: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "original",
        *,
        norm_eps: float = 1e-10,
        ns_dtype: str | torch.dtype | None = "auto",
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )
        self._extend_defaults({"beta2": beta2, "norm_eps": norm_eps})

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        ortho, scale = super()._direction(grad, state, group)
        ortho = ortho.to(torch.promote_types(grad.dtype, torch.float32))
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros(ortho.size(0), 1, dtype=ortho.dtype, device=ortho.device)
        v = state["second_moment"]
        v.lerp_((ortho * ortho).mean(dim=1, keepdim=True), 1 - group["beta2"])
        normed = ortho / (v.sqrt() + group["norm_eps"])
        normed.mul_(ortho.norm() / (normed.norm() + group["norm_eps"]))
        return normed.to(grad.dtype), scale
