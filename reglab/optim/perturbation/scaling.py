"""fp16 gradient scaling for optimizers that evaluate the loss several times per step.

``torch.amp.GradScaler`` unscales and checks the gradients of an optimizer's
``param_groups`` once per ``scaler.step``; a perturbation optimizer takes
several gradients per step, each of which must be unscaled before it is used
(the ascent direction and its norm are those of the true gradient) and checked
for inf/NaN.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["Unscaler"]


class _GradientSet:
    """What ``GradScaler.unscale_`` reads from an optimizer: ``param_groups``. One per closure evaluation, so the
    scaler unscales (and checks for inf/NaN) the gradients of every pass, and ``update`` sees every pass's check."""

    def __init__(self, params: list[Tensor]):
        self.param_groups = [{"params": params}]


class Unscaler:
    """Unscales the gradients of each closure evaluation with a ``torch.amp.GradScaler``.

    ``__call__(params)`` divides the gradients by the scale in place (one fused kernel per device and dtype, the
    scaler's own) and returns whether they were all finite. ``update()`` updates the scaler once, growing or
    backing off its scale from every check made since the last update.
    """

    def __init__(self, scaler: Any):
        self.scaler = scaler
        self._sets: list[_GradientSet] = []  # kept alive: the scaler keys its per-call records by id()

    def _found_inf(self, grads: _GradientSet) -> dict[Any, Tensor]:
        # the scaler's record of its inf/NaN check of one unscale_ call (a 1-element tensor per device)
        return self.scaler._per_optimizer_states[id(grads)]["found_inf_per_device"]

    def __call__(self, params: list[Tensor]) -> bool:
        grads = _GradientSet(params)
        self._sets.append(grads)
        self.scaler.unscale_(grads)
        return not any(bool(v.item()) for v in self._found_inf(grads).values())

    def update(self) -> None:
        if any(self._found_inf(s) for s in self._sets):  # update() needs at least one recorded check
            self.scaler.update()
        self._sets.clear()
