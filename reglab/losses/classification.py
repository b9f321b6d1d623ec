"""Classification losses: cross-entropy, label smoothing and the losses that replace or extend them.

Every loss here is called as ``loss(logits, targets)`` with ``logits`` of shape
(n, K) and ``targets`` either int class indices of shape (n,) or, where the
class says so (``soft_targets = True``), probabilities of shape (n, K). For
probability targets q the loss is the expectation sum_k q_k * loss(z, k) of the
hard-label loss unless the docstring says otherwise, which for a loss that is
linear in the one-hot target (cross-entropy, PolyLoss, the sparsemax loss) is
the same as substituting q for the one-hot vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from reglab.core import ConfigError
from reglab.core.validation import check_bool, check_float
from reglab.losses.base import REGISTRY, Loss, check_class_targets, check_logits, expected_value, reduce
from reglab.losses.fused import row_loss, target_column_add

# -- shared helpers ------------------------------------------------------------


def _class_weights(name: str, weight: Sequence[float] | Tensor | None) -> Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float64)  # kept exact; cast to the logits' dtype at use
    if w.ndim != 1 or not torch.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"{name} must be a 1-D sequence of finite non-negative class weights, got {weight}")
    return w


def log1m_softmax(logits: Tensor) -> Tensor:
    """log(1 - softmax(z)_k) for every class k, accurate and with finite gradients even when p_k rounds to 1.

    Every class but the arg-max has p_k <= 1/2, where log(-expm1(log p_k)) is
    accurate; for the arg-max, log(1 - p) is computed as
    logsumexp_{j != k} z_j - logsumexp_j z_j. Needs K >= 2.
    """
    logp = F.log_softmax(logits, dim=1)
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.argmax(dim=1, keepdim=True), True)
    rest = torch.log(-torch.expm1(torch.where(is_top, torch.full_like(logp, -1.0), logp)))
    others = logits.masked_fill(is_top, float("-inf"))
    top = torch.logsumexp(others, dim=1, keepdim=True) - torch.logsumexp(logits, dim=1, keepdim=True)
    return torch.where(is_top, top.expand_as(logits), rest)


def target_log_probs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_y, log(1 - p_y))`` per example for class-index targets, both accurate and with finite gradients.

    log(1 - p_y) is log(-expm1(log p_y)) where p_y <= 1/2 and
    logsumexp_{j != y} z_j - logsumexp_j z_j above, as in :func:`log1m_softmax`,
    but only for the target column: the cost of about two cross-entropies.
    """
    lse = torch.logsumexp(logits, dim=1)
    z_y = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    logp_y = z_y - lse
    half = -math.log(2.0)
    low = torch.log(-torch.expm1(logp_y.clamp_max(half)))
    others = logits.scatter(1, targets.unsqueeze(1), float("-inf"))
    high = torch.logsumexp(others, dim=1) - lse
    return logp_y, torch.where(logp_y <= half, low, high)


def _one_minus_p(ce: Tensor, gamma: float) -> Tensor:
    """1 - p_y from the cross-entropy -log p_y, as -expm1(-CE) (no cancellation in the subtraction).

    Its error is that of the CE, about one ulp of 1 in absolute terms, so it is accurate to about
    eps / (1 - p_y) relative. Where p_y rounds to 1 it is 0; for an exponent gamma < 1, whose power
    has an infinite slope at 0, it is floored at the dtype's smallest normal number, so the
    gradient stays finite (and is zero there, as the clamp's).
    """
    one_m = -torch.expm1(-ce)
    return one_m.clamp_min(torch.finfo(ce.dtype).tiny) if gamma < 1.0 else one_m


#: just above log(smallest normal number): exp of anything at or above stays a normal number
_LOG_TINY = {dtype: math.log(torch.finfo(dtype).tiny) + 0.01 for dtype in (torch.float32, torch.float64)}


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) without the linear cut-off of ``F.softplus`` (exact and stable)."""
    return torch.logaddexp(torch.zeros_like(x), x)


def soft_cross_entropy(logits: Tensor, probs: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-example cross-entropy against target distributions: -sum_k w_k q_k log softmax(z)_k."""
    logp = F.log_softmax(logits, dim=-1)
    if weight is not None:
        logp = logp * weight
    return -(probs * logp).sum(dim=-1)


