"""Build a run from its config, train it, and record it in a store."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reglab import augment, diagnostics, losses, optim, penalties, tasks
from reglab.core import Callback, ConfigError, Penalty, ReglabError, seed_everything
from reglab.experiments.config import TASK_ARGUMENTS, RunConfig, Spec
from reglab.experiments.store import Store
from reglab.train import Row, Trainer
from reglab.train.device import Precision, resolve_device
from reglab.train.step import supports_grad_scaler


@dataclass
class Built:
    """Everything a config describes, constructed and ready to train."""

    task: tasks.Task
    model: nn.Module
    loss: nn.Module
    penalty: Penalty | None
    optimizer: torch.optim.Optimizer
    augment: Any
    probes: list[Callback] = field(default_factory=list)
    scheduler: Any = None


def task_arguments(task: tasks.Task) -> dict[str, Any]:
    """The values of :data:`TASK_ARGUMENTS` for ``task``: training-set size and class count."""
    values = {"num_examples": len(task.train), "num_classes": task.num_classes}
    return {k: values[k] for k in TASK_ARGUMENTS}


def _with_task_arguments(registry: Any, name: str, kwargs: dict[str, Any], task: tasks.Task) -> dict[str, Any]:
    accepted = registry.parameters(name) or []
    filled = {k: v for k, v in task_arguments(task).items() if k in accepted and k not in kwargs}
    return {**filled, **kwargs}


def _make(field: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, with an error prefixed by the config field it came from."""
    try:
        return factory(*args, **kwargs)
    except (ReglabError, TypeError, ValueError) as err:  # TypeError/ValueError: e.g. torch's "Invalid learning rate"
        raise ConfigError(f"{field}: {err}") from None


def build(cfg: RunConfig) -> Built:
    """Construct the task, model, loss, penalties, optimizer, augmentation and probes of ``cfg``.

    The task's data depend only on the task's own options (its ``seed`` option
    included), so every training seed sees the same data; ``train.seed`` seeds
    the model's initialization, the batch order, dropout and augmentation.
    A loss, penalty or augmentation whose constructor takes ``num_examples`` or
    ``num_classes`` (per-example state such as ELR's targets) gets them from
    the task unless the config sets them. An optimizer factory that takes
    ``model`` (the SAM family) gets the built model, so BatchNorm statistics
    are updated once per step. ``train.device`` and ``train.precision`` are
    checked against this machine first, so a missing GPU fails before any
    data is built.
    """
    device = resolve_device(cfg.train.device, field="train.device")
    Precision(cfg.train.precision, device, field="train.precision")
    seed_everything(cfg.train.seed)
    task = _make("task", tasks.get, cfg.task.name, **cfg.task.kwargs)
    for i, spec in enumerate(cfg.transforms):
        task = _make(f"transforms[{i}]", tasks.TRANSFORMS.get, spec.name, task, **spec.kwargs)
    if cfg.model:
        model = _make("model", task.make_model, cfg.model.name, **cfg.model.kwargs)
    else:
        model = task.make_model()
    loss_spec = cfg.loss or Spec(name="cross_entropy" if task.num_classes is not None else "mse")
    loss_kwargs = _with_task_arguments(losses.REGISTRY, loss_spec.name, loss_spec.kwargs, task)
    loss = _make("loss", losses.get, loss_spec.name, **loss_kwargs)
    terms = []
    for i, p in enumerate(cfg.penalties):
        kwargs = _with_task_arguments(penalties.REGISTRY, p.name, p.kwargs, task)
        terms.append(_make(f"penalties[{i}]", penalties.get, p.name, **kwargs))
    penalty = sum(terms[1:], terms[0]) if terms else None
    opt_kwargs = dict(cfg.optimizer.kwargs)
    if "model" in (optim.REGISTRY.parameters(cfg.optimizer.name) or []):
        opt_kwargs.setdefault("model", model)  # the SAM family protects BatchNorm statistics from perturbed passes
    optimizer = _make("optimizer", optim.get, cfg.optimizer.name, model.parameters(), **opt_kwargs)
    if cfg.train.precision == "fp16" and not supports_grad_scaler(optimizer):
        raise ConfigError(
            f"train.precision: fp16 needs a gradient scaler, which {cfg.optimizer.name!r} does not support (it "
            "re-evaluates the loss inside step); use bf16 or 32"
        )
    augs = [
        _make(f"augment[{i}]", augment.get, a.name, **_with_task_arguments(augment.REGISTRY, a.name, a.kwargs, task))
        for i, a in enumerate(cfg.augment)
    ]
    probes = [_make(f"probes[{i}]", diagnostics.get, p.name, **p.kwargs) for i, p in enumerate(cfg.probes)]
    scheduler = None
    if cfg.schedule is not None:  # total_steps defaults to the run's length
        kwargs = cfg.schedule.kwargs
        if "total_steps" in (optim.SCHEDULES.parameters(cfg.schedule.name) or []):
            kwargs = {"total_steps": cfg.train.steps, **kwargs}
        scheduler = _make("schedule", optim.get_schedule, cfg.schedule.name, optimizer, **kwargs)
    return Built(task, model, loss, penalty, optimizer, augment.compose(augs), probes, scheduler)


