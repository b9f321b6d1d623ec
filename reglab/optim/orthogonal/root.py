"""ROOT: Muon on soft-thresholded momentum with shape-specific Newton–Schulz coefficients (He et al., 2025)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.errors import ConfigError
from reglab.core.validation import (
    Float,
    Nullable,
    Rule,
)
from reglab.linalg.newton_schulz import QUINTIC, Coefficients, ns_schedule
from reglab.optim.orthogonal.base import check_coefficients, lr_ratio
from reglab.optim.orthogonal.muon import Muon
from reglab.optim.registry import REGISTRY

ROOT_COEFFICIENTS: dict[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def _check_table(name: str, value: Any) -> dict[tuple[int, int], tuple[float, float, float]]:
    if value is None:
        return dict(ROOT_COEFFICIENTS)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping {{(rows, cols): (a, b, c)}} or None, got {value!r}")
    table = dict(ROOT_COEFFICIENTS)
    for key, coeffs in value.items():
        if not (isinstance(key, (tuple, list)) and len(key) == 2 and all(isinstance(k, int) and k > 0 for k in key)):
            raise ConfigError(f"{name} keys must be (rows, cols) pairs of positive ints, got {key!r}")
        table[(min(key), max(key))] = ns_schedule(check_coefficients(f"{name}[{key!r}]", coeffs), 1)[0]
    return table


def _quantile(x: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile of a flattened tensor (``torch.quantile``'s rule, without its 2^24 size limit).

    One sort, which is fast on GPUs (two ``kthvalue`` calls, as the reference code uses, took 40 ms for a
    2048 x 2048 matrix on an H100).
    """
    flat = x.flatten().sort().values
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    if pos == lo:
        return flat[lo]
    return torch.lerp(flat[lo], flat[lo + 1], pos - lo)


@REGISTRY.register("root")
class ROOT(Muon):
    """ROOT: Muon on soft-thresholded momentum with shape-specific Newton–Schulz coefficients (He et al., 2025).

    For each matrix parameter ``W`` (``rows x cols``) with gradient ``G``::

        B  <- mu B + G;   M = G + mu B if nesterov else B        # classical (not EMA) momentum
        eps = threshold, or quantile(|M|, threshold_quantile) + 1e-9
        O_t = T_eps(M) = sign(M) max(|M| - eps, 0)              # the outliers
        R   = M - O_t  (= clamp(M, -eps, eps))                  # the robust part
        X   = NS(R) with (a, b, c) = table[(min(rows, cols), max(rows, cols))], else ns_coefficients
        W  <- (1 - lr * weight_decay) W - lr * 0.2 sqrt(max(rows, cols)) * X

    Follows the reference code (huawei-noah/noah-research, ``ROOT/examples/
    example_train.py``): classical Nesterov momentum, the threshold at the 0.9
    quantile of ``|M|`` plus 1e-9, the NS normalisation ``||R||_F + 1e-7`` in
    the parameter's dtype (``ns_dtype=None``), the Moonlight learning-rate
    ratio (``adjust_lr_fn="match_rms_adamw"``) and weight decay with the
    unscaled lr. A fixed threshold ``eps`` is available as ``threshold``.

    Shape-specific coefficients: the paper fits (AdaNewton) coefficients per
    matrix shape, but its fitting procedure is not in the released code, which
    only ships the four 2048-wide shapes in :data:`ROOT_COEFFICIENTS`; every
    other shape falls back to ``ns_coefficients`` (Muon's quintic), so on small
    models ROOT differs from Muon only by the momentum form and the soft
    threshold. Add fitted entries with ``coefficient_table``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = ROOT(model, lr=1e-3)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        W. He, K. Han, H. Zhou, H. Chen, Z. Liu, X. Chen, Y. Wang, "ROOT: Robust
        Orthogonalized Optimizer for Neural Network Training", 2025 (arXiv:2511.20626).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (1e-3 with the Moonlight ratio, as AdamW's).
        weight_decay: decoupled weight decay, >= 0 (0.1).
        momentum: ``mu`` in [0, 1) (0.95).
        nesterov: Nesterov momentum.
        threshold_quantile: the threshold is this quantile of ``|M|``, in (0, 1] (0.9).
        threshold: a fixed threshold ``eps`` > 0 instead (None: use the quantile).
        coefficient_table: ``{(rows, cols): (a, b, c)}`` added to (and overriding)
            :data:`ROOT_COEFFICIENTS`; a key and its transpose are the same shape.
        ns_coefficients: the coefficients for shapes not in the table (Muon's quintic).
        eps, ns_steps, ns_dtype, adjust_lr_fn: as :class:`Muon` (defaults 1e-7, 5,
            None, ``"match_rms_adamw"``).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {
        **Muon.constraints,
        "threshold_quantile": Float(0.0, 1.0, low_open=True),
        "threshold": Nullable(Float(0.0, low_open=True)),
        "coefficient_table": Rule(_check_table, ([(1, 2)], {(0, 2): (3.4, -4.8, 2.0)}, {(2, 2): "quintic-typo"})),
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        threshold_quantile: float = 0.9,
        threshold: float | None = None,
        coefficient_table: Mapping[tuple[int, int], tuple[float, float, float]] | None = None,
        *,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        ns_dtype: str | torch.dtype | None = None,
        adjust_lr_fn: str | None = "match_rms_adamw",
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
        self._extend_defaults(
            {"threshold_quantile": threshold_quantile, "threshold": threshold, "coefficient_table": coefficient_table}
        )

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        M = self._momentum(grad, state, group, ema=False)
        eps = group["threshold"]
        if eps is None:
            eps = _quantile(M.abs(), group["threshold_quantile"]) + 1e-9
        robust = M.clamp(-eps, eps)
        rows, cols = grad.shape
        coefficients = group["coefficient_table"].get((min(rows, cols), max(rows, cols)), group["ns_coefficients"])
        return self._orthogonalize(robust, group, coefficients), lr_ratio(group["adjust_lr_fn"], rows, cols)
