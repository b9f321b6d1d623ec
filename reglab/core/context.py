"""The step context: everything a regularizer may look at in one training step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

#: Fields of :class:`StepContext` a penalty or loss may declare in its ``needs``.
CONTEXT_FIELDS = frozenset({"inputs", "outputs", "features", "loss_fn", "indices", "differentiable_inputs"})


@dataclass
class StepContext:
    """What a penalty sees in one step.

    ``train_step`` fills exactly the fields a penalty declares in ``needs`` from
    the same forward pass that produced the loss; the others stay ``None``.

    Attributes:
        model: the model being trained.
        inputs: the (augmented) input batch.
        targets: the batch targets (class indices, soft targets or regression values).
        outputs: logits of the forward pass already done.
        features: penultimate features ``model.features(inputs)``.
        indices: dataset indices of the batch, for per-example state.
        differentiable_inputs: the input batch (the values of ``inputs``) as a
            tensor that requires grad, on which the forward pass ran (a leaf
            copy, or ``inputs`` itself when it already requires grad): ``outputs``
            and ``features`` are differentiable in it, so a penalty can take
            input gradients without a second forward pass. Filled for
            floating-point inputs only.
        loss_fn: the data loss, ``loss_fn(outputs, targets)``.
        step: the optimizer step count.
    """

    model: nn.Module
    inputs: Tensor
    targets: Tensor
    outputs: Tensor | None = None
    features: Tensor | None = None
    indices: Tensor | None = None
    loss_fn: Callable[..., Tensor] | None = None
    step: int = 0
    differentiable_inputs: Tensor | None = None
