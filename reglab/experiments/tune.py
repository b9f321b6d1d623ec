"""Hyperparameter search: a study's ``search`` space explored with Optuna, every trial a run in the store.

:func:`run_tune` samples configs from a search study (see
:mod:`reglab.experiments.study` and :mod:`reglab.experiments.search`), trains
each one as a normal run of the study in the :class:`Store`, named ``trial N``,
and reports the study's ``objective`` to the sampler after every evaluation so
that the pruner can stop a bad trial early. A pruned trial's run ends with
status ``pruned`` at the step where it stopped; a diverged or failed run is a
finished trial too (Optuna state FAIL, its store status kept).

Optuna's own record of the search, an SQLite file ``<store>.<study>.optuna.db``
beside the store (:func:`storage_path`), links each trial to its run (user attribute
``reglab_run_id``) and is what makes a search resumable and what the report
reads (objective per trial, parameter importances):

- ``trials=N`` means N finished trials in total: a search run again continues
  from the trials already finished until there are N.
- A trial left RUNNING by a process that is gone (Ctrl-C or SIGKILL; the
  owner's host and pid are trial attributes) is marked FAIL, its store row
  deleted (like a stale row of ``reglab sweep``) and its parameters queued
  again, so the next trial trains exactly what the killed one was training.
  A RUNNING trial of a live process belongs to another driver and is left to
  it: several ``reglab tune`` processes on the same study share one search
  (Optuna's way to search in parallel) and stop when N trials are finished.
- A sampled config equal to a finished trial's (same config hash: a discrete
  space sampled twice) is not trained again: the trial records the earlier
  trial's result and run id (user attribute ``reglab_duplicate_of``).

Objective and pruning. The objective is read after every evaluation but the
one at step 0 (the untrained model says nothing about the hyperparameters):
an evaluation metric (``train/loss``, ``test/accuracy``, the label-noise
metrics, ...) from the evaluation itself, a ``probe/`` metric from what the
probe logged at that step. A trial's value is the objective at its last
evaluation. Pruners: ``median`` (Optuna's MedianPruner: stop a trial whose
objective is worse than the median of earlier trials at the same step, after
5 trials), ``hyperband`` (HyperbandPruner over training steps, from
``eval_every`` to ``train.steps``) or ``none``.

Backends. ``local`` trains the trials one after another in this process
(several processes on the same study search in parallel, see above).
``ray`` runs them on Ray Tune with the ASHA scheduler (asynchronous successive
halving, Hyperband's asynchronous form, over training steps) whatever the
pruner but ``none``, ``workers`` trials at a time; the sampler is Optuna's
inside Ray's ``OptunaSearch``, warm-started with the trials already complete.
The driver alone writes the store and the Optuna file: each trial reports its
metric rows with its results.

Everything is checked before anything trains (:func:`check_search`): every
end of every range and every choice must give a valid config, and the
objective must be a metric the runs log.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reglab.core import Callback, ConfigError
from reglab.core.validation import check_choice, check_int
from reglab.experiments.config import RunConfig, config_hash, parse_config
from reglab.experiments.runner import build, open_run, train
from reglab.experiments.search import Choice, Dimension, Range
from reglab.experiments.store import Store, _pid_alive  # the one liveness check that stale rows use
from reglab.experiments.study import Study

__all__ = [
    "BACKENDS",
    "PRUNERS",
    "SAMPLERS",
    "ObjectiveReporter",
    "SearchSummary",
    "TrialRecord",
    "TuneResult",
    "check_search",
    "evaluation_metrics",
    "load_search",
    "run_tune",
    "storage_path",
]

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
BACKENDS = ("local", "ray")
#: Store statuses of finished trials; a trial of any other status was cut short by its driver.
TRIAL_STATUSES = ("done", "pruned", "diverged", "failed")


def storage_path(store_path: str | os.PathLike[str], study: str) -> Path:
    """Optuna's SQLite file of the search ``study`` whose runs go to the store at ``store_path``: beside it, named
    after both (``runs.db`` and study ``lr`` give ``runs.lr.optuna.db``), so two stores in a folder never share one."""
    path = Path(store_path).expanduser()
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", study)
    return path.parent / f"{path.stem}.{slug}.optuna.db"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("reglab tune needs Optuna: pip install 'reglab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# -- checks before anything trains -----------------------------------------------------------------------------------


def evaluation_metrics(task: Any) -> list[str]:
    """The ``split/name`` metrics the :class:`~reglab.train.Trainer` evaluates on ``task`` (see ``evaluate``)."""
    names = ["loss"] if task.num_classes is None else ["loss", "accuracy"]
    metrics = [f"{split}/{name}" for split in ("train", "test") for name in names]
    if task.num_classes is not None and getattr(task, "flipped", None) is not None:
        metrics += ["train/accuracy_clean", "train/accuracy_flipped", "train/accuracy_flipped_true"]
    return metrics


def check_search(study: Study) -> RunConfig:
    """Check a search study before anything trains; returns the config of its first trial's corner (every
    dimension at its low end or first choice), which is built once here.

    Raises:
        ConfigError: the study is not a search; a range end or a choice gives an invalid config (naming
            ``search: <path>=<value>``); or the objective is not a metric the runs log (naming the metrics
            they do).
    """
    if not study.is_search:
        raise ConfigError(
            f"study {study.name!r} has no 'search' section: give search, objective and direction "
            "(or run its listed runs with `reglab sweep`)"
        )
    for path, dim in study.search.items():
        for value in dim.ends:
            try:
                parse_config(study.trial_data({path: value}, "check"))
            except ConfigError as err:
                raise ConfigError(f"search: {path}={value!r}: {err}") from None
    corner = {path: dim.ends[0] for path, dim in study.search.items()}
    cfg = parse_config(study.trial_data(corner, "check"))
    try:
        built = build(cfg)
    except ConfigError as err:
        raise ConfigError(f"search: the config with {corner}: {err}") from None
    objective = study.objective or ""
    split, _, name = objective.partition("/")
    known = evaluation_metrics(built.task)
    if split == "probe":
        probes = [type(p) for p in built.probes]
        if not any(getattr(p, "label", lambda _: None)(name) is not None for p in probes):
            listed = ", ".join(p.__name__ for p in probes) or "none"
            raise ConfigError(
                f"objective: {objective!r} is not a metric of the study's probes ({listed}); use one they log, "
                f"or one of {', '.join(known)}"
            )
    elif objective not in known:
        raise ConfigError(
            f"objective: the runs of this study log no metric {objective!r}; their evaluations give "
            f"{', '.join(known)} (and probe/<name> for the metrics of their probes)"
        )
    return cfg


# -- reporting the objective during training -------------------------------------------------------------------------


def _objective_value(trainer: Any, step: int, metrics: Mapping[str, float], objective: str) -> float | None:
    """The objective at this evaluation: from ``metrics``, else (a probe metric) what was logged at ``step``."""
    if objective in metrics:
        return float(metrics[objective])
    split, _, name = objective.partition("/")
    for row_step, row_split, row_name, value in reversed(trainer.history):
        if row_step < step:
            break
        if row_step == step and (row_split, row_name) == (split, name):
            return float(value)
    return None


class ObjectiveReporter(Callback):
    """Send the objective of every evaluation after step 0 to ``report(step, value)``; when it returns a reason,
    stop the run (``trainer.stop(reason)``) and remember it in :attr:`pruned`.

    Attributes:
        last: ``(step, value)`` of the last finite objective, or None.
        pruned: the reason the run was stopped, or None.
    """

    def __init__(self, objective: str, report: Callable[[int, float], str | None]):
        self.objective, self.report = objective, report
        self.last: tuple[int, float] | None = None
        self.pruned: str | None = None

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        if step == 0 or self.pruned is not None:
            return
        value = _objective_value(trainer, step, metrics, self.objective)
        if value is None or not math.isfinite(value):
            return
        self.last = (step, value)
        reason = self.report(step, value)
        if reason is not None:
            self.pruned = reason
            trainer.stop(reason)


# -- results ---------------------------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial this call finished: its Optuna number, store run, status, objective value and steps trained."""

    number: int
    run_id: int | None
    status: str
    value: float | None
    params: dict[str, Any]
    steps: int = 0
    duplicate_of: int | None = None
    error: str | None = None


