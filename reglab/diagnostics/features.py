"""Reading a model's penultimate representation: ``features(x)``, the readout ``head(h)``, subsamples, checks.

The representation diagnostics (:mod:`~reglab.diagnostics.neural_collapse`,
:mod:`~reglab.diagnostics.rank`, :mod:`~reglab.diagnostics.malignant_tail`)
read the penultimate features ``model.features(x)`` and the readout
``model.head(h)``, the pair every reglab reference model implements (any
classifier gets them from :func:`reglab.tasks.split_model`). The model runs in
eval mode without gradients and its train/eval mode is restored; subsamples
are drawn from a local ``torch.Generator`` seeded by ``seed``, so the global
RNG is not touched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, ShapeError
from reglab.core.validation import check_int
from reglab.linalg.functional import eval_mode


def as_pair(data: Any, name: str = "data") -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` from a pair/triple of tensors or an iterable of (x, y) / (x, y, index) batches."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        return data[0], torch.as_tensor(data[1])
    xs, ys = [], []
    try:
        for batch in data:
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]))
    except TypeError:
        raise ConfigError(
            f"{name} must be an (inputs, targets) pair or an iterable of (x, y[, index]) batches, "
            f"got {type(data).__name__}"
        ) from None
    if not xs:
        raise ConfigError(f"{name} is empty: give an (inputs, targets) pair or a non-empty DataLoader")
    return torch.cat(xs), torch.cat(ys)


def check_labels(labels: Tensor, n: int, name: str = "labels") -> Tensor:
    """``labels`` as int64 class indices after checking them: shape (n,), an integer dtype, no negative value."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ShapeError(f"{name} must be integer class indices, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ShapeError(f"{name} must be class indices >= 0, got {int(labels.min())}")
    return labels.long()


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """``features`` after checking that it is a floating-point (n, D) tensor with n, D >= 1."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ShapeError(f"{name} must be an (n, D) tensor with n >= 1 and D >= 1, got {shape}")
    if not features.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {features.dtype}")
    return features


def require_features_head(model: nn.Module) -> None:
    """Raise :class:`MissingContextError` unless ``model`` has callable ``features`` and ``head`` methods."""
    missing = [m for m in ("features", "head") if not callable(getattr(model, m, None))]
    if missing:
        raise MissingContextError(
            f"{type(model).__name__} has no {' or '.join(f'{m}(...)' for m in missing)}; representation diagnostics "
            "need model.features(x) (the penultimate features, (n, D)) and model.head(h) (the readout), as reglab's "
            "reference models (reglab.tasks.MODELS) provide"
        )


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def subsample(n: int, max_examples: int | None, seed: int) -> Tensor | None:
    """Indices of ``max_examples`` examples drawn without replacement from a local generator, or None for all."""
    if max_examples is None or max_examples >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_examples].sort().values


def check_max_examples(max_examples: int | None) -> int | None:
    """``max_examples``: None (all examples) or an int >= 1."""
    return None if max_examples is None else check_int("max_examples", max_examples, 1)


@torch.no_grad()
def features_and_logits(model: nn.Module, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """``(features(x), head(features(x)))`` in eval mode, without gradients; the model's mode is restored."""
    dtype = _param_dtype(model)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    with eval_mode(model):
        hs, outs = [], []
        for i in range(0, len(x), batch_size):
            h = model.features(x[i : i + batch_size])
            if not isinstance(h, Tensor) or h.ndim != 2:
                shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ShapeError(f"model.features(x) must return an (n, D) tensor, got {shape}")
            hs.append(h)
            outs.append(model.head(h))
    return torch.cat(hs), torch.cat(outs)


@torch.no_grad()
def read_features(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``features(x)`` in eval mode, without gradients, ``batch_size`` examples at a time; the mode is restored."""
    dtype = _param_dtype(model)
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    with eval_mode(model):
        hs = [model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    h = torch.cat(hs)
    if h.ndim != 2:
        raise ShapeError(f"model.features(x) must return an (n, D) tensor, got {tuple(h.shape)}")
    return h


@torch.no_grad()
def affine_head(model: nn.Module, features: Tensor, logits: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(W, b)`` with ``head(h) = h W^T + b`` in float64, or None when the head is not affine on these features.

    An ``nn.Linear`` head gives its weight and bias. Any other head is read off
    as ``b = head(0)``, ``W[:, j] = head(e_j) - b`` (one batch of D + 1 rows, in
    eval mode) and accepted when it reproduces the network's logits on the
    features to within sqrt(eps) of the logits' scale (round-off of an affine
    map in the model's dtype is about D * eps of that scale).
    """
    head = model.head
    if isinstance(head, nn.Linear):
        weight = head.weight.detach().double()
        bias = head.bias.detach().double() if head.bias is not None else weight.new_zeros(weight.shape[0])
        return weight, bias
    d = features.shape[1]
    basis = torch.cat([features.new_zeros(1, d), torch.eye(d, dtype=features.dtype, device=features.device)])
    with eval_mode(model):
        out = head(basis)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != logits.shape[1]:
        return None
    out = out.double()
    bias = out[0]
    weight = (out[1:] - bias).T.contiguous()
    h = features.double()
    scale = float((h.abs() @ weight.abs().T + bias.abs()).max())
    error = float((h @ weight.T + bias - logits.double()).abs().max())
    tolerance = math.sqrt(torch.finfo(features.dtype).eps) * max(scale, 1.0)
    return (weight, bias) if error <= tolerance else None
