"""IGNITE: training under a gradient-norm constraint by primal-dual steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from reglab.core.validation import Float, check_float
from reglab.optim.perturbation.engine import Closure, Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.vectors import NORM_EPS, global_norm
from reglab.optim.registry import REGISTRY


@REGISTRY.register("ignite")
class IGNITE(PerturbationOptimizer):
    """IGNITE: training under a gradient-norm (sharpness) constraint, by primal-dual steps with a multiplier.

    Problem: ``min_w L(w)  s.t.  rho ||grad G(w)|| <= epsilon``, where ``rho
    ||grad G||`` is the first-order proxy of the sharpness ``max_{||d|| <= rho}
    G(w + d) - G(w)``. In the authors' offline-optimization setting ``G`` is
    the surrogate's batch-mean output (pass ``constraint_closure`` to
    ``step``); by default ``G = L``, the loss of the closure. One step, with
    multiplier ``lambda >= 0``::

        g     = grad L(w);   c = grad G(w)   (= g when G = L)
        v     = c / (||c|| + 1e-12)
        hvp   = (grad G(w + r v) - c) / r            # ~ H_G c / ||c|| = grad ||grad G||
        w     <- base_step(w, g + lambda * rho * hvp)  # gradient of L + lambda (rho ||grad G|| - epsilon)
        lambda <- max(0, lambda + lr_lambda * (rho ||c|| - epsilon))

    The primal step uses the multiplier from before the step; the dual step
    uses ``||c||`` at the weights before the primal step. While ``lambda *
    rho = 0`` the finite-difference pass is skipped (one pass per step).

    The finite-difference gradient and the dual step ``lambda <- lambda +
    lr_lambda (rho ||grad G|| - epsilon)`` are meant to be those of the
    authors' code (github.com/cuong-dm/IGNITE,
    ``gradient_ascent_IGNITE/trainers.py``), not checked against it (see
    ``docs/provenance.md``); the clamp at 0, the order of the primal and dual
    steps, and every default value here are ours.

    Example:
        >>> import torch
        >>> from reglab.optim import IGNITE
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = IGNITE(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, epsilon=0.01, lr_lambda=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(2):
        ...     loss = opt.step(closure)
        >>> opt.lambda_ > 0
        True

    References:
        Dao, Nguyen, Truong, Hoang. "Incorporating Surrogate Gradient Norm to
        Improve Offline Optimization Techniques", NeurIPS 2024.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        rho: sharpness radius in the constraint ``rho ||grad G|| <= epsilon``.
        epsilon: the sharpness budget.
        lr_lambda: step size of the dual ascent on ``lambda``.
        fd_radius: radius ``r`` of the finite-difference Hessian-vector product.
        lambda_init: initial multiplier ``lambda_0 >= 0``.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (SGD).
        model: module whose BatchNorm running statistics the extra passes must not update.

    Raises:
        ConfigError: a negative ``rho``, ``epsilon``, ``lr_lambda`` or ``lambda_init``,
            ``fd_radius <= 0``, or a bad base optimizer / model.
    """

    constraints: ClassVar = {
        "rho": Float(0.0),
        "epsilon": Float(0.0),
        "lr_lambda": Float(0.0),
        "fd_radius": Float(0.0, low_open=True),
    }
    prefix = "ignite_"

    def __init__(
        self,
        params: Any,
        rho: float = 0.05,
        epsilon: float = 0.01,
        lr_lambda: float = 0.01,
        fd_radius: float = 0.01,
        lambda_init: float = 0.0,
        *,
        base: str | Mapping[str, Any] = "sgd",
        model: nn.Module | None = None,
    ):
        hyper = {"rho": rho, "epsilon": epsilon, "lr_lambda": lr_lambda, "fd_radius": fd_radius}
        super().__init__(params, base, hyper, model=model)
        self.lambda_ = check_float("lambda_init", lambda_init, 0.0)
        self.last_violation: float | None = None
        self._constraint_closure: Closure | None = None
        self._pending_violation: float | None = None

    def step(self, closure: Closure | None = None, constraint_closure: Closure | None = None) -> Any:  # type: ignore[override]
        """One primal-dual step.

        Args:
            closure: zeroes the gradients, computes the loss ``L``, calls backward, returns it.
            constraint_closure: the same for the constrained function ``G``
                (e.g. the mean surrogate output); None means ``G = L``.

        Returns:
            The loss of the first ``closure`` call.

        Raises:
            ConfigError: no closure was given.
        """
        self._constraint_closure = constraint_closure
        self._pending_violation = None
        try:
            return super().step(closure)
        finally:
            self._constraint_closure = None

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g = point.grad
        c = g if self._constraint_closure is None else point.grad_at(None, self._constraint_closure)
        if c is None:
            return None
        norm = global_norm(c)
        self._pending_violation = d["rho"] * float(norm) - d["epsilon"]
        weight = self.lambda_ * d["rho"]
        if weight == 0.0:
            return g
        r = d["fd_radius"]
        v = [ci * (r / (norm + NORM_EPS)) for ci in c]
        c_plus = point.grad_at(v, self._constraint_closure)
        if c_plus is None:
            return None
        coef = weight / r
        return [gi + (cp - ci) * coef for gi, cp, ci in zip(g, c_plus, c)]

    def _after_step(self) -> None:
        if self._pending_violation is None:
            return
        self.last_violation = self._pending_violation
        self.lambda_ = max(0.0, self.lambda_ + self.common("lr_lambda") * self._pending_violation)

    @classmethod
    def hyperparameter_constraints(cls) -> dict[str, Any]:
        """The group hyperparameters' rules and ``lambda_init``'s (the multiplier's start, kept as state)."""
        return {**cls.constraints, "lambda_init": Float(0.0)}

    def _wrapper_state(self) -> dict[str, Any]:
        return {"lambda": self.lambda_, "last_violation": self.last_violation}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        if state:  # empty: a plain base state dict was loaded
            self.lambda_ = float(state["lambda"])
            self.last_violation = state.get("last_violation")


# --------------------------------------------------------------------------- registry factories

Base = str | Mapping[str, Any]
