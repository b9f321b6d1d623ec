"""Directions in parameter space for loss landscapes: random Gaussian, normalized per filter or per layer.

Filter normalization ("Visualizing the Loss Landscape of Neural Nets", Li et
al., 2018): d ~ N(0, I), then for every filter j of every parameter i (a row
of a Linear weight, an output channel of a convolution: a slice along
dimension 0 of a parameter with two or more dimensions)
d_ij ← d_ij · ‖θ_ij‖ / ‖d_ij‖; parameters with at most one dimension (biases,
normalization-layer scales and shifts) get d_i = 0 ("ignore biasbn"). This is
what the reference code does (``normalize_directions_for_weights`` in
``net_plotter.py`` of github.com/tomgoldstein/loss-landscape, checked): it
zeroes every parameter with ``d.dim() <= 1`` under ``ignore='biasbn'`` and
otherwise copies θ_i into the direction; a filter with ‖d_ij‖ = 0 stays 0
here (the reference adds 1e-10 to the denominator).

Random directions come from a private ``torch.Generator`` seeded by ``seed``
(on the CPU), so the global RNG is not touched and the same seed gives the
same directions on any device. :func:`random_flat` and
:func:`flat_direction` are the flat-vector forms the landscape measurements
of :mod:`reglab.diagnostics.landscape` use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_choice, check_int
from reglab.linalg.functional import FunctionalModel, Params

NORMALIZATIONS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")


def _normalize(fm: FunctionalModel, d: Params, normalization: str, ignore: str) -> Params:
    """Li et al.'s normalization of a direction ``{name: tensor}`` against the parameters ``fm.params``."""
    out: Params = {}
    for name in fm.names:
        theta, v = fm.params[name], d[name]
        if theta.dim() <= 1:
            if ignore == "biasbn":
                out[name] = torch.zeros_like(theta)
            else:  # the reference code keeps biases/BN "as they are": the direction is the parameter itself
                out[name] = theta.clone() if normalization != "none" else v.clone()
        elif normalization == "filter":
            rows_t, rows_d = theta.reshape(len(theta), -1), v.reshape(len(v), -1)
            t_norm, d_norm = rows_t.norm(dim=1, keepdim=True), rows_d.norm(dim=1, keepdim=True)
            scale = torch.where(d_norm > 0, t_norm / torch.where(d_norm > 0, d_norm, 1.0), 0.0)
            out[name] = (rows_d * scale).reshape(theta.shape)
        elif normalization == "layer":
            d_norm = v.norm()
            out[name] = v * (theta.norm() / d_norm) if d_norm > 0 else torch.zeros_like(v)
        else:
            out[name] = v.clone()
    return out


