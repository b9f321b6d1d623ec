"""μP (maximal update parametrization): width-aware initialization, per-layer learning rates, coordinate check.

μP scales each layer's initialization and learning rate with width so that, as
the width n grows, every layer's features move by Θ(1) per coordinate in every
step (feature learning at any width), and hyperparameters tuned on a narrow
model transfer to a wide one. We use the formulation of Tensor Programs V,
Table 3 (the abc-parametrization of Tensor Programs IV written without
multipliers), where "input" weights map a fixed dimension to a width, "hidden"
weights a width to a width, "output" weights a width to a fixed dimension, and
"vector" parameters are biases and norm gains::

                    input weights & all biases | output weights | hidden weights
    init variance   1/fan_in                   | 1/fan_in^2     | 1/fan_in
    SGD lr          eta * fan_out              | eta / fan_in   | eta
    Adam lr         eta                        | eta / fan_in   | eta / fan_in

As in the ``mup`` package (``set_base_shapes``), the table is applied relative to
a *base model* of the same architecture at a small width: each parameter's width
multiplier is its dimension over the base model's (``m_in = fan_in /
base_fan_in``, ``m_out = fan_out / base_fan_out``), so that μP and the standard
parametrization coincide at the base width and the base model's tuned ``eta``
carries over. Concretely, with ``eta`` the base learning rate:

    role     init (mup_init_)                       Adam lr             SGD lr
    input    N(0, std^2 / fan_in)                   eta                 eta * m_out
    hidden   N(0, std^2 / fan_in)                   eta / m_in          eta * m_out / m_in  (= eta when square)
    output   N(0, std^2 / (fan_in * m_in)), or 0    eta / m_in          eta / m_in
    vector   unchanged                              eta                 eta * m  (m = length / base length)

The output variance ``std^2 / (fan_in * m_in) = std^2 * base_fan_in / fan_in^2``
is Table 3's ``1/fan_in^2``, equal to the standard ``std^2 / fan_in`` at the base
width; ``readout_zero=True`` gives the zero readout TP-V recommends. Tensor
Programs V, Table 8 is the equivalent form with an output multiplier
``1/fan_in`` (the ``mup`` package's ``MuReadout`` divides the readout input by
``m_in``); this module changes no forward pass, so it uses Table 3. Biases and
gains keep their values: μP only needs them Θ(1) per coordinate, which torch's
defaults are.

Facts checked against the ``mup`` package (github.com/microsoft/mup,
``mup/optim.py``: MuAdam divides the lr of tensors with two width dimensions by
their fan-in multiplier; MuSGD multiplies the lr of one-width-dimension tensors
by their multiplier and divides that of two-width-dimension tensors by
``m_in / m_out``; ``mup/layer.py``, ``mup/shape.py``: output init rescaled to
variance ``1/(fan_in * m_in)`` through ``MuReadout``). Our code is our own.

Roles: for MLP-like models (``reglab.tasks`` ``mlp``; any model whose weights are
``nn.Linear``/``nn.Conv*`` modules in forward order) they are found
automatically by :func:`mlp_roles`: the first such layer is "input", the last
"output", the others "hidden", every 1-D parameter "vector". For other models
(transformers, embeddings) pass ``roles={param_name: role}`` covering every
parameter. Weights are read with the ``(fan_out, fan_in, *kernel)`` layout of
``nn.Linear``/``nn.Conv*``; an ``nn.Embedding`` (``(num, dim)``, a lookup of
one-hot inputs) counts as fan-in 1, so its μP init is ``N(0, std^2)``.
A transformer needs one more change this module cannot make: attention logits
scaled by ``1/d_head`` instead of ``1/sqrt(d_head)`` (TP-V, Section 4).

References: Yang & Hu, "Feature Learning in Infinite-Width Neural Networks"
(Tensor Programs IV, 2021); Yang et al., "Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer" (Tensor Programs V, 2022), Tables 3 and 8,
Appendix D (coordinate check).

Example:
    >>> from reglab.tasks import MODELS
    >>> base = MODELS.get("mlp", (16,), 4, width=64)
    >>> model = MODELS.get("mlp", (16,), 4, width=1024)
    >>> table = mup_init_(model, base)
    >>> opt = torch.optim.Adam(mup_param_groups(model, base, lr=1e-3))   # lr tuned at width 64
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_choice, check_float, check_int

ROLES = ("input", "hidden", "output", "vector")
_WEIGHT_ROLES = ("input", "hidden", "output")


@dataclass(frozen=True)
class MupParam:
    """How μP treats one parameter.

    Attributes:
        name: the parameter's name in ``model.named_parameters()``.
        role: "input", "hidden", "output" or "vector".
        fan_in: fan-in of a weight (1 for an embedding table; 0 for a vector).
        fan_in_mult: ``fan_in / base fan_in`` (1.0 for a vector).
        fan_out_mult: ``fan_out / base fan_out`` (for a vector: its length over the base length).
        init_std: standard deviation :func:`mup_init_` draws a weight from (``std`` scaled), None for a vector.
        adam_lr_mult: the factor on the base lr for Adam-like optimizers.
        sgd_lr_mult: the factor on the base lr for SGD-like optimizers.
    """

    name: str
    role: str
    fan_in: int
    fan_in_mult: float
    fan_out_mult: float
    init_std: float | None
    adam_lr_mult: float
    sgd_lr_mult: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """``{parameter name: the module that holds it directly}``."""
    out: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = module
    return out


def mlp_roles(model: nn.Module) -> dict[str, str]:
    """Automatic μP roles for an MLP-like model.

    The weights of ``nn.Linear`` and ``nn.Conv*`` modules, in registration
    order (which must be the forward order): first "input", last "output",
    the rest "hidden"; every 1-D parameter "vector". A model with a single such
    layer has nothing that scales with width; its weight is called "output".

    Raises:
        ConfigError: the model has a parameter of 2 or more dimensions outside a
            Linear or Conv module (an embedding, a raw matrix): pass ``roles`` explicitly.
    """
    owners = _owners(model)
    roles: dict[str, str] = {}
    weights: list[str] = []
    for name, p in model.named_parameters():
        module = owners[name]
        if p.dim() <= 1:
            roles[name] = "vector"
        elif isinstance(module, (nn.Linear, _ConvNd)) and name.endswith("weight"):
            weights.append(name)
        else:
            raise ConfigError(
                f"cannot infer the μP role of parameter {name!r} ({type(module).__name__}, shape "
                f"{tuple(p.shape)}); pass roles={{name: 'input'|'hidden'|'output'|'vector'}} for every parameter"
            )
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv weights; pass roles explicitly")
    for i, name in enumerate(weights):
        roles[name] = "input" if i == 0 and len(weights) > 1 else "output" if i == len(weights) - 1 else "hidden"
    return {name: roles[name] for name, _ in model.named_parameters()}


def _resolve_roles(model: nn.Module, roles: Mapping[str, str] | None) -> dict[str, str]:
    if roles is None:
        return mlp_roles(model)
    if not isinstance(roles, Mapping):
        raise ConfigError(f"roles must be a mapping {{param name: role}} or None, got {type(roles).__name__}")
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in roles]
    extra = [n for n in roles if n not in set(names)]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        raise ConfigError(f"roles must name every parameter of the model exactly once: {'; '.join(parts)}")
    for name, role in roles.items():
        check_choice(f"roles[{name!r}]", role, ROLES)
    return {n: roles[n] for n in names}


def mup_table(
    model: nn.Module, base_model: nn.Module, roles: Mapping[str, str] | None = None, *, std: float = 1.0
) -> dict[str, MupParam]:
    """Each parameter's μP role, width multipliers, init std and lr multipliers (the table in the module docstring).

    Args:
        model: the model to parametrize.
        base_model: the same architecture at the base width (only its shapes are read).
        roles: ``{param name: role}`` for every parameter, or None for :func:`mlp_roles`.
        std: init scale: weights get variance ``std^2 / fan_in`` (``/ (fan_in * m_in)`` for the output), > 0.

    Returns:
        ``{param name: MupParam}`` in parameter order.

    Raises:
        ConfigError: the roles are incomplete or invalid, or a role does not fit the parameter's shape.
        ShapeError: the base model's parameters differ in names or number of dimensions.
    """
    std = check_float("std", std, 0.0, low_open=True)
    roles = _resolve_roles(model, roles)
    base_shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()}
    if set(base_shapes) != set(roles):
        raise ShapeError(
            "base_model must have the same parameter names as model; "
            f"only in model: {sorted(set(roles) - set(base_shapes))}, "
            f"only in base_model: {sorted(set(base_shapes) - set(roles))}"
        )
    owners = _owners(model)
    table: dict[str, MupParam] = {}
    for name, p in model.named_parameters():
        role, shape, base = roles[name], tuple(p.shape), base_shapes[name]
        if len(shape) != len(base):
            raise ShapeError(f"parameter {name!r} has shape {shape} in model but {base} in base_model")
        if role == "vector":
            if len(shape) != 1:
                raise ConfigError(f"roles[{name!r}] is 'vector' but the parameter has shape {shape}; vectors are 1-D")
            m = shape[0] / base[0]
            table[name] = MupParam(name, role, 0, 1.0, m, None, 1.0, m)
            continue
        if len(shape) < 2:
            raise ConfigError(f"roles[{name!r}] is {role!r} but the parameter has shape {shape}; weights are >= 2-D")
        if isinstance(owners[name], nn.Embedding):  # (num, dim): dim is the fan-out, fan-in is a one-hot lookup
            fan_in, m_in, m_out = 1, 1.0, shape[1] / base[1]
        else:  # (fan_out, fan_in, *kernel)
            fan_in = math.prod(shape[1:])
            m_in, m_out = shape[1] / base[1], shape[0] / base[0]
        if role == "input":
            init, adam, sgd = std / math.sqrt(fan_in), 1.0, m_out
        elif role == "hidden":
            init, adam, sgd = std / math.sqrt(fan_in), 1.0 / m_in, m_out / m_in
        else:
            init, adam, sgd = std / math.sqrt(fan_in * m_in), 1.0 / m_in, 1.0 / m_in
        table[name] = MupParam(name, role, fan_in, m_in, m_out, init, adam, sgd)
    return table


@torch.no_grad()
def mup_init_(
    model: nn.Module,
    base_model: nn.Module,
    roles: Mapping[str, str] | None = None,
    *,
    std: float = 1.0,
    readout_zero: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, MupParam]:
    """Re-initialize ``model``'s weights in place with μP variances (TP-V Table 3, relative to ``base_model``).

    Input and hidden weights ~ ``N(0, std^2 / fan_in)``; output weights ~
    ``N(0, std^2 / (fan_in * m_in))`` (variance ∝ 1/fan_in^2, equal to the
    input/hidden rule at the base width), or zero with ``readout_zero=True``.
    Vectors (biases, gains) are left as they are.

    Example:
        >>> import math
        >>> from reglab.tasks import MODELS
        >>> base, model = MODELS.get("mlp", (16,), 4, width=64), MODELS.get("mlp", (16,), 4, width=256)
        >>> table = mup_init_(model, base, std=math.sqrt(2))      # He-like scale for ReLU

    Args:
        model: the model, changed in place.
        base_model: the same architecture at the base width.
        roles: ``{param name: role}`` for every parameter, or None for :func:`mlp_roles`.
        std: init scale, > 0; 1 (LeCun) or sqrt(2) (He, for ReLU) usual.
        readout_zero: set the output weights to zero (TP-V's recommended readout init).
        generator: random generator for the draws (default: torch's global one).

    Returns:
        The :func:`mup_table` used.

    Raises:
        ConfigError, ShapeError: as :func:`mup_table`.
    """
    table = mup_table(model, base_model, roles, std=std)
    for name, p in model.named_parameters():
        entry = table[name]
        if entry.role == "vector":
            continue
        if entry.role == "output" and readout_zero:
            p.zero_()
        else:
            draw_on = generator.device if generator is not None else p.device  # a CPU generator for a CUDA model
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype, device=draw_on) * entry.init_std)
    return table


def mup_param_groups(
    model: nn.Module,
    base_model: nn.Module,
    lr: float,
    optimizer: str = "adam",
    roles: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Param groups with μP learning rates (TP-V Table 3, relative to ``base_model``) for a torch optimizer.

    Adam-like (entrywise-normalized) optimizers: hidden and output weights get
    ``lr / m_in``, input weights and vectors ``lr``. SGD-like: input weights
    ``lr * m_out``, vectors ``lr * (length / base length)``, hidden weights
    ``lr * m_out / m_in`` (``lr`` for square growth), output weights
    ``lr / m_in``. Parameters with equal role and multiplier share a group;
    groups carry ``"role"`` and ``"lr_mult"`` keys for inspection (torch
    optimizers keep extra keys), and schedulers scale every group alike.

    Example:
        >>> from reglab.tasks import MODELS
        >>> base, model = MODELS.get("mlp", (16,), 4, width=64), MODELS.get("mlp", (16,), 4, width=256)
        >>> groups = mup_param_groups(model, base, lr=0.1, optimizer="sgd")
        >>> opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)

    Args:
        model: the model to train.
        base_model: the same architecture at the base width (where ``lr`` was tuned).
        lr: base learning rate, > 0.
        optimizer: ``"adam"`` (Adam, AdamW, RMSprop, Adagrad-like) or ``"sgd"`` (SGD, with or without momentum).
        roles: ``{param name: role}`` for every parameter, or None for :func:`mlp_roles`.

    Returns:
        A list of ``{"params": [...], "lr": float, "role": str, "lr_mult": float}``.

    Raises:
        ConfigError, ShapeError: as :func:`mup_table`, or a bad ``lr``/``optimizer``.
    """
    lr = check_float("lr", lr, 0.0, low_open=True)
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    table = mup_table(model, base_model, roles)
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        entry = table[name]
        mult = entry.adam_lr_mult if optimizer == "adam" else entry.sgd_lr_mult
        group = groups.setdefault((entry.role, mult), {"params": [], "lr": lr * mult, "role": entry.role})
        group["lr_mult"] = mult
        group["params"].append(p)
    return list(groups.values())


def _default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    if targets.is_floating_point():
        return 0.5 * F.mse_loss(outputs, targets.to(outputs.dtype).reshape(outputs.shape))
    return F.cross_entropy(outputs, targets)


def coord_check(
    make_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    data: tuple[Tensor, Tensor],
    *,
    steps: int = 3,
    lr: float = 1e-2,
    parametrization: str = "mup",
    optimizer: str = "adam",
    base_width: int | None = None,
    roles: Mapping[str, str] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    std: float = 1.0,
    readout_zero: bool = False,
    seed: int = 0,
) -> dict[int, list[dict[str, float]]]:
    """Coordinate check (TP-V, Appendix D): RMS of each layer's feature change after each step, per width.

    For every width ``n``, build ``make_model(n)`` (after ``torch.manual_seed(seed)``),
    parametrize it, take ``steps`` full-batch steps on ``data`` and, after step
    ``t``, record for each weight layer (each module holding an input, hidden or
    output weight) ``sqrt(mean((h_t - h_0)^2))``, where ``h_t`` is that
    module's output on ``data``'s inputs after ``t`` steps. Under μP these
    stay roughly constant in width; under the standard parametrization with Adam
    the hidden and output changes grow about linearly with width.

    ``parametrization="mup"``: :func:`mup_init_` and :func:`mup_param_groups` with
    the base model ``make_model(base_width)``. ``"sp"``: the model as built (torch's
    default init, variance ∝ 1/fan_in) and one lr for every parameter.

    Example:
        >>> from reglab.tasks import MODELS
        >>> make = lambda n: MODELS.get("mlp", (16,), 4, width=n, depth=2)
        >>> x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
        >>> out = coord_check(make, [64, 256, 1024], (x, y), steps=4, lr=1e-2)
        >>> ratio = out[1024][-1]["body.2"] / out[64][-1]["body.2"]    # ~1 under μP

    Args:
        make_model: ``width -> model``; models of different widths share parameter names.
        widths: widths to compare, each >= 1.
        data: one batch ``(inputs, targets)``; integer targets use cross-entropy, float ones half MSE.
        steps: optimizer steps, >= 1.
        lr: (base) learning rate, > 0.
        parametrization: ``"mup"`` or ``"sp"``.
        optimizer: ``"adam"`` (torch.optim.Adam) or ``"sgd"`` (torch.optim.SGD).
        base_width: width of the μP base model (default: the smallest width).
        roles: ``{param name: role}``, or None for :func:`mlp_roles`.
        loss_fn: ``loss(outputs, targets)``; default as above.
        std: μP init scale (see :func:`mup_init_`).
        readout_zero: μP zero readout init.
        seed: torch seed set before building each model.

    Returns:
        ``{width: [{layer name: rms of h_t - h_0} for t in 1..steps]}``.

    Raises:
        ConfigError: an argument out of range.
        ShapeError, ConfigError: as :func:`mup_table`.
    """
    widths = [check_int("widths[]", w, 1) for w in widths]
    if not widths:
        raise ConfigError("widths must name at least one width")
    steps = check_int("steps", steps, 1)
    lr = check_float("lr", lr, 0.0, low_open=True)
    check_choice("parametrization", parametrization, ("mup", "sp"))
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    base_width = min(widths) if base_width is None else check_int("base_width", base_width, 1)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ConfigError("data must be one batch (inputs, targets)")
    x, y = data
    loss_fn = loss_fn or _default_loss
    results: dict[int, list[dict[str, float]]] = {}
    for width in widths:
        torch.manual_seed(seed)
        model = make_model(width)
        if parametrization == "mup":
            torch.manual_seed(seed)
            base = make_model(base_width)
            table = mup_init_(model, base, roles, std=std, readout_zero=readout_zero)
            groups = mup_param_groups(model, base, lr, optimizer, roles)
        else:
            table = mup_table(model, model, roles)
            groups = [{"params": list(model.parameters()), "lr": lr}]
        opt = torch.optim.Adam(groups, lr=lr) if optimizer == "adam" else torch.optim.SGD(groups, lr=lr)
        layers = _layer_modules(model, table)
        h0 = _features(model, layers, x)
        history = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            ht = _features(model, layers, x)
            history.append({k: (ht[k] - h0[k]).pow(2).mean().sqrt().item() for k in layers})
        results[width] = history
    return results


def _layer_modules(model: nn.Module, table: Mapping[str, MupParam]) -> dict[str, nn.Module]:
    owners = _owners(model)
    mods = {n: m for n, m in model.named_modules()}
    inverse = {id(m): n for n, m in mods.items()}
    out: dict[str, nn.Module] = {}
    for name, entry in table.items():
        if entry.role != "vector":
            module = owners[name]
            out.setdefault(inverse[id(module)] or type(module).__name__, module)
    return out


@torch.no_grad()
def _features(model: nn.Module, layers: Mapping[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out.detach().clone()))
        for key, module in layers.items()
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return captured


__all__ = ["ROLES", "MupParam", "coord_check", "mlp_roles", "mup_init_", "mup_param_groups", "mup_table"]
