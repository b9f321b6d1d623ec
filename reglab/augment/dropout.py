"""Dropout variants: early/late dropout schedules (trainer callbacks), multi-sample dropout and nested dropout.

None of these is an ``(inputs, targets)`` batch augmentation, so none is in
:data:`reglab.augment.REGISTRY`:

- :class:`EarlyDropout` and :class:`LateDropout` are :class:`reglab.core.Callback`
  s that set ``p`` of the model's dropout modules as a function of the step;
- :class:`MultiSampleDropoutHead` is an ``nn.Module`` that wraps a model's head;
- :class:`NestedDropout` is an ``nn.Module`` to insert on a feature vector.

Randomness: the two modules draw from ``generator`` when one is given and from
torch's global generator otherwise (the :class:`~reglab.train.Trainer` seeds
it). The schedules draw nothing.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reglab.augment.draws import check_generator, uniform_draws
from reglab.core import Callback, ConfigError, ShapeError
from reglab.core.validation import check_bool, check_choice, check_float, check_int

#: The modules whose ``p`` the schedules set: torch's dropout layers.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The model's dropout modules (instances of :data:`DROPOUT_TYPES`), in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]


# -- schedules --------------------------------------------------------------------------------------------


class _DropoutSchedule(Callback, abc.ABC):
    """Sets ``p`` of every dropout module of ``trainer.model`` to ``rate_at(t)`` before step t (0-based)."""

    name = "dropout_schedule"

    def __init__(self) -> None:
        self._modules: list[nn.Module] | None = None
        self._model_id: int | None = None
        self.current_p: float | None = None

    @abc.abstractmethod
    def rate_at(self, step: int) -> float:
        """Dropout probability of (0-based) step ``step``."""

    def _find(self, trainer: Any) -> list[nn.Module]:
        model = trainer.model
        if self._modules is None or self._model_id != id(model):
            modules = dropout_modules(model)
            if not modules:
                raise ConfigError(
                    f"{self.name}: {type(model).__name__} has no dropout module (nn.Dropout and the like) whose p "
                    "the schedule could set; add one, e.g. a reglab.tasks model built with dropout > 0 "
                    "(the schedule overrides its p)"
                )
            self._modules, self._model_id = modules, id(model)
        return self._modules

    def _set(self, trainer: Any, step: int) -> None:
        rate = self.rate_at(step)
        for module in self._find(trainer):
            module.p = rate
        self.current_p = rate

    def on_train_begin(self, trainer: Any) -> None:
        """Set the rate of the first step, ``trainer.step`` (0 for a fresh trainer)."""
        self._set(trainer, int(getattr(trainer, "step", 0)))

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        """After ``step`` steps, set the rate of the next step, whose 0-based index is ``step``."""
        self._set(trainer, step)


class EarlyDropout(_DropoutSchedule):
    """Early dropout: dropout only during the first ``until`` steps, then none.

    For (0-based) step t, the dropout probability of every dropout module of
    the model is

        constant:  p_t = p                      for t < until,  0 after
        linear:    p_t = p * (1 - t / (until - 1))  for t < until,  0 after

    (linear: p at step 0 down to 0 at step until - 1, ``np.linspace(p, 0,
    until)``). Meant for *underfitting* models: dropout early in training
    reduces the variance of mini-batch gradients across batches and aligns them
    with the full-data gradient, and turning it off lets the model then fit the
    data, ending at a lower training loss than without dropout.

    References: Liu, Xu, Jin, Shen & Darrell, "Dropout Reduces Underfitting"
    (ICML 2023). Checked against the authors' code
    (github.com/facebookresearch/dropout, ``drop_scheduler.py``): a
    per-iteration schedule, ``mode="early"`` with ``schedule="constant"``
    (``np.full``) or ``"linear"`` (``np.linspace(drop_rate, 0, early_iters)``),
    0 afterwards; their ImageNet recipe uses p = 0.1 with the linear schedule
    for the first 50 of 300 epochs (``--cutoff_epoch 50``). ``until`` is in
    optimizer steps (``cutoff_epoch * iters_per_epoch`` in theirs).

    The callback sets ``module.p`` before every step (in ``on_train_begin``
    for the first, in ``on_step_end`` for the next); the last value stays on
    the model after training. Eval mode ignores ``p`` as usual.

    Example:
        >>> model = task.make_model(dropout=0.1)       # any p: the schedule sets it
        >>> Trainer(task, model, loss, opt, steps=3000, callbacks=[EarlyDropout(p=0.1, until=500)]).fit()

    Args:
        p: dropout probability during the early phase, in [0, 1); 0.05–0.2 usual.
        until: number of steps with dropout, >= 0 (about 1/6 of training in the paper).
        schedule: ``"constant"`` or ``"linear"`` (the paper's recipe).

    Raises:
        ConfigError: an argument out of range; (at train begin) a model without dropout modules.
    """

    name = "early_dropout"

    def __init__(self, p: float = 0.1, until: int = 1000, schedule: str = "constant"):
        super().__init__()
        self.p = check_float("p", p, 0.0, 1.0, high_open=True)
        self.until = check_int("until", until, 0)
        self.schedule = check_choice("schedule", schedule, ("constant", "linear"))

    def rate_at(self, step: int) -> float:
        if step >= self.until:
            return 0.0
        if self.schedule == "constant" or self.until == 1:
            return self.p
        return self.p * (1.0 - step / (self.until - 1))

    def __repr__(self) -> str:
        return f"EarlyDropout(p={self.p:g}, until={self.until}, schedule={self.schedule!r})"


class LateDropout(_DropoutSchedule):
    """Late dropout: no dropout for the first ``start`` steps, then dropout p.

    For (0-based) step t: p_t = 0 for t < start and p for t >= start. Meant
    for *overfitting* models: training starts without the regularizer and it
    is switched on once the model is fitting the data.

    References: Liu, Xu, Jin, Shen & Darrell, "Dropout Reduces Underfitting"
    (ICML 2023). Checked against the authors' code
    (github.com/facebookresearch/dropout, ``drop_scheduler.py``):
    ``mode="late"`` allows only the constant schedule (0, then ``drop_rate``);
    their recipe applies it to stochastic depth (0.4 on ViT-B from epoch 50 of
    300). Here it sets ``p`` of the model's dropout modules; the callback mechanics
    are those of :class:`EarlyDropout`.

    Example:
        >>> Trainer(task, model, loss, opt, steps=3000, callbacks=[LateDropout(p=0.3, start=500)]).fit()

    Args:
        p: dropout probability after ``start``, in [0, 1).
        start: first step (0-based) with dropout, >= 0.

    Raises:
        ConfigError: an argument out of range; (at train begin) a model without dropout modules.
    """

    name = "late_dropout"

    def __init__(self, p: float = 0.1, start: int = 1000):
        super().__init__()
        self.p = check_float("p", p, 0.0, 1.0, high_open=True)
        self.start = check_int("start", start, 0)

    def rate_at(self, step: int) -> float:
        return self.p if step >= self.start else 0.0

    def __repr__(self) -> str:
        return f"LateDropout(p={self.p:g}, start={self.start})"


# -- multi-sample dropout --------------------------------------------------------------------------------


def _rand_like(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) draws of ``shape`` in ``like``'s dtype, on ``like``'s device."""
    if generator is None:
        return torch.rand(shape, dtype=like.dtype, device=like.device)
    return torch.rand(shape, dtype=like.dtype, device=generator.device, generator=generator).to(like.device)


class MultiSampleDropoutHead(nn.Module):
    """Multi-sample dropout around a head: M dropout masks on the features, the shared head on each, logits averaged.

    In training mode, for features h of shape (n, ...),

        z_m = head(h * b_m / (1 - p)),   b_m ~ Bernoulli(1 - p) elementwise,  m = 1..M
        forward(h) = (1 / M) * sum_m z_m

    computed in one batched call of the head on the M copies. In eval mode (or
    with p = 0) ``forward(h) = head(h)``. The masks are drawn as
    ``b_m = torch.rand((M, *h.shape), dtype=h.dtype) >= p`` from ``generator``
    or torch's global generator.

    Loss averaging vs logit averaging: the paper ("Multi-Sample Dropout for
    Accelerated Training and Better Generalization", Inoue, 2019) computes
    the loss of every dropout sample and averages the *losses*,
    L = (1 / M) sum_m loss(z_m, y). ``forward`` averages the *logits* instead,
    so that the wrapped model is an ordinary model (one (n, K) output) that
    any reglab loss, penalty and :func:`~reglab.train.train_step` accept. The
    two differ: cross-entropy is convex in the logits, so
    CE(mean_m z_m, y) <= mean_m CE(z_m, y), and for a linear head the averaged
    logits are head(h * mean_m b_m / (1 - p)): a single dropout pass whose mask
    noise has 1/M of the variance, i.e. a weaker regularizer. For the paper's
    objective use :meth:`samples` and :func:`multi_sample_loss`::

        z = model.readout.samples(model.features(x))   # (M, n, K)
        loss = multi_sample_loss(CrossEntropy(), z, y)

    Hyperparameters: M = 8 is the common choice (2–8), p as for ordinary
    dropout (0.1–0.5); the extra cost is M passes through the head only.

    Example:
        >>> model.readout = MultiSampleDropoutHead(model.readout, p=0.5, n_samples=8)

    Args:
        head: the module after the dropout point (e.g. the final linear layer), applied to a batch.
        p: dropout probability, in [0, 1).
        n_samples: M, number of dropout masks, >= 1.
        generator: a ``torch.Generator`` for the masks; None draws from torch's global generator.

    Raises:
        ConfigError: an argument out of range, or ``head`` is not an ``nn.Module``.
        ShapeError: (at call time) features without a batch dimension.
    """

    def __init__(
        self, head: nn.Module, p: float = 0.5, n_samples: int = 8, *, generator: torch.Generator | None = None
    ):
        super().__init__()
        if not isinstance(head, nn.Module):
            raise ConfigError(f"head must be an nn.Module, got {type(head).__name__}")
        self.head = head
        self.p = check_float("p", p, 0.0, 1.0, high_open=True)
        self.n_samples = check_int("n_samples", n_samples, 1)
        self.generator = check_generator(generator)

    def samples(self, h: Tensor) -> Tensor:
        """The M head outputs z_m = head(dropout_m(h)), stacked: shape (M, n, ...); in eval mode all equal head(h)."""
        if h.ndim == 0:
            raise ShapeError(f"multi_sample_dropout needs features of shape (n, ...), got {tuple(h.shape)}")
        m, n = self.n_samples, h.shape[0]
        if not self.training or self.p == 0.0:
            z = self.head(h)
            return z.unsqueeze(0).expand(m, *z.shape).clone()
        keep = _rand_like((m, *h.shape), h, self.generator) >= self.p
        dropped = h.unsqueeze(0) * keep.to(h.dtype) / (1.0 - self.p)
        out = self.head(dropped.reshape(m * n, *h.shape[1:]))
        return out.reshape(m, n, *out.shape[1:])

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return self.head(h)
        return self.samples(h).mean(dim=0)

    def extra_repr(self) -> str:
        return f"p={self.p:g}, n_samples={self.n_samples}"


def multi_sample_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], sample_outputs: Tensor, targets: Tensor) -> Tensor:
    """The paper's multi-sample dropout objective: (1 / M) * sum_m loss_fn(sample_outputs[m], targets).

    Args:
        loss_fn: a loss ``loss(outputs, targets)`` returning a scalar (``reduction="mean"`` or ``"sum"``).
        sample_outputs: (M, n, ...) outputs, e.g. :meth:`MultiSampleDropoutHead.samples`.
        targets: the targets of the n examples.

    Raises:
        ShapeError: ``sample_outputs`` has no sample dimension.
    """
    if sample_outputs.ndim < 2:
        raise ShapeError(f"sample_outputs must have shape (M, n, ...), got {tuple(sample_outputs.shape)}")
    losses = [loss_fn(z, targets) for z in sample_outputs.unbind(0)]
    return torch.stack(losses).mean(dim=0)


