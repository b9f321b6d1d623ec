"""Weight-decay exclusions: the parameters that must not be decayed, as torch param groups.

``weight_decay_groups(model, ["bias", "norm"])`` returns two param groups, the
decayed parameters (the optimizer's ``weight_decay``) and the excluded ones
(``weight_decay = 0``), for any ``torch.optim.Optimizer``, for a wrapper (the
groups go to its base) and for the Muon family (each group is split again by
its own routing, and the exclusion holds on both sides; see
:func:`reglab.optim.orthogonal.routing.route_params`). In a config the same
list is the optimizer entry's ``no_weight_decay`` key::

    optimizer: {name: adamw, lr: 1.0e-3, weight_decay: 0.05, no_weight_decay: [bias, norm]}

This is the convention of timm's ``param_groups_weight_decay`` (no decay for
parameters with ``ndim <= 1``, biases, normalization weights, and a list of
names), which follows "Decoupled Weight Decay Regularization" (Loshchilov &
Hutter, 2019) and the BERT/ViT recipes in excluding biases and LayerNorm
weights from decay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from reglab.core.errors import ConfigError
from reglab.core.validation import check_float

__all__ = [
    "EMBEDDING_TYPES",
    "NORM_TYPES",
    "NO_WEIGHT_DECAY_KEY",
    "NO_WEIGHT_DECAY_KEYWORDS",
    "check_no_weight_decay",
    "is_norm_layer",
    "no_weight_decay_names",
    "split_no_weight_decay",
    "weight_decay_groups",
]

#: The key of an optimizer config entry that lists the parameters excluded from weight decay.
NO_WEIGHT_DECAY_KEY = "no_weight_decay"

#: torch's normalization layers (``_NormBase`` covers BatchNorm*, SyncBatchNorm and InstanceNorm*).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
#: torch's embedding layers.
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

#: Entries of ``no_weight_decay`` that are keywords, not regular expressions, and what each selects.
NO_WEIGHT_DECAY_KEYWORDS: dict[str, str] = {
    "bias": "parameters whose own name (after the last dot) is 'bias' or ends in '_bias' (in_proj_bias)",
    "norm": "every parameter of a normalization layer: torch's BatchNorm*/SyncBatchNorm/InstanceNorm*/LayerNorm/"
    "GroupNorm/RMSNorm, or a module whose class name ends in 'Norm' or 'Norm1d/2d/3d' (timm's LayerNorm2d, a "
    "hand-written RMSNorm)",
    "embedding": "the weights of nn.Embedding and nn.EmbeddingBag layers",
    "ndim<=1": "every parameter with at most one dimension (timm's rule: biases, norm scales, scalars)",
}

_NORM_NAME = re.compile(r"Norm([123][dD])?$")


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: one of :data:`NORM_TYPES`, or a class named ``*Norm(1d|2d|3d)``."""
    return isinstance(module, NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def check_no_weight_decay(value: Any, field: str = "no_weight_decay") -> list[str]:
    """``value`` as a list of entries if it is a list of non-empty strings, each a keyword or a valid regex.

    Raises:
        ConfigError: ``value`` is a single string or not a list of strings, or an entry is not a valid regex.
    """
    if isinstance(value, str):
        raise ConfigError(f"{field} must be a list of keywords or regexes, got the string {value!r}; write [{value}]")
    value = list(value) if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)) else value
    if not isinstance(value, list) or not all(isinstance(e, str) and e for e in value):
        raise ConfigError(
            f"{field} must be a list of non-empty strings (keywords {', '.join(NO_WEIGHT_DECAY_KEYWORDS)}, or "
            f"regexes over parameter names), got {value!r}"
        )
    for entry in value:
        if entry not in NO_WEIGHT_DECAY_KEYWORDS:
            try:
                re.compile(entry)
            except re.error as err:
                raise ConfigError(f"{field}: {entry!r} is neither a keyword nor a valid regex ({err})") from None
    return value


def split_no_weight_decay(
    kwargs: Mapping[str, Any], field: str = "optimizer"
) -> tuple[dict[str, Any], list[str] | None]:
    """Split an optimizer config entry's arguments into the optimizer's own and its ``no_weight_decay`` list.

    ``no_weight_decay`` belongs to the outer entry: for a wrapper the groups reach the base through it.

    Returns:
        ``(kwargs without the key, the checked list or None when the key is absent)``.

    Raises:
        ConfigError: the list is malformed (:func:`check_no_weight_decay`), or a wrapper's ``base`` has the key.
    """
    rest = dict(kwargs)
    base = rest.get("base")
    if isinstance(base, Mapping) and NO_WEIGHT_DECAY_KEY in base:
        raise ConfigError(
            f"{field}.base.{NO_WEIGHT_DECAY_KEY}: write {NO_WEIGHT_DECAY_KEY} on the outer entry "
            f"({field}.{NO_WEIGHT_DECAY_KEY}); the wrapper hands its param groups to the base"
        )
    if NO_WEIGHT_DECAY_KEY not in rest:
        return rest, None
    return rest, check_no_weight_decay(rest.pop(NO_WEIGHT_DECAY_KEY), f"{field}.{NO_WEIGHT_DECAY_KEY}")


