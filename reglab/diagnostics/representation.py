"""Representation diagnostics: neural collapse (NC1–NC4), effective and stable rank, the spectral linear probe.

Everything here reads the penultimate features ``model.features(x)`` and the
readout ``model.head(h)`` (the pair every reglab reference model implements);
the model runs in eval mode without gradients, its train/eval mode is restored,
and any subsampling draws from a local ``torch.Generator`` seeded by ``seed``
(the global RNG is not touched). All statistics are computed in float64.

- :func:`neural_collapse_metrics` / :func:`neural_collapse`: NC1–NC4 of
  "Prevalence of Neural Collapse during the Terminal Phase of Deep Learning
  Training" (Papyan, Han & Donoho, 2020), with the definitions of their
  reference code and of the follow-ups ("Neural Collapse under MSE Loss", Han,
  Papyan & Donoho, 2022; "Neural Collapse: A Review on Modelling Principles and
  Generalization", Kothapalli, 2023).
- :func:`effective_rank`, :func:`stable_rank`, :func:`rank_metrics` (weights),
  :func:`feature_rank` (features): "The Effective Rank: A Measure of Effective
  Dimensionality" (Roy & Vetterli, 2007) and the stable (numerical) rank.
- :func:`spectral_probe_features` / :func:`spectral_probe`: the Spectral Linear
  Probe and Explicit Spectral Truncation of "The Malignant Tail: Spectral
  Segregation of Label Noise in Over-Parameterized Networks".
- Probes ``neural_collapse`` (:class:`NeuralCollapseProbe`) and
  ``effective_rank`` (:class:`EffectiveRankProbe`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, ShapeError
from reglab.core.validation import check_bool, check_float, check_int
from reglab.diagnostics.probe import Probe
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.functional import eval_mode, on_model_device

_NAN = float("nan")


# -- shared helpers ------------------------------------------------------------------------------------------------


def _as_pair(data: Any, name: str = "data") -> tuple[Tensor, Tensor]:
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


def _check_labels(labels: Tensor, n: int, name: str = "labels") -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ShapeError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ShapeError(f"{name} must be integer class indices, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ShapeError(f"{name} must be class indices >= 0, got {int(labels.min())}")
    return labels.long()


def _check_features(features: Tensor, name: str = "features") -> Tensor:
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ShapeError(f"{name} must be an (n, D) tensor with n >= 1 and D >= 1, got {shape}")
    if not features.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {features.dtype}")
    return features


def _require_features_head(model: nn.Module) -> None:
    missing = [m for m in ("features", "head") if not callable(getattr(model, m, None))]
    if missing:
        raise MissingContextError(
            f"{type(model).__name__} has no {' or '.join(f'{m}(...)' for m in missing)}; representation diagnostics "
            "need model.features(x) (the penultimate features, (n, D)) and model.head(h) (the readout), as reglab's "
            "reference models (reglab.tasks.MODELS) provide"
        )


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _subsample(n: int, max_examples: int | None, seed: int) -> Tensor | None:
    """Indices of ``max_examples`` examples drawn without replacement from a local generator, or None for all."""
    if max_examples is None or max_examples >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_examples].sort().values


def _check_max_examples(max_examples: int | None) -> int | None:
    return None if max_examples is None else check_int("max_examples", max_examples, 1)


@torch.no_grad()
def _features_and_logits(model: nn.Module, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
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
def _features(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
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
def _affine_head(model: nn.Module, features: Tensor, logits: Tensor) -> tuple[Tensor, Tensor] | None:
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


# -- neural collapse ---------------------------------------------------------------------------------------------


@dataclass
class NeuralCollapseResult:
    """NC1–NC4 of features (and classifier) on one labelled dataset; each is 0 at exact neural collapse.

    Attributes:
        nc1: tr(Sigma_W Sigma_B^+) / K, within-class variability relative to between-class (NaN when Sigma_B = 0).
        nc2_equinorm: std / mean of the centered class-mean norms ||mu_c - mu_G|| (std with K - 1 in the denominator).
        nc2_equiangle: std over the K(K-1)/2 pairs c < c' of cos(mu_c - mu_G, mu_c' - mu_G) (population std).
        nc2_maxangle: mean over pairs of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(K-1)| (distance to the simplex angle).
        nc2_etf: || G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F with G the Gram matrix of the centered class means.
        nc2_equinorm_w, nc2_equiangle_w, nc2_maxangle_w: the same for the classifier rows w_c (None without one).
        nc3: || W/||W||_F - M/||M||_F ||_F^2, M the centered class means as rows (None without a classifier).
        nc4: fraction of examples whose network prediction differs from the nearest class mean (None without logits).
        accuracy: the network's accuracy on the labels (None without logits).
        trace_within, trace_between: tr(Sigma_W) and tr(Sigma_B).
        n, num_classes, feature_dim: the data's size.
        seconds: wall time.
    """

    nc1: float
    nc2_equinorm: float
    nc2_equiangle: float
    nc2_maxangle: float
    nc2_etf: float
    nc3: float | None
    nc4: float | None
    nc2_equinorm_w: float | None
    nc2_equiangle_w: float | None
    nc2_maxangle_w: float | None
    accuracy: float | None
    trace_within: float
    trace_between: float
    n: int
    num_classes: int
    feature_dim: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm_angle(rows: Tensor) -> tuple[float, float, float]:
    """(CV of the row norms, std of pairwise cosines, mean |cos + 1/(K-1)|) of the rows of a (K, D) matrix."""
    k = rows.shape[0]
    norms = rows.norm(dim=1)
    mean = norms.mean()
    equinorm = float(norms.std() / mean) if mean > 0 else _NAN
    if bool((norms == 0).any()):
        return equinorm, _NAN, _NAN
    unit = rows / norms[:, None]
    i, j = torch.triu_indices(k, k, 1)
    cos = (unit @ unit.T)[i, j]
    return equinorm, float(cos.std(correction=0)), float((cos + 1.0 / (k - 1)).abs().mean())


def neural_collapse_metrics(
    features: Tensor,
    labels: Tensor,
    classifier_weight: Tensor | None = None,
    logits: Tensor | None = None,
    *,
    classifier_bias: Tensor | None = None,
    num_classes: int | None = None,
) -> NeuralCollapseResult:
    """NC1–NC4 of penultimate features, their labels and (optionally) the linear classifier and logits.

    With n examples h_i of class y_i, class means mu_c, their average
    mu_G = (1/K) sum_c mu_c (the global mean for balanced classes, as in the
    reference code), centered means m_c = mu_c - mu_G (rows of M, K x D) and
    classifier rows w_c (W, K x D)::

        Sigma_W = (1/n) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T
        Sigma_B = (1/K) sum_c m_c m_c^T
        NC1 = tr(Sigma_W Sigma_B^+) / K                       (Sigma_B^+ the Moore-Penrose pseudo-inverse)
        NC2 equinorm  = std_c ||m_c|| / mean_c ||m_c||
            equiangle = std_{c<c'} cos(m_c, m_c')
            maxangle  = mean_{c!=c'} |cos(m_c, m_c') + 1/(K-1)|
            etf       = || M M^T / ||M M^T||_F - (I - 11^T/K) / sqrt(K-1) ||_F
        NC3 = || W/||W||_F - M/||M||_F ||_F^2
        NC4 = (1/n) #{i : argmax_c logits_ic != argmin_c ||h_i - mu_c||}

    All are 0 at exact neural collapse (zero within-class variability, centered
    means forming a simplex equiangular tight frame, classifier proportional to
    the means, network deciding as the nearest class center). NC1, the std
    forms of NC2 and NC3 follow the reference code of Papyan et al. (its
    ``Sw_invSb``, ``norm_M_CoV``, ``cos_M``, ``W_M_dist``, ``NCC_mismatch``;
    NC1 divided by K as in Han et al. 2022); ``etf`` is the simplex-ETF error
    of Kothapalli (2023). With ``logits=None`` and a classifier, the logits are
    ``h W^T + b``.

    Example:
        >>> etf = torch.eye(4, dtype=torch.float64) - 0.25  # rows: a simplex ETF in R^4
        >>> labels = torch.arange(4).repeat(5)
        >>> r = neural_collapse_metrics(etf[labels], labels, classifier_weight=etf)
        >>> round(r.nc1, 12), round(r.nc3, 12), r.nc4
        (0.0, 0.0, 0.0)

    References:
        Papyan, Han & Donoho, "Prevalence of Neural Collapse during the Terminal Phase of Deep Learning Training"
        (PNAS, 2020); Han, Papyan & Donoho, "Neural Collapse under MSE Loss: Proximity to and Dynamics on the Central
        Path" (ICLR, 2022); Kothapalli, "Neural Collapse: A Review on Modelling Principles and Generalization" (TMLR,
        2023).

    Args:
        features: (n, D) penultimate features.
        labels: (n,) integer class labels; every class in [0, K) needs at least one example.
        classifier_weight: (K, D) weight of the linear classifier, or None (no NC3, no W-side NC2).
        logits: (n, K) network outputs for NC4, or None (computed from the classifier when it is given).
        classifier_bias: (K,) bias used with ``classifier_weight`` when ``logits`` is None.
        num_classes: K; defaults to the classifier's rows, else the logits' columns, else max(labels) + 1.

    Returns:
        A :class:`NeuralCollapseResult`.

    Raises:
        ShapeError: inconsistent shapes, non-integer labels, fewer than 2 classes, a label outside [0, K) or a class
            without examples.
        ConfigError: num_classes is not an int >= 2.
    """
    start = time.perf_counter()
    features = _check_features(features)
    n, d = features.shape
    labels = _check_labels(labels, n)
    if num_classes is not None:
        k = check_int("num_classes", num_classes, 2)
    elif classifier_weight is not None:
        k = classifier_weight.shape[0]
    elif logits is not None:
        k = logits.shape[-1]
    else:
        k = int(labels.max()) + 1
    if k < 2:
        raise ShapeError(f"neural collapse needs at least 2 classes, got {k}")
    if int(labels.max()) >= k:
        raise ShapeError(f"labels must be in [0, {k}), got {int(labels.max())}")
    counts = torch.bincount(labels, minlength=k)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ShapeError(f"labels: classes {empty} have no examples; every class in [0, {k}) needs one")
    if classifier_weight is not None and tuple(classifier_weight.shape) != (k, d):
        raise ShapeError(f"classifier_weight must have shape ({k}, {d}), got {tuple(classifier_weight.shape)}")
    if classifier_bias is not None and tuple(classifier_bias.shape) != (k,):
        raise ShapeError(f"classifier_bias must have shape ({k},), got {tuple(classifier_bias.shape)}")
    if logits is not None and tuple(logits.shape) != (n, k):
        raise ShapeError(f"logits must have shape ({n}, {k}), got {tuple(logits.shape)}")

    h = features.detach().double()
    means = torch.zeros(k, d, dtype=torch.float64, device=h.device).index_add_(0, labels, h) / counts[:, None].double()
    centered = means - means.mean(0)
    residual = h - means[labels]
    # NC1 = tr(Sigma_W Sigma_B^+)/K with Sigma_B = V S^2 V^T / K, so Sigma_B^+ = K V S^-2 V^T and
    # NC1 = ||R V S^-1||_F^2 / n (R the residuals), over the singular values above the pinv tolerance.
    _, s, vh = torch.linalg.svd(centered, full_matrices=False)
    keep = s > s.max() * max(k, d) * torch.finfo(torch.float64).eps
    if bool(keep.any()):
        nc1 = float((residual @ vh[keep].T / s[keep]).pow(2).sum() / n)
    else:
        nc1 = _NAN
    equinorm, equiangle, maxangle = _norm_angle(centered)
    gram = centered @ centered.T
    gram_norm = gram.norm()
    if gram_norm > 0:
        ideal = (torch.eye(k, dtype=torch.float64, device=gram.device) - 1.0 / k) / math.sqrt(k - 1)
        etf = float((gram / gram_norm - ideal).norm())
    else:
        etf = _NAN

    nc3 = equinorm_w = equiangle_w = maxangle_w = None
    if classifier_weight is not None:
        w = classifier_weight.detach().double()
        equinorm_w, equiangle_w, maxangle_w = _norm_angle(w)
        w_norm, m_norm = w.norm(), centered.norm()
        nc3 = float((w / w_norm - centered / m_norm).pow(2).sum()) if w_norm > 0 and m_norm > 0 else _NAN
        if logits is None:
            logits = h @ w.T
            if classifier_bias is not None:
                logits = logits + classifier_bias.detach().double()

    nc4 = accuracy = None
    if logits is not None:
        prediction = logits.detach().argmax(1)
        # argmin_c ||h - mu_c||^2 = argmin_c (||mu_c||^2 - 2 h . mu_c)
        nearest = (means.pow(2).sum(1) - 2 * h @ means.T).argmin(1)
        nc4 = float((prediction != nearest).double().mean())
        accuracy = float((prediction == labels).double().mean())

    return NeuralCollapseResult(
        nc1=nc1,
        nc2_equinorm=equinorm,
        nc2_equiangle=equiangle,
        nc2_maxangle=maxangle,
        nc2_etf=etf,
        nc3=nc3,
        nc4=nc4,
        nc2_equinorm_w=equinorm_w,
        nc2_equiangle_w=equiangle_w,
        nc2_maxangle_w=maxangle_w,
        accuracy=accuracy,
        trace_within=float(residual.pow(2).sum() / n),
        trace_between=float(centered.pow(2).sum() / k),
        n=n,
        num_classes=k,
        feature_dim=d,
        seconds=time.perf_counter() - start,
    )


def neural_collapse(
    model: nn.Module,
    data: Any,
    *,
    num_classes: int | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 4096,
) -> NeuralCollapseResult:
    """NC1–NC4 (:func:`neural_collapse_metrics`) of ``model`` on ``data``, usually the training set.

    Features are ``model.features(x)`` and logits ``model.head(features)``, in
    eval mode without gradients (the model's mode is restored; nothing is
    changed). The classifier is ``model.head`` when it is an ``nn.Linear``;
    otherwise the head is read off as an affine map ``h W^T + b`` from D + 1
    evaluations and used when it reproduces the logits (to sqrt(eps) of their
    scale); a head that is not affine gives ``nc3 = None`` and no W-side NC2.

    Example:
        >>> from reglab.tasks import get
        >>> task = get("two_moons", n=100, n_test=10)
        >>> model = task.make_model(width=8, depth=1)
        >>> from reglab.tasks import as_tensors
        >>> x, y, _ = as_tensors(task.train)
        >>> r = neural_collapse(model, (x, y))
        >>> r.nc3 is not None and 0 <= r.nc4 <= 1
        True

    Args:
        model: a model with ``features(x)`` and ``head(h)``.
        data: ``(inputs, labels)`` or an iterable of ``(x, y)`` / ``(x, y, index)`` batches.
        num_classes: K, defaults to the number of outputs of the head.
        max_examples: use at most this many examples, drawn without replacement (None: all).
        seed: seed of the local generator that draws the subsample.
        batch_size: examples per forward pass.

    Returns:
        A :class:`NeuralCollapseResult`.

    Raises:
        MissingContextError: the model has no ``features`` or ``head`` method.
        ShapeError: see :func:`neural_collapse_metrics`.
        ConfigError: bad data, max_examples, seed or batch_size.
    """
    start = time.perf_counter()
    _require_features_head(model)
    max_examples = _check_max_examples(max_examples)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    x, y = on_model_device(model, *_as_pair(data))
    index = _subsample(len(x), max_examples, seed)
    if index is not None:
        x, y = x[index], y[index]
    h, logits = _features_and_logits(model, x, batch_size)
    affine = _affine_head(model, h, logits)
    weight, bias = affine if affine is not None else (None, None)
    result = neural_collapse_metrics(
        h, y, weight, logits, classifier_bias=bias, num_classes=num_classes or logits.shape[1]
    )
    result.seconds = time.perf_counter() - start
    return result


# -- effective and stable rank -----------------------------------------------------------------------------------


def _erank(singular_values: Tensor, shape: Sequence[int], dtype: torch.dtype) -> float:
    """exp(entropy) of the normalized singular values above the numerical-rank tolerance of ``dtype``."""
    if singular_values.numel() == 0 or singular_values.max() <= 0:
        return 0.0
    tolerance = singular_values.max() * max(shape) * torch.finfo(dtype).eps
    s = singular_values[singular_values > tolerance]
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def _srank(singular_values: Tensor) -> float:
    top = singular_values.max() if singular_values.numel() else torch.tensor(0.0)
    return float(singular_values.pow(2).sum() / top**2) if top > 0 else 0.0


def _real_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float64


def _matrix(matrix: Tensor, name: str = "matrix") -> Tensor:
    if not isinstance(matrix, Tensor) or matrix.ndim != 2 or matrix.numel() == 0:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ShapeError(f"{name} must be a non-empty 2-D tensor (flatten conv kernels to (out, -1)), got {shape}")
    return matrix.detach().double()


def effective_rank(matrix: Tensor) -> float:
    """Effective rank exp(H(p)), p_k = sigma_k / sum_j sigma_j, H(p) = -sum_k p_k log p_k (0 log 0 = 0).

    Ranges from 1 (rank one) to min(m, n) (all singular values equal); 0 for
    the zero matrix, by convention. Singular values at or below
    max(m, n) * eps * sigma_1, with eps of the matrix's dtype (the tolerance of
    ``torch.linalg.matrix_rank``), are round-off and count as zero: the entropy
    term -p log p is not Lipschitz at 0, so a float32 rank-one matrix would
    otherwise read 1 + 1e-6.

    Example:
        >>> round(effective_rank(torch.eye(5)), 12)
        5.0

    References: Roy & Vetterli, "The Effective Rank: A Measure of Effective Dimensionality" (EUSIPCO, 2007).

    Args:
        matrix: a 2-D tensor.

    Returns:
        The effective rank (float, computed in float64).

    Raises:
        ShapeError: ``matrix`` is not a non-empty 2-D tensor.
    """
    return _erank(torch.linalg.svdvals(_matrix(matrix)), matrix.shape, _real_dtype(matrix))


def stable_rank(matrix: Tensor) -> float:
    """Stable rank ||A||_F^2 / ||A||_2^2 = sum_k sigma_k^2 / sigma_1^2 (0 for the zero matrix).

    Between 1 and rank(A); insensitive to small singular values, unlike the rank.

    Example:
        >>> stable_rank(torch.diag(torch.tensor([2.0, 1.0])))
        1.25

    References: Rudelson & Vershynin, "Sampling from Large Matrices: An Approach through Geometric Functional
    Analysis" (J. ACM, 2007).

    Args:
        matrix: a 2-D tensor.

    Returns:
        The stable rank (float, computed in float64).

    Raises:
        ShapeError: ``matrix`` is not a non-empty 2-D tensor.
    """
    return _srank(torch.linalg.svdvals(_matrix(matrix)))


@dataclass
class RankResult:
    """Effective and stable rank of each weight matrix (parameters with >= 2 dims, flattened to (shape[0], -1))."""

    effective_rank: dict[str, float] = field(default_factory=dict)
    stable_rank: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def rank_metrics(model: nn.Module) -> RankResult:
    """Effective rank (Roy & Vetterli, 2007) and stable rank of every trainable weight matrix of ``model``.

    Parameters with two or more dimensions are read as matrices
    ``W.reshape(W.shape[0], -1)`` (a conv kernel (out, in, *k) becomes
    out x (in * prod(k))); biases and other vectors are skipped. The model is
    not changed.

    Example:
        >>> r = rank_metrics(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
        >>> sorted(r.effective_rank)
        ['0.weight', '2.weight']

    Args:
        model: any module.

    Returns:
        A :class:`RankResult` keyed by parameter name.
    """
    start = time.perf_counter()
    result = RankResult()
    for name, p in model.named_parameters():
        if p.requires_grad and p.ndim >= 2 and p.numel() > 0:
            s = torch.linalg.svdvals(p.detach().double().reshape(p.shape[0], -1))
            result.effective_rank[name] = _erank(s, (p.shape[0], p[0].numel()), p.dtype)
            result.stable_rank[name] = _srank(s)
            result.shapes[name] = list(p.shape)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class FeatureRankResult:
    """Effective and stable rank of an (n, D) feature matrix, with its singular values (descending)."""

    effective_rank: float
    stable_rank: float
    n: int
    feature_dim: int
    centered: bool
    singular_values: list[float] = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_rank(
    model: nn.Module,
    data: Any,
    *,
    max_examples: int | None = 2000,
    center: bool = True,
    seed: int = 0,
    batch_size: int = 4096,
) -> FeatureRankResult:
    """Effective and stable rank of the features Phi = model.features(x) (n x D) on ``data``.

    With ``center=True`` the column means are removed first (Phi - 1 mean^T:
    the spectrum PCA sees, as in the Malignant Tail analysis); with
    ``center=False`` the raw feature matrix is used. The model runs in eval
    mode without gradients; its mode is restored.

    Example:
        >>> model = nn.Sequential()
        >>> model.features, model.head = (lambda x: x), (lambda h: h)
        >>> x = torch.cat([torch.eye(3), -torch.eye(3)]).double()
        >>> round(feature_rank(model, (x, torch.zeros(6))).effective_rank, 12)
        3.0

    Args:
        model: a model with ``features(x)``.
        data: ``(inputs, labels)`` or an iterable of batches (labels are not used).
        max_examples: use at most this many examples, drawn without replacement from a generator seeded by ``seed``
            (None: all); ~2000 keeps the SVD cheap.
        center: remove the feature means first.
        seed: seed of the subsample.
        batch_size: examples per forward pass.

    Returns:
        A :class:`FeatureRankResult`.

    Raises:
        MissingContextError: the model has no ``features`` method.
        ShapeError: the features are not (n, D).
        ConfigError: bad data, max_examples, seed or batch_size.
    """
    start = time.perf_counter()
    if not callable(getattr(model, "features", None)):
        raise MissingContextError(
            f"{type(model).__name__} has no features(...) method; feature_rank needs model.features(x) "
            "(the penultimate features, (n, D)), as reglab's reference models provide"
        )
    max_examples = _check_max_examples(max_examples)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    (x,) = on_model_device(model, _as_pair(data)[0])
    index = _subsample(len(x), max_examples, seed)
    if index is not None:
        x = x[index]
    h = _features(model, x, batch_size)
    dtype = _real_dtype(h)
    h = h.double()
    if center:
        h = h - h.mean(0)
    s = torch.linalg.svdvals(h)
    return FeatureRankResult(
        effective_rank=_erank(s, h.shape, dtype),
        stable_rank=_srank(s),
        n=h.shape[0],
        feature_dim=h.shape[1],
        centered=bool(center),
        singular_values=s.tolist(),
        seconds=time.perf_counter() - start,
    )


# -- spectral linear probe and spectral truncation (The Malignant Tail) ------------------------------------------


@dataclass
class SpectralProbeResult:
    """Spectral linear probe and spectral truncation curves, one entry per k in ``ks``.

    Attributes:
        ks: the numbers of leading principal components.
        head_train_accuracy, head_test_accuracy: probe on the top-k components, accuracy on the (possibly noisy)
            training labels and on the test labels.
        tail_train_accuracy, tail_test_accuracy: probe on the components k+1..D.
        head_train_accuracy_noisy, head_train_accuracy_clean, tail_train_accuracy_noisy, tail_train_accuracy_clean:
            training accuracy on the examples marked noisy / not noisy (None without a ``noisy`` mask; NaN on an
            empty subset).
        truncated_train_accuracy, truncated_test_accuracy: the model's own head on the rank-k truncated features
            (None without a head).
        full_train_accuracy, full_test_accuracy: the head on the untruncated features (None without a head).
        singular_values: of the centered training features, descending.
        effective_rank: of the centered training features (Roy & Vetterli, 2007).
        rank: numerical rank r of the centered training features, singular values above max(n, D) * eps * sigma_1
            with eps of the features' dtype (components beyond r carry nothing).
        ridge, n_train, n_test, feature_dim, num_classes: the setting.
        seconds: wall time.
    """

    ks: list[int]
    head_train_accuracy: list[float]
    head_test_accuracy: list[float]
    tail_train_accuracy: list[float]
    tail_test_accuracy: list[float]
    truncated_train_accuracy: list[float] | None
    truncated_test_accuracy: list[float] | None
    full_train_accuracy: float | None
    full_test_accuracy: float | None
    head_train_accuracy_noisy: list[float] | None
    head_train_accuracy_clean: list[float] | None
    tail_train_accuracy_noisy: list[float] | None
    tail_train_accuracy_clean: list[float] | None
    singular_values: list[float] = field(repr=False)
    effective_rank: float = 0.0
    rank: int = 0
    ridge: float = 0.0
    n_train: int = 0
    n_test: int = 0
    feature_dim: int = 0
    num_classes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> float:
    correct = scores.argmax(1) == labels
    if mask is not None:
        correct = correct[mask]
    return float(correct.double().mean()) if correct.numel() else _NAN


def _check_ks(ks: Sequence[int] | None, d: int, r: int) -> list[int]:
    if ks is None:
        return list(range(1, r + 1))
    if isinstance(ks, (int, str)) or not isinstance(ks, Sequence) or len(ks) == 0:
        raise ConfigError(f"ks must be a non-empty sequence of ints in [0, {d}], got {ks!r}")
    return sorted({check_int(f"ks[{i}]", k, 0, d) for i, k in enumerate(ks)})


def spectral_probe_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    ks: Sequence[int] | None = None,
    ridge: float = 0.0,
    head: Callable[[Tensor], Tensor] | None = None,
    noisy: Tensor | None = None,
    num_classes: int | None = None,
) -> SpectralProbeResult:
    """Spectral Linear Probe and Explicit Spectral Truncation of penultimate features (The Malignant Tail).

    PCA of the training features Phi (n x D): Phi - 1 mu^T = U S V^T, with
    principal scores Z = (Phi - 1 mu^T) V (test scores use the training mean
    and basis). For each k:

    - **head probe**: a least-squares (ridge) classifier on one-hot labels Y fit
      on the top-k scores Z_{:, 1..k} with an unpenalized intercept,
      ``min ||Y - 1 c^T - Z_k B||^2 + ridge ||B||^2``; since the scores are
      centered and orthogonal the solution is c = mean(Y) and
      b_j = z_j^T Y / (s_j^2 + ridge). Prediction = argmax of 1 c^T + Z_k B.
    - **tail probe**: the same on the components k+1..D.
    - **spectral truncation** (with ``head``): the features replaced by their
      rank-k PCA truncation mu + (Phi - mu) V_k V_k^T and passed to the model's
      own head, no refit (the refit variant is the head probe).

    Accuracies are reported on the training labels (the labels the network fit,
    noisy ones included; split by ``noisy`` when given) and on the test labels.
    The prediction of the Malignant Tail: after training on noisy labels, the
    flipped labels are fit by the tail probe and the clean signal lives in the
    head; truncating at k about the number of classes recovers test accuracy
    lost to memorization.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(3).repeat(20)
        >>> phi = torch.cat([5 * torch.eye(3)[y], 0.1 * torch.randn(60, 5, generator=g)], 1).double()
        >>> r = spectral_probe_features(phi, y, phi, y, ks=[2, 7])
        >>> r.head_test_accuracy
        [1.0, 1.0]

    References: "The Malignant Tail: Spectral Segregation of Label Noise in Over-Parameterized Networks" (the paper's
    Spectral Linear Probe and Explicit Spectral Truncation; implemented as reglab's catalog row describes it).

    Args:
        train_features: (n, D) training features.
        train_labels: (n,) training labels (as trained on, e.g. with label noise).
        test_features: (m, D) test features.
        test_labels: (m,) test labels.
        ks: numbers of leading components, each in [0, D]; default every k in 1..r (r the numerical rank).
            Components beyond r have zero variance: a head of k > r equals that of r.
        ridge: ridge strength >= 0, added to s_j^2 = n * (variance along component j), so it is in units of n times
            squared feature scale; 0 is plain least squares (components of zero variance, beyond the rank, are
            dropped). The catalog's "probe ridge strength"; a small fraction of s_1^2 is typical.
        head: the model's readout ``head(h) -> logits`` for spectral truncation, or None.
        noisy: (n,) bool mask of training examples whose label is corrupted, or None.
        num_classes: K; defaults to max(labels) + 1 over both sets.

    Returns:
        A :class:`SpectralProbeResult`.

    Raises:
        ShapeError: inconsistent shapes or non-integer labels.
        ConfigError: ks, ridge or num_classes out of range.
    """
    start = time.perf_counter()
    train = _check_features(train_features, "train_features").detach().double()
    test = _check_features(test_features, "test_features").detach().double()
    n, d = train.shape
    if test.shape[1] != d:
        raise ShapeError(f"test_features must have {d} columns like train_features, got {tuple(test.shape)}")
    y = _check_labels(train_labels, n, "train_labels")
    yt = _check_labels(test_labels, test.shape[0], "test_labels")
    ridge = check_float("ridge", ridge, 0.0)
    k_classes = int(max(y.max(), yt.max())) + 1
    if num_classes is not None:
        k_classes = check_int("num_classes", num_classes, max(k_classes, 1))
    if noisy is not None:
        noisy = torch.as_tensor(noisy)
        if noisy.dtype != torch.bool or tuple(noisy.shape) != (n,):
            raise ShapeError(f"noisy must be a bool mask of shape ({n},), got {noisy.dtype} {tuple(noisy.shape)}")

    mean = train.mean(0)
    u, s, vh = torch.linalg.svd(train - mean, full_matrices=False)
    tolerance = s.max() * max(n, d) * torch.finfo(_real_dtype(train_features)).eps  # matrix_rank's, in the input dtype
    r = int((s > tolerance).sum()) if s.max() > 0 else 0
    ks = _check_ks(ks, d, r)
    z, v = u[:, :r] * s[:r], vh[:r].T  # training scores (n, r) and basis (D, r)
    zt = (test - mean) @ v
    onehot = torch.nn.functional.one_hot(y, k_classes).double()
    prior = onehot.mean(0)
    coef = (z.T @ onehot) / (s[:r, None] ** 2 + ridge)  # (r, K)

    def partial(scores: Tensor, lo: int, hi: int) -> Tensor:
        return scores[:, lo:hi] @ coef[lo:hi]

    # running sums over the sorted ks: the head probe and the truncated features grow with k, the tail shrinks
    kks = [min(k, r) for k in ks]
    keys = ("head_train", "head_test", "tail_train", "tail_test", "hn", "hc", "tn", "tc", "trunc_tr", "trunc_te")
    out: dict[str, list[float]] = {key: [_NAN] * len(ks) for key in keys}
    head_tr, head_te = prior.expand(n, -1), prior.expand(test.shape[0], -1)
    trunc_tr, trunc_te = mean.expand(n, -1), mean.expand(test.shape[0], -1)
    lo = 0
    for i, kk in enumerate(kks):
        head_tr, head_te = head_tr + partial(z, lo, kk), head_te + partial(zt, lo, kk)
        out["head_train"][i], out["head_test"][i] = _accuracy(head_tr, y), _accuracy(head_te, yt)
        if noisy is not None:
            out["hn"][i], out["hc"][i] = _accuracy(head_tr, y, noisy), _accuracy(head_tr, y, ~noisy)
        if head is not None:
            trunc_tr = trunc_tr + z[:, lo:kk] @ v[:, lo:kk].T
            trunc_te = trunc_te + zt[:, lo:kk] @ v[:, lo:kk].T
            out["trunc_tr"][i], out["trunc_te"][i] = _accuracy(head(trunc_tr), y), _accuracy(head(trunc_te), yt)
        lo = kk
    tail_tr, tail_te = prior.expand(n, -1), prior.expand(test.shape[0], -1)
    hi = r
    for i in reversed(range(len(kks))):
        kk = kks[i]
        tail_tr, tail_te = tail_tr + partial(z, kk, hi), tail_te + partial(zt, kk, hi)
        out["tail_train"][i], out["tail_test"][i] = _accuracy(tail_tr, y), _accuracy(tail_te, yt)
        if noisy is not None:
            out["tn"][i], out["tc"][i] = _accuracy(tail_tr, y, noisy), _accuracy(tail_tr, y, ~noisy)
        hi = kk

    return SpectralProbeResult(
        ks=ks,
        head_train_accuracy=out["head_train"],
        head_test_accuracy=out["head_test"],
        tail_train_accuracy=out["tail_train"],
        tail_test_accuracy=out["tail_test"],
        truncated_train_accuracy=out["trunc_tr"] if head is not None else None,
        truncated_test_accuracy=out["trunc_te"] if head is not None else None,
        full_train_accuracy=_accuracy(head(train), y) if head is not None else None,
        full_test_accuracy=_accuracy(head(test), yt) if head is not None else None,
        head_train_accuracy_noisy=out["hn"] if noisy is not None else None,
        head_train_accuracy_clean=out["hc"] if noisy is not None else None,
        tail_train_accuracy_noisy=out["tn"] if noisy is not None else None,
        tail_train_accuracy_clean=out["tc"] if noisy is not None else None,
        singular_values=s.tolist(),
        effective_rank=_erank(s, (n, d), _real_dtype(train_features)),
        rank=r,
        ridge=ridge,
        n_train=n,
        n_test=test.shape[0],
        feature_dim=d,
        num_classes=k_classes,
        seconds=time.perf_counter() - start,
    )


def spectral_probe(
    model: nn.Module,
    train_data: Any,
    test_data: Any,
    *,
    ks: Sequence[int] | None = None,
    ridge: float = 0.0,
    noisy: Tensor | None = None,
    batch_size: int = 4096,
) -> SpectralProbeResult:
    """Spectral Linear Probe and Explicit Spectral Truncation (:func:`spectral_probe_features`) of ``model``.

    Features are ``model.features(x)`` on both sets; truncation feeds the
    rank-k features to ``model.head`` (cast to the model's dtype), in eval mode
    without gradients. The model is not changed and its mode is restored.

    Example:
        >>> from reglab.tasks import get, as_tensors
        >>> task = get("two_moons", n=60, n_test=40)
        >>> model = task.make_model(width=8, depth=1)
        >>> tr, te = as_tensors(task.train)[:2], as_tensors(task.test)[:2]
        >>> r = spectral_probe(model, tr, te, ks=[1, 2, 8])
        >>> len(r.truncated_test_accuracy)
        3

    Args:
        model: a model with ``features(x)`` and ``head(h)``.
        train_data: the training set the model was fit on, ``(inputs, labels)`` or an iterable of batches.
        test_data: the test set, same forms.
        ks, ridge, noisy: see :func:`spectral_probe_features` (``noisy`` indexes ``train_data``'s examples in order,
            e.g. ``task.flipped``).
        batch_size: examples per forward pass.

    Returns:
        A :class:`SpectralProbeResult`.

    Raises:
        MissingContextError: the model has no ``features`` or ``head`` method.
        ShapeError, ConfigError: see :func:`spectral_probe_features`; bad data or batch_size.
    """
    start = time.perf_counter()
    _require_features_head(model)
    check_int("batch_size", batch_size, 1)
    x, y = on_model_device(model, *_as_pair(train_data, "train_data"))
    xt, yt = on_model_device(model, *_as_pair(test_data, "test_data"))
    h, logits = _features_and_logits(model, x, batch_size)
    ht = _features(model, xt, batch_size)
    dtype = h.dtype

    @torch.no_grad()
    def head(features: Tensor) -> Tensor:
        with eval_mode(model):
            return torch.cat(
                [model.head(features[i : i + batch_size].to(dtype)) for i in range(0, len(features), batch_size)]
            ).double()

    num_classes = max(logits.shape[1], int(torch.as_tensor(y).max()) + 1, int(torch.as_tensor(yt).max()) + 1)
    result = spectral_probe_features(h, y, ht, yt, ks=ks, ridge=ridge, head=head, noisy=noisy, num_classes=num_classes)
    result.seconds = time.perf_counter() - start
    return result


# -- probes --------------------------------------------------------------------------------------------------------


def _train_pair(trainer: Any, max_examples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """The examples :func:`_subsample` would keep (in order), read by the trainer: a streamed task reads only those."""
    return trainer.examples("train", max_examples, seed, in_order=True)


NC_METRICS = ("nc1", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle", "nc2_etf", "nc3", "nc4")


@REGISTRY.register("neural_collapse")
class NeuralCollapseProbe(Probe):
    """Logs NC1–NC4 on the training set every N steps (metrics ``neural_collapse/<nc1|nc2_...|nc3|nc4>``).

    Logged: ``nc1``, ``nc2_equinorm``, ``nc2_equiangle``, ``nc2_maxangle``,
    ``nc2_etf``, ``nc3`` (when the head is affine) and ``nc4`` of
    :func:`neural_collapse` on ``trainer.task.train`` (the labels trained on).

    Args:
        every: measure every this many steps, >= 1.
        max_examples: subsample at most this many training examples (None: all).
        seed: seed of the subsample (the same examples at every measurement).
    """

    def __init__(self, every: int = 100, max_examples: int | None = None, seed: int = 0):
        super().__init__(every)
        self.max_examples = _check_max_examples(max_examples)
        self.seed = check_int("seed", seed, 0)

    def measure(self, trainer: Any) -> dict[str, float]:
        try:
            r = neural_collapse(
                trainer.model,
                _train_pair(trainer, self.max_examples, self.seed),
                max_examples=self.max_examples,
                seed=self.seed,
            )
        except ShapeError:  # e.g. a class with no training example: the metrics are undefined, training goes on
            return {f"neural_collapse/{k}": math.nan for k in NC_METRICS}
        values = {name: getattr(r, name) for name in NC_METRICS}
        return {f"neural_collapse/{k}": v for k, v in values.items() if v is not None}


@REGISTRY.register("effective_rank")
class EffectiveRankProbe(Probe):
    """Logs the effective and stable rank of the training features (``effective_rank/features``, ``stable_rank/...``).

    Measures :func:`feature_rank` on at most ``max_examples`` training examples
    (a fixed subsample drawn with ``seed``); with ``weights=True`` also logs
    ``effective_rank/<parameter>`` and ``stable_rank/<parameter>`` for every
    weight matrix (:func:`rank_metrics`).

    Args:
        every: measure every this many steps, >= 1.
        max_examples: subsample size, >= 1, or None for all; 2000 by default.
        center: remove the feature means before the SVD.
        weights: also log the ranks of the weight matrices.
        seed: seed of the subsample.
    """

    def __init__(
        self,
        every: int = 100,
        max_examples: int | None = 2000,
        center: bool = True,
        weights: bool = False,
        seed: int = 0,
    ):
        super().__init__(every)
        self.max_examples = _check_max_examples(max_examples)
        check_bool("center", center)
        check_bool("weights", weights)
        self.center, self.weights = center, weights
        self.seed = check_int("seed", seed, 0)

    def measure(self, trainer: Any) -> dict[str, float]:
        r = feature_rank(
            trainer.model,
            _train_pair(trainer, self.max_examples, self.seed),
            max_examples=self.max_examples,
            center=self.center,
            seed=self.seed,
        )
        out = {"effective_rank/features": r.effective_rank, "stable_rank/features": r.stable_rank}
        if self.weights:
            w = rank_metrics(trainer.model)
            out.update({f"effective_rank/{k}": v for k, v in w.effective_rank.items()})
            out.update({f"stable_rank/{k}": v for k, v in w.stable_rank.items()})
        return out
