"""Training procedures for noisy labels: co-teaching (two networks) and Late Stopping (a trainer callback).

Co-teaching trains a second network, which the :class:`~reglab.train.Trainer`
(one model, one optimizer) cannot host, so it is a self-contained procedure,
:func:`co_teaching`, built on the one-step class :class:`CoTeaching`.
:class:`LateStopping` is a :class:`reglab.core.Callback` for the ordinary
trainer; it flags the examples that take longest to be learned and
:meth:`LateStopping.shrink` removes them for the next round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reglab.core import Callback, ConfigError
from reglab.core.validation import check_bool, check_int
from reglab.tasks import IndexedDataset, Task, as_tensors

# --- co-teaching --------------------------------------------------------------------------------------


def forget_rate_at(epoch: int, forget_rate: float, num_gradual: int) -> float:
    """Co-teaching's fraction of each batch to drop at (0-based) epoch ``epoch``: tau * min(epoch / T_k, 1)."""
    if num_gradual <= 0:
        return forget_rate
    return forget_rate * min(epoch / num_gradual, 1.0)


def _check_fraction(name: str, value: Any, high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be in [0, 1{')' if high_open else ']'}, got {value!r}")
    return float(value)


class CoTeaching:
    """One co-teaching step: each network picks its small-loss examples of the batch, and its peer learns from them.

    On a batch of size B at epoch t (0-based), with forget rate
    f(t) = tau * min(t / T_k, 1) (``forget_rate`` tau, ``num_gradual`` T_k):

    1. per-example cross-entropies l1, l2 of both networks (train mode);
    2. each network keeps R(t) B = floor((1 - f(t)) B) (at least 1) examples
       with the smallest loss: S1 (by l1) and S2 (by l2);
    3. network 1 takes a step on mean CE over S2, network 2 on mean CE over S1.

    Small-loss examples are likely clean early in training (networks fit
    clean labels before memorizing noisy ones), and exchanging the selections
    keeps one network's selection errors from reinforcing themselves.

    References: Han et al., "Co-teaching: Robust Training of Deep Neural
    Networks with Extremely Noisy Labels" (NeurIPS 2018). Checked against the
    authors' code (github.com/bhanML/Co-teaching, ``loss.py``
    ``loss_coteaching`` and ``main.py``): the exchange, the mean over
    int((1 - f) B) kept examples, and the "pure ratio" metric (1 minus our
    selected-flipped fraction). Departure: their schedule is
    ``linspace(0, tau**c, T_k)`` over the first T_k epochs (c = 1 by
    default); this class uses the paper's tau * min(t / T_k, 1).

    Args:
        model1, model2: the two networks (distinct parameters).
        optimizer1, optimizer2: their optimizers.
        forget_rate: tau in [0, 1), usually the (estimated) noise rate.
        num_gradual: T_k >= 0, epochs over which the forget rate ramps up; 10 in the paper (5–15 usual).

    Raises:
        ConfigError: forget_rate or num_gradual out of range.
    """

    def __init__(
        self,
        model1: nn.Module,
        model2: nn.Module,
        optimizer1: torch.optim.Optimizer,
        optimizer2: torch.optim.Optimizer,
        *,
        forget_rate: float,
        num_gradual: int = 10,
    ):
        self.model1, self.model2 = model1, model2
        self.optimizer1, self.optimizer2 = optimizer1, optimizer2
        self.forget_rate = _check_fraction("forget_rate", forget_rate)
        self.num_gradual = check_int("num_gradual", num_gradual, 0)

    def num_kept(self, batch_size: int, epoch: int) -> int:
        """Examples each network selects from a batch of ``batch_size`` at ``epoch``: floor((1 - f) B), >= 1."""
        rate = forget_rate_at(epoch, self.forget_rate, self.num_gradual)
        return max(1, math.floor((1.0 - rate) * batch_size + 1e-9))

    def step(self, inputs: Tensor, targets: Tensor, epoch: int, flipped: Tensor | None = None) -> dict[str, float]:
        """Take one step of both networks on a batch; ``flipped`` (bool per example) adds precision metrics.

        Returns:
            ``forget_rate``, ``num_selected``, ``loss1``/``loss2`` (each network's update loss),
            ``selected_flipped1``/``selected_flipped2`` (fraction of each selection whose label was
            flipped) and ``batch_flipped`` (the batch's flipped fraction), as floats.
        """
        self.model1.train()
        self.model2.train()
        out1, out2 = self.model1(inputs), self.model2(inputs)
        per1 = F.cross_entropy(out1, targets, reduction="none")
        per2 = F.cross_entropy(out2, targets, reduction="none")
        keep = self.num_kept(len(targets), epoch)
        pick1 = torch.argsort(per1.detach(), stable=True)[:keep]
        pick2 = torch.argsort(per2.detach(), stable=True)[:keep]
        update1 = per1[pick2].mean()  # network 1 learns from network 2's small-loss examples
        update2 = per2[pick1].mean()
        self.optimizer1.zero_grad(set_to_none=True)
        self.optimizer2.zero_grad(set_to_none=True)
        (update1 + update2).backward()
        self.optimizer1.step()
        self.optimizer2.step()
        noisy = torch.zeros_like(targets, dtype=torch.bool) if flipped is None else flipped.to(targets.device).bool()
        return {
            "forget_rate": forget_rate_at(epoch, self.forget_rate, self.num_gradual),
            "num_selected": float(keep),
            "loss1": update1.item(),
            "loss2": update2.item(),
            "selected_flipped1": noisy[pick1].double().mean().item(),
            "selected_flipped2": noisy[pick2].double().mean().item(),
            "batch_flipped": noisy.double().mean().item(),
        }


@dataclass
class CoTeachingResult:
    """What :func:`co_teaching` returns.

    Attributes:
        model1, model2: the two trained networks.
        history: one record per step: ``step`` (1-based), ``epoch`` (0-based) and the
            :meth:`CoTeaching.step` record.
        final: ``test/accuracy1``, ``test/accuracy2``, ``train/accuracy_clean1/2`` and
            ``train/accuracy_flipped1/2`` (flipped examples predicted as their noisy label, i.e.
            memorized; only with label noise), ``selected_flipped`` (mean of both networks'
            selected-flipped fraction over the last epoch's steps), ``flipped_rate`` (the training
            set's flipped fraction) and ``seconds``.
    """

    model1: nn.Module
    model2: nn.Module
    history: list[dict[str, float]] = field(repr=False)
    final: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """History and final numbers (not the models)."""
        return {"history": self.history, "final": self.final}


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    return (pred == y).double()


def co_teaching(
    task: Task,
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    *,
    forget_rate: float,
    num_gradual: int = 10,
    steps: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
) -> CoTeachingResult:
    """Train two networks with co-teaching on ``task`` and report how clean their selections were.

    ``torch.manual_seed(seed)`` is set, then ``make_model()`` is called twice
    (two different initializations) and ``make_optimizer(params)`` once per
    network. Batches are drawn like the :class:`~reglab.train.Trainer` does:
    without replacement, reshuffled every epoch from a generator seeded by
    ``seed``, the last incomplete batch dropped; epoch t = step // (n // B).
    Each step is :meth:`CoTeaching.step`. Same arguments, same numbers (CPU).

    Example:
        >>> noisy = tasks.with_label_noise(tasks.get("two_moons", n=400), rate=0.3)
        >>> res = co_teaching(noisy, lambda: noisy.make_model(width=32),
        ...                   lambda p: torch.optim.Adam(p, lr=1e-2), forget_rate=0.3, num_gradual=5, steps=500)
        >>> res.final["selected_flipped"] < res.final["flipped_rate"]

    References: Han et al., "Co-teaching: Robust Training of Deep Neural
    Networks with Extremely Noisy Labels" (NeurIPS 2018).

    Args:
        task: a classification task (``task.flipped`` is used for the metrics when present).
        make_model: builds one network, e.g. ``task.make_model``.
        make_optimizer: builds an optimizer for given parameters.
        forget_rate: tau in [0, 1); the paper sets it to the noise rate.
        num_gradual: T_k >= 0 epochs of linear ramp-up of the forget rate.
        steps: optimizer steps of each network, >= 1.
        batch_size: B >= 1 (the whole training set when B >= n).
        seed: seed of the initializations and the batch order, >= 0.

    Returns:
        A :class:`CoTeachingResult`.

    Raises:
        ConfigError: a regression task, or an argument out of range.
    """
    if not task.is_classification:
        raise ConfigError(f"co_teaching needs a classification task, got {task.name!r} (num_classes=None)")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    start = time.perf_counter()
    torch.manual_seed(seed)
    model1, model2 = make_model(), make_model()
    stepper = CoTeaching(
        model1,
        model2,
        make_optimizer(model1.parameters()),
        make_optimizer(model2.parameters()),
        forget_rate=forget_rate,
        num_gradual=num_gradual,
    )
    x, y, _ = as_tensors(task.train)
    n = len(y)
    flipped = task.flipped if task.flipped is not None else torch.zeros(n, dtype=torch.bool)
    per_epoch = 1 if batch_size >= n else n // batch_size
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    order = torch.arange(n)
    for s in range(steps):
        epoch, slot = divmod(s, per_epoch)
        if per_epoch == 1:
            batch = order
        else:
            if slot == 0:
                order = torch.randperm(n, generator=generator)
            batch = order[slot * batch_size : (slot + 1) * batch_size]
        record = stepper.step(x[batch], y[batch], epoch, flipped[batch])
        history.append({"step": float(s + 1), "epoch": float(epoch), **record})

    last_epoch = [r for r in history if r["epoch"] == history[-1]["epoch"]]
    final: dict[str, float] = {
        "selected_flipped": sum(r["selected_flipped1"] + r["selected_flipped2"] for r in last_epoch)
        / (2 * len(last_epoch)),
        "flipped_rate": flipped.double().mean().item(),
    }
    xt, yt, _ = as_tensors(task.test)
    for i, model in enumerate((model1, model2), start=1):
        final[f"test/accuracy{i}"] = _accuracy(model, xt, yt).mean().item()
        correct = _accuracy(model, x, y)
        if (~flipped).any():
            final[f"train/accuracy_clean{i}"] = correct[~flipped].mean().item()
        if flipped.any():
            final[f"train/accuracy_flipped{i}"] = correct[flipped].mean().item()
    final["seconds"] = time.perf_counter() - start
    return CoTeachingResult(model1, model2, history, final)


# --- Late Stopping --------------------------------------------------------------------------------------


class LateStopping(Callback):
    """Late Stopping's FkL criterion: flag the examples that take longest to be learned consistently.

    After every epoch (every ``every`` optimizer steps; by default one pass
    of the trainer's batches, ``n // batch_size`` steps, or 1 for full-batch
    training) the callback predicts the whole training set in eval mode and
    marks example i correct when argmax f(x_i) equals its *given* (possibly
    noisy) label. Epochs are numbered 1, 2, ...; the first ``warmup_epochs``
    are not counted. Let c_i(e) be the number of consecutive counted epochs up
    to e at which i was correct. The First-k-epoch-Learning time is

        FkL_i = min { e : c_i(e) = k }   (the epoch of the k-th consecutive correct prediction),

    stored in ``fkl`` (-1 while not yet reached). The round ends at the first
    epoch E at which at least ceil(keep_fraction * n) examples have an FkL;
    the examples still without one (those with the largest FkL, > E) are
    ``flagged``: likely mislabeled, since clean examples, even hard ones,
    are learned consistently earlier than mislabeled ones. With ``stop=True``
    the callback then stops the trainer (with ``stop=False`` training goes on
    but the result is frozen). If training ends first, every
    example without an FkL is flagged and ``reached`` stays False.
    :meth:`shrink` returns the task without the flagged examples, to train a
    fresh model on in the next round.

    Metrics (split ``probe``): ``late_stopping/learned_fraction`` every
    counted epoch; at the end of the round ``late_stopping/flagged``
    (count), ``late_stopping/epoch`` (E) and, on a task with label noise,
    ``late_stopping/flagged_flipped_fraction`` (precision of the flags) and
    ``late_stopping/flipped_fraction`` (the base rate).

    The paper's full procedure runs several rounds, each a fresh model on the
    shrunk set, with k raised over rounds::

        for k in (1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3):
            ls = LateStopping(k=k, keep_fraction=0.955, warmup_epochs=7)
            model = task.make_model()
            Trainer(task, model, CrossEntropy(), make_opt(model), steps=..., callbacks=[ls]).fit()
            task = ls.shrink(task)
        # then train the final model on task

    References: Yuan, Feng & Liu, "Late Stopping: Avoiding Confidently
    Learning from Mislabeled Examples" (ICCV 2023): FkL is "the minimum index
    of the training epoch until which an example has been predicted as its
    given label for consecutive k epochs". Checked against the authors' code
    (github.com/tmllab/2023_ICCV_LateStopping,
    ``main_cifar10_noise_ratio=40.py``): per-epoch eval-mode predictions on
    the round's training set, counting only after WARM_UP_EPOCHS (their
    0-based ``index > 6``, i.e. 7 epochs skipped), a round ends when the
    FkL-learned set reaches 95.5% of the current set (``remove_rate`` 0.955),
    the next round retrains from scratch on the learned set, and k goes
    1 -> 2 -> 3 over 4 + 4 + 4 rounds.

    Args:
        k: consecutive correct epochs required, >= 1; 1–3 in the paper.
        keep_fraction: fraction of the training set that must be learned to end the round, in (0, 1];
            0.955 in the reference code.
        warmup_epochs: leading epochs not counted, >= 0.
        every: optimizer steps per counted "epoch", >= 1, or None for one pass of the trainer's batches.
        stop: call ``trainer.stop`` when the round ends.

    Raises:
        ConfigError: an argument out of range.
    """

    def __init__(
        self,
        k: int = 1,
        keep_fraction: float = 0.955,
        warmup_epochs: int = 0,
        every: int | None = None,
        stop: bool = True,
    ):
        self.k = check_int("k", k, 1)
        self.keep_fraction = _check_fraction("keep_fraction", keep_fraction, high_open=False)
        if self.keep_fraction == 0.0:
            raise ConfigError("keep_fraction must be in (0, 1], got 0")
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.every = None if every is None else check_int("every", every, 1)
        self.stop = check_bool("stop", stop)
        self.fkl: Tensor | None = None
        self.flagged: Tensor | None = None
        self.reached = False
        self.epoch = 0
        self.round_epoch: int | None = None

    # -- trainer hooks -----------------------------------------------------------------------------------
    def on_train_begin(self, trainer: Any) -> None:
        task = trainer.task
        if not task.is_classification:
            raise ConfigError(f"LateStopping needs a classification task, got {task.name!r} (num_classes=None)")
        device = getattr(trainer, "device", None)  # the Trainer's device; a model without one stays where it is
        self._x, self._y = (t.to(device) for t in as_tensors(task.train)[:2])
        n = len(self._y)
        if self.every is not None:
            self._period = self.every
        elif trainer.batch_size == "full" or trainer.batch_size >= n:
            self._period = 1
        else:
            self._period = n // trainer.batch_size
        self._flipped = task.flipped
        self._streak = torch.zeros(n, dtype=torch.long)
        self.fkl = torch.full((n,), -1, dtype=torch.long)
        self.flagged = None
        self.reached = False
        self.epoch = 0
        self.round_epoch = None
        self._target = math.ceil(self.keep_fraction * n - 1e-9)

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        if self.reached or step % self._period:
            return
        self.epoch += 1
        if self.epoch <= self.warmup_epochs:
            return
        correct = _accuracy(trainer.model, self._x, self._y).bool().cpu()  # the per-example state lives on the CPU
        self._streak = torch.where(correct, self._streak + 1, torch.zeros_like(self._streak))
        newly = (self._streak >= self.k) & (self.fkl < 0)
        self.fkl[newly] = self.epoch
        learned = int((self.fkl >= 0).sum())
        trainer.log(step, "probe", "late_stopping/learned_fraction", learned / len(self.fkl))
        if learned >= self._target:
            self.reached = True
            self._finish(trainer, step)
            if self.stop:
                trainer.stop(
                    f"late stopping: {learned}/{len(self.fkl)} examples learned {self.k} epochs in a row by epoch "
                    f"{self.epoch}; {int(self.flagged.sum())} flagged"
                )

    def on_train_end(self, trainer: Any, result: Any) -> None:
        if self.fkl is not None and self.flagged is None:
            self._finish(trainer, trainer.step)

    def _finish(self, trainer: Any, step: int) -> None:
        self.round_epoch = self.epoch
        self.flagged = self.fkl < 0
        trainer.log(step, "probe", "late_stopping/flagged", float(self.flagged.sum()))
        trainer.log(step, "probe", "late_stopping/epoch", float(self.epoch))
        if self._flipped is not None:
            trainer.log(step, "probe", "late_stopping/flipped_fraction", self._flipped.double().mean().item())
            if self.flagged.any():
                precision = self._flipped[self.flagged].double().mean().item()
                trainer.log(step, "probe", "late_stopping/flagged_flipped_fraction", precision)

    # -- results -------------------------------------------------------------------------------------------
    def _require_round(self) -> Tensor:
        if self.flagged is None:
            raise ConfigError("LateStopping has no result yet: train with it as a callback first")
        return self.flagged

    def flagged_indices(self) -> Tensor:
        """Dataset indices of the flagged (likely mislabeled) examples."""
        return torch.nonzero(self._require_round()).flatten()

    def kept_indices(self) -> Tensor:
        """Dataset indices of the examples kept for the next round (the complement of the flagged ones)."""
        return torch.nonzero(~self._require_round()).flatten()

    def shrink(self, task: Task) -> Task:
        """``task`` without the flagged training examples (re-indexed 0..m-1); ``flipped``/``clean_targets`` follow.

        Appends ``{"name": "late_stopping", "k", "kept", "removed"}`` to ``info["transforms"]``.

        Raises:
            ConfigError: no round has finished, or ``task`` is not the task the callback was trained on.
        """
        flagged = self._require_round()
        x, y, _ = as_tensors(task.train)
        if len(y) != len(flagged) or not torch.equal(y, self._y.to(y.device)):
            raise ConfigError(
                f"shrink needs the task this callback was trained on ({len(flagged)} examples), got {len(y)} examples"
            )
        keep = torch.nonzero(~flagged).flatten()
        info = dict(task.info)
        entry = {"name": "late_stopping", "k": self.k, "kept": len(keep), "removed": len(y) - len(keep)}
        info["transforms"] = [*task.info.get("transforms", []), entry]
        info.pop("class_counts", None)
        return task.replace(
            train=IndexedDataset(x[keep], y[keep]),
            flipped=None if task.flipped is None else task.flipped[keep],
            clean_targets=None if task.clean_targets is None else task.clean_targets[keep],
            info=info,
        )