@dataclass
class TuneResult:
    """What :func:`run_tune` did: the trials it finished, the totals of the search so far, the best trial."""

    study: str
    storage: Path
    trials: list[TrialRecord] = field(default_factory=list)
    finished: int = 0
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: int | None = None
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Number of this call's trials per status."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


# -- Optuna bookkeeping ----------------------------------------------------------------------------------------------


def _distributions(optuna: Any, space: Mapping[str, Dimension]) -> dict[str, Any]:
    out = {}
    for path, dim in space.items():
        if isinstance(dim, Choice):
            out[path] = optuna.distributions.CategoricalDistribution(list(dim.choices))
        elif isinstance(dim, Range) and dim.integer:
            out[path] = optuna.distributions.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[path] = optuna.distributions.FloatDistribution(float(dim.low), float(dim.high), log=dim.log)
    return out


def _is_finished(optuna: Any, trial: Any) -> bool:
    """Complete, pruned, or failed with a store status (a diverged or failed run): a result of the search."""
    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED) or (
        trial.state == states.FAIL and "reglab_status" in trial.user_attrs
    )


def _finished(optuna: Any, ostudy: Any) -> list[Any]:
    return [t for t in ostudy.get_trials(deepcopy=False) if _is_finished(optuna, t)]


def _owner_gone(trial: Any) -> bool:
    """Whether the process that runs this RUNNING trial is gone (decidable on its own host only)."""
    host, pid = trial.user_attrs.get("reglab_host"), trial.user_attrs.get("reglab_pid")
    if pid is None:  # killed between Optuna's ask and the first attribute: no live driver owns it
        return True
    return host == socket.gethostname() and not _pid_alive(int(pid))