@REGISTRY.register("cross_entropy")
class CrossEntropy(Loss):
    """Cross-entropy of softmax logits, with optional class weights and soft targets.

    .. math:: \\ell(z, y) = -w_y \\log \\mathrm{softmax}(z)_y

    With probability targets q (from Mixup or CutMix) it is
    -sum_k w_k q_k log softmax(z)_k. With class weights and ``reduction="mean"``
    the mean is over examples (not normalized by the weights, unlike
    ``torch.nn.CrossEntropyLoss``), so the loss scale does not depend on which
    classes are in the batch.

    Example:
        >>> loss = CrossEntropy()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        weight: per-class weights w (length K), or None.
        reduction: "mean", "sum" or "none".
    """

    soft_targets = True

    def __init__(self, weight: Sequence[float] | Tensor | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float64)  # kept exact; cast to the logits' dtype at use
            if weight.ndim != 1 or (weight < 0).any():
                raise ConfigError(f"weight must be a 1-D sequence of non-negative class weights, got {weight}")
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_class_targets(logits, targets, "cross_entropy")
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        if weight is not None and weight.numel() != logits.shape[1]:
            raise ConfigError(f"weight has {weight.numel()} entries but the logits have {logits.shape[1]} classes")
        if targets.is_floating_point():
            return reduce(soft_cross_entropy(logits, targets.to(logits.dtype), weight), self.reduction)
        if weight is None:  # torch's fused kernel computes exactly this
            return F.cross_entropy(logits, targets, reduction=self.reduction)
        return reduce(F.cross_entropy(logits, targets, weight=weight, reduction="none"), self.reduction)


@REGISTRY.register("label_smoothing")
class LabelSmoothingCrossEntropy(Loss):
    """Cross-entropy against the smoothed one-hot target (1 - eps) * onehot(y) + eps / K.

    .. math:: \\ell(z, y) = -\\sum_k \\big[(1-\\varepsilon)\\,\\mathbb{1}[k=y] + \\varepsilon/K\\big]
              \\log \\mathrm{softmax}(z)_k

    From "Rethinking the Inception Architecture for Computer Vision" (Szegedy et
    al., 2016); "When Does Label Smoothing Help?" (Müller et al., 2019) shows it
    improves calibration. Matches ``torch.nn.CrossEntropyLoss(label_smoothing=eps)``.
    Soft targets q are smoothed the same way: (1 - eps) q + eps / K.
    Usual range: eps in 0.05 to 0.2.

    Args:
        smoothing: eps in [0, 1).
        reduction: "mean", "sum" or "none".
    """

    soft_targets = True

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean"):
        super().__init__(reduction)
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.smoothing = float(smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_class_targets(logits, targets, "label_smoothing")
        if not targets.is_floating_point():  # torch's fused kernel computes exactly this for class indices
            return F.cross_entropy(logits, targets, label_smoothing=self.smoothing, reduction=self.reduction)
        smoothed = (1.0 - self.smoothing) * targets.to(logits.dtype) + self.smoothing / logits.shape[1]
        return reduce(soft_cross_entropy(logits, smoothed), self.reduction)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing:g}, {super().extra_repr()}"


# -- losses on the softmax probabilities ----------------------------------------


