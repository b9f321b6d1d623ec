"""The shared machinery of the Muon family: argument rules, the AdamW side, momentum, the learning-rate ratio."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import (
    Bool,
    Constraint,
    Float,
    Int,
    Nullable,
    OneOf,
    Rule,
    check_bool,
    check_choice,
    check_float,
    check_table,
)
from reglab.linalg.newton_schulz import ns_schedule
from reglab.optim.base import ConstrainedOptimizer
from reglab.optim.orthogonal.routing import route_params

_NS_DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")
_ADJUST_LR = ("original", "match_rms_adamw")


# --- validation helpers ------------------------------------------------------------------------------------


def _check_betas(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return (
        check_float(f"{name}[0]", value[0], 0.0, 1.0, high_open=True),
        check_float(f"{name}[1]", value[1], 0.0, 1.0, high_open=True),
    )


def check_coefficients(name: str, value: Any) -> Any:
    try:
        ns_schedule(value, 1)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None
    return tuple(value) if isinstance(value, list) else value


def _check_ns_dtype(name: str, value: Any) -> str | None:
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    if value is None:
        return None
    return check_choice(name, value, _NS_DTYPES)


UNIT = Float(0.0, 1.0, high_open=True)
BETAS = Rule(_check_betas, ((0.9,), (0.9, 1.0), "0.9"))
NS_COEFFICIENTS = Rule(check_coefficients, ("no-such-preset", (1.0, 2.0)))
NS_DTYPE = Rule(_check_ns_dtype, ("int8", 1))

# --- shared kernels ----------------------------------------------------------------------------------------


def lr_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """Shape-dependent learning-rate factor of ``torch.optim.Muon`` for a ``rows x cols`` matrix.

    ``None`` or ``"original"`` (Jordan): ``sqrt(max(1, rows / cols))``;
    ``"match_rms_adamw"`` (Moonshot, "Muon is Scalable for LLM Training", 2025):
    ``0.2 sqrt(max(rows, cols))``, which gives the update the RMS of an AdamW step.
    """
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def _momentum_direction(buf: Tensor, grad: Tensor, momentum: float, nesterov: bool, *, ema: bool) -> Tensor:
    """Update ``buf`` in place and return the direction to orthogonalize.

    ``ema=True`` (Muon, NorMuon, AuON; torch's form): ``buf <- mu buf + (1 - mu) g``
    and ``g + mu (buf - g)`` with Nesterov, else ``buf``. ``ema=False`` (ROOT):
    ``buf <- mu buf + g`` and ``g + mu buf`` with Nesterov, else ``buf``.
    """
    if ema:
        buf.lerp_(grad, 1 - momentum)
        return grad.lerp(buf, momentum) if nesterov else buf
    buf.mul_(momentum).add_(grad)
    return grad.add(buf, alpha=momentum) if nesterov else buf


def _adamw_step(params: list[Tensor], state: Mapping[Tensor, dict[str, Any]], group: Mapping[str, Any]) -> None:
    """One ``torch.optim.AdamW`` step of ``params`` (each with a gradient), by torch's own functional kernel.

    The state has AdamW's keys and layout (``step`` a float32 scalar tensor), so the iterates are torch's to the
    bit, with torch's choice between its single-tensor and ``foreach`` implementations.
    """
    for p in params:
        if not state[p]:
            state[p]["step"] = torch.tensor(0.0, dtype=torch.float32)
            state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    beta1, beta2 = group["betas"]
    adamw(
        params,
        [p.grad for p in params],
        [state[p]["exp_avg"] for p in params],
        [state[p]["exp_avg_sq"] for p in params],
        [],
        [state[p]["step"] for p in params],
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )


def ns_compute_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """The Newton–Schulz compute dtype; ``"auto"`` is bfloat16 on accelerators and float32 on the CPU, where
    bfloat16 matrix products have no fast kernel on most processors (measured ~90x slower than float32)."""
    if name == "auto":
        return torch.bfloat16 if device.type != "cpu" else torch.float32
    return None if name is None else getattr(torch, name)


# --- the shared optimizer ----------------------------------------------------------------------------------


class OrthogonalOptimizer(ConstrainedOptimizer, abc.ABC):
    """Base class: matrix parameters get ``_direction``, the rest an AdamW step.

    Per step, for each matrix parameter ``W`` (viewed as ``rows x cols``) with
    gradient ``G``::

        D, s = self._direction(G, state, group)   # the subclass's orthogonalized direction and lr factor
        W <- (1 - lr * weight_decay) * W          # decoupled weight decay, with the unscaled lr
        W <- W - (lr * s) * D

    and ``torch.optim.AdamW``'s step for the others. Subclasses set
    ``constraints`` (the matrix groups' rules; ``adamw_constraints`` are the
    AdamW groups') and implement ``_direction``.
    ``step`` accepts an optional closure like every torch optimizer; the
    family never needs one (no ``requires_closure``).
    """

    adamw_constraints: ClassVar[Mapping[str, Constraint]] = {
        "lr": Float(0.0),
        "betas": BETAS,
        "eps": Float(0.0),
        "weight_decay": Float(0.0),
    }

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        adamw_lr: float,
        adamw_betas: tuple[float, float],
        adamw_eps: float,
        adamw_weight_decay: float,
    ):
        adamw = {"lr": adamw_lr, "betas": adamw_betas, "eps": adamw_eps, "weight_decay": adamw_weight_decay}
        self._adamw_defaults = {k: self.adamw_constraints[k]("adamw_" + k, v) for k, v in adamw.items()}
        super().__init__(route_params(params), defaults)

    @classmethod
    def hyperparameter_constraints(cls) -> dict[str, Constraint]:
        """The matrix update's rules, and the AdamW side's under their argument names (``adamw_lr``, ...)."""
        return {**cls.constraints, **{"adamw_" + k: rule for k, rule in cls.adamw_constraints.items()}}

    def group_constraints(self, group: Mapping[str, Any]) -> Mapping[str, Constraint]:
        """The matrix update's rules for a ``use_muon=True`` group, AdamW's for the others."""
        return self.constraints if group.get("use_muon", True) else self.adamw_constraints

    def _extend_defaults(self, extra: dict[str, Any]) -> None:
        """Add a subclass's matrix hyperparameters to the defaults and to every matrix group that lacks them."""
        extra = check_table(self.constraints, extra)
        self.defaults.update(extra)
        for group in self.param_groups:
            if group["use_muon"]:
                for key, value in extra.items():
                    group.setdefault(key, value)
                group.update(check_table(self.constraints, group))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``use_muon`` (inferred from the dimensions when absent) picks its update.

        Raises:
            ConfigError: mixed dimensions without ``use_muon``, a bad hyperparameter or a complex parameter.
            ShapeError: a ``use_muon=True`` group holds a parameter with fewer than 2 dimensions.
        """
        group = dict(param_group)
        params = group.get("params")
        params = [params] if isinstance(params, Tensor) else list(params if params is not None else ())
        group["params"] = params
        flag = group.get("use_muon")
        if flag is None:
            kinds = {p.ndim >= 2 for p in params}
            if len(kinds) > 1:
                raise ConfigError(
                    "a parameter group mixes matrices (>= 2-D) and other parameters; set use_muon=True or False "
                    "on it, or pass a plain parameter list (it is split by dimension)"
                )
            flag = kinds != {False}
        group["use_muon"] = check_bool("use_muon", flag)
        for p in params:
            if isinstance(p, Tensor) and p.is_complex():
                raise ConfigError(f"{type(self).__name__} does not support complex parameters")
        if flag:
            flat = [p for p in params if isinstance(p, Tensor) and p.ndim < 2]
            if flat:
                raise ShapeError(
                    f"a use_muon=True group holds a parameter of shape {tuple(flat[0].shape)}; the matrix update "
                    "needs >= 2-D parameters; put it in a use_muon=False group (AdamW)"
                )
        else:
            for key, default in self._adamw_defaults.items():
                group.setdefault(key, default)
        super().add_param_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("use_muon", all(p.ndim >= 2 for p in group["params"]))
            for key, default in (self.defaults if group["use_muon"] else self._adamw_defaults).items():
                group.setdefault(key, default)
            if not group["use_muon"]:  # AdamW's step count was an int before it was torch's kernel
                for p in group["params"]:
                    step = self.state.get(p, {}).get("step")
                    if step is not None and not torch.is_tensor(step):
                        self.state[p]["step"] = torch.tensor(float(step), dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a gradient; ``closure`` (optional) is evaluated first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise ConfigError(f"{type(self).__name__} does not support sparse gradients")
            if group["use_muon"]:
                for p in params:
                    self._matrix_step(p, group)
            elif params:
                _adamw_step(params, self.state, group)
        return loss

    def _matrix_step(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad.reshape(p.size(0), -1)
        direction, scale = self._direction(grad, self.state[p], group)
        lr = group["lr"]
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(direction.reshape(p.shape), alpha=-(lr * scale))

    @abc.abstractmethod
    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        """The update direction for a ``rows x cols`` gradient, and its learning-rate factor."""

    @staticmethod
    def _momentum(grad: Tensor, state: dict[str, Any], group: Mapping[str, Any], *, ema: bool = True) -> Tensor:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.contiguous_format)
        return _momentum_direction(state["momentum_buffer"], grad, group["momentum"], group["nesterov"], ema=ema)


MATRIX_CONSTRAINTS: dict[str, Constraint] = {
    "lr": Float(0.0),
    "weight_decay": Float(0.0),
    "momentum": UNIT,
    "nesterov": Bool(),
}
NS_CONSTRAINTS: dict[str, Constraint] = {
    "ns_coefficients": NS_COEFFICIENTS,
    "eps": Float(0.0),
    "ns_steps": Int(1, 100),
    "adjust_lr_fn": Nullable(OneOf(_ADJUST_LR)),
    "ns_dtype": NS_DTYPE,
}
