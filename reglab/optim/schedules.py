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
- ``onecycle``: Smith & Topping's 1cycle (:class:`OneCycleSchedule`), the lr up to
  its peak and down far below while the momentum cycles the other way; unlike
  the factor schedules it also sets each group's momentum (``momentum`` or beta1).
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
from reglab.core.validation import check_bool, check_choice, check_float, check_int

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


def _per_group(name: str, value: Any, n: int, check: Any) -> list[float]:
    """``value`` (a number, or a list with one number per param group) as ``n`` checked floats."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(
                f"{name} must be a number or a list of {n} (one per param group), got {len(value)} values"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * n


def _momentum_key(group: dict[str, Any]) -> str | None:
    """Which key of ``group`` holds its momentum: ``betas`` (beta1 cycles), ``momentum``, or None."""
    if isinstance(group.get("betas"), (tuple, list)):
        return "betas"
    return "momentum" if "momentum" in group else None


@SCHEDULES.register("onecycle")
class OneCycleSchedule(LRScheduler):
    """Smith & Topping's 1cycle: the lr rises from ``max_lr / div_factor`` to ``max_lr``, then anneals far below.

    With ``T = total_steps``, ``a = pct_start * T - 1`` and, per param group, ``initial = max_lr / div_factor``
    and ``min = initial / final_div_factor``, optimizer step ``t`` (0-based) runs with::

        two phases:      t in [0, a]        lr initial -> max_lr    momentum max_momentum -> base_momentum
                         t in (a, T - 1]    lr max_lr -> min        momentum base_momentum -> max_momentum
        three_phase:     t in [0, a]        lr initial -> max_lr    momentum max_momentum -> base_momentum
                         t in (a, 2a]       lr max_lr -> initial    momentum base_momentum -> max_momentum
                         t in (2a, T - 1]   lr initial -> min       momentum max_momentum
        x -> y over the phase [s, e]:  anneal(x, y, p), p = (t - s) / (e - s)
        anneal(x, y, p) = y + (x - y) (1 + cos(pi p)) / 2   ("cos")   or   x + (y - x) p   ("linear")

    so the momentum runs against the lr. These are the phases, formulas and
    defaults of ``torch.optim.lr_scheduler.OneCycleLR`` (this class reproduces its lr and momentum at every step
    ``t < T``, see the tests); the differences: ``max_lr`` defaults to each group's own lr (so a config's
    optimizer ``lr`` is the peak, and Muon's matrix and AdamW groups each peak at their own lr), momentum cycles
    per group on the key that group has (``betas``: beta1 for the Adam family and Muon's AdamW side;
    ``momentum``: SGD, the Muon family's matrices; a group with neither is left alone), and from ``t = T - 1``
    on the lr stays at its minimum instead of torch's error past ``T`` (a phase of length 0 is taken as
    finished). As in torch, ``SGD`` built with ``momentum = 0`` gets the cycled momentum; set
    ``cycle_momentum=False`` to keep it off. The hyperparameters and per-group values live in the scheduler,
    so ``state_dict()``/``load_state_dict()`` resume it (the groups' lr and momentum are in the optimizer's).

    References: Smith & Topping, "Super-Convergence: Very Fast Training of Neural Networks Using Large Learning
    Rates" (2017/2019); Smith, "A disciplined approach to neural network hyper-parameters: Part 1" (2018).

    Example:
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)     # lr: the peak
        >>> sched = get_schedule("onecycle", opt, total_steps=1000)            # 0.016 -> 0.4 -> 1.6e-6

    Args:
        optimizer: the optimizer whose param groups are scheduled (a wrapper's are its base's).
        total_steps: number of optimizer steps of the run, >= 1.
        max_lr: the peak lr, a number or one per group, > 0; None: each group's lr (``initial_lr`` if set).
        pct_start: fraction of the run spent raising the lr, in [0, 1] (0.3 usual; <= 0.5 with ``three_phase``).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle the momentum inversely to the lr.
        base_momentum: momentum at the lr's peak, in [0, 1), a number or one per group (0.85).
        max_momentum: momentum at the start and end, in [0, 1), a number or one per group (0.95).
        div_factor: ``max_lr / initial lr``, > 0 (25).
        final_div_factor: ``initial lr / final lr``, > 0 (1e4).
        three_phase: fall back to the initial lr symmetrically before the final annihilation (Smith's first shape).

    Raises:
        ConfigError: an argument out of range, a list of the wrong length, ``pct_start > 0.5`` with
            ``three_phase``, or ``cycle_momentum`` on an optimizer none of whose groups has a momentum.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        max_lr: float | Sequence[float] | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        groups = optimizer.param_groups
        self.total_steps = check_int("total_steps", total_steps, 1)
        self.pct_start = check_float("pct_start", pct_start, 0.0, 1.0)
        self.anneal_strategy = check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        self.cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        self.three_phase = check_bool("three_phase", three_phase)
        if self.three_phase and self.pct_start > 0.5:
            raise ConfigError(f"pct_start must be <= 0.5 with three_phase (two rising phases), got {pct_start!r}")
        div_factor = check_float("div_factor", div_factor, 0.0, low_open=True)
        final_div_factor = check_float("final_div_factor", final_div_factor, 0.0, low_open=True)
        self.div_factor, self.final_div_factor = div_factor, final_div_factor

        def positive(name: str, v: Any) -> float:
            return check_float(name, v, 0.0, low_open=True)

        def unit(name: str, v: Any) -> float:
            return check_float(name, v, 0.0, 1.0, high_open=True)

        own = [g.get("initial_lr", g["lr"]) for g in groups]
        self.max_lrs = _per_group("max_lr", own if max_lr is None else max_lr, len(groups), positive)
        self.initial_lrs = [m / div_factor for m in self.max_lrs]
        self.min_lrs = [i / final_div_factor for i in self.initial_lrs]
        self.base_momenta = _per_group("base_momentum", base_momentum, len(groups), unit)
        self.max_momenta = _per_group("max_momentum", max_momentum, len(groups), unit)
        self.momentum_keys = [_momentum_key(g) if self.cycle_momentum else None for g in groups]
        if self.cycle_momentum and not any(self.momentum_keys):
            raise ConfigError(
                f"cycle_momentum: no param group of {type(optimizer).__name__} has a 'momentum' or 'betas' to "
                "cycle; set cycle_momentum=False"
            )
        end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            self.phases = [
                (end, "initial", "max"),
                (2 * end, "max", "initial"),
                (self.total_steps - 1, "initial", "min"),
            ]
        else:
            self.phases = [(end, "initial", "max"), (self.total_steps - 1, "max", "min")]
        super().__init__(optimizer)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self, step: int) -> tuple[int, float]:
        """The index of the phase that holds ``step`` and the fraction of it done (1 from ``T - 1`` on)."""
        start = 0.0
        for i, (end, _, _) in enumerate(self.phases):
            if step <= end or i == len(self.phases) - 1:
                if step >= self.total_steps - 1 or end <= start:
                    return i, 1.0
                return i, (step - start) / (end - start)
            start = end
        raise AssertionError("unreachable")  # the last phase takes every step

    def get_lr(self) -> list[float | Tensor]:
        """The lr of each group for step ``last_epoch``; sets each group's momentum for that step as well."""
        phase, pct = self._phase(self.last_epoch)
        _, lr_from, lr_to = self.phases[phase]
        # the momentum mirrors the lr: high while the lr is low, and it stays high in the third phase
        m_from, m_to = {0: ("max", "base"), 1: ("base", "max"), 2: ("max", "max")}[phase]
        lrs: list[float | Tensor] = []
        for i, group in enumerate(self.optimizer.param_groups):
            levels = {"initial": self.initial_lrs[i], "max": self.max_lrs[i], "min": self.min_lrs[i]}
            lrs.append(self._anneal(levels[lr_from], levels[lr_to], pct))
            key = self.momentum_keys[i]
            if key is not None:
                moms = {"max": self.max_momenta[i], "base": self.base_momenta[i]}
                momentum = self._anneal(moms[m_from], moms[m_to], pct)
                group[key] = (momentum, *group["betas"][1:]) if key == "betas" else momentum
        return lrs


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
    "OneCycleSchedule",
    "RefinedSchedule",
    "WarmupCosineSchedule",
    "get_schedule",
    "median_smooth",
    "refined_schedule",
]
