"""Which parameters get the orthogonalized update and which the auxiliary AdamW (rules: the package docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from reglab.core.errors import ConfigError
from reglab.optim.param_groups import EMBEDDING_TYPES, NORM_TYPES

DEFAULT_HEAD_NAMES: tuple[str, ...] = ("head", "lm_head", "classifier", "fc_out")



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
            or isinstance(owner.get(id(p)), EMBEDDING_TYPES + NORM_TYPES)
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


def route_params(params: Any) -> list[dict[str, Any]]:
    """Parameter groups with a ``use_muon`` flag from a module, a tensor list or a list of dicts.

    A dict without the flag is split by dimension: its keys go to the matrix half, and the other half gets the
    AdamW settings, except ``weight_decay = 0`` (a group of :func:`reglab.optim.param_groups.weight_decay_groups`
    excluded from decay), which holds on both halves.
    """
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
            others: dict[str, Any] = {"params": [p for p in ps if p.ndim < 2], "use_muon": False}
            if rest.get("weight_decay", None) == 0:  # an exclusion from decay (weight_decay_groups) holds on both
                others["weight_decay"] = 0.0
            groups += [{**rest, "params": [p for p in ps if p.ndim >= 2], "use_muon": True}, others]
        return [g for g in groups if not _empty(g)]
    if all(isinstance(x, Tensor) for x in items):
        return _two_groups([p for p in items if p.ndim >= 2], [p for p in items if p.ndim < 2])
    raise ConfigError("params must be all tensors or all dicts (parameter groups), not a mix")


def _two_groups(matrices: list[Tensor], others: list[Tensor]) -> list[dict[str, Any]]:
    groups = [{"params": matrices, "use_muon": True}, {"params": others, "use_muon": False}]
    return [g for g in groups if g["params"]]


def _empty(group: Mapping[str, Any]) -> bool:
    return isinstance(group.get("params"), list) and not group["params"]
