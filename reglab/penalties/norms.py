"""Penalties on the weights themselves: norms, structured norms, distances to the initial weights.

- norms of the parameters: :class:`L2`, :class:`L1`, :class:`ElasticNet`;
- structured norms over output units: :class:`GroupLasso` (sparsity of whole
  rows/filters), :class:`NormLoss` (every filter pulled to unit norm);
- distances to the initial weights: :class:`L2ToInit`, :class:`WassersteinToInit`;

Sparsifying shrinkage (LOBSTER, HyperSparse) is in
:mod:`reglab.penalties.shrinkage`; the weight compander reparameterization in
:mod:`reglab.penalties.compander`.

Which parameters a norm penalty covers is chosen by ``params``:
``"all"`` (every trainable parameter) or ``"weights"`` (parameters with two or
more dimensions: matrices and convolution kernels, leaving out biases, norm
gains and other vectors, as is common practice). The structured penalties read
every trainable tensor with ``ndim >= 2`` as ``(out, in, *kernel)``: a Linear
weight's rows, a Conv weight's output filters (an Embedding's rows are its
token vectors).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, Penalty, ShapeError, StepContext
from reglab.core.validation import check_choice, check_float
from reglab.penalties.registry import REGISTRY

_PARAM_SETS = ("all", "weights")


def check_params(params: str) -> str:
    if params not in _PARAM_SETS:
        raise ConfigError(f"params must be one of {_PARAM_SETS}, got {params!r}")
    return params


def selected_parameters(model: nn.Module, params: str) -> Iterator[tuple[str, Tensor]]:
    """Trainable ``(name, parameter)`` pairs of ``model`` in the set ``params`` ("all" or "weights")."""
    for name, p in model.named_parameters():
        if p.requires_grad and (params == "all" or p.ndim >= 2):
            yield name, p


def selected_tensors(model: nn.Module, params: str) -> list[Tensor]:
    """The parameters of :func:`selected_parameters`, in the same order, without their names.

    A plain walk of the module tree (each module and each parameter once, in
    ``named_parameters`` order) that builds no names: about half the cost of
    ``model.parameters()``, so the per-step penalties can afford it on every
    call and need no cache that could go stale.
    """
    out: list[Tensor] = []
    seen_params: set[int] = set()
    seen_modules: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if module is None or id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        for p in module._parameters.values():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                if p.requires_grad and (params == "all" or p.ndim >= 2):
                    out.append(p)
        stack.extend(reversed(module._modules.values()))  # pre-order: the first child is popped next
    return out


def sum_terms(terms: Iterator[Tensor], like: nn.Module) -> Tensor:
    total = None
    for t in terms:
        total = t if total is None else total + t
    if total is None:
        return _zero(like)
    return total


def _zero(like: nn.Module) -> Tensor:
    """A scalar 0 in the dtype and on the device of ``like``'s first parameter (the default dtype if it has none)."""
    p = next(like.parameters(), None)
    return torch.zeros((), dtype=p.dtype, device=p.device) if p is not None else torch.zeros(())


class IdentityCache:
    """A value built from a sequence of objects, rebuilt only when the objects (compared by identity) change.

    Used to map a model's parameters to a penalty's buffers (anchors, Fishers)
    once instead of by name on every step: the key is the list of parameters
    and buffers itself, so replacing, adding, removing, freezing or unfreezing
    a parameter, ``reset``, ``load_state_dict(assign=True)`` or ``.to()``
    rebuilds it. It holds the objects, so their ids cannot be reused while it
    does; a deep copy or a pickle of it is empty.
    """

    def __init__(self) -> None:
        self._objects: tuple[object, ...] = ()
        self._value: Any = None

    def get(self, objects: Sequence[object], build: Callable[[], Any]) -> Any:
        if len(objects) != len(self._objects) or any(a is not b for a, b in zip(objects, self._objects)):
            self._value = build()
            self._objects = tuple(objects)
        return self._value

    def __deepcopy__(self, memo: dict) -> IdentityCache:
        return IdentityCache()

    def __reduce__(self) -> tuple:
        return (IdentityCache, ())


