"""The Ray backend of :func:`reglab.experiments.tune.run_tune`: trials on Ray Tune, stopped early by ASHA.

Ray's ``OptunaSearch`` samples (TPE or random, warm-started with the search's
complete trials) and ``ASHAScheduler`` stops trials over training steps
(``time_attr="step"``, from ``eval_every`` to ``train.steps``). Each trial
reports, after every evaluation, the objective, the step and the metric rows
logged since its last report (as JSON); a last report carries the run's
outcome. The driver (:class:`_Recorder`, a Ray Tune callback) is the only
writer: it opens the trial's run in the store and a RUNNING trial in the
search's Optuna record when Ray starts the trial, writes the rows and reports
the objective as they arrive, and ends both when the trial ends: ``pruned``
when ASHA stopped it before its last step, else the run's own status.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from reglab.core import ConfigError
from reglab.experiments.config import parse_config
from reglab.experiments.runner import open_run, train
from reglab.experiments.store import Store
from reglab.experiments.study import Study, set_path
from reglab.experiments.tune import ObjectiveReporter, TrialRecord, TuneResult, _distributions, _finished, _tell


def _trainable(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """One Ray trial: the config of ``params`` trained with its objective and rows reported after each evaluation."""
    data = dict(spec["base"])
    for path, value in params.items():
        data = set_path(data, path, value)
    cfg = parse_config({**data, "name": "ray trial", "train": {**data.get("train", {}), "seed": spec["seed"]}})
    sent = [0]

    def rows(trainer: Any) -> str:
        new = trainer.history[sent[0] :]
        sent[0] = len(trainer.history)
        return json.dumps(new)

    class Report(ObjectiveReporter):
        def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            super().on_eval(trainer, step, metrics)
            if step > 0 and self.last is not None and self.last[0] == step:
                tune.report({"objective": self.last[1], "step": step, "rows": rows(trainer)})

    reporter = Report(spec["objective"], lambda step, value: None)
    outcome, history = train(cfg, callbacks=[reporter])
    final = {"step": outcome.steps, "rows": json.dumps(history[sent[0] :]), "outcome": json.dumps(outcome.to_dict())}
    if reporter.last is not None:
        final["objective"] = reporter.last[1]
    tune.report(final)


def run(
    optuna: Any,
    ostudy: Any,
    study: Study,
    store: Store,
    remaining: int,
    sampler: str,
    pruner: str,
    workers: int | None,
    result: TuneResult,
    on_trial: Any,
    total: int,
) -> None:
    """Run ``remaining`` trials of ``study`` on a private local Ray instance; see the module docstring."""
    import ray

    workers = workers or os.cpu_count() or 1
    threads = parse_config(study.trial_data({}, "check")).train.threads
    if threads > workers:
        raise ConfigError(f"train.threads={threads} needs that many CPUs, more than workers={workers}")
    steps_cfg = parse_config(study.trial_data({}, "check")).train
    mode = "max" if study.direction == "maximize" else "min"
    states = optuna.trial.TrialState
    complete = [t for t in ostudy.get_trials(deepcopy=False) if t.state == states.COMPLETE]
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    searcher = OptunaSearch(
        space=_distributions(optuna, study.search),
        metric="objective",
        mode=mode,
        sampler=samplers[sampler](seed=study.seeds[0] + len(ostudy.trials)),
        points_to_evaluate=[dict(t.params) for t in complete] or None,  # with their values: added, not trained
        evaluated_rewards=[t.value for t in complete] or None,
    )
    if pruner == "none":
        scheduler: Any = FIFOScheduler()
    else:
        max_t = max(steps_cfg.steps, 1)
        grace = min(steps_cfg.eval_every, max_t)
        scheduler = ASHAScheduler(time_attr="step", metric="objective", mode=mode, max_t=max_t, grace_period=grace)
    recorder = _Recorder(optuna, ostudy, study, store, steps_cfg.steps, result, on_trial, total)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a diverged trial reports no objective
    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    scratch = tempfile.mkdtemp(prefix="reglab-tune-")
    spec = {"base": study.base, "seed": study.seeds[0], "objective": study.objective}
    try:
        trainable = tune.with_resources(tune.with_parameters(_trainable, spec=spec), {"cpu": threads})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=remaining,
                max_concurrent_trials=max(1, workers // threads),
            ),
            run_config=tune.RunConfig(storage_path=scratch, callbacks=[recorder], verbose=0),
        )
        tuner.fit()
    except BaseException as err:
        recorder.abandon(f"tune interrupted: {err!r}")
        raise
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)


class _Recorder(tune.Callback):
    """A Ray Tune callback in the driver: every trial's run and Optuna trial, written as results arrive."""

    def __init__(
        self,
        optuna: Any,
        ostudy: Any,
        study: Study,
        store: Store,
        steps: int,
        result: TuneResult,
        on_trial: Any,
        total: int,
    ) -> None:
        self.optuna, self.ostudy, self.study, self.store = optuna, ostudy, study, store
        self.steps, self.result, self.on_trial, self.total = steps, result, on_trial, total
        self.open: dict[str, dict[str, Any]] = {}

    def _params(self, trial: Any) -> dict[str, Any]:
        flat: dict[str, Any] = {}

        def walk(value: Any, prefix: str) -> None:
            if isinstance(value, dict) and prefix not in self.study.search:
                for k, v in value.items():
                    walk(v, f"{prefix}/{k}" if prefix else k)
            else:
                flat[prefix] = value

        walk(trial.config, "")
        return {k.replace("/", "."): v for k, v in flat.items() if k.replace("/", ".") in self.study.search}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = self._params(trial)
        self.ostudy.enqueue_trial(params)
        otrial = self.ostudy.ask(_distributions(self.optuna, self.study.search))
        otrial.set_user_attr("reglab_host", socket.gethostname())
        otrial.set_user_attr("reglab_pid", os.getpid())
        name = f"trial {otrial.number}"
        cfg = parse_config(self.study.trial_data(params, name))
        run_id = open_run(self.store, cfg, self.study.name)
        otrial.set_user_attr("reglab_run_id", run_id)
        otrial.set_user_attr("reglab_config_hash", cfg.config_hash())
        entry = {"trial": otrial, "run_id": run_id, "params": params, "step": 0, "outcome": None, "last": None}
        self.open[trial.trial_id] = entry

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        entry = self.open.get(trial.trial_id)
        if entry is None:
            return
        rows = [tuple(r) for r in json.loads(result.get("rows", "[]"))]
        if rows:
            self.store.log_metrics(entry["run_id"], rows)
        step = int(result.get("step", 0))
        entry["step"] = max(entry["step"], step)
        value = result.get("objective")
        if "outcome" in result:
            entry["outcome"] = json.loads(result["outcome"])
        elif value is not None and math.isfinite(value):
            entry["trial"].report(float(value), step)
            entry["last"] = float(value)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial.trial_id, "the Ray trial raised (see Ray's log)")

    def _end(self, trial_id: str, error: str | None) -> None:
        entry = self.open.pop(trial_id, None)
        if entry is None:
            return
        outcome = entry["outcome"]
        if outcome is not None:
            status, step, error = outcome["status"], outcome["diverged_at"] or outcome["steps"], outcome["error"]
            if status == "done" and entry["last"] is None:
                status, error = "failed", f"the run logged no finite {self.study.objective}"
        elif error is None and entry["step"] >= self.steps:  # ASHA stops a trial at its last step, before its outcome
            status, step = ("done" if entry["last"] is not None else "failed"), entry["step"]
            error = None if entry["last"] is not None else f"the run logged no finite {self.study.objective}"
        elif error is None:
            status, step = "pruned", entry["step"]
            error = f"pruned by ASHA at step {step}: {self.study.objective}={entry['last']}"
        else:
            status, step = "failed", entry["step"]
        self.store.finish_run(entry["run_id"], status, step=step, error=error)
        _tell(self.optuna, self.ostudy, entry["trial"], status, entry["last"], {})
        number = entry["trial"].number
        record = TrialRecord(number, entry["run_id"], status, entry["last"], entry["params"], step, error=error)
        self.result.trials.append(record)
        if self.on_trial is not None:
            self.on_trial(record, len(_finished(self.optuna, self.ostudy)), self.total)

    def abandon(self, reason: str) -> None:
        """Mark every open trial interrupted (store) and failed with its params queued again (Optuna)."""
        for entry in self.open.values():
            self.store.finish_run(entry["run_id"], "interrupted", error=reason)
            self.ostudy.tell(entry["trial"], state=self.optuna.trial.TrialState.FAIL)
            self.ostudy.enqueue_trial(entry["params"], user_attrs={"reglab_retry_of": entry["trial"].number})
        self.open.clear()


__all__ = ["run"]
