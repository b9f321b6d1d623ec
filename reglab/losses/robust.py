"""Losses robust to label noise: normalized, symmetric, bounded and per-example-regularized losses.

Every loss here is called as ``loss(logits, targets)`` (ELR also takes
``indices=``) with class-index targets of shape ``(n,)`` or, where the loss is
defined for them, target distributions of shape ``(n, K)``. Each docstring
gives the formula, the paper, and where the code was checked against the
authors' reference implementation (and where it departs from it).

Notation: ``z`` logits, ``p = softmax(z)``, ``q`` the target distribution
(``onehot(y)`` for class indices), ``K`` the number of classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_bool, check_float
from reglab.losses.base import REGISTRY, Loss, PerExampleState, check_logits, reduce, target_probs
from reglab.losses.classification import soft_cross_entropy
from reglab.losses.fused import plain_autograd_needed, row_loss, target_column_add


def _hard_only(targets: Tensor, owner: str) -> None:
    if targets.is_floating_point():
        raise ShapeError(f"{owner}: needs class-index targets of shape (n,), got probabilities {tuple(targets.shape)}")


# --- normalized and symmetric losses (Ma et al. 2020; Wang et al. 2019) ----------------------------


def _nce(logits: Tensor, q: Tensor) -> Tensor:
    logp = F.log_softmax(logits, dim=1)
    return (q * logp).sum(1) / logp.sum(1)


def _rce(logits: Tensor, q: Tensor, log_zero: float) -> Tensor:
    p = F.softmax(logits, dim=1)
    log_q = torch.where(q > 0, q.clamp_min(torch.finfo(q.dtype).tiny).log(), torch.full_like(q, log_zero))
    return -(p * log_q.clamp_min(log_zero)).sum(1)


def _mae(logits: Tensor, targets: Tensor) -> Tensor:
    if targets.is_floating_point():
        return (F.softmax(logits, dim=1) - targets.to(logits.dtype)).abs().sum(1)
    return _passive_of_ce(_ce(logits, targets), "mae", -1.0)  # 2 (1 - p_y)


def _nfl(logits: Tensor, q: Tensor, gamma: float) -> Tensor:
    logp = F.log_softmax(logits, dim=1)
    # 1 - p computed as -expm1(log p) (no cancellation); floored so that (1 - p)^gamma has a finite gradient
    one_minus_p = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)
    focal = -one_minus_p.pow(gamma) * logp
    return (q * focal).sum(1) / focal.sum(1)


def _ce(logits: Tensor, targets: Tensor) -> Tensor:
    """-log p_y per example from torch's fused cross-entropy kernel (class-index targets)."""
    return F.cross_entropy(logits, targets, reduction="none")


def _passive_of_ce(ce: Tensor, passive: str, log_zero: float) -> Tensor:
    """RCE = -A (1 - p_y) or MAE = 2 (1 - p_y) from CE = -log p_y, with 1 - p_y = -expm1(-CE)."""
    one_minus_p = -torch.expm1(-ce)
    return -log_zero * one_minus_p if passive == "rce" else 2.0 * one_minus_p


class _NCEFused:
    """alpha * NCE + beta * passive(p_y) for class-index targets, with the closed-form gradient.

    With u = log p_y and S = sum_k log p_k, NCE = u / S and
    d NCE / d z_j = p_j (K u / S^2 - 1 / S) + delta_jy / S - u / S^2; a term
    f(u) adds f'(u) (delta_jy - p_j).
    """

    def __init__(self, alpha: float, beta: float, passive: str | None, log_zero: float):
        self.alpha, self.beta, self.passive, self.log_zero = alpha, beta, passive, log_zero

    def _passive(self, ce: Tensor) -> Tensor:
        return torch.zeros_like(ce) if self.passive is None else _passive_of_ce(ce, self.passive, self.log_zero)

    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        logp = F.log_softmax(logits, dim=1)
        u = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        return self.alpha * u / logp.sum(1) + self.beta * self._passive(-u)

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        logp = F.log_softmax(logits, dim=1)
        u = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        total = logp.sum(1)
        return self.alpha * u / total + self.beta * self._passive(-u), (logp, u, total)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        logp, u, total = saved
        k = logits.shape[1]
        a = self.alpha * grad
        # f'(u) of the passive term: RCE = -A (1 - e^u) -> A e^u; MAE = 2 (1 - e^u) -> -2 e^u
        slope = torch.zeros_like(u)
        if self.passive is not None:
            slope = (self.log_zero if self.passive == "rce" else -2.0) * u.exp()
        f = self.beta * grad * slope
        per_p = a * (k * u / total.square() - 1.0 / total) - f
        out = logp.exp().mul_(per_p.unsqueeze(1)).sub_((a * u / total.square()).unsqueeze(1))
        return target_column_add(out, targets, a / total + f)


