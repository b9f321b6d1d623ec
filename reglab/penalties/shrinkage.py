"""Sparsifying shrinkage of the weights: LOBSTER's sensitivity-weighted decay and HyperSparse.

Both choose their parameters with ``params`` (``"all"`` or ``"weights"``) as
the norm penalties of :mod:`reglab.penalties.norms` do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reglab.core import MissingContextError, Penalty, ShapeError, StepContext
from reglab.core.validation import check_bool, check_float
from reglab.penalties.context import data_loss, require_fields
from reglab.penalties.norms import check_params, selected_parameters, sum_terms
from reglab.penalties.registry import REGISTRY


@REGISTRY.register("lobster")
class SelectiveDecay(Penalty):
    """LOBSTER: decay of the weights the loss is insensitive to, weight/2 * sum (1 - s_i)_+ theta_i^2, s = |dL/dtheta|.

    .. math:: R(\\theta) = \\frac{\\lambda}{2} \\sum_i \\big(1 - s_i\\big)_+ \\theta_i^2,
              \\qquad s_i = \\Big|\\frac{\\partial L}{\\partial \\theta_i}\\Big| \\text{ (detached)}

    The sensitivity ``s`` is held constant, so the gradient of the penalty is
    ``lambda * (1 - s)_+ * theta`` and an SGD step with learning rate ``eta`` is
    LOBSTER's update ``theta <- theta - eta dL/dtheta - eta lambda theta (1 - |dL/dtheta|)_+``:
    parameters the loss barely depends on decay like weight decay, sensitive
    ones (``|dL/dtheta| >= 1``) are left alone; the shrunken ones are then
    pruned by magnitude when the loss plateaus (pruning is not part of this
    class) ("LOss-Based SensiTivity rEgulaRization: towards deep sparse neural
    networks", Tartaglione et al., 2022). Checked against the authors' code
    (EIDOSlab, ``EIDOSearch.regularizers.LOBSTER``): its default uses the raw
    ``|grad|`` with ``(1 - s)_+`` and applies ``p -= lambda * p * (1 - s)_+`` without the
    learning rate (so their lambda is our ``eta * weight``); its ``rescaled`` mode,
    our ``normalize=True``, uses ``s = |g| / max(max|g|, 1e-10)`` per tensor.
    The related "Regularization-based Pruning of Irrelevant Weights in Deep
    Neural Architectures" (Bonetta et al., 2022) decays weights selected by a
    relevance threshold instead; it is not implemented here.

    ``dL/dtheta`` is the gradient of ``ctx.loss_fn(ctx.outputs, ctx.targets)``
    (the data loss of the same forward pass, with the graph retained), one
    extra backward pass per step. Usual range (per unit learning rate): weight
    1e-6 to 1e-4.

    Example:
        >>> penalty = SelectiveDecay(1e-5, params="all")   # registry name "lobster"

    Args:
        weight: lambda, >= 0.
        params: "all" or "weights" (tensors with ndim >= 2).
        normalize: use ``s = |g| / max|g|`` per tensor (in [0, 1]) instead of ``|g|``.

    Raises:
        ConfigError: an unknown params set, or a data loss that keeps per-example state.
        MissingContextError: ``ctx.outputs`` or ``ctx.loss_fn`` is missing, or the
            outputs carry no autograd graph.
    """

    needs = frozenset({"outputs", "loss_fn"})

    def __init__(self, weight: float, *, params: str = "all", normalize: bool = False, name: str | None = None):
        super().__init__(weight, name=name or "lobster")
        self.params = check_params(params)
        check_bool("normalize", normalize)
        self.normalize = normalize

    def sensitivity(self, ctx: StepContext, parameters: list[Tensor]) -> list[Tensor]:
        """The detached sensitivities ``s`` of ``parameters`` (0 where the loss does not depend on one)."""
        require_fields(ctx, self.name, "outputs", "loss_fn")
        if not ctx.outputs.requires_grad:
            raise MissingContextError(
                f"{self.name}: ctx.outputs has no autograd graph; compute the outputs with gradients enabled "
                "in the same forward pass as the loss"
            )
        loss = data_loss(ctx, self.name)  # refuses a loss with per-example state, which would advance twice
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        out = []
        for p, g in zip(parameters, grads):
            s = torch.zeros_like(p) if g is None else g.detach().abs()
            if self.normalize:
                s = s / s.max().clamp_min(1e-10)
            out.append(s)
        return out

    def compute(self, ctx: StepContext) -> Tensor:
        params = [p for _, p in selected_parameters(ctx.model, self.params)]
        if not params:
            return sum_terms(iter(()), ctx.model)
        terms = (((1.0 - s).clamp_min(0.0) * p.pow(2)).sum() for p, s in zip(params, self.sensitivity(ctx, params)))
        return 0.5 * sum_terms(terms, ctx.model)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, params={self.params!r}, normalize={self.normalize}"


#: asech(sqrt(2/3)): where sech^2(x), the shape of the HyperSparse gradient, has its inflection point.
HYPERSPARSE_INFLECTION = 0.6585


@REGISTRY.register("hypersparse")
class HyperSparse(Penalty):
    """HyperSparse: adaptive shrinkage of all but the largest (1 - prune_rate) weights, gradient ~ sech^2(s|w|).

    Its gradient on weight ``w_i`` (all covered weights pooled in one vector ``w``) is

    .. math:: g_i = \\operatorname{sign}(w_i)\\, s\\, \\operatorname{sech}^2(s|w_i|)\\,
              \\frac{\\sum_j |w_j|}{\\sum_j \\tanh(s|w_j|)},
              \\qquad s = \\frac{0.6585}{|w|_{(\\lfloor \\kappa n \\rfloor)}}

    with ``|w|_(k)`` the k-th smallest magnitude (0-based), ``kappa`` the prune
    rate and 0.6585 the inflection point of ``sech^2``, so that the pressure is
    L1-like (``g_i >= 1`` in size) on the weights below the prune-rate quantile
    and fades smoothly to 0 on the ``(1 - kappa) n`` largest ones, which are the
    ones kept after pruning. It is the gradient of
    ``HS(w) = ||w||_1 * sum_j tanh(s|w_j|) / sg(sum_j tanh(s|w_j|))`` with ``sg``
    a stop-gradient and ``s`` and the outer ``||w||_1`` held constant ("HyperSparse
    Neural Networks: Shifting Exploration to Exploitation through Adaptive
    Regularization", Glandorf, Kaiser & Rosenhahn, 2023). Checked against the
    authors' code (GreenAutoML4FAS/HyperSparse, ``loss/HyperSparse.py``:
    ``hyperSparse`` and ``grad_HS_loss``): same ``s``, same gradient; their loss
    value is ``HS - ||w||_1``, identically 0, while ours is the constant
    ``||w||_1``, so the logged value is the L1 mass being shrunk; the gradient is
    the same. So this value is a surrogate: ``gradcheck`` does not apply.

    In their Adaptive Regularized Training (ART) the weight grows geometrically,
    ``lambda_t = lambda_0 * eta^t`` per epoch (eta ~ 1.05 to 1.2, lambda_0 ~ 1e-5 to
    1e-3), until the top-(1 - kappa) mask is stable; then the model is pruned to
    that mask and fine-tuned. Schedule the weight from the trainer (``penalty.weight = ...``).

    Example:
        >>> penalty = HyperSparse(1e-4, prune_rate=0.9)

    Args:
        weight: lambda, >= 0.
        prune_rate: kappa, the fraction of weights to be pruned, in [0, 1).
        params: "weights" (tensors with ndim >= 2, the authors' choice: Linear and
            Conv weights) or "all".

    Raises:
        ConfigError: prune_rate outside [0, 1) or an unknown params set.
        ShapeError: the model has no parameter to cover.
    """

    def __init__(self, weight: float, *, prune_rate: float = 0.9, params: str = "weights", name: str | None = None):
        super().__init__(weight, name=name or "hypersparse")
        self.prune_rate = check_float("prune_rate", prune_rate, 0.0, 1.0, high_open=True)
        self.params = check_params(params)

    def compute(self, ctx: StepContext) -> Tensor:
        params = [p for _, p in selected_parameters(ctx.model, self.params)]
        if not params:
            raise ShapeError(
                f"{self.name}: {type(ctx.model).__name__} has no trainable parameter in the set "
                f"params={self.params!r}; use params='all' or a model with Linear/Conv layers"
            )
        w = torch.cat([p.flatten() for p in params])
        a = w.abs()
        tiny = torch.finfo(a.dtype).tiny
        k = math.floor(self.prune_rate * a.numel())
        quantile = torch.kthvalue(a.detach(), k + 1).values
        s = HYPERSPARSE_INFLECTION / quantile.clamp_min(tiny)
        t = torch.tanh(s * a).sum()
        return a.sum().detach() * t / t.detach().clamp_min(tiny)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, prune_rate={self.prune_rate:g}, params={self.params!r}"
