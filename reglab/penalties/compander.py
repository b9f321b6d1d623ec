"""The weight compander: a ``torch.nn.utils.parametrize`` reparameterization ``w = f(v)``, not a penalty."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from reglab.core import ConfigError
from reglab.core.validation import check_bool, check_float


class WeightCompander(nn.Module):
    """The compander ``w = f(v) = max_abs * tanh(slope * v / max_abs)``, a ``torch.nn.utils.parametrize`` module.

    Odd, strictly increasing, bounded by ``max_abs`` and with ``f'(0) = slope``:
    with ``slope > 1`` it expands small latent weights (and their gradients, by
    ``f'(v)``) and compresses large ones toward the bound. Build it with
    :func:`weight_compander`, which documents the method.

    Args:
        max_abs: the bound A on ``|w|``, > 0.
        slope: ``f'(0)``, > 0.
        learnable: learn ``log A`` and ``log slope`` as parameters (kept positive).
        dtype, device: of the hyperparameter tensors (those of the weight).
    """

    def __init__(
        self,
        max_abs: float = 1.0,
        slope: float = 2.0,
        learnable: bool = False,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        check_float("max_abs", max_abs, 0.0, low_open=True)
        check_float("slope", slope, 0.0, low_open=True)
        check_bool("learnable", learnable)
        log_a = torch.tensor(math.log(max_abs), dtype=dtype, device=device)
        log_slope = torch.tensor(math.log(slope), dtype=dtype, device=device)
        if learnable:
            self.log_max_abs = nn.Parameter(log_a)
            self.log_slope = nn.Parameter(log_slope)
        else:
            self.register_buffer("log_max_abs", log_a)
            self.register_buffer("log_slope", log_slope)

    @property
    def max_abs(self) -> Tensor:
        return self.log_max_abs.exp()

    @property
    def slope(self) -> Tensor:
        return self.log_slope.exp()

    def forward(self, v: Tensor) -> Tensor:
        a = self.max_abs
        return a * torch.tanh(self.slope * v / a)

    @torch.no_grad()
    def right_inverse(self, w: Tensor) -> Tensor:
        """``v = f^{-1}(w) = max_abs / slope * atanh(w / max_abs)``; needs ``|w| < max_abs``."""
        a = self.max_abs
        largest = w.abs().max().item() if w.numel() else 0.0
        if largest >= a.item():
            raise ConfigError(
                f"weight_compander: max_abs must exceed the largest |weight| to keep the weights, got "
                f"max_abs={a.item():g} <= {largest:g}; raise max_abs or pass preserve=False"
            )
        return a / self.slope * torch.atanh(w / a)

    def extra_repr(self) -> str:
        learnable = isinstance(self.log_max_abs, nn.Parameter)
        return f"max_abs={self.max_abs.item():g}, slope={self.slope.item():g}, learnable={learnable}"


def weight_compander(
    module: nn.Module,
    name: str = "weight",
    *,
    max_abs: float = 1.0,
    slope: float = 2.0,
    learnable: bool = False,
    preserve: bool = True,
) -> nn.Module:
    """Reparameterize ``module.<name>`` as ``w = f(v)`` with a compander f (weight compander, WC); returns ``module``.

    .. math:: w = f(v) = A \\tanh\\big(\\mu v / A\\big), \\qquad |w| < A,\\ f'(0) = \\mu

    "Weight Compander: A Simple Weight Reparameterization for Regularization"
    (Cakaj, Mehnert & Yang, 2023) trains a latent ``v`` and uses ``w = f(v)``
    with a compressor-expander f that bounds ``|w|`` (no single weight dominates)
    and is steep near 0 (small weights are pushed away from zero and their
    gradients amplified, so more weights take part), with f's hyperparameters
    optionally learned; it is meant to be combined with weight decay, dropout etc.
    **The paper's exact f is unknown here**: this f is a stand-in with those
    properties, odd, strictly increasing, saturating at ``A = max_abs``, slope
    ``mu = slope`` at 0, not the paper's function. Hyperparameters: ``max_abs`` (0.5 to 2 for
    default-initialized layers), ``slope`` (1 to 4; 1 is nearly the identity for
    small weights), which layers.

    Built on ``torch.nn.utils.parametrize``: the latent is
    ``module.parametrizations.<name>.original``; with ``learnable=True`` the
    compander's ``log_max_abs`` and ``log_slope`` are parameters of the module
    too, picked up by ``module.parameters()`` and the optimizer.

    Example:
        >>> for m in model.modules():
        ...     if isinstance(m, (nn.Linear, nn.Conv2d)):
        ...         weight_compander(m, max_abs=1.0, slope=2.0)

    Args:
        module: the module owning the tensor.
        name: the parameter to reparameterize.
        max_abs: the bound A on ``|w|``, > 0.
        slope: ``f'(0)``, > 0.
        learnable: learn A and the slope with the model.
        preserve: start from the current weights (``v = f^{-1}(w)``, needs
            ``|w| < max_abs``); with False the current weights become the latent
            ``v`` and the effective weights start at ``f(w)``.

    Returns:
        ``module``, now parametrized.

    Raises:
        ConfigError: ``name`` is not a parameter of ``module`` or is already
            parametrized, a hyperparameter is out of range, or (with ``preserve``)
            ``max_abs`` does not exceed the largest current weight.
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"weight_compander needs an nn.Module, got {type(module).__name__}")
    check_bool("preserve", preserve)
    if parametrize.is_parametrized(module, name):
        raise ConfigError(
            f"weight_compander: {type(module).__name__}.{name} is already parametrized "
            f"({[type(p).__name__ for p in module.parametrizations[name]]}); remove that first"
        )
    param = module._parameters.get(name)
    if not isinstance(param, nn.Parameter):
        raise ConfigError(
            f"weight_compander: {type(module).__name__} has no parameter {name!r}; "
            f"its parameters are {[n for n, _ in module.named_parameters(recurse=False)]}"
        )
    compander = WeightCompander(max_abs, slope, learnable, dtype=param.dtype, device=param.device)
    latent = param.detach().clone()
    if preserve:
        compander.right_inverse(latent)  # raises before the module is touched
    else:
        with torch.no_grad():
            param.zero_()  # f^{-1}(0) = 0 for any size of weight; the latent is copied in below
    parametrize.register_parametrization(module, name, compander)
    if not preserve:
        with torch.no_grad():
            module.parametrizations[name].original.copy_(latent)
    return module


