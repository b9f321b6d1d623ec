"""Effective and stable rank of weight matrices and of feature matrices.

- effective rank exp(H(p)), p_k = sigma_k / sum_j sigma_j ("The Effective
  Rank: A Measure of Effective Dimensionality", Roy & Vetterli, 2007);
- stable rank ||A||_F^2 / ||A||_2^2 = sum_k sigma_k^2 / sigma_1^2 (Rudelson &
  Vershynin, 2007).

:func:`effective_rank` and :func:`stable_rank` take a matrix,
:func:`rank_metrics` every weight matrix of a model and :func:`feature_rank`
the penultimate features ``model.features(x)`` on data. Singular values are
computed in float64.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import MissingContextError, ShapeError
from reglab.core.validation import check_int
from reglab.diagnostics.features import as_pair, check_max_examples, read_features, subsample
from reglab.diagnostics.representation_results import FeatureRankResult, RankResult
from reglab.linalg.functional import on_model_device


def spectral_effective_rank(singular_values: Tensor, shape: Sequence[int], dtype: torch.dtype) -> float:
    """exp(entropy) of the normalized singular values above the numerical-rank tolerance of ``dtype``.

    The tolerance is max(shape) * eps(dtype) * sigma_1 (``torch.linalg.matrix_rank``'s); 0 for no or zero values.
    """
    if singular_values.numel() == 0 or singular_values.max() <= 0:
        return 0.0
    tolerance = singular_values.max() * max(shape) * torch.finfo(dtype).eps
    s = singular_values[singular_values > tolerance]
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def _srank(singular_values: Tensor) -> float:
    top = singular_values.max() if singular_values.numel() else torch.tensor(0.0)
    return float(singular_values.pow(2).sum() / top**2) if top > 0 else 0.0


def rank_dtype(x: Tensor) -> torch.dtype:
    """The dtype whose eps sets the numerical-rank tolerance of ``x``: its own if floating point, else float64."""
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
    return spectral_effective_rank(torch.linalg.svdvals(_matrix(matrix)), matrix.shape, rank_dtype(matrix))


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
            result.effective_rank[name] = spectral_effective_rank(s, (p.shape[0], p[0].numel()), p.dtype)
            result.stable_rank[name] = _srank(s)
            result.shapes[name] = list(p.shape)
    result.seconds = time.perf_counter() - start
    return result


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
    max_examples = check_max_examples(max_examples)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    (x,) = on_model_device(model, as_pair(data)[0])
    index = subsample(len(x), max_examples, seed)
    if index is not None:
        x = x[index]
    h = read_features(model, x, batch_size)
    dtype = rank_dtype(h)
    h = h.double()
    if center:
        h = h - h.mean(0)
    s = torch.linalg.svdvals(h)
    return FeatureRankResult(
        effective_rank=spectral_effective_rank(s, h.shape, dtype),
        stable_rank=_srank(s),
        n=h.shape[0],
        feature_dim=h.shape[1],
        centered=bool(center),
        singular_values=s.tolist(),
        seconds=time.perf_counter() - start,
    )
