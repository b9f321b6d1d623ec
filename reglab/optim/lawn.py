"""LAWN: logit-attenuating weight normalization, a wrapper that holds weight norms fixed after a warm-up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from reglab.core.validation import Bool, Int, OneOf
from reglab.optim.base import OptimizerWrapper
from reglab.optim.registry import REGISTRY

__all__ = ["LAWN"]


@REGISTRY.register("lawn")
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

    The warm-up is counted in steps (the paper counts epochs: pass
    ``epochs * steps_per_epoch``). The update is not checked against the
    paper's text or code (see ``docs/provenance.md``).

    Example:
        >>> body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
        >>> groups = [{"params": body.parameters(), "lawn": False}, {"params": head.parameters()}]
        >>> opt = LAWN(groups, warmup_steps=100, base={"name": "adam", "lr": 1e-3})

    References:
        Gupta, Ramanath, Shi, Ramachandran, Zhou, Zhou & Keerthi, "Logit Attenuating Weight
        Normalization", 2021 (arXiv 2108.05839). Usual setting: Adam with large batches, a warm-up of a
        few epochs, the layers after the last batch norm.

    Args:
        params: the parameters or param groups, or a constructed base optimizer (then ``base`` is left out).
        warmup_steps: steps taken freely before the norms are frozen, >= 0 (one value for all groups).
        project_gradient: also remove the gradients' radial components before the base step.
        apply_to: ``"matrices"`` (``ndim >= 2``) or ``"all"``; a group's ``"lawn"`` key overrides it.
        base: the base optimizer by registry name or ``{"name": ..., **kwargs}`` mapping (Adam).

    Raises:
        ConfigError: a bad argument, or ``project_gradient`` with a base that needs a closure.
    """

    constraints: ClassVar = {
        "warmup_steps": Int(0),
        "project_gradient": Bool(),
        "apply_to": OneOf(("matrices", "all")),
    }
    prefix = "lawn_"

    def __init__(
        self,
        params: Any,
        *,
        warmup_steps: int = 0,
        project_gradient: bool = False,
        apply_to: str = "matrices",
        base: str | Mapping[str, Any] = "adam",
    ):
        hyper = {"warmup_steps": warmup_steps, "project_gradient": project_gradient, "apply_to": apply_to}
        super().__init__(params, base, hyper)
        if any(group["lawn_project_gradient"] for group in self.param_groups):
            self._require_plain_base("with project_gradient=True")
        self.steps_taken = 0
        self.norms: dict[int, Tensor] = {}  # flat parameter index -> frozen norm

    def _constrained(self) -> list[tuple[int, Tensor, dict[str, Any]]]:
        out, i = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                flag = group.get("lawn")
                if flag is None:
                    flag = group["lawn_apply_to"] == "all" or p.ndim >= 2
                if flag:
                    out.append((i, p, group))
                i += 1
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Take the base step; once warm-up is over, project the constrained weights back to their norms."""
        warmup_steps = self.common("warmup_steps")
        if self.steps_taken < warmup_steps:
            self.steps_taken += 1
            return self.base.step(closure)
        if self.steps_taken == warmup_steps and not self.norms:
            for i, p, _ in self._constrained():
                norm = torch.linalg.vector_norm(p.detach())
                if norm > 0:
                    self.norms[i] = norm.clone()
        targets = [(p, self.norms[i], group) for i, p, group in self._constrained() if i in self.norms]
        for p, _, group in targets:
            if group["lawn_project_gradient"] and p.grad is not None:
                w = p.detach()  # in place on p.grad itself (a reshape of a strided grad could copy)
                p.grad.sub_(w * (torch.sum(w * p.grad) / torch.sum(w * w)))
        loss = self.base.step(closure)
        for p, norm, _ in targets:
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