def _stack(values: Sequence[Tensor]) -> Tensor:
    """``torch.stack(values)`` in the promoted dtype, on the device of the first (the tensors may be mixed)."""
    first = values[0]
    if any(v.dtype != first.dtype or v.device != first.device for v in values):
        dtype = functools.reduce(torch.promote_types, (v.dtype for v in values))
        values = [v.to(dtype=dtype, device=first.device) for v in values]
    return torch.stack(values)


def _scale(tensors: Sequence[Tensor], factor: Tensor) -> list[Tensor]:
    """``[t * factor for t in tensors]``, each in its own dtype: one fused call when they share the factor's device
    and no graph is recorded (torch's autograd of ``_foreach_mul`` by a tensor fails under ``create_graph``)."""
    if not torch.is_grad_enabled() and all(t.device == factor.device for t in tensors):
        return list(torch._foreach_mul(tensors, factor))
    return [t * factor.to(t.device) for t in tensors]


class _ElasticDistance(torch.autograd.Function):
    """``l1 * sum_i ||p_i - c_i||_1 + l2 / 2 * sum_i <w_i, (p_i - c_i)^2>`` over a list of tensors, as one node.

    The value is computed by fused ``torch._foreach_*`` kernels without
    autograd and the gradient ``l1 * sign(p - c) + l2 * w * (p - c)`` is given
    directly (``sign(0) = 0``, the subgradient ``torch.abs`` takes), so a
    penalty over n tensors costs a handful of fused calls instead of about 4n
    autograd nodes. The backward pass is built from differentiable operations
    on the saved parameters, so second derivatives are right too. ``c``
    (anchors) and ``w`` (weights) are lists like ``p`` or None (0 and 1);
    the result has the promoted dtype of the tensors and the device of the first.
    """

    @staticmethod
    def forward(ctx, l1: float, l2: float, anchors: list[Tensor] | None, weights: list[Tensor] | None, *params):
        ctx.coefficients, ctx.anchors, ctx.weights = (l1, l2), anchors, weights
        ctx.save_for_backward(*params)
        d = params if anchors is None else torch._foreach_sub(params, anchors)
        value = None
        if l1:  # abs then sum: on CPU, vector_norm(ord=1) is several times slower than both together
            value = l1 * _stack([a.sum() for a in torch._foreach_abs(d)]).sum()
        if l2:
            if weights is None:
                squares = _stack(torch._foreach_norm(d)).square().sum()
            else:
                squares = _stack([a.sum() for a in torch._foreach_mul(torch._foreach_mul(d, d), weights)]).sum()
            value = 0.5 * l2 * squares if value is None else value + 0.5 * l2 * squares
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        (l1, l2), anchors, weights = ctx.coefficients, ctx.anchors, ctx.weights
        params = ctx.saved_tensors
        d = params if anchors is None else torch._foreach_sub(params, anchors)
        grads = None
        if l2:
            grads = _scale(d if weights is None else torch._foreach_mul(d, weights), grad if l2 == 1 else l2 * grad)
        if l1:
            signs = _scale(torch._foreach_sign(d), grad if l1 == 1 else l1 * grad)
            grads = signs if grads is None else torch._foreach_add(grads, signs)
        return (None, None, None, None, *grads)


def elastic_distance(
    params: Sequence[Tensor],
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    anchors: Sequence[Tensor] | None = None,
    weights: Sequence[Tensor] | None = None,
) -> Tensor:
    """``l1 * sum_i ||p_i - c_i||_1 + l2 / 2 * sum_i sum w_i (p_i - c_i)^2``, differentiable in the ``params``.

    The one kernel of :class:`L1`, :class:`L2`, :class:`ElasticNet`,
    :class:`L2ToInit` and :class:`~reglab.penalties.EWC`: fused over the list
    (see ``_ElasticDistance``), one autograd node whatever the number of tensors.

    Args:
        params: the tensors (at least one).
        l1, l2: the coefficients of the two parts.
        anchors: ``c``, one per tensor with its shape, or None for 0.
        weights: ``w``, one per tensor with its shape, or None for 1.
    """
    return _ElasticDistance.apply(
        l1, l2, None if anchors is None else list(anchors), None if weights is None else list(weights), *params
    )


