"""Helpers shared by the penalties that look at the step's data loss, outputs or inputs.

They name the penalty and the fix when a context field is missing, refuse a
loss whose per-example state an extra evaluation would advance, and keep extra
forward passes from touching batch-norm running statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from reglab.core import ConfigError, MissingContextError, ShapeError, StepContext
from reglab.linalg.functional import frozen_norm_stats  # noqa: F401 (re-exported for the penalties)

_HOW_TO_FILL = {
    "outputs": "pass the logits as StepContext(outputs=...), or train with reglab.train.train_step, which fills "
    "every field a penalty declares in `needs`",
    "loss_fn": "pass the data loss as StepContext(loss_fn=...), or train with reglab.train.train_step",
    "features": "pass StepContext(features=...), or train with reglab.train.train_step and a model with "
    "features(x) and head(h)",
    "indices": "pass the batch's dataset indices as StepContext(indices=...)",
}


def require_fields(ctx: StepContext, owner: str, *fields: str) -> None:
    """Raise :class:`MissingContextError` naming ``owner`` and the field when one of ``fields`` is None."""
    for field in fields:
        if getattr(ctx, field) is None:
            raise MissingContextError(f"{owner} needs ctx.{field}, which is None; {_HOW_TO_FILL.get(field, '')}")


def check_stateless_loss(loss_fn: Callable[..., Tensor], owner: str) -> None:
    """Refuse a loss with per-example state: evaluating it again would advance that state twice per step."""
    if "indices" in getattr(loss_fn, "needs", ()):
        raise ConfigError(
            f"{owner} evaluates the data loss again, but {type(loss_fn).__name__} keeps per-example state "
            "(it needs 'indices') that would be updated by every extra call; use a stateless loss "
            "(e.g. cross_entropy) with this penalty"
        )


def data_loss(ctx: StepContext, owner: str) -> Tensor:
    """``ctx.loss_fn(ctx.outputs, ctx.targets)``, the step's data loss, from the outputs already computed."""
    require_fields(ctx, owner, "outputs", "loss_fn")
    check_stateless_loss(ctx.loss_fn, owner)
    loss = ctx.loss_fn(ctx.outputs, ctx.targets)
    if loss.ndim != 0:
        raise ShapeError(
            f"{owner} needs a scalar data loss, but loss_fn returned shape {tuple(loss.shape)}; "
            "use reduction='mean' (or 'sum')"
        )
    return loss


def per_example_loss(loss_fn: Callable[..., Tensor], outputs: Tensor, targets: Tensor, owner: str) -> Tensor:
    """The data loss of each example, shape ``(n,)``.

    A loss with a string ``reduction`` attribute (reglab and torch losses) is
    called once on a shallow copy with ``reduction="none"``; unreduced values
    with extra dimensions (e.g. MSE on (n, d)) are averaged over them, which is
    what ``reduction="mean"`` would do. Any other callable is called on each
    example alone (a batch of one).

    Raises:
        ConfigError: the loss keeps per-example state.
        ShapeError: the loss does not give one value per example.
    """
    check_stateless_loss(loss_fn, owner)
    n = outputs.shape[0]
    if isinstance(getattr(loss_fn, "reduction", None), str):
        unreduced = copy.copy(loss_fn)  # shallow: shares parameters and buffers, only `reduction` differs
        unreduced.reduction = "none"
        values = unreduced(outputs, targets)
    else:
        values = torch.stack([loss_fn(outputs[i : i + 1], targets[i : i + 1]).mean() for i in range(n)])
    if values.ndim == 0 or values.shape[0] != n:
        raise ShapeError(
            f"{owner} needs one loss value per example, but loss_fn gave shape {tuple(values.shape)} for a batch "
            f"of {n}; give a loss with a `reduction` argument or a function of (outputs, targets)"
        )
    return values.reshape(n, -1).mean(1) if values.ndim > 1 else values


def float_inputs(ctx: StepContext, owner: str) -> Tensor:
    """``ctx.inputs`` if floating point; otherwise a ConfigError saying why the penalty needs it."""
    x = ctx.inputs
    if not torch.is_tensor(x) or not x.is_floating_point():
        what = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ConfigError(
            f"{owner} perturbs or differentiates the model with respect to its inputs, which must be a "
            f"floating-point tensor, got {what} (token ids?); for token models regularize the embeddings or "
            "features instead"
        )
    return x
