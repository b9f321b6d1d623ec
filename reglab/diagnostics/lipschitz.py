"""Lipschitz bounds of a network's input -> output map: global product bound, local IBP bound, sampled lower bound.

All three numbers are about the same quantity, the l2 -> l2 Lipschitz constant
of ``f``: the map from the flattened input to the flattened model output (the
logits). For a differentiable point the local constant is the spectral norm of
the input Jacobian ``J(x) = d f / d x`` (all logits at once, not one class).

- ``product_bound`` = prod over the model's leaf modules of an upper bound of
  each one's l2 Lipschitz constant: ``||W||_2`` for ``nn.Linear`` (exact, via
  ``torch.linalg.matrix_norm(ord=2)``); for convolutions the FFT value of
  :func:`reglab.linalg.conv_spectrum.conv_norm_bound` (exact for circular
  padding that keeps the size at stride 1, Sedghi et al., 2019; for zero and
  other paddings the certified bound on the padded size, since the FFT value on
  the unpadded size is not an upper bound there); ``sup |sigma'|`` for
  activations (1 for ReLU/Tanh, ``max(1, slope)`` for LeakyReLU, 1/4 for Sigmoid,
  ``Phi(sqrt 2) + sqrt 2 phi(sqrt 2) ~ 1.129`` for exact GELU); ``max |gamma| /
  sqrt(var + eps)`` for eval-mode BatchNorm; ``sqrt(m)`` for max pooling and
  ``sqrt(||A||_1 ||A||_inf)`` for average pooling ``A``, with ``m`` the largest
  number of windows holding one input element. A module called twice counts
  twice. **Validity**: the product bounds the global constant when the forward
  pass is a composition of these leaf modules, glued only by parameter-free
  1-Lipschitz operations (reshape/flatten, global max or mean pooling, as in
  reglab's reference MLP and CNNs). Residual connections, attention or
  normalization written in ``forward`` are invisible to it; unsupported leaf
  modules (Embedding, LayerNorm, ...) raise.
- ``ibp_bound`` = max over the data points ``x_i`` of the interval-bound-
  propagation bound ``U_i`` of :func:`reglab.linalg.interval.ibp_lipschitz_bound`
  on the box ``B_i = {x : ||x - x_i||_inf <= radius}``: ``f`` is ``U_i``-Lipschitz
  on ``B_i`` and ``||J(x)||_2 <= U_i`` for every ``x`` in ``B_i`` (proof in
  :mod:`reglab.linalg.interval`). Only for ReLU MLPs whose forward is the chain of
  their Linear/ReLU leaf modules applied to the flattened input (checked on the
  data), or an explicit ``layers`` chain.
- ``sampled_lower`` = max of ``||J(x)||_2`` over the data points and
  ``n_samples`` uniform points in each box: a lower bound of ``max_i L(B_i)``,
  the largest local constant over the boxes, and of the global constant.

So ``sampled_lower <= max_i L(B_i) <= upper_bound = min(product_bound,
ibp_bound)``; the two upper bounds are not ordered in general (IBP uses ``|W|``,
whose norm can exceed ``||W||``), though on small boxes IBP is usually far
tighter ("Efficiently Computing Local Lipschitz Constants of Neural Networks via
Bound Propagation", Shi et al., NeurIPS 2022). Everything is computed in float64
on copies of the parameters (``torch.func.functional_call``), in eval mode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_bool, check_float, check_int
from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.conv_spectrum import conv_norm_bound
from reglab.linalg.functional import eval_mode
from reglab.linalg.interval import SUPPORTED as IBP_SUPPORTED
from reglab.linalg.interval import interval_bounds, interval_matrix_norm, relu_jacobian_interval

#: sup of GELU'(x) = Phi(x) + x phi(x): GELU''(x) = phi(x) (2 - x^2) vanishes at x = sqrt(2).
GELU_LIPSCHITZ = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)

_ONE_LIPSCHITZ = (
    nn.ReLU,
    nn.Hardtanh,  # includes ReLU6
    nn.Tanh,
    nn.Softsign,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.modules.dropout._DropoutNd,  # the identity in eval mode
)


@dataclass
class LipschitzResult:
    """Bounds on the l2 -> l2 Lipschitz constant of the map flattened input -> flattened output.

    Attributes:
        product_bound: global upper bound, the product of the per-layer constants.
        ibp_bound: max over data points of the IBP bound on the l_inf box of half-width ``radius``; None when
            not computed (no data, or the model is not a chain of Linear/ReLU modules: see ``notes``).
        sampled_lower: max of ``||J(x)||_2`` over the sampled points; None without data.
        upper_bound: ``min(product_bound, ibp_bound)``, a bound on every box's local constant.
        per_layer: the constant used for each leaf module call, by module name.
        inexact_layers: names whose constant is an upper bound rather than the exact value.
        ibp_mean: mean over data points of the per-box IBP bound.
        unstable_fraction: mean fraction of ReLU units whose sign is not fixed on a box.
        radius: half-width of the boxes.
        n_points: data points used; n_sampled: points where the Jacobian was evaluated.
        n_grad: backward passes spent on Jacobians; seconds: wall time.
        notes: why a bound was not computed.
    """

    product_bound: float
    ibp_bound: float | None
    sampled_lower: float | None
    upper_bound: float
    per_layer: dict[str, float] = field(default_factory=dict)
    inexact_layers: list[str] = field(default_factory=list)
    ibp_mean: float | None = None
    unstable_fraction: float | None = None
    radius: float = 0.0
    n_points: int = 0
    n_sampled: int = 0
    n_grad: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- data -----------------------------------------------------------------


def _inputs(data: Any) -> Tensor:
    """The inputs of ``data``: a tensor, an ``(x, y[, index])`` pair/triple, or an iterable of such batches."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], Tensor) and len(data) in (2, 3):
        return data[0]
    xs = []
    try:
        for batch in data:
            xs.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    except TypeError:
        raise ConfigError(
            f"data must be an (inputs, targets) pair, an inputs tensor or an iterable of batches, "
            f"got {type(data).__name__}"
        ) from None
    if not xs:
        raise ConfigError("data is empty: give an (inputs, targets) pair or a non-empty DataLoader")
    return torch.cat(xs)


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ConfigError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
    return shape


