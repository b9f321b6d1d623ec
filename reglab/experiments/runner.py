"""Build a run from its config, train it, and record it in a store."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from reglab import augment, diagnostics, losses, optim, penalties, tasks
from reglab.core import Callback, ConfigError, Penalty, Registry, ReglabError, seed_everything
from reglab.experiments.config import RUN_ARGUMENTS, RunConfig, Spec
from reglab.experiments.store import Store
from reglab.train import Row, Trainer
from reglab.train.checkpoint import Checkpoints
from reglab.train.device import Precision, resolve_device
from reglab.train.distributed import world
from reglab.train.step import supports_grad_scaler

T = TypeVar("T")


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


def run_arguments(cfg: RunConfig, task: tasks.Task, model: nn.Module) -> dict[str, Any]:
    """The values of :data:`~reglab.experiments.config.RUN_ARGUMENTS` in the run of ``cfg`` over ``task`` and
    ``model``: ``{"num_examples": len(task.train), "num_classes": ..., "model": model, "total_steps": ...}``."""
    sources = {"task": task, "model": model, "train": cfg.train}
    return {name: value(sources[source]) for name, (source, value) in RUN_ARGUMENTS.items()}


def filled_kwargs(registry: Registry, spec: Spec, provided: Mapping[str, Any]) -> dict[str, Any]:
    """``spec``'s keyword arguments plus each ``provided`` one that its factory's signature takes; a value the
    config gives wins. A factory taking ``**kwargs`` gets none (its signature does not say what it takes)."""
    accepted = registry.parameters(spec.name) or ()
    return {**{k: v for k, v in provided.items() if k in accepted}, **spec.kwargs}


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; the previous count is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make(field: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, with an error prefixed by the config field it came from."""
    try:
        return factory(*args, **kwargs)
    except (ReglabError, TypeError, ValueError) as err:  # TypeError/ValueError: e.g. torch's "Invalid learning rate"
        raise ConfigError(f"{field}: {err}") from None


def check_machine(cfg: RunConfig) -> None:
    """Check ``train.device`` and ``train.precision`` against this machine (a missing GPU, fp16 on a CPU).

    Raises:
        ConfigError: naming the field.
    """
    device = resolve_device(cfg.train.device, field="train.device")
    Precision(cfg.train.precision, device, field="train.precision")


def build(cfg: RunConfig) -> Built:
    """Construct the task, model, loss, penalties, optimizer, augmentation, probes and schedule of ``cfg``.

    The task's data depend only on the task's own options (its ``seed`` option
    included), so every training seed sees the same data; ``train.seed`` seeds
    the model's initialization, the batch order, dropout and augmentation.
    Every factory built after the model (loss, penalties, optimizer, schedule,
    augmentations, probes) gets the :data:`~reglab.experiments.config.RUN_ARGUMENTS`
    its signature takes (:func:`run_arguments`; e.g. ELR's ``num_examples``, the
    SAM family's ``model``, a schedule's ``total_steps``) unless the config
    gives them. Everything is built with ``train.threads`` CPU threads.
    ``train.device`` and ``train.precision`` are checked against this machine
    first (:func:`check_machine`), so a missing GPU fails before any data is built.
    """
    check_machine(cfg)
    with torch_threads(cfg.train.threads):
        return _build(cfg)


def _build(cfg: RunConfig) -> Built:
    seed_everything(cfg.train.seed)
    task = _make("task", tasks.get, cfg.task.name, **cfg.task.kwargs)
    for i, spec in enumerate(cfg.transforms):
        task = _make(f"transforms[{i}]", tasks.TRANSFORMS.get, spec.name, task, **spec.kwargs)
    if cfg.model:
        model = _make("model", task.make_model, cfg.model.name, **cfg.model.kwargs)
    else:
        model = task.make_model()
    provided = run_arguments(cfg, task, model)

    def make(path: str, get: Callable[..., Any], registry: Registry, spec: Spec, *args: Any) -> Any:
        return _make(path, get, spec.name, *args, **filled_kwargs(registry, spec, provided))

    loss_spec = cfg.loss or Spec(name="cross_entropy" if task.num_classes is not None else "mse")
    loss = make("loss", losses.get, losses.REGISTRY, loss_spec)
    terms = [make(f"penalties[{i}]", penalties.get, penalties.REGISTRY, p) for i, p in enumerate(cfg.penalties)]
    penalty = sum(terms[1:], terms[0]) if terms else None
    optimizer = _make_optimizer(cfg, model, make)
    if cfg.train.precision == "fp16" and not supports_grad_scaler(optimizer):
        raise ConfigError(
            f"train.precision: fp16 needs a gradient scaler, which {cfg.optimizer.name!r} does not support (it "
            "re-evaluates the loss inside step); use bf16 or 32"
        )
    augs = [make(f"augment[{i}]", augment.get, augment.REGISTRY, a) for i, a in enumerate(cfg.augment)]
    probes = [make(f"probes[{i}]", diagnostics.get, diagnostics.REGISTRY, p) for i, p in enumerate(cfg.probes)]
    scheduler = None
    if cfg.schedule is not None:
        scheduler = make("schedule", optim.get_schedule, optim.SCHEDULES, cfg.schedule, optimizer)
    return Built(task, model, loss, penalty, optimizer, augment.compose(augs), probes, scheduler)


