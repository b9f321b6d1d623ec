"""Penalties on the model's outputs (logits): confidence penalty, spectral decoupling, log-partition (z-loss).

Each reads ``ctx.outputs`` only (no extra forward pass). Logits have the
classes on the last dimension: ``(n, K)``, or ``(n, T, K)`` for sequences, in
which case the value is averaged over every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reglab.core import Penalty, ShapeError, StepContext
from reglab.core.validation import check_float
from reglab.penalties.context import require_fields
from reglab.penalties.registry import REGISTRY


def _class_logits(ctx: StepContext, owner: str) -> Tensor:
    require_fields(ctx, owner, "outputs")
    z = ctx.outputs
    if z.ndim < 2:
        raise ShapeError(
            f"{owner} needs logits with the classes on the last dimension, shape (n, num_classes), got "
            f"{tuple(z.shape)}; it does not apply to scalar regression outputs"
        )
    return z


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dimension, finite for any finite logits."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


@REGISTRY.register("confidence_penalty")
class ConfidencePenalty(Penalty):
    """Confidence penalty: minus the entropy of the predictive distribution, -H(softmax(z)), mean over examples.

    .. math:: R = -\\frac{1}{n} \\sum_i H(p_i), \\quad H(p) = -\\sum_k p_k \\log p_k,
        \\quad p_i = \\operatorname{softmax}(z_i)

    so ``CE + beta * R`` is the objective of "Regularizing Neural Networks by
    Penalizing Confident Output Distributions" (Pereyra, Tucker, Chorowski,
    Kaiser & Hinton, 2017). Penalizing low entropy is label smoothing with the
    KL divergence taken in the other direction. The paper also uses a hinged
    form, active only below an entropy threshold Gamma: ``max(0, Gamma - H(p))``
    (``threshold=Gamma``), which is 0 for predictions uncertain enough. The
    value is negative without a threshold (its minimum is -log K). beta is
    tuned per task in the paper; 0.1 is a reasonable start.

    Example:
        >>> penalty = ConfidencePenalty(0.5)

    Args:
        weight: beta, >= 0.
        threshold: Gamma in nats, >= 0, for the hinged form; None for plain -H.

    Raises:
        ConfigError: a negative or non-finite threshold.
        MissingContextError: ``ctx.outputs`` is missing.
        ShapeError: outputs are not logits of shape (n, ..., num_classes).
    """

    needs = frozenset({"outputs"})

    def __init__(self, weight: float, *, threshold: float | None = None, name: str | None = None):
        super().__init__(weight, name=name)
        self.threshold = None if threshold is None else check_float("threshold", threshold, 0.0)

    def compute(self, ctx: StepContext) -> Tensor:
        h = entropy(_class_logits(ctx, self.name))
        if self.threshold is None:
            return -h.mean()
        return torch.relu(self.threshold - h).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


@REGISTRY.register("logit_penalty")
class SpectralDecoupling(Penalty):
    """Spectral decoupling: an L2 penalty on the logits, (1/2) ||z - gamma||^2, mean over examples.

    .. math:: R = \\frac{1}{n} \\sum_i \\tfrac{1}{2} \\lVert z_i - \\gamma \\rVert^2

    From "Gradient Starvation: A Learning Proclivity in Neural Networks"
    (Pezeshki et al., NeurIPS 2021): replacing weight decay by a penalty on the
    network's outputs decouples the learning dynamics of the features, so that
    a feature learned first no longer starves the others of gradient; the
    optional offset gamma (the paper's per-class gamma, one scalar here) sets
    the logit value the penalty pulls toward. The paper's objective is
    ``CE + (lambda / 2) ||z||^2``, i.e. weight = lambda. The authors' code
    averages ``z ** 2`` over all entries instead: ``lambda_code * mean(z ** 2)``
    equals this penalty with weight ``2 * lambda_code / K`` for K logits. The
    whole output of each example is used, so any output shape works. Usual
    lambda: 1e-3 to 1e-1.

    Not "LogitNorm" (Wei et al., 2022, "Mitigating Neural Network
    Overconfidence with Logit Normalization"), which normalizes the logits
    inside the loss.

    Example:
        >>> penalty = SpectralDecoupling(0.01)

    Args:
        weight: lambda, >= 0.
        gamma: the target logit value, finite (default 0).

    Raises:
        ConfigError: gamma not finite.
        MissingContextError: ``ctx.outputs`` is missing.
    """

    needs = frozenset({"outputs"})

    def __init__(self, weight: float, *, gamma: float = 0.0, name: str | None = None):
        super().__init__(weight, name=name or "logit_penalty")
        self.gamma = check_float("gamma", gamma)

    def compute(self, ctx: StepContext) -> Tensor:
        require_fields(ctx, self.name, "outputs")
        z = ctx.outputs
        if z.ndim == 0:
            raise ShapeError(f"{self.name} needs batched outputs of shape (n, ...), got a scalar")
        return 0.5 * (z - self.gamma).pow(2).reshape(z.shape[0], -1).sum(1).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:g}"


@REGISTRY.register("log_partition")
class LogPartition(Penalty):
    """Log-partition penalty (PaLM's auxiliary z-loss): (log sum_k exp z_k)^2, mean over examples.

    .. math:: R = \\frac{1}{n} \\sum_i \\big(\\log Z_i\\big)^2,
        \\quad \\log Z_i = \\operatorname{logsumexp}_k z_{ik}

    Pulls the softmax normalizer log Z toward 0, so logits cannot drift to
    large values where softmax loses precision; the objective is unchanged in
    the predicted distribution (softmax is shift invariant) but the shift of
    the logits is pinned. "PaLM: Scaling Language Modeling with Pathways"
    (Chowdhery et al., 2022) adds ``1e-4 * log^2 Z`` to the cross-entropy for
    training stability (the same term is the ``z_loss`` option of Mesh
    TensorFlow); usual weight 1e-5 to 1e-3. Not the "Z-loss" of de Brébisson
    & Vincent (2016), a spherical-family loss registered as the loss
    ``z_loss``.

    Example:
        >>> penalty = LogPartition(1e-4)

    Args:
        weight: the coefficient, >= 0 (PaLM: 1e-4).

    Raises:
        MissingContextError: ``ctx.outputs`` is missing.
        ShapeError: outputs are not logits of shape (n, ..., num_classes).
    """

    needs = frozenset({"outputs"})

    def compute(self, ctx: StepContext) -> Tensor:
        return torch.logsumexp(_class_logits(ctx, self.name), dim=-1).pow(2).mean()


__all__ = ["ConfidencePenalty", "LogPartition", "SpectralDecoupling", "entropy"]
