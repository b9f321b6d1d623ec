"""The optimizer registry (kept apart from ``__init__`` so member modules can import it).

The registry holds the optimizer classes themselves, so each signature is
written once. Every class takes the parameters first (``params``, supplied by
the caller, never by a config) and keyword arguments after. Wrappers (the SAM
family, SPECTRA, ⊥Grad, LAWN) build their base optimizer from a ``base`` entry
of the same ``{name: ..., kwargs}`` shape as any other config entry, e.g.
``{"name": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from reglab.core import ConfigError, Registry

REGISTRY = Registry("optimizer", positional=("params",))
REGISTRY.add(
    "sgd", torch.optim.SGD, "Stochastic gradient descent with optional momentum/Nesterov and coupled weight decay."
)
REGISTRY.add("adam", torch.optim.Adam, "Adam (Kingma & Ba, 2015); weight_decay is coupled L2.")
REGISTRY.add("adamw", torch.optim.AdamW, "AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).")


def build_base(params: Iterable[Any], base: str | Mapping[str, Any], field: str = "base") -> torch.optim.Optimizer:
    """Build a wrapper's base optimizer from a registry name or a ``{"name": ..., **kwargs}`` mapping.

    Raises:
        ConfigError: ``base`` is neither a name nor a mapping with a ``name`` key.
        UnknownNameError: the name is not registered.
    """
    if isinstance(base, str):
        return REGISTRY.get(base, params)
    if isinstance(base, Mapping) and isinstance(base.get("name"), str):
        kwargs = {k: v for k, v in base.items() if k != "name"}
        REGISTRY.check_kwargs(base["name"], kwargs, field)
        return REGISTRY.get(base["name"], params, **kwargs)
    raise ConfigError(f"{field} must be an optimizer name or a mapping like {{'name': 'sgd', 'lr': 0.1}}, got {base!r}")