# -- per-layer constants --------------------------------------------------


def _calls(model: nn.Module, example: Tensor | None) -> list[tuple[str, nn.Module, tuple[int, ...] | None]]:
    """The leaf modules in call order with their input shapes (one forward pass), or all leaves without an example."""
    for name, module in model.named_modules():
        if list(module.children()) and list(module.parameters(recurse=False)):
            raise ConfigError(
                f"module {name or '(model)'!r} ({type(module).__name__}) holds parameters of its own besides "
                f"submodules; the product bound only handles chains of supported leaf modules"
            )
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    if example is None:
        return [(n, m, None) for n, m in leaves]
    calls: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    handles = []

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            shape = tuple(args[0].shape) if args and isinstance(args[0], Tensor) else None
            calls.append((name, module, shape))

        return hook

    try:
        for name, module in leaves:
            handles.append(module.register_forward_pre_hook(recorder(name)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return calls


def _pool_counts(in_spatial: tuple[int, ...], kernel: Any, stride: Any, padding: Any, ceil_mode: bool) -> Tensor:
    """Number of pooling windows holding each input element (2-D form of torch's window rule)."""
    d = len(in_spatial)

    def pair(v: Any) -> tuple[int, ...]:
        v = (v,) * d if isinstance(v, int) else tuple(v)
        return (1, *v) if d == 1 else v

    size = (1, *in_spatial) if d == 1 else in_spatial
    x = torch.zeros(1, 1, *size, dtype=torch.float64, requires_grad=True)
    k = pair(kernel)
    s = pair(stride if stride is not None else kernel)
    p = (0, *pair(padding)[1:]) if d == 1 else pair(padding)
    windows = F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode, count_include_pad=True, divisor_override=1)
    (grad,) = torch.autograd.grad(windows.sum(), x)
    return grad


def _layer_constant(name: str, module: nn.Module, shape: tuple[int, ...] | None) -> tuple[float, bool]:
    """(upper bound of the module's l2 Lipschitz constant, whether it is exact)."""
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2)), True
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        d = module.weight.ndim - 2
        if shape is None:
            raise ConfigError(
                f"module {name!r} ({type(module).__name__}) needs its input size: pass data or input_shape"
            )
        spatial = shape[-d:]
        if module.padding == "valid":
            pads: list[tuple[int, int]] = [(0, 0)] * d
        elif module.padding == "same":
            totals = [dil * (k - 1) for dil, k in zip(module.dilation, module.kernel_size)]
            pads = [(t // 2, t - t // 2) for t in totals]
        else:
            pads = [(p, p) for p in module.padding]
        bound, exact = conv_norm_bound(
            module.weight.detach().double(),
            spatial,
            padding=pads,
            stride=tuple(module.stride),
            dilation=tuple(module.dilation),
            groups=module.groups,
            padding_mode=module.padding_mode,
        )
        return float(bound), exact
    if isinstance(module, _ONE_LIPSCHITZ):
        return 1.0, True
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope)), True
    if isinstance(module, nn.ELU):
        return max(1.0, abs(module.alpha)), True
    if isinstance(module, nn.Sigmoid):
        return 0.25, True
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return GELU_LIPSCHITZ, True
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
        scale = (module.running_var.detach().double() + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach().double().abs()
        return float(scale.max()), True
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        if shape is None:
            raise ConfigError(
                f"module {name!r} ({type(module).__name__}) needs its input size: pass data or input_shape"
            )
        d = 1 if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d)) else 2
        spatial = shape[-d:]
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
            if module.return_indices or module.dilation not in (1, (1,) * d):
                raise ConfigError(f"module {name!r}: max pooling with dilation or return_indices is not supported")
            counts = _pool_counts(spatial, module.kernel_size, module.stride, module.padding, module.ceil_mode)
            m = float(counts.max())
            return math.sqrt(m), m == 1
        x = torch.zeros(1, 1, *spatial, dtype=torch.float64, requires_grad=True)
        (col,) = torch.autograd.grad(module(x).sum(), x)  # column sums of the (nonnegative) averaging matrix
        row = module(torch.ones(1, 1, *spatial, dtype=torch.float64))  # row sums
        return math.sqrt(float(col.max()) * float(row.max())), False
    raise ConfigError(
        f"no Lipschitz constant for module {name!r} ({type(module).__name__}); the product bound supports "
        f"Linear, Conv1d/2d/3d, BatchNorm (eval), Max/AvgPool1d/2d and ReLU, LeakyReLU, ELU, Tanh, Sigmoid, "
        f"GELU, Hardtanh, Softsign, Identity, Flatten, Dropout"
    )


