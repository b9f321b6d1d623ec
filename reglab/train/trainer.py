"""The Trainer: steps, evaluation, divergence detection and callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from reglab.core import Callback, ConfigError, Penalty, ShapeError
from reglab.core.validation import check_float, check_int
from reglab.losses import MSE
from reglab.tasks import IndexedDataset, Task, as_tensors
from reglab.train.checkpoint import CheckpointError, Checkpoints, rng_state, set_rng_state
from reglab.train.device import Precision, move_batch, resolve_device
from reglab.train.distributed import PerExampleState, shard, world
from reglab.train.step import train_step

#: The regression evaluation loss: per-example 0.5 * ||f(x) - y||^2.
_HALF_SQUARED_ERROR = MSE(reduction="none")

#: A metric row: (step, split, name, value).
Row = tuple[int, str, str, float]


@dataclass
class TrainResult:
    """The outcome of :meth:`Trainer.fit`.

    Attributes:
        status: "done", "stopped" (a callback called ``stop``) or "diverged".
        steps: optimizer steps taken.
        diverged_at: the step whose loss was not finite, or None.
        final: the last evaluation, ``{"split/name": value}``.
        history: every metric row logged, ``(step, split, name, value)``.
        seconds: wall time of ``fit``.
        reason: why the run stopped early, if it did.
    """

    status: Literal["done", "stopped", "diverged"]
    steps: int
    diverged_at: int | None
    final: dict[str, float]
    history: list[Row] = field(repr=False)
    seconds: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_finite(record: dict[str, float], keys: tuple[str, ...] = ()) -> bool:
    """Whether every value (or every value whose key ends with one of ``keys``) is finite."""
    return all(math.isfinite(v) for k, v in record.items() if not keys or k.endswith(keys))


def _eval_view(dataset: Dataset) -> Dataset:
    """What evaluation and probes read: the dataset without training augmentation when it has such a view."""
    view = getattr(dataset, "for_eval", None)
    return view() if callable(view) else dataset


def _to_device(obj: Any, device: torch.device) -> None:
    """Move a module's parameters and buffers (stateful losses, penalties, augmentations) to ``device``."""
    if isinstance(obj, nn.Module):
        obj.to(device)


def _optimizer_to(optimizer: torch.optim.Optimizer) -> None:
    """Move optimizer state that exists already (built eagerly, or loaded) next to its parameters.

    ``load_state_dict`` casts every state tensor to its parameter's device (and floating ones to its dtype), so a
    round trip does it for any ``torch.optim`` optimizer and for wrappers that delegate their state to a base.
    """
    if optimizer.state:
        optimizer.load_state_dict(optimizer.state_dict())


def epoch_batches(n: int, size: int, generator: torch.Generator, start: int = 0) -> Iterator[Tensor]:
    """The training order, endless: each epoch ``torch.randperm(n, generator)`` cut into index tensors of ``size``,
    the last incomplete batch dropped; with ``size >= n`` (full batch) every example in order, and no draw.

    ``start`` batches are skipped (the epochs before them are drawn and dropped), so the order of a run resumed
    after ``start`` steps continues where it stopped. The in-memory path indexes its tensors with these batches and
    the streamed path hands them (as lists) to its DataLoader as the batch sampler, so the same seed gives the same
    batches on both.
    """
    if size >= n:
        while True:
            yield torch.arange(n)
    per_epoch = n // size
    skipped_epochs, skip = divmod(start, per_epoch)
    for _ in range(skipped_epochs):
        torch.randperm(n, generator=generator)
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(skip * size, n - size + 1, size):
            yield order[i : i + size]
        skip = 0


def _module_state(obj: Any) -> dict[str, Any] | None:
    """The state dict of a module (a stateful loss, penalty or augmentation), None for anything else."""
    return obj.state_dict() if isinstance(obj, nn.Module) else None


def _on_device(state: Any, device: torch.device) -> Any:
    """``state`` with every tensor in it (nested in dicts, lists and tuples) moved to ``device``."""
    if torch.is_tensor(state):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _on_device(v, device) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_on_device(v, device) for v in state)
    return state