@REGISTRY.register("poly1")
class PolyLoss(Loss):
    """Poly-1 loss: cross-entropy plus epsilon * (1 - p_y), the first polynomial term re-weighted.

    .. math:: \\ell(z, y) = -\\log p_y + \\varepsilon\\,(1 - p_y), \\quad p = \\mathrm{softmax}(z)

    Writing CE = sum_{j>=1} (1 - p_y)^j / j, Poly-1 changes the coefficient of
    the leading term from 1 to 1 + epsilon. With probability targets q it is
    CE(z, q) + epsilon * (1 - sum_k q_k p_k), as in the paper's reference code.

    From "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions" (Leng et al., 2022); formula and soft-target form checked against
    the paper's reference snippet (``pt = sum(labels * softmax(logits))``,
    ``CE + epsilon * (1 - pt)``). Usual range: epsilon in {-1, ..., 2}; 1 or 2
    for a first try; epsilon = -1 removes the leading term; epsilon = 0 is CE.

    Example:
        >>> loss = PolyLoss(epsilon=1.0)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        epsilon: coefficient of (1 - p_y), >= -1 (the paper's constraint).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: epsilon < -1, or a bad reduction.
        ShapeError: logits are not (n, K) or targets do not match them.
    """

    soft_targets = True

    def __init__(self, epsilon: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.epsilon = check_float("epsilon", epsilon, -1.0)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "poly1", min_classes=1)
        if not targets.is_floating_point():
            logp_y = -F.cross_entropy(logits, targets, reduction="none")
            return reduce(-logp_y - self.epsilon * torch.expm1(logp_y), self.reduction)
        logp = F.log_softmax(logits, dim=1)
        per_class = -logp - self.epsilon * torch.expm1(logp)  # -log p_k + eps * (1 - p_k)
        return reduce(expected_value(per_class, targets), self.reduction)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon:g}, {super().extra_repr()}"


