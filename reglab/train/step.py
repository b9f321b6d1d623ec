"""One optimization step that drives plain and closure-based optimizers the same way."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, Penalty, StepContext
from reglab.core.validation import check_float, check_int
from reglab.optim import requires_closure
from reglab.train.device import Precision
from reglab.train.distributed import average_


def unpack_batch(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(x, y)`` or ``(x, y, indices)`` -> ``(x, y, indices or None)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ConfigError(
            f"a batch must be (inputs, targets) or (inputs, targets, indices), got {type(batch).__name__}"
        )
    inputs, targets = batch[0], batch[1]
    return inputs, targets, (batch[2] if len(batch) == 3 else None)


def _check_can_provide(model: nn.Module, penalty: Penalty | None, loss_fn: object, indices: Tensor | None) -> None:
    needs = set(getattr(penalty, "needs", ()))
    if "features" in needs and not (
        callable(getattr(model, "features", None)) and callable(getattr(model, "head", None))
    ):
        users = [t.name for t in penalty.terms() if "features" in t.needs]
        raise MissingContextError(
            f"penalty {', '.join(users)} needs 'features', but {type(model).__name__} has no features(x) and head(h) "
            "methods; use a reglab.tasks model or add both methods, with forward(x) == head(features(x))"
        )
    if indices is None:
        if "indices" in needs:
            users = [t.name for t in penalty.terms() if "indices" in t.needs]
            raise MissingContextError(f"penalty {', '.join(users)} needs 'indices'; pass batches as (x, y, indices)")
        if "indices" in getattr(loss_fn, "needs", ()):
            raise MissingContextError(f"loss {type(loss_fn).__name__} needs 'indices'; pass batches as (x, y, indices)")


def _micro_batches(tensor: Tensor | None, parts: int) -> list[Tensor | None]:
    """``tensor`` cut into ``parts`` equal pieces along its first dimension (``parts`` Nones for None)."""
    if tensor is None:
        return [None] * parts
    return [tensor] if parts == 1 else list(tensor.chunk(parts))


def grad_norm(parameters: Sequence[Tensor]) -> float:
    """Euclidean norm of all gradients (parameters without a gradient are skipped)."""
    norm = _grad_norm_tensor(parameters)
    return 0.0 if norm is None else norm.item()


def _grad_norm_tensor(parameters: Sequence[Tensor]) -> Tensor | None:
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    # the per-tensor norms in one fused call per device and dtype, as torch.nn.utils.clip_grad_norm_ does
    norms = torch._foreach_norm(grads)
    device = grads[0].device
    if any(n.device != device for n in norms):
        norms = [n.to(device) for n in norms]
    return torch.linalg.vector_norm(torch.stack(norms))


def supports_grad_scaler(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can be driven under a ``GradScaler``: a plain optimizer (``scaler.step``), or a
    closure-based one that declares ``supports_grad_scaler`` (it unscales every evaluation itself)."""
    return not requires_closure(optimizer) or bool(getattr(optimizer, "supports_grad_scaler", False))


