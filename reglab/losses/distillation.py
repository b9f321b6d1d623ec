"""Self-distillation losses whose soft targets are stored per training example.

Both losses keep a buffer of shape ``(num_examples, num_classes)`` keyed by the
dataset index, declare ``needs = frozenset({"indices"})`` and are called as
``loss(logits, targets, indices=idx)``; ``reglab.train.train_step`` passes the
indices of batches ``(x, y, index)``. Buffers round-trip through
``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, ShapeError
from reglab.core.validation import check_float, check_int
from reglab.losses.base import REGISTRY, PerExampleState, reduce, target_probs
from reglab.losses.classification import soft_cross_entropy
from reglab.losses.fused import row_loss, target_column_add


@REGISTRY.register("ps_kd")
class PSKD(PerExampleState):
    """Progressive self-knowledge distillation: CE against (1 - alpha_t) onehot(y) + alpha_t p_prev(x).

    .. math:: \\tilde q_i = (1 - \\alpha_t)\\,q_i + \\alpha_t\\, p^{\\text{prev}}_i, \\qquad
              \\alpha_t = \\alpha_T \\,\\frac{\\min(t, T)}{T}, \\qquad \\ell_i = \\mathrm{CE}(z_i, \\tilde q_i)

    In plain text: loss_i = CE(z_i, (1 - alpha_t) q_i + alpha_t p_prev_i), alpha_t = alpha_T * min(t, T) / T.
    p_prev(x_i) is the model's own softmax on example i from the previous
    epoch, stored in the buffer ``predictions`` (num_examples, num_classes) by
    dataset index; on an example's first epoch it is the target itself, so
    the first-epoch target is q_i (as in the reference code).

    Where the epoch t comes from: the loss counts, per example, how many times
    it has been seen in training mode (the buffer ``visits``), and example i
    on its (v+1)-th visit uses t = v + 1. With the trainer's sampling (every
    epoch a reshuffled pass without replacement) this is exactly the 1-based
    epoch index, and p_prev is exactly that example's prediction one epoch
    ago. A per-example count needs no callback or trainer hook, survives a
    ``state_dict`` round trip (resuming continues the schedule), and does not
    drift when the trainer drops the last incomplete batch: an example left
    out of one epoch just keeps its previous t, where a global "examples seen
    / num_examples" counter would advance everyone by a fractional epoch.
    With sampling with replacement t counts visits, not epochs; set
    ``total_epochs`` in expected visits then.

    In eval mode nothing is updated (the targets use the stored state).
    Duplicate indices in one batch: the last write wins.

    References: Kim et al., "Self-Knowledge Distillation with Progressive
    Refinement of Targets" (ICCV 2021); alpha_T = 0.8 in the paper. Checked
    against the authors' code (github.com/lgcnsai/PS-KD-Pytorch, ``main.py``
    and ``loss/pskd_loss.py``): alpha_t = alpha_T (e + 1)/E for the 0-based
    epoch e, the buffer starts as one-hot targets at epoch 0, and it stores the
    detached train-mode softmax of the same forward pass.

    Args:
        num_examples: size of the training set.
        num_classes: K, >= 2.
        total_epochs: T, the epoch at which alpha reaches ``alpha_final``, >= 1.
        alpha_final: alpha_T in [0, 1]; 0.8 in the paper.
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: an argument out of range; indices outside [0, num_examples) at call time.
        MissingContextError: called without ``indices``.
        ShapeError: logits not (n, num_classes), or targets/indices of the wrong shape.
    """

    def __init__(
        self,
        num_examples: int,
        num_classes: int,
        total_epochs: int,
        alpha_final: float = 0.8,
        reduction: str = "mean",
    ):
        super().__init__(num_examples, num_classes, reduction)
        self.total_epochs = check_int("total_epochs", total_epochs, 1)
        self.alpha_final = check_float("alpha_final", alpha_final, 0.0, 1.0)
        self.register_buffer("predictions", torch.zeros(num_examples, num_classes))
        self.register_buffer("visits", torch.zeros(num_examples, dtype=torch.long))

    def alpha(self, indices: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """alpha_t of each example's next training visit: alpha_T * min(visits + 1, T) / T (default dtype)."""
        t = (self.visits[indices.long()] + 1).clamp(max=self.total_epochs)
        return (self.alpha_final * t.double() / self.total_epochs).to(dtype or torch.get_default_dtype())

    def mixed_targets(self, targets: Tensor, indices: Tensor, like: Tensor) -> Tensor:
        """The distillation targets (1 - alpha_t) q + alpha_t p_prev for a batch, in ``like``'s dtype."""
        q = target_probs(like, targets)
        idx = indices.long()
        seen = (self.visits[idx] > 0)[:, None]
        previous = torch.where(seen, self.predictions[idx].to(q.dtype), q)
        alpha = self.alpha(idx, q.dtype)[:, None]
        return (1.0 - alpha) * q + alpha * previous

    def forward(self, logits: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        idx = self._check_batch(logits, targets, indices, "ps_kd")
        values = soft_cross_entropy(logits, self.mixed_targets(targets, idx, logits))
        if self.training:
            with torch.no_grad():
                self._write_rows(self.predictions, idx, F.softmax(logits.detach(), dim=1))
                self.visits[idx] += 1
        return reduce(values, self.reduction)

    def extra_repr(self) -> str:
        return f"total_epochs={self.total_epochs}, alpha_final={self.alpha_final:g}, {super().extra_repr()}"


@REGISTRY.register("xi_distill")
class TeacherGuidedDistillation(PerExampleState):
    """Self-distillation xi * CE(teacher probs, student) + (1 - xi) * CE(labels, student); xi may exceed 1.

    .. math:: \\ell_i = \\xi\\,\\mathrm{CE}(z_i, t_i) + (1 - \\xi)\\,\\mathrm{CE}(z_i, q_i)
              = \\mathrm{CE}\\big(z_i,\\; \\xi\\, t_i + (1 - \\xi)\\, q_i\\big)

    In plain text: loss_i = xi * CE(z_i, t_i) + (1 - xi) * CE(z_i, q_i) = CE(z_i, xi t_i + (1 - xi) q_i).
    t_i is the frozen teacher's softmax on training example i and q_i the
    (noisy) given label. Cross-entropy is linear in its target, so the loss is
    CE against the mixed target. For xi > 1 the given label gets a negative
    weight; the mixed target can then have negative entries and the loss is
    no longer bounded below (it rewards moving away from a label the teacher
    disagrees with), which is the regime the paper studies.

    The teacher needs the inputs x, which the loss contract does not pass
    (``train_step`` gives a loss ``indices`` only). So the teacher's
    probabilities are precomputed per training example and stored in the
    buffer ``teacher_probs`` (num_examples, num_classes), set with
    :meth:`set_teacher` (probabilities) or :meth:`set_teacher_model` (runs the
    frozen teacher once over the training inputs, ordered by dataset index);
    the loss looks them up by ``indices``. With a deterministic teacher and no
    input augmentation this equals evaluating the teacher inside the loss.

    References: Das & Sanghavi, "Understanding Self-Distillation in the
    Presence of Label Noise" (ICML 2023), whose abstract gives the objective
    xi * l(teacher's predictions, student's predictions) + (1 - xi) * l(given
    labels, student's predictions) and finds xi > 1 best under heavy label
    noise (xi ~ 1.2–1.5 at 30–50% noise). Borup & Andersen, "Even your Teacher
    Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by
    Self-Distillation" (NeurIPS 2021) analyse the same weighted objective with
    a squared loss. No reference code was found; the form is from the
    abstract.

    Args:
        num_examples: size of the training set.
        num_classes: K, >= 2.
        xi: weight of the teacher, >= 0; 0.5–1.5 usual (> 1 under heavy label noise).
        reduction: "mean", "sum" or "none".

    Raises:
        ConfigError: an argument out of range; indices outside [0, num_examples) at call time.
        MissingContextError: called without ``indices``, or for examples whose teacher probabilities were never set.
        ShapeError: logits not (n, num_classes), or targets/indices of the wrong shape.
    """

    soft_targets = True

    def __init__(self, num_examples: int, num_classes: int, xi: float = 0.5, reduction: str = "mean"):
        super().__init__(num_examples, num_classes, reduction)
        self.xi = check_float("xi", xi, 0.0)
        self.register_buffer("teacher_probs", torch.zeros(num_examples, num_classes))
        self.register_buffer("teacher_set", torch.zeros(num_examples, dtype=torch.bool))

    @torch.no_grad()
    def set_teacher(self, probs: Tensor, indices: Tensor | Sequence[int] | None = None) -> None:
        """Store teacher probabilities: all rows (``probs`` of shape (num_examples, K)) or the rows ``indices``.

        Raises:
            ShapeError: ``probs`` has the wrong shape.
            ConfigError: rows are not probability vectors (entries >= 0 summing to 1 within 1e-4), or bad indices.
        """
        if indices is None:
            idx = torch.arange(self.num_examples, device=self.teacher_probs.device)
        else:
            idx = torch.as_tensor(indices, device=self.teacher_probs.device)
            if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
                raise ConfigError(f"indices must be a 1-D sequence of ints, got {tuple(idx.shape)} {idx.dtype}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_examples):
                raise ConfigError(
                    f"indices must be in [0, num_examples={self.num_examples}), got [{int(idx.min())}, "
                    f"{int(idx.max())}]"
                )
            idx = idx.long()
        if not isinstance(probs, Tensor) or probs.shape != (len(idx), self.num_classes):
            raise ShapeError(
                f"xi_distill: teacher probs must have shape ({len(idx)}, {self.num_classes}), "
                f"got {tuple(getattr(probs, 'shape', ()))}"
            )
        probs = probs.detach().to(self.teacher_probs)  # the buffer's dtype and device
        if probs.numel():
            err, low = (probs.sum(1) - 1).abs().max().item(), probs.min().item()
            if low < 0 or err > 1e-4 or not bool(torch.isfinite(probs).all()):
                raise ConfigError(
                    "teacher probs must be probability rows (>= 0, summing to 1 within 1e-4), got min entry "
                    f"{low:.3g} and row sums off by up to {err:.3g}; pass softmax(teacher logits)"
                )
        self.teacher_probs[idx] = probs
        self.teacher_set[idx] = True

    @torch.no_grad()
    def set_teacher_model(self, teacher: nn.Module, inputs: Tensor, batch_size: int = 4096) -> None:
        """Run the frozen ``teacher`` on ``inputs`` (the training inputs in dataset-index order) and store its softmax.

        The teacher runs in eval mode without gradients; its train/eval mode is
        restored afterwards and its parameters are not changed.

        Raises:
            ShapeError: ``inputs`` does not have num_examples rows, or the teacher's outputs are not (n, K).
        """
        check_int("batch_size", batch_size, 1)
        if inputs.shape[0] != self.num_examples:
            raise ShapeError(f"inputs must have num_examples={self.num_examples} rows, got {tuple(inputs.shape)}")
        was_training = teacher.training
        teacher.eval()
        try:
            device = next((p.device for p in teacher.parameters()), inputs.device)
            chunks = (inputs[i : i + batch_size].to(device) for i in range(0, len(inputs), batch_size))
            logits = torch.cat([teacher(chunk) for chunk in chunks])
        finally:
            teacher.train(was_training)
        self.set_teacher(F.softmax(logits.float() if logits.dtype == torch.float16 else logits, dim=1))

    def forward(self, logits: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        idx = self._check_batch(logits, targets, indices, "xi_distill")
        missing = ~self.teacher_set[idx]
        if missing.any():
            shown = idx[missing][:5].tolist()
            raise MissingContextError(
                f"xi_distill: no teacher probabilities for {int(missing.sum())} examples of the batch (indices "
                f"{shown}...); call set_teacher(probs) or set_teacher_model(teacher, task_inputs) before training"
            )
        teacher = self.teacher_probs.index_select(0, idx).to(logits.dtype)
        if not targets.is_floating_point():
            return reduce(row_loss(self, logits, targets, teacher), self.reduction)
        mixed = self.xi * teacher + (1.0 - self.xi) * targets.to(logits.dtype)
        return reduce(soft_cross_entropy(logits, mixed), self.reduction)

    # class-index targets: -xi <t, log p> - (1 - xi) log p_y; gradient p (xi sum_k t_k + 1 - xi) - xi t - (1 - xi) e_y
    def _values(self, logp: Tensor, targets: Tensor, teacher: Tensor) -> Tensor:
        return -self.xi * torch.linalg.vecdot(teacher, logp) - (1.0 - self.xi) * logp.gather(1, targets[:, None])[:, 0]

    def _reference(self, logits: Tensor, targets: Tensor, teacher: Tensor) -> Tensor:
        return self._values(F.log_softmax(logits, dim=1), targets, teacher)

    def _fused_forward(self, logits: Tensor, targets: Tensor, teacher: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        logp = F.log_softmax(logits, dim=1)
        return self._values(logp, targets, teacher), (logp,)

    def _fused_backward(self, grad, logits, targets, extra, saved) -> Tensor:
        (teacher,), (logp,) = extra, saved
        scale = grad * (self.xi * teacher.sum(1) + 1.0 - self.xi)
        out = logp.exp().mul_(scale.unsqueeze(1)).addcmul_(teacher, (-self.xi * grad).unsqueeze(1))
        return target_column_add(out, targets, (self.xi - 1.0) * grad)

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, {super().extra_repr()}"
