"""Loss landscapes: 1-D interpolation and direction curves, mode-connectivity barriers, 2-D surfaces, sharpness.

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
- Directions: random Gaussian directions, filter-normalized as in "Visualizing
  the Loss Landscape of Neural Nets" (Li et al., 2018), come from
  :mod:`reglab.diagnostics.directions`.
- Random-direction sharpness (:func:`random_sharpness`): the largest loss
  increase over K random filter-normalized directions at radius r,
  S = max_{k ≤ K, s = ±1} L(θ + s r d_k) − L(θ). With filter normalization,
  r is relative: each filter moves by r times its own norm. A cheap proxy of
  the flatness measures of Li et al. (2018), logged by
  :class:`~reglab.diagnostics.landscape_probes.RandomSharpnessProbe`.

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
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError
from reglab.core.validation import check_choice, check_float, check_int
from reglab.diagnostics.curvature import hessian_eigs
from reglab.diagnostics.directions import IGNORES, NORMALIZATIONS, flat_direction, random_flat
from reglab.diagnostics.landscape_results import LandscapeResult, SharpnessResult, SurfaceResult
from reglab.linalg.functional import FunctionalModel, Params, batches

LossFn = Callable[[Tensor, Tensor], Tensor]
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


# -- 1-D curves -----------------------------------------------------------------------------------------------------
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

    ``direction`` is ``"random"`` (the first of :func:`~reglab.diagnostics.directions.random_directions` for
    ``seed``, normalized with ``normalization``/``ignore``), a flat vector
    ordered as the selected trainable ``named_parameters`` or a ``{name:
    tensor}`` dict (missing names are zero). Given directions are used as they
    are; normalize them first with :func:`~reglab.diagnostics.directions.normalize_direction` if wanted.
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
        seed, normalization, ignore: of the random direction (:func:`~reglab.diagnostics.directions.random_directions`).
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
        d = random_flat(fm, 1, seed, normalization, ignore)[0]
    else:
        d = flat_direction(fm, direction)
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


# -- 2-D surfaces ---------------------------------------------------------------------------------------------------
def _hessian_directions(
    model: nn.Module, loss_fn: LossFn, parts: list[tuple[Tensor, Tensor]], params: Any, seed: int, tol: float
) -> tuple[Tensor, Tensor, list[float], int]:
    """The unit eigenvectors of the two largest Hessian eigenvalues, the eigenvalues and the products it cost."""
    eig = hessian_eigs(model, loss_fn, parts, k=2, tol=tol, params=params, seed=seed)
    return eig.vectors[:, 0], eig.vectors[:, 1], [float(v) for v in eig.values], int(eig.n_hvp)


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

    - ``"random"``: the first two of :func:`~reglab.diagnostics.directions.random_directions` for ``seed``,
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
        normalization, ignore: of random directions (see :func:`~reglab.diagnostics.directions.random_directions`).
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
            d1, d2 = random_flat(fm, 2, seed, normalization, ignore)
        else:
            d1, d2, eigenvalues, n_hvp = _hessian_directions(model, loss_fn, evaluate.parts, params, seed, hessian_tol)
            d1, d2 = d1.to(fm.dtype), d2.to(fm.dtype)
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        kind = "given"
        d1, d2 = flat_direction(fm, directions[0], "directions[0]"), flat_direction(fm, directions[1], "directions[1]")
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
    of :func:`~reglab.diagnostics.directions.random_directions` for ``seed`` (filter-normalized, biases and BN
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
        seed, normalization, ignore, params: see :func:`~reglab.diagnostics.directions.random_directions`.

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
        for d in random_flat(fm, n_directions, seed, normalization, ignore)
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