@REGISTRY.register("l2")
class L2(Penalty):
    """L2 penalty (weight decay as a loss term): (weight / 2) * sum ||theta||^2.

    .. math:: R(\\theta) = \\frac{\\lambda}{2} \\sum_i \\theta_i^2

    With the factor 1/2 the gradient is ``weight * theta``, so for plain SGD
    ``L2(wd)`` matches ``torch.optim.SGD(weight_decay=wd)``; with Adam it is
    *coupled* L2, not AdamW's decoupled decay ("Decoupled Weight Decay
    Regularization", Loshchilov & Hutter, 2019). Usual range: 1e-5 to 1e-2.

    Example:
        >>> penalty = L2(5e-4, params="weights")

    Args:
        weight: lambda, >= 0.
        params: "all" or "weights" (tensors with ndim >= 2).
    """

    def __init__(self, weight: float, *, params: str = "all", name: str | None = None):
        super().__init__(weight, name=name)
        self.params = check_params(params)

    def compute(self, ctx: StepContext) -> Tensor:
        params = selected_tensors(ctx.model, self.params)
        return elastic_distance(params, l2=1.0) if params else _zero(ctx.model)


@REGISTRY.register("l1")
class L1(Penalty):
    """L1 penalty (lasso): weight * sum |theta|.

    .. math:: R(\\theta) = \\lambda \\sum_i |\\theta_i|

    Drives weights to exactly zero only with a proximal step; with (sub)gradient
    descent it shrinks them toward zero ("Regression Shrinkage and Selection via
    the Lasso", Tibshirani, 1996). The subgradient at 0 is 0 (``torch.abs``).
    Usual range: 1e-6 to 1e-3.

    Args:
        weight: lambda, >= 0.
        params: "all" or "weights" (tensors with ndim >= 2).
    """

    def __init__(self, weight: float, *, params: str = "all", name: str | None = None):
        super().__init__(weight, name=name)
        self.params = check_params(params)

    def compute(self, ctx: StepContext) -> Tensor:
        params = selected_tensors(ctx.model, self.params)
        return elastic_distance(params, l1=1.0) if params else _zero(ctx.model)


def _buffer_key(param_name: str) -> str:
    return "anchor__" + param_name.replace(".", "__")


