"""What every reglab loss shares: the ``reduction`` argument, target checks, soft targets and per-example state."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, ShapeError
from reglab.core.registry import Registry
from reglab.core.validation import check_int

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


def check_class_targets(logits: Tensor, targets: Tensor, owner: str, *, read_range: bool = True) -> None:
    """Check ``logits`` is (n, K) and ``targets`` is (n,) int class indices or (n, K) probabilities.

    The class-index range costs one host transfer (a sync on a GPU); ``read_range=False`` checks the shapes
    only, for a caller that reads the range together with other values (:meth:`PerExampleState._check_batch`).
    """
    if logits.ndim != 2:
        raise ShapeError(f"{owner}: logits must have shape (n, num_classes), got {tuple(logits.shape)}")
    if targets.shape == logits.shape and targets.is_floating_point():
        return
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0] or targets.dtype != torch.long:
        raise ShapeError(
            f"{owner}: targets must be int64 class indices of shape ({logits.shape[0]},) or probabilities of shape "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)} {targets.dtype} (use targets.long() for other integers)"
        )
    if not targets.numel() or not read_range:
        return
    ranges = _read_ranges(targets)
    if ranges:
        _check_class_range(owner, logits.shape[1], *ranges)


def _read_ranges(*tensors: Tensor) -> list[int]:
    """[min, max] of every (non-empty) integer tensor, read in one host transfer; [] inside ``torch.func.vmap``."""
    try:
        return torch.stack([v.long() for t in tensors for v in torch.aminmax(t)]).tolist()
    except RuntimeError:  # inside torch.func.vmap values cannot be read in Python; the shapes were checked
        return []


def _check_class_range(owner: str, num_classes: int, low: int, high: int) -> None:
    if low < 0 or high >= num_classes:
        raise ShapeError(
            f"{owner}: class indices must be in [0, {num_classes}), got values in "
            f"[{low}, {high}] (reglab losses have no ignore_index)"
        )


def check_logits(logits: Tensor, targets: Tensor, owner: str, *, soft: bool = True, min_classes: int = 2) -> None:
    """:func:`check_class_targets`, then: probability targets only when ``soft``, at least ``min_classes`` classes."""
    check_class_targets(logits, targets, owner)
    if targets.is_floating_point() and not soft:
        raise ShapeError(
            f"{owner}: targets must be int class indices of shape ({logits.shape[0]},); "
            f"probability targets are not supported by this loss, got {tuple(targets.shape)} {targets.dtype}"
        )
    if logits.shape[1] < min_classes:
        raise ShapeError(f"{owner}: needs at least {min_classes} classes, got logits of shape {tuple(logits.shape)}")


def expected_value(per_class: Tensor, targets: Tensor) -> Tensor:
    """Per-example value: ``per_class[i, y_i]`` for int targets, ``sum_k q_ik per_class[i, k]`` for probabilities."""
    if targets.is_floating_point():
        return (targets.to(per_class.dtype) * per_class).sum(dim=1)
    return per_class.gather(1, targets.unsqueeze(1)).squeeze(1)


def target_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """Targets as an (n, K) distribution in the logits' dtype (one-hot for class indices)."""
    if targets.is_floating_point():
        return targets.to(logits.dtype)
    return F.one_hot(targets, logits.shape[1]).to(logits.dtype)


class PerExampleState(Loss):
    """Base of losses with a per-example buffer of shape (num_examples, num_classes), keyed by dataset index."""

    needs = frozenset({"indices"})

    def __init__(self, num_examples: int, num_classes: int, reduction: str = "mean"):
        super().__init__(reduction)
        self.num_examples = check_int("num_examples", num_examples, 1)
        self.num_classes = check_int("num_classes", num_classes, 2)

    def _check_batch(self, logits: Tensor, targets: Tensor, indices: Tensor | None, owner: str) -> Tensor:
        """Validate a batch and return its indices as a long tensor on the buffers' device.

        The class-index and dataset-index ranges are read in one host transfer.
        """
        check_class_targets(logits, targets, owner, read_range=False)
        if logits.shape[1] != self.num_classes:
            raise ShapeError(f"{owner}: built for num_classes={self.num_classes}, got logits {tuple(logits.shape)}")
        if indices is None:
            raise MissingContextError(
                f"{owner} keeps per-example state and needs indices=: call loss(logits, targets, indices=idx) with "
                "the batch's dataset indices, or train with batches (x, y, indices)"
            )
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
            raise ShapeError(f"{owner}: indices must be an integer tensor, got {getattr(indices, 'dtype', indices)!r}")
        if indices.shape != (logits.shape[0],):
            raise ShapeError(
                f"{owner}: indices must have shape ({logits.shape[0]},), one per example, got {tuple(indices.shape)}"
            )
        class_targets = not targets.is_floating_point()
        if indices.numel():
            ranges = _read_ranges(*((targets,) if class_targets else ()), indices)
            if ranges and class_targets:
                _check_class_range(owner, logits.shape[1], *ranges[:2])
            low, high = ranges[-2:] if ranges else (0, 0)
            if low < 0 or high >= self.num_examples:
                raise ConfigError(
                    f"{owner}: indices must be dataset indices in [0, num_examples={self.num_examples}), got values "
                    f"in [{low}, {high}]; build the loss with num_examples = len(task.train)"
                )
        self._follow_dtype(logits)
        return indices.long()

    def _write_rows(self, buffer: Tensor, idx: Tensor, rows: Tensor) -> Tensor:
        """``buffer[idx] = rows`` where a repeated index takes its last row, on every device; returns ``buffer[idx]``.

        Plain advanced-index assignment leaves the winner of repeated indices to
        the backend (the last on CPU, the first on CUDA); here every position
        writes the row of its index's last occurrence, so repeated writes agree
        and the state is the same everywhere (without a host sync).
        """
        order = torch.arange(len(idx), device=idx.device)
        last = torch.full((self.num_examples,), -1, dtype=torch.long, device=idx.device)
        last = last.scatter_reduce(0, idx, order, reduce="amax")
        final = rows.index_select(0, last[idx]).to(buffer.dtype)
        buffer.index_put_((idx,), final)
        return final

    def _follow_dtype(self, logits: Tensor) -> None:
        """Keep floating buffers at the logits' precision when that is higher (float64 logits -> float64 state)."""
        for buf in self.buffers():
            if buf.is_floating_point() and torch.finfo(buf.dtype).bits < torch.finfo(logits.dtype).bits:
                self.to(logits.dtype)
                return

    def extra_repr(self) -> str:
        return f"num_examples={self.num_examples}, num_classes={self.num_classes}, {super().extra_repr()}"
