"""Smith's learning-rate range test: train with an exponentially rising lr and read a good lr off the loss curve.

``reglab lr-find CONFIG`` builds the run of a config, trains it for ``steps``
steps in the run's own batch order while step ``i`` (0-based) uses the lr::

    lr_i = start * (end / start) ** (i / (steps - 1))

records the objective of every step and its exponential moving average with
bias correction (fastai's ``LRFinder``, ``beta = 0.98``)::

    avg_i = beta * avg_{i-1} + (1 - beta) * loss_i,    smoothed_i = avg_i / (1 - beta ** (i + 1))

and stops early when ``smoothed_i > diverge * min_{j <= i} smoothed_j`` (``diverge = 4``) or a loss is not
finite. Two readings of the curve are returned: ``minimum``, a tenth of the lr where the smoothed loss is
lowest (the printed suggestion; the lowest loss comes just before the lr is too large to be stable, and a
tenth of it is well inside the range where the loss falls), and ``steepest``, the lr where the smoothed loss
falls fastest against ``log lr`` between step 10 and the minimum (fastai v1's suggestion and ``skip_start``;
noisier, and late by the smoothing's lag).
Both are clamped to ``[start, end]``. The model trained here is thrown away.

References: Smith, "Cyclical Learning Rates for Training Neural Networks" (2017), section 3.3 (the "LR range
test", there with a linear ramp); the exponential ramp, smoothing and stopping rule are fastai's
(Howard & Gugger, "fastai: A Layered API for Deep Learning", 2020).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reglab.core import Callback, ConfigError
from reglab.core.validation import check_float, check_int
from reglab.experiments.config import RunConfig
from reglab.experiments.runner import build, make_trainer, torch_threads
from reglab.optim.schedules import FactorSchedule

__all__ = ["ExponentialRamp", "LRRangeResult", "LRRangeTest", "lr_find", "plot_lr_range"]


class ExponentialRamp(FactorSchedule):
    """The range test's lr: ``start * (end / start) ** (t / (steps - 1))`` at step ``t``, the last value after.

    The ramp is the lr of the group with the largest lr; every other group
    keeps its ratio to it (Muon's matrix and AdamW sides, μP groups), so
    ``factor(t) = ramp(t) / max_g lr_g``.

    Args:
        optimizer: the optimizer whose groups are ramped (a wrapper's are its base's).
        start: first lr, > 0.
        end: last lr, > ``start``.
        steps: number of steps of the ramp, >= 2.

    Raises:
        ConfigError: an argument out of range, or every param group has lr 0 (no ratio to keep).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, start: float, end: float, steps: int):
        self.start = check_float("start", start, 0.0, low_open=True)
        self.end = check_float("end", end, self.start, low_open=True)
        self.steps = check_int("steps", steps, 2)
        lrs = [g.get("initial_lr", g["lr"]) for g in getattr(optimizer, "param_groups", [])]
        self.reference = float(max(lrs, default=0.0))
        if not self.reference > 0:
            raise ConfigError("optimizer: every param group has lr 0; give it an lr > 0 (the ramp keeps the ratios)")
        super().__init__(optimizer)

    def lr(self, step: int) -> float:
        """The ramp's lr at step ``step`` (0-based)."""
        return self.start * (self.end / self.start) ** (min(step, self.steps - 1) / (self.steps - 1))

    def factor(self, step: int) -> float:
        return self.lr(step) / self.reference


