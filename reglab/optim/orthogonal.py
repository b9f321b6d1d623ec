"""Orthogonalized updates for matrix parameters: Muon, NorMuon, AuON and ROOT.

Each optimizer here updates every matrix parameter (``>= 2``-D; a convolution
kernel ``(out, in, *k)`` is read as the ``(out, in * prod(k))`` matrix) with
its own orthogonalized step, and every other parameter with an auxiliary AdamW.
The four share that machinery (:class:`OrthogonalOptimizer`): parameter
routing, the AdamW step, decoupled weight decay, the momentum buffer, the
shape-dependent learning-rate ratio and argument validation. Each subclass
writes only its matrix direction.

**Routing.** ``params`` may be

- a module: :func:`split_params` sends hidden matrices to the matrix update and
  embeddings, the output head, norms and biases to AdamW;
- a plain list of tensors (``model.parameters()``): ``>= 2``-D tensors to the
  matrix update, the rest to AdamW (embeddings and the head included in the
  matrix update; pass the module, or groups, to route those to AdamW);
- parameter groups (dicts): ``use_muon=True`` groups get the matrix update
  (every parameter must be ``>= 2``-D), ``use_muon=False`` groups get AdamW, and
  a group without the flag is split by dimension. The optimizer's hyperparameters
  (``lr``, ``weight_decay``, ``momentum``, ...) fill ``use_muon=True`` groups;
  ``use_muon=False`` groups take ``lr``, ``betas``, ``eps`` and ``weight_decay``
  from ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and ``adamw_weight_decay``
  unless the group sets them. The keys of a group without the flag apply to its
  matrix half only; its other half gets the AdamW settings.

Every group keeps its own ``lr``, so learning-rate schedulers scale both kinds.
The AdamW step is ``torch.optim.AdamW``'s (same operations, same bits).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
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
from reglab.linalg.newton_schulz import QUINTIC, Coefficients, newton_schulz, ns_schedule
from reglab.optim.base import ConstrainedOptimizer
from reglab.optim.registry import REGISTRY

__all__ = [
    "AuON",
    "DEFAULT_HEAD_NAMES",
    "Muon",
    "NorMuon",
    "OrthogonalOptimizer",
    "ROOT",
    "ROOT_COEFFICIENTS",
    "lr_ratio",
    "split_params",
]

#: Module names (the last part of the qualified name) that :func:`split_params` treats as the output head.
DEFAULT_HEAD_NAMES: tuple[str, ...] = ("head", "lm_head", "classifier", "fc_out")

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_NS_DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")
_ADJUST_LR = ("original", "match_rms_adamw")


# --- routing -----------------------------------------------------------------------------------------------


def split_params(
    model: nn.Module,
    *,
    head: str | None = "auto",
    head_names: Iterable[str] = DEFAULT_HEAD_NAMES,
    muon: Iterable[str] = (),
    adamw: Iterable[str] = (),
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters into ``(matrix_params, adamw_params)`` for the Muon family.

    The first rule that applies decides, in this order:

    1. a parameter named in ``muon`` -> matrix update; named in ``adamw`` -> AdamW
       (a name is a parameter's qualified name or a module prefix of it:
       ``"body.0"`` covers ``"body.0.weight"`` and ``"body.0.bias"``);
    2. fewer than 2 dimensions (biases, norm scales, scalars) -> AdamW;
    3. a parameter of an ``nn.Embedding``/``nn.EmbeddingBag`` or of a norm layer -> AdamW;
    4. a parameter of the output head -> AdamW. ``head="auto"``: every module whose
       own name (the last part of its qualified name) is in ``head_names``
       (``head``, ``lm_head``, ``classifier``, ``fc_out``), or, if there is none,
       the last ``nn.Linear`` in ``model.named_modules()`` order (the readout of
       the reference models). ``head="<qualified module name>"`` names it;
       ``head=None`` has no head;
    5. everything else (hidden ``Linear`` weights, convolution kernels) -> matrix update.

    A weight shared by two modules (a tied embedding and head) is listed once,
    under its first name, as ``model.named_parameters()`` does.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> mats, others = split_params(model)
        >>> [tuple(p.shape) for p in mats], [tuple(p.shape) for p in others]
        ([(8, 4)], [(8,), (2, 8), (2,)])

    Returns:
        ``(matrix_params, adamw_params)`` in ``model.named_parameters()`` order.

    Raises:
        ConfigError: a name in ``muon``/``adamw``/``head`` matches nothing, a name is
            in both lists, or a parameter forced into ``muon`` has fewer than 2 dimensions.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    force_muon, force_adamw = _names("muon", muon, named), _names("adamw", adamw, named)
    both = force_muon & force_adamw
    if both:
        raise ConfigError(f"parameters {sorted(both)} are in both muon and adamw; name each in one list only")
    owner: dict[int, nn.Module] = {}
    for _, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), module)
    head_ids = {id(p) for m in _head_modules(model, head, tuple(head_names)) for p in m.parameters()}
    matrices, others = [], []
    for name, p in named:
        if name in force_muon:
            if p.ndim < 2:
                raise ConfigError(f"muon names {name!r} of shape {tuple(p.shape)}; the matrix update needs >= 2-D")
            matrices.append(p)
        elif (
            name in force_adamw
            or p.ndim < 2
            or isinstance(owner.get(id(p)), _EMBEDDING_TYPES + _NORM_TYPES)
            or id(p) in head_ids
        ):
            others.append(p)
        else:
            matrices.append(p)
    return matrices, others


def _names(field: str, names: Iterable[str], named: list[tuple[str, nn.Parameter]]) -> set[str]:
    if isinstance(names, str):
        raise ConfigError(f"{field} must be a list of parameter or module names, got the string {names!r}")
    chosen: set[str] = set()
    for entry in names:
        hits = {n for n, _ in named if n == entry or n.startswith(f"{entry}.")}
        if not hits:
            raise ConfigError(f"{field}: no parameter is named {entry!r} or lies under a module of that name")
        chosen |= hits
    return chosen


def _head_modules(model: nn.Module, head: str | None, head_names: tuple[str, ...]) -> list[nn.Module]:
    if head is None:
        return []
    modules = dict(model.named_modules())
    if head != "auto":
        if head not in modules or head == "":
            raise ConfigError(f"head must be 'auto', None or a module name of the model, got {head!r}")
        return [modules[head]]
    by_name = [m for n, m in modules.items() if n and n.rsplit(".", 1)[-1] in head_names]
    if by_name:
        return by_name
    linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _route(params: Any) -> list[dict[str, Any]]:
    """Parameter groups with a ``use_muon`` flag from a module, a tensor list or a list of dicts."""
    if isinstance(params, nn.Module):
        return _two_groups(*split_params(params))
    if isinstance(params, Tensor):
        raise ConfigError("params must be an iterable of tensors or of dicts, or a module; got a single Tensor")
    items = list(params)
    if not items:
        raise ConfigError("params is empty; the optimizer needs at least one parameter")
    if all(isinstance(x, Mapping) for x in items):
        groups: list[dict[str, Any]] = []
        for group in items:
            if "use_muon" in group:
                groups.append(dict(group))
                continue
            ps = [group["params"]] if isinstance(group.get("params"), Tensor) else list(group.get("params", ()))
            rest = {k: v for k, v in group.items() if k != "params"}
            groups += [{**rest, "params": [p for p in ps if p.ndim >= 2], "use_muon": True}]
            groups += [{"params": [p for p in ps if p.ndim < 2], "use_muon": False}]
        return [g for g in groups if not _empty(g)]
    if all(isinstance(x, Tensor) for x in items):
        return _two_groups([p for p in items if p.ndim >= 2], [p for p in items if p.ndim < 2])
    raise ConfigError("params must be all tensors or all dicts (parameter groups), not a mix")


def _two_groups(matrices: list[Tensor], others: list[Tensor]) -> list[dict[str, Any]]:
    groups = [{"params": matrices, "use_muon": True}, {"params": others, "use_muon": False}]
    return [g for g in groups if g["params"]]


def _empty(group: Mapping[str, Any]) -> bool:
    return isinstance(group.get("params"), list) and not group["params"]


# --- validation helpers ------------------------------------------------------------------------------------


def _check_betas(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return (
        check_float(f"{name}[0]", value[0], 0.0, 1.0, high_open=True),
        check_float(f"{name}[1]", value[1], 0.0, 1.0, high_open=True),
    )


def _check_coefficients(name: str, value: Any) -> Any:
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
NS_COEFFICIENTS = Rule(_check_coefficients, ("no-such-preset", (1.0, 2.0)))
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


def _dtype(name: str | None, device: torch.device) -> torch.dtype | None:
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
        super().__init__(_route(params), defaults)

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


_MATRIX_CONSTRAINTS: dict[str, Constraint] = {
    "lr": Float(0.0),
    "weight_decay": Float(0.0),
    "momentum": UNIT,
    "nesterov": Bool(),
}
_NS_CONSTRAINTS: dict[str, Constraint] = {
    "ns_coefficients": NS_COEFFICIENTS,
    "eps": Float(0.0),
    "ns_steps": Int(1, 100),
    "adjust_lr_fn": Nullable(OneOf(_ADJUST_LR)),
    "ns_dtype": NS_DTYPE,
}


@REGISTRY.register("muon")
class Muon(OrthogonalOptimizer):
    """Muon: momentum orthogonalized by Newton–Schulz for matrices, AdamW for the rest (Jordan et al., 2024).

    For each matrix parameter ``W`` (``rows x cols``; convolution kernels
    flattened to ``(out, -1)``) with gradient ``G``::

        B <- mu B + (1 - mu) G                      # momentum buffer (an EMA, as torch.optim.Muon)
        M  = G + mu (B - G)   if nesterov  else  B
        O  = NS(M)                                  # ns_steps Newton–Schulz steps, in ns_dtype
        W <- (1 - lr * weight_decay) W
        W <- W - lr * r(rows, cols) * O             # r: see adjust_lr_fn

    ``NS`` is :func:`reglab.linalg.newton_schulz.newton_schulz`; with the
    quintic coefficients its singular values land in about ``[0.68, 1.2]``
    (not 1). The defaults are ``torch.optim.Muon``'s, and on 2-D parameters
    the iterates are the same as torch's to the bit (tested): the EMA
    momentum (torch's docs write ``B <- mu B + G``; the code, and this class,
    use the EMA, which only rescales ``M`` before the normalisation), the NS in
    bfloat16 with the same ``addmm`` calls, weight decay with the unscaled
    ``lr`` before the step. Beyond torch: ``>= 3``-D kernels, any NS schedule
    (``ns_coefficients="polar_express"``), ``ns_dtype=None`` for a full-precision
    NS, and AdamW for non-matrix parameters (module docstring: routing).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = Muon(model, lr=0.02, adamw_lr=3e-4)  # hidden weight -> Muon; head, biases -> AdamW
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        K. Jordan, Y. Jin, V. Boza, J. You, F. Cesista, L. Newhouse, J. Bernstein,
        "Muon: An optimizer for hidden layers in neural networks", 2024
        (kellerjordan.github.io/posts/muon); J. Liu et al., "Muon is Scalable for
        LLM Training", 2025 (``adjust_lr_fn="match_rms_adamw"``); ``torch.optim.Muon``.

    Args:
        params: a module, a list of tensors or parameter groups (module docstring).
        lr: learning rate of the matrix update, >= 0 (0.02 usual with ``"original"``;
            the AdamW lr, 1e-4–1e-3, with ``"match_rms_adamw"``).
        weight_decay: decoupled weight decay of the matrices, >= 0 (0–0.1).
        momentum: ``mu`` in [0, 1) (0.95).
        nesterov: Nesterov momentum.
        ns_coefficients: ``(a, b, c)``, a preset name or a per-step schedule.
        eps: added to the Frobenius norm before the NS, >= 0.
        ns_steps: Newton–Schulz steps, in [1, 100] (5).
        adjust_lr_fn: ``None``/``"original"``: ``r = sqrt(max(1, rows / cols))``;
            ``"match_rms_adamw"``: ``r = 0.2 sqrt(max(rows, cols))``.
        ns_dtype: NS compute dtype: ``"auto"`` (default: bfloat16 on an accelerator, float32 on the
            CPU, whose bfloat16 products are ~90x slower), ``"bfloat16"`` (torch's, needed for
            bit-identical iterates with ``torch.optim.Muon``), ``"float32"``, ``"float64"``,
            ``"float16"`` or None (the parameter's).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the
            non-matrix parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {**_MATRIX_CONSTRAINTS, **_NS_CONSTRAINTS}

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str | torch.dtype | None = "auto",
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
        )
        super().__init__(
            params,
            defaults,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )

    def _orthogonalize(self, M: Tensor, group: Mapping[str, Any], coefficients: Coefficients | None = None) -> Tensor:
        coefficients = group["ns_coefficients"] if coefficients is None else coefficients
        dtype = _dtype(group["ns_dtype"], M.device)
        return newton_schulz(M, group["ns_steps"], coefficients, group["eps"], dtype=dtype)

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        ortho = self._orthogonalize(self._momentum(grad, state, group), group)
        return ortho, lr_ratio(group["adjust_lr_fn"], grad.size(0), grad.size(1))