@REGISTRY.register("focal")
class FocalLoss(Loss):
    """Focal loss: cross-entropy down-weighted by (1 - p_y)^gamma so easy examples count less.

    .. math:: \\ell(z, y) = -\\alpha_y\\,(1 - p_y)^{\\gamma} \\log p_y

    From "Focal Loss for Dense Object Detection" (Lin et al., 2017), in its
    multi-class softmax form with optional per-class weights alpha (the paper's
    alpha_t). For class-index targets the loss is computed from torch's fused
    cross-entropy CE = -log p_y alone, with 1 - p_y = -expm1(-CE) (about the
    cost of one cross-entropy); values and gradients stay finite when p_y
    rounds to 1, also for 0 < gamma < 1 (see :func:`_one_minus_p`). With
    probability targets (1 - p_k)^gamma is exp(gamma * log(1 - p_k)) with an
    accurate log(1 - p_k) (:func:`log1m_softmax`). With probability targets q the loss is
    sum_k q_k alpha_k (1 - p_k)^gamma (-log p_k). gamma = 0 without alpha is CE.
    Usual range: gamma in [0.5, 5], 2 the paper's default; alpha from inverse
    class frequencies or left out. "Calibrating Deep Neural Networks using Focal
    Loss" (Mukhoti et al., 2020) uses gamma 3 to 5 for calibration.

    Example:
        >>> loss = FocalLoss(gamma=2.0)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        gamma: focusing exponent, >= 0.
        alpha: per-class weights (length K, non-negative), or None.
        reduction: "mean" (over examples, not normalized by alpha), "sum" or "none".

    Raises:
        ConfigError: gamma < 0, alpha not a 1-D non-negative sequence, alpha of the
            wrong length for the logits, or a bad reduction.
        ShapeError: logits are not (n, K) with K >= 2 or targets do not match them.
    """

    soft_targets = True

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | Tensor | None = None, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma = check_float("gamma", gamma, 0.0)
        self.register_buffer("alpha", _class_weights("alpha", alpha))

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "focal")
        if self.alpha is not None and self.alpha.numel() != logits.shape[1]:
            raise ConfigError(f"alpha has {self.alpha.numel()} entries but the logits have {logits.shape[1]} classes")
        alpha = None if self.alpha is None else self.alpha.to(logits.dtype)
        if not targets.is_floating_point():
            ce = F.cross_entropy(logits, targets, reduction="none")  # -log p_y, torch's fused kernel
            values = ce if self.gamma == 0.0 else ce * _one_minus_p(ce, self.gamma).pow(self.gamma)
            return reduce(values if alpha is None else values * alpha[targets], self.reduction)
        per_class = -F.log_softmax(logits, dim=1)
        if self.gamma != 0.0:
            per_class = per_class * torch.exp(self.gamma * log1m_softmax(logits))
        if alpha is not None:
            per_class = per_class * alpha
        return reduce(expected_value(per_class, targets), self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, alpha={'None' if self.alpha is None else 'per-class'}, {super().extra_repr()}"


@REGISTRY.register("encouraging")
class EncouragingLoss(Loss):
    """Encouraging loss: cross-entropy plus a log(1 - p_y) bonus that rewards well-classified examples.

    .. math:: \\ell(z, y) = -\\log p_y + b(p_y), \\qquad
              b(p) = \\log(1 - p) \\text{ for } p \\le p_{LE}, \\quad
              b(p) = \\frac{p - p_{LE}}{p_{LE} - 1} + \\log(1 - p_{LE}) \\text{ for } p > p_{LE}

    The bonus keeps the gradient from vanishing as p_y -> 1. The conservative
    form (``log_end`` = p_LE < 1) continues log(1 - p) by its tangent line at
    p_LE, so the bonus stays bounded (>= log(1 - p_LE) - 1); ``log_end = 1``
    is the plain bonus, which the reference code floors at log(1e-5) (1 - p is
    clamped at 1e-5), as done here. For class-index targets everything comes
    from torch's fused cross-entropy CE = -log p_y, with 1 - p_y = -expm1(-CE)
    (accurate to about eps / (1 - p_y) relative, so to 0.6% at the 1e-5 floor
    in float32). The loss can be negative. With probability
    targets q the bonus is applied per class: sum_k q_k (-log p_k + b(p_k)), as
    in the authors' label-smoothed variant.

    From "Well-classified Examples are Underestimated in Classification with
    Deep Neural Networks" (Zhao et al., 2022); form, tangent-line cut-off and
    the 1e-5 floor checked against the authors' reference code
    (lancopku/well-classified-examples-are-underestimated, EncouragingLoss.py).
    Usual range: log_end in [0.5, 1]; 0.75 (reference default) for
    high-accuracy tasks, 0.5 for low-accuracy ones.

    Example:
        >>> loss = EncouragingLoss(log_end=0.75)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        log_end: p_LE in (0, 1], where the log curve of the bonus ends.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: log_end outside (0, 1], or a bad reduction.
        ShapeError: logits are not (n, K) with K >= 2 or targets do not match them.
    """

    soft_targets = True
    bonus_floor = math.log(1e-5)

    def __init__(self, log_end: float = 0.75, reduction: str = "mean"):
        super().__init__(reduction)
        self.log_end = check_float("log_end", log_end, 0.0, 1.0, low_open=True)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "encouraging")
        if not targets.is_floating_point():  # everything from -log p_y, torch's fused kernel
            ce = F.cross_entropy(logits, targets, reduction="none")
            bonus = torch.log((-torch.expm1(-ce)).clamp_min(1e-5))  # log max(1 - p_y, 1e-5), as the reference
            if self.log_end < 1.0:
                le = self.log_end
                p = torch.exp(-ce)
                bonus = torch.where(p > le, (p - le) / (le - 1.0) + math.log1p(-le), bonus)
            return reduce(ce + bonus, self.reduction)
        logp, log1m_p = F.log_softmax(logits, dim=1), log1m_softmax(logits)
        bonus = log1m_p.clamp_min(self.bonus_floor)
        if self.log_end < 1.0:
            le = self.log_end
            p = logp.exp()
            line = (p - le) / (le - 1.0) + math.log1p(-le)
            bonus = torch.where(p > le, line, bonus)
        return reduce(expected_value(bonus - logp, targets), self.reduction)

    def extra_repr(self) -> str:
        return f"log_end={self.log_end:g}, {super().extra_repr()}"


