"""What every reglab loss shares: the ``reduction`` argument and target checks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, ShapeError
from reglab.core.registry import Registry

REGISTRY = Registry("loss")

REDUCTIONS = ("mean", "sum", "none")


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply a torch-style reduction to per-example values."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


class Loss(nn.Module):
    """Base class: ``loss(logits, targets)`` with a torch-style ``reduction``.

    A loss that keeps per-example state declares ``needs = frozenset({"indices"})``
    and takes ``indices=`` in ``forward``; ``train_step`` then passes the batch's
    dataset indices.

    Args:
        reduction: "mean" (default), "sum" or "none" (per-example values).
    """

    needs: frozenset[str] = frozenset()
    #: Whether targets may also be probabilities of shape (n, K) (Mixup, CutMix, distillation).
    soft_targets: bool = False

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def check_class_targets(logits: Tensor, targets: Tensor, owner: str) -> None:
    """Check ``logits`` is (n, K) and ``targets`` is (n,) int class indices or (n, K) probabilities."""
    if logits.ndim != 2:
        raise ShapeError(f"{owner}: logits must have shape (n, num_classes), got {tuple(logits.shape)}")
    if targets.shape == logits.shape and targets.is_floating_point():
        return
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0] or targets.dtype != torch.long:
        raise ShapeError(
            f"{owner}: targets must be int64 class indices of shape ({logits.shape[0]},) or probabilities of shape "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)} {targets.dtype} (use targets.long() for other integers)"
        )
    if not targets.numel():
        return
    try:
        low, high = torch.stack(torch.aminmax(targets)).tolist()  # one reduction, one host transfer
    except RuntimeError:  # inside torch.func.vmap values cannot be read in Python; the shapes were checked above
        return
    if low < 0 or high >= logits.shape[1]:
        raise ShapeError(
            f"{owner}: class indices must be in [0, {logits.shape[1]}), got values in "
            f"[{low}, {high}] (reglab losses have no ignore_index)"
        )