@REGISTRY.register("nce")
class NormalizedCrossEntropy(Loss):
    """Normalized cross-entropy: the cross-entropy divided by its sum over all labels, bounded in [0, 1].

    .. math:: \\mathrm{NCE}(z, y) = \\frac{\\log p_y}{\\sum_{j=1}^K \\log p_j}

    In plain text: NCE = log p_y / sum_j log p_j.

    With a target distribution q the numerator is sum_k q_k log p_k. Since
    sum_y NCE(z, y) = 1 for every z, the loss is "symmetric" and hence robust
    to symmetric label noise, but used alone it underfits; the paper pairs it
    with a passive loss (:class:`ActivePassiveLoss`). Equals 1/K at uniform p.

    References: Ma et al., "Normalized Loss Functions for Deep Learning with
    Noisy Labels" (ICML 2020). Checked against the authors' code
    (github.com/HanxunH/Active-Passive-Losses, ``loss.py``,
    ``NormalizedCrossEntropy``): same formula, no clamping.

    Example:
        >>> loss = NormalizedCrossEntropy()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "nce")
        if not targets.is_floating_point():
            return reduce(row_loss(_NCEFused(1.0, 0.0, None, -1.0), logits, targets), self.reduction)
        return reduce(_nce(logits, targets.to(logits.dtype)), self.reduction)


@REGISTRY.register("rce")
class ReverseCrossEntropy(Loss):
    """Reverse cross-entropy -sum_k p_k log q_k with log 0 replaced by a constant A < 0.

    .. math:: \\mathrm{RCE}(z, q) = -\\sum_k p_k \\max(\\log q_k, A) \\;=\\; -A\\,(1 - p_y)
              \\text{ for } q = \\mathrm{onehot}(y)

    In plain text: RCE = -sum_k p_k max(log q_k, A), which is -A (1 - p_y) for a one-hot q.
    A bounded, symmetric ("passive") loss: for one-hot targets it is MAE up to
    the factor -A/2.

    References: Wang et al., "Symmetric Cross Entropy for Robust Learning with
    Noisy Labels" (ICCV 2019), which sets A = -4; Ma et al. (ICML 2020) use it
    as the passive part of APL. The authors' code
    (github.com/HanxunH/Active-Passive-Losses, ``loss.py``,
    ``ReverseCrossEntropy``) clamps the one-hot target to 1e-4 instead, i.e.
    A = ln(1e-4) ~ -9.21; pass ``log_zero=math.log(1e-4)`` to reproduce it.

    Args:
        log_zero: A, the value that replaces log 0; < 0. -4 in the paper.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: log_zero not < 0, or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def __init__(self, log_zero: float = -4.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.log_zero = check_float("log_zero", log_zero, high=0.0, high_open=True)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "rce")
        if not targets.is_floating_point():  # -A (1 - p_y)
            return reduce(_passive_of_ce(_ce(logits, targets), "rce", self.log_zero), self.reduction)
        return reduce(_rce(logits, targets.to(logits.dtype), self.log_zero), self.reduction)

    def extra_repr(self) -> str:
        return f"log_zero={self.log_zero:g}, {super().extra_repr()}"


