"""Gradient and weight wrappers around any optimizer, and the CLASSP optimizer.

- :class:`OptimizerWrapper`: the base of every wrapper (these, SPECTRA, and the
  SAM family's :class:`~reglab.optim.perturbation.PerturbationOptimizer`). It
  holds a constructed base optimizer and delegates ``param_groups``, ``state``,
  ``defaults``, ``zero_grad``, ``add_param_group``, ``state_dict`` and
  ``load_state_dict`` to it, so LR schedulers and checkpoints see the base's
  groups and state.
- :class:`OrthoGrad` (⊥Grad): removes from each gradient its component along the
  weights before the base step (Prieto et al., 2025).
- :class:`LAWN`: after a free warm-up, holds each constrained weight's norm fixed
  by projecting after every base step (Gupta et al., 2021).
- :class:`CLASSP`: an AdaGrad-like optimizer with a gradient threshold for
  continual learning (Ludwig, 2024); not a wrapper.

Registered as ``ortho_grad``, ``lawn`` (factories taking ``params, ...,
base=...``) and ``classp`` (the class).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from reglab.core.errors import ConfigError
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.optim.registry import REGISTRY, build_base

__all__ = ["CLASSP", "LAWN", "OptimizerWrapper", "OrthoGrad", "lawn", "ortho_grad", "orthogonal_gradient"]

#: Key under which a wrapper's own state is kept in its ``state_dict()``, beside the base's ``state`` and
#: ``param_groups``.
WRAPPER_KEY = "wrapper"


class OptimizerWrapper(torch.optim.Optimizer):
    """Base class of optimizers that wrap a constructed base optimizer.

    ``param_groups``, ``state`` and ``defaults`` are properties that read (and
    assign) the base's, so an LR scheduler built on the wrapper changes the
    base's learning rates and ``zero_grad``/``add_param_group`` act on the base.
    ``state_dict()`` is the base's state dict (``state``, ``param_groups``) plus
    one entry, ``"wrapper"``, holding what the wrapper itself keeps (see
    :meth:`_wrapper_state`); ``load_state_dict`` accepts that (after
    :meth:`_check_wrapper_state` has accepted it), or a plain state dict of the
    base. ``requires_closure`` is the base's, so
    :func:`reglab.train.train_step` drives a wrapped SAM-like optimizer with a
    closure; a subclass that re-evaluates the loss itself (the SAM family)
    sets ``requires_closure = True``. Subclasses implement ``step``.

    Per-parameter state of a wrapper is keyed by the parameter's position in
    the flat list of the base's parameters (the same order torch's state dicts
    use), never stored in the base's ``state`` (optimizers such as Adam
    initialize themselves when ``state[p]`` is empty).

    Args:
        base: the optimizer to wrap.

    Raises:
        ConfigError: ``base`` is not a ``torch.optim.Optimizer``.
    """

    def __init__(self, base: torch.optim.Optimizer):
        if not isinstance(base, torch.optim.Optimizer):
            raise ConfigError(
                f"base must be a constructed torch.optim.Optimizer (e.g. torch.optim.SGD(params, lr=0.1)), "
                f"got {type(base).__name__}; registry factories build it from a name or a mapping"
            )
        self.base = base
        # torch.optim.Optimizer.__init__ would create fresh param_groups/state; only its hook tables are needed.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # --- delegation -------------------------------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.base.defaults = value

    @property
    def requires_closure(self) -> bool:
        """Whether ``step`` needs a closure: true when the base needs one."""
        from reglab.optim import requires_closure  # the package imports this module

        return requires_closure(self.base)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.base.state_dict())
        state[WRAPPER_KEY] = self._wrapper_state()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        state = dict(state_dict)
        own = state.pop(WRAPPER_KEY, None)
        own = dict(own) if own is not None else {}
        self._check_wrapper_state(own)  # before the base changes, so a refused state dict changes nothing
        self.base.load_state_dict(state)
        self._load_wrapper_state(own)

    def _wrapper_state(self) -> dict[str, Any]:
        """What the wrapper keeps besides the base (tensors are cloned); override with the loader."""
        return {}

    def _check_wrapper_state(self, state: dict[str, Any]) -> None:
        """Raise ``ConfigError`` if :meth:`_wrapper_state`'s output ``state`` cannot be loaded into this wrapper."""

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_wrapper_state`'s output (an empty dict: a plain base state dict was loaded)."""

    def _flat_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()}base={self.base!r})"

    def _extra_repr(self) -> str:
        return ""

    def _require_plain_base(self, why: str) -> None:
        if self.requires_closure:
            raise ConfigError(
                f"{type(self).__name__} {why} cannot wrap {type(self.base).__name__}, which re-evaluates the loss "
                "inside step (requires_closure=True) and so recomputes the gradients after the wrapper has "
                "changed them; use a base optimizer that takes one gradient per step"
            )


# --- ⊥Grad ------------------------------------------------------------------------------------------------


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
    ``regular`` count of leading groups does the same by position).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = OrthoGrad(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0))
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability", 2025
        (arXiv 2501.04697). Usual setting: AdamW or SGD, weight decay 0, on modular arithmetic.

    Args:
        base: the optimizer that takes the step; it must take one gradient per step.
        rescale: rescale ``g_perp`` to the norm of ``g`` (default, official code).

    Raises:
        ConfigError: ``base`` is not an optimizer, needs a closure, or ``rescale`` is not a bool.
    """

    def __init__(self, base: torch.optim.Optimizer, *, rescale: bool = True):
        super().__init__(base)
        check_bool("rescale", rescale)
        self.rescale = rescale
        self._require_plain_base("(which projects the gradients before the base step)")

    def _extra_repr(self) -> str:
        return f"rescale={self.rescale}, "

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Project the gradients, then take the base optimizer's step (``closure`` is passed to it)."""
        for group in self.param_groups:
            if not group.get("ortho_grad", True):
                continue
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(orthogonal_gradient(p.detach(), p.grad, rescale=self.rescale))
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


# --- LAWN -------------------------------------------------------------------------------------------------


class LAWN(OptimizerWrapper):
    """LAWN: after a free warm-up, keep each constrained weight's norm at its end-of-warm-up value.

    Update (step count ``t`` from 0)::

        t <  warmup_steps:  base.step()                                   (free phase)
        t == warmup_steps:  c_l = ||W_l|| for every constrained W_l       (norms frozen)
        t >= warmup_steps:  g_l <- g_l - (<g_l, W_l> / ||W_l||^2) W_l     (project_gradient=True only)
                            base.step()
                            W_l <- c_l W_l / ||W_l||                      (projection onto the sphere)

    Norms are Frobenius norms of the whole tensor. Constraining the weights of
    the final homogeneous sub-network (the layers after the last
    normalization layer, which set the scale of the logits) stops the logits
    and the weights from growing, so the loss cannot shrink by scaling alone
    and the network stays "adaptive". Which parameters are constrained:
    ``apply_to="matrices"`` (default) takes those with ``ndim >= 2`` (weights,
    not biases), ``"all"`` every parameter; a param group's ``"lawn"`` key
    (True/False) overrides this for its parameters, which is how to select the
    final sub-network. A parameter whose norm is 0 at the end of warm-up, or
    that has no gradient at a step, is left as the base set it.

    Source: the reglab catalog's row for the paper (the paper's own algorithm
    and code were not available to check): the update above and the optional
    radial-gradient removal are from that row; the warm-up is counted in steps
    (the paper counts epochs: pass ``epochs * steps_per_epoch``).

    Example:
        >>> body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
        >>> groups = [{"params": body.parameters(), "lawn": False}, {"params": head.parameters()}]
        >>> opt = LAWN(torch.optim.Adam(groups, lr=1e-3), warmup_steps=100)

    References:
        Gupta, Ramanath, Shi, Ramachandran, Zhou, Zhou & Keerthi, "Logit Attenuating Weight
        Normalization", 2021 (arXiv 2108.05839). Usual setting: Adam with large batches, a warm-up of a
        few epochs, the layers after the last batch norm.

    Args:
        base: the optimizer that takes the step.
        warmup_steps: steps taken freely before the norms are frozen, >= 0.
        project_gradient: also remove the gradients' radial components before the base step.
        apply_to: ``"matrices"`` (``ndim >= 2``) or ``"all"``; a group's ``"lawn"`` key overrides it.

    Raises:
        ConfigError: a bad argument, or ``project_gradient`` with a base that needs a closure.
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        *,
        warmup_steps: int = 0,
        project_gradient: bool = False,
        apply_to: str = "matrices",
    ):
        super().__init__(base)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        check_bool("project_gradient", project_gradient)
        self.project_gradient = project_gradient
        self.apply_to = check_choice("apply_to", apply_to, ("matrices", "all"))
        if project_gradient:
            self._require_plain_base("with project_gradient=True")
        self.steps_taken = 0
        self.norms: dict[int, Tensor] = {}  # flat parameter index -> frozen norm

    def _extra_repr(self) -> str:
        return (
            f"warmup_steps={self.warmup_steps}, project_gradient={self.project_gradient}, apply_to={self.apply_to!r}, "
        )

    def _constrained(self) -> list[tuple[int, Tensor]]:
        out, i = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                flag = group.get("lawn")
                if flag is None:
                    flag = self.apply_to == "all" or p.ndim >= 2
                if flag:
                    out.append((i, p))
                i += 1
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Take the base step; once warm-up is over, project the constrained weights back to their norms."""
        if self.steps_taken < self.warmup_steps:
            self.steps_taken += 1
            return self.base.step(closure)
        if self.steps_taken == self.warmup_steps and not self.norms:
            for i, p in self._constrained():
                norm = torch.linalg.vector_norm(p.detach())
                if norm > 0:
                    self.norms[i] = norm.clone()
        targets = [(p, self.norms[i]) for i, p in self._constrained() if i in self.norms]
        if self.project_gradient:
            for p, _ in targets:
                if p.grad is not None:  # in place on p.grad itself (a reshape of a strided grad could copy)
                    w = p.detach()
                    p.grad.sub_(w * (torch.sum(w * p.grad) / torch.sum(w * w)))
        loss = self.base.step(closure)
        for p, norm in targets:
            if p.grad is None:
                continue
            current = torch.linalg.vector_norm(p.detach())
            if current > 0:
                p.mul_(norm.to(p.dtype) / current)
        self.steps_taken += 1
        return loss

    def _wrapper_state(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken, "norms": {i: n.clone() for i, n in self.norms.items()}}

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        self.steps_taken = int(state.get("steps_taken", 0))
        self.norms = {int(i): torch.as_tensor(n).clone() for i, n in state.get("norms", {}).items()}


# --- CLASSP -----------------------------------------------------------------------------------------------


@REGISTRY.register("classp")
class CLASSP(torch.optim.Optimizer):
    """CLASSP: a thresholded, generalized AdaGrad for continual learning.

    Per weight ``i`` at step ``t``, with ``S_i`` the sum of ``|g_i|^p`` over the
    steps at which weight ``i`` was updated (persisting across tasks)::

        if g_i^2 > threshold:
            w_i <- w_i - lr * g_i / (eps + S_i)^(1/p)       S_i: the sum before this step (include_current=False)
            S_i <- S_i + |g_i|^p
        else:
            w_i unchanged, S_i unchanged

    That is the catalog's rule ``w_{i,t+1} = w_{i,t} - alpha g_{i,t} / (eps +
    sum_{k<t} |g_{i,k}|^p)^(1/p)``, applied only where ``g_{i,t}^2 > threshold``
    (taken from the paper body, arXiv 2405.09637). Two readings are ours: the
    sum runs over the steps at which the weight was updated (as in the author's
    code, and as "weights that have received many updates should have lower
    learning rates" says), and ``include_current=True`` adds the current
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
        lr = check_float("lr", lr, 0.0)
        threshold = check_float("threshold", threshold, 0.0)
        power = check_float("power", power, 0.0, low_open=True)
        eps = check_float("eps", eps, 0.0, low_open=True)
        check_bool("include_current", include_current)
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


# --- registry factories -----------------------------------------------------------------------------------


@REGISTRY.register("ortho_grad")
def ortho_grad(params: Iterable[Any], *, rescale: bool = True, base: str | Mapping[str, Any] = "adamw") -> OrthoGrad:
    """⊥Grad (Prieto et al., 2025): gradients projected orthogonal to the weights, then any base optimizer."""
    return OrthoGrad(build_base(params, base), rescale=rescale)


@REGISTRY.register("lawn")
def lawn(
    params: Iterable[Any],
    *,
    warmup_steps: int = 0,
    project_gradient: bool = False,
    apply_to: str = "matrices",
    base: str | Mapping[str, Any] = "adam",
) -> LAWN:
    """LAWN (Gupta et al., 2021): after warm-up, weight norms held fixed by projection after each base step."""
    return LAWN(
        build_base(params, base), warmup_steps=warmup_steps, project_gradient=project_gradient, apply_to=apply_to
    )
