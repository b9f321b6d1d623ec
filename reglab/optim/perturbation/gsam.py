"""Surrogate Gap Guided Sharpness-Aware Minimization (GSAM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from reglab.core.errors import ConfigError
from reglab.core.validation import Bool, Float, Nullable
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.vectors import ascent_offsets, orthogonal_part
from reglab.optim.registry import REGISTRY


@REGISTRY.register("gsam")
class GSAM(PerturbationOptimizer):
    """Surrogate Gap Guided Sharpness-Aware Minimization (GSAM): SAM's gradient minus a multiple of the orthogonal part.

    Update::

        g    = grad L(w)
        e    = rho_t * T^2 g / (||T g|| + 1e-12)      # SAM's perturbation (T as in SAM)
        g_p  = grad L(w + e)
        cos  = <g, g_p> / (||g|| ||g_p|| + 1e-12)
        g_perp = g - cos ||g|| g_p / (||g_p|| + 1e-12)  # part of g orthogonal to g_p
        w    <- base_step(w, g_p - alpha * g_perp)

    Descending ``g_p`` minimizes the perturbed loss; subtracting ``alpha *
    g_perp`` ascends the surrogate gap ``L(w + e) - L(w)`` along the direction
    orthogonal to ``g_p``, so the perturbed loss is not increased to first
    order. Follows ``perturb_weights`` and ``gradient_decompose`` of
    juntang-zhuang/GSAM. ``rho_t`` is constant unless ``rho_min`` is given; then
    it follows the base learning rate as in the paper's ImageNet runs (the
    reference ``ProportionScheduler``)::

        rho_t = rho_min + (rho - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)

    with ``lr_t`` the base optimizer's first-group learning rate at the step,
    clamped to ``[rho_min, rho]`` (the reference does not clamp). When ``rho_t
    = 0`` the step is the base step on ``g`` (both gradients coincide).

    Example:
        >>> import torch
        >>> from reglab.optim import GSAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = GSAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, alpha=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu.
        "Surrogate Gap Minimization Improves Sharpness-Aware Training"
        (GSAM: Surrogate Gap Guided Sharpness-Aware Minimization), ICLR 2022.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        rho: the perturbation radius (``rho_max`` when scheduled); usual 0.02-0.6.
        alpha: weight of the surrogate-gap ascent; usual 0.01-0.5 (0.1 default, ours).
        adaptive: ASAM's scaling of the perturbation (as in the reference).
        eta: offset inside ASAM's ``T``.
        rho_min: if given, ``rho_t`` follows the learning rate from ``rho_min`` to ``rho``.
        lr_max: the learning rate at which ``rho_t = rho`` (default: the base's current lr).
        lr_min: the learning rate at which ``rho_t = rho_min``.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed pass must not update.

    Raises:
        ConfigError: a negative radius or ``alpha``, ``rho_min > rho``, ``lr_max <= lr_min``
            with a schedule, or a bad base optimizer / model.
    """

    constraints: ClassVar = {
        "rho": Float(0.0),
        "alpha": Float(0.0),
        "adaptive": Bool(),
        "eta": Float(0.0),
        "rho_min": Nullable(Float(0.0)),
        "lr_max": Nullable(Float(0.0)),
        "lr_min": Float(0.0),
    }
    prefix = "gsam_"

    def __init__(
        self,
        params: Any,
        rho: float = 0.05,
        alpha: float = 0.1,
        *,
        adaptive: bool = False,
        eta: float = 0.0,
        rho_min: float | None = None,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        if rho_min is None and lr_max is not None:
            raise ConfigError("lr_max is only used with rho_min (the rho schedule); give rho_min too or drop lr_max")
        hyper = {"rho": rho, "alpha": alpha, "adaptive": adaptive, "eta": eta}
        hyper |= {"rho_min": rho_min, "lr_max": lr_max, "lr_min": lr_min}
        super().__init__(params, base, hyper, model=model)
        if rho_min is not None and lr_max is None:  # the schedule's top is the base's learning rate now
            lr_max = float(self.param_groups[0]["lr"])
            self.defaults["gsam_lr_max"] = lr_max
            for group in self.param_groups:
                if group["gsam_lr_max"] is None:
                    group["gsam_lr_max"] = lr_max
                self._check_group(group)
        self.last_rho: float | None = None

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        rho, rho_min, lr_max, lr_min = (group["gsam_" + k] for k in ("rho", "rho_min", "lr_max", "lr_min"))
        if rho_min is not None and rho_min > rho:
            raise ConfigError(f"rho_min must be in [0, {rho:g}] (at most rho), got {rho_min!r}")
        if rho_min is not None and lr_max is not None and lr_max <= lr_min:
            raise ConfigError(f"lr_max must be > lr_min for the rho schedule, got lr_max={lr_max!r}, lr_min={lr_min!r}")

    def current_rho(self) -> float:
        """``rho_t`` for the next step (from the base optimizer's current learning rate)."""
        d = self.hyperparameters
        if d["rho_min"] is None:
            return d["rho"]
        lr = float(self.param_groups[0]["lr"])
        value = d["rho_min"] + (d["rho"] - d["rho_min"]) * (lr - d["lr_min"]) / (d["lr_max"] - d["lr_min"])
        return min(max(value, d["rho_min"]), d["rho"])

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        rho = self.current_rho()
        self.last_rho = rho
        g = point.grad
        if rho == 0.0:
            return g
        g_p = point.grad_at(ascent_offsets(point.params, g, rho, adaptive=d["adaptive"], eta=d["eta"]))
        if g_p is None:
            return None
        g_perp = orthogonal_part(g, g_p)
        return [a - b * d["alpha"] for a, b in zip(g_p, g_perp)]
