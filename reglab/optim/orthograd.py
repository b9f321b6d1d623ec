"""⊥Grad: gradients projected orthogonally to their weights before any base optimizer's step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.validation import Bool
from reglab.optim.base import OptimizerWrapper
from reglab.optim.registry import REGISTRY

__all__ = ["OrthoGrad", "orthogonal_gradient"]


@REGISTRY.register("ortho_grad")
class OrthoGrad(OptimizerWrapper):
    """⊥Grad: project each gradient orthogonally to its weights, rescale, then take the base step.

    For every parameter tensor ``w`` with gradient ``g`` (both flattened)::

        g_perp = g - (<w, g> / <w, w>) w
        g     <- g_perp * ||g|| / ||g_perp||      (rescale=True, the official code)
        g     <- g_perp                           (rescale=False, the paper's formula)
        base.step()

    The projection removes the naive-loss-minimization direction, the part of
    the gradient that only scales the weights (and so the logits) along
    themselves; without it, softmax cross-entropy drifts to Softmax Collapse and
    grokking is delayed. The rescaling to the original gradient norm is
    verified against the authors' ``orthograd.py`` (official repository
    github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability, read in
    the fork EIFY/grokking-at-the-edge-of-numerical-stability, which the paper's
    ``grokking_experiments.py`` uses); that code adds ``1e-30`` to both
    denominators, while here the two degenerate cases are explicit: ``w = 0``
    leaves ``g`` unchanged and ``g`` parallel to ``w`` (``g_perp = 0``) gives a zero
    gradient. The gradients are modified in place (``p.grad`` holds ``g_perp``
    after the step), as in the official code. With plain SGD the step is
    orthogonal to ``w``; momentum, adaptive scaling and weight decay of the base
    act on the projected gradients, so their steps need not be.

    A param group with ``"ortho_grad": False`` is left alone (the official code's
    ``regular`` count of leading groups does the same by position);
    ``"ortho_grad_rescale"`` holds each group's ``rescale``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = OrthoGrad(model.parameters(), base={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", 2025
        (arXiv 2501.04697). Usual setting: AdamW or SGD, weight decay 0, on modular arithmetic.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out);
            the base must take one gradient per step.
        rescale: rescale ``g_perp`` to the norm of ``g`` (default, official code).
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (AdamW).

    Raises:
        ConfigError: ``base`` is not an optimizer, needs a closure, or ``rescale`` is not a bool.
    """

    constraints: ClassVar = {"rescale": Bool()}
    prefix = "ortho_grad_"

    def __init__(self, params: Any, *, rescale: bool = True, base: str | Mapping[str, Any] = "adamw"):
        super().__init__(params, base, {"rescale": rescale})
        self._require_plain_base("(which projects the gradients before the base step)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Project the gradients, then take the base optimizer's step (``closure`` is passed to it)."""
        for group in self.param_groups:
            if not group.get("ortho_grad", True):
                continue
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(orthogonal_gradient(p.detach(), p.grad, rescale=group["ortho_grad_rescale"]))
        return self.base.step(closure)


def orthogonal_gradient(w: Tensor, g: Tensor, *, rescale: bool = True) -> Tensor:
    """``g - (<w, g> / <w, w>) w`` on the flattened tensors, rescaled to ``||g||`` when ``rescale``.

    ``w = 0`` returns ``g``; ``g`` parallel to ``w`` returns zeros. Computes without
    host synchronization (``torch.where`` on the degenerate cases).
    """
    wf, gf = w.reshape(-1), g.reshape(-1)
    wsq = torch.dot(wf, wf)
    proj = torch.where(wsq > 0, torch.dot(wf, gf) / torch.where(wsq > 0, wsq, 1), 0)
    perp = gf - proj * wf
    if rescale:
        perp_norm = torch.linalg.vector_norm(perp)
        scale = torch.where(perp_norm > 0, torch.linalg.vector_norm(gf) / torch.where(perp_norm > 0, perp_norm, 1), 0)
        perp = perp * scale
    return perp.view_as(g)
