"""Sharpness-Aware Minimization (SAM) and its adaptive form (ASAM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from reglab.core.validation import Bool, Float
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.vectors import ascent_offsets, ascent_scale
from reglab.optim.registry import REGISTRY


@REGISTRY.register("sam")
class SAM(PerturbationOptimizer):
    """Sharpness-Aware Minimization (SAM); ``adaptive=True`` gives ASAM.

    Update (g(w) the minibatch gradient)::

        g     = grad L(w)
        T     = |w| + eta  (elementwise)  if adaptive  else  1
        e     = rho * T^2 g / (||T g|| + 1e-12)        # one norm over all parameters
        g_sam = grad L(w + e)
        w     <- base_step(w, g_sam)                   # e is removed first

    Two forward/backward passes per step. The ``1e-12``, the set of parameters
    (those with a gradient) and ASAM's ``T^2 g / ||T g||`` follow davda54/sam.
    SamsungLabs/ASAM adds ``eta`` (0.01 there) and applies ``T`` to weights
    only (biases use ``T = 1``); here ``T`` applies to every parameter.

    Example:
        >>> import torch
        >>> from reglab.optim import SAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.last_evaluations
        2

    References:
        Foret, Kleiner, Mobahi, Neyshabur. "Sharpness-Aware Minimization for
        Efficiently Improving Generalization", ICLR 2021.
        Kwon, Kim, Park, Choi. "ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks", ICML 2021.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        rho: radius of the perturbation; usual 0.01-0.1 for SAM (0.05 default),
            0.5-2 for ASAM.
        adaptive: ASAM's elementwise scaling ``T = |w| + eta``.
        eta: ASAM's offset inside ``T`` (0 as in davda54/sam; 0.01 in SamsungLabs/ASAM).
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed pass must not update.

    Raises:
        ConfigError: ``rho < 0``, ``eta < 0``, ``adaptive`` not a bool, or a bad base optimizer / model.
    """

    constraints: ClassVar = {"rho": Float(0.0), "adaptive": Bool(), "eta": Float(0.0)}
    prefix = "sam_"

    def __init__(
        self,
        params: Any,
        rho: float = 0.05,
        *,
        adaptive: bool = False,
        eta: float = 0.0,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        super().__init__(params, base, {"rho": rho, "adaptive": adaptive, "eta": eta}, model=model)

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        if d["adaptive"]:
            return point.grad_at(ascent_offsets(point.params, point.grad, d["rho"], adaptive=True, eta=d["eta"]))
        return point.grad_at(point.grad, scale=ascent_scale(point.grad, d["rho"]))  # w + rho g / (||g|| + 1e-12)


@REGISTRY.register("asam")
class ASAM(SAM):
    """Adaptive SAM (Kwon et al., 2021): SAM with T = |w| + eta; defaults rho=0.5, eta=0.01 of SamsungLabs/ASAM.

    :class:`SAM` with ``adaptive=True`` and the defaults of the reference code
    (SamsungLabs/ASAM): ``rho = 0.5``, ``eta = 0.01``.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        rho: radius of the perturbation (0.5-2 usual).
        eta: the offset inside ``T = |w| + eta``.
        base: the base optimizer by registry name or mapping (SGD).
        model: module whose BatchNorm running statistics the perturbed pass must not update.
    """

    @classmethod
    def hyperparameter_constraints(cls) -> dict:
        """SAM's rules without ``adaptive``, which is always True here."""
        return {k: v for k, v in SAM.constraints.items() if k != "adaptive"}

    def __init__(
        self,
        params: Any,
        rho: float = 0.5,
        *,
        eta: float = 0.01,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        super().__init__(params, rho, adaptive=True, eta=eta, base=base, model=model)