@dataclass
class LRRangeResult:
    """The curve of a range test and its two readings.

    Attributes:
        lrs: the lr of each step taken (the ramp: the largest group's lr).
        losses: the objective of each step (loss plus penalties), before the step.
        smoothed: the bias-corrected moving average of ``losses``.
        stop: ``"end"`` (the ramp finished), ``"diverged"`` (smoothed loss above ``diverge`` times its minimum)
            or ``"not finite"`` (a loss or gradient was inf/NaN; that step is not in the curve).
        start, end: the ramp's range.
        minimum: a tenth of the lr of the lowest smoothed loss, clamped to ``[start, end]`` (the suggestion).
        steepest: the lr of the steepest fall of the smoothed loss against ``log lr`` from step 10 (from step 0
            if the minimum comes before step 12) up to its minimum, clamped to ``[start, end]``.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop: str
    start: float
    end: float
    minimum: float
    steepest: float

    @property
    def suggested(self) -> float:
        """The suggested lr: :attr:`minimum` (min-loss lr / 10)."""
        return self.minimum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Steps left out of the steepest-descent reading when the curve is long enough (fastai v1's ``skip_start``).
_SKIP_START = 10


def _readings(lrs: list[float], smoothed: list[float], start: float, end: float) -> tuple[float, float]:
    """``(minimum, steepest)`` of a curve (see :class:`LRRangeResult`)."""
    if not lrs:
        return start, start
    best = int(np.argmin(smoothed))
    minimum = lrs[best] / 10
    skip = _SKIP_START if best - _SKIP_START >= 2 else 0  # the first steps' smoothed values are a noisy few
    steepest = lrs[skip]
    if best - skip >= 1:
        slope = np.gradient(np.asarray(smoothed[skip : best + 1]), np.log(np.asarray(lrs[skip : best + 1])))
        steepest = lrs[skip + int(np.argmin(slope))]
    return min(max(minimum, start), end), min(max(steepest, start), end)


class LRRangeTest(Callback):
    """A trainer callback that records the range test's curve and stops the run when the loss diverges.

    Give its :meth:`schedule` to the :class:`~reglab.train.Trainer` as the
    scheduler and the test itself as a callback, for ``steps`` steps; then
    :meth:`result` reads the curve (the formulas: the module docstring).

    Example:
        >>> test = LRRangeTest(start=1e-6, end=10.0, steps=100)
        >>> trainer = Trainer(task, model, loss, opt, steps=100, scheduler=test.schedule(opt), callbacks=[test])
        >>> result = test.result(trainer.fit())
        >>> result.suggested, result.steepest

    Args:
        start: first lr, > 0.
        end: last lr, > ``start``.
        steps: steps of the ramp, >= 2.
        beta: smoothing of the moving average, in [0, 1) (0.98, fastai's).
        diverge: stop when the smoothed loss exceeds this multiple of its minimum, > 1 (4, fastai's).

    Raises:
        ConfigError: an argument out of range.
    """

    def __init__(
        self, start: float = 1e-7, end: float = 10.0, steps: int = 100, *, beta: float = 0.98, diverge: float = 4.0
    ):
        self.start = check_float("start", start, 0.0, low_open=True)
        self.end = check_float("end", end, self.start, low_open=True)
        self.steps = check_int("steps", steps, 2)
        self.beta = check_float("beta", beta, 0.0, 1.0, high_open=True)
        self.diverge = check_float("diverge", diverge, 1.0, low_open=True)
        self._ramp: ExponentialRamp | None = None
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stop: str = "end"
        self._avg = 0.0

    def schedule(self, optimizer: torch.optim.Optimizer) -> ExponentialRamp:
        """The :class:`ExponentialRamp` of this test on ``optimizer`` (build the Trainer with it)."""
        self._ramp = ExponentialRamp(optimizer, self.start, self.end, self.steps)
        return self._ramp

    def on_train_begin(self, trainer: Any) -> None:
        if self._ramp is None or trainer.scheduler is not self._ramp:
            raise ConfigError("LRRangeTest: build the Trainer with scheduler=test.schedule(optimizer)")
        self.lrs, self.losses, self.smoothed, self.stop, self._avg = [], [], [], "end", 0.0

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        i = step - 1  # the trainer counts steps taken; the ramp indexes them from 0
        loss = float(info.get("objective", info["loss"]))
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smoothed = self._avg / (1 - self.beta ** (i + 1))
        self.lrs.append(self._ramp.lr(i))  # type: ignore[union-attr]
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        if not math.isfinite(smoothed):
            self.stop = "not finite"
            trainer.stop(f"lr range test: the smoothed loss is {smoothed} at lr {self.lrs[-1]:.3g}")
        elif i > 0 and smoothed > self.diverge * min(self.smoothed):
            self.stop = "diverged"
            trainer.stop(
                f"lr range test: the smoothed loss passed {self.diverge:g}x its minimum at lr {self.lrs[-1]:.3g}"
            )

    def result(self, outcome: Any = None) -> LRRangeResult:
        """The curve recorded so far and its readings; ``outcome`` (the Trainer's result) marks a non-finite stop."""
        if outcome is not None and getattr(outcome, "status", None) == "diverged" and self.stop == "end":
            self.stop = "not finite"
        minimum, steepest = _readings(self.lrs, self.smoothed, self.start, self.end)
        return LRRangeResult(
            list(self.lrs), list(self.losses), list(self.smoothed), self.stop, self.start, self.end, minimum, steepest
        )


def lr_find(
    cfg: RunConfig,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    out: str | Path | None = None,
) -> LRRangeResult:
    """Run the lr range test on the run of ``cfg`` and optionally save its plot at ``out`` (PNG).

    The run is built from ``cfg`` (:func:`~reglab.experiments.runner.build`)
    without its schedule and probes, with ``train.steps = steps``, and trained
    by the Trainer of the run (same seed and batch order, device, precision,
    penalties, augmentation, gradient clipping and accumulation), with the
    :class:`ExponentialRamp` as its schedule. It evaluates only before the
    first step and after the last. Nothing is stored or saved but the plot.

    Args:
        cfg: the run config.
        start, end, steps: the ramp (see :class:`ExponentialRamp`).
        beta, diverge: the smoothing and the stopping rule (see :class:`LRRangeTest`).
        out: where to write the PNG of loss against lr; None writes none.

    Returns:
        The :class:`LRRangeResult`.

    Raises:
        ConfigError: a bad argument, or one the config's build raises.
    """
    test = LRRangeTest(start, end, steps, beta=beta, diverge=diverge)
    train = cfg.train.model_copy(update={"steps": steps, "eval_every": steps, "log_every": None})
    cfg = cfg.model_copy(update={"schedule": None, "probes": [], "train": train})
    built = build(cfg)
    built = dataclasses.replace(built, scheduler=test.schedule(built.optimizer), probes=[])
    with torch_threads(cfg.train.threads):
        outcome = make_trainer(cfg, built, callbacks=[test]).fit()
    result = test.result(outcome)
    if out is not None:
        plot_lr_range(result, out)
    return result


def plot_lr_range(result: LRRangeResult, path: str | Path, title: str = "lr range test") -> Path:
    """Save the loss against the lr (log x) with both readings marked, as a PNG at ``path``; returns the path.

    Raises:
        ConfigError: the result has no step to plot.
    """
    if not result.lrs:
        raise ConfigError("the lr range test recorded no step (the first loss was not finite); nothing to plot")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.7", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    ax.axvline(result.minimum, color="C2", linestyle="--", label=f"min-loss lr / 10 = {result.minimum:.3g}")
    ax.axvline(result.steepest, color="C3", linestyle=":", label=f"steepest descent = {result.steepest:.3g}")
    ax.set_xscale("log")
    low, high = min(result.smoothed), max(result.smoothed[0], min(result.smoothed))
    if math.isfinite(high) and high > low:  # the divergence runs off the top; keep the descent readable
        ax.set_ylim(low - 0.1 * (high - low), high + 0.5 * (high - low))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training objective")
    ax.set_title(f"{title} (stop: {result.stop})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
