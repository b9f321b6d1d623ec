"""CLASSP: a thresholded, generalized AdaGrad for continual learning (Ludwig, 2024)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.errors import ConfigError
from reglab.core.validation import Bool, Float
from reglab.optim.base import ConstrainedOptimizer
from reglab.optim.registry import REGISTRY

__all__ = ["CLASSP"]


@REGISTRY.register("classp")
class CLASSP(ConstrainedOptimizer):
    """CLASSP: a thresholded, generalized AdaGrad for continual learning.

    Per weight ``i`` at step ``t``, with ``S_i`` the sum of ``|g_i|^p`` over the
    steps at which weight ``i`` was updated (persisting across tasks)::

        if g_i^2 > threshold:
            w_i <- w_i - lr * g_i / (eps + S_i)^(1/p)       S_i: the sum before this step (include_current=False)
            S_i <- S_i + |g_i|^p
        else:
            w_i unchanged, S_i unchanged

    That is the paper's rule ``w_{i,t+1} = w_{i,t} - alpha g_{i,t} / (eps +
    sum_{k<t} |g_{i,k}|^p)^(1/p)``, applied only where ``g_{i,t}^2 > threshold``
    (arXiv 2405.09637). Two readings are ours: the sum runs over the steps at
    which the weight was updated (as in the author's code, and as "weights
    that have received many updates should have lower learning rates" says),
    and ``include_current=True`` adds the current
    ``|g_i|^p`` before dividing (the author's code, and AdaGrad's convention:
    with ``p = 2``, ``threshold = 0`` it is then AdaGrad with ``eps`` under the
    root). With ``include_current=False`` the first update of a weight is
    ``lr * g / eps^(1/p)``, so ``eps`` acts as an initial accumulator and should
    not be tiny (default 1). The author's code (github: "CLASSP_optimizer")
    departs from the paper in ways not followed here: it adds ``|g|`` rather
    than ``|g|^p``, and it gates whole tensors (``(g**2).any() > threshold``
    compares a bool with the threshold) rather than single weights.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = CLASSP(model.parameters(), lr=0.05, threshold=1e-4, power=2.0)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Ludwig, "CLASSP: a Biologically-Inspired Approach to Continual Learning through Adjustment
        Suppression and Sparsity Promotion", 2024 (arXiv 2405.09637). Author's defaults: lr 0.2,
        threshold 0.5, eps 1e-5, power 1 (with the current gradient included).

    Args:
        params: parameters or param groups.
        lr: the step size alpha, >= 0.
        threshold: a weight is updated only where ``g^2 > threshold``; >= 0.
        power: the exponent ``p`` of the accumulated gradient magnitudes, > 0.
        eps: added to the accumulator before the ``1/p`` root, > 0.
        include_current: add the current ``|g|^p`` to the accumulator before dividing.

    Raises:
        ConfigError: an argument is out of range or of the wrong type.
    """

    constraints: ClassVar = {
        "lr": Float(0.0),
        "threshold": Float(0.0),
        "power": Float(0.0, low_open=True),
        "eps": Float(0.0, low_open=True),
        "include_current": Bool(),
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.01,
        *,
        threshold: float = 0.0,
        power: float = 2.0,
        eps: float = 1.0,
        include_current: bool = False,
    ):
        defaults = {"lr": lr, "threshold": threshold, "power": power, "eps": eps, "include_current": include_current}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One CLASSP step on every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, threshold, power, eps = group["lr"], group["threshold"], group["power"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("CLASSP does not support sparse gradients")
                state = self.state[p]
                if "accumulator" not in state:
                    state["accumulator"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                acc = state["accumulator"]
                g = p.grad
                mask = g * g > threshold
                added = torch.where(mask, g.abs().pow(power), 0)
                if group["include_current"]:
                    acc.add_(added)
                    denom = (acc + eps).pow(1 / power)
                else:
                    denom = (acc + eps).pow(1 / power)
                    acc.add_(added)
                p.sub_(torch.where(mask, g / denom, 0), alpha=lr)
        return loss
