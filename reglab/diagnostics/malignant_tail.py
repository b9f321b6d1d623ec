"""The Spectral Linear Probe and Explicit Spectral Truncation of "The Malignant Tail".

"The Malignant Tail: Spectral Segregation of Label Noise in
Over-Parameterized Networks": after training on noisy labels, linear probes on
the leading principal components of the penultimate features fit the clean
signal and those on the tail fit the flipped labels; truncating the features
at about the number of classes recovers test accuracy lost to memorization.
:func:`spectral_probe_features` takes features, :func:`spectral_probe` a model
with ``features(x)`` and ``head(h)``. Computed in float64.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_float, check_int
from reglab.diagnostics.features import (
    as_pair,
    check_features,
    check_labels,
    features_and_logits,
    read_features,
    require_features_head,
)
from reglab.diagnostics.rank import rank_dtype, spectral_effective_rank
from reglab.diagnostics.representation_results import SpectralProbeResult
from reglab.linalg.functional import eval_mode, on_model_device


def _accuracy(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> float:
    correct = scores.argmax(1) == labels
    if mask is not None:
        correct = correct[mask]
    return float(correct.double().mean()) if correct.numel() else math.nan


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
    Spectral Linear Probe and Explicit Spectral Truncation).

    Args:
        train_features: (n, D) training features.
        train_labels: (n,) training labels (as trained on, e.g. with label noise).
        test_features: (m, D) test features.
        test_labels: (m,) test labels.
        ks: numbers of leading components, each in [0, D]; default every k in 1..r (r the numerical rank).
            Components beyond r have zero variance: a head of k > r equals that of r.
        ridge: ridge strength >= 0, added to s_j^2 = n * (variance along component j), so it is in units of n times
            squared feature scale; 0 is plain least squares (components of zero variance, beyond the rank, are
            dropped). A small fraction of s_1^2 is typical.
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
    train = check_features(train_features, "train_features").detach().double()
    test = check_features(test_features, "test_features").detach().double()
    n, d = train.shape
    if test.shape[1] != d:
        raise ShapeError(f"test_features must have {d} columns like train_features, got {tuple(test.shape)}")
    y = check_labels(train_labels, n, "train_labels")
    yt = check_labels(test_labels, test.shape[0], "test_labels")
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
    tolerance = s.max() * max(n, d) * torch.finfo(rank_dtype(train_features)).eps  # matrix_rank's, in the input dtype
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
    out: dict[str, list[float]] = {key: [math.nan] * len(ks) for key in keys}
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
        effective_rank=spectral_effective_rank(s, (n, d), rank_dtype(train_features)),
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
    require_features_head(model)
    check_int("batch_size", batch_size, 1)
    x, y = on_model_device(model, *as_pair(train_data, "train_data"))
    xt, yt = on_model_device(model, *as_pair(test_data, "test_data"))
    h, logits = features_and_logits(model, x, batch_size)
    ht = read_features(model, xt, batch_size)
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
