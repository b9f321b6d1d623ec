"""Loss landscapes: 1-D interpolation and direction curves, linear-mode-connectivity barriers, 2-D surfaces.

Every function evaluates the full-data loss L(θ) = Σ_b (n_b/N) loss_fn(f_θ(x_b), y_b)
(``loss_fn`` averages over its batch, so batch b is weighted by its share of
the N examples) through :class:`~reglab.linalg.functional.FunctionalModel`:
in eval mode, on copies of the parameters and buffers, without gradients.
The model (parameters, buffers, train/eval mode) is left exactly as it was,
and random directions come from a private ``torch.Generator`` seeded by
``seed``, so the global RNG is not touched. When the targets are integer
class labels and the output has one more (class) dimension than the targets,
the top-1 accuracy Σ_i [argmax_k f_θ(x_i)_k = y_i] / N is reported too
(ties go to the first class, ``torch.argmax``'s rule).

- 1-D: :func:`interpolate` evaluates θ(α) = (1−α)θ_a + αθ_b between two
  models; :func:`along_direction` evaluates θ + α d.
- Barrier (:func:`barrier`): B = max_α [L(θ(α)) − ((1−α)L(θ_a) + αL(θ_b))],
  the height of the path above the chord joining its ends ("The Role of
  Permutation Invariance in Linear Mode Connectivity of Neural Networks",
  Entezari et al., 2022), reported for the loss and for the error 1 − accuracy.
  The "error barrier height" of "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis" (Frankle et al., 2020) measures instead from the mean of
  the endpoints, E_sup − (E(θ_a) + E(θ_b))/2; it is reported beside it
  (``*_barrier_mean``). The two agree when the endpoints have equal values.
  The maximum is over the evaluated α; the endpoints are always evaluated.
- 2-D: :func:`surface` evaluates L(θ + α d_1 + β d_2) on a grid, with d_1, d_2
  random filter-normalized directions, the top-2 Hessian eigenvectors or
  given directions.
- Filter normalization ("Visualizing the Loss Landscape of Neural Nets",
  Li et al., 2018): d ~ N(0, I), then for every filter j of every parameter i
  (a row of a Linear weight, an output channel of a convolution: a slice
  along dimension 0 of a parameter with two or more dimensions)
  d_ij ← d_ij · ‖θ_ij‖ / ‖d_ij‖; parameters with at most one dimension (biases,
  normalization-layer scales and shifts) get d_i = 0 ("ignore biasbn"). This is
  what the reference code does (``normalize_directions_for_weights`` in
  ``net_plotter.py`` of github.com/tomgoldstein/loss-landscape, checked): it
  zeroes every parameter with ``d.dim() <= 1`` under ``ignore='biasbn'`` and
  otherwise copies θ_i into the direction; a filter with ‖d_ij‖ = 0 stays 0
  here (the reference adds 1e-10 to the denominator).
- Random-direction sharpness (:func:`random_sharpness`): the largest loss
  increase over K random filter-normalized directions at radius r,
  S = max_{k ≤ K, s = ±1} L(θ + s r d_k) − L(θ). With filter normalization,
  r is relative: each filter moves by r times its own norm. A cheap proxy of
  the flatness measures of Li et al. (2018), logged by
  :class:`RandomSharpnessProbe`.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Linear(3, 2).double()
    >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    >>> r = along_direction(net, torch.nn.functional.cross_entropy, (x, y), "random", n_points=5)
    >>> r.loss.shape, r.accuracy.shape
    (torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_choice, check_float, check_int
from reglab.diagnostics.probe import Probe, probe_loss
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.functional import FunctionalModel, Params, batches

LossFn = Callable[[Tensor, Tensor], Tensor]
NORMALIZATIONS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
BUFFER_MODES = ("interpolate", "model_a")
BASELINES = ("linear", "mean")
DIRECTION_KINDS = ("random", "hessian")


# -- evaluation -----------------------------------------------------------------------------------------------------
class _Evaluator:
    """Full-data loss (and accuracy) of a :class:`FunctionalModel` at parameter dicts; counts evaluations."""

    def __init__(self, fm: FunctionalModel, data: Any):
        if fm.loss_fn is None or not callable(fm.loss_fn):
            raise ConfigError(f"loss_fn must be callable (outputs, targets) -> scalar, got {type(fm.loss_fn).__name__}")
        self.fm = fm
        self.parts = [(fm.inputs(x), _targets(fm, y)) for x, y in batches(data)]
        self.n = sum(len(x) for x, _ in self.parts)
        self.labels = all(not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool) for _, y in self.parts)
        self.classify: bool | None = None
        self.n_evals = 0

    @torch.no_grad()
    def __call__(self, state: Params) -> tuple[float, float | None]:
        loss, correct = 0.0, 0
        for x, y in self.parts:
            out = self.fm.output(state, x)
            loss += len(x) / self.n * float(self.fm.loss_fn(out, y))
            if self.classify is None:
                self.classify = self.labels and out.ndim == y.ndim + 1 and out.shape[:-1] == y.shape
            if self.classify:
                correct += int((out.argmax(-1) == y).sum())
        self.n_evals += 1
        return loss, (correct / self.n if self.classify else None)


def _targets(fm: FunctionalModel, y: Tensor) -> Tensor:
    y = y.to(fm.device)
    return y.to(fm.dtype) if y.is_floating_point() else y


def _check_loss_fn(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable (outputs, targets) -> scalar, got {type(loss_fn).__name__}")


def _alphas(alphas: Any, n_points: int, low: float, high: float, name: str = "alphas") -> Tensor:
    """The grid: ``alphas`` as a float64 vector, or ``n_points`` evenly spaced values in [low, high]."""
    if alphas is None:
        check_int("n_points", n_points, 2)
        return torch.linspace(low, high, n_points, dtype=torch.float64)
    try:
        grid = torch.as_tensor(alphas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{name} must be a 1-D sequence of finite numbers, got {alphas!r}") from None
    if grid.ndim != 1 or grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
        raise ConfigError(f"{name} must be a non-empty 1-D sequence of finite numbers, got {alphas!r}")
    return grid


def _span(span: Any) -> tuple[float, float]:
    if not (isinstance(span, Sequence) and len(span) == 2):
        raise ConfigError(f"span must be a pair (low, high) with low < high, got {span!r}")
    low, high = check_float("span[0]", span[0]), check_float("span[1]", span[1])
    if not low < high:
        raise ConfigError(f"span must be a pair (low, high) with low < high, got {span!r}")
    return low, high


# -- directions -----------------------------------------------------------------------------------------------------
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


def _random(fm: FunctionalModel, k: int, seed: int, normalization: str, ignore: str) -> list[Tensor]:
    """``k`` random directions, flat, drawn in turn from one generator seeded with ``seed`` (on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        raw = {n: torch.randn(fm.params[n].shape, generator=gen, dtype=fm.dtype).to(fm.device) for n in fm.names}
        out.append(fm.flatten(_normalize(fm, raw, normalization, ignore)))
    return out


def _as_flat(fm: FunctionalModel, direction: Any, name: str = "direction") -> Tensor:
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
    return [fm.unflatten(v) for v in _random(fm, k, seed, normalization, ignore)]


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
    return _normalize(fm, fm.unflatten(_as_flat(fm, direction)), normalization, ignore)


# -- barrier --------------------------------------------------------------------------------------------------------
def barrier(alphas: Any, values: Any, value_a: float, value_b: float, baseline: str = "linear") -> float:
    """Height of a path's values above a baseline built from its endpoint values.

    ``baseline="linear"``: B = max_α [v(α) − ((1−α) v_a + α v_b)] (Entezari et
    al., 2022, "The Role of Permutation Invariance in Linear Mode Connectivity
    of Neural Networks"); ``"mean"``: B = max_α v(α) − (v_a + v_b)/2, the
    error barrier height / linear interpolation instability of Frankle et al.,
    2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis".
    The maximum is over the given α together with the endpoints α = 0, 1, so
    B >= 0 for the linear baseline and B >= |v_a − v_b|/2 for the mean.

    Example:
        >>> barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], 1.0, 2.0)
        1.5

    Raises:
        ConfigError: ``alphas`` and ``values`` differ in length or ``baseline`` is unknown.
    """
    check_choice("baseline", baseline, BASELINES)
    a = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if a.shape != v.shape:
        raise ConfigError(f"alphas and values must have the same length, got {a.numel()} and {v.numel()}")
    a = torch.cat([a, torch.tensor([0.0, 1.0], dtype=torch.float64)])
    v = torch.cat([v, torch.tensor([value_a, value_b], dtype=torch.float64)])
    base = (1 - a) * value_a + a * value_b if baseline == "linear" else torch.full_like(a, (value_a + value_b) / 2)
    return float((v - base).max())


# -- 1-D results ----------------------------------------------------------------------------------------------------
@dataclass
class LandscapeResult:
    """A 1-D loss curve: along a linear path between two models or along a direction from one.

    Attributes:
        kind: ``"interpolation"`` or ``"direction"``.
        alphas: the α grid (float64).
        loss: L at each α (float64), batches weighted by size.
        accuracy: top-1 accuracy at each α, or None (targets not class labels).
        loss_a, loss_b, accuracy_a, accuracy_b: endpoint values (interpolation; None otherwise).
        loss_barrier, error_barrier: max_α [v(α) − ((1−α)v_a + α v_b)] for the loss and for the error
            1 − accuracy (interpolation; error only with accuracy).
        loss_barrier_mean, error_barrier_mean: max_α v(α) − (v_a + v_b)/2 (Frankle et al., 2020).
        center_loss, center_accuracy: L(θ) at α = 0 (direction; None otherwise).
        direction_norm: ‖d‖ (direction; None otherwise).
        n_evals: full-data loss evaluations; seconds: wall time.
        settings: the options used (buffers, normalization, seed, ...).
        direction: the flat direction used (direction kind), left out of :meth:`to_dict`.
    """

    kind: str
    alphas: Tensor
    loss: Tensor
    accuracy: Tensor | None
    loss_a: float | None = None
    loss_b: float | None = None
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    loss_barrier: float | None = None
    error_barrier: float | None = None
    loss_barrier_mean: float | None = None
    error_barrier_mean: float | None = None
    center_loss: float | None = None
    center_accuracy: float | None = None
    direction_norm: float | None = None
    n_evals: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    direction: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Numbers and lists only (the direction is left out)."""
        out = {k: v for k, v in vars(self).items() if k != "direction"}
        for k in ("alphas", "loss", "accuracy"):
            out[k] = None if out[k] is None else out[k].tolist()
        out["settings"] = dict(self.settings)
        return out


def _check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    if type(model_a) is not type(model_b):
        raise ConfigError(
            f"model_b must have model_a's architecture: got {type(model_b).__name__} and {type(model_a).__name__}"
        )
    for what, a, b in (
        ("parameters", model_a.named_parameters(), model_b.named_parameters()),
        ("buffers", model_a.named_buffers(), model_b.named_buffers()),
    ):
        sa, sb = [(n, tuple(t.shape)) for n, t in a], [(n, tuple(t.shape)) for n, t in b]
        if sa != sb:
            diff = sorted(set(sa) ^ set(sb))[:4]
            raise ConfigError(
                f"model_b must have model_a's architecture: their {what} differ in names or shapes, e.g. {diff}"
            )


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    data: Any,
    n_points: int = 21,
    alphas: Any = None,
    buffers: str = "interpolate",
) -> LandscapeResult:
    """Loss (and accuracy) along the straight line θ(α) = (1−α)θ_a + αθ_b between two models, and its barrier.

    Every parameter (trainable or frozen) is interpolated. Floating-point
    buffers (BatchNorm running mean/var) are interpolated the same way with
    ``buffers="interpolate"`` (default: the endpoints are then exactly the two
    models) or taken from ``model_a`` with ``buffers="model_a"``; integer
    buffers (``num_batches_tracked``) always come from ``model_a``. Running
    statistics are not recomputed at the interpolated weights (as in Frankle et
    al., 2020; "REPAIR", Jordan et al., 2023, shows that resetting them can
    lower the barrier). The models are evaluated in eval mode and not changed.

    The barriers, for v = loss and v = error = 1 − accuracy:
    ``loss_barrier`` = max_α [v(θ(α)) − ((1−α) v(θ_a) + α v(θ_b))] (Entezari et
    al., 2022); ``loss_barrier_mean`` = max_α v(θ(α)) − (v(θ_a) + v(θ_b))/2,
    the error barrier height of Frankle et al., 2020 ("Linear Mode Connectivity
    and the Lottery Ticket Hypothesis"). See :func:`barrier`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> a, b = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
        >>> r = interpolate(a, b, torch.nn.functional.cross_entropy, (x, y), n_points=11)
        >>> r.loss_barrier >= 0.0
        True

    Args:
        model_a, model_b: models of the same class with the same parameter and buffer names and shapes.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        n_points: grid size in [0, 1] when ``alphas`` is None, >= 2.
        alphas: explicit α values (any real numbers; outside [0, 1] extrapolates).
        buffers: ``"interpolate"`` or ``"model_a"``.

    Returns:
        :class:`LandscapeResult` of kind ``"interpolation"``.

    Raises:
        ConfigError: different architectures, a bad grid or option, empty data.
        ShapeError: inputs and targets disagree in length.
    """
    start = time.perf_counter()
    _check_loss_fn(loss_fn)
    check_choice("buffers", buffers, BUFFER_MODES)
    _check_same_architecture(model_a, model_b)
    grid = _alphas(alphas, n_points, 0.0, 1.0)
    fm = FunctionalModel(model_a, loss_fn)
    evaluate = _Evaluator(fm, data)
    pa = {n: p.detach() for n, p in model_a.named_parameters()}
    pb = {n: p.detach().to(dtype=pa[n].dtype, device=pa[n].device) for n, p in model_b.named_parameters()}
    ba = {n: b.detach().clone() for n, b in model_a.named_buffers()}
    bb = {n: b.detach().to(dtype=ba[n].dtype, device=ba[n].device) for n, b in model_b.named_buffers()}

    def state(alpha: float) -> Params:
        out = {n: (1 - alpha) * pa[n] + alpha * pb[n] for n in pa}
        for n, b in ba.items():
            mix = buffers == "interpolate" and b.is_floating_point()
            out[n] = (1 - alpha) * b + alpha * bb[n] if mix else b
        return out

    values = [evaluate(state(float(a))) for a in grid]
    ends = {}
    for end in (0.0, 1.0):
        hit = (grid == end).nonzero()
        ends[end] = values[int(hit[0])] if len(hit) else evaluate(state(end))
    (loss_a, acc_a), (loss_b, acc_b) = ends[0.0], ends[1.0]
    loss = torch.tensor([v[0] for v in values], dtype=torch.float64)
    accuracy = torch.tensor([v[1] for v in values], dtype=torch.float64) if evaluate.classify else None
    result = LandscapeResult(
        kind="interpolation",
        alphas=grid,
        loss=loss,
        accuracy=accuracy,
        loss_a=loss_a,
        loss_b=loss_b,
        accuracy_a=acc_a,
        accuracy_b=acc_b,
        loss_barrier=barrier(grid, loss, loss_a, loss_b, "linear"),
        loss_barrier_mean=barrier(grid, loss, loss_a, loss_b, "mean"),
        settings={"buffers": buffers},
    )
    if accuracy is not None:
        result.error_barrier = barrier(grid, 1 - accuracy, 1 - acc_a, 1 - acc_b, "linear")
        result.error_barrier_mean = barrier(grid, 1 - accuracy, 1 - acc_a, 1 - acc_b, "mean")
    result.n_evals, result.seconds = evaluate.n_evals, time.perf_counter() - start
    return result


def along_direction(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    direction: Any = "random",
    alphas: Any = None,
    n_points: int = 21,
    span: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    normalization: str = "filter",
    ignore: str = "biasbn",
    params: Any = None,
) -> LandscapeResult:
    """The 1-D loss curve f(α) = L(θ + α d) ("Visualizing the Loss Landscape of Neural Nets", Li et al., 2018).

    ``direction`` is ``"random"`` (the first of :func:`random_directions` for
    ``seed``, normalized with ``normalization``/``ignore``), a flat vector
    ordered as the selected trainable ``named_parameters`` or a ``{name:
    tensor}`` dict (missing names are zero). Given directions are used as they
    are; normalize them first with :func:`normalize_direction` if wanted.
    Buffers are the model's own, held fixed.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(3, 1).double()
        >>> x = torch.randn(8, 3, dtype=torch.float64)
        >>> r = along_direction(net, torch.nn.functional.mse_loss, (x, x.sum(1, keepdim=True)), alphas=[0.0])
        >>> r.loss.tolist() == [r.center_loss]
        True

    Args:
        model: the model; it is not changed.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        direction: ``"random"``, a flat tensor or a ``{name: tensor}`` dict.
        alphas: explicit α values; default ``n_points`` values evenly spaced in ``span``.
        n_points: grid size, >= 2; span: ``(low, high)`` with low < high.
        seed, normalization, ignore: of the random direction (see :func:`random_directions`).
        params: which parameters move (see :func:`reglab.linalg.functional.select_params`).

    Returns:
        :class:`LandscapeResult` of kind ``"direction"`` (``center_loss`` = L(θ)).

    Raises:
        ConfigError: a bad grid, option or direction name. ShapeError: a direction of the wrong shape.
    """
    start = time.perf_counter()
    _check_loss_fn(loss_fn)
    check_int("seed", seed, 0)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("ignore", ignore, IGNORES)
    grid = _alphas(alphas, n_points, *_span(span))
    fm = FunctionalModel(model, loss_fn, params)
    if isinstance(direction, str):
        check_choice("direction", direction, ("random",))
        d = _random(fm, 1, seed, normalization, ignore)[0]
    else:
        d = _as_flat(fm, direction)
    evaluate = _Evaluator(fm, data)
    theta = fm.point()
    values = [evaluate(fm.unflatten(theta + float(a) * d)) for a in grid]
    hit = (grid == 0).nonzero()
    center = values[int(hit[0])] if len(hit) else evaluate(fm.params)
    return LandscapeResult(
        kind="direction",
        alphas=grid,
        loss=torch.tensor([v[0] for v in values], dtype=torch.float64),
        accuracy=torch.tensor([v[1] for v in values], dtype=torch.float64) if evaluate.classify else None,
        center_loss=center[0],
        center_accuracy=center[1],
        direction_norm=float(d.norm()),
        n_evals=evaluate.n_evals,
        seconds=time.perf_counter() - start,
        settings={
            "direction": direction if isinstance(direction, str) else "given",
            "seed": seed,
            "normalization": normalization,
            "ignore": ignore,
        },
        direction=d,
    )


# -- 2-D ------------------------------------------------------------------------------------------------------------
@dataclass
class SurfaceResult:
    """A 2-D loss surface L(θ + α d_1 + β d_2) on a grid.

    Attributes:
        alphas, betas: the grid along d_1 and d_2 (float64).
        loss: matrix with ``loss[i, j]`` = L(θ + α_i d_1 + β_j d_2) (float64).
        accuracy: the same for top-1 accuracy, or None.
        center_loss, center_accuracy: L(θ) and its accuracy.
        directions_kind: ``"random"``, ``"hessian"`` or ``"given"``.
        eigenvalues: the two Hessian eigenvalues (``"hessian"``; None otherwise).
        direction_norms: ‖d_1‖, ‖d_2‖.
        n_evals: full-data loss evaluations; n_hvp: Hessian-vector products; seconds: wall time.
        settings: the options used.
        directions: the two flat directions (left out of :meth:`to_dict`).
    """

    alphas: Tensor
    betas: Tensor
    loss: Tensor
    accuracy: Tensor | None
    center_loss: float
    center_accuracy: float | None
    directions_kind: str
    eigenvalues: list[float] | None
    direction_norms: list[float]
    n_evals: int
    n_hvp: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    directions: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Numbers and (nested) lists only (the directions are left out)."""
        out = {k: v for k, v in vars(self).items() if k != "directions"}
        for k in ("alphas", "betas", "loss", "accuracy"):
            out[k] = None if out[k] is None else out[k].tolist()
        out["settings"] = dict(self.settings)
        return out


def _hessian_directions(
    model: nn.Module, loss_fn: LossFn, parts: list[tuple[Tensor, Tensor]], params: Any, seed: int, tol: float
) -> tuple[Tensor, Tensor, list[float], int]:
    try:
        from reglab.diagnostics.curvature import hessian_eigs
    except ImportError:  # pragma: no cover - the curvature module ships with the package
        hessian_eigs = None
    if hessian_eigs is not None:
        eig = hessian_eigs(model, loss_fn, parts, k=2, tol=tol, params=params, seed=seed)
    else:  # pragma: no cover
        from reglab.linalg.eigen import lanczos
        from reglab.linalg.operators import HessianOperator

        eig = lanczos(HessianOperator(model, loss_fn, parts, params=params), k=2, tol=tol, seed=seed)
    vectors = eig.vectors
    return vectors[:, 0], vectors[:, 1], [float(v) for v in eig.values], int(eig.n_hvp)


def surface(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    directions: Any = "random",
    span: tuple[float, float] = (-1.0, 1.0),
    resolution: int = 21,
    seed: int = 0,
    normalization: str = "filter",
    ignore: str = "biasbn",
    params: Any = None,
    hessian_tol: float = 1e-4,
) -> SurfaceResult:
    """The 2-D loss surface f(α, β) = L(θ + α d_1 + β d_2) ("Visualizing the Loss Landscape of Neural Nets", 2018).

    ``directions``:

    - ``"random"``: the first two of :func:`random_directions` for ``seed``,
      filter-normalized with biases and BN parameters zeroed by default (Li et
      al., 2018, Sec. 4: d_ij ← d_ij ‖θ_ij‖/‖d_ij‖ per filter);
    - ``"hessian"``: the unit eigenvectors of the two largest Hessian
      eigenvalues (Lanczos through
      :func:`reglab.diagnostics.curvature.hessian_eigs`, relative residual
      ``hessian_tol``, start vector seeded by ``seed``); their sign is arbitrary
      and α, β are then in parameter units;
    - a pair ``(d_1, d_2)`` of flat vectors or ``{name: tensor}`` dicts, used as given.

    The grid is ``resolution`` evenly spaced values in ``span`` along each
    axis, so ``resolution``² full-data evaluations. Buffers are the model's,
    held fixed.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
        >>> s = surface(net, torch.nn.functional.cross_entropy, (x, y), resolution=5)
        >>> s.loss.shape
        torch.Size([5, 5])

    Args:
        model: the model; it is not changed.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        directions: ``"random"``, ``"hessian"`` or ``(d_1, d_2)``.
        span: ``(low, high)``, low < high, for both axes.
        resolution: points per axis, >= 2.
        seed: seed of the random directions / of Lanczos' start vector.
        normalization, ignore: of random directions (see :func:`random_directions`).
        params: which parameters move.
        hessian_tol: Lanczos tolerance for ``"hessian"``, > 0.

    Returns:
        :class:`SurfaceResult`.

    Raises:
        ConfigError: a bad option, grid or direction name. ShapeError: a direction of the wrong shape.
    """
    start = time.perf_counter()
    _check_loss_fn(loss_fn)
    check_int("resolution", resolution, 2)
    check_int("seed", seed, 0)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("ignore", ignore, IGNORES)
    check_float("hessian_tol", hessian_tol, 0.0, low_open=True)
    low, high = _span(span)
    fm = FunctionalModel(model, loss_fn, params)
    evaluate = _Evaluator(fm, data)
    eigenvalues, n_hvp = None, 0
    if isinstance(directions, str):
        kind = check_choice("directions", directions, DIRECTION_KINDS)
        if kind == "random":
            d1, d2 = _random(fm, 2, seed, normalization, ignore)
        else:
            d1, d2, eigenvalues, n_hvp = _hessian_directions(model, loss_fn, evaluate.parts, params, seed, hessian_tol)
            d1, d2 = d1.to(fm.dtype), d2.to(fm.dtype)
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        kind = "given"
        d1, d2 = _as_flat(fm, directions[0], "directions[0]"), _as_flat(fm, directions[1], "directions[1]")
    else:
        raise ConfigError(
            f"directions must be 'random', 'hessian' or a pair (d1, d2) of directions, got {type(directions).__name__}"
        )
    grid = torch.linspace(low, high, resolution, dtype=torch.float64)
    theta = fm.point()
    loss = torch.empty(resolution, resolution, dtype=torch.float64)
    accuracy = torch.empty(resolution, resolution, dtype=torch.float64)
    for i, a in enumerate(grid.tolist()):
        for j, b in enumerate(grid.tolist()):
            loss[i, j], acc = evaluate(fm.unflatten(theta + a * d1 + b * d2))
            accuracy[i, j] = math.nan if acc is None else acc
    center_loss, center_acc = evaluate(fm.params)
    return SurfaceResult(
        alphas=grid,
        betas=grid.clone(),
        loss=loss,
        accuracy=accuracy if evaluate.classify else None,
        center_loss=center_loss,
        center_accuracy=center_acc,
        directions_kind=kind,
        eigenvalues=eigenvalues,
        direction_norms=[float(d1.norm()), float(d2.norm())],
        n_evals=evaluate.n_evals,
        n_hvp=n_hvp,
        seconds=time.perf_counter() - start,
        settings={"span": [low, high], "resolution": resolution, "seed": seed, "normalization": normalization},
        directions=(d1, d2),
    )


# -- random-direction sharpness -------------------------------------------------------------------------------------
@dataclass
class SharpnessResult:
    """Random-direction sharpness S = max_{k, s=±1} L(θ + s r d_k) − L(θ).

    Attributes:
        sharpness: S; mean_increase: the mean of the 2K increases; increases: all of them,
            ordered (d_1, +), (d_1, −), (d_2, +), ...
        base_loss: L(θ); radius: r; n_directions: K.
        n_evals: full-data evaluations (2K + 1); seconds: wall time.
    """

    sharpness: float
    mean_increase: float
    increases: list[float]
    base_loss: float
    radius: float
    n_directions: int
    n_evals: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def random_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    radius: float = 0.05,
    n_directions: int = 4,
    seed: int = 0,
    normalization: str = "filter",
    ignore: str = "biasbn",
    params: Any = None,
) -> SharpnessResult:
    """The largest loss increase over a few random filter-normalized directions at radius r.

    S = max_{k=1..K, s=±1} [L(θ + s·r·d_k) − L(θ)], with d_1..d_K the first K
    of :func:`random_directions` for ``seed`` (filter-normalized, biases and BN
    parameters zeroed). Under filter normalization each filter moves by r
    times its own norm, so S compares across scale-equivalent networks (Li et
    al., 2018, "Visualizing the Loss Landscape of Neural Nets", whose 1-D
    plots this samples at two points per direction). Costs 2K + 1 full-data
    evaluations and no gradient.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
        >>> random_sharpness(net, torch.nn.functional.cross_entropy, (x, y), radius=0.1).n_evals
        9

    Args:
        model: the model; it is not changed.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        radius: r > 0 (relative to each filter's norm under filter normalization).
        n_directions: K >= 1.
        seed, normalization, ignore, params: see :func:`random_directions`.

    Returns:
        :class:`SharpnessResult`.

    Raises:
        ConfigError: an argument is out of range.
    """
    start = time.perf_counter()
    _check_loss_fn(loss_fn)
    radius = check_float("radius", radius, 0.0, low_open=True)
    check_int("n_directions", n_directions, 1)
    check_int("seed", seed, 0)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("ignore", ignore, IGNORES)
    fm = FunctionalModel(model, loss_fn, params)
    evaluate = _Evaluator(fm, data)
    base, _ = evaluate(fm.params)
    theta = fm.point()
    increases = [
        evaluate(fm.unflatten(theta + sign * radius * d))[0] - base
        for d in _random(fm, n_directions, seed, normalization, ignore)
        for sign in (1.0, -1.0)
    ]
    return SharpnessResult(
        sharpness=max(increases),
        mean_increase=sum(increases) / len(increases),
        increases=increases,
        base_loss=base,
        radius=radius,
        n_directions=n_directions,
        n_evals=evaluate.n_evals,
        seconds=time.perf_counter() - start,
    )


@REGISTRY.register("random_sharpness")
class RandomSharpnessProbe(Probe):
    """Logs the random-direction sharpness of the training loss every N steps (metrics ``sharpness_1d``...).

    ``sharpness_1d`` = max_{k ≤ K, s=±1} L(θ + s r d_k) − L(θ) and
    ``sharpness_1d_mean`` = the mean of those 2K increases (see
    :func:`random_sharpness`), with L the trainer's loss (``trainer.loss_fn``;
    cross-entropy / MSE for a loss that needs example indices) on a fixed
    subsample of at most ``max_examples`` training examples. The directions are
    drawn from ``seed`` at every measurement (the same Gaussian draws, scaled to
    the current filters), so the curve over training is not noisier than the
    landscape. Costs 2K + 1 forward passes over the subsample.

    Args:
        every: measure every this many steps, >= 1.
        radius: r > 0; n_directions: K >= 1.
        max_examples: training examples used (None: all), chosen once with ``seed``.
        seed: seed of the subsample and of the directions.
    """

    def __init__(
        self,
        every: int = 100,
        radius: float = 0.05,
        n_directions: int = 4,
        max_examples: int | None = 1024,
        seed: int = 0,
    ):
        super().__init__(every)
        self.radius = check_float("radius", radius, 0.0, low_open=True)
        self.n_directions = check_int("n_directions", n_directions, 1)
        self.max_examples = None if max_examples is None else check_int("max_examples", max_examples, 1)
        self.seed = check_int("seed", seed, 0)

    def _data(self, trainer: Any) -> tuple[Tensor, Tensor]:
        return trainer.examples("train", self.max_examples, self.seed, in_order=True)

    def measure(self, trainer: Any) -> dict[str, float]:
        loss_fn = probe_loss(trainer)
        r = random_sharpness(trainer.model, loss_fn, self._data(trainer), self.radius, self.n_directions, self.seed)
        return {"sharpness_1d": r.sharpness, "sharpness_1d_mean": r.mean_increase}


# -- plots ----------------------------------------------------------------------------------------------------------
def _figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` made without pyplot: the caller's backend and figure list are left alone."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_curve(result: LandscapeResult, path: str | Path, title: str | None = None) -> Path:
    """Save a 1-D landscape (loss against α, accuracy on a second axis when present) as a PNG.

    An interpolation also shows the chord (1−α)L_a + αL_b and the barrier in the title.
    """
    fig = _figure(figsize=(5, 3.6), dpi=110)
    ax = fig.subplots()
    alphas = result.alphas.numpy()
    ax.plot(alphas, result.loss.numpy(), "o-", color="C0", markersize=3, label="loss")
    if result.kind == "interpolation" and result.loss_a is not None:
        ax.plot([0, 1], [result.loss_a, result.loss_b], "--", color="C0", linewidth=1, label="chord")
    ax.set_xlabel("α")
    ax.set_ylabel("loss", color="C0")
    if result.accuracy is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, result.accuracy.numpy(), "s-", color="C1", markersize=3, label="accuracy")
        ax2.set_ylabel("accuracy", color="C1")
    if title is None:
        title = "linear interpolation" if result.kind == "interpolation" else "loss along a direction"
        if result.loss_barrier is not None:
            title += f"\nloss barrier {result.loss_barrier:.4g}"
            if result.error_barrier is not None:
                title += f", error barrier {result.error_barrier:.4g}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _grid(result: SurfaceResult) -> tuple[Any, Any, Any]:
    a, b = torch.meshgrid(result.alphas, result.betas, indexing="ij")
    return a.numpy(), b.numpy(), result.loss.numpy()


def plot_contour(result: SurfaceResult, path: str | Path, levels: int = 30, title: str | None = None) -> Path:
    """Save a contour plot of a 2-D landscape (α along x, β along y) as a PNG."""
    check_int("levels", levels, 1)
    a, b, z = _grid(result)
    fig = _figure(figsize=(4.6, 4), dpi=110)
    ax = fig.subplots()
    filled = ax.contourf(a, b, z, levels=levels, cmap="viridis")
    ax.contour(a, b, z, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="loss")
    ax.plot([0], [0], "r+", markersize=8)
    ax.set_xlabel("α (d1)")
    ax.set_ylabel("β (d2)")
    ax.set_title(title or f"loss surface ({result.directions_kind} directions)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_surface(result: SurfaceResult, path: str | Path, title: str | None = None) -> Path:
    """Save a 3-D surface plot of a 2-D landscape as a PNG."""
    a, b, z = _grid(result)
    fig = _figure(figsize=(5, 4), dpi=110)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("α (d1)")
    ax.set_ylabel("β (d2)")
    ax.set_zlabel("loss")
    ax.set_title(title or f"loss surface ({result.directions_kind} directions)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