@REGISTRY.register("squentropy")
class Squentropy(Loss):
    """Squentropy: cross-entropy plus the average squared logit of the incorrect classes.

    .. math:: \\ell(z, y) = -\\log \\mathrm{softmax}(z)_y + \\frac{1}{K-1} \\sum_{j \\ne y} z_j^2

    No hyperparameters; the paper trains it with the same optimizer settings
    as CE. With probability targets q it is the expectation over q:
    CE(z, q) + (1/(K-1)) sum_j (1 - q_j) z_j^2.

    From "Cut your Losses with Squentropy" (Hui, Belkin & Wright, 2023);
    formula from the paper's abstract and definition ("the sum of the
    cross-entropy loss and the average square loss over the incorrect
    classes"); the normalisation 1/(K-1) is that average.

    Example:
        >>> loss = Squentropy()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a bad reduction.
        ShapeError: logits are not (n, K) with K >= 2 or targets do not match them.
    """

    soft_targets = True

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "squentropy")
        k = logits.shape[1]
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        q = targets.to(logits.dtype)
        square = (logits.square() * (1.0 - q)).sum(dim=1) / (k - 1)
        return reduce(soft_cross_entropy(logits, q) + square, self.reduction)

    # class-index targets: CE + |z with the target column zeroed|^2 / (K - 1) (masked rather than minus z_y^2, which
    # cancels when z_y dominates); gradient softmax(z) - e_y + 2 z_masked / (K - 1)
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        square = logits.square().scatter(1, targets.unsqueeze(1), 0.0).sum(dim=1) / (logits.shape[1] - 1)
        return F.cross_entropy(logits, targets, reduction="none") + square

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        logp = F.log_softmax(logits, dim=1)
        masked = logits.scatter(1, targets.unsqueeze(1), 0.0)
        square = torch.linalg.vector_norm(masked, dim=1).square() / (logits.shape[1] - 1)
        return square - logp.gather(1, targets.unsqueeze(1)).squeeze(1), (logp,)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        (logp,) = saved
        col = targets.unsqueeze(1)
        out = logp.exp().add_(logits, alpha=2.0 / (logits.shape[1] - 1)).mul_(grad.unsqueeze(1))
        return out.scatter_(1, col, (grad.unsqueeze(1) * torch.expm1(logp.gather(1, col))))  # g (p_y - 1)


