"""Learning-rate schedules: a factor on each param group's initial lr, stepped once per optimizer step.

Every schedule here is a ``torch.optim.lr_scheduler.LRScheduler``: at construction
it records each group's ``lr`` as ``initial_lr`` and sets ``lr = initial_lr *
factor(0)``; after the ``t``-th optimizer step, ``scheduler.step()`` sets ``lr =
initial_lr * factor(t)``. So optimizer step ``t`` (0-based) runs with
``factor(t)``. A wrapper optimizer that delegates ``param_groups`` to its base
is scheduled like any other.

Members of ``SCHEDULES`` (build with ``get_schedule(name, optimizer, **kwargs)``):

- ``constant``: ``factor(t) = 1``.
- ``linear``: linear warmup then linear decay to ``final`` at ``total_steps``.
- ``warmup_cosine``: linear warmup then cosine decay to ``min_factor`` at ``total_steps``.
- ``refined``: the gradient-norm refinement of Defazio et al. (2023), from the
  gradient norms of an earlier run (:func:`refined_schedule`,
  :class:`GradNormRecorder`).

Example:
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> sched = get_schedule("warmup_cosine", opt, total_steps=1000, warmup_steps=50)
    >>> for batch in batches:
    ...     train_step(model, batch, loss_fn, opt)
    ...     sched.step()
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle

from reglab.core import Callback, ConfigError, Registry, ShapeError
from reglab.core.validation import check_float, check_int

SCHEDULES = Registry("schedule", positional=("optimizer",))


def _check_warmup(warmup_steps: Any, total_steps: int, total_name: str = "total_steps") -> int:
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"warmup_steps must be < {total_name} ({total_steps}), got {warmup_steps}; "
            f"shorten the warmup or lengthen the run"
        )
    return warmup_steps


def _warmup(step: int, warmup_steps: int) -> float:
    """``(step + 1) / warmup_steps`` during the warmup, else 1 (so the last warmup step reaches 1)."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


class FactorSchedule(LRScheduler, abc.ABC):
    """Base class: ``lr_t = initial_lr * factor(t)`` for every param group; subclasses define ``factor``.

    Subclasses set their attributes before calling ``super().__init__(optimizer)``
    (which applies ``factor(0)``). Their hyperparameters live in ``__dict__``, so
    ``state_dict()``/``load_state_dict()`` round-trip them with the step count.

    Raises:
        ConfigError: ``optimizer`` is not a ``torch.optim.Optimizer``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        super().__init__(optimizer)

    @abc.abstractmethod
    def factor(self, step: int) -> float:
        """The multiplier of the initial lr for optimizer step ``step`` (0-based)."""

    def get_lr(self) -> list[float | Tensor]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


@SCHEDULES.register("constant")
class ConstantSchedule(FactorSchedule):
    """Constant learning rate: factor(t) = 1.

    Example:
        >>> sched = get_schedule("constant", torch.optim.SGD(model.parameters(), lr=0.1))

    Args:
        optimizer: the optimizer whose param groups are scheduled.
    """

    def factor(self, step: int) -> float:
        return 1.0


@SCHEDULES.register("linear")
class LinearSchedule(FactorSchedule):
    """Linear decay from 1 to ``final`` over ``total_steps``, after an optional linear warmup.

    ``factor(t) = (t + 1) / W`` for ``t < W`` (W = ``warmup_steps``), then
    ``1 - (1 - final) * (t - W) / (total_steps - W)``, and ``final`` for
    ``t >= total_steps``. With ``final = 0`` this is the schedule that
    "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement"
    (Defazio et al., 2023) proves worst-case optimal for the last iterate,
    ``eta_t = eta_0 (1 - t / T)``.

    Example:
        >>> sched = get_schedule("linear", opt, total_steps=1000, warmup_steps=50)

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        total_steps: step at which the factor reaches ``final``, >= 1.
        warmup_steps: linear warmup length, in [0, total_steps); 0 (none) or a few % of the run usual.
        final: factor at and after ``total_steps``, in [0, 1].

    Raises:
        ConfigError: an argument out of range, or ``warmup_steps >= total_steps``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, final: float = 0.0):
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.warmup_steps = _check_warmup(warmup_steps, self.total_steps)
        self.final = check_float("final", final, 0.0, 1.0)
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 1.0 - (1.0 - self.final) * progress