def train_step(
    model: nn.Module,
    batch: Sequence[Tensor],
    loss_fn: Callable[..., Tensor],
    optimizer: torch.optim.Optimizer,
    penalty: Penalty | None = None,
    augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    *,
    step: int = 0,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    data_parallel: bool = False,
) -> dict[str, float]:
    """Take one optimizer step on ``batch`` and return what happened.

    The objective is ``loss_fn(model(x), y) + penalty(ctx)``. ``augment`` is
    applied to the batch first. ``ctx`` carries exactly the fields the penalty
    declares in ``needs``, taken from the same forward pass; when it needs
    ``features`` the forward pass is ``model.head(model.features(x))``; when it
    needs ``differentiable_inputs`` (and the inputs are floating point) that
    pass runs on a copy of ``x`` that requires grad. A loss
    whose ``needs`` contains ``"indices"`` is called with ``indices=``.

    Optimizers with ``requires_closure = True`` (the SAM family) get
    ``optimizer.step(closure)`` and may evaluate the closure several times; the
    others get one ``closure()`` then ``optimizer.step()``. The returned record
    describes the first evaluation, at the current parameters. A plain
    optimizer is not stepped when the objective is not finite, so the weights
    stay as they were; the trainer then records the run as diverged.

    Mixed precision: with ``precision`` (bf16 or fp16) every forward pass
    (model, loss and penalty) runs under its ``torch.autocast``; backward runs
    outside it, as torch recommends. With an enabled ``scaler`` (fp16) the
    objective is scaled before ``backward``; a plain optimizer is stepped
    through ``scaler.step`` (which unscales the gradients and skips the step if
    any is inf/NaN) followed by one ``scaler.update()``; a closure-based
    optimizer gets ``step(closure, grad_scaler=scaler)`` and must declare
    ``supports_grad_scaler`` (the SAM family does: it unscales the gradients
    of every evaluation, skips the step if any pass has an inf/NaN gradient
    and updates the scaler once). ``grad_norm`` is always the unscaled norm.

    Gradient clipping: with ``clip_grad_norm`` C, every gradient the closure
    computes is scaled by ``min(1, C / (||g|| + 1e-6))`` (the rule of
    ``torch.nn.utils.clip_grad_norm_``; under a scaler the scaled gradient is
    clipped at ``C * scale``, the same thing) before the optimizer reads it;
    ``grad_norm`` is the norm before clipping. For the SAM family this clips
    the gradient the update uses; the first gradient only sets the direction
    of the perturbation, which its normalization makes blind to the clip.

    Gradient accumulation: with ``accumulate`` K the batch is cut into K equal
    micro-batches (after augmentation) and each evaluation of the objective
    runs forward and backward on each in turn with the objective scaled by
    1/K, so the gradient is the whole batch's (up to float rounding; a model
    with BatchNorm normalizes each micro-batch by its own statistics, as in
    any accumulation loop). The record's numbers are the micro-batch means.

    Data parallelism: with ``data_parallel`` (inside a ``torch.distributed``
    process group, each rank holding its share of the global batch) the
    gradients are averaged over the ranks after every evaluation's backward,
    before clipping and before the optimizer reads them, and the record's
    numbers are the means over the ranks (:mod:`reglab.train.distributed`).

    Args:
        model: the model, in train mode.
        batch: ``(x, y)`` or ``(x, y, indices)``.
        loss_fn: the data loss.
        optimizer: any ``torch.optim.Optimizer``.
        penalty: a penalty or a sum of penalties, or None.
        augment: a batch augmentation, or None.
        step: the step number put in the context.
        clip_grad_norm: clip the total gradient norm to this (> 0), or None.
        accumulate: micro-batches per step (>= 1); the batch size must be a multiple of it.
        data_parallel: average gradients and the record over the ranks of the default process group.

    Returns:
        ``{"loss": data loss, "objective": loss + penalties, "penalty/<name>": each
        weighted term, "grad_norm": ||grad objective||}`` as floats.

    Raises:
        MissingContextError: the penalty or loss needs a field that cannot be provided.
        ConfigError: an enabled scaler with a closure-based optimizer that does not support one.
    """
    if isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and penalty == 0:
        penalty = None  # sum([]) of no penalties
    if penalty is not None and not isinstance(penalty, Penalty):
        raise ConfigError(f"penalty must be a reglab Penalty (or None), got {type(penalty).__name__}")
    check_int("accumulate", accumulate, 1)
    if clip_grad_norm is not None:
        check_float("clip_grad_norm", clip_grad_norm, 0.0, low_open=True)
    inputs, targets, indices = unpack_batch(batch)
    if augment is not None:
        inputs, targets = augment(inputs, targets)
    _check_can_provide(model, penalty, loss_fn, indices)
    needs = set(getattr(penalty, "needs", ()))
    loss_takes_indices = "indices" in getattr(loss_fn, "needs", ())
    # token ids cannot require grad: the penalty then gets None and reports the inputs itself
    differentiable = "differentiable_inputs" in needs and torch.is_tensor(inputs) and inputs.is_floating_point()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    if scaler is not None and not supports_grad_scaler(optimizer):
        raise ConfigError(
            f"precision fp16 needs a gradient scaler, and {type(optimizer).__name__} re-evaluates the loss inside "
            "step without supporting one; use precision bf16 (no scaler) or 32"
        )
    autocast = precision.autocast if precision is not None else contextlib.nullcontext
    record: dict[str, float] = {}

    if accumulate > 1 and targets.shape[0] % accumulate:
        raise ConfigError(
            f"train.accumulate={accumulate} must divide the batch of {targets.shape[0]} examples into equal "
            "micro-batches; choose a batch size that is a multiple of it"
        )
    chunks = list(zip(*(_micro_batches(t, accumulate) for t in (inputs, targets, indices)), strict=True))

    def objective_of(x_in: Tensor, y: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = x_in.detach().requires_grad_(True) if differentiable and not x_in.requires_grad else x_in
        with autocast():
            if "features" in needs:
                features = model.features(x)
                outputs = model.head(features)
            else:
                features, outputs = None, model(x)
            loss = loss_fn(outputs, y, indices=idx) if loss_takes_indices else loss_fn(outputs, y)
            objective = loss
            terms: dict[str, Tensor] = {}
            if penalty is not None:
                ctx = StepContext(
                    model=model,
                    inputs=x_in,
                    targets=y,
                    outputs=outputs if "outputs" in needs else None,
                    features=features,
                    indices=idx if "indices" in needs else None,
                    loss_fn=loss_fn if "loss_fn" in needs else None,
                    step=step,
                    differentiable_inputs=x if differentiable else None,
                )
                terms = penalty.breakdown(ctx)
                for value in terms.values():
                    objective = objective + value
        return loss, objective, terms

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective = None
        terms: dict[str, Tensor] = {}
        for x_in, y, idx in chunks:
            part_loss, part_objective, part_terms = objective_of(x_in, y, idx)
            scaled = part_objective / accumulate if accumulate > 1 else part_objective
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if accumulate == 1:
                loss, objective, terms = part_loss, part_objective, part_terms
                continue
            loss = part_loss.detach() / accumulate + (0 if loss is None else loss)
            objective = part_objective.detach() / accumulate + (0 if objective is None else objective)
            terms = {k: v.detach() / accumulate + terms.get(k, 0) for k, v in part_terms.items()}
        # the record's numbers of the first evaluation: the loss and penalties (of this rank's share)
        shares = [v.detach().reshape(()).clone() for v in (loss, objective, *terms.values())] if not record else []
        if data_parallel:  # one collective: the gradients, and the shares' numbers -> the global batch's
            average_([p.grad for p in params if p.grad is not None] + shares)
        norm = _grad_norm_tensor(params) if not record or clip_grad_norm is not None else None
        if not record:
            unscaled = norm / scaler.get_scale() if norm is not None and scaler is not None else norm
            # one host transfer for every number of the record
            values = shares + ([unscaled.reshape(())] if unscaled is not None else [])
            device, dtype = values[0].device, values[0].dtype
            if any(v.device != device or v.dtype != dtype for v in values):  # e.g. a float64 penalty
                values = [v.to(device=device, dtype=torch.float64) for v in values]
            numbers = torch.stack(values).tolist()
            record["loss"], record["objective"] = numbers[0], numbers[1]
            record.update({f"penalty/{k}": numbers[2 + i] for i, k in enumerate(terms)})
            record["grad_norm"] = numbers[-1] if unscaled is not None else 0.0
        if clip_grad_norm is not None and norm is not None:
            limit = clip_grad_norm * (scaler.get_scale() if scaler is not None else 1.0)
            coefficient = torch.clamp(limit / (norm + 1e-6), max=1.0)
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_mul_(grads, coefficient.to(grads[0].device))
        return objective

    if requires_closure(optimizer):
        if scaler is not None:
            optimizer.step(closure, grad_scaler=scaler)
        else:
            optimizer.step(closure)
    else:
        closure()
        if math.isfinite(record["objective"]):
            if scaler is None:
                optimizer.step()
            elif any(p.grad is not None for p in params):  # the scaler needs a gradient to check
                scaler.step(optimizer)
                scaler.update()
    return record