@REGISTRY.register("comp_sum")
class CompSumLoss(Loss):
    """Comp-sum loss family with parameter tau: sum-exponential (0), CE (1), GCE-like (1..2), MAE (2).

    .. math:: \\ell_\\tau(z, y) = \\Phi_\\tau\\Big(\\sum_{j \\ne y} e^{z_j - z_y}\\Big), \\quad
              \\Phi_1(u) = \\log(1 + u), \\quad
              \\Phi_\\tau(u) = \\frac{(1 + u)^{1-\\tau} - 1}{1 - \\tau} \\ (\\tau \\ne 1)

    Since 1 + u = 1 / p_y, the loss is (p_y^(tau-1) - 1) / (1 - tau): tau = 0 is
    the sum-exponential loss sum_{j != y} exp(z_j - z_y), tau = 1 is exactly CE,
    tau in (1, 2) is generalized cross-entropy with q = tau - 1, tau = 2 is
    1 - p_y (mean absolute error on the probabilities). It is computed as
    expm1((1 - tau) * CE) / (1 - tau), which is exact for every tau. For
    tau >= 1 the loss is bounded by 1 / (tau - 1) and finite for any logits;
    for tau < 1 it grows like exp((1 - tau) * CE) and overflows to +inf once
    the CE exceeds about log(float max) / (1 - tau) (88 / (1 - tau) in
    float32), which a trainer reports as divergence. With probability targets
    q the loss is sum_k q_k loss(z, k).

    From "Cross-Entropy Loss Functions: Theoretical Analysis and Applications"
    (Mao, Mohri & Zhong, 2023). This Phi_tau gives the members the paper names
    (CE/logistic, generalized CE, MAE, sum-exponential); the smooth adversarial
    variant is not implemented here.
    Usual range: tau in [0, 2]; the paper sweeps {0, 0.5, 1, 1.5, 2}.

    Example:
        >>> loss = CompSumLoss(tau=1.5)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        tau: tau >= 0.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: tau < 0, or a bad reduction.
        ShapeError: logits are not (n, K) with K >= 2 or targets do not match them.
    """

    soft_targets = True

    def __init__(self, tau: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.tau = check_float("tau", tau, 0.0)

    def _phi_of_ce(self, ce: Tensor) -> Tensor:
        if self.tau == 1.0:
            return ce
        return torch.expm1((1.0 - self.tau) * ce) / (1.0 - self.tau)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "comp_sum")
        if not targets.is_floating_point():
            return reduce(self._phi_of_ce(F.cross_entropy(logits, targets, reduction="none")), self.reduction)
        nll = -F.log_softmax(logits, dim=1)
        q = targets.to(logits.dtype)
        # zero the classes with q_k = 0 before Phi, so that an overflow there cannot give 0 * inf
        values = (q * self._phi_of_ce(torch.where(q > 0, nll, torch.zeros_like(nll)))).sum(dim=1)
        return reduce(values, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, {super().extra_repr()}"


@REGISTRY.register("z_loss")
class SphericalZLoss(Loss):
    """Z-loss: softplus of the z-normalized target logit; invariant to logit shift and positive scaling.

    .. math:: \\mu = \\tfrac1K \\sum_k o_k, \\quad \\sigma^2 = \\tfrac1K \\sum_k (o_k - \\mu)^2, \\quad
              z_k = (o_k - \\mu) / \\sigma, \\quad
              \\ell(o, y) = \\tfrac1a \\log\\big(1 + e^{a (b - z_y)}\\big)

    sigma is the population standard deviation (divisor K). The loss depends on
    the logits only through (o_y, sum_k o_k, sum_k o_k^2), which puts it in the
    spherical family. The largest reachable z_y is sqrt(K - 1) (the target
    logit alone above K - 1 equal ones), so b should be below that; with K = 2
    every z is +-1 and the gradient is zero, so K >= 3 is required. sigma is
    floored at sqrt of the dtype's smallest normal number only to keep
    constant logits finite. With probability targets q the loss is
    sum_k q_k loss(o, k). Not the "z-loss" log^2(sum exp) auxiliary term of
    PaLM / ST-MoE.

    From "The Z-loss: a shift and scale invariant classification loss
    belonging to the Spherical Family" (de Brébisson & Vincent, 2016); the
    form (1/a) softplus(a (b - z_y)) with population mean and std, checked
    against summaries of the paper's definition. a (sharpness) and b (target
    location) are tuned per task in the paper; the defaults here are ours.
    Usual range: a in [0.1, 10], b in [0, sqrt(K - 1)).

    Example:
        >>> loss = SphericalZLoss(a=1.0, b=1.0)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        a: softplus sharpness, > 0.
        b: location of the softplus knee on the z scale (any finite number).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a <= 0, b not finite, or a bad reduction.
        ShapeError: logits are not (n, K) with K >= 3 or targets do not match them.
    """

    soft_targets = True

    def __init__(self, a: float = 1.0, b: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.a = check_float("a", a, 0.0, low_open=True)
        self.b = check_float("b", b)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "z_loss", min_classes=3)
        if not targets.is_floating_point():  # only the target column enters the loss
            return reduce(row_loss(self, logits, targets), self.reduction)
        centered, _, sigma = self._moments(logits)
        z = centered / sigma.unsqueeze(1)
        per_class = _softplus(self.a * (self.b - z)) / self.a
        return reduce(expected_value(per_class, targets), self.reduction)

    # class-index targets: only z_y = (o_y - mu) / sigma enters; d z_y / d o_k = (delta_ky - 1/K) / sigma
    # - z_y (o_k - mu) / (K sigma^2) (the last term only where sigma is above its floor)
    def _moments(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(o - mu, sigma, sigma floored at sqrt(tiny)); sigma = ||o - mu|| / sqrt(K), one fused reduction."""
        centered = logits - logits.mean(dim=1, keepdim=True)
        sigma = torch.linalg.vector_norm(centered, dim=1) / math.sqrt(logits.shape[1])
        return centered, sigma, sigma.clamp_min(math.sqrt(torch.finfo(logits.dtype).tiny))

    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        centered, _, sigma = self._moments(logits)
        z = centered.gather(1, targets.unsqueeze(1)).squeeze(1) / sigma
        return _softplus(self.a * (self.b - z)) / self.a

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        centered, raw_sigma, sigma = self._moments(logits)
        z = centered.gather(1, targets.unsqueeze(1)).squeeze(1) / sigma
        return _softplus(self.a * (self.b - z)) / self.a, (centered, sigma, z, raw_sigma == sigma)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        centered, sigma, z, free = saved
        k = logits.shape[1]
        h = -grad * torch.sigmoid(self.a * (self.b - z))  # upstream gradient times d loss / d z_y
        scale = torch.where(free, -h * z / (k * sigma.square()), torch.zeros_like(h))
        out = (centered * scale.unsqueeze(1)).sub_((h / (k * sigma)).unsqueeze(1))
        return target_column_add(out, targets, h / sigma)

    def extra_repr(self) -> str:
        return f"a={self.a:g}, b={self.b:g}, {super().extra_repr()}"


@REGISTRY.register("circle")
class CircleLoss(Loss):
    """Circle loss (class-level form): softmax CE on cosine similarities re-weighted by their distance to optimum.

    .. math:: \\alpha_y = [1 + m - s_y]_+, \\ \\alpha_j = [s_j + m]_+, \\quad
              \\ell(s, y) = \\log\\Big[1 + \\sum_{j \\ne y} e^{\\gamma \\alpha_j (s_j - m)}\\,
              e^{-\\gamma \\alpha_y (s_y - (1 - m))}\\Big]

    i.e. cross-entropy on the logits gamma * alpha_k * (s_k - delta_k) with
    delta_y = 1 - m (the positive margin) and delta_j = m (the negatives). The
    input s must be cosine similarities between normalized features and
    normalized class weights, s = <x/|x|, W_k/|W_k|>, in [-1, 1]; as in the
    reference implementations the input is clamped to [-1, 1], so raw logits
    outside that range silently lose their gradient. The weights alpha are
    treated as constants in back-propagation (``detach_weights=True``, as in
    the reference implementations); ``detach_weights=False`` differentiates
    through them. Int class targets only. With the detached weights the
    logits gamma alpha_k (s_k - delta_k) are formed in two elementwise passes
    and the backward is written in closed form (:mod:`reglab.losses.fused`);
    there, softmax probabilities below the dtype's smallest normal number
    (which gamma of hundreds produces) are taken as about that number, since
    exp is far slower on subnormal results: a gradient error below 1e-38 in
    float32.

    From "Circle Loss: A Unified Perspective of Pair Similarity Optimization"
    (Sun et al., 2020); class-level form, O_p = 1 + m, O_n = -m,
    Delta_p = 1 - m, Delta_n = m and the detached weights checked against
    public class-level implementations (FaceX-Zoo's CircleLoss head). Usual
    range: m in [0.15, 0.4] (0.25 typical), gamma in [32, 256] (256 for face
    recognition, 64-128 for retrieval).

    Example:
        >>> s = F.normalize(torch.randn(8, 16), dim=1) @ F.normalize(torch.randn(10, 16), dim=1).T
        >>> loss = CircleLoss(gamma=64.0, margin=0.25)(s, torch.randint(0, 10, (8,)))

    Args:
        gamma: scale, > 0.
        margin: relaxation m in [0, 1].
        detach_weights: treat alpha as constants in the gradient (default True).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: gamma <= 0, margin outside [0, 1], or a bad reduction.
        ShapeError: s is not (n, K) with K >= 2, or targets are not int class indices.
    """

    soft_targets = False

    def __init__(
        self, gamma: float = 256.0, margin: float = 0.25, detach_weights: bool = True, reduction: str = "mean"
    ):
        super().__init__(reduction)
        self.gamma = check_float("gamma", gamma, 0.0, low_open=True)
        self.margin = check_float("margin", margin, 0.0, 1.0)
        self.detach_weights = check_bool("detach_weights", detach_weights)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "circle", soft=False)
        if self.detach_weights:
            return reduce(row_loss(self, logits, targets), self.reduction)
        return reduce(self._reference(logits, targets), self.reduction)

    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        s = logits.clamp(-1.0, 1.0)
        m = self.margin
        positive = torch.zeros_like(s, dtype=torch.bool).scatter_(1, targets.unsqueeze(1), True)
        ref = s.detach() if self.detach_weights else s
        alpha = torch.where(positive, 1.0 + m - ref, ref + m).clamp_min(0)
        delta = torch.where(positive, torch.full_like(s, 1.0 - m), torch.full_like(s, m))
        return F.cross_entropy(self.gamma * alpha * (s - delta), targets, reduction="none")

    # detached weights, fused: for a negative class gamma alpha_j (s_j - m) = gamma ([s_j + m]_+ (s_j - m))
    # = gamma (u_j^2 - m^2) with u = clamp(z, -m, 1), and the row constant -gamma m^2 drops out of the softmax; the
    # gradient is gamma alpha_k (p_k - delta_ky) where -1 < z_k < 1 (torch's clamp passes no gradient at its
    # bounds), with alpha_j = u_j + m (zero below -m) for the negatives and alpha_y = [1 + m - s_y]_+
    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        g, m = self.gamma, self.margin
        col = targets.unsqueeze(1)
        u = logits.clamp(-m, 1.0)
        s_y = logits.gather(1, col).clamp(-1.0, 1.0)
        alpha_y = (1.0 + m - s_y).clamp_min(0.0)
        target = g * alpha_y * (s_y - (1.0 - m)) + g * m * m
        shifted = u.square_().mul_(g).scatter_(1, col, target)  # in place: one (n, K) buffer
        if logits.dtype in _LOG_TINY:
            # raise the logits more than -log(tiny) below the row's max to that level: their exp(z - max) < tiny
            # vanishes beside the max's 1 in the softmax sum either way (so the values are the same), and exp is
            # ~10x slower on subnormal results; the target column keeps its value
            floor = shifted.amax(dim=1, keepdim=True) + _LOG_TINY[logits.dtype]
            shifted.clamp_min_(floor).scatter_(1, col, target)
        logp = F.log_softmax(shifted, dim=1)
        return -logp.gather(1, col).squeeze(1), (logp, alpha_y)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        logp, alpha_y = saved
        m, col = self.margin, targets.unsqueeze(1)
        # gamma makes the logits span hundreds, and exp is ~10x slower where its result is subnormal: the
        # probabilities below the smallest normal number (~1e-38 in float32) are computed as about that number
        out = logp.clamp_min(_LOG_TINY[logp.dtype]).exp_() if logp.dtype in _LOG_TINY else logp.exp()
        p_y = out.gather(1, col)
        # alpha_j times the clamp's gradient, [z_j + m]_+ [z_j < 1], in place on one buffer: threshold(-z, -1, m)
        # is -z where z < 1 and m elsewhere
        weight = torch.threshold_(logits.neg(), -1.0, m).neg_().add_(m).clamp_min_(0.0)
        out.mul_(weight).mul_((self.gamma * grad).unsqueeze(1))
        inside = (logits.gather(1, col).abs() < 1.0).to(out.dtype)
        return out.scatter_(1, col, self.gamma * grad.unsqueeze(1) * alpha_y * inside * (p_y - 1.0))

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma:g}, margin={self.margin:g}, detach_weights={self.detach_weights}, "
            f"{super().extra_repr()}"
        )