# -- nested dropout --------------------------------------------------------------------------------------

_DISTRIBUTIONS = ("geometric", "gaussian")


class NestedDropout(nn.Module):
    """Nested dropout: keep only the first b units of the feature vector, b random; identity in eval mode.

    In training mode, for x of shape (n, D, ...) (units along dimension 1),

        y[i, j] = x[i, j]  if j < b_i,  else 0       (j = 0..D-1; no rescaling)

    with b_i in {1, ..., D} drawn per example (``per_example=True``, as in
    Rippel et al.) or once per batch (``per_example=False``, as in the
    noisy-labels reference code). Units after a random index are dropped
    together, which orders the units by importance (the first ones are trained
    most often) and, on penultimate features, acts as a compression /
    information-bottleneck constraint that resists fitting noisy labels.

    Distributions of b:

    - ``"geometric"`` (Rippel et al.): P(b) = p (1 - p)^(b - 1), b = 1, 2, ...,
      mean 1/p, truncated at D (b >= D keeps everything). Sampled by inversion:
      b = 1 + floor(log(1 - u) / log(1 - p)), u ~ U[0, 1). (Rippel writes
      p_B(b) = rho^(b-1) (1 - rho), i.e. rho = 1 - p.)
    - ``"gaussian"`` (the noisy-labels code): P(b) proportional to
      exp(-(b / sigma)^2) for b = 1..D, a discretized half-Gaussian.

    References: Rippel, Gelbart & Adams, "Learning Ordered Representations
    with Nested Dropout" (ICML 2014); Chen, Shen, Hu & Suykens, "Compressing
    Features for Learning with Noisy Labels" (IEEE TNNLS 2022), whose code
    (github.com/yingyichen-cyy/Nested-Co-teaching, ``nested/train_resnet.py``)
    applies nested dropout to the penultimate features with one b per
    mini-batch drawn from ``GaussianDist(0, nested, D)`` = exp(-((b - 0) /
    nested)^2), nested = 10 on CIFAR-10 and 100 on CIFAR-100, no rescaling,
    and at test time picks the best truncation on validation data (not done
    here: eval mode keeps all units).

    Example:
        >>> feats = nn.Sequential(model.body, NestedDropout(p=0.1))

    Args:
        p: geometric success probability, in (0, 1]; mean kept units 1/p (``"geometric"`` only).
        distribution: ``"geometric"`` or ``"gaussian"``.
        sigma: scale of the half-Gaussian, > 0 (``"gaussian"`` only); 10 (CIFAR-10) to 100 (CIFAR-100).
        per_example: one b per example (True) or one per batch (False).
        generator: a ``torch.Generator`` to draw b from; None draws from torch's global generator.

    Raises:
        ConfigError: an argument out of range.
        ShapeError: (at call time) an input with fewer than 2 dimensions.
    """

    def __init__(
        self,
        p: float = 0.1,
        *,
        distribution: str = "geometric",
        sigma: float = 10.0,
        per_example: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.p = check_float("p", p, 0.0, 1.0, low_open=True)
        self.distribution = check_choice("distribution", distribution, _DISTRIBUTIONS)
        self.sigma = check_float("sigma", sigma, 0.0, low_open=True)
        check_bool("per_example", per_example)
        self.per_example = per_example
        self.generator = check_generator(generator)
        self.last_kept: Tensor | None = None

    def sample_kept(self, count: int, units: int) -> Tensor:
        """``count`` draws of b in {1, ..., units} (int64, CPU)."""
        u = uniform_draws((count,), self.generator)
        if self.distribution == "geometric":
            if self.p == 1.0:
                return torch.ones(count, dtype=torch.long)
            b = 1.0 + torch.floor(torch.log1p(-u) / math.log1p(-self.p))
            return b.clamp(max=units).long()
        support = torch.arange(1, units + 1, dtype=torch.float64)
        weights = torch.exp(-((support / self.sigma) ** 2))
        cdf = torch.cumsum(weights, 0) / weights.sum()
        return (torch.searchsorted(cdf, u, right=True) + 1).clamp(max=units)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if x.ndim < 2:
            raise ShapeError(f"nested_dropout needs inputs of shape (n, D, ...), got {tuple(x.shape)}")
        n, units = x.shape[0], x.shape[1]
        kept = self.sample_kept(n if self.per_example else 1, units).expand(n)
        self.last_kept = kept
        mask = torch.arange(units, device=x.device) < kept.to(x.device)[:, None]
        mask = mask.reshape(n, units, *([1] * (x.ndim - 2)))
        return x.masked_fill(~mask, 0)

    def extra_repr(self) -> str:
        scale = f"p={self.p:g}" if self.distribution == "geometric" else f"sigma={self.sigma:g}"
        return f"{scale}, distribution={self.distribution!r}, per_example={self.per_example}"


__all__ = [
    "DROPOUT_TYPES",
    "EarlyDropout",
    "LateDropout",
    "MultiSampleDropoutHead",
    "NestedDropout",
    "dropout_modules",
    "multi_sample_loss",
]
