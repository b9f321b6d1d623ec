"""Model-level calculus with ``torch.func``: per-sample gradients and Jacobian products of a model's output.

Everything here evaluates the model through :func:`torch.func.functional_call`
on detached copies of its parameters, in eval mode, with buffers copied so
that no running statistic moves: the caller's model (parameters, buffers,
train/eval mode) is left exactly as it was.

``data`` arguments are an ``(inputs, targets)`` pair or an iterable of batches
(a ``DataLoader`` yielding ``(x, y)`` or ``(x, y, index)``); see :func:`batches`.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from reglab.core.errors import ConfigError, ShapeError

Params = dict[str, Tensor]


def batches(data: Any) -> list[tuple[Tensor, Tensor]]:
    """The ``(x, y)`` batches of ``data``: an ``(x, y)``/``(x, y, index)`` tuple of tensors, or an iterable of them.

    Raises:
        ConfigError: ``data`` is empty or its items are not ``(x, y, ...)`` tuples of tensors.
    """
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(isinstance(t, Tensor) for t in data):
        out = [(data[0], data[1])]
    else:
        out = []
        with torch.random.fork_rng(devices=[]):  # a DataLoader draws a base seed from the caller's RNG
            items = list(data)
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], Tensor)):
                raise ConfigError(
                    "data must be an (inputs, targets) pair or an iterable of (inputs, targets[, index]) batches, "
                    f"got an item of type {type(item).__name__}"
                )
            out.append((item[0], item[1]))
    if not out or sum(len(x) for x, _ in out) == 0:
        raise ConfigError("data is empty: give an (inputs, targets) pair or a non-empty DataLoader")
    for x, y in out:
        if len(x) != len(y):
            raise ShapeError(f"inputs and targets disagree in length: {len(x)} vs {len(y)}")
    return out


def concat(data: Any) -> tuple[Tensor, Tensor]:
    """All of ``data`` as one ``(inputs, targets)`` pair."""
    parts = batches(data)
    if len(parts) == 1:
        return parts[0]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def on_model_device(model: nn.Module, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` moved to the device of ``model``'s first parameter or buffer (unchanged if it has none)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is None:
        return tensors
    return tuple(t.to(first.device) for t in tensors)


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Extra forward passes inside this block leave normalization running statistics untouched.

    BatchNorm layers (``_BatchNorm``: BatchNorm1d/2d/3d, SyncBatchNorm) that
    track running statistics have ``track_running_stats`` switched off for the
    block, as in the reference VAT code: in train mode they normalize with the
    batch statistics, exactly as they would otherwise, and update nothing; in
    eval mode they still use the running statistics. (InstanceNorm is left
    alone: switching its flag changes what it normalizes with.) The one home of this rule: perturbation optimizers
    (SAM's perturbed passes) and penalties that run extra forward passes use
    it. Nested blocks are fine (the outermost one restores).
    """
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every submodule's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def select_params(model: nn.Module, params: Any = None) -> list[str]:
    """Names of the trainable parameters that ``params`` selects, in ``named_parameters`` order.

    ``params`` is ``None`` (all with ``requires_grad``), a regex string matched
    with :func:`re.search` against parameter names, a list of names, an
    ``nn.Module`` inside ``model`` or a list of such modules.

    Raises:
        ConfigError: the selection is empty, names an unknown parameter, or is of an unsupported type.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        chosen = [n for n, _ in named]
    elif isinstance(params, str):
        chosen = [n for n, _ in named if re.search(params, n)]
    elif isinstance(params, nn.Module) or (
        isinstance(params, Sequence) and params and all(isinstance(m, nn.Module) for m in params)
    ):
        modules = [params] if isinstance(params, nn.Module) else list(params)
        ids = {id(p) for m in modules for p in m.parameters()}
        chosen = [n for n, p in named if id(p) in ids]
    elif isinstance(params, Sequence) and all(isinstance(n, str) for n in params):
        known = {n for n, _ in named}
        unknown = [n for n in params if n not in known]
        if unknown:
            raise ConfigError(f"params: unknown or frozen parameter name(s) {unknown}; trainable: {sorted(known)}")
        wanted = set(params)
        chosen = [n for n, _ in named if n in wanted]
    else:
        raise ConfigError(
            "params must be None, a regex string, a list of parameter names, a module or a list of modules; "
            f"got {type(params).__name__}"
        )
    if not chosen:
        raise ConfigError(f"params: {params!r} selects no trainable parameter of {type(model).__name__}")
    return chosen


class FunctionalModel:
    """A model as a pure function of a subset of its parameters.

    ``self.params`` are detached copies of the selected parameters (the point
    at which derivatives are taken); the others and the buffers are frozen
    copies. :meth:`output` and :meth:`loss` evaluate in eval mode.

    Args:
        model: any ``nn.Module``; it is not modified.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, the mean over the batch
            (``reduction="mean"``, torch's default).
        params: which parameters are variables (see :func:`select_params`).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, params: Any = None):
        self.model = model
        self.loss_fn = loss_fn
        self.names = select_params(model, params)
        everything = dict(model.named_parameters())
        self.params: Params = {n: everything[n].detach().clone() for n in self.names}
        chosen = set(self.names)
        self.frozen: Params = {n: p.detach() for n, p in everything.items() if n not in chosen}
        self.frozen.update({n: b.detach().clone() for n, b in model.named_buffers()})
        first = self.params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        self.shapes = [self.params[n].shape for n in self.names]
        self.numel = sum(self.params[n].numel() for n in self.names)

    # -- flat vectors <-> parameter dicts -----------------------------------------------------------------------------
    def flatten(self, tensors: Params) -> Tensor:
        """Concatenate a ``{name: tensor}`` dict in parameter order."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, vector: Tensor) -> Params:
        """Split a flat vector of length :attr:`numel` into a ``{name: tensor}`` dict."""
        if vector.shape != (self.numel,):
            raise ShapeError(f"expected a flat vector of shape ({self.numel},), got {tuple(vector.shape)}")
        out, start = {}, 0
        for n, shape in zip(self.names, self.shapes, strict=True):
            size = shape.numel()
            out[n] = vector[start : start + size].view(shape)
            start += size
        return out

    def point(self) -> Tensor:
        """The parameters at which derivatives are taken, as a flat vector."""
        return self.flatten(self.params)

    # -- evaluation ---------------------------------------------------------------------------------------------------
    def inputs(self, x: Tensor) -> Tensor:
        """``x`` on the model's device, cast to its dtype when floating (a float64 model on float32 data)."""
        x = x.to(self.device)
        return x.to(self.dtype) if x.is_floating_point() else x

    def output(self, params: Params, x: Tensor) -> Tensor:
        """The model's output at ``params`` (eval mode; buffers are copies, so nothing moves)."""
        with eval_mode(self.model):
            return functional_call(self.model, {**self.frozen, **params}, (x,), strict=False)

    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``loss_fn(output(params, x), y)``."""
        if self.loss_fn is None:
            raise ConfigError("this computation needs a loss_fn")
        return self.loss_fn(self.output(params, x), y.to(self.device))

    def sample_losses(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """The per-example losses ``loss_fn(output_i[None], y_i[None])`` as an ``(n,)`` vector."""
        out = self.output(params, x)
        y = y.to(self.device)
        try:
            return vmap(lambda o, t: self.loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y)
        except RuntimeError as err:  # a loss that reads values in Python: one example at a time
            if "vmap" not in str(err):
                raise
            return torch.stack([self.loss_fn(out[i : i + 1], y[i : i + 1]) for i in range(len(out))])

    # -- derivatives --------------------------------------------------------------------------------------------------
    def gradient(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, ∇loss)`` on one batch, the gradient flat."""

        def with_value(params: Params) -> tuple[Tensor, Tensor]:
            value = self.loss(params, x, y)
            return value, value.detach()

        g, loss = grad(with_value, has_aux=True)(self.params)
        return loss, self.flatten(g)

    def per_sample_gradients(self, x: Tensor, y: Tensor) -> Tensor:
        """The ``(n, P)`` matrix of per-example gradients ``∇_θ loss_fn(f(x_i), y_i)``.

        ``vmap(grad)`` over the examples. A loss that cannot run under ``vmap``
        (one that reads tensor values in Python, e.g. to validate its targets)
        gets its output gradients ∂ℓ_i/∂f_i in a loop instead, followed by one
        vmapped vector-Jacobian product of the model: same numbers, slower.
        """
        y = y.to(self.device)

        def one(params: Params, xi: Tensor, yi: Tensor) -> Tensor:
            return self.loss(params, xi.unsqueeze(0), yi.unsqueeze(0))

        try:
            g = vmap(grad(one), in_dims=(None, 0, 0))(self.params, x, y)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            with torch.no_grad():
                out = self.output(self.params, x)
            cotangents = torch.empty_like(out)
            with torch.enable_grad():
                for i in range(len(x)):
                    oi = out[i : i + 1].detach().requires_grad_(True)
                    (cotangents[i : i + 1],) = torch.autograd.grad(self.loss_fn(oi, y[i : i + 1]), oi)

            def pull(xi: Tensor, ui: Tensor) -> Params:
                _, pullback = vjp(lambda p: self.output(p, xi.unsqueeze(0)), self.params)
                return pullback(ui.unsqueeze(0))[0]

            g = vmap(pull)(x, cotangents)
        return torch.cat([g[n].reshape(len(x), -1) for n in self.names], dim=1)

    def output_jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """``J v``: the change of the output along the flat parameter direction ``v``."""
        return jvp(lambda p: self.output(p, x), (self.params,), (self.unflatten(v),))[1]

    def output_vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """``Jᵀ u`` for ``u`` shaped like the output, as a flat parameter vector."""
        _, pullback = vjp(lambda p: self.output(p, x), self.params)
        return self.flatten(pullback(u)[0])


