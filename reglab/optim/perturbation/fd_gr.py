"""Gradient regularization by finite differences (Karakida et al., 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from reglab.core.validation import Float, OneOf
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.registry import REGISTRY


@REGISTRY.register("fd_gr")
class FiniteDifferenceGR(PerturbationOptimizer):
    """Gradient regularization ``L + (gamma/2) ||grad L||^2`` with the Hessian-gradient product by finite differences.

    The exact gradient of the regularized objective is ``g + gamma H g`` with
    ``g = grad L(w)``; ``H g`` is replaced by a difference of gradients along
    ``g`` (no double backprop)::

        forward:   H g ~ (grad L(w + eps g) - g) / eps
                   step direction = (1 - gamma/eps) g + (gamma/eps) grad L(w + eps g)
        backward:  H g ~ (g - grad L(w - eps g)) / eps
                   step direction = (1 + gamma/eps) g - (gamma/eps) grad L(w - eps g)
        central:   H g ~ (grad L(w + eps g) - grad L(w - eps g)) / (2 eps)

    The forward and backward forms (two passes) are the paper's two
    finite-difference schemes and are first-order accurate: their error is ``(gamma eps / 2) D^3L[g, g] +
    O(gamma eps^2)``, with opposite signs. ``central`` (three passes, our
    addition) is second-order accurate. On a quadratic loss all three are
    exact. The forward form with ``eps = gamma`` is the gradient at ``w +
    gamma g``, an unnormalized SAM step. Computed as ``g + (gamma/eps) (g_+ - g)`` (same value, and exactly ``g``
    when ``gamma = 0``).

    Example:
        >>> import torch
        >>> from reglab.optim import FiniteDifferenceGR
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = FiniteDifferenceGR(torch.optim.SGD(model.parameters(), lr=0.1), gamma=0.01, eps=0.01)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Karakida, Takase, Hayase, Osawa. "Understanding Gradient Regularization
        in Deep Learning: Efficient Finite-Difference Computation and Implicit
        Bias", ICML 2023.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        gamma: weight of the squared gradient norm; usual 1e-3-1e-1 (0 gives the base optimizer).
        eps: finite-difference step along ``g`` (not normalized); usual comparable to ``gamma``.
        variant: ``"forward"`` (w + eps g), ``"backward"`` (w - eps g) or ``"central"``.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: ``gamma < 0``, ``eps <= 0``, an unknown ``variant``, or a bad base optimizer / model.
    """

    constraints: ClassVar = {
        "gamma": Float(0.0),
        "eps": Float(0.0, low_open=True),
        "variant": OneOf(("forward", "backward", "central")),
    }
    prefix = "fd_gr_"

    def __init__(
        self,
        params: Any,
        gamma: float = 0.01,
        eps: float = 0.01,
        variant: str = "forward",
        *,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        super().__init__(params, base, {"gamma": gamma, "eps": eps, "variant": variant}, model=model)

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g, eps = point.grad, d["eps"]
        if d["variant"] == "forward":
            g_plus = point.grad_at([gi * eps for gi in g])
            if g_plus is None:
                return None
            c = d["gamma"] / eps
            return [gi + (gp - gi) * c for gi, gp in zip(g, g_plus)]
        if d["variant"] == "backward":
            g_minus = point.grad_at([gi * -eps for gi in g])
            if g_minus is None:
                return None
            c = d["gamma"] / eps
            return [gi + (gi - gm) * c for gi, gm in zip(g, g_minus)]
        g_plus = point.grad_at([gi * eps for gi in g])
        g_minus = point.grad_at([gi * -eps for gi in g]) if g_plus is not None else None
        if g_minus is None:
            return None
        c = d["gamma"] / (2.0 * eps)
        return [gi + (gp - gm) * c for gi, gp, gm in zip(g, g_plus, g_minus)]
