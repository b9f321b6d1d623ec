"""Data parallelism over ``torch.distributed``: one run on several processes, equal to one process on the same
global batch.

Every rank holds the whole model, draws the same global batch (the same seed, :func:`epoch_batches`) and trains
on its contiguous share of it (:func:`shard`); after every backward the gradients are averaged over the ranks
(:func:`average_`, the step's logged numbers in the same collective), so each rank's optimizer sees the gradient of
the global batch and every rank takes the same step. This is what ``DistributedDataParallel`` does, done inside
:func:`~reglab.train.train_step`'s closure instead of in backward hooks, so that it holds for every evaluation of a
closure-based optimizer (the SAM family perturbs along the global gradient and updates with the global gradient at
the perturbed point, as the one-process run does) and for models whose ``features``/``head`` a penalty calls
directly.

Per-example state (a loss's or penalty's buffer whose first dimension is the number of training examples, such
as ELR's targets) is updated by each rank for its own examples only; :class:`PerExampleState` adds every rank's
change after each step, so the state is the same on every rank and equal to the one-process state. Any other
buffer is assumed to be updated the same way on every rank (a step counter), and is left alone. BatchNorm's
running statistics are per rank (each normalizes its share), as with ``DistributedDataParallel`` without
``SyncBatchNorm``; rank 0's are the ones checkpointed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: Tensor, rank: int, size: int) -> Tensor:
    """Rank ``rank``'s contiguous share of ``batch`` (its first dimension split in ``size`` equal parts)."""
    per_rank = batch.shape[0] // size
    return batch[rank * per_rank : (rank + 1) * per_rank]


def average_(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in one collective per dtype and device (flattened)."""
    _, size = world()
    if size == 1 or not tensors:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


class PerExampleState:
    """Keeps the per-example buffers of ``modules`` equal on every rank.

    Call :meth:`before` ahead of a step and :meth:`after` once it is done: each buffer whose first dimension is
    ``num_examples`` becomes ``old + sum over ranks of (new_r - old)`` (for a boolean buffer: any rank's
    ``True``), exact when the ranks change disjoint examples, as they do with disjoint shares of a batch.
    """

    def __init__(self, modules: Iterable[object], num_examples: int):
        self.buffers = [
            b
            for m in modules
            if isinstance(m, nn.Module)
            for b in m.buffers()
            if b.dim() >= 1 and b.shape[0] == num_examples
        ]
        self._before: list[Tensor] = []

    def before(self) -> None:
        self._before = [b.detach().clone() for b in self.buffers]

    def after(self) -> None:
        for buffer, old in zip(self.buffers, self._before, strict=True):
            if buffer.dtype == torch.bool:
                merged = buffer.to(torch.int32)
                dist.all_reduce(merged, op=dist.ReduceOp.MAX)
                buffer.copy_(merged.bool())
            else:
                change = buffer - old
                dist.all_reduce(change)
                buffer.copy_(old + change)
        self._before = []