@REGISTRY.register("mae")
class MAE(Loss):
    """Mean absolute error between the softmax and the target distribution: sum_k |p_k - q_k| = 2(1 - p_y).

    .. math:: \\mathrm{MAE}(z, q) = \\sum_k |p_k - q_k| = 2\\,(1 - p_y) \\text{ for } q = \\mathrm{onehot}(y)

    Bounded in [0, 2] and symmetric, hence robust to symmetric label noise
    (Ghosh et al., "Robust Loss Functions under Label Noise for Deep Neural
    Networks", AAAI 2017), but slow to fit on its own.

    References: Ma et al., "Normalized Loss Functions for Deep Learning with
    Noisy Labels" (ICML 2020) define MAE as above. Their code
    (github.com/HanxunH/Active-Passive-Losses, ``loss.py``,
    ``MeanAbsoluteError``) uses the "reduced" 1 - p_y, half of this value, so
    their ``beta`` for NCE+MAE corresponds to ``beta / 2`` here.

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "mae")
        return reduce(_mae(logits, targets), self.reduction)


@REGISTRY.register("gce")
class GeneralizedCrossEntropy(Loss):
    """Generalized cross-entropy (L_q loss) (1 - p_y^q) / q, between CE (q -> 0) and MAE/2 (q = 1).

    .. math:: \\mathrm{GCE}_q(z, y) = \\frac{1 - p_y^{\\,q}}{q}

    In plain text: GCE_q = (1 - p_y^q) / q.

    With a target distribution the loss is its expectation over labels,
    sum_k q_k (1 - p_k^q)/q. Computed as -expm1(q log p_y)/q, which is exact
    for small q (the limit q -> 0 is -log p_y) and has finite gradients when
    p_y underflows to 0. (The truncated L_q variant of the paper is not
    implemented.)

    References: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training
    Deep Neural Networks with Noisy Labels" (NeurIPS 2018). Checked against
    github.com/HanxunH/Active-Passive-Losses (``loss.py``,
    ``GeneralizedCrossEntropy``), which clamps p to [1e-7, 1] first.

    Args:
        q: exponent in (0, 1]; 0.7 in the paper, 0.5–0.9 usual.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: q outside (0, 1], or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def __init__(self, q: float = 0.7, reduction: str = "mean"):
        super().__init__(reduction)
        self.q = check_float("q", q, 0.0, 1.0, low_open=True)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "gce")
        if not targets.is_floating_point():  # -expm1(q log p_y) / q from the fused cross-entropy
            return reduce(-torch.expm1(-self.q * _ce(logits, targets)) / self.q, self.reduction)
        logp = F.log_softmax(logits, dim=1)
        per_class = -torch.expm1(self.q * logp) / self.q
        return reduce((target_probs(logits, targets) * per_class).sum(1), self.reduction)

    def extra_repr(self) -> str:
        return f"q={self.q:g}, {super().extra_repr()}"


