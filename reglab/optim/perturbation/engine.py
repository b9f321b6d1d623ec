"""The perturb -> re-evaluate -> restore loop shared by every weight-perturbation optimizer.

:class:`PerturbationOptimizer` owns the step: the first closure call, the
copy of the weights, moving them to the method's points, the BatchNorm
statistics, the fp16 gradient scaler, the checks for non-finite values and
the base step. A method says only where to go and how to combine what it
found (:meth:`PerturbationOptimizer._direction`, given a :class:`Perturbation`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError
from reglab.linalg.functional import frozen_norm_stats
from reglab.optim.base import OptimizerWrapper, requires_closure
from reglab.optim.perturbation.scaling import Unscaler
from reglab.optim.perturbation.vectors import all_finite, finite_loss, take_grad

__all__ = ["Closure", "Perturbation", "PerturbationOptimizer"]

Closure = Callable[[], Any]


class Perturbation:
    """One step's bookkeeping: the taking-part parameters, their saved values, gradients at perturbed points.

    Built by :class:`PerturbationOptimizer` after the first closure call.

    Attributes:
        params: the parameters that had a gradient after the first call.
        origin: their values at the start of the step (copies).
        grad: the gradient at ``origin`` (taken from ``p.grad``).
        evaluations: closure calls so far in this step (the first one included).
    """

    def __init__(
        self,
        closure: Closure,
        params: list[Tensor],
        origin: list[Tensor],
        grad: list[Tensor],
        unscale: Unscaler | None = None,
    ):
        self.closure = closure
        self.unscale = unscale
        self.params = params
        self.origin = origin
        self.grad = grad
        self.evaluations = 1
        self._at_origin = True  # the weights hold exactly ``origin`` (no copy needed before the next move)

    def move(self, offsets: Sequence[Tensor] | None, *, scale: float | Tensor = 1.0, force: bool = False) -> None:
        """Set the weights to ``origin + scale * offsets`` (``offsets=None``: back to ``origin``).

        The copy of ``origin`` is skipped when the weights already hold it
        (the closure does not change the weights); ``force=True`` copies anyway.
        A float ``scale`` is fused into the addition.
        """
        with torch.no_grad():
            if force or not self._at_origin:
                torch._foreach_copy_(self.params, self.origin)
            if offsets is not None:
                if isinstance(scale, Tensor):
                    offsets = torch._foreach_mul(list(offsets), scale)
                    scale = 1.0
                torch._foreach_add_(self.params, list(offsets), alpha=scale)
            self._at_origin = offsets is None

    def grad_at(
        self, offsets: Sequence[Tensor] | None, closure: Closure | None = None, *, scale: float | Tensor = 1.0
    ) -> list[Tensor] | None:
        """The gradient at ``origin + scale * offsets`` (``None``: at ``origin``), or None if the loss there is not
        finite.

        ``closure`` defaults to the step's closure. A parameter that gets no
        gradient at that point counts as a zero gradient. The gradient itself is
        not checked here (a full pass over it); a non-finite gradient reaches
        the direction, which the engine checks before the base step. Under a
        gradient scaler the gradients are unscaled here, and an inf/NaN among
        them (which the scaler finds anyway) also gives None.
        """
        self.move(offsets, scale=scale)
        with torch.enable_grad():
            loss = (closure or self.closure)()
        self.evaluations += 1
        if self.unscale is not None and not self.unscale([p for p in self.params if p.grad is not None]):
            return None
        if not finite_loss(loss):
            return None
        return [take_grad(p) for p in self.params]


class PerturbationOptimizer(OptimizerWrapper, abc.ABC):
    """Base class of the weight-perturbation optimizers: perturb, re-evaluate the gradient, restore, step the base.

    An :class:`~reglab.optim.base.OptimizerWrapper`: ``param_groups``,
    ``state``, ``defaults``, ``zero_grad``, ``add_param_group``, ``state_dict``
    and ``load_state_dict`` are the base's (``opt.base``), so LR schedulers
    (``OneCycleLR``'s momentum cycling included) and checkpoints work as with
    the base alone. The method's hyperparameters are keys of the base's param
    groups (``"sam_rho"``; set them to schedule one) and must hold one value in
    all groups: the perturbation is one vector over every parameter. The state
    dict's ``"wrapper"`` entry holds the optimizer's type and its own state
    (IGNITE's multiplier). Unlike a plain wrapper, ``requires_closure`` is
    always True.

    Shared behaviour:

    - ``step(closure)``: the closure zeroes the gradients, recomputes the
      loss, calls ``backward()`` and returns the loss; it is called several
      times per step (:func:`reglab.train.train_step` builds it). Gradient
      accumulation inside the closure is fine: the engine only reads
      ``p.grad`` after each call. ``step`` returns the loss of the first call,
      at the unperturbed weights.
    - Only parameters whose ``grad`` is not None after the first call take
      part; the others are neither perturbed nor stepped. After ``step`` each
      taking-part ``p.grad`` holds the direction handed to the base optimizer.
    - The weights are restored by copying the saved values back, so nothing of
      the perturbation is left in them (with a zero radius every method
      reproduces its base optimizer bitwise).
    - BatchNorm running statistics: with ``model=`` the closure evaluations
      after the first, unperturbed one run inside
      :func:`reglab.linalg.functional.frozen_norm_stats` (BatchNorm layers use
      their batch statistics, as always in train mode, and update nothing), so
      the statistics are updated once per step. Config runs pass the built
      model; in code, pass ``model=`` when the model has BatchNorm.
    - A non-finite loss, at the weights or at a perturbed point, or a
      non-finite direction leaves the weights as they were and skips the base
      step (``last_step_skipped`` is True). A non-finite gradient is not looked
      for at each point (a full pass over it): it makes the next perturbed
      point, hence its loss, non-finite, or it reaches the direction, which is
      checked once before the base step.
    - Cost: besides the closure calls, one copy of the weights (into buffers
      kept between steps), one norm pass per ascent and one over the
      direction; the gradients are taken from ``p.grad``, not copied (unless
      ``p.grad`` is a view, as with DDP's ``gradient_as_bucket_view``).
      ``benchmarks/optimizers.py`` measures it.
    - Distributed data parallel: every closure's ``backward()`` is all-reduced
      by DDP as usual, so all ranks perturb by the same, global gradient and
      take the same step (the global-batch semantics; per-rank "m-sharpness"
      would need ``no_sync``, which is not done here).

    A subclass implements :meth:`_direction`, which receives a
    :class:`Perturbation` (the gradient at the weights is ``point.grad``; more
    gradients come from ``point.grad_at(offsets)``) and returns the direction
    to hand to the base optimizer, or None to skip the step.

    Args:
        params: the parameters (or groups), or a constructed base optimizer that takes one gradient per step.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping.
        defaults: the subclass's hyperparameters by argument name.
        model: optional module whose BatchNorm running statistics are protected
            from the perturbed forward passes.

    Raises:
        ConfigError: the base itself needs a closure (a perturbation optimizer,
            LBFGS); ``model`` is not an ``nn.Module``; a hyperparameter breaks its rule.
    """

    requires_closure = True
    supports_grad_scaler = True

    def __init__(
        self,
        params: Any,
        base: str | Mapping[str, Any],
        defaults: Mapping[str, Any],
        *,
        model: nn.Module | None = None,
    ):
        super().__init__(params, base, defaults)
        if requires_closure(self.base):
            raise ConfigError(
                f"base must be a plain optimizer that takes one gradient per step, got {type(self.base).__name__}, "
                "which re-evaluates the loss inside step (requires_closure=True) and cannot be stepped without its "
                "own closure; wrap the plain optimizer directly"
            )
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be an nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.last_step_skipped = False
        self.last_evaluations = 0
        self._origin: list[Tensor] = []  # buffers for the weights at the start of a step, reused between steps

    # ---- the step
    @torch.no_grad()
    def step(self, closure: Closure | None = None, *, grad_scaler: Any = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` at the weights and at the method's perturbed points, then step the base optimizer.

        Args:
            closure: zeroes the gradients, computes the loss, calls ``backward()`` (on the scaled loss,
                ``grad_scaler.scale(loss).backward()``, under fp16) and returns the (unscaled) loss.
            grad_scaler: a ``torch.amp.GradScaler`` for fp16 training, or None. The gradients of every closure
                evaluation are unscaled before they are used (so the ascent direction and its norm are those of the
                true gradient); if any evaluation has an inf/NaN gradient the step is skipped (weights, BatchNorm
                statistics and the base optimizer untouched) and the scale backs off; the scaler is updated once
                per call, as ``scaler.step`` + ``scaler.update`` would do for a plain optimizer.

        Returns:
            What the first closure call returned (the loss at the unperturbed weights).

        Raises:
            ConfigError: no closure was given.
        """
        if closure is None:
            raise ConfigError(
                f"{type(self).__name__}.step needs a closure that zeroes the gradients, computes the loss, calls "
                "backward() and returns the loss (reglab.train.train_step builds one)"
            )
        unscale = Unscaler(grad_scaler) if grad_scaler is not None and grad_scaler.is_enabled() else None
        try:
            return self._step(closure, unscale)
        finally:
            if unscale is not None:
                unscale.update()

    def _saved_weights(self, params: list[Tensor]) -> list[Tensor]:
        """Copies of ``params`` in buffers kept from the last step when the shapes and dtypes still match."""
        origin = self._origin
        if len(origin) != len(params) or any(
            o.shape != p.shape or o.dtype != p.dtype or o.device != p.device for o, p in zip(origin, params)
        ):
            origin = self._origin = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        torch._foreach_copy_(origin, params)
        return origin

    def _step(self, closure: Closure, unscale: Unscaler | None) -> Any:
        self.last_step_skipped = True
        with torch.enable_grad():
            loss = closure()
        self.last_evaluations = 1
        every = self._flat_params()
        params = [p for p in every if p.grad is not None]
        if unscale is not None and params and not unscale(params):
            return loss
        if not params or not finite_loss(loss):
            return loss
        point = Perturbation(closure, params, self._saved_weights(params), [take_grad(p) for p in params], unscale)
        try:
            with frozen_norm_stats(self.model) if self.model is not None else contextlib.nullcontext():
                direction = self._direction(point)
        finally:
            point.move(None, force=True)
            self.last_evaluations = point.evaluations
        if direction is None or not all_finite(direction):
            return loss
        if len(params) != len(every):
            taking_part = {id(p) for p in params}
            for p in every:
                if id(p) not in taking_part:
                    p.grad = None  # a later closure call may have given it a gradient; it does not take part
        for p, d in zip(params, direction):
            p.grad = d
        self.base.step()
        self.last_step_skipped = False
        self._after_step()
        return loss

    # ---- what subclasses implement
    @abc.abstractmethod
    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        """The direction to hand to the base optimizer (one tensor per ``point.params``), or None to skip."""

    def _after_step(self) -> None:
        """Called after a successful base step (IGNITE's dual update)."""
