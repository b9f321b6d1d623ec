"""Label-smoothing variants aimed at calibration and at the logit geometry: TSLA, MaxSup, ACLS.

Each is cross-entropy plus a term on the logits (or a smoothed target for part
of training), called as ``loss(logits, targets)`` with int class targets of
shape (n,) or probability targets of shape (n, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reglab.core import ConfigError
from reglab.core.validation import check_bool, check_float
from reglab.losses.base import REGISTRY, Loss, check_logits, reduce
from reglab.losses.classification import soft_cross_entropy
from reglab.losses.fused import row_loss, target_column_add


@REGISTRY.register("tsla")
class TSLA(Loss):
    """Two-stage label smoothing: label-smoothed CE for the first switch_step training steps, then plain CE.

    .. math:: \\ell_t(z, y) = -\\sum_k \\big[(1-\\varepsilon_t)\\,\\mathbb{1}[k=y] + \\varepsilon_t/K\\big]
              \\log \\mathrm{softmax}(z)_k, \\qquad
              \\varepsilon_t = \\varepsilon \\text{ if } t < T_1 \\text{ else } 0

    The step t is the module's own counter, a long buffer ``step`` saved in
    ``state_dict`` (so a checkpoint resumes in the right stage). Every forward
    call in training mode (``self.training``, the default for a loss module)
    uses the current stage and then adds 1; calls in eval mode use the
    current stage and do not count. ``reglab.train.train_step`` calls the loss
    once per optimizer step, so t is the trainer's step count; with an
    optimizer that evaluates the loss twice per step (the SAM family) or with
    gradient accumulation, give ``switch_step`` in loss calls (e.g. twice the
    steps for SAM). Probability targets q are smoothed the same way:
    (1 - eps) q + eps / K.

    From "Towards Understanding Label Smoothing" (Xu et al., 2020): TSLA uses
    label smoothing regularization in the first epochs and drops it in the
    later ones (the paper's T1 is an epoch count; here it is a step count).
    Usual range: smoothing in 0.1 to 0.4, switch_step around the first
    learning-rate decay or 30-60% of training.

    Example:
        >>> loss = TSLA(smoothing=0.1, switch_step=1000)
        >>> value = loss(torch.randn(8, 10), torch.randint(0, 10, (8,)))  # step 0 -> smoothed; loss.step is now 1

    Args:
        smoothing: eps in [0, 1) used before the switch.
        switch_step: T1, the number of training-mode calls that use smoothing (int >= 0).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: smoothing outside [0, 1), switch_step not an int >= 0, or a bad reduction.
        ShapeError: logits are not (n, K) or targets do not match them.
    """

    soft_targets = True

    def __init__(self, smoothing: float = 0.1, *, switch_step: int, reduction: str = "mean"):
        super().__init__(reduction)
        self.smoothing = check_float("smoothing", smoothing, 0.0, 1.0, high_open=True)
        if isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0:
            raise ConfigError(f"switch_step must be an int >= 0, got {switch_step!r}")
        self.switch_step = switch_step
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def smoothing_active(self) -> bool:
        """Whether the next call uses label smoothing (step < switch_step)."""
        return int(self.step) < self.switch_step

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "tsla", min_classes=1)
        eps = self.smoothing if self.smoothing_active else 0.0
        if self.training:
            with torch.no_grad():
                self.step.add_(1)
        if not targets.is_floating_point():  # torch's fused kernel computes exactly this for class indices
            return F.cross_entropy(logits, targets, label_smoothing=eps, reduction=self.reduction)
        q = targets.to(logits.dtype)
        if eps:
            q = (1.0 - eps) * q + eps / logits.shape[1]
        return reduce(soft_cross_entropy(logits, q), self.reduction)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing:g}, switch_step={self.switch_step}, {super().extra_repr()}"


@REGISTRY.register("max_suppression")
class MaxSup(Loss):
    """Max suppression: CE plus alpha * (z_max - mean_k z_k), label smoothing's penalty on the top-1 logit.

    .. math:: \\ell(z, y) = -\\log \\mathrm{softmax}(z)_y + \\alpha\\,\\big(\\max_k z_k - \\tfrac1K \\sum_k z_k\\big)

    Label smoothing with eps = alpha equals CE + alpha (z_y - mean_k z_k)
    exactly; MaxSup penalizes the largest logit instead of the target's, so a
    misclassified example is not pushed to be more confident in the wrong
    class. The two coincide on examples whose target is the arg-max. The
    gradient of max flows to the arg-max logit. Probability targets enter the
    CE term only (the penalty does not depend on the target).

    From "MaxSup: Overcoming Representation Collapse in Label Smoothing"
    (Zhou et al., 2025); form and normalization (plain mean over the K logits,
    no further scaling; mean over the batch) checked against the authors'
    reference code (ZhouYuxuanYX/Maximum-Suppression-Regularization,
    ``MaxSuppression`` / ``MaxSupLoss``). The reference ramps alpha linearly
    from 0.1 to 0.2 over training; here alpha is fixed (change ``loss.alpha``
    from a callback to ramp it). Usual range: alpha in 0.1 to 0.2.

    Example:
        >>> loss = MaxSup(alpha=0.1)(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        alpha: weight of the penalty, >= 0.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: alpha < 0, or a bad reduction.
        ShapeError: logits are not (n, K) or targets do not match them.
    """

    soft_targets = True

    def __init__(self, alpha: float = 0.1, reduction: str = "mean"):
        super().__init__(reduction)
        self.alpha = check_float("alpha", alpha, 0.0)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "max_suppression", min_classes=1)
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        ce = soft_cross_entropy(logits, targets.to(logits.dtype))
        return reduce(ce + self.alpha * (logits.amax(dim=1) - logits.mean(dim=1)), self.reduction)

    # class-index targets: gradient softmax(z) - e_y + alpha (e_top - 1/K)
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        penalty = logits.max(dim=1).values - logits.mean(dim=1)
        return F.cross_entropy(logits, targets, reduction="none") + self.alpha * penalty

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        logp = F.log_softmax(logits, dim=1)
        top_value, top = logits.max(dim=1)
        penalty = top_value - logits.mean(dim=1)
        return self.alpha * penalty - logp.gather(1, targets.unsqueeze(1)).squeeze(1), (logp, top)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        logp, top = saved
        out = logp.exp().sub_(self.alpha / logits.shape[1]).mul_(grad.unsqueeze(1))
        return target_column_add(target_column_add(out, targets, -grad), top, self.alpha * grad)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, {super().extra_repr()}"


@REGISTRY.register("acls")
class ACLS(Loss):
    """ACLS: CE plus squared hinge penalties on the max logit above m and on logit gaps to the max beyond m.

    .. math:: R(z) = \\lambda_{pos}\\, [z_{max} - m]_+^2
              + \\frac{\\lambda_{neg}}{K-1} \\sum_{j \\ne \\arg\\max} [\\mathrm{sg}(z_{max}) - z_j - m]_+^2,
              \\qquad \\ell(z, y) = -\\log \\mathrm{softmax}(z)_y + \\alpha\\, R(z)

    The positive term pulls the winning logit down only once it exceeds the
    margin m; the negative term pulls a non-max logit up only once its gap to
    the (stop-gradient, sg) maximum exceeds m. With ``reduction="mean"`` this
    equals the reference's batch form lambda_pos * sum(pos) / n +
    lambda_neg * sum(neg) / (n (K - 1)). Differences from the reference: the
    arg-max is one class (the reference's equality mask counts tied maxima
    more than once in the positive term); ``detach_max=False`` lets gradient
    flow through z_max in the negative term too (the reference detaches it).
    Probability targets enter the CE term only.

    From "ACLS: Adaptive and Conditional Label Smoothing for Network
    Calibration" (Park et al., 2023); formula and defaults (alpha = 0.1,
    lambda_pos = 1, lambda_neg = 0.1, m = 10) checked against the official
    code (cvlab-yonsei/ACLS, calibrate/losses/acls.py).
    Usual range: alpha 0.05 to 0.2, m 5 to 10 (scale it with the logit
    magnitude), lambda_neg 0.01 to 0.1.

    Example:
        >>> loss = ACLS()(torch.randn(8, 10), torch.randint(0, 10, (8,)))

    Args:
        alpha: weight of the regularizer, >= 0.
        lambda_pos: weight of the positive (max-logit) term, >= 0.
        lambda_neg: weight of the negative (gap) term, >= 0.
        margin: m >= 0.
        detach_max: stop the gradient through z_max in the negative term (default True, as the reference).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: a negative alpha, lambda_pos, lambda_neg or margin, or a bad reduction.
        ShapeError: logits are not (n, K) with K >= 2 or targets do not match them.
    """

    soft_targets = True

    def __init__(
        self,
        alpha: float = 0.1,
        lambda_pos: float = 1.0,
        lambda_neg: float = 0.1,
        margin: float = 10.0,
        detach_max: bool = True,
        reduction: str = "mean",
    ):
        super().__init__(reduction)
        self.alpha = check_float("alpha", alpha, 0.0)
        self.lambda_pos = check_float("lambda_pos", lambda_pos, 0.0)
        self.lambda_neg = check_float("lambda_neg", lambda_neg, 0.0)
        self.margin = check_float("margin", margin, 0.0)
        self.detach_max = check_bool("detach_max", detach_max)

    def regularizer(self, logits: Tensor) -> Tensor:
        """Per-example R(z) (before the weight alpha).

        The arg-max column needs no mask in the negative term: its gap is
        relu(z_max - z_max - m) = relu(-m) = 0 for m >= 0, with zero gradient.
        """
        k = logits.shape[1]
        z_max = logits.max(dim=1, keepdim=True).values
        pos = F.relu(z_max.squeeze(1) - self.margin).square()
        ref = z_max.detach() if self.detach_max else z_max
        gaps = F.relu(ref - logits - self.margin).square()
        return self.lambda_pos * pos + self.lambda_neg * gaps.sum(dim=1) / (k - 1)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        check_logits(logits, targets, "acls")
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets), self.reduction)
        ce = soft_cross_entropy(logits, targets.to(logits.dtype))
        return reduce(ce + self.alpha * self.regularizer(logits), self.reduction)

    # class-index targets: gradient softmax(z) - e_y + alpha (2 lambda_pos [z_max - m]_+ e_top
    # - 2 lambda_neg / (K - 1) r (+ 2 lambda_neg / (K - 1) sum_j r_j e_top without detach_max)), r = [z_max - z - m]_+
    def _reference(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none") + self.alpha * self.regularizer(logits)

    def _fused_forward(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        k = logits.shape[1]
        logp = F.log_softmax(logits, dim=1)
        z_max, top = logits.max(dim=1)
        gaps = torch.sub(z_max.unsqueeze(1) - self.margin, logits).clamp_min_(0.0)  # r, zero at the arg-max
        pos = F.relu(z_max - self.margin)
        neg = torch.linalg.vector_norm(gaps, dim=1).square() / (k - 1)
        reg = self.lambda_pos * pos.square() + self.lambda_neg * neg
        values = self.alpha * reg - logp.gather(1, targets.unsqueeze(1)).squeeze(1)
        return values, (logp, top, gaps, pos)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        logp, top, gaps, pos = saved
        coef = 2.0 * self.alpha * self.lambda_neg / (logits.shape[1] - 1)
        out = logp.exp().mul_(grad.unsqueeze(1)).addcmul_(gaps, (-coef * grad).unsqueeze(1))
        at_top = 2.0 * self.alpha * self.lambda_pos * pos
        if not self.detach_max:
            at_top = at_top + coef * gaps.sum(dim=1)
        return target_column_add(target_column_add(out, targets, -grad), top, at_top * grad)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha:g}, lambda_pos={self.lambda_pos:g}, lambda_neg={self.lambda_neg:g}, "
            f"margin={self.margin:g}, detach_max={self.detach_max}, {super().extra_repr()}"
        )