@REGISTRY.register("sce")
class SymmetricCrossEntropy(Loss):
    """Symmetric cross-entropy alpha * CE + beta * RCE.

    .. math:: \\mathrm{SCE}(z, q) = \\alpha\\,\\mathrm{CE}(z, q) + \\beta\\,\\mathrm{RCE}_A(z, q)

    In plain text: SCE = alpha * (-log p_y) + beta * (-A (1 - p_y)), with RCE as in
    :class:`ReverseCrossEntropy` (log 0 := A).

    References: Wang et al., "Symmetric Cross Entropy for Robust Learning with
    Noisy Labels" (ICCV 2019): alpha = 0.1, beta = 1 (CIFAR-10), alpha = 6,
    beta = 0.1 (CIFAR-100), A = -4. Checked against ``SCELoss`` in
    github.com/HanxunH/Active-Passive-Losses (``loss.py``), whose RCE uses
    A = ln(1e-4) (see :class:`ReverseCrossEntropy`).

    Args:
        alpha: weight of CE, >= 0; 0.01–6 usual.
        beta: weight of RCE, >= 0; 0.1–1 usual. alpha and beta are not both 0.
        log_zero: A < 0.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a weight < 0, both 0, log_zero not < 0, or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, log_zero: float = -4.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.alpha = check_float("alpha", alpha, 0.0)
        self.beta = check_float("beta", beta, 0.0)
        if self.alpha == 0.0 and self.beta == 0.0:
            raise ConfigError("alpha and beta must not both be 0, got alpha=0, beta=0")
        self.log_zero = check_float("log_zero", log_zero, high=0.0, high_open=True)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "sce")
        if not targets.is_floating_point():  # alpha CE - beta A (1 - p_y), both from the fused cross-entropy
            ce = _ce(logits, targets)
            return reduce(self.alpha * ce + self.beta * _passive_of_ce(ce, "rce", self.log_zero), self.reduction)
        q = target_probs(logits, targets)
        values = self.alpha * soft_cross_entropy(logits, q) + self.beta * _rce(logits, q, self.log_zero)
        return reduce(values, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, log_zero={self.log_zero:g}, {super().extra_repr()}"


ACTIVE_LOSSES = ("nce", "ce", "nfl")
PASSIVE_LOSSES = ("rce", "mae")


@REGISTRY.register("apl")
class ActivePassiveLoss(Loss):
    """Active passive loss alpha * active + beta * passive (NCE+RCE by default).

    .. math:: \\mathrm{APL}(z, q) = \\alpha\\,L_{\\text{active}}(z, q) + \\beta\\,L_{\\text{passive}}(z, q)

    In plain text: APL = alpha * active(z, y) + beta * passive(z, y).
    Active (maximizes p_y): ``"nce"`` (:class:`NormalizedCrossEntropy`),
    ``"ce"`` (plain cross-entropy, not robust) or ``"nfl"``, the normalized
    focal loss FL_y / sum_j FL_j with FL_k = -(1 - p_k)^gamma log p_k.
    Passive (minimizes the other p_k): ``"rce"`` (-A(1 - p_y)) or ``"mae"``
    (2(1 - p_y)). With both parts normalized or symmetric the sum is robust to
    label noise and, unlike NCE or MAE alone, does not underfit.

    References: Ma et al., "Normalized Loss Functions for Deep Learning with
    Noisy Labels" (ICML 2020). Checked against the authors' code
    (github.com/HanxunH/Active-Passive-Losses, ``loss.py``: ``NCEandRCE``,
    ``NCEandMAE``, ``NFLandRCE``, ``NFLandMAE``). Departures: their RCE uses
    A = ln(1e-4) and their MAE is 1 - p_y (half of ours); their NFL takes no
    gradient through the normalizer or the focal factor, while this class
    differentiates the formula as written. Their configs use alpha = beta = 1
    (CIFAR-10) and alpha = 10, beta = 0.1 (CIFAR-100) for NCE+RCE.

    Args:
        active: ``"nce"``, ``"ce"`` or ``"nfl"``.
        passive: ``"rce"`` or ``"mae"``.
        alpha: weight of the active loss, >= 0; 1–10 usual.
        beta: weight of the passive loss, >= 0; 0.1–1 usual. alpha and beta are not both 0.
        gamma: focusing exponent of ``"nfl"``, >= 0; 0.5 in the paper.
        log_zero: A < 0 of ``"rce"``.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: an unknown part, a weight < 0 or both 0, gamma < 0, log_zero not < 0, or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def __init__(
        self,
        active: str = "nce",
        passive: str = "rce",
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.5,
        log_zero: float = -4.0,
        reduction: str = "mean",
    ):
        super().__init__(reduction)
        if active not in ACTIVE_LOSSES:
            raise ConfigError(f"active must be one of {ACTIVE_LOSSES}, got {active!r}")
        if passive not in PASSIVE_LOSSES:
            raise ConfigError(f"passive must be one of {PASSIVE_LOSSES}, got {passive!r}")
        self.active, self.passive = active, passive
        self.alpha = check_float("alpha", alpha, 0.0)
        self.beta = check_float("beta", beta, 0.0)
        if self.alpha == 0.0 and self.beta == 0.0:
            raise ConfigError("alpha and beta must not both be 0, got alpha=0, beta=0")
        self.gamma = check_float("gamma", gamma, 0.0)
        self.log_zero = check_float("log_zero", log_zero, high=0.0, high_open=True)

    def parts(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Unweighted per-example (active, passive) values."""
        check_logits(logits, targets, "apl")
        if not targets.is_floating_point() and self.active != "nfl":
            ce = _ce(logits, targets)
            active = ce if self.active == "ce" else row_loss(_NCEFused(1.0, 0.0, None, -1.0), logits, targets)
            return active, _passive_of_ce(ce, self.passive, self.log_zero)
        q = target_probs(logits, targets)
        if self.active == "nce":
            active = _nce(logits, q)
        elif self.active == "ce":
            active = soft_cross_entropy(logits, q)
        else:
            active = _nfl(logits, q, self.gamma)
        passive = _rce(logits, q, self.log_zero) if self.passive == "rce" else _mae(logits, targets)
        return active, passive

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if not targets.is_floating_point() and self.active == "nce":  # one fused pass for both parts
            check_logits(logits, targets, "apl")
            fused = _NCEFused(self.alpha, self.beta, self.passive, self.log_zero)
            return reduce(row_loss(fused, logits, targets), self.reduction)
        if not targets.is_floating_point() and self.active == "ce":
            check_logits(logits, targets, "apl")
            ce = _ce(logits, targets)
            return reduce(self.alpha * ce + self.beta * _passive_of_ce(ce, self.passive, self.log_zero), self.reduction)
        active, passive = self.parts(logits, targets)
        return reduce(self.alpha * active + self.beta * passive, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"active={self.active!r}, passive={self.passive!r}, alpha={self.alpha:g}, beta={self.beta:g}, "
            f"{super().extra_repr()}"
        )


# --- bootstrapping (Reed et al. 2015) ---------------------------------------------------------------

BOOTSTRAP_MODES = ("soft", "hard")


@REGISTRY.register("bootstrap")
class Bootstrapping(Loss):
    """Bootstrapping: cross-entropy against a mix of the given label and the model's own prediction.

    .. math:: \\ell_{\\text{soft}} = -\\sum_k \\big(\\beta q_k + (1-\\beta)\\, p_k\\big) \\log p_k, \\qquad
              \\ell_{\\text{hard}} = -\\sum_k \\big(\\beta q_k + (1-\\beta)\\, [k = \\arg\\max_j p_j]\\big) \\log p_k

    In plain text: soft = -sum_k (beta q_k + (1 - beta) p_k) log p_k; hard replaces p by
    onehot(argmax p). The soft variant is CE plus (1 - beta) times the entropy of p (a
    minimum-entropy regularizer): by default the gradient flows through the
    p in the target, as that equivalence needs. ``detach_prediction=True``
    treats (1 - beta) p as a fixed pseudo-label instead, as several public
    re-implementations do. The hard variant has no gradient through argmax.

    References: Reed et al., "Training Deep Neural Networks on Noisy Labels
    with Bootstrapping" (ICLR workshop 2015): beta = 0.95 (soft), 0.8 (hard).
    No reference code from the authors; formula from the paper.

    Args:
        beta: weight of the given label, in [0, 1]; default 0.95 (soft) or 0.8 (hard).
        mode: ``"soft"`` or ``"hard"``.
        detach_prediction: soft mode only: no gradient through the prediction in the target.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: beta outside [0, 1], unknown mode, or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or targets of the wrong shape.
    """

    soft_targets = True

    def __init__(
        self, beta: float | None = None, mode: str = "soft", detach_prediction: bool = False, reduction: str = "mean"
    ):
        super().__init__(reduction)
        if mode not in BOOTSTRAP_MODES:
            raise ConfigError(f"mode must be one of {BOOTSTRAP_MODES}, got {mode!r}")
        self.mode = mode
        self.beta = check_float("beta", (0.95 if mode == "soft" else 0.8) if beta is None else beta, 0.0, 1.0)
        self.detach_prediction = check_bool("detach_prediction", detach_prediction)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "bootstrap")
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        return reduce(self._values(logits, targets), self.reduction)

    def _values(self, logits: Tensor, targets: Tensor) -> Tensor:
        logp = F.log_softmax(logits, dim=1)
        if self.mode == "soft":
            own = logp.exp()
            if self.detach_prediction:
                own = own.detach()
        else:
            own = F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
        mixed = self.beta * target_probs(logits, targets) + (1.0 - self.beta) * own
        return -(mixed * logp).sum(1)

    # class-index targets: -beta log p_y - (1 - beta) sum_k own_k log p_k. Gradient: soft mode
    # beta (p - e_y) - (1 - beta) p (log p + H), H = -sum_k p_k log p_k (the entropy's gradient), or beta (p - e_y)
    # with detach_prediction (sum_k c_k log p_k has gradient sum_k c_k (e_k - p) = 0 for c = p held fixed);
    # hard mode p - beta e_y - (1 - beta) e_top.
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self._values(logits, targets)

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        logp = F.log_softmax(logits, dim=1)
        logp_y = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        if self.mode == "hard":
            top = logits.argmax(1)
            logp_top = logp.gather(1, top.unsqueeze(1)).squeeze(1)
            return -self.beta * logp_y - (1.0 - self.beta) * logp_top, (logp, top)
        p = logp.exp()
        entropy = -torch.linalg.vecdot(p, logp)
        return (1.0 - self.beta) * entropy - self.beta * logp_y, (logp, p, entropy)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        if self.mode == "hard":
            logp, top = saved
            out = logp.exp().mul_(grad.unsqueeze(1))
            return target_column_add(target_column_add(out, targets, -self.beta * grad), top, (self.beta - 1.0) * grad)
        logp, p, entropy = saved
        g = grad.unsqueeze(1)
        if self.detach_prediction:
            out = p.mul(self.beta * g)
        else:  # p * g * (beta - (1 - beta) (log p + H))
            row = g * (self.beta - (1.0 - self.beta) * entropy.unsqueeze(1))
            out = torch.addcmul(row, logp, g, value=self.beta - 1.0).mul_(p)
        return target_column_add(out, targets, -self.beta * grad)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, mode={self.mode!r}, {super().extra_repr()}"


# --- label distributionally robust loss (Zhu et al. 2023) -------------------------------------------


@REGISTRY.register("ldr_kl")
class LDRKL(Loss):
    """Label-distributionally robust loss with a KL regularizer (LDR-KL): a margin-shifted, tempered log-sum-exp.

    .. math:: \\mathrm{LDR\\text{-}KL}_\\lambda(z, y)
              = \\max_{w \\in \\Delta_K} \\sum_k w_k\\,(c\\,[k \\ne y] + z_k - z_y)
                - \\lambda\\,\\mathrm{KL}(w \\,\\|\\, 1/K)
              = \\lambda \\log \\frac{1}{K} \\sum_k \\exp\\!\\Big(\\frac{c\\,[k \\ne y] + z_k - z_y}{\\lambda}\\Big)

    In plain text: LDR-KL = lam * log( (1/K) sum_k exp((c [k != y] + z_k - z_y) / lam) ), the
    worst case over label distributions w near uniform. lambda -> 0 gives
    the Crammer–Singer (SVM) loss max_k (c[k != y] + z_k - z_y); lambda -> inf
    gives the mean margin violation (MAE-like, symmetric); in between it is a
    temperature-scaled cross-entropy with margin. Class-index targets only.

    References: Zhu, Ying & Yang, "Label Distributionally Robust Losses for
    Multi-class Classification: Consistency, Robustness and Adaptivity" (ICML
    2023). Checked against the authors' code release (Optimization-AI/ICML2023_LDR:
    ``loss.py`` ``LDRLoss_V1`` and ``experiment.py``). Their experiments use
    c = 0.1 and lambda = 10 (grid
    {0.1, 1, 10}). Their code first maps the logits to softplus(z) /
    mean_k softplus(z_k); ``normalize_logits=True`` does the same (with the
    mean floored at the dtype's tiny so all-very-negative logits stay finite).
    The adaptive variant ALDR-KL (per-example lambda) is not implemented.

    Args:
        lam: lambda > 0, the KL weight (a temperature); 0.1–10 usual.
        margin: c >= 0, the margin added for the wrong classes; 0.1–1 usual.
        normalize_logits: apply the reference code's softplus/mean logit normalization first.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: lam <= 0, margin < 0, or bad reduction.
        ShapeError: logits not (n, K) with K >= 2, or probability targets.
    """

    def __init__(self, lam: float = 1.0, margin: float = 0.1, normalize_logits: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        self.lam = check_float("lam", lam, 0.0, low_open=True)
        self.margin = check_float("margin", margin, 0.0)
        self.normalize_logits = check_bool("normalize_logits", normalize_logits)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "ldr_kl")
        _hard_only(targets, "ldr_kl")
        z = logits
        if self.normalize_logits:
            z = F.softplus(z)
            z = z / z.mean(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        # lam * logsumexp((c [k != y] + z_k - z_y) / lam) = lam * CE(v, y) with v_k = (z_k + c [k != y]) / lam, since
        # logsumexp(v) - v_y = CE(v, y) and lam * v_y = z_y: one fused cross-entropy on v (the added constants have no
        # gradient, so v costs one elementwise op)
        v = z + self.margin if self.lam == 1.0 else (z + self.margin).mul_(1.0 / self.lam)
        v = v.scatter_add_(1, targets[:, None], torch.full_like(v[:, :1], -self.margin / self.lam))
        values = self.lam * (F.cross_entropy(v, targets, reduction="none") - math.log(z.shape[1]))
        return reduce(values, self.reduction)

    def extra_repr(self) -> str:
        return f"lam={self.lam:g}, margin={self.margin:g}, {super().extra_repr()}"


# --- early-learning regularization (Liu et al. 2020) ------------------------------------------------


class _ELRFused(torch.autograd.Function):
    """ELR for class-index targets: the value and the state update in one forward, the closed-form backward.

    With p~ = softmax(z), m_k = [1e-4 < p~_k < 1 - 1e-4] (the clamp's gradient), v = t * m * p~ and
    c = -lambda / (1 - <t, p>): d loss / d z_j = p~_j (1 - c sum_k v_k) + c v_j - delta_jy.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, loss: ELR, idx: Tensor) -> Tensor:  # type: ignore[override]
        logp = F.log_softmax(logits, dim=1)
        logp_y = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        soft = logp.exp_()  # log p is not needed any more: one (n, K) buffer fewer
        p = soft.clamp(ELR_CLAMP, 1.0 - ELR_CLAMP)
        t = loss._update(p, idx) if loss.training else loss.running_targets.index_select(0, idx).to(logits.dtype)
        dot = torch.linalg.vecdot(t, p)
        ctx.loss = loss
        ctx.save_for_backward(logits, targets, t, soft, dot)
        return loss.lam * torch.log1p(-dot) - logp_y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, targets, t, soft, dot = ctx.saved_tensors
        loss = ctx.loss
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain formula with t held fixed
            with torch.enable_grad():
                p = F.hardtanh(F.softmax(logits, dim=1), ELR_CLAMP, 1.0 - ELR_CLAMP)
                values = _ce(logits, targets) + loss.lam * torch.log1p(-torch.linalg.vecdot(t, p))
                (g,) = torch.autograd.grad(values, logits, grad, create_graph=True)
            return g, None, None, None
        grad = grad.contiguous()
        c = (-loss.lam * grad / (1.0 - dot)).unsqueeze(1)
        v = torch.ops.aten.hardtanh_backward(t, soft, ELR_CLAMP, 1.0 - ELR_CLAMP).mul_(soft)  # t * m * p~
        total = v.sum(1, keepdim=True)
        out = v.mul_(c).addcmul_(soft, grad.unsqueeze(1) - c * total)
        return target_column_add(out, targets, -grad).to(logits.dtype), None, None, None


# --- early-learning regularization (Liu et al. 2020) ------------------------------------------------

#: ELR clamps the softmax to [ELR_CLAMP, 1 - ELR_CLAMP] (reference code) so that log(1 - <p, t>) stays finite.
ELR_CLAMP = 1e-4


@REGISTRY.register("elr")
class ELR(PerExampleState):
    """Early-learning regularization: CE plus lambda * log(1 - <p_i, t_i>) toward a running average t_i of p_i.

    .. math:: t_i \\leftarrow \\beta\\, t_i + (1-\\beta)\\, \\frac{\\bar p_i}{\\sum_k \\bar p_{ik}}, \\qquad
              \\ell_i = \\mathrm{CE}(z_i, q_i) + \\lambda \\log\\big(1 - \\langle \\bar p_i, t_i \\rangle\\big)

    In plain text: t_i <- beta t_i + (1 - beta) normalize(p-bar_i); loss_i = CE_i + lam * log(1 - <p-bar_i, t_i>),
    where p-bar = clamp(softmax(z), 1e-4, 1 - 1e-4). The targets t (the buffer
    ``running_targets``, shape (num_examples, num_classes), zeros at the start) are keyed by
    dataset index; in training mode (``self.training``) the rows of the batch
    are updated first, without gradient, and the regularizer uses the updated
    rows. In eval mode nothing is updated, but the value still includes the
    regularizer computed from the stored targets (the reference code reports
    plain CE for validation; reglab's Trainer evaluates with CE anyway). The
    regularizer pulls p_i toward the model's own early predictions, so memorizing a wrong label is costly.
    Duplicate indices in one batch: the last write wins.

    References: Liu et al., "Early-Learning Regularization Prevents
    Memorization of Noisy Labels" (NeurIPS 2020). Checked against the authors'
    code (github.com/shengliu66/ELR, ``ELR/model/loss.py``, ``elr_loss``): the
    clamp to [1e-4, 1 - 1e-4], the renormalized detached update and the
    update-before-use order are theirs; their CIFAR-10 config uses beta = 0.7,
    lambda = 3.

    Args:
        num_examples: size of the training set (indices range over [0, num_examples)).
        num_classes: K, >= 2.
        beta: momentum of the target average, in [0, 1); 0.5–0.99 usual (0.7 for CIFAR-10).
        lam: lambda >= 0, regularization weight; 1–10 usual (3 for CIFAR-10).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: an argument out of range; indices outside [0, num_examples) at call time.
        MissingContextError: called without ``indices``.
        ShapeError: logits not (n, num_classes), or targets/indices of the wrong shape.
    """

    soft_targets = True

    def __init__(
        self, num_examples: int, num_classes: int, beta: float = 0.7, lam: float = 3.0, reduction: str = "mean"
    ):
        super().__init__(num_examples, num_classes, reduction)
        self.beta = check_float("beta", beta, 0.0, 1.0, high_open=True)
        self.lam = check_float("lam", lam, 0.0)
        self.register_buffer("running_targets", torch.zeros(num_examples, num_classes))

    def forward(self, logits: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        idx = self._check_batch(logits, targets, indices, "elr")
        hard = not targets.is_floating_point()
        if hard and not plain_autograd_needed(logits):
            return reduce(_ELRFused.apply(logits, targets, self, idx), self.reduction)
        p = F.hardtanh(F.softmax(logits, dim=1), ELR_CLAMP, 1.0 - ELR_CLAMP)  # clamp(p, 1e-4, 1 - 1e-4)
        t = self._update(p.detach(), idx) if self.training else self.running_targets.index_select(0, idx)
        t = t.to(logits.dtype)
        ce = _ce(logits, targets) if hard else soft_cross_entropy(logits, targets.to(logits.dtype))
        values = ce + self.lam * torch.log1p(-torch.linalg.vecdot(t, p))
        return reduce(values, self.reduction)

    @torch.no_grad()
    def _update(self, p: Tensor, idx: Tensor) -> Tensor:
        """t_i <- beta t_i + (1 - beta) p_i / sum_k p_ik for the batch rows; returns each position's updated row."""
        rows = self.running_targets.index_select(0, idx).mul_(self.beta)
        rows.addcmul_(p.to(rows.dtype), ((1.0 - self.beta) / p.sum(1, keepdim=True)).to(rows.dtype))
        return self._write_rows(self.running_targets, idx, rows).to(p.dtype)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}, lam={self.lam:g}, {super().extra_repr()}"