def _product(calls: list) -> tuple[float, dict[str, float], list[str]]:
    per_layer: dict[str, float] = {}
    inexact: list[str] = []
    product = 1.0
    for name, module, shape in calls:
        value, exact = _layer_constant(name, module, shape)
        key, k = name, 2
        while key in per_layer:
            key, k = f"{name}#{k}", k + 1
        per_layer[key] = value
        if not exact:
            inexact.append(key)
        product *= value
    return product, per_layer, inexact


# -- Jacobians ------------------------------------------------------------


def _float64_state(model: nn.Module) -> dict[str, Tensor]:
    state = {n: p.detach().double() for n, p in model.named_parameters()}
    state.update({n: b.detach().double() if b.is_floating_point() else b for n, b in model.named_buffers()})
    return state


def _jacobian_norms(model: nn.Module, state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, int]:
    """``||J(x_i)||_2`` for each row of ``x`` (float64) and the number of backward passes."""
    x = x.detach().clone().requires_grad_(True)
    out = functional_call(model, state, (x,)).reshape(len(x), -1)
    rows = []
    for j in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, j].sum(), x, retain_graph=j + 1 < out.shape[1])
        rows.append(g.reshape(len(x), -1))
    jac = torch.stack(rows, dim=1)  # (n, outputs, inputs)
    return torch.linalg.matrix_norm(jac, ord=2), out.shape[1]


def _chain_matches(chain: list[nn.Module], model: nn.Module, state: dict[str, Tensor], x: Tensor) -> str | None:
    """None when the chain applied to the flattened input reproduces the model; else why not."""
    try:
        lo, hi = _chain_forward(chain, x)
    except (ShapeError, RuntimeError) as err:
        return f"the chain of leaf modules does not run on the flattened input ({err})"
    with torch.no_grad():
        out = functional_call(model, state, (x,)).reshape(len(x), -1)
    if lo.shape != out.shape:
        return f"the chain gives outputs {tuple(lo.shape)} but the model {tuple(out.shape)}"
    err = float((lo - out).abs().max())
    tol = 1e-9 * (1.0 + float(out.abs().max()))
    if err > tol:
        return f"the chain of leaf modules differs from the model's output by {err:.3g} (> {tol:.3g})"
    return None