def per_sample_gradients(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor, params: Any = None
) -> Tensor:
    """Per-example gradients of ``loss_fn`` as an ``(n, P)`` matrix (columns in ``named_parameters`` order).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> G = per_sample_gradients(net, torch.nn.functional.cross_entropy, torch.randn(5, 3), torch.arange(5) % 2)
        >>> G.shape
        torch.Size([5, 8])
    """
    fm = FunctionalModel(model, loss_fn, params)
    return fm.per_sample_gradients(fm.inputs(inputs), targets)


def output_jvp(model: nn.Module, inputs: Tensor, vector: Tensor, params: Any = None) -> Tensor:
    """``J v`` with ``J = ∂ model(inputs) / ∂θ`` and ``v`` a flat parameter vector."""
    fm = FunctionalModel(model, None, params)
    return fm.output_jvp(fm.inputs(inputs), vector.to(fm.dtype))


def output_vjp(model: nn.Module, inputs: Tensor, cotangent: Tensor, params: Any = None) -> Tensor:
    """``Jᵀ u`` with ``J = ∂ model(inputs) / ∂θ`` and ``u`` shaped like the output; returns a flat vector."""
    fm = FunctionalModel(model, None, params)
    return fm.output_vjp(fm.inputs(inputs), cotangent.to(fm.dtype))


def total_size(parts: Iterable[tuple[Tensor, Tensor]]) -> int:
    """Number of examples in a list of batches."""
    return sum(len(x) for x, _ in parts)