def check_buildable(configs: Sequence[RunConfig]) -> None:
    """Build every config once (cheap: tasks are cached) so that a bad value fails before any run trains.

    Raises:
        ConfigError: naming the run and the field, e.g. ``run 'l2' (seed 1): penalties[0]: ...``.
    """
    for cfg in configs:
        try:
            build(cfg)
        except ReglabError as err:
            raise ConfigError(f"run {cfg.run_name!r} (seed {cfg.train.seed}): {err}") from None


def make_trainer(
    cfg: RunConfig, built: Built, *, callbacks: Sequence[Callback] = (), sink: Callable[[list[Row]], None] | None = None
) -> Trainer:
    """The :class:`~reglab.train.Trainer` of ``cfg``'s ``train`` section over ``built``, with its probes."""
    return Trainer(
        built.task,
        built.model,
        built.loss,
        built.optimizer,
        built.penalty,
        built.augment,
        steps=cfg.train.steps,
        batch_size=cfg.train.batch_size,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        callbacks=[*built.probes, *callbacks],
        scheduler=built.scheduler,
        seed=cfg.train.seed,
        sink=sink,
        device=cfg.train.device,
        precision=cfg.train.precision,
        num_workers=cfg.train.num_workers,
    )


@dataclass
class RunOutcome:
    """What happened to one run: ``status`` is done, diverged, failed or interrupted."""

    run_id: int | None
    name: str
    seed: int
    status: str
    steps: int = 0
    diverged_at: int | None = None
    final: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(
    cfg: RunConfig, *, callbacks: Sequence[Callback] = (), sink: Callable[[list[Row]], None] | None = None
) -> tuple[RunOutcome, list[Row]]:
    """Build and train ``cfg``; returns what happened and every metric row ``(step, split, name, value)``.

    A run that diverges ends ``diverged`` and one that raises ``failed`` (with
    the error text); neither raises, so a sweep goes on. Ctrl-C propagates.
    """
    start = time.perf_counter()
    outcome, history = RunOutcome(None, cfg.run_name, cfg.train.seed, "failed"), []
    try:
        result = make_trainer(cfg, build(cfg), callbacks=callbacks, sink=sink).fit()
        outcome.status = "diverged" if result.status == "diverged" else "done"
        outcome.steps, outcome.diverged_at, outcome.final = result.steps, result.diverged_at, result.final
        history = result.history
    except ReglabError as err:
        outcome.error = f"{type(err).__name__}: {err}"
    except Exception as err:  # a bug or a numerical failure in one run must not stop a sweep
        outcome.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
    outcome.seconds = time.perf_counter() - start
    return outcome, history


def open_run(store: Store, cfg: RunConfig, study: str | None) -> int:
    """Add ``cfg`` to ``store`` as a run started by this process; returns its id."""
    run_id = store.create_run(
        cfg.model_dump(mode="json"), name=cfg.run_name, config_hash=cfg.config_hash(), seed=cfg.train.seed, study=study
    )
    store.start_run(run_id)
    return run_id


def close_run(store: Store, run_id: int, outcome: RunOutcome) -> None:
    """Record the final status of a run (the step of divergence for a diverged one)."""
    store.finish_run(run_id, outcome.status, step=outcome.diverged_at or outcome.steps, error=outcome.error)


def execute(
    cfg: RunConfig,
    store: Store | None = None,
    *,
    study: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunOutcome:
    """Train the run ``cfg`` describes in this process, streaming its metrics into ``store`` (if given).

    See :func:`train` for how failures end. Ctrl-C marks the run
    ``interrupted`` and re-raises.
    """
    if store is None:
        return train(cfg, callbacks=callbacks)[0]
    run_id = open_run(store, cfg, study)
    try:
        outcome, _ = train(cfg, callbacks=callbacks, sink=lambda rows: store.log_metrics(run_id, rows))
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted by the user")
        raise
    outcome.run_id = run_id
    close_run(store, run_id, outcome)
    return outcome