@SCHEDULES.register("warmup_cosine")
class WarmupCosineSchedule(FactorSchedule):
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``.

    ``factor(t) = (t + 1) / W`` for ``t < W``, then with ``p = min(1, (t - W) /
    (total_steps - W))``: ``min_factor + (1 - min_factor) * (1 + cos(pi p)) / 2``.

    References: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (2017);
    Goyal et al., "Accurate, Large Minibatch SGD" (2017) for the linear warmup.

    Example:
        >>> sched = get_schedule("warmup_cosine", opt, total_steps=1000, warmup_steps=50, min_factor=0.01)

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        total_steps: step at which the factor reaches ``min_factor``, >= 1.
        warmup_steps: linear warmup length, in [0, total_steps).
        min_factor: factor at and after ``total_steps``, in [0, 1]; 0–0.1 usual.

    Raises:
        ConfigError: an argument out of range, or ``warmup_steps >= total_steps``.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0
    ):
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.warmup_steps = _check_warmup(warmup_steps, self.total_steps)
        self.min_factor = check_float("min_factor", min_factor, 0.0, 1.0)
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _as_norms(grad_norms: Sequence[float] | Tensor) -> Tensor:
    try:
        g = torch.as_tensor(grad_norms, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ShapeError(f"grad_norms must be a 1-D sequence of numbers, got {type(grad_norms).__name__}") from None
    if g.dim() != 1 or g.numel() < 2:
        raise ShapeError(f"grad_norms must be 1-D with at least 2 entries, got shape {tuple(g.shape)}")
    bad = ~torch.isfinite(g) | (g <= 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ConfigError(
            f"grad_norms must be finite and > 0, got {g[i].item()!r} at step {i}; "
            "drop the steps of a diverged run or a step without gradients"
        )
    return g


def median_smooth(values: Tensor, width: int) -> Tensor:
    """Running median of a 1-D tensor over an odd window, with the edges of the refinement reference code.

    The window is centred; past the start the first value is repeated, past the
    end the sequence is mirrored (``..., x[T-2], x[T-1], x[T-2], ...``,
    repeatedly if the window is longer than the sequence). This is what
    ``scipy.ndimage.median_filter(np.pad(x, (0, pad), mode="reflect"),
    size=width, mode="nearest")[:-pad]`` computes in the authors' recipe.

    Args:
        values: 1-D tensor.
        width: odd window length, >= 1.

    Returns:
        Tensor of the same shape and dtype.

    Raises:
        ConfigError: ``width`` is not an odd int >= 1.
    """
    width = check_int("width", width, 1)
    if width % 2 == 0:
        raise ConfigError(f"width must be odd, got {width}")
    half = width // 2
    n = values.numel()
    if half == 0:
        return values.clone()
    period = 2 * (n - 1)
    if period == 0:
        right = values[-1:].expand(half)
    else:
        k = torch.arange(n, n + half) % period
        right = values[torch.where(k < n, k, period - k)]
    padded = torch.cat([values[:1].expand(half), values, right])
    return padded.unfold(0, width, 1).median(dim=1).values


def refined_schedule(
    grad_norms: Sequence[float] | Tensor,
    *,
    power: float = 2.0,
    smoothing: float = 0.1,
    warmup_steps: int = 0,
) -> Tensor:
    """The refined schedule of Defazio et al. (2023): lr factors from the gradient norms of an earlier run.

    With ``G_t`` the gradient norm at step ``t`` of a previous run of ``T`` steps::

        g = running median of G over a window of 2 * floor(smoothing * T / 2) + 1 steps
        u_t = g_t ** (-power)
        w_t = u_t * sum_{p = t+1}^{T-1} u_p          (w_{T-1} = 0)
        factor_t = w_t / max_s w_s                    (largest factor is 1)
        factor_t *= min(1, (t + 1) / warmup_steps)    (only if warmup_steps > 0)

    ``power = 2`` with Euclidean norms is the SGD rule (the paper's Algorithm
    1); ``power = 1`` with l1 norms ``||g_t||_1`` is the Adam rule. When
    ``G`` is constant, ``factor_t = 1 - t / (T - 1)``: refinement reduces to
    linear decay, the worst-case optimal schedule. Rising norms late in
    training give a fast final anneal; small early norms give a warm-up.

    The mapping is the authors' ``find_closed_form_schedule``
    (github.com/facebookresearch/adaptive_scheduling, ``find_schedule.py``), with
    ``weights = G ** -2`` (l2) or ``G ** -1`` (l1) and normalization by the
    maximum as in their ``visual.py``; the median-filter width and edge handling
    follow their README (``sigma2 = 0.1`` of the run length there). The optional
    extra linear warmup multiplies the refined factors (our addition; the refined
    schedule often has its own warm-up).

    References: Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much?
    Adaptive Learning Rate Scheduling by Refinement" (2023).

    Example:
        >>> recorder = GradNormRecorder()            # pass as a Trainer callback in a first run
        >>> factors = refined_schedule(recorder.norms, smoothing=0.1)
        >>> sched = get_schedule("refined", opt, grad_norms=recorder.norms)

    Args:
        grad_norms: per-step gradient norms of a previous run, 1-D, length T >= 2, finite and > 0.
        power: exponent p in ``u_t = g_t^-p``, > 0; 2 for SGD (l2 norms), 1 for Adam (l1 norms).
        smoothing: median-filter window as a fraction of T, in [0, 1]; 0 disables smoothing, 0.1 in the paper.
        warmup_steps: extra linear warmup, in [0, T).

    Returns:
        float64 tensor of T factors in [0, 1]; the last is 0.

    Raises:
        ShapeError: ``grad_norms`` is not 1-D with at least 2 entries.
        ConfigError: a norm is not finite or not > 0, or another argument is out of range.
    """
    g = _as_norms(grad_norms)
    power = check_float("power", power, 0.0, low_open=True)
    smoothing = check_float("smoothing", smoothing, 0.0, 1.0)
    n = g.numel()
    warmup_steps = _check_warmup(warmup_steps, n, "len(grad_norms)")
    width = 2 * (int(smoothing * n) // 2) + 1
    u = median_smooth(g, width) ** (-power)
    tail = torch.cat([u.flip(0).cumsum(0).flip(0)[1:], u.new_zeros(1)])  # sum_{p > t} u_p
    w = u * tail
    factors = w / w.max()
    if warmup_steps > 0:
        ramp = torch.arange(1, n + 1, dtype=torch.float64, device=factors.device) / warmup_steps
        factors = factors * ramp.clamp(max=1.0)
    return factors


@SCHEDULES.register("refined")
class RefinedSchedule(FactorSchedule):
    """Gradient-norm refined schedule (Defazio et al., 2023) from the norms recorded in an earlier run.

    ``factor(t)`` is :func:`refined_schedule` of ``grad_norms`` at step ``t``
    and its last value (0) for ``t >= len(grad_norms)``: run the new training
    for the same number of steps as the recorded run.

    References: Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much?
    Adaptive Learning Rate Scheduling by Refinement" (2023).

    Example:
        >>> rec = GradNormRecorder()
        >>> Trainer(task, model, loss, opt, steps=500, callbacks=[rec]).fit()   # first run
        >>> opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
        >>> sched = get_schedule("refined", opt2, grad_norms=rec.norms)
        >>> Trainer(task, model2, loss, opt2, steps=500, scheduler=sched).fit()

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        grad_norms: per-step gradient norms of the earlier run (see :func:`refined_schedule`).
        power: 2 for SGD with l2 norms, 1 for Adam with l1 norms.
        smoothing: median-filter window as a fraction of the run, in [0, 1].
        warmup_steps: extra linear warmup, in [0, len(grad_norms)).

    Raises:
        ShapeError, ConfigError: as :func:`refined_schedule`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        grad_norms: Sequence[float] | Tensor,
        power: float = 2.0,
        smoothing: float = 0.1,
        warmup_steps: int = 0,
    ):
        factors = refined_schedule(grad_norms, power=power, smoothing=smoothing, warmup_steps=warmup_steps)
        self.power, self.smoothing, self.warmup_steps = float(power), float(smoothing), int(warmup_steps)
        self.factors: list[float] = factors.tolist()
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        return self.factors[min(step, len(self.factors) - 1)]


def get_schedule(name: str, optimizer: torch.optim.Optimizer, **kwargs: Any) -> LRScheduler:
    """Build the schedule ``name`` on ``optimizer``, e.g. ``get_schedule("linear", opt, total_steps=100)``.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ConfigError: a keyword argument is not accepted or is out of range.
    """
    return SCHEDULES.get(name, optimizer, **kwargs)


def _params_norm(params: Sequence[Tensor], norm_type: float) -> float:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, norm_type)), norm_type).item()


class GradNormRecorder(Callback):
    """Record the gradient norm of every optimizer step, the input of the refined schedule.

    As a :class:`reglab.train.Trainer` callback it appends, after each step, the
    ``grad_norm`` that ``train_step`` reports (the l2 norm of the objective's
    gradient at the step's starting point, for plain and closure-based
    optimizers alike); with ``norm_type=1`` it computes the l1 norm of the
    gradients then held by the parameters (for SAM-like optimizers these come
    from the last closure evaluation, at the perturbed point). The record
    restarts at ``on_train_begin``.

    Outside the trainer, :meth:`attach` records through a step pre-hook
    (``torch.optim.Optimizer.register_step_pre_hook``): each ``optimizer.step()``
    first appends the norm of the gradients present. Steps the trainer skips
    (a non-finite loss) are not recorded in either mode.

    Example:
        >>> rec = GradNormRecorder().attach(opt)
        >>> for batch in batches:
        ...     train_step(model, batch, loss_fn, opt)
        >>> rec.detach()
        >>> factors = rec.schedule()          # refined_schedule(rec.norms, power=2)

    Args:
        norm_type: 2 (l2, with ``power=2`` for SGD) or 1 (l1, with ``power=1`` for Adam).

    Attributes:
        norms: the recorded norms, one per step.

    Raises:
        ConfigError: ``norm_type`` is not 1 or 2.
    """

    def __init__(self, norm_type: float = 2.0):
        if isinstance(norm_type, bool) or norm_type not in (1, 2):
            raise ConfigError(f"norm_type must be 1 or 2, got {norm_type!r}")
        self.norm_type = float(norm_type)
        self.norms: list[float] = []
        self._handle: RemovableHandle | None = None

    # -- trainer callback ---------------------------------------------------
    def on_train_begin(self, trainer: Any) -> None:
        if self._handle is None:
            self.norms = []

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        if self._handle is not None:  # the hook already recorded this step
            return
        if self.norm_type == 2.0 and "grad_norm" in info:
            self.norms.append(float(info["grad_norm"]))
        else:
            params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
            self.norms.append(_params_norm(params, self.norm_type))

    # -- optimizer hook -----------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> GradNormRecorder:
        """Record the gradient norm before every ``optimizer.step()``; returns ``self``.

        Raises:
            ConfigError: the recorder is already attached; the optimizer needs a closure
                (its gradients before ``step`` are stale: use the Trainer callback instead);
                or it has no step hooks (a wrapper that bypasses ``Optimizer.__init__``).
        """
        if self._handle is not None:
            raise ConfigError("this GradNormRecorder is already attached; call detach() first")
        if getattr(optimizer, "requires_closure", False):
            raise ConfigError(
                f"{type(optimizer).__name__} evaluates the gradient inside step(closure), so the gradients before "
                "step are stale; pass the GradNormRecorder to the Trainer as a callback instead"
            )
        if not hasattr(optimizer, "_optimizer_step_pre_hooks"):
            raise ConfigError(
                f"{type(optimizer).__name__} does not support step hooks; pass the GradNormRecorder to the Trainer"
            )

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            params = [p for group in opt.param_groups for p in group["params"]]
            self.norms.append(_params_norm(params, self.norm_type))

        self._handle = optimizer.register_step_pre_hook(hook)
        return self

    def detach(self) -> None:
        """Stop recording through the optimizer hook (no-op if not attached)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def schedule(self, **kwargs: Any) -> Tensor:
        """:func:`refined_schedule` of the recorded norms, with ``power`` defaulting to ``norm_type``."""
        kwargs.setdefault("power", self.norm_type)
        return refined_schedule(self.norms, **kwargs)


__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "FactorSchedule",
    "GradNormRecorder",
    "LinearSchedule",
    "RefinedSchedule",
    "WarmupCosineSchedule",
    "get_schedule",
    "median_smooth",
    "refined_schedule",
]
