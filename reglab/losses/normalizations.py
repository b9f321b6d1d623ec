"""Losses on other normalizations of the logits than the softmax: StableMax and sparsemax.

Called as ``loss(logits, targets)`` like every classification loss
(:mod:`reglab.losses.classification`), with int class indices or, where the
class says so, probability targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reglab.losses.base import REGISTRY, Loss, check_logits, expected_value, reduce
from reglab.losses.fused import plain_autograd_needed, row_loss, target_column_add


def _log_s(x: Tensor) -> Tensor:
    """log s(x) for StableMax's s: log(1 + x) for x >= 0, -log(1 - x) for x < 0 (no overflow for any x)."""
    return torch.where(x >= 0, torch.log1p(x.clamp_min(0)), -torch.log1p((-x).clamp_min(0)))


def stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """StableMax probabilities: s(z_k) / sum_j s(z_j), s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0).

    s is increasing, positive and C^1 (value and slope 1 at 0), so StableMax
    keeps the ranking of the logits, like softmax; unlike softmax it is not
    shift invariant, and it grows linearly instead of exponentially, so it
    saturates far later in floating point. From "Grokking at the Edge of
    Numerical Stability" (Prieto et al., 2025).
    """
    s = torch.where(logits >= 0, 1.0 + logits, 1.0 / (1.0 - logits.clamp_max(0)))
    return s / s.sum(dim=dim, keepdim=True)


def log_stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """log of :func:`stablemax`, computed as log s(z_k) - logsumexp_j log s(z_j) (finite for any finite logits)."""
    ls = _log_s(logits)
    return ls - torch.logsumexp(ls, dim=dim, keepdim=True)


@REGISTRY.register("stablemax_ce")
class StableMaxCrossEntropy(Loss):
    """Cross-entropy with StableMax in place of softmax: -log(s(z_y) / sum_j s(z_j)).

    .. math:: s(x) = x + 1 \\ (x \\ge 0), \\quad s(x) = \\frac{1}{1 - x} \\ (x < 0), \\quad
              \\ell(z, y) = -\\log \\frac{s(z_y)}{\\sum_j s(z_j)}

    Proposed to avoid Softmax Collapse (float32 CE gradients underflowing to
    exactly zero), which delays grokking without weight decay. As in the
    authors' reference code (``stablemax_cross_entropy`` casts the logits to
    float64 before ``log_stablemax``), the loss is computed in float64 and the
    result is cast back to the logits' dtype; the logs are taken piecewise
    (log1p) rather than of a ratio, so the value stays finite for any finite
    logits. With probability targets q it is -sum_k q_k log p_k.

    From "Grokking at the Edge of Numerical Stability" (Prieto, Barsbey,
    Mediano & Birdal, 2025); s(x) and the float64 cast checked against the
    reference code (utils.py of the official repository, as mirrored in its
    forks). No hyperparameters.

    Example:
        >>> loss = StableMaxCrossEntropy()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a bad reduction.
        ShapeError: logits are not (n, K) or targets do not match them.
    """

    soft_targets = True

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "stablemax_ce", min_classes=1)
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        logp = log_stablemax(logits.to(torch.float64), dim=1)
        return reduce(expected_value(-logp, targets), self.reduction).to(logits.dtype)

    # class-index targets: log sum_j s(z_j) - log s(z_y) in float64, with s(x) = r(x) + max(x, 0) and
    # r(x) = 1 / (1 - min(x, 0)) (r = 1 for x >= 0): no logs or where over the K columns. s'(x) = r(x)^2, so the
    # gradient is r^2 / sum_j s_j - e_y r_y^2 / s_y, formed in the logits' dtype.
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        logp = log_stablemax(logits.to(torch.float64), dim=1)
        return -logp.gather(1, targets.unsqueeze(1)).squeeze(1).to(logits.dtype)

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = logits.to(torch.float64)
        r = x.clamp_max(0.0).neg_().add_(1.0).reciprocal_()
        positive = x.clamp_min(0.0)
        total = r.sum(dim=1) + positive.sum(dim=1)
        col = targets.unsqueeze(1)
        s_y = (r.gather(1, col) + positive.gather(1, col)).squeeze(1)
        r_low = r.to(logits.dtype)
        return (total.log() - s_y.log()).to(logits.dtype), (r_low, total, s_y)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        r, total, s_y = saved
        out = r.square().mul_((grad / total).unsqueeze(1).to(r.dtype))
        r_y = r.gather(1, targets.unsqueeze(1)).squeeze(1).to(torch.float64)
        return target_column_add(out, targets, -grad * r_y.square() / s_y)