def _chain_forward(chain: list[nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
    flat = x.detach().double().flatten(1)
    return interval_bounds(chain, flat, flat)


# -- the diagnostic ---------------------------------------------------------


def lipschitz_bounds(
    model: nn.Module,
    data: Any = None,
    radius: float = 0.05,
    n_samples: int = 16,
    seed: int = 0,
    *,
    max_points: int = 256,
    input_shape: Sequence[int] | None = None,
    ibp: bool | None = None,
    layers: Sequence[nn.Module] | None = None,
    batch_size: int = 256,
) -> LipschitzResult:
    """Upper and lower bounds on the l2 Lipschitz constant of ``model`` (input -> logits).

    See the module docstring for the three quantities and why each bounds what it does.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).double()
        >>> x = torch.randn(64, 4, dtype=torch.float64)
        >>> r = lipschitz_bounds(model, (x, None), radius=0.05, n_samples=8)
        >>> r.sampled_lower <= r.upper_bound <= r.product_bound
        True

    References:
        Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019; Shi et al.,
        "Efficiently Computing Local Lipschitz Constants of Neural Networks via Bound Propagation", NeurIPS 2022.

    Args:
        model: the network; it is not changed (eval mode during the call, mode restored).
        data: inputs (tensor), an ``(inputs, targets)`` pair or an iterable of batches; None for the
            product bound alone.
        radius: half-width of the l_inf boxes around data points, >= 0 (0: the data points only).
        n_samples: uniform random points per box where the Jacobian is evaluated, >= 0 (none when radius is 0).
        seed: seed of the local generator (subsample and random points); the global RNG is not used.
        max_points: use at most this many data points (a seeded random subset), >= 1.
        input_shape: shape of one input (no batch), to size convolutions when ``data`` is None.
        ibp: True to require the IBP bound, False to skip it, None to compute it when the model qualifies.
        layers: the chain of modules equal to the model on the flattened input, for the IBP bound
            (default: the model's leaf modules in call order, checked against the model on the data).
        batch_size: points per Jacobian / IBP batch, >= 1.

    Returns:
        A :class:`LipschitzResult`.

    Raises:
        ConfigError: a bad argument, a module without a known constant (named), empty data, or ``ibp=True``
            for a model that is not a chain of Linear/ReLU modules.
        ShapeError: integer (token) inputs, which have no input gradient.
    """
    start = time.perf_counter()
    radius = check_float("radius", radius, 0.0)
    n_samples = check_int("n_samples", n_samples, 0)
    seed = check_int("seed", seed, 0)
    max_points = check_int("max_points", max_points, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if ibp not in (None, True, False):
        raise ConfigError(f"ibp must be None, True or False, got {ibp!r}")

    x = None if data is None else _inputs(data)
    if x is not None and not x.is_floating_point():
        raise ShapeError(f"inputs must be floating point (Lipschitz constants need input gradients), got {x.dtype}")
    if x is not None and len(x) == 0:
        raise ConfigError("data is empty: give at least one input")
    generator = torch.Generator().manual_seed(seed)
    if x is not None and len(x) > max_points:
        x = x[torch.randperm(len(x), generator=generator)[:max_points].to(x.device)]

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if x is not None:
        x = x.to(device)
    with eval_mode(model):
        if x is not None:
            example = x[:1].to(dtype)
        elif input_shape is not None:
            example = torch.zeros(1, *_shape(input_shape), dtype=dtype, device=device)
        else:
            example = None
        calls = _calls(model, example)
        product, per_layer, inexact = _product(calls)
        result = LipschitzResult(product, None, None, product, per_layer, inexact, radius=radius)
        if x is None:
            if ibp:
                raise ConfigError("ibp=True needs data: the IBP bound is local to boxes around data points")
            result.seconds = time.perf_counter() - start
            return result

        state = _float64_state(model)
        points = x.detach().double()
        result.n_points = len(points)

        # sampled lower bound: data points and uniform points in their boxes
        best, n_sampled, n_grad = 0.0, 0, 0
        samples = [points]
        if radius > 0 and n_samples > 0:
            for _ in range(n_samples):
                u = torch.rand(points.shape, generator=generator, dtype=torch.float64).to(points.device)
                samples.append(points + radius * (2 * u - 1))
        for chunk in torch.cat(samples).split(batch_size):
            norms, passes = _jacobian_norms(model, state, chunk)
            best = max(best, float(norms.max()))
            n_sampled += len(chunk)
            n_grad += passes
        result.sampled_lower, result.n_sampled, result.n_grad = best, n_sampled, n_grad

        # IBP bound on each box
        if ibp is not False:
            chain = list(layers) if layers is not None else [m for _, m, _ in calls]
            reason = None
            unsupported = [type(m).__name__ for m in chain if not isinstance(m, (*IBP_SUPPORTED, nn.Sequential))]
            if unsupported:
                reason = f"IBP bound skipped: the model has modules IBP does not support ({', '.join(unsupported)})"
            else:
                why = _chain_matches(chain, model, state, points)
                if why is not None:
                    reason = f"IBP bound skipped: {why}; pass layers= with the chain equal to the model"
            if reason is not None:
                if ibp:
                    raise ConfigError(reason.replace("IBP bound skipped", "ibp=True but"))
                result.notes.append(reason)
            else:
                bounds, unstable = [], []
                for chunk in points.flatten(1).split(batch_size):
                    jac = relu_jacobian_interval(chain, chunk - radius, chunk + radius)
                    bounds.append(interval_matrix_norm(jac.lower, jac.upper, 2))
                    unstable.append(jac.n_unstable.double() / max(jac.n_relu, 1))
                per_point = torch.cat(bounds)
                result.ibp_bound = float(per_point.max())
                result.ibp_mean = float(per_point.mean())
                result.unstable_fraction = float(torch.cat(unstable).mean())
                result.upper_bound = min(product, result.ibp_bound)
    result.seconds = time.perf_counter() - start
    return result


@REGISTRY.register("lipschitz")
class LipschitzProbe(Probe):
    """Logs ``lipschitz/product_bound`` and ``lipschitz/sampled_lower`` (and ``lipschitz/ibp_bound``) every N steps.

    The sampled lower bound (max input-Jacobian spectral norm) is taken on a
    fixed, seeded subsample of ``n_points`` training inputs (and ``n_samples``
    random points within ``radius`` of each); the IBP bound is logged when
    ``ibp=True`` (ReLU MLPs only).

    Args:
        every: measure every this many steps, >= 1.
        n_points: training inputs in the subsample, >= 1.
        radius: l_inf half-width of the boxes, >= 0.
        n_samples: random points per box, >= 0.
        ibp: also log the IBP bound (raises at the first measurement when the model is not a ReLU MLP chain).
        seed: seed of the subsample and of the random points.
    """

    report_section = ReportSection(
        "lipschitz",
        "Lipschitz constant",
        "Upper bounds (product of layer norms, interval bound) and the sampled lower bound of the network's "
        "Lipschitz constant; the true constant lies between them.",
        order=40,
    )
    labels = {
        "lipschitz/product_bound": "product of layer norms (upper bound)",
        "lipschitz/ibp_bound": "interval bound (upper bound)",
        "lipschitz/sampled_lower": "largest sampled Jacobian norm (lower bound)",
    }

    def __init__(
        self,
        every: int = 100,
        n_points: int = 32,
        radius: float = 0.0,
        n_samples: int = 0,
        ibp: bool = False,
        seed: int = 0,
    ):
        super().__init__(every)
        self.n_points = check_int("n_points", n_points, 1)
        self.radius = check_float("radius", radius, 0.0)
        self.n_samples = check_int("n_samples", n_samples, 0)
        check_bool("ibp", ibp)
        self.ibp = ibp
        self.seed = check_int("seed", seed, 0)
        self._x: Tensor | None = None

    def _subsample(self, trainer: Any) -> Tensor:
        if self._x is None:
            dataset = trainer.task.train
            dataset = dataset.for_eval() if callable(getattr(dataset, "for_eval", None)) else dataset
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(dataset), generator=g)[: self.n_points]
            device = getattr(trainer, "device", None)  # only these points are read, then moved to the model
            self._x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx]).to(device)
        return self._x

    def measure(self, trainer: Any) -> dict[str, float]:
        r = lipschitz_bounds(
            trainer.model,
            self._subsample(trainer),
            radius=self.radius,
            n_samples=self.n_samples,
            seed=self.seed,
            ibp=self.ibp,
        )
        out = {"lipschitz/product_bound": r.product_bound, "lipschitz/sampled_lower": r.sampled_lower}
        if r.ibp_bound is not None:
            out["lipschitz/ibp_bound"] = r.ibp_bound
        return out