def _recover(optuna: Any, ostudy: Any, store: Store, study: str) -> int:
    """Fail the trials of dead processes (their params queued again) and delete the study's store rows that are
    not results (stale running, interrupted, queued); returns the number of trials recovered."""
    states = optuna.trial.TrialState
    recovered = 0
    for trial in ostudy.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if not _owner_gone(trial):
            continue
        ostudy.tell(trial.number, state=states.FAIL, skip_if_finished=True)
        if trial.params:
            ostudy.enqueue_trial(dict(trial.params), user_attrs={"reglab_retry_of": trial.number})
        recovered += 1
    for record in store.runs(study=study):
        if record.status in ("queued", "interrupted") or (record.status == "running" and record.stale):
            store.delete_run(record.id)
    return recovered


def _open_study(optuna: Any, study: Study, url: str, sampler: str, pruner: str, seed: int) -> Any:
    """Create or load the Optuna study; its sampler is seeded with ``seed`` plus the trials already there."""
    storage = optuna.storages.RDBStorage(url)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if study.name in existing and existing[study.name].direction.name.lower() != study.direction:
        raise ConfigError(
            f"direction: the search {study.name!r} in {url} was run with direction "
            f"{existing[study.name].direction.name.lower()}, the study now says {study.direction}; "
            "rename the study to start a new search"
        )
    offset = existing[study.name].n_trials if study.name in existing else 0
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    steps, every = _resource(study)
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=every, max_resource=max(steps, every)),
        "none": optuna.pruners.NopPruner,
    }
    ostudy = optuna.create_study(
        storage=storage,
        study_name=study.name,
        direction=study.direction,
        sampler=samplers[sampler](seed=seed + offset),
        pruner=pruners[pruner](),
        load_if_exists=True,
    )
    previous = ostudy.user_attrs.get("objective")
    if previous is not None and previous != study.objective:
        raise ConfigError(
            f"objective: the search {study.name!r} in {url} optimized {previous!r}, the study now says "
            f"{study.objective!r}; rename the study to start a new search"
        )
    ostudy.set_user_attr("objective", study.objective)
    ostudy.set_user_attr("space", {p: repr(d) for p, d in study.search.items()})
    return ostudy


def _resource(study: Study) -> tuple[int, int]:
    """``(train.steps, train.eval_every)`` of the study's base (the config defaults when it leaves them out)."""
    train_cfg = parse_config({"task": {"name": "two_moons"}, "train": dict(study.base.get("train") or {})}).train
    return train_cfg.steps, train_cfg.eval_every


def _twin(optuna: Any, ostudy: Any, digest: str, number: int) -> Any:
    """A finished trial (other than ``number``) that trained the config of hash ``digest``, or None."""
    for trial in _finished(optuna, ostudy):
        if trial.number != number and trial.user_attrs.get("reglab_config_hash") == digest:
            return trial
    return None