def random_flat(fm: FunctionalModel, k: int, seed: int, normalization: str, ignore: str) -> list[Tensor]:
    """``k`` random directions, flat, drawn in turn from one generator seeded with ``seed`` (on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        raw = {n: torch.randn(fm.params[n].shape, generator=gen, dtype=fm.dtype).to(fm.device) for n in fm.names}
        out.append(fm.flatten(_normalize(fm, raw, normalization, ignore)))
    return out


def flat_direction(fm: FunctionalModel, direction: Any, name: str = "direction") -> Tensor:
    """A user direction (flat vector or ``{name: tensor}``, missing names zero) as a flat vector."""
    if isinstance(direction, Tensor):
        if direction.shape != (fm.numel,):
            raise ShapeError(
                f"{name} must be a flat vector of shape ({fm.numel},) (trainable parameters in named_parameters "
                f"order), got {tuple(direction.shape)}"
            )
        return direction.detach().to(dtype=fm.dtype, device=fm.device)
    if isinstance(direction, dict):
        unknown = sorted(set(direction) - set(fm.names))
        if unknown:
            raise ConfigError(f"{name}: unknown or frozen parameter name(s) {unknown}; trainable: {fm.names}")
        parts = {}
        for n in fm.names:
            if n not in direction:
                parts[n] = torch.zeros_like(fm.params[n])
                continue
            v = torch.as_tensor(direction[n])
            if v.shape != fm.params[n].shape:
                raise ShapeError(
                    f"{name}[{n!r}] must have the parameter's shape {tuple(fm.params[n].shape)}, got {tuple(v.shape)}"
                )
            parts[n] = v.detach().to(dtype=fm.dtype, device=fm.device)
        return fm.flatten(parts)
    raise ConfigError(
        f"{name} must be 'random', a flat tensor or a {{parameter name: tensor}} dict, got {type(direction).__name__}"
    )


def random_directions(
    model: nn.Module,
    k: int = 1,
    seed: int = 0,
    normalization: str = "filter",
    ignore: str = "biasbn",
    params: Any = None,
) -> list[Params]:
    """``k`` random Gaussian directions, normalized as in Li et al. (2018), as ``{name: tensor}`` dicts.

    d ~ N(0, I) per parameter, then with ``normalization="filter"``: for every
    slice j along dimension 0 of a parameter θ_i with two or more dimensions
    (a row of a Linear weight, an output channel of a convolution),
    d_ij ← d_ij · ‖θ_ij‖ / ‖d_ij‖; ``"layer"``: d_i ← d_i · ‖θ_i‖ / ‖d_i‖;
    ``"none"``: d unchanged. Parameters with at most one dimension (biases,
    BatchNorm/LayerNorm weights) get d_i = 0 when ``ignore="biasbn"``; with
    ``ignore="none"`` they get d_i = θ_i (the reference code's choice) under
    filter/layer normalization and stay Gaussian under ``"none"``.

    The directions are drawn one after the other from a private generator
    seeded with ``seed`` (on the CPU, in the model's dtype), so they are the
    same for the same seed on any device and the global RNG is not touched;
    ``surface``, ``along_direction`` and ``random_sharpness`` use this same
    sequence.

    References: "Visualizing the Loss Landscape of Neural Nets", Li, Xu, Taylor,
    Studer & Goldstein, 2018 (reference code: ``net_plotter.py``,
    ``normalize_directions_for_weights``).

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> d = random_directions(net, k=1, seed=0)[0]
        >>> bool(torch.allclose(d["weight"].norm(dim=1), net.weight.detach().norm(dim=1)))
        True
        >>> d["bias"].abs().sum().item()
        0.0

    Args:
        model: the model; it is not changed.
        k: number of directions, >= 1.
        seed: seed of the private generator, >= 0.
        normalization: ``"filter"`` (default), ``"layer"`` or ``"none"``.
        ignore: ``"biasbn"`` (zero the direction on 0-/1-D parameters) or ``"none"``.
        params: which parameters (see :func:`reglab.linalg.functional.select_params`); default all trainable.

    Returns:
        A list of ``k`` dicts ``{parameter name: tensor}`` shaped like the parameters.

    Raises:
        ConfigError: an argument is out of range.
    """
    check_int("k", k, 1)
    check_int("seed", seed, 0)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("ignore", ignore, IGNORES)
    fm = FunctionalModel(model, None, params)
    return [fm.unflatten(v) for v in random_flat(fm, k, seed, normalization, ignore)]


def normalize_direction(
    model: nn.Module, direction: Any, normalization: str = "filter", ignore: str = "biasbn", params: Any = None
) -> Params:
    """Filter- (or layer-) normalize a given direction against ``model``'s parameters (Li et al., 2018).

    The same rule as :func:`random_directions` applied to ``direction`` (a flat
    vector in ``named_parameters`` order or a ``{name: tensor}`` dict, missing
    names counting as zero). A filter whose direction is zero stays zero.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> d = normalize_direction(net, {"weight": torch.ones(2, 3)})
        >>> bool(torch.allclose(d["weight"].norm(dim=1), net.weight.detach().norm(dim=1)))
        True

    Returns:
        ``{parameter name: tensor}``.

    Raises:
        ConfigError: unknown names or an invalid option. ShapeError: a tensor of the wrong shape.
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("ignore", ignore, IGNORES)
    fm = FunctionalModel(model, None, params)
    return _normalize(fm, fm.unflatten(flat_direction(fm, direction)), normalization, ignore)