@REGISTRY.register("normuon")
class NorMuon(Muon):
    """NorMuon: Muon with a neuron-wise (row-wise) second moment that equalises row norms (Li et al., 2025).

    For each matrix parameter ``W`` (``m x n``, rows = output neurons)::

        O  = NS(Nesterov-momentum of G)                 # as Muon
        v <- beta2 v + (1 - beta2) mean_j O[:, j]^2     # one scalar per row (neuron)
        Ô  = O / (sqrt(v) + norm_eps)                   # row-wise
        Ô <- Ô * ||O||_F / (||Ô||_F + norm_eps)         # keep Muon's total norm
        W <- (1 - lr * weight_decay) W - lr * sqrt(max(1, m / n)) * Ô

    Follows the authors' reference code (github.com/zichongli5/NorMuon,
    ``normuon.py``, read through its mirror ShizukaKuze/NorMuon): NS5 with
    the quintic coefficients in bfloat16, the row mean over columns, eps 1e-10
    in both places, the ``sqrt(max(1, m / n))`` factor, defaults lr 0.02,
    beta2 0.95, weight decay 0. Departures: ``v`` is not bias-corrected there
    either, but here it is kept in the parameter's dtype (float32 at least)
    instead of always float32, and ``adjust_lr_fn`` (Muon's) may replace the
    factor. With a constant gradient ``v`` stays proportional to the row mean
    square, so every row of ``Ô`` has the same norm from the first step.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = NorMuon(model, lr=0.02)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        Z. Li, L. Liu, C. Liang, W. Chen, T. Zhao, "NorMuon: Making Muon more
        efficient and scalable", 2025 (arXiv:2510.05491).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (0.02 usual).
        weight_decay: decoupled weight decay, >= 0 (0–0.1).
        momentum: in [0, 1) (0.95).
        beta2: decay of the neuron-wise second moment, in [0, 1) (0.95).
        nesterov, ns_coefficients, eps, ns_steps, ns_dtype: as :class:`Muon`.
        adjust_lr_fn: as :class:`Muon`; the default ``"original"`` is the paper's ``sqrt(max(1, m / n))``.
        norm_eps: added to ``sqrt(v)`` and to ``||Ô||_F``, >= 0 (1e-10).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {**Muon.constraints, "beta2": UNIT, "norm_eps": Float(0.0)}

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        beta2: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "original",
        *,
        norm_eps: float = 1e-10,
        ns_dtype: str | torch.dtype | None = "auto",
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )
        self._extend_defaults({"beta2": beta2, "norm_eps": norm_eps})

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        ortho, scale = super()._direction(grad, state, group)
        ortho = ortho.to(torch.promote_types(grad.dtype, torch.float32))
        if "second_moment" not in state:
            state["second_moment"] = torch.zeros(ortho.size(0), 1, dtype=ortho.dtype, device=ortho.device)
        v = state["second_moment"]
        v.lerp_((ortho * ortho).mean(dim=1, keepdim=True), 1 - group["beta2"])
        normed = ortho / (v.sqrt() + group["norm_eps"])
        normed.mul_(ortho.norm() / (normed.norm() + group["norm_eps"]))
        return normed.to(grad.dtype), scale


@REGISTRY.register("auon")
class AuON(OrthogonalOptimizer):
    """AuON: linear-time cosh-RMS scaling of the momentum instead of orthogonalization (Maity, 2025).

    For each matrix parameter ``W`` with gradient ``G``::

        B <- mu B + (1 - mu) G;   M = G + mu (B - G) if nesterov else B
        M <- NS_1(M)                                   # only with hybrid=True: one NS step
        r  = sqrt(mean(cosh(gamma * M / (||M||_F + 1e-7))^2))
        W <- (1 - lr * weight_decay) W - lr * M / (r + 1e-8)

    No matrix product: ``O(rows * cols)``. Follows the reference code
    (github.com/ryyzn9/AuON, ``auon/optimizer.py``): EMA momentum with the
    Nesterov blend, decoupled weight decay, the constants 1e-7 and 1e-8, gamma
    1.5. Note that ``cosh(x)^2 ~ 1 + x^2`` for the small entries of a
    unit-norm matrix, so ``r ~ 1 + gamma^2 / (2 rows cols)``: for a matrix of
    more than a few entries the step is close to momentum SGD on ``M`` with a
    brake that only bites when a few entries carry most of the norm. A
    secondary write-up (junaidaliop.github.io/zij/math/auon) instead steps by
    ``M / ||M||_F / r`` times ``sqrt(max(1, m / n))``; this class follows the
    code and the catalog. The hybrid variant's code is not public: ``hybrid=True``
    applies one Newton–Schulz step (``ns_coefficients``, default quintic) to
    ``M`` before the scaling, as the paper's abstract describes; its scale is
    then that of the NS output (singular values up to about 1), not of ``M``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = AuON(model, lr=0.08)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        D. Maity, "AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
        Updates", 2025 (arXiv:2509.24320).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (0.08–0.24 in the reference code).
        weight_decay: decoupled weight decay, >= 0 (0–0.01).
        momentum: in [0, 1) (0.95).
        nesterov: Nesterov blend (the reference always uses it).
        gamma: the cosh scale, > 0 (1.5).
        hybrid: one Newton–Schulz step before the scaling (Hybrid-AuON).
        ns_coefficients: the ``(a, b, c)`` of that step (``hybrid=True`` only).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {
        **_MATRIX_CONSTRAINTS,
        "gamma": Float(0.0, low_open=True),
        "hybrid": Bool(),
        "ns_coefficients": NS_COEFFICIENTS,
    }

    def __init__(
        self,
        params: Any,
        lr: float = 0.08,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        gamma: float = 1.5,
        hybrid: bool = False,
        *,
        ns_coefficients: Coefficients = QUINTIC,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            gamma=gamma,
            hybrid=hybrid,
            ns_coefficients=ns_coefficients,
        )
        super().__init__(
            params,
            defaults,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        M = self._momentum(grad, state, group)
        if group["hybrid"]:
            M = newton_schulz(M, 1, group["ns_coefficients"], 1e-7)
        unit = M / (M.norm() + 1e-7)
        r = torch.cosh(group["gamma"] * unit).square().mean().sqrt()
        return M / (r + 1e-8), 1.0


#: ROOT's shape-specific quintic coefficients, keyed by ``(min(rows, cols), max(rows, cols))``: the four
#: entries of the reference code (huawei-noah/noah-research, ``ROOT/examples/example_train.py``, ``root5``).
ROOT_COEFFICIENTS: dict[tuple[int, int], tuple[float, float, float]] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}


