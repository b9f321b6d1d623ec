"""Neural collapse NC1–NC4 of penultimate features, their labels and the linear classifier.

NC1–NC4 of "Prevalence of Neural Collapse during the Terminal Phase of Deep
Learning Training" (Papyan, Han & Donoho, 2020), with the definitions of their
reference code and of the follow-ups ("Neural Collapse under MSE Loss", Han,
Papyan & Donoho, 2022; "Neural Collapse: A Review on Modelling Principles and
Generalization", Kothapalli, 2023). :func:`neural_collapse_metrics` takes the
features, :func:`neural_collapse` a model with ``features(x)`` and ``head(h)``.
All statistics are computed in float64.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ShapeError
from reglab.core.validation import check_int
from reglab.diagnostics.features import (
    affine_head,
    as_pair,
    check_features,
    check_labels,
    check_max_examples,
    features_and_logits,
    require_features_head,
    subsample,
)
from reglab.diagnostics.representation_results import NeuralCollapseResult
from reglab.linalg.functional import on_model_device


def _norm_angle(rows: Tensor) -> tuple[float, float, float]:
    """(CV of the row norms, std of pairwise cosines, mean |cos + 1/(K-1)|) of the rows of a (K, D) matrix."""
    k = rows.shape[0]
    norms = rows.norm(dim=1)
    mean = norms.mean()
    equinorm = float(norms.std() / mean) if mean > 0 else math.nan
    if bool((norms == 0).any()):
        return equinorm, math.nan, math.nan
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
    features = check_features(features)
    n, d = features.shape
    labels = check_labels(labels, n)
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
        nc1 = math.nan
    equinorm, equiangle, maxangle = _norm_angle(centered)
    gram = centered @ centered.T
    gram_norm = gram.norm()
    if gram_norm > 0:
        ideal = (torch.eye(k, dtype=torch.float64, device=gram.device) - 1.0 / k) / math.sqrt(k - 1)
        etf = float((gram / gram_norm - ideal).norm())
    else:
        etf = math.nan

    nc3 = equinorm_w = equiangle_w = maxangle_w = None
    if classifier_weight is not None:
        w = classifier_weight.detach().double()
        equinorm_w, equiangle_w, maxangle_w = _norm_angle(w)
        w_norm, m_norm = w.norm(), centered.norm()
        nc3 = float((w / w_norm - centered / m_norm).pow(2).sum()) if w_norm > 0 and m_norm > 0 else math.nan
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
    require_features_head(model)
    max_examples = check_max_examples(max_examples)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    x, y = on_model_device(model, *as_pair(data))
    index = subsample(len(x), max_examples, seed)
    if index is not None:
        x, y = x[index], y[index]
    h, logits = features_and_logits(model, x, batch_size)
    affine = affine_head(model, h, logits)
    weight, bias = affine if affine is not None else (None, None)
    result = neural_collapse_metrics(
        h, y, weight, logits, classifier_bias=bias, num_classes=num_classes or logits.shape[1]
    )
    result.seconds = time.perf_counter() - start
    return result
