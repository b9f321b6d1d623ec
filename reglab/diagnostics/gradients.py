"""Statistics of per-example gradients: coherence, gradient noise scale, and the grokking measurements.

Every function takes ``(model, loss_fn, data)`` — any ``nn.Module``, a loss
``loss_fn(outputs, targets)`` that averages over its batch, and an
``(inputs, targets)`` pair or an iterable of batches — and works on the
per-example gradients g_i = ∇_θ loss_fn(f(x_i), y_i) computed with
``torch.func`` (``vmap(grad)``, chunk by chunk, so the (n, P) matrix never has
to be held at once). The model is evaluated in eval mode through
``functional_call``: its parameters, buffers, mode and the global RNG are left
as they were (subsampling uses a local generator seeded by ``seed``).

A loss that cannot run under ``vmap`` (reglab's losses validate their targets
with ``.item()``) is handled by computing each example's output gradient
∂ℓ_i/∂f_i in a loop and one vmapped vector–Jacobian product of the model; the
result is the same matrix.

- :func:`gradient_coherence` — α and m-coherence ("On the Generalization
  Mystery in Deep Learning", Chatterjee & Zielinski, 2022).
- :func:`gradient_noise_scale` — B_simple = tr(Σ)/|G|² ("An Empirical Model of
  Large-Batch Training", McCandlish et al., 2018), from per-example gradients
  and by the two-batch-size estimator of its Appendix A.
- :func:`grokking_statistics` — cos(−∇L, θ) (naïve-loss-minimization
  alignment), the Softmax-Collapse fraction, weight norm and effective learning
  rate ("Grokking at the Edge of Numerical Stability", Prieto et al., 2025).

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> c = gradient_coherence(net, nn.functional.cross_entropy, (x, y))
    >>> 0.0 <= c.alpha <= 1.0 and c.m == 64
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_float, check_int
from reglab.diagnostics.weights import weight_norm
from reglab.linalg.functional import FunctionalModel, batches, concat

LossFn = Callable[[Tensor, Tensor], Tensor]


# -- per-example gradients, chunk by chunk ---------------------------------------------------------------------------


def _gradient_chunks(fm: FunctionalModel, x: Tensor, y: Tensor, chunk_size: int) -> Iterator[Tensor]:
    """Per-example gradients of consecutive chunks of ``(x, y)``, in float64."""
    for start in range(0, len(x), chunk_size):
        yield fm.per_sample_gradients(x[start : start + chunk_size], y[start : start + chunk_size]).double()


def _subsample(x: Tensor, y: Tensor, n: int | None, seed: int, shuffle: bool = False) -> tuple[Tensor, Tensor]:
    """At most ``n`` examples drawn without replacement by a generator seeded with ``seed`` (all, in order, if fewer).

    With ``shuffle`` the examples are permuted even when all are kept.
    """
    if (n is None or len(x) <= n) and not shuffle:
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    if n is not None:
        idx = idx[:n]
    return x[idx], y[idx]


def _prepare(data: Any, max_examples: int | None, seed: int, shuffle: bool = False) -> tuple[Tensor, Tensor]:
    if max_examples is not None:
        check_int("max_examples", max_examples, 1)
    check_int("seed", seed, 0)
    x, y = concat(data)
    return _subsample(x, y, max_examples, seed, shuffle)


# -- coherence --------------------------------------------------------------------------------------------------------


@dataclass
class CoherenceResult:
    """Coherence of m per-example gradients.

    Attributes:
        alpha: α = ‖(1/m) Σ g_i‖² / ((1/m) Σ ‖g_i‖²), in [0, 1].
        m_coherence: m·α = ‖Σ g_i‖² / Σ ‖g_i‖², in [0, m]: 1 for mutually orthogonal gradients, m for identical ones.
        alpha_offdiagonal: the same ratio without the i = j terms, mean_{i≠j} g_i·g_j / mean_i ‖g_i‖²
            (0 for orthogonal gradients, 1 for identical ones); m-coherence = 1 + (m − 1)·alpha_offdiagonal.
        m: number of examples.
        mean_gradient_sq_norm: ‖(1/m) Σ g_i‖².
        mean_sq_norm: (1/m) Σ ‖g_i‖².
        n_grad: per-example gradients computed (= m).
        seconds: wall time.
    """

    alpha: float
    m_coherence: float
    alpha_offdiagonal: float
    m: int
    mean_gradient_sq_norm: float
    mean_sq_norm: float
    n_grad: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coherence(total: Tensor, sum_sq: float, m: int, seconds: float) -> CoherenceResult:
    sum_norm_sq = float(total @ total)
    if sum_sq == 0.0:  # every gradient is zero: the ratio is undefined
        alpha = off = math.nan
    else:
        alpha = sum_norm_sq / (m * sum_sq)
        off = (sum_norm_sq - sum_sq) / ((m - 1) * sum_sq) if m > 1 else math.nan
    return CoherenceResult(
        alpha=alpha,
        m_coherence=m * alpha,
        alpha_offdiagonal=off,
        m=m,
        mean_gradient_sq_norm=sum_norm_sq / m**2,
        mean_sq_norm=sum_sq / m,
        n_grad=m,
        seconds=seconds,
    )


def coherence_from_gradients(grads: Tensor) -> CoherenceResult:
    """α and m-coherence of the rows of an (m, P) matrix of per-example gradients (computed in float64).

    .. math:: \\alpha = \\frac{\\mathbb{E}_{i,j}[g_i \\cdot g_j]}{\\mathbb{E}_i[g_i \\cdot g_i]}
        = \\frac{\\lVert \\tfrac1m \\sum_i g_i \\rVert^2}{\\tfrac1m \\sum_i \\lVert g_i \\rVert^2},
        \\qquad m\\text{-coherence} = m\\,\\alpha

    with i and j drawn independently and uniformly from the sample, so the
    i = j terms are included, as in the paper (α is the expected loss
    reduction of a step along the mean gradient over that along each
    example's own gradient).

    Example:
        >>> import torch
        >>> coherence_from_gradients(torch.eye(4)).m_coherence  # orthogonal gradients
        1.0
        >>> coherence_from_gradients(torch.ones(4, 3)).m_coherence  # identical gradients
        4.0

    References:
        "On the Generalization Mystery in Deep Learning", Chatterjee & Zielinski, 2022;
        "Making Coherence Out of Nothing at All: Measuring the Evolution of Gradient Alignment",
        Chatterjee & Zielinski, 2020 (m-coherence).

    Args:
        grads: (m, P) per-example gradients, m >= 1.

    Returns:
        A :class:`CoherenceResult` (alpha and m_coherence are NaN if every gradient is zero).

    Raises:
        ShapeError: ``grads`` is not a non-empty 2-D tensor.
    """
    start = time.perf_counter()
    if grads.ndim != 2 or grads.shape[0] == 0:
        raise ShapeError(f"grads must be an (m, P) matrix with m >= 1, got shape {tuple(grads.shape)}")
    g = grads.double()
    return _coherence(g.sum(0), float(g.pow(2).sum()), g.shape[0], time.perf_counter() - start)


def gradient_coherence(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    params: Any = None,
    max_examples: int | None = None,
    seed: int = 0,
    chunk_size: int = 64,
) -> CoherenceResult:
    """α and m-coherence of the per-example gradients of ``loss_fn`` on ``data`` (see :func:`coherence_from_gradients`).

    Only the running sum Σ g_i and Σ ‖g_i‖² are kept, so memory is one chunk
    of ``chunk_size`` gradients.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
        >>> r = gradient_coherence(net, torch.nn.functional.cross_entropy, (x, y), max_examples=16)
        >>> r.m, 0.0 <= r.m_coherence <= 16.0
        (16, True)

    References:
        "On the Generalization Mystery in Deep Learning", Chatterjee & Zielinski, 2022.

    Args:
        model: any ``nn.Module``; not modified.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over its batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        params: which parameters the gradients are taken over (see :func:`reglab.linalg.functional.select_params`).
        max_examples: use at most this many examples (m), drawn without replacement with ``seed``; None for all.
        seed: seed of the subsample (a local generator; the global RNG is untouched).
        chunk_size: per-example gradients computed at once, >= 1.

    Returns:
        A :class:`CoherenceResult`.

    Raises:
        ConfigError: bad ``max_examples``, ``seed``, ``chunk_size`` or ``params``, or empty ``data``.
    """
    start = time.perf_counter()
    check_int("chunk_size", chunk_size, 1)
    x, y = _prepare(data, max_examples, seed)
    fm = FunctionalModel(model, loss_fn, params)
    x = fm.inputs(x)
    total = torch.zeros(fm.numel, dtype=torch.float64, device=fm.device)
    sum_sq = 0.0
    for g in _gradient_chunks(fm, x, y, chunk_size):
        total += g.sum(0)
        sum_sq += float(g.pow(2).sum())
    return _coherence(total, sum_sq, len(x), time.perf_counter() - start)


# -- gradient noise scale --------------------------------------------------------------------------------------------


@dataclass
class NoiseScaleResult:
    """The simple gradient noise scale and its parts.

    Attributes:
        b_simple: tr(Σ) / |G|², both estimated without bias from the per-example gradients. It can be
            negative (or huge) when the mean gradient is small against the noise: |G|² is then estimated as
            a difference of two nearly equal numbers.
        trace_sigma: tr(Σ) estimate, Σ ‖g_i − ḡ‖² / (n − 1).
        grad_sq_norm: |G|² estimate, ‖ḡ‖² − tr(Σ)/n.
        mean_grad_sq_norm: ‖ḡ‖² (biased upwards by tr(Σ)/n).
        n: number of examples.
        b_simple_two_batch, trace_sigma_two_batch, grad_sq_norm_two_batch: the Appendix-A estimates from
            batches of ``b_small`` and one of ``b_big`` examples (NaN when ``b_small`` was not given).
        b_small, b_big: the two batch sizes (0 when not used).
        n_grad: per-example gradients computed.
        seconds: wall time.
    """

    b_simple: float
    trace_sigma: float
    grad_sq_norm: float
    mean_grad_sq_norm: float
    n: int
    b_simple_two_batch: float = math.nan
    trace_sigma_two_batch: float = math.nan
    grad_sq_norm_two_batch: float = math.nan
    b_small: int = 0
    b_big: int = 0
    n_grad: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0.0 else math.nan


def noise_scale_two_batch(small_sq_norm: float, big_sq_norm: float, b_small: int, b_big: int) -> tuple[float, float]:
    """Unbiased |G|² and tr(Σ) from the squared norms of gradients averaged over batches of two sizes.

    .. math::
        |G|^2 \\approx \\frac{B_{big} |G_{B_{big}}|^2 - B_{small} |G_{B_{small}}|^2}{B_{big} - B_{small}},
        \\qquad
        \\mathrm{tr}(\\Sigma) \\approx \\frac{|G_{B_{small}}|^2 - |G_{B_{big}}|^2}{1/B_{small} - 1/B_{big}}

    Both follow from E|G_B|² = |G|² + tr(Σ)/B for a batch of B i.i.d. examples;
    B_simple ≈ tr(Σ)/|G|² (the paper averages the two estimates over many
    steps before taking the ratio).

    Example:
        >>> g2, tr = noise_scale_two_batch(small_sq_norm=3.0, big_sq_norm=1.2, b_small=1, b_big=10)
        >>> round(g2, 6), round(tr, 6)
        (1.0, 2.0)

    References:
        "An Empirical Model of Large-Batch Training", McCandlish et al., 2018, Appendix A.1.

    Args:
        small_sq_norm: |G_{B_small}|², the squared norm of a gradient averaged over B_small examples
            (or the mean of several such squared norms).
        big_sq_norm: |G_{B_big}|², likewise over B_big examples.
        b_small: B_small >= 1.
        b_big: B_big > B_small.

    Returns:
        ``(grad_sq_norm, trace_sigma)``.

    Raises:
        ConfigError: ``b_small < 1`` or ``b_big <= b_small``.
    """
    check_int("b_small", b_small, 1)
    check_int("b_big", b_big, b_small + 1)
    grad_sq_norm = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
    trace_sigma = (small_sq_norm - big_sq_norm) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq_norm, trace_sigma


def _noise_scale(n: int, mean: Tensor, m2: float, seconds: float) -> NoiseScaleResult:
    trace_sigma = m2 / (n - 1)
    mean_sq = float(mean @ mean)
    grad_sq_norm = mean_sq - trace_sigma / n
    return NoiseScaleResult(
        b_simple=_ratio(trace_sigma, grad_sq_norm),
        trace_sigma=trace_sigma,
        grad_sq_norm=grad_sq_norm,
        mean_grad_sq_norm=mean_sq,
        n=n,
        n_grad=n,
        seconds=seconds,
    )


def noise_scale_from_gradients(grads: Tensor) -> NoiseScaleResult:
    """B_simple = tr(Σ)/|G|² from an (n, P) matrix of per-example gradients (float64).

    .. math::
        \\bar g = \\tfrac1n \\textstyle\\sum_i g_i, \\quad
        \\widehat{\\mathrm{tr}\\,\\Sigma} = \\tfrac{1}{n-1} \\textstyle\\sum_i \\lVert g_i - \\bar g \\rVert^2, \\quad
        \\widehat{|G|^2} = \\lVert \\bar g \\rVert^2 - \\widehat{\\mathrm{tr}\\,\\Sigma}/n, \\quad
        B_{simple} = \\widehat{\\mathrm{tr}\\,\\Sigma} / \\widehat{|G|^2}

    Σ is the covariance of a single example's gradient and G the expected
    gradient; both estimates are unbiased for i.i.d. examples
    (E‖ḡ‖² = |G|² + tr(Σ)/n). They equal the Appendix-A two-batch estimates
    with B_small = 1 and B_big = n.

    Example:
        >>> import torch
        >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0], [2.0, -1.0]])
        >>> r = noise_scale_from_gradients(g)
        >>> round(r.trace_sigma, 6), round(r.grad_sq_norm, 6), round(r.b_simple, 6)
        (1.333333, 3.666667, 0.363636)

    References:
        "An Empirical Model of Large-Batch Training", McCandlish et al., 2018 (eq. 2.9 and Appendix A).

    Args:
        grads: (n, P) per-example gradients, n >= 2.

    Returns:
        A :class:`NoiseScaleResult` (the two-batch fields NaN).

    Raises:
        ShapeError: ``grads`` is not 2-D with at least two rows.
    """
    start = time.perf_counter()
    if grads.ndim != 2 or grads.shape[0] < 2:
        raise ShapeError(f"grads must be an (n, P) matrix with n >= 2, got shape {tuple(grads.shape)}")
    g = grads.double()
    mean = g.mean(0)
    return _noise_scale(g.shape[0], mean, float((g - mean).pow(2).sum()), time.perf_counter() - start)


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    b_small: int | None = None,
    params: Any = None,
    max_examples: int | None = None,
    seed: int = 0,
    chunk_size: int = 64,
) -> NoiseScaleResult:
    """The simple gradient noise scale B_simple = tr(Σ)/|G|² of ``loss_fn`` on ``data``.

    From the n per-example gradients: see :func:`noise_scale_from_gradients`
    (accumulated chunk by chunk with the pairwise update of Chan et al. for the
    centred sum of squares, so nothing of size (n, P) is held). With
    ``b_small``, also the two-batch estimate of Appendix A
    (:func:`noise_scale_two_batch`): the examples are shuffled with ``seed``
    and split into n // b_small groups of ``b_small``; |G_small|² is the mean
    over groups of the squared norm of the group's mean gradient and |G_big|²
    that of the mean over all b_big = (n // b_small)·b_small grouped examples.
    ``b_small=1`` reproduces the per-example estimates exactly.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
        >>> r = gradient_noise_scale(net, torch.nn.functional.cross_entropy, (x, y), b_small=8)
        >>> r.n, r.b_small, r.b_big
        (64, 8, 64)

    References:
        "An Empirical Model of Large-Batch Training", McCandlish et al., 2018.

    Args:
        model: any ``nn.Module``; not modified.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over its batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        b_small: the small batch size of the two-batch estimator (>= 1, at most n // 2), or None to skip it.
        params: which parameters the gradients are taken over.
        max_examples: use at most this many examples, drawn with ``seed``; None for all.
        seed: seed of the subsample and of the grouping.
        chunk_size: per-example gradients computed at once, >= 1 (rounded down to a multiple of ``b_small``).

    Returns:
        A :class:`NoiseScaleResult`.

    Raises:
        ConfigError: bad ``b_small`` (fewer than two groups), ``max_examples``, ``seed``, ``chunk_size``, or fewer
            than two examples.
    """
    start = time.perf_counter()
    check_int("chunk_size", chunk_size, 1)
    x, y = _prepare(data, max_examples, seed, shuffle=b_small is not None)
    n = len(x)
    if n < 2:
        raise ConfigError(f"the gradient noise scale needs at least 2 examples, got {n}")
    if b_small is not None:
        check_int("b_small", b_small, 1, n // 2)
        chunk_size = max(b_small, chunk_size - chunk_size % b_small)
    fm = FunctionalModel(model, loss_fn, params)
    x = fm.inputs(x)
    count, mean, m2 = 0, torch.zeros(fm.numel, dtype=torch.float64, device=fm.device), 0.0
    groups, small_sq, grouped_sum = 0, 0.0, torch.zeros_like(mean)
    for g in _gradient_chunks(fm, x, y, chunk_size):
        c = len(g)
        chunk_mean = g.mean(0)
        chunk_m2 = float((g - chunk_mean).pow(2).sum())
        delta = chunk_mean - mean
        m2 += chunk_m2 + float(delta @ delta) * count * c / (count + c)
        mean += delta * (c / (count + c))
        count += c
        if b_small is not None:
            k = c // b_small  # chunks start at multiples of b_small; the last may leave a partial group out
            if k:
                group_means = g[: k * b_small].reshape(k, b_small, -1).mean(1)
                small_sq += float(group_means.pow(2).sum())
                grouped_sum += g[: k * b_small].sum(0)
                groups += k
    result = _noise_scale(n, mean, m2, 0.0)
    if b_small is not None:
        b_big = groups * b_small
        big = grouped_sum / b_big
        g2, tr = noise_scale_two_batch(small_sq / groups, float(big @ big), b_small, b_big)
        result.b_simple_two_batch, result.trace_sigma_two_batch, result.grad_sq_norm_two_batch = _ratio(tr, g2), tr, g2
        result.b_small, result.b_big = b_small, b_big
    result.seconds = time.perf_counter() - start
    return result


# -- grokking: NLM alignment, Softmax Collapse, effective learning rate -----------------------------------------------


def softmax_collapse_fraction(logits: Tensor, dtype: torch.dtype | None = None) -> float:
    """The fraction of rows whose softmax has collapsed in floating point: Σ_j exp(z_j − max_k z_k) == 1 exactly.

    Computed in ``dtype`` (default: the logits' own dtype; the paper uses the
    dtype of the cross-entropy, float32). When the sum rounds to exactly 1 every
    non-maximal term has been absorbed: the largest probability is exactly 1
    and, if it is the label's, the loss and its gradient for the label's logit
    are exactly 0 — learning from that example stops. This is the definition
    in the authors' code (``softmax_collapse`` in ``logger.py``: the shifted
    exponentials' sum equal to 1); it does not look at the labels.

    Example:
        >>> import torch
        >>> z = torch.tensor([[0.0, -30.0, -30.0], [0.0, -5.0, -5.0]])
        >>> softmax_collapse_fraction(z)  # float32: exp(-30) ~ 1e-13 is absorbed by 1
        0.5
        >>> softmax_collapse_fraction(z, torch.float64)  # float64 resolves it
        0.0

    References:
        "Grokking at the Edge of Numerical Stability", Prieto, Barsbey, Mediano & Birdal, 2025 (Softmax Collapse).

    Args:
        logits: (n, K) logits, n >= 1.
        dtype: floating dtype to compute in, or None for the logits' dtype.

    Returns:
        The fraction in [0, 1].

    Raises:
        ShapeError: ``logits`` is not a non-empty (n, K) tensor.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ShapeError(f"logits must be an (n, K) tensor with n >= 1, got shape {tuple(logits.shape)}")
    z = logits.detach().to(dtype or logits.dtype)
    total = torch.exp(z - z.amax(dim=1, keepdim=True)).sum(dim=1)
    return float((total == 1).double().mean())


def zero_loss_fraction(logits: Tensor, labels: Tensor, dtype: torch.dtype | None = None) -> float:
    """The fraction of examples whose cross-entropy −log_softmax(z)_y is exactly 0 when computed in ``dtype``.

    The "zero terms" of the authors' code: examples that no longer contribute
    to the loss because their softmax has collapsed onto the label.

    Example:
        >>> import torch
        >>> zero_loss_fraction(torch.tensor([[0.0, -30.0], [0.0, -30.0]]), torch.tensor([0, 1]))
        0.5

    References:
        "Grokking at the Edge of Numerical Stability", Prieto et al., 2025.

    Args:
        logits: (n, K) logits.
        labels: (n,) integer class labels.
        dtype: floating dtype to compute in, or None for the logits' dtype.

    Returns:
        The fraction in [0, 1].

    Raises:
        ShapeError: the shapes do not match or the labels are not integers.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0 or labels.is_floating_point():
        raise ShapeError(
            f"logits must be (n, K) and labels (n,) integers with n >= 1, "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)} {labels.dtype}"
        )
    logp = torch.log_softmax(logits.detach().to(dtype or logits.dtype), dim=1)
    return float((logp.gather(1, labels.long()[:, None]) == 0).double().mean())


def effective_learning_rate(lr: float, model: nn.Module) -> float:
    """η_eff = η / ‖θ‖², the learning rate seen by scale-invariant weights.

    For weights followed by a normalization (L(αw) = L(w), so ∇L(αw) = ∇L(w)/α)
    a step of size η changes the direction of w as a step of η/‖w‖² on the
    unit sphere would; weight decay shrinks ‖w‖ and so raises η_eff. Here ‖θ‖ is
    the norm of all trainable parameters (:func:`~reglab.diagnostics.weights.weight_norm`).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> effective_learning_rate(0.5, net)
        0.02

    References:
        "L2 Regularization versus Batch and Weight Normalization", van Laarhoven, 2017.

    Args:
        lr: the learning rate η.
        model: the model; not modified.

    Returns:
        η / ‖θ‖² (inf when every parameter is zero).

    Raises:
        ConfigError: ``lr`` is not a finite number >= 0.
    """
    return _effective_lr(check_float("lr", lr, 0.0), weight_norm(model).total)


def _effective_lr(lr: float, norm: float) -> float:
    return lr / norm**2 if norm > 0 else math.inf


@dataclass
class GrokkingStats:
    """The grokking measurements of "Grokking at the Edge of Numerical Stability" on one dataset.

    Attributes:
        nlm_cosine: cos(−∇L, θ) over the selected parameters; → 1 when the update only scales the weights
            (naïve loss minimization). NaN when the gradient or θ is zero.
        sc_fraction: :func:`softmax_collapse_fraction` of the logits (NaN for outputs that are not (n, K) logits).
        zero_loss_fraction: :func:`zero_loss_fraction` (NaN unless the targets are integer labels).
        weight_norm: ‖θ‖ over all trainable parameters.
        effective_lr: lr / ‖θ‖² (NaN when no lr was given).
        grad_norm: ‖∇L‖.
        loss: L, the mean of ``loss_fn`` over the data.
        n: number of examples.
        n_grad: full-batch gradients computed (one per batch).
        seconds: wall time.
    """

    nlm_cosine: float
    sc_fraction: float
    zero_loss_fraction: float
    weight_norm: float
    effective_lr: float
    grad_norm: float
    loss: float
    n: int
    n_grad: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grokking_statistics(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    lr: float | None = None,
    dtype: torch.dtype | None = None,
    params: Any = None,
) -> GrokkingStats:
    """NLM alignment cos(−∇L, θ), Softmax-Collapse fraction, weight norm and effective learning rate.

    .. math::
        \\cos(-\\nabla L, \\theta)
        = \\frac{-\\nabla L \\cdot \\theta}{\\lVert \\nabla L \\rVert \\lVert \\theta \\rVert},
        \\qquad \\eta_{eff} = \\eta / \\lVert \\theta \\rVert^2

    L is the mean of ``loss_fn`` over all of ``data`` (batches weighted by
    their size). Beyond the point of fitting the training set, the gradient of
    a softmax cross-entropy aligns with the naïve-loss-minimization (NLM)
    direction, which scales the logits (for a homogeneous network: the weights
    along themselves) without changing predictions; cos → 1. The logits'
    growth eventually makes the softmax collapse in floating point
    (sc_fraction → 1), which stops learning.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> s = grokking_statistics(net, torch.nn.functional.cross_entropy, (x, y), lr=0.1)
        >>> -1.0 <= s.nlm_cosine <= 1.0, s.sc_fraction
        (True, 0.0)

    References:
        "Grokking at the Edge of Numerical Stability", Prieto, Barsbey, Mediano & Birdal, 2025;
        "L2 Regularization versus Batch and Weight Normalization", van Laarhoven, 2017 (effective learning rate).

    Args:
        model: any ``nn.Module``; not modified.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over its batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches.
        lr: the optimizer's learning rate, for ``effective_lr``; None to skip.
        dtype: the floating dtype of the Softmax-Collapse test (None: the logits' dtype, i.e. the model's).
        params: parameters θ of the NLM cosine (the weight norm is always over all trainable parameters).

    Returns:
        A :class:`GrokkingStats`.

    Raises:
        ConfigError: empty ``data``, a bad ``params`` selection, or ``lr`` not a finite number >= 0.
    """
    start = time.perf_counter()
    if lr is not None:
        lr = check_float("lr", lr, 0.0)
    fm = FunctionalModel(model, loss_fn, params)
    grad = torch.zeros(fm.numel, dtype=torch.float64, device=fm.device)
    loss, n, n_grad, logits, labels = 0.0, 0, 0, [], []
    for x, y in batches(data):
        x = fm.inputs(x)
        value, g = fm.gradient(x, y)
        grad += g.double() * len(x)
        loss += float(value) * len(x)
        n += len(x)
        n_grad += 1
        with torch.no_grad():
            logits.append(fm.output(fm.params, x))
        labels.append(y)
    grad /= n
    theta = fm.point().double()
    denominator = float(grad.norm() * theta.norm())
    out, y_all = torch.cat(logits), torch.cat(labels)
    classification = out.ndim == 2 and out.is_floating_point()
    integer_labels = classification and y_all.shape == (len(out),) and not y_all.is_floating_point()
    norm = weight_norm(model).total
    return GrokkingStats(
        nlm_cosine=float(-(grad @ theta)) / denominator if denominator > 0 else math.nan,
        sc_fraction=softmax_collapse_fraction(out, dtype) if classification else math.nan,
        zero_loss_fraction=zero_loss_fraction(out, y_all.to(out.device), dtype) if integer_labels else math.nan,
        weight_norm=norm,
        effective_lr=_effective_lr(lr, norm) if lr is not None else math.nan,
        grad_norm=float(grad.norm()),
        loss=loss / n,
        n=n,
        n_grad=n_grad,
        seconds=time.perf_counter() - start,
    )