def _best(optuna: Any, ostudy: Any) -> tuple[float | None, dict[str, Any], int | None]:
    complete = [t for t in ostudy.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None, {}, None
    best = ostudy.best_trial
    return best.value, dict(best.params), best.user_attrs.get("reglab_run_id")


# -- the local backend -----------------------------------------------------------------------------------------------


def _tell(optuna: Any, ostudy: Any, trial: Any, status: str, value: float | None, attrs: Mapping[str, Any]) -> str:
    """Record a trial's end in Optuna (attributes first: a finished trial takes none); returns the status."""
    states = optuna.trial.TrialState
    for key, attr in {**attrs, "reglab_status": status}.items():
        trial.set_user_attr(key, attr)
    if status == "done" and value is not None and math.isfinite(value):
        ostudy.tell(trial, value)
    elif status == "pruned":
        ostudy.tell(trial, state=states.PRUNED)
    else:
        ostudy.tell(trial, state=states.FAIL)
    return status


def _local_trial(optuna: Any, ostudy: Any, study: Study, store: Store, distributions: dict[str, Any]) -> TrialRecord:
    """Ask for one trial, train it as a run of the study (or reuse a finished twin), record its end."""
    trial = ostudy.ask(distributions)
    trial.set_user_attr("reglab_host", socket.gethostname())
    trial.set_user_attr("reglab_pid", os.getpid())
    params, number = dict(trial.params), trial.number
    name = f"trial {number}"
    data = study.trial_data(params, name)
    try:
        cfg = parse_config(data)
    except ConfigError as err:  # a combination of values that no corner check could see
        run_id = store.create_run(data, name=name, config_hash=config_hash(data), seed=study.seeds[0], study=study.name)
        store.finish_run(run_id, "failed", step=0, error=f"ConfigError: {err}")
        _tell(optuna, ostudy, trial, "failed", None, {"reglab_run_id": run_id})
        return TrialRecord(number, run_id, "failed", None, params, error=str(err))
    digest = cfg.config_hash()
    twin = _twin(optuna, ostudy, digest, number)
    if twin is not None:
        attrs = {"reglab_run_id": twin.user_attrs.get("reglab_run_id"), "reglab_config_hash": digest}
        attrs["reglab_duplicate_of"] = twin.number
        for step, value in twin.intermediate_values.items():
            trial.report(value, step)
        status = _tell(optuna, ostudy, trial, twin.user_attrs["reglab_status"], twin.value, attrs)
        return TrialRecord(number, attrs["reglab_run_id"], status, twin.value, params, duplicate_of=twin.number)

    run_id = open_run(store, cfg, study.name)
    trial.set_user_attr("reglab_run_id", run_id)
    trial.set_user_attr("reglab_config_hash", digest)
    label = ostudy.pruner.__class__.__name__.removesuffix("Pruner").lower() or "the"

    def report(step: int, value: float) -> str | None:
        trial.report(value, step)
        if step < cfg.train.steps and trial.should_prune():  # at the last step there is nothing left to save
            return f"pruned by the {label} pruner at step {step}: {study.objective}={value:.6g}"
        return None

    reporter = ObjectiveReporter(study.objective or "", report)
    try:
        outcome, _ = train(cfg, callbacks=[reporter], sink=lambda rows: store.log_metrics(run_id, rows))
    except BaseException as err:  # Ctrl-C or a failure of the driver: the trial is done again by the next tune
        store.finish_run(run_id, "interrupted", error=f"tune interrupted: {err!r}")
        ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
        ostudy.enqueue_trial(params, user_attrs={"reglab_retry_of": number})
        raise
    status = "pruned" if reporter.pruned and outcome.status == "done" else outcome.status
    value = reporter.last[1] if reporter.last else None
    if status == "done" and value is None:
        status, outcome.error = "failed", f"the run logged no finite {study.objective}"
    error = reporter.pruned if status == "pruned" else outcome.error
    store.finish_run(run_id, status, step=outcome.diverged_at or outcome.steps, error=error)
    _tell(optuna, ostudy, trial, status, value, {})
    return TrialRecord(number, run_id, status, value, params, steps=outcome.steps, error=error)


# -- the driver ------------------------------------------------------------------------------------------------------


def run_tune(
    study: Study,
    store: Store,
    *,
    trials: int,
    sampler: str = "tpe",
    pruner: str = "median",
    backend: str = "local",
    workers: int | None = None,
    seed: int | None = None,
    on_trial: Callable[[TrialRecord, int, int], None] | None = None,
) -> TuneResult:
    """Search ``study``'s space until it has ``trials`` finished trials; see the module docstring.

    Args:
        study: a search study (``search``, ``objective``, ``direction``).
        store: where every trial's run goes (a file: Optuna's record is written beside it).
        trials: finished trials wanted in total, counting those of earlier calls.
        sampler: ``"tpe"`` or ``"random"``.
        pruner: ``"median"``, ``"hyperband"`` or ``"none"`` (``ray``: ASHA unless ``none``).
        backend: ``"local"`` (this process) or ``"ray"`` (Ray Tune, a local instance).
        workers: trials at a time on Ray (default: the number of cores); the local backend runs one.
        seed: the sampler's seed (default: the study's seed); offset by the number of trials already recorded.
        on_trial: called as ``on_trial(record, finished, trials)`` after each trial, for progress display.

    Returns:
        A :class:`TuneResult` with this call's trials and the best trial so far.

    Raises:
        ConfigError: a bad sampler, pruner, backend, trials or workers, an in-memory store, or a study that
            fails :func:`check_search`; nothing is written then.
        KeyboardInterrupt: after marking the trial in progress ``interrupted`` (it is trained again on resume).
    """
    start = time.perf_counter()
    check_choice("sampler", sampler, SAMPLERS)
    check_choice("pruner", pruner, PRUNERS)
    check_choice("backend", backend, BACKENDS)
    check_int("trials", trials, 1)
    if workers is not None:
        check_int("workers", workers, 1)
        if backend == "local" and workers != 1:
            raise ConfigError(
                f"workers={workers}: the local backend trains one trial at a time; start several `reglab tune` "
                "processes on the same study to search in parallel, or use backend ray"
            )
    if store.path == ":memory:":
        raise ConfigError("store: tune needs a store file (its Optuna record is written beside it), not ':memory:'")
    check_search(study)
    optuna = _optuna()
    if backend == "ray":
        try:
            from reglab.experiments import tune_ray
        except ImportError as err:
            raise ConfigError(f"backend 'ray' needs Ray Tune: pip install 'reglab[ray]' ({err})") from None
    path = storage_path(store.path, study.name)
    ostudy = _open_study(optuna, study, f"sqlite:///{path}", sampler, pruner, study.seeds[0] if seed is None else seed)
    _recover(optuna, ostudy, store, study.name)
    result = TuneResult(study.name, path)
    if backend == "local":
        distributions = _distributions(optuna, study.search)
        while (done := len(_finished(optuna, ostudy))) < trials:
            record = _local_trial(optuna, ostudy, study, store, distributions)
            result.trials.append(record)
            if on_trial is not None:
                on_trial(record, done + 1, trials)
    else:
        remaining = trials - len(_finished(optuna, ostudy))
        if remaining > 0:
            tune_ray.run(optuna, ostudy, study, store, remaining, sampler, pruner, workers, result, on_trial, trials)
    result.finished = len(_finished(optuna, ostudy))
    result.best_value, result.best_params, result.best_run_id = _best(optuna, ostudy)
    result.seconds = time.perf_counter() - start
    return result


# -- what the report reads -------------------------------------------------------------------------------------------


@dataclass
class SearchSummary:
    """A search as the report shows it: objective, direction, every trial, parameter importances."""

    study: str
    objective: str
    direction: str
    trials: list[dict[str, Any]]
    importances: dict[str, float]
    importance_note: str = ""


def load_search(store_path: str | os.PathLike[str], study: str) -> SearchSummary | None:
    """The search of ``study`` recorded beside the store at ``store_path``, or None when there is none (no Optuna
    file, no such study in it, or Optuna not installed). Importances (fANOVA, Optuna's default) need two complete
    trials with different values; otherwise :attr:`SearchSummary.importance_note` says why there are none."""
    path = storage_path(store_path, study)
    if not path.is_file():
        return None
    try:
        optuna = _optuna()
    except ConfigError:
        return None
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    if study not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        return None
    ostudy = optuna.load_study(study_name=study, storage=storage)
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.last_step is not None:  # a trial stopped before its end: its last reported value
            value = t.intermediate_values[t.last_step]
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "status": t.user_attrs.get("reglab_status", t.state.name.lower()),
                "value": value,
                "step": t.last_step,
                "params": dict(t.params),
                "run_id": t.user_attrs.get("reglab_run_id"),
                "duplicate_of": t.user_attrs.get("reglab_duplicate_of"),
            }
        )
    complete = [t for t in ostudy.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    importances: dict[str, float] = {}
    note = ""
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        note = f"parameter importances need two complete trials with different values; there are {len(complete)}"
    else:
        try:
            importances = optuna.importance.get_param_importances(ostudy)
        except (RuntimeError, ValueError) as err:  # e.g. a parameter that took one value only
            note = f"parameter importances could not be computed: {err}"
    objective, direction = str(ostudy.user_attrs.get("objective", "objective")), ostudy.direction.name.lower()
    return SearchSummary(study, objective, direction, rows, importances, note)