def _check_table(name: str, value: Any) -> dict[tuple[int, int], tuple[float, float, float]]:
    if value is None:
        return dict(ROOT_COEFFICIENTS)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping {{(rows, cols): (a, b, c)}} or None, got {value!r}")
    table = dict(ROOT_COEFFICIENTS)
    for key, coeffs in value.items():
        if not (isinstance(key, (tuple, list)) and len(key) == 2 and all(isinstance(k, int) and k > 0 for k in key)):
            raise ConfigError(f"{name} keys must be (rows, cols) pairs of positive ints, got {key!r}")
        table[(min(key), max(key))] = ns_schedule(_check_coefficients(f"{name}[{key!r}]", coeffs), 1)[0]
    return table


def _quantile(x: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile of a flattened tensor (``torch.quantile``'s rule, without its 2^24 size limit).

    One sort, which is fast on GPUs (two ``kthvalue`` calls, as the reference code uses, took 40 ms for a
    2048 x 2048 matrix on an H100).
    """
    flat = x.flatten().sort().values
    pos = q * (flat.numel() - 1)
    lo = math.floor(pos)
    if pos == lo:
        return flat[lo]
    return torch.lerp(flat[lo], flat[lo + 1], pos - lo)


@REGISTRY.register("root")
class ROOT(Muon):
    """ROOT: Muon on soft-thresholded momentum with shape-specific Newton–Schulz coefficients (He et al., 2025).

    For each matrix parameter ``W`` (``rows x cols``) with gradient ``G``::

        B  <- mu B + G;   M = G + mu B if nesterov else B        # classical (not EMA) momentum
        eps = threshold, or quantile(|M|, threshold_quantile) + 1e-9
        O_t = T_eps(M) = sign(M) max(|M| - eps, 0)              # the outliers
        R   = M - O_t  (= clamp(M, -eps, eps))                  # the robust part
        X   = NS(R) with (a, b, c) = table[(min(rows, cols), max(rows, cols))], else ns_coefficients
        W  <- (1 - lr * weight_decay) W - lr * 0.2 sqrt(max(rows, cols)) * X

    Follows the reference code (huawei-noah/noah-research, ``ROOT/examples/
    example_train.py``): classical Nesterov momentum, the threshold at the 0.9
    quantile of ``|M|`` plus 1e-9, the NS normalisation ``||R||_F + 1e-7`` in
    the parameter's dtype (``ns_dtype=None``), the Moonlight learning-rate
    ratio (``adjust_lr_fn="match_rms_adamw"``) and weight decay with the
    unscaled lr. The catalog's fixed threshold is available as ``threshold``.

    What could not be verified: the paper fits (AdaNewton) coefficients per
    matrix shape, but its fitting procedure is not in the released code, which
    only ships the four 2048-wide shapes in :data:`ROOT_COEFFICIENTS`; every
    other shape falls back to ``ns_coefficients`` (Muon's quintic), so on small
    models ROOT differs from Muon only by the momentum form and the soft
    threshold. Add fitted entries with ``coefficient_table``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = ROOT(model, lr=1e-3)
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step()

    References:
        W. He, K. Han, H. Zhou, H. Chen, Z. Liu, X. Chen, Y. Wang, "ROOT: Robust
        Orthogonalized Optimizer for Neural Network Training", 2025 (arXiv:2511.20626).

    Args:
        params: a module, a list of tensors or parameter groups (see the module docstring).
        lr: learning rate, >= 0 (1e-3 with the Moonlight ratio, as AdamW's).
        weight_decay: decoupled weight decay, >= 0 (0.1).
        momentum: ``mu`` in [0, 1) (0.95).
        nesterov: Nesterov momentum.
        threshold_quantile: the threshold is this quantile of ``|M|``, in (0, 1] (0.9).
        threshold: a fixed threshold ``eps`` > 0 instead (None: use the quantile).
        coefficient_table: ``{(rows, cols): (a, b, c)}`` added to (and overriding)
            :data:`ROOT_COEFFICIENTS`; a key and its transpose are the same shape.
        ns_coefficients: the coefficients for shapes not in the table (Muon's quintic).
        eps, ns_steps, ns_dtype, adjust_lr_fn: as :class:`Muon` (defaults 1e-7, 5,
            None, ``"match_rms_adamw"``).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the AdamW of the other parameters.

    Raises:
        ConfigError: an argument out of range (named in the message), mixed groups, complex parameters.
        ShapeError: a ``use_muon=True`` group with a parameter of fewer than 2 dimensions.
    """

    constraints: ClassVar = {
        **Muon.constraints,
        "threshold_quantile": Float(0.0, 1.0, low_open=True),
        "threshold": Nullable(Float(0.0, low_open=True)),
        "coefficient_table": Rule(_check_table, ([(1, 2)], {(0, 2): (3.4, -4.8, 2.0)}, {(2, 2): "quintic-typo"})),
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        threshold_quantile: float = 0.9,
        threshold: float | None = None,
        coefficient_table: Mapping[tuple[int, int], tuple[float, float, float]] | None = None,
        *,
        ns_coefficients: Coefficients = QUINTIC,
        eps: float = 1e-7,
        ns_steps: int = 5,
        ns_dtype: str | torch.dtype | None = None,
        adjust_lr_fn: str | None = "match_rms_adamw",
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ):
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )
        self._extend_defaults(
            {"threshold_quantile": threshold_quantile, "threshold": threshold, "coefficient_table": coefficient_table}
        )

    def _direction(self, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple[Tensor, float]:
        M = self._momentum(grad, state, group, ema=False)
        eps = group["threshold"]
        if eps is None:
            eps = _quantile(M.abs(), group["threshold_quantile"]) + 1e-9
        robust = M.clamp(-eps, eps)
        rows, cols = grad.shape
        coefficients = group["coefficient_table"].get((min(rows, cols), max(rows, cols)), group["ns_coefficients"])
        return self._orthogonalize(robust, group, coefficients), lr_ratio(group["adjust_lr_fn"], rows, cols)