def _owners(model: nn.Module) -> dict[int, list[nn.Module]]:
    """``id(parameter) -> the modules that hold it directly`` (two for a tied weight)."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    return owners


def _selects(entry: str, name: str, p: nn.Parameter, owners: Sequence[nn.Module]) -> bool:
    if entry == "bias":
        last = name.rsplit(".", 1)[-1]
        return last == "bias" or last.endswith("_bias")
    if entry == "norm":
        return any(is_norm_layer(m) for m in owners)
    if entry == "embedding":
        return any(isinstance(m, EMBEDDING_TYPES) for m in owners)
    if entry == "ndim<=1":
        return p.ndim <= 1
    return re.search(entry, name) is not None


def no_weight_decay_names(model: nn.Module, no_weight_decay: Iterable[str]) -> list[str]:
    """The names of ``model``'s parameters that ``no_weight_decay`` excludes from weight decay.

    Each entry is a keyword of :data:`NO_WEIGHT_DECAY_KEYWORDS` (``bias``,
    ``norm``, ``embedding``, ``ndim<=1``) or else a regular expression
    searched (``re.search``) in the full parameter name (``"body.0.weight"``);
    a parameter is excluded when any entry selects it. Names and order are
    ``model.named_parameters()``'s (a tied weight once, under its first name).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> no_weight_decay_names(model, ["bias", "norm"])
        ['0.bias', '1.weight', '1.bias', '2.bias']

    Raises:
        ConfigError: ``model`` is not a module, the entries are not a list of strings, an entry is not a valid
            regex, or an entry selects no parameter (a misspelt name would otherwise decay everything).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    entries = check_no_weight_decay(no_weight_decay)
    named = list(model.named_parameters())
    owners = _owners(model)
    chosen: set[str] = set()
    for entry in entries:
        hits = {name for name, p in named if _selects(entry, name, p, owners.get(id(p), []))}
        if not hits:
            example = ", ".join(repr(n) for n, _ in named[:3])
            raise ConfigError(
                f"no_weight_decay: {entry!r} selects no parameter of {type(model).__name__}; keywords are "
                f"{', '.join(NO_WEIGHT_DECAY_KEYWORDS)}, anything else is a regex searched in parameter names such "
                f"as {example}; fix or remove the entry"
            )
        chosen |= hits
    return [name for name, _ in named if name in chosen]


def weight_decay_groups(
    model: nn.Module, no_weight_decay: Iterable[str], *, weight_decay: float | None = None
) -> list[dict[str, Any]]:
    """Param groups ``[decayed, excluded]``: the excluded parameters get ``weight_decay = 0``.

    ``excluded`` holds the parameters :func:`no_weight_decay_names` selects,
    ``decayed`` the others; a group with no parameter is left out. The
    decayed group sets ``weight_decay`` only when it is given, so by default
    it takes the optimizer's own; no other hyperparameter is set, so both
    groups take every other one (``lr``, ``momentum``, ``betas``, a wrapper's
    ``sam_rho``) from the optimizer's defaults. Pass the result where
    ``model.parameters()`` would go. The Muon family splits each group again
    by dimension (matrices to the orthogonal update, the rest to its AdamW);
    ``weight_decay = 0`` holds on both halves of the excluded group.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> groups = weight_decay_groups(model, ["bias", "norm", "embedding"])
        >>> opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
        >>> [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups]  # the Linear weights; the other 5
        [(2, 0.05), (5, 0.0)]

    Args:
        model: the module whose parameters are grouped (all of them, in ``named_parameters()`` order).
        no_weight_decay: keywords (``bias``, ``norm``, ``embedding``, ``ndim<=1``) or regexes over parameter names.
        weight_decay: the decayed group's weight decay, >= 0; None leaves it to the optimizer.

    Returns:
        A list of one or two param-group dicts.

    Raises:
        ConfigError: as :func:`no_weight_decay_names`, or ``weight_decay`` is not a number >= 0.
    """
    excluded = set(no_weight_decay_names(model, no_weight_decay))
    named = list(model.named_parameters())
    decayed: dict[str, Any] = {"params": [p for n, p in named if n not in excluded]}
    if weight_decay is not None:
        decayed["weight_decay"] = check_float("weight_decay", weight_decay, 0.0)
    groups = [decayed, {"params": [p for n, p in named if n in excluded], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