def _sparsemax_threshold(z: Tensor) -> Tensor:
    """tau(z) over the last dim: with z sorted decreasingly, k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}
    and tau = (sum_{j<=k(z)} z_(j) - 1) / k(z). Differentiable with the support held fixed."""
    zs = z.sort(dim=-1, descending=True).values
    cums = zs.cumsum(dim=-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    size = (1.0 + k * zs > cums).sum(dim=-1, keepdim=True)  # the condition holds for a prefix; size >= 1
    return (cums.gather(-1, size - 1) - 1.0) / size.to(z.dtype)


@torch.no_grad()
def _sparsemax_support(z: Tensor) -> tuple[Tensor, Tensor] | None:
    """The support indicator (float 0/1) and tau over the last dim of 2-D ``z``, without sorting.

    Michelot's algorithm: with w = z - max z, tau lies in [-1, 0), and
    tau <- (sum_{w_j > tau} w_j - 1) / #{j : w_j > tau}, started below tau
    (at max(-1, (sum_j w_j - 1) / K)), increases to tau exactly in finitely
    many steps (Newton's method on the convex, piecewise linear
    f(tau) = sum_j [w_j - tau]_+ - 1, approached from the left); it stops
    when no row's support changes. Each step is a few elementwise passes;
    random logits need 2 to 9 steps, against a sort of every row (on a GPU
    each step's check is a host sync). Returns
    None if rounding keeps a row from settling within K + 1 steps (then the
    sort-based threshold is used).
    """
    w = z - z.amax(dim=1, keepdim=True)
    tau = ((w.sum(dim=1, keepdim=True) - 1.0) / w.shape[1]).clamp_min(-1.0)
    count = None
    for _ in range(w.shape[1] + 1):
        r = torch.sub(w, tau).clamp_min_(0.0)  # in [0, 1]: ceil is the support indicator
        excess = r.sum(dim=1, keepdim=True)
        new_count = r.ceil_().sum(dim=1, keepdim=True)
        tau = tau + (excess - 1.0) / new_count  # = (sum over the support of w - 1) / |support|
        if count is not None and torch.equal(new_count, count):
            return r, tau + z.amax(dim=1, keepdim=True)
        count = new_count
    return None


def _sparsemax_threshold_fast(z: Tensor) -> Tensor:
    """tau(z) over the last dim, differentiable with the support held fixed (no sort outside torch.func)."""
    if z.ndim != 2 or plain_autograd_needed(z):
        return _sparsemax_threshold(z)
    found = _sparsemax_support(z)
    if found is None:
        return _sparsemax_threshold(z)
    support, _ = found
    return (torch.linalg.vecdot(support, z).unsqueeze(1) - 1.0) / support.sum(dim=1, keepdim=True)


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """Sparsemax: the Euclidean projection of z onto the probability simplex, max(z - tau(z), 0).

    The threshold tau comes from Michelot's iteration (a few elementwise passes,
    see :func:`_sparsemax_support`), or from the sort-based rule, O(K log K),
    under ``torch.func`` transforms; the output sums to 1, is non-negative and
    has exact zeros for the classes whose logit is below tau. Its Jacobian is
    diag(s) - s s^T / |S| (s the support indicator), which autograd reproduces
    here because tau is differentiated with the support held fixed. From
    "From Softmax to Sparsemax: A Sparse Model of Attention and Multi-Label
    Classification" (Martins & Astudillo, 2016).
    """
    z = logits.movedim(dim, -1)
    flat = z.reshape(-1, z.shape[-1])
    return (flat - _sparsemax_threshold_fast(flat)).clamp_min(0).reshape(z.shape).movedim(-1, dim)


@REGISTRY.register("sparsemax")
class SparsemaxLoss(Loss):
    """Sparsemax loss: the loss whose gradient is sparsemax(z) - onehot(y); zero once the target has all the mass.

    .. math:: \\ell(z, y) = -z_y + \\tfrac12 \\sum_{j \\in S(z)} (z_j^2 - \\tau(z)^2) + \\tfrac12, \\qquad
              \\nabla_z \\ell = \\mathrm{sparsemax}(z) - e_y

    S(z) is the support of sparsemax(z) and tau(z) its threshold. With
    probability targets q it is -q.z + 1/2 sum_{j in S}(z_j^2 - tau^2) + 1/2 ||q||^2,
    with gradient sparsemax(z) - q (the paper's multi-label form). The sum is
    computed as 1/2 sum_j p_j (z_j + tau) with p = sparsemax(z), the same number
    without the cancellation of z_j^2 - tau^2. The loss is >= 0.

    From "From Softmax to Sparsemax: A Sparse Model of Attention and
    Multi-Label Classification" (Martins & Astudillo, 2016). No hyperparameters.

    Example:
        >>> loss = SparsemaxLoss()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a bad reduction.
        ShapeError: logits are not (n, K) or targets do not match them.
    """

    soft_targets = True

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "sparsemax", min_classes=1)
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        return reduce(self._values(logits, targets), self.reduction)

    def _values(self, logits: Tensor, targets: Tensor) -> Tensor:
        tau = _sparsemax_threshold(logits)
        p = (logits - tau).clamp_min(0)
        half_sq = 0.5 * (p * (logits + tau)).sum(dim=1)
        if targets.is_floating_point():
            q = targets.to(logits.dtype)
            return -(q * logits).sum(dim=1) + half_sq + 0.5 * q.square().sum(dim=1)
        return -logits.gather(1, targets.unsqueeze(1)).squeeze(1) + half_sq + 0.5

    # class-index targets: tau by Michelot's iteration instead of a sort, gradient sparsemax(z) - e_y in one pass;
    # with w = z - max z (the loss is shift invariant) and p = [w - tau]_+,
    # sum_S (w_j^2 - tau^2) = ||p||^2 + 2 tau sum p
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self._values(logits, targets)

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        found = _sparsemax_support(logits)
        if found is None:
            tau = _sparsemax_threshold(logits)
        else:
            tau = found[1]
        top = logits.amax(dim=1, keepdim=True)
        w_tau = tau - top
        p = torch.sub(logits, tau).clamp_min_(0.0)
        half_sq = 0.5 * (torch.linalg.vector_norm(p, dim=1).square() + 2.0 * w_tau.squeeze(1) * p.sum(dim=1))
        w_y = (logits.gather(1, targets.unsqueeze(1)) - top).squeeze(1)
        return half_sq - w_y + 0.5, (p,)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        (p,) = saved
        return target_column_add(p.mul(grad.unsqueeze(1)), targets, -grad)