def remove_weight_compander(module: nn.Module, name: str | None = None) -> nn.Module:
    """Undo :func:`weight_compander` on ``module`` and its submodules, keeping the current effective weights.

    Each compander-parametrized tensor becomes a plain parameter holding
    ``f(v)`` (``parametrize.remove_parametrizations(..., leave_parametrized=True)``).

    Args:
        module: the module (searched recursively).
        name: only this tensor name (e.g. "weight"); None for every compander.

    Returns:
        ``module``.

    Raises:
        ConfigError: no weight compander was found, or a tensor also carries
            another parametrization (remove it with ``torch.nn.utils.parametrize`` first).
    """
    removed = 0
    for sub in module.modules():
        if not parametrize.is_parametrized(sub):
            continue
        for tensor_name in list(sub.parametrizations.keys()):
            if name is not None and tensor_name != name:
                continue
            stack = list(sub.parametrizations[tensor_name])
            if not any(isinstance(p, WeightCompander) for p in stack):
                continue
            if not all(isinstance(p, WeightCompander) for p in stack):
                raise ConfigError(
                    f"remove_weight_compander: {type(sub).__name__}.{tensor_name} also carries "
                    f"{[type(p).__name__ for p in stack]}; remove those with torch.nn.utils.parametrize first"
                )
            parametrize.remove_parametrizations(sub, tensor_name, leave_parametrized=True)
            removed += 1
    if not removed:
        where = f" on tensor {name!r}" if name is not None else ""
        raise ConfigError(f"remove_weight_compander: no weight compander found{where} in {type(module).__name__}")
    return module