def _callback_state(callback: Callback) -> dict[str, Any] | None:
    """A callback's own ``state_dict()`` if it has one, else None (stateless)."""
    state_dict = getattr(callback, "state_dict", None)
    return state_dict() if callable(state_dict) else None


class Trainer:
    """Train a model on a task and evaluate it as it goes, on any device and in any precision.

    Evaluation (at step 0, every ``eval_every`` steps and at the end) reports
    the same metrics for every run, whatever the training loss, so runs compare:
    ``loss`` is the cross-entropy (classification) or half squared error
    (regression) and ``accuracy`` the top-1 accuracy, on the ``train`` and
    ``test`` splits, in eval mode. On a task with label noise (``task.flipped``)
    the train split also has ``accuracy_clean`` (examples whose label was kept),
    ``accuracy_flipped`` (flipped examples predicted as their *noisy* label:
    memorization) and ``accuracy_flipped_true`` (flipped examples predicted as
    their true label). Every ``log_every`` steps the record of
    :func:`~reglab.train.train_step` is logged to split ``train`` as
    ``batch_loss``, ``objective``, ``grad_norm`` and ``penalty/<name>``.

    A step whose loss or objective (or, without a gradient scaler, gradient
    norm) is not finite ends the run with status ``diverged`` at that step; it
    does not raise. Under fp16's scaler an inf/NaN gradient is the scaler's
    business: the step is skipped and the scale backs off, as in any AMP loop.

    Data. A task of in-memory tensors (:class:`~reglab.tasks.IndexedDataset`,
    every generated and packaged task) is held on the device and batched by
    indexing: batches are drawn without replacement, reshuffled every epoch,
    from a CPU generator seeded by ``seed``. Any other task (e.g.
    :func:`~reglab.tasks.from_datasets`) is streamed through one ``DataLoader``
    for the run (``num_workers`` processes, the batches of :func:`epoch_batches`
    drawn by a generator seeded by ``seed``, the last incomplete batch of an
    epoch dropped, ``pin_memory`` on CUDA), and batches reach
    the device with ``non_blocking=True``; evaluation streams the splits in
    order, reading a dataset's ``for_eval()`` view (no training augmentation)
    when it has one. ``fit`` also seeds torch's global generator (every
    device's) with ``seed`` for dropout masks and augmentation noise.

    Device and precision. The model, and the loss, penalty and augmentation
    when they are modules (their per-example state included), are moved to
    ``device`` when the trainer is built; optimizer state that exists already
    is moved next to its parameters. ``precision="bf16"`` or ``"fp16"`` runs
    the forward passes (training and evaluation) under ``torch.autocast``;
    ``"fp16"`` adds a ``torch.amp.GradScaler`` (see :func:`train_step`).

    Long runs. ``clip_grad_norm`` and ``accumulate`` are :func:`train_step`'s;
    a step reads ``batch_size * accumulate`` examples. With
    ``checkpoint_every`` the trainer writes :meth:`state_dict` into
    ``checkpoints`` every that many steps and at the last step; after
    :meth:`load_state_dict` of such a checkpoint, :meth:`fit` continues from
    its step, bitwise as the uninterrupted run would have (on a CPU; a
    streamed task read by ``num_workers > 0`` processes restarts its workers'
    random streams).

    Several processes. Inside a ``torch.distributed`` process group each rank
    trains its contiguous share of every global batch and gradients are
    averaged after every backward (:mod:`reglab.train.distributed`), so the
    run equals one process on the global batch; the global batch must split
    evenly over the ranks. Only rank 0 writes checkpoints (the sink is the
    caller's: ``reglab run --nproc`` gives one to rank 0 only).

    Example:
        >>> task = reglab.tasks.get("digits")
        >>> model = task.make_model()
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> result = Trainer(task, model, CrossEntropy(), opt, steps=300).fit()

    Args:
        task: a :class:`reglab.tasks.Task`.
        model: the model to train.
        loss: the training loss, ``loss(outputs, targets)``.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        penalty: a penalty (or ``PenaltySum``), or None.
        augment: a batch augmentation, or None.
        steps: optimizer steps, >= 0.
        batch_size: examples per step, or ``"full"`` for full-batch training.
        eval_every: evaluate every this many steps, >= 1.
        log_every: log the step record every this many steps (default: ``eval_every``).
        callbacks: :class:`reglab.core.Callback` instances.
        sink: called with lists of metric rows after each evaluation, e.g. a store writer.
        scheduler: an LR scheduler stepped after every optimizer step, or None.
        seed: seed of the batch order and of torch's global generator.
        eval_batch_size: batch size of evaluation passes.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device``.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (not on a CPU).
        num_workers: DataLoader worker processes for a streamed task, >= 0 (0: read in this process).
        clip_grad_norm: clip the total gradient norm to this before each step, or None (see :func:`train_step`).
        accumulate: micro-batches of ``batch_size`` per optimizer step, >= 1 (a step reads ``accumulate *
            batch_size`` examples, the same ones a batch that large would be).
        checkpoint_every: write a checkpoint into ``checkpoints`` every this many steps and at the end, or None.
        checkpoints: a :class:`~reglab.train.checkpoint.Checkpoints` folder (needed with ``checkpoint_every``).

    Raises:
        ConfigError: an argument is out of range, or the device is not present.
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        loss: Callable[..., Tensor],
        optimizer: torch.optim.Optimizer,
        penalty: Penalty | None = None,
        augment: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        *,
        steps: int = 1000,
        batch_size: int | Literal["full"] = 128,
        eval_every: int = 100,
        log_every: int | None = None,
        callbacks: Sequence[Callback] = (),
        sink: Callable[[list[Row]], None] | None = None,
        scheduler: Any = None,
        seed: int = 0,
        eval_batch_size: int = 4096,
        device: str | torch.device = "auto",
        precision: str = "32",
        num_workers: int = 0,
        clip_grad_norm: float | None = None,
        accumulate: int = 1,
        checkpoint_every: int | None = None,
        checkpoints: Checkpoints | None = None,
    ):
        check_int("steps", steps, 0)
        check_int("eval_every", eval_every, 1)
        check_int("eval_batch_size", eval_batch_size, 1)
        check_int("seed", seed, 0, 2**63 - 1)
        check_int("num_workers", num_workers, 0)
        if log_every is not None:
            check_int("log_every", log_every, 1)
        check_int("accumulate", accumulate, 1)
        if clip_grad_norm is not None:
            check_float("clip_grad_norm", clip_grad_norm, 0.0, low_open=True)
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, 1)
            if checkpoints is None:
                raise ConfigError("checkpoint_every needs checkpoints=Checkpoints(folder), the folder to write to")
        if batch_size != "full" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be an int >= 1 or 'full', got {batch_size!r}")
        self.device = resolve_device(device)
        self.precision = Precision(precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.task, self.model, self.loss_fn, self.optimizer = task, model, loss, optimizer
        self.penalty, self.augment = penalty, augment
        self.steps, self.batch_size, self.eval_every = steps, batch_size, eval_every
        self.log_every = log_every or eval_every
        self.callbacks = list(callbacks)
        self.sink, self.scheduler, self.seed = sink, scheduler, seed
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.clip_grad_norm, self.accumulate = clip_grad_norm, accumulate
        self.checkpoint_every, self.checkpoints = checkpoint_every, checkpoints
        self.step = 0
        self.history: list[Row] = []
        self._pending: list[Row] = []
        self._stop_reason: str | None = None
        self._final: dict[str, float] = {}
        self._resumed = False
        self.rank, self.world = world()
        if self.world > 1:
            n = len(task.train)  # type: ignore[arg-type]
            global_batch = n if batch_size == "full" else min(batch_size * accumulate, n)
            if global_batch % (self.world * accumulate):
                raise ConfigError(
                    f"a global batch of {global_batch} examples ({accumulate} micro-batch(es)) cannot be split "
                    f"evenly over {self.world} processes; use a batch size that is a multiple of the process count "
                    "(--nproc)"
                )
            self._per_example = PerExampleState((loss, penalty, augment), n)
        for obj in (model, loss, penalty, augment):
            _to_device(obj, self.device)
        _optimizer_to(optimizer)
        self._dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        self.streamed = not (isinstance(task.train, IndexedDataset) and isinstance(task.test, IndexedDataset))
        self._train = self._test = None
        if not self.streamed:
            self._train = move_batch(as_tensors(task.train), self.device, self._dtype)
            self._test = move_batch(as_tensors(task.test), self.device, self._dtype)

    # -- what callbacks use -------------------------------------------------
    @property
    def train_data(self) -> tuple[Tensor, Tensor]:
        """The whole training set as ``(inputs, targets)`` on the device, in the model's dtype.

        In-memory tasks: the held tensors (do not modify them in place). Streamed tasks: every item read (without
        training augmentation) — large; probes should ask :meth:`examples` for a subset.
        """
        return self.examples("train")

    @property
    def test_data(self) -> tuple[Tensor, Tensor]:
        """The whole test set as ``(inputs, targets)`` on the device, in the model's dtype (see :attr:`train_data`)."""
        return self.examples("test")

    def examples(
        self, split: str = "train", n: int | None = None, seed: int = 0, *, in_order: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Up to ``n`` examples of ``split`` as ``(inputs, targets)`` on the device, in the model's dtype.

        ``n`` None or >= the split's size: every example, in order; otherwise the first ``n`` of
        ``torch.randperm(size)`` drawn from a generator seeded with ``seed`` (the same subset for the same seed),
        in that random order or, with ``in_order``, in dataset order. This is the one place probes get their
        examples from: a streamed task reads only those items, without training augmentation.
        """
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        dataset = self.task.train if split == "train" else self.task.test
        size = len(dataset)  # type: ignore[arg-type]
        chosen = None
        if n is not None and n < size:
            chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
            if in_order:
                chosen = chosen.sort().values
        if not self.streamed:
            x, y, _ = self._train if split == "train" else self._test
            if chosen is None:
                return x, y
            chosen = chosen.to(x.device)
            return x[chosen], y[chosen]
        view = _eval_view(dataset)
        if chosen is not None:
            view = Subset(view, chosen.tolist())
        xs, ys = [], []
        for x, y, _ in self._loader(view, self.eval_batch_size):
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def log(self, step: int, split: str, name: str, value: float) -> None:
        """Record one metric value; rows reach the sink after the next evaluation."""
        row = (int(step), split, name, float(value))
        self.history.append(row)
        self._pending.append(row)

    def stop(self, reason: str) -> None:
        """Ask the trainer to stop after the current step."""
        self._stop_reason = reason

    def flush(self) -> None:
        """Send the rows logged since the last flush to the sink."""
        if self.sink is not None and self._pending:
            self.sink(self._pending)
        self._pending = []

    # -- data ---------------------------------------------------------------
    def _loader(
        self, dataset: Dataset, batch_size: int, *, order: torch.Generator | None = None, start: int = 0
    ) -> Any:
        """Batches of ``dataset`` on the device, each moved with ``non_blocking``: in order, or, given an ``order``
        generator, shuffled for training (:func:`epoch_batches`; workers seeded from the run's seed)."""
        loader_args: dict[str, Any] = dict(
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # a DataLoader draws its workers' base seed from this generator; without one it would draw from torch's
            # global generator (dropout's), so evaluating or probing would change the training run
            generator=torch.Generator().manual_seed(self.seed),
        )
        if order is None:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_args)
        else:  # one loader for the whole run: its workers' random streams continue from epoch to epoch
            batches = (
                shard(b, self.rank, self.world).tolist() for b in epoch_batches(len(dataset), batch_size, order, start)
            )
            loader = DataLoader(dataset, batch_sampler=batches, **loader_args)  # type: ignore[arg-type]
        return (move_batch(tuple(batch), self.device, self._dtype) for batch in loader)

    def _split_outputs(self, split: str) -> tuple[Tensor, Tensor]:
        """The model's outputs on every example of ``split`` (float32 at least) and its targets, in order."""
        if not self.streamed:
            x, y, _ = self._train if split == "train" else self._test
            batches = (
                (x[i : i + self.eval_batch_size], y[i : i + self.eval_batch_size])
                for i in range(0, len(x), self.eval_batch_size)
            )
        else:
            dataset = _eval_view(self.task.train if split == "train" else self.task.test)
            batches = ((x, y) for x, y, _ in self._loader(dataset, self.eval_batch_size))
        outputs, targets = [], []
        with torch.no_grad(), self.precision.autocast():
            for x, y in batches:
                outputs.append(self.model(x))
                targets.append(y)
        out = torch.cat(outputs)
        if self.precision.dtype is not None and out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        return out, torch.cat(targets)

    # -- evaluation ---------------------------------------------------------
    def _split_metrics(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.task.num_classes is None:
            if outputs.shape != y.shape:
                raise ShapeError(
                    f"regression outputs {tuple(outputs.shape)} and targets {tuple(y.shape)} differ in shape; "
                    f"the model must output (n, {self.task.output_dim})"
                )
            return {"loss": _HALF_SQUARED_ERROR(outputs, y)}
        return {
            "loss": F.cross_entropy(outputs, y, reduction="none"),
            "accuracy": (outputs.argmax(1) == y).to(outputs.dtype),
        }

    def evaluate(self) -> dict[str, float]:
        """Evaluate on the train and test splits in eval mode; returns ``{"split/name": value}``."""
        was_training = self.model.training
        self.model.eval()
        try:
            metrics: dict[str, float] = {}
            for split in ("train", "test"):
                outputs, y = self._split_outputs(split)
                per_example = self._split_metrics(outputs, y)
                metrics.update({f"{split}/{k}": v.mean().item() for k, v in per_example.items()})
                if split == "train" and self.task.flipped is not None and "accuracy" in per_example:
                    metrics.update(self._noise_metrics(outputs, per_example["accuracy"]))
        finally:
            self.model.train(was_training)
        return metrics

    def _noise_metrics(self, outputs: Tensor, correct: Tensor) -> dict[str, float]:
        flipped = self.task.flipped.to(outputs.device)
        out = {"train/accuracy_clean": correct[~flipped].mean().item() if (~flipped).any() else math.nan}
        if flipped.any():
            out["train/accuracy_flipped"] = correct[flipped].mean().item()
            true = self.task.clean_targets.to(outputs.device)[flipped]
            out["train/accuracy_flipped_true"] = (outputs[flipped].argmax(1) == true).double().mean().item()
        return out

    def _eval_and_log(self) -> dict[str, float]:
        metrics = self.evaluate()
        for key, value in metrics.items():
            split, name = key.split("/", 1)
            self.log(self.step, split, name, value)
        for cb in self.callbacks:
            cb.on_eval(self, self.step, metrics)
        self.flush()
        return metrics

    # -- training -----------------------------------------------------------
    def _batches(self, generator: torch.Generator):
        """The training batches from step ``self.step`` on (one per step, :func:`epoch_batches`)."""
        n = len(self.task.train)  # type: ignore[arg-type]
        size = n if self.batch_size == "full" else min(self.batch_size * self.accumulate, n)
        if self.streamed:  # endless: every epoch, one loader
            yield from self._loader(self.task.train, size, order=generator, start=self.step)
        x, y, idx = self._train  # idx is arange(n), so a batch's indices are b itself
        on_cpu = x.device.type == "cpu"
        for b in epoch_batches(n, size, generator, self.step):
            if size == n and self.world == 1:
                yield x, y, idx
            else:
                b = shard(b, self.rank, self.world)
                b = b if on_cpu else b.to(x.device)
                yield x[b], y[b], b

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bitwise where this one is: the step, the model, the
        optimizer (a wrapper with its base), the schedule, the loss, penalty and augmentation when they are modules
        (their per-example state), the gradient scaler, each callback's ``state_dict()`` (probes keep their
        reference points), every global generator (:func:`~reglab.train.checkpoint.rng_state`), the metric rows
        logged so far and the ones not yet sent to the sink, and the last evaluation. The batch order is
        recomputed from the seed and the step (:func:`epoch_batches`)."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "loss": _module_state(self.loss_fn),
            "penalty": _module_state(self.penalty),
            "augment": _module_state(self.augment),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "callbacks": [_callback_state(cb) for cb in self.callbacks],
            "rng": rng_state(),
            "history": list(self.history),
            "pending": list(self._pending),
            "final": dict(self._final),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next :meth:`fit` continues from ``state["step"]`` without evaluating
        step 0 again or calling ``on_train_begin``.

        Raises:
            CheckpointError: the state does not fit this trainer (another model, optimizer or schedule).
        """
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            _optimizer_to(self.optimizer)
            for obj, key in ((self.scheduler, "scheduler"), (self.scaler, "scaler")):
                if obj is not None and state.get(key) is not None:
                    obj.load_state_dict(state[key])
            for obj, key in ((self.loss_fn, "loss"), (self.penalty, "penalty"), (self.augment, "augment")):
                if isinstance(obj, nn.Module) and state.get(key) is not None:
                    obj.load_state_dict(state[key])
                    obj.to(self.device)
            saved = state.get("callbacks") or []
            for cb, cb_state in zip(self.callbacks, saved):
                if cb_state is not None and callable(getattr(cb, "load_state_dict", None)):
                    cb.load_state_dict(_on_device(cb_state, self.device))
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint does not fit this run: {type(err).__name__}: {err}") from None
        self.step = int(state["step"])
        self.history = [tuple(r) for r in state["history"]]
        self._pending = [tuple(r) for r in state["pending"]]
        self._final = dict(state["final"])
        self._rng = state["rng"]
        self._resumed = True

    def _checkpoint(self) -> None:
        if self.rank != 0:  # one writer: every rank holds the same state
            return
        if self.checkpoint_every is not None and (self.step % self.checkpoint_every == 0 or self.step == self.steps):
            self.checkpoints.save(self.state_dict(), self.step)

    def fit(self) -> TrainResult:
        """Run optimizer steps up to ``steps`` (from step 0, or from the step :meth:`load_state_dict` restored);
        returns a :class:`TrainResult` (never raises on divergence)."""
        start = time.perf_counter()
        self._stop_reason = None
        self.model.train()
        if not self._resumed:
            self.history, self._pending = [], []
            torch.manual_seed(self.seed)
            batches = self._batches(torch.Generator().manual_seed(self.seed))
            for cb in self.callbacks:
                cb.on_train_begin(self)
            self._final = self._eval_and_log()
        else:
            batches = self._batches(torch.Generator().manual_seed(self.seed))
            set_rng_state(self._rng)
        self._resumed = False
        final = self._final
        status, diverged_at = "done", None
        while self.step < self.steps:
            if self.world > 1:
                self._per_example.before()
            record = train_step(
                self.model,
                next(batches),
                self.loss_fn,
                self.optimizer,
                self.penalty,
                self.augment,
                step=self.step,
                precision=self.precision,
                scaler=self.scaler,
                clip_grad_norm=self.clip_grad_norm,
                accumulate=self.accumulate,
                data_parallel=self.world > 1,
            )
            if self.world > 1:
                self._per_example.after()
            self.step += 1
            if self.scheduler is not None:
                self.scheduler.step()
            # under a GradScaler an overflowing gradient (grad_norm inf) is a step the scaler skipped, not divergence
            finite = _is_finite({k: v for k, v in record.items() if k != "grad_norm"} if self.scaler else record)
            if not finite or self.step % self.log_every == 0:
                for name, value in record.items():
                    self.log(self.step, "train", "batch_loss" if name == "loss" else name, value)
            if not finite:
                status, diverged_at = "diverged", self.step
                break
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, record)
            if self.step % self.eval_every == 0 or self.step == self.steps or self._stop_reason:
                final = self._final = self._eval_and_log()
                if not _is_finite(final, ("/loss",)):
                    status, diverged_at = "diverged", self.step
                    break
            if self._stop_reason:
                status = "stopped"
                break
            self._checkpoint()
        result = TrainResult(
            status, self.step, diverged_at, final, self.history, time.perf_counter() - start, self._stop_reason
        )
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        self.flush()
        return result