@REGISTRY.register("l2_to_init")
class L2ToInit(Penalty):
    """L2 distance to the initial weights: (weight / 2) * ||theta - theta_0||^2.

    .. math:: R(\\theta) = \\frac{\\lambda}{2} \\lVert \\theta - \\theta_0 \\rVert^2

    Regularizes toward the starting point instead of the origin; used to keep
    plasticity in continual learning ("Maintaining Plasticity in Continual
    Learning via Regenerative Regularization", Kumar et al., 2023) and for
    fine-tuning (L2-SP, "Explicit Inductive Bias for Transfer Learning with
    Convolutional Networks", Li et al., 2018).

    The anchor theta_0 is copied from the model on the first call (or by
    :meth:`reset`) and kept in buffers named ``anchor__<param>``, so
    ``state_dict()`` round-trips it, also into a fresh instance.

    Args:
        weight: lambda, >= 0.
        params: "all" or "weights".

    Raises:
        ConfigError: the model's parameters no longer match the anchor.
    """

    def __init__(self, weight: float, *, params: str = "all", name: str | None = None):
        super().__init__(weight, name=name)
        self.params = check_params(params)
        self._anchors = IdentityCache()

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Take the model's current parameters as the anchor theta_0."""
        for key in [k for k, _ in self.named_buffers() if k.startswith("anchor__")]:
            delattr(self, key)
        for name, p in selected_parameters(model, self.params):
            self.register_buffer(_buffer_key(name), p.detach().clone())

    @property
    def anchored(self) -> bool:
        """Whether theta_0 has been taken."""
        return any(k.startswith("anchor__") for k in self._buffers)

    def compute(self, ctx: StepContext) -> Tensor:
        if not self.anchored:
            self.reset(ctx.model)
        params = selected_tensors(ctx.model, self.params)
        anchors = self._anchors.get([*params, *self._buffers.values()], lambda: self._match(ctx.model))
        if any(a.shape != p.shape for a, p in zip(anchors, params)):
            self._match(ctx.model)  # a parameter changed shape in place: raises, naming it
        return elastic_distance(params, l2=1.0, anchors=anchors) if params else _zero(ctx.model)

    def _match(self, model: nn.Module) -> list[Tensor]:
        """The anchor of each selected parameter, in order; ConfigError naming the first that has none."""
        anchors = []
        for name, p in selected_parameters(model, self.params):
            anchor = self._buffers.get(_buffer_key(name))
            if anchor is None or anchor.shape != p.shape:
                raise ConfigError(
                    f"l2_to_init: parameter {name!r} does not match the stored anchor; "
                    "call reset(model) after changing the model"
                )
            anchors.append(anchor)
        return anchors

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Create the anchor buffers a fresh instance does not have yet, so that loading round-trips.
        for key, value in state_dict.items():
            if key.startswith(prefix + "anchor__"):
                local = key[len(prefix) :]
                if "." not in local and not hasattr(self, local):
                    self.register_buffer(local, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# -- elastic net ----------------------------------------------------------------


@REGISTRY.register("elastic_net")
class ElasticNet(Penalty):
    """Elastic net: weight * (alpha * sum |theta| + (1 - alpha) / 2 * sum theta^2).

    .. math:: R(\\theta) = \\lambda \\Big(\\alpha \\lVert\\theta\\rVert_1
              + \\frac{1 - \\alpha}{2} \\lVert\\theta\\rVert_2^2\\Big)

    scikit-learn's parameterization (``ElasticNet(alpha=lambda, l1_ratio=alpha)``):
    ``alpha = 1`` is :class:`L1` and ``alpha = 0`` is :class:`L2` with the same
    weight. The L1 part selects, the L2 part groups correlated weights and keeps
    the problem strongly convex ("Regularization and variable selection via the
    elastic net", Zou & Hastie, 2005). The subgradient of ``|theta|`` at 0 is 0.
    Usual ranges: weight 1e-6 to 1e-3, alpha 0.1 to 0.9.

    Example:
        >>> penalty = ElasticNet(1e-4, alpha=0.5, params="weights")

    Args:
        weight: lambda, >= 0.
        alpha: the L1 share, in [0, 1].
        params: "all" or "weights" (tensors with ndim >= 2).

    Raises:
        ConfigError: alpha outside [0, 1] or an unknown params set.
    """

    def __init__(self, weight: float, *, alpha: float = 0.5, params: str = "all", name: str | None = None):
        super().__init__(weight, name=name)
        self.alpha = check_float("alpha", alpha, 0.0, 1.0)
        self.params = check_params(params)

    def compute(self, ctx: StepContext) -> Tensor:
        params = selected_tensors(ctx.model, self.params)
        return elastic_distance(params, l1=self.alpha, l2=1.0 - self.alpha) if params else _zero(ctx.model)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, alpha={self.alpha:g}, params={self.params!r}"


# -- structured norms over output units ------------------------------------------


def weight_tensors(model: nn.Module, who: str) -> list[Tensor]:
    """The trainable tensors with ``ndim >= 2``; ShapeError naming ``who`` if there are none."""
    found = selected_tensors(model, "weights")
    if not found:
        raise ShapeError(
            f"{who}: {type(model).__name__} has no trainable weight tensor with ndim >= 2 (Linear, Conv or "
            "Embedding weights), so there are no rows or filters to regularize; use a model with such layers"
        )
    return found


class _GroupNorms(torch.autograd.Function):
    """A function of the norms of the groups of several tensors, one group per index along ``dim``, as one node.

    With ``target=None`` the group lasso ``sum_t sqrt(p_t) sum_g ||W_t[g]||``
    (``p_t`` the group size of tensor t), otherwise ``sum_t sum_g (||W_t[g]|| -
    target)^2``; ``W_t[g]`` is slice g of W_t along ``dim`` (0: output units,
    1: input units). The gradient ``f'(n) / n * W[g]`` is given directly and is
    0 on a zero group (the subgradient ``torch.linalg.vector_norm`` takes), which
    spares the slow autograd path of a norm over some dimensions; with
    ``create_graph`` the norms are recomputed differentiably, so second
    derivatives are right too.
    """

    @staticmethod
    def forward(ctx, dim: int, target: float | None, *weights: Tensor) -> Tensor:
        ctx.dim, ctx.target = dim, target
        ctx.save_for_backward(*weights)
        ctx.norms = _group_norms(weights, dim)
        if target is None:
            sums = _stack([n.sum() for n in ctx.norms])
            return (sums * sums.new_tensor([math.sqrt(w.numel() // w.shape[dim]) for w in weights])).sum()
        return _stack([(n - target).square().sum() for n in ctx.norms]).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights = ctx.saved_tensors
        norms = _group_norms(weights, ctx.dim) if torch.is_grad_enabled() else ctx.norms
        grads = []
        for w, n in zip(weights, norms):
            if ctx.target is None:
                coef = (math.sqrt(w.numel() // w.shape[ctx.dim]) * grad) / n
            else:
                coef = (2.0 * grad) * (n - ctx.target) / n
            grads.append(w * coef.masked_fill(n == 0, 0.0))
        return (None, None, *grads)


def _group_norms(weights: Sequence[Tensor], dim: int) -> list[Tensor]:
    """The norm of each slice along ``dim`` of each tensor, kept as a broadcastable ``(1, .., n_g, .., 1)``."""
    return [torch.linalg.vector_norm(w, dim=[d for d in range(w.ndim) if d != dim], keepdim=True) for w in weights]


@REGISTRY.register("group_lasso")
class GroupLasso(Penalty):
    """Group lasso over units: weight * sum_g sqrt(p_g) * ||theta_g||_2, one group per row/filter.

    .. math:: R(\\theta) = \\lambda \\sum_{g} \\sqrt{p_g}\\, \\lVert \\theta_g \\rVert_2

    The group norm is not squared, so (with a proximal step) whole groups become
    exactly zero: with ``groups="rows"`` a group is an output unit (a row of a
    Linear weight, an output filter of a Conv weight; pruning it removes the
    unit), with ``groups="columns"`` an input unit (a column of a Linear weight,
    an input channel of a Conv weight). ``p_g`` is the group size, so groups of
    different sizes are penalized evenly ("Model selection and estimation in
    regression with grouped variables", Yuan & Lin, 2006; for neurons, "Group
    sparse regularization for deep neural networks", Scardapane et al., 2017).
    Covers every trainable tensor with ndim >= 2; biases are left out. At a
    zero group the subgradient taken is 0 (``torch.linalg.vector_norm``).
    Usual range: 1e-5 to 1e-3.

    Example:
        >>> penalty = GroupLasso(1e-4, groups="rows")

    Args:
        weight: lambda, >= 0.
        groups: "rows" (output units) or "columns" (input units).

    Raises:
        ConfigError: an unknown ``groups``.
        ShapeError: the model has no weight tensor with ndim >= 2.
    """

    def __init__(self, weight: float, *, groups: str = "rows", name: str | None = None):
        super().__init__(weight, name=name)
        self.groups = check_choice("groups", groups, ("rows", "columns"))

    def compute(self, ctx: StepContext) -> Tensor:
        return _GroupNorms.apply(0 if self.groups == "rows" else 1, None, *weight_tensors(ctx.model, self.name))

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, groups={self.groups!r}"


@REGISTRY.register("norm_loss")
class NormLoss(Penalty):
    """Norm loss: weight * sum over filters (||w_i||_2 - 1)^2, pulling every output filter to unit norm.

    .. math:: R(\\theta) = \\lambda \\sum_{l} \\sum_{i} (\\lVert w_{l,i} \\rVert_2 - 1)^2

    A soft constraint toward the Oblique manifold (every row/filter of unit
    norm), proposed as a replacement for weight decay that is less sensitive to
    batch size and to lambda ("Norm Loss: An efficient yet effective
    regularization method for deep neural networks", Georgiou et al., 2020).
    ``w_{l,i}`` is output filter ``i`` of weight tensor ``l`` (every trainable
    tensor with ndim >= 2; biases are left out). This is the plain sum, with no
    per-layer normalization; the paper's exact normalization is not checked
    (see ``docs/provenance.md``). Usual range: 1e-4 to 1e-2.

    Example:
        >>> penalty = NormLoss(5e-4)

    Args:
        weight: lambda, >= 0.

    Raises:
        ShapeError: the model has no weight tensor with ndim >= 2.
    """

    def compute(self, ctx: StepContext) -> Tensor:
        return _GroupNorms.apply(0, 1.0, *weight_tensors(ctx.model, self.name))


# -- distance to the initial weights, up to permutation -----------------------------


def _create_missing_buffers(module: nn.Module, state_dict: dict[str, Any], prefix: str, stem: str) -> None:
    """Register the ``stem*`` buffers a fresh instance does not have yet, so that loading round-trips."""
    for key, value in state_dict.items():
        if key.startswith(prefix + stem):
            local = key[len(prefix) :]
            if "." not in local and not hasattr(module, local):
                module.register_buffer(local, torch.empty_like(value))


@REGISTRY.register("wasserstein_to_init")
class WassersteinToInit(Penalty):
    """Wasserstein distance to the initial weight distribution: weight * sum_l ||sort(theta_l) - sort(theta_l^0)||^2.

    .. math:: R(\\theta) = \\lambda \\sum_{l} \\sum_{i}
              \\big(\\theta_{l,(i)} - \\theta^0_{l,(i)}\\big)^2

    where ``theta_{l,(i)}`` is the i-th smallest entry of parameter tensor ``l``.
    Between two empirical distributions of n points each, the squared
    2-Wasserstein distance is ``(1/n) * sum_i (x_(i) - y_(i))^2`` (sorting is the
    optimal transport in 1-D), so the term of tensor ``l`` is ``n_l * W2^2``.
    Unlike :class:`L2ToInit` it only keeps the *distribution* of each tensor's
    weights near its initial one: it is invariant to permuting the weights
    within a tensor, and never larger than ``||theta - theta_0||^2``. Proposed
    against loss of plasticity in continual learning ("Directions of Curvature
    as an Explanation for Loss of Plasticity", Lewandowski et al., 2023; compared
    in "Learning Continually by Spectral Regularization", Lewandowski et al.,
    2024). Each parameter tensor is one "layer" (weights and biases separately).
    The normalization (sum of squared differences of order statistics, no 1/n)
    may differ from the paper's (see ``docs/provenance.md``). Usual range: 1e-4
    to 1e-1.

    The anchor is taken from the model on the first call (or by :meth:`reset`)
    and kept, sorted and flattened, in buffers named ``sorted_anchor__<param>``,
    so ``state_dict()`` round-trips it, also into a fresh instance.

    Example:
        >>> penalty = WassersteinToInit(1e-2, params="weights")

    Args:
        weight: lambda, >= 0.
        params: "all" or "weights".

    Raises:
        ConfigError: the model's parameters no longer match the anchor.
    """

    _STEM = "sorted_anchor__"

    def __init__(self, weight: float, *, params: str = "all", name: str | None = None):
        super().__init__(weight, name=name)
        self.params = check_params(params)

    def _key(self, param_name: str) -> str:
        return self._STEM + param_name.replace(".", "__")

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Take the sorted entries of the model's current parameters as the anchor."""
        for key in [k for k, _ in self.named_buffers() if k.startswith(self._STEM)]:
            delattr(self, key)
        for name, p in selected_parameters(model, self.params):
            self.register_buffer(self._key(name), p.detach().flatten().sort().values.clone())

    @property
    def anchored(self) -> bool:
        """Whether the anchor has been taken."""
        return any(k.startswith(self._STEM) for k, _ in self.named_buffers())

    def compute(self, ctx: StepContext) -> Tensor:
        if not self.anchored:
            self.reset(ctx.model)
        terms = []
        for name, p in selected_parameters(ctx.model, self.params):
            anchor = getattr(self, self._key(name), None)
            if anchor is None or anchor.numel() != p.numel():
                raise ConfigError(
                    f"{self.name}: parameter {name!r} does not match the stored anchor; "
                    "call reset(model) after changing the model"
                )
            terms.append((p.flatten().sort().values - anchor).pow(2).sum())
        return sum_terms(iter(terms), ctx.model)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        _create_missing_buffers(self, state_dict, prefix, self._STEM)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, params={self.params!r}"
