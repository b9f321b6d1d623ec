"""A hand-written backward for losses whose gradient has a cheap closed form.

Autograd differentiates a loss op by op: every elementwise op on the (n, K)
logits writes one (n, K) tensor forward and at least one backward, so a loss
built from six such ops costs several cross-entropies. Many losses have a
gradient that one or two passes compute directly (softmax minus a one-hot,
plus an elementwise term); :func:`row_loss` runs such a loss as a
``torch.autograd.Function`` whose forward computes the per-example values
without a graph and whose backward writes that closed form.

Everything else autograd offers keeps working, with the plain formula:

- double backward (``create_graph=True``, Hessian-vector products): the
  backward then differentiates the loss's plain torch formula
  (``reference``) from the saved logits with ``create_graph=True``, so every
  higher derivative is that of the formula;
- ``torch.func`` transforms (``vmap``, ``grad``, ``jvp``, ``hessian``) and
  forward-mode AD: :func:`row_loss` calls ``reference`` directly.

A loss using it provides three methods, for class-index targets and optional
extra tensors that do not need gradients (e.g. stored teacher probabilities):
``_fused_forward(logits, targets, *extra) -> (values, saved)``,
``_fused_backward(grad, logits, targets, extra, saved) -> grad_logits``
(``grad`` the (n,) upstream gradient of the values, ``extra`` and ``saved``
tuples) and ``_reference(logits, targets, *extra) -> values``, the same values
from differentiable torch ops.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor
from torch.autograd import forward_ad


class FusedRowLoss(Protocol):
    def _fused_forward(self, logits: Tensor, targets: Tensor, *extra: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]: ...

    def _fused_backward(
        self, grad: Tensor, logits: Tensor, targets: Tensor, extra: tuple[Tensor, ...], saved: tuple[Tensor, ...]
    ) -> Tensor: ...

    def _reference(self, logits: Tensor, targets: Tensor, *extra: Tensor) -> Tensor: ...


def plain_autograd_needed(logits: Tensor) -> bool:
    """Whether ``logits`` is being traced by a ``torch.func`` transform or carries a forward-mode tangent."""
    return torch._C._are_functorch_transforms_active() or forward_ad.unpack_dual(logits).tangent is not None


class _RowLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, loss: FusedRowLoss, *extra: Tensor) -> Tensor:  # type: ignore[override]
        values, saved = loss._fused_forward(logits, targets, *extra)
        ctx.loss, ctx.n_extra = loss, len(extra)
        ctx.save_for_backward(logits, targets, *extra, *saved)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, targets, *rest = ctx.saved_tensors
        extra, saved = tuple(rest[: ctx.n_extra]), tuple(rest[ctx.n_extra :])
        nones = (None,) * (2 + ctx.n_extra)
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            with torch.enable_grad():
                values = ctx.loss._reference(logits, targets, *extra)
                (g,) = torch.autograd.grad(values, logits, grad, create_graph=True)
            return (g, *nones)
        g = ctx.loss._fused_backward(grad.contiguous(), logits, targets, extra, saved)
        return (g.to(logits.dtype), *nones)  # e.g. float32 work on float16 logits under autocast


def row_loss(loss: FusedRowLoss, logits: Tensor, targets: Tensor, *extra: Tensor) -> Tensor:
    """Per-example values of ``loss`` on class-index targets, with its hand-written backward where it applies."""
    if plain_autograd_needed(logits):
        return loss._reference(logits, targets, *extra)
    return _RowLoss.apply(logits, targets, loss, *extra)


def target_column_add(grad_logits: Tensor, targets: Tensor, values: Tensor) -> Tensor:
    """``grad_logits[i, targets[i]] += values[i]`` in place; returns ``grad_logits``."""
    return grad_logits.scatter_add_(1, targets.unsqueeze(1), values.unsqueeze(1).to(grad_logits.dtype))
