"""SPECTRA: spectral clipping of a base optimizer's updates (and optionally of its gradients).

Jiang, Semenov & Stich, "Enhancing LLM Training via Spectral Clipping", 2026
(arXiv 2603.14315; reference code github.com/mlolab/llm-spectral-clipping,
``src/optim/spectra.py``). Registered as ``spectra``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.validation import Float, Int, Nullable, OneOf
from reglab.linalg.spectral_clip import soft_spectral_clip, spectral_clip
from reglab.optim.base import OptimizerWrapper
from reglab.optim.registry import REGISTRY

__all__ = ["SPECTRA"]


@REGISTRY.register("spectra")
class SPECTRA(OptimizerWrapper):
    """SPECTRA: clip the spectrum of any base optimizer's update to the spectral-norm ball of radius ``c``.

    For every matrix parameter ``X`` (``ndim >= 2``; a convolution kernel
    ``(out, in, *k)`` is read as the matrix ``(out, in * prod(k))``) with a
    gradient, with ``lr`` and ``lambda = weight_decay`` of its param group::

        G <- clip_pre(G)                             (pre_clip given: before the base step)
        X_base = base.step()                         (the base's new value)
        U = (X - X_base) / lr - lambda * X           (the base's update direction, weight decay removed)
        X <- (1 - lr * lambda) X - lr * clip_c(U)    (post-clip, weight decay re-applied decoupled)

    ``mode="hard"``: ``clip_c(U) = P diag(min(s_i, c)) Q^T`` for ``U = P diag(s) Q^T``,
    by SVD; a matrix whose update already has spectral norm <= c keeps the
    base's value bit for bit, so with ``c`` above every update's spectral norm
    SPECTRA is the base optimizer. ``mode="soft"``: ``clip_c(U) = (I + U U^T /
    c^2)^(-1/2) U`` (singular values ``s / sqrt(1 + s^2 / c^2)``), by ``ns_steps``
    coupled Newton–Schulz iterations as in the reference code (see
    :func:`reglab.linalg.spectral_clip.soft_spectral_clip`; an unconverged
    iteration only shrinks more, so ``||clip_c(U)||_2 < c`` still holds). In
    both modes the applied update satisfies ``||clip_c(U)||_2 <= c``, and with
    ``0 < lr * lambda <= 1`` the weights obey
    ``||X_k||_2 <= (1 - lr lambda)^k ||X_0||_2 + (1 - (1 - lr lambda)^k) c / lambda <= max(||X_0||_2, c / lambda)``
    (the paper's bound; post-clipping is a composite Frank–Wolfe step over the
    spectral-norm ball with weight regularization). Parameters with fewer than 2
    dimensions, or whose group has ``lr = 0``, keep the base's update.

    ``pre_clip`` (a threshold, or None) clips each matrix gradient's spectrum
    the same way before the base step, which removes the sparse spectral
    spikes of stochastic gradient noise.

    Departures from the reference code: no schedule of ``c`` (warm-up and decay
    schedules there; set the groups' ``"spectra_c"`` between steps for one), no
    ``sqrt(max(1, rows / cols))`` rescaling of the clipped update (it would break
    the bound above), the soft clip runs in the parameter's dtype (the reference
    casts to bfloat16), and a hard mode by SVD. Recovering ``U`` with the
    group's ``weight_decay`` as decoupled decay is exact for AdamW and plain
    SGD (where coupled and decoupled decay coincide); for bases that put the
    decay into their moments (Adam, SGD with momentum) it is the reference
    code's convention, not an identity.

    Example:
        >>> model = torch.nn.Linear(8, 4)
        >>> opt = SPECTRA(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1), c=1.0)
        >>> model(torch.randn(16, 8)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Jiang, Semenov & Stich, "Enhancing LLM Training via Spectral Clipping" (SPECTRA), 2026.
        Usual values: c ~ 1 (the reference code's default) with AdamW/Signum/AdEMAMix, soft mode,
        10 Newton–Schulz steps, weight decay 0.1.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        c: the spectral-norm cap on the update direction, > 0.
        mode: ``"hard"`` (SVD, ``min(s, c)``) or ``"soft"`` (Newton–Schulz, ``s / sqrt(1 + s^2/c^2)``).
        ns_steps: Newton–Schulz iterations of the soft mode, >= 1.
        pre_clip: threshold for clipping the gradients' spectra before the base step, > 0, or None.
        base: the base optimizer whose updates are clipped, by registry name or mapping (AdamW).

    Every argument but ``base`` is also a key of each param group (``"spectra_c"``, ...), so groups may differ.

    Raises:
        ConfigError: a bad argument, or ``pre_clip`` with a base that re-evaluates the loss inside step.
    """

    constraints: ClassVar = {
        "c": Float(0.0, low_open=True),
        "mode": OneOf(("hard", "soft")),
        "ns_steps": Int(1),
        "pre_clip": Nullable(Float(0.0, low_open=True)),
    }
    prefix = "spectra_"

    def __init__(
        self,
        params: Any,
        c: float = 1.0,
        *,
        mode: str = "hard",
        ns_steps: int = 10,
        pre_clip: float | None = None,
        base: str | Mapping[str, Any] = "adamw",
    ):
        super().__init__(params, base, {"c": c, "mode": mode, "ns_steps": ns_steps, "pre_clip": pre_clip})
        if any(group["spectra_pre_clip"] is not None for group in self.param_groups):
            self._require_plain_base("with pre_clip")

    @staticmethod
    def clip(M: Tensor, c: float, group: Mapping[str, Any]) -> Tensor | None:
        """``M`` (a parameter-shaped tensor) with its matrix's spectrum clipped at ``c`` in ``group``'s mode.

        Returns None in hard mode when the spectral norm is already <= c (nothing to change).
        """
        X = M.reshape(M.shape[0], -1)
        if group["spectra_mode"] == "hard":
            if torch.linalg.matrix_norm(X.float() if X.dtype in (torch.float16, torch.bfloat16) else X, ord=2) <= c:
                return None
            return spectral_clip(X, c).view_as(M)
        return soft_spectral_clip(X, c, steps=group["spectra_ns_steps"]).view_as(M)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Pre-clip the gradients (if asked), take the base step, then post-clip each matrix update."""
        matrices = [(p, group) for group in self.param_groups for p in group["params"] if p.ndim >= 2]
        for p, group in matrices:
            if group["spectra_pre_clip"] is not None and p.grad is not None:
                clipped = self.clip(p.grad, group["spectra_pre_clip"], group)
                if clipped is not None:
                    p.grad.copy_(clipped)
        before = [p.detach().clone() for p, _ in matrices]
        loss = self.base.step(closure)
        for (p, group), x0 in zip(matrices, before):
            lr = float(group["lr"])
            if p.grad is None or lr == 0:
                continue  # the base did not move it (no gradient), or there is no direction to recover
            decay = float(group.get("weight_decay", 0.0))
            update = (x0 - p) / lr - decay * x0
            clipped = self.clip(update, group["spectra_c"], group)
            if clipped is not None:
                p.copy_((1 - lr * decay) * x0 - lr * clipped)
        return loss
