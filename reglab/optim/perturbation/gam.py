"""Gradient norm Aware Minimization (GAM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from reglab.core.validation import Float
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.vectors import ascent_offsets, orthogonal_part
from reglab.optim.registry import REGISTRY


@REGISTRY.register("gam")
class GAM(PerturbationOptimizer):
    """Gradient norm Aware Minimization (GAM), the accelerated first-order form of the authors' code.

    The paper penalizes the first-order flatness ``rho * max_{||d|| <= rho}
    ||grad L(w + d)||``; its gradient needs ``grad ||grad L|| = H g / ||g||``,
    which the released code approximates by a finite difference of radius
    ``rho'`` (README of xxgege/GAM). The released update, reproduced here::

        g0 = grad L(w)
        g1 = grad L(w + rho' g0/||g0||)                  # (g1 - g0)/rho' ~ grad ||grad L||(w)
        h  = g1 - g0
        w_adv = w + rho h / ||h||                         # ascent on the gradient norm
        g2 = grad L(w_adv)
        g3 = grad L(w_adv + rho' g2/||g2||)
        u  = alpha g1 + (1 - alpha) g3                    # update direction
        m  = g0 + (1 - beta) g2                           # reference direction
        m_perp = m - cos(m, u) ||m|| u/||u||              # part of m orthogonal to u
        w  <- base_step(w, u - gamma m_perp)

    (every ``/||.||`` adds 1e-12 to the norm). Four forward/backward passes per
    step. The names map to the code as ``rho`` = ``grad_norm_rho``, ``rho_prime``
    = ``grad_rho``, ``alpha`` = ``grad_beta_1``, ``beta`` = ``grad_beta_0``,
    ``gamma`` = ``grad_gamma``, with the code's ``grad_beta_3 = 1 - alpha`` and
    ``grad_beta_2 = 1 - beta``; the defaults are the code's CIFAR-100/ResNet
    values. As in the code, ``m`` weights ``g0`` by 1, not by ``beta``. When
    ``rho = rho_prime = 0`` all four gradients coincide and the step is the
    base step on ``g0``.

    Example:
        >>> import torch
        >>> from reglab.optim import GAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = GAM(torch.optim.SGD(model.parameters(), lr=0.1))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.last_evaluations
        4

    References:
        Zhang, Xu, Yu, Zou, Cui. "Gradient Norm Aware Minimization Seeks
        First-Order Flatness and Improves Generalization", CVPR 2023; code
        github.com/xxgege/GAM (``gam/gam.py``, ``main_cifar.py``).

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        rho: radius of the gradient-norm ascent (code default 0.2).
        rho_prime: radius of the finite-difference / SAM steps (0.02-0.04 in the code).
        alpha: weight of ``g1`` in the update, ``1 - alpha`` on ``g3`` (0.1-0.6 in the code).
        beta: ``1 - beta`` weights ``g2`` in the reference direction (0.1-0.5 in the code).
        gamma: weight of the orthogonal correction (0.03-0.05 in the code).
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: a negative radius or ``gamma``, ``alpha`` or ``beta`` outside [0, 1],
            or a bad base optimizer / model.
    """

    constraints: ClassVar = {
        "rho": Float(0.0),
        "rho_prime": Float(0.0),
        "alpha": Float(0.0, 1.0),
        "beta": Float(0.0, 1.0),
        "gamma": Float(0.0),
    }
    prefix = "gam_"

    def __init__(
        self,
        params: Any,
        rho: float = 0.2,
        rho_prime: float = 0.02,
        alpha: float = 0.6,
        beta: float = 0.5,
        gamma: float = 0.03,
        *,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        super().__init__(
            params,
            base,
            {"rho": rho, "rho_prime": rho_prime, "alpha": alpha, "beta": beta, "gamma": gamma},
            model=model,
        )

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g0 = point.grad
        if d["rho"] == 0.0 and d["rho_prime"] == 0.0:
            return g0
        params = point.params
        g1 = point.grad_at(ascent_offsets(params, g0, d["rho_prime"]))
        if g1 is None:
            return None
        adv = ascent_offsets(params, [a - b for a, b in zip(g1, g0)], d["rho"])
        g2 = point.grad_at(adv)
        if g2 is None:
            return None
        g3 = point.grad_at([a + b for a, b in zip(adv, ascent_offsets(params, g2, d["rho_prime"]))])
        if g3 is None:
            return None
        u = [a * d["alpha"] + b * (1.0 - d["alpha"]) for a, b in zip(g1, g3)]
        m = [a + b * abs(1.0 - d["beta"]) for a, b in zip(g0, g2)]
        m_perp = orthogonal_part(m, u)
        return [a - b * d["gamma"] for a, b in zip(u, m_perp)]