def _make_optimizer(cfg: RunConfig, model: nn.Module, make: Callable[..., Any]) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``model``: over ``model.parameters()``, or over the two param groups of
    :func:`reglab.optim.weight_decay_groups` when the entry has ``no_weight_decay`` (a wrapper hands them to its
    base; the Muon family splits them again by dimension)."""
    kwargs, no_decay = optim.split_no_weight_decay(cfg.optimizer.kwargs)
    if no_decay is None:
        return make("optimizer", optim.get, optim.REGISTRY, cfg.optimizer, model.parameters())
    groups = _make("optimizer", optim.weight_decay_groups, model, no_decay)
    optimizer = make("optimizer", optim.get, optim.REGISTRY, Spec(name=cfg.optimizer.name, **kwargs), groups)
    if "weight_decay" not in optimizer.defaults:
        raise ConfigError(
            f"optimizer.no_weight_decay: {cfg.optimizer.name!r} has no weight_decay to exclude parameters from; "
            "remove no_weight_decay"
        )
    return optimizer


def for_each_run(configs: Sequence[RunConfig], check: Callable[[RunConfig], T]) -> list[T]:
    """``[check(cfg) for cfg in configs]``, a reglab error becoming a :class:`ConfigError` that names the run.

    Raises:
        ConfigError: naming the run and the field, e.g. ``run 'l2' (seed 1): penalties[0]: ...``.
    """
    out = []
    for cfg in configs:
        try:
            out.append(check(cfg))
        except ReglabError as err:
            raise ConfigError(f"run {cfg.run_name!r} (seed {cfg.train.seed}): {err}") from None
    return out


def build_all(configs: Sequence[RunConfig]) -> list[Built]:
    """Build every config before any trains, so that a bad value fails first; the results are what
    :func:`execute` / :func:`train` then train (``built=``), so each config is built once. They are all held
    until trained (small for CPU-scale models; many large models are better swept in worker processes).

    Raises:
        ConfigError: naming the run and the field, e.g. ``run 'l2' (seed 1): penalties[0]: ...``.
    """
    return for_each_run(configs, build)


def make_trainer(
    cfg: RunConfig,
    built: Built,
    *,
    callbacks: Sequence[Callback] = (),
    sink: Callable[[list[Row]], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> Trainer:
    """The :class:`~reglab.train.Trainer` of ``cfg``'s ``train`` section over ``built``, with its probes
    (checkpointing into ``checkpoints`` every ``train.checkpoint_every`` steps when both are given)."""
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
        clip_grad_norm=cfg.train.clip_grad_norm,
        accumulate=cfg.train.accumulate,
        checkpoint_every=cfg.train.checkpoint_every if checkpoints is not None else None,
        checkpoints=checkpoints,
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
    cfg: RunConfig,
    *,
    built: Built | None = None,
    callbacks: Sequence[Callback] = (),
    sink: Callable[[list[Row]], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_resume: Callable[[int], None] | None = None,
) -> tuple[RunOutcome, list[Row]]:
    """Train ``cfg`` (from ``built``, else built here); returns what happened and every metric row
    ``(step, split, name, value)``.

    Checkpoints: with ``train.checkpoint_every`` the run writes checkpoints into ``checkpoint_dir`` (which must
    then be given); with ``resume`` it first continues from the newest readable checkpoint there, if any, and
    calls ``on_resume(step)`` with the step it continues from (a store deletes the rows logged after it). The
    returned rows are then the whole run's, those before the checkpoint included.

    Training runs with ``train.threads`` CPU threads, after Python's, NumPy's
    and torch's global generators are seeded with ``train.seed`` again, so the
    numbers do not depend on what this process built or ran before. A run that
    diverges ends ``diverged`` and one that raises ``failed`` (with the error
    text); neither raises, so a sweep goes on. Ctrl-C propagates.
    """
    start = time.perf_counter()
    outcome, history = RunOutcome(None, cfg.run_name, cfg.train.seed, "failed"), []
    try:
        checkpoints = _checkpoints(cfg, checkpoint_dir)
        built = build(cfg) if built is None else built
        with torch_threads(cfg.train.threads):
            seed_everything(cfg.train.seed)
            trainer = make_trainer(cfg, built, callbacks=callbacks, sink=sink, checkpoints=checkpoints)
            state = checkpoints.latest() if resume and checkpoints is not None else None
            if state is not None:
                trainer.load_state_dict(state)
                if on_resume is not None:
                    on_resume(trainer.step)
            result = trainer.fit()
        outcome.status = "diverged" if result.status == "diverged" else "done"
        outcome.steps, outcome.diverged_at, outcome.final = result.steps, result.diverged_at, result.final
        history = result.history
    except ReglabError as err:
        outcome.error = f"{type(err).__name__}: {err}"
    except Exception as err:  # a bug or a numerical failure in one run must not stop a sweep
        outcome.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
    outcome.seconds = time.perf_counter() - start
    return outcome, history


def _checkpoints(cfg: RunConfig, folder: str | Path | None) -> Checkpoints | None:
    """The run's checkpoint folder, checked writable (None without ``train.checkpoint_every`` or a folder)."""
    if cfg.train.checkpoint_every is None:
        return None
    if folder is None:
        raise ConfigError(
            "train.checkpoint_every: checkpoints are written next to a store; run with a store "
            "(reglab run CONFIG --store DB), or give checkpoint_dir"
        )
    return Checkpoints(folder, config_hash=cfg.config_hash())


def check_checkpoint_root(configs: Sequence[RunConfig], store: Store | str | Path) -> None:
    """When any of ``configs`` writes checkpoints, check that the folder next to ``store`` can be written, before
    anything trains.

    Raises:
        ConfigError: naming ``train.checkpoint_every`` and the folder.
    """
    if any(cfg.train.checkpoint_every is not None for cfg in configs):
        Checkpoints(checkpoint_dir(store, 0).parent)


def checkpoint_dir(store: Store | str | Path, run_id: int) -> Path:
    """Where the checkpoints of run ``run_id`` of a store go: ``<store path without suffix>.checkpoints/<id>``
    (``runs.db`` -> ``runs.checkpoints/7``)."""
    path = Path(store.path if isinstance(store, Store) else store)
    return path.with_name(path.stem + ".checkpoints") / str(run_id)


def open_run(store: Store, cfg: RunConfig, study: str | None) -> int:
    """Add ``cfg`` to ``store`` as a run started by this process; returns its id."""
    run_id = store.create_run(
        cfg.model_dump(mode="json"),
        name=cfg.run_name,
        config_hash=cfg.config_hash(),
        group_hash=cfg.group_hash(),
        seed=cfg.train.seed,
        study=study,
    )
    store.start_run(run_id)
    return run_id


def close_run(store: Store, run_id: int, outcome: RunOutcome) -> None:
    """Record the final status of a run (the step of divergence for a diverged one)."""
    store.finish_run(run_id, outcome.status, step=outcome.diverged_at or outcome.steps, error=outcome.error)


#: Statuses of a run that can be continued from its checkpoint (besides a stale ``running`` one).
RESUMABLE_STATUSES = ("interrupted",)


def resumable_run(store: Store, cfg: RunConfig, study: str | None) -> int | None:
    """The id of the newest run of ``cfg`` (same config hash and study) that was interrupted or whose process died
    while ``running`` (stale) and that has a checkpoint to continue from, or None."""
    for record in sorted(store.find(cfg.config_hash()), key=lambda r: r.id, reverse=True):
        if record.study != study or not (record.status in RESUMABLE_STATUSES or record.stale):
            continue
        folder = checkpoint_dir(store, record.id)
        if folder.is_dir() and any(folder.glob("step-*.pt")):
            return record.id
    return None


def share_run_id(run_id: int | None) -> int | None:
    """In a data-parallel run (``reglab run --nproc``), rank 0's ``run_id``, sent to every rank (the other ranks
    pass None and get it back); without a process group, ``run_id`` itself."""
    if world()[1] == 1:
        return run_id
    box = [run_id]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def follow(cfg: RunConfig, store_path: str | Path, *, resume: bool = False) -> RunOutcome:
    """What a rank other than 0 does for each run that rank 0 runs with :func:`execute`: train the same config on
    its share of every batch, writing nothing (rank 0 writes the store and the checkpoints) but reading the run's
    checkpoint when resuming."""
    run_id = share_run_id(None)
    return train(cfg, checkpoint_dir=checkpoint_dir(store_path, run_id), resume=resume)[0]


def execute(
    cfg: RunConfig,
    store: Store | None = None,
    *,
    study: str | None = None,
    built: Built | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> RunOutcome:
    """Train the run ``cfg`` describes in this process (from ``built``, e.g. by :func:`build_all`, else built
    here), streaming its metrics into ``store`` (if given), with its checkpoints (``train.checkpoint_every``) in
    :func:`checkpoint_dir`.

    With ``resume`` a run of the same config that was interrupted or killed (:func:`resumable_run`) continues from
    its last checkpoint, in its own row: the rows it logged after that checkpoint are deleted and logged again,
    the ones before are kept. Without one, a new run starts.

    See :func:`train` for how failures end. Ctrl-C marks the run
    ``interrupted`` and re-raises.
    """
    if store is None:
        return train(cfg, built=built, callbacks=callbacks)[0]
    run_id = resumable_run(store, cfg, study) if resume else None
    if run_id is None:
        run_id = open_run(store, cfg, study)
    else:
        store.start_run(run_id)
    share_run_id(run_id)
    try:
        outcome, _ = train(
            cfg,
            built=built,
            callbacks=callbacks,
            sink=lambda rows: store.log_metrics(run_id, rows),
            checkpoint_dir=checkpoint_dir(store, run_id),
            resume=resume,
            on_resume=lambda step: store.delete_metrics(run_id, after=step),
        )
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted by the user")
        raise
    outcome.run_id = run_id
    close_run(store, run_id, outcome)
    return outcome
