"""Hyperparameter search: space validation, trials as store runs, pruning, duplicates, resume after SIGKILL,
the report's search section, the Ray backend."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reglab.core import ConfigError
from reglab.experiments.store import Store
from reglab.experiments.study import parse_study
from reglab.experiments.tune import ObjectiveReporter, check_search, run_tune, storage_path

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "task": {"name": "two_moons", "n": 120, "n_test": 60},
    "model": {"name": "mlp", "width": 8},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "penalties": [{"name": "l2", "weight": 1.0e-4}],
    "train": {"steps": 20, "eval_every": 5, "batch_size": 30},
}
SEARCH = {"optimizer.lr": {"low": 1.0e-3, "high": 1.0, "log": True}, "penalties.0.weight": {"choices": [0, 1.0e-3]}}


def search_study(name: str = "s", base: dict | None = None, **extra) -> dict:
    return {
        "study": name,
        "base": base or BASE,
        "search": SEARCH,
        "objective": "test/accuracy",
        "direction": "maximize",
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"optimizer.lr": {"low": 0.1, "high": 0.01}}}, r"search: optimizer.lr: low must be < high"),
        ({"search": {"optimizer.lr": {"low": 0.1, "high": 0.1}}}, r"optimizer.lr: low must be < high"),
        ({"search": {"optimizer.lr": {"low": 0, "high": 1, "log": True}}}, r"optimizer.lr: log: true needs low > 0"),
        ({"search": {"optimizer.lr": {"low": 0.1}}}, r"optimizer.lr: a range needs both 'low' and 'high'"),
        ({"search": {"optimizer.lr": {"low": "a", "high": 1}}}, r"optimizer.lr: low must be a finite number"),
        ({"search": {"optimizer.lr": {"low": 0.1, "high": 1, "step": 2}}}, r"optimizer.lr: unknown keys \['step'\]"),
        ({"search": {"optimizer.lr": {"choices": []}}}, r"optimizer.lr: choices must be a non-empty list"),
        ({"search": {"optimizer.lr": {"choices": [0.1, 0.1]}}}, r"optimizer.lr: choices must be distinct"),
        ({"search": {"loss": {"choices": [{"name": "mse"}]}}}, r"search: loss: choice .* is not a number"),
        ({"search": {"train.seed": {"choices": [0, 1]}}}, r"'train.seed' is set by the study itself"),
        ({"objective": "accuracy"}, r"'objective' must name a metric the runs log as split/name"),
        ({"direction": "up"}, r"'direction' must be minimize or maximize, got 'up'"),
        ({"variants": {"a": {}}}, r"'search' cannot be combined with \['variants'\]"),
        ({"seeds": [0, 1]}, r"a search trains each trial once, on one seed"),
    ],
)
def test_a_bad_search_study_is_refused_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_study({**search_study(), **change})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"optimizer.lrr": {"low": 0.1, "high": 1.0}}}, r"(?s)search: optimizer.lrr=0.1: .*lrr"),
        ({"search": {"penalties.3.weight": {"choices": [0.1]}}}, r"(?s)search: penalties.3.weight=0.1: .*not an index"),
        ({"search": {"train.steps": {"choices": [10, "many"]}}}, r"(?s)search: train.steps='many': .*train.steps"),
        ({"objective": "test/f1"}, r"objective: the runs of this study log no metric 'test/f1'; .*test/accuracy"),
        ({"objective": "probe/sharpness"}, r"objective: 'probe/sharpness' is not a metric of the study's probes"),
    ],
)
def test_bad_paths_values_and_objectives_fail_before_anything_is_written(tmp_path, change, message):
    study = parse_study({**search_study(), **change})
    with pytest.raises(ConfigError, match=message):
        check_search(study)
    with Store(tmp_path / "runs.db") as store, pytest.raises(ConfigError, match=message):
        run_tune(study, store, trials=2)
    with Store(tmp_path / "runs.db") as store:
        assert store.runs() == []
    assert not storage_path(tmp_path / "runs.db", "s").exists()


def test_the_objective_may_be_a_noise_metric_or_a_probe_metric():
    noisy = {**BASE, "transforms": [{"name": "label_noise", "rate": 0.2}]}
    check_search(parse_study(search_study(base=noisy, objective="train/accuracy_flipped")))
    with pytest.raises(ConfigError, match="train/accuracy_flipped"):
        check_search(parse_study(search_study(objective="train/accuracy_flipped")))
    probed = {**BASE, "probes": [{"name": "weight_norm", "every": 5}]}
    check_search(parse_study(search_study(base=probed, objective="probe/weight_norm", direction="minimize")))


def test_search_studies_are_not_expanded_and_run_options_are_checked(tmp_path):
    study = parse_study(search_study())
    with pytest.raises(ConfigError, match="is a search .*`reglab tune"):
        study.expand()
    with Store(tmp_path / "runs.db") as store:
        for kwargs, message in (
            ({"sampler": "grid"}, "sampler"),
            ({"pruner": "asha"}, "pruner"),
            ({"backend": "dask"}, "backend"),
            ({"workers": 2}, "workers=2: the local backend trains one trial at a time"),
        ):
            with pytest.raises(ConfigError, match=message):
                run_tune(study, store, trials=2, **kwargs)
    with Store(":memory:") as memory, pytest.raises(ConfigError, match="needs a store file"):
        run_tune(study, memory, trials=2)


class _Trainer:
    def __init__(self):
        self.history, self.stopped = [], None

    def stop(self, reason):
        self.stopped = reason


def test_the_reporter_skips_step_0_reads_probe_rows_and_stops_on_a_reason():
    seen = []
    reporter = ObjectiveReporter("test/accuracy", lambda step, value: seen.append((step, value)) or None)
    trainer = _Trainer()
    reporter.on_eval(trainer, 0, {"test/accuracy": 0.1})
    reporter.on_eval(trainer, 5, {"test/accuracy": 0.5})
    reporter.on_eval(trainer, 10, {"test/accuracy": float("nan")})
    assert seen == [(5, 0.5)] and reporter.last == (5, 0.5) and trainer.stopped is None
    probe = ObjectiveReporter("probe/norm", lambda step, value: "bad" if value > 2 else None)
    trainer.history = [(5, "probe", "norm", 1.0), (10, "test", "loss", 0.3), (10, "probe", "norm", 3.0)]
    probe.on_eval(trainer, 10, {"test/loss": 0.3})
    assert probe.last == (10, 3.0) and probe.pruned == "bad" and trainer.stopped == "bad"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One search of 10 trials with the median pruner (a few seconds), shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("tune")
    base = {**BASE, "train": {"steps": 40, "eval_every": 10, "batch_size": 30}}
    study = parse_study(search_study(base=base))
    with Store(folder / "runs.db") as store:
        result = run_tune(study, store, trials=10, pruner="median")
    return folder, study, result


def test_every_trial_is_a_run_with_its_sampled_values_and_pruned_runs_say_so(tuned):
    folder, study, result = tuned
    assert result.finished == 10 and len(result.trials) == 10
    ostudy = optuna.load_study(study_name="s", storage=f"sqlite:///{storage_path(folder / 'runs.db', 's')}")
    with Store(folder / "runs.db") as store:
        for trial in ostudy.trials:
            if "reglab_duplicate_of" in trial.user_attrs:
                continue
            record = store.run(trial.user_attrs["reglab_run_id"])
            assert record.study == "s" and record.name == f"trial {trial.number}"
            assert record.config["optimizer"]["lr"] == trial.params["optimizer.lr"]
            assert record.config["penalties"][0]["weight"] == trial.params["penalties.0.weight"]
            assert record.status == trial.user_attrs["reglab_status"]
            accuracy = store.metrics(record.id, split="test", name="accuracy")
            if record.status == "pruned":
                assert trial.state == optuna.trial.TrialState.PRUNED
                assert record.step < 40 and accuracy[-1][0] == record.step and "pruned by the median" in record.error
            else:
                assert record.status == "done" and record.step == 40
                assert trial.value == accuracy[-1][3]  # the value is the objective at the last evaluation
        statuses = collections.Counter(r.status for r in store.runs(study="s"))
    assert statuses["pruned"] >= 1 and statuses["pruned"] == sum(t.state.name == "PRUNED" for t in ostudy.trials)
    assert result.best_value == max(t.value for t in ostudy.trials if t.state.name == "COMPLETE")


@pytest.mark.slow
def test_the_report_of_a_search_has_its_section(tuned, tmp_path):
    from reglab.experiments.report import write_report

    folder, _, result = tuned
    index = write_report(folder / "runs.db", tmp_path / "report", study="s")
    html = index.read_text()
    assert '<h2 id="search">Search</h2>' in html and 'id="trials-table"' in html
    assert (tmp_path / "report" / "search_objective.png").stat().st_size > 1000
    assert 'id="importance-table"' in html and "optimizer.lr" in html
    assert html.count("<tr><td>") >= 10  # one row per trial
    other = write_report(folder / "runs.db", tmp_path / "plain", study=None).read_text()
    assert 'id="search"' not in other


def test_a_config_sampled_again_is_not_trained_again(tmp_path):
    study = parse_study(search_study(search={"penalties.0.weight": {"choices": [0, 1.0e-3]}}))
    with Store(tmp_path / "runs.db") as store:
        result = run_tune(study, store, trials=5, pruner="none", sampler="random")
        runs = store.runs(study="s")
    assert result.finished == 5 and len(runs) == len({r.config_hash for r in runs}) <= 2
    duplicates = [t for t in result.trials if t.duplicate_of is not None]
    assert len(duplicates) == 5 - len(runs) and all(t.steps == 0 for t in duplicates)
    assert {t.run_id for t in result.trials} == {r.id for r in runs}


DRIVER = textwrap.dedent(
    """
    import sys
    from reglab.experiments.store import Store
    from reglab.experiments.study import load_study
    from reglab.experiments.tune import run_tune

    with Store(sys.argv[2]) as store:
        run_tune(load_study(sys.argv[1]), store, trials=int(sys.argv[3]), pruner="none")
    """
)


def _statuses(db: Path) -> list[str]:
    if not db.exists():
        return []
    with Store(db) as store:
        return [r.status for r in store.runs()]


@pytest.mark.slow
def test_a_sigkilled_search_resumes_to_n_trials_without_training_finished_ones_again(tmp_path):
    import yaml

    base = {**BASE, "train": {"steps": 400, "eval_every": 100, "batch_size": 30}}
    spec, db = tmp_path / "study.yaml", tmp_path / "runs.db"
    spec.write_text(yaml.safe_dump(search_study(base=base)))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(spec), str(db), "5"], env=env)
    try:
        deadline = time.time() + 240
        while collections.Counter(_statuses(db))["done"] < 2 or "running" not in _statuses(db):
            assert time.time() < deadline and driver.poll() is None, _statuses(db)
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    with Store(db) as store:
        before = {r.id: r for r in store.runs()}
    killed = [r for r in before.values() if r.status == "running"]
    assert len(killed) == 1 and killed[0].stale
    ostudy = optuna.load_study(study_name="s", storage=f"sqlite:///{storage_path(db, 's')}")
    killed_trial = next(t for t in ostudy.trials if t.state.name == "RUNNING")
    with Store(db) as store:
        result = run_tune(parse_study(yaml.safe_load(spec.read_text())), store, trials=5, pruner="none")
        after = store.runs()
    assert result.finished == 5 and len(result.trials) == 5 - (len(before) - 1)
    assert {r.status for r in after} == {"done"} and len(after) == 5
    assert all(before[i].ended == r.ended for i, r in ((r.id, r) for r in after) if i in before)  # not re-trained
    assert killed[0].id not in {r.id for r in after}  # the stale row is gone
    retried = result.trials[0]  # the killed trial's values are trained first
    assert retried.params == killed_trial.params
    ostudy = optuna.load_study(study_name="s", storage=f"sqlite:///{storage_path(db, 's')}")
    states = collections.Counter(t.state.name for t in ostudy.trials)
    assert states == {"COMPLETE": 5, "FAIL": 1}


@pytest.mark.slow
def test_the_ray_backend_records_every_trial_and_asha_prunes(tmp_path):
    pytest.importorskip("ray.tune", reason="the ray extra is not installed")
    study = parse_study(search_study(search={"optimizer.lr": {"low": 1.0e-4, "high": 1.0, "log": True}}))
    with Store(tmp_path / "runs.db") as store:
        result = run_tune(study, store, trials=6, backend="ray", workers=2, sampler="random")
        runs = store.runs(study="s")
        metrics = {r.id: store.metrics(r.id, split="test", name="accuracy") for r in runs}
    assert result.finished == 6 and len(runs) == 6
    assert {r.status for r in runs} <= {"done", "pruned"} and "done" in {r.status for r in runs}
    for r in runs:
        assert metrics[r.id][-1][0] == r.step  # the driver wrote every evaluation up to where the trial stopped
        assert (r.step == 20) == (r.status == "done")
    ostudy = optuna.load_study(study_name="s", storage=f"sqlite:///{storage_path(tmp_path / 'runs.db', 's')}")
    assert sorted(t.user_attrs["reglab_run_id"] for t in ostudy.trials) == sorted(r.id for r in runs)


@pytest.mark.slow
def test_reglab_tune_runs_a_search_from_the_command_line_and_resumes_to_more_trials(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from reglab.cli import app

    spec, db = tmp_path / "study.yaml", tmp_path / "runs.db"
    spec.write_text(yaml.safe_dump(search_study()))
    command = ["tune", str(spec), "--store", str(db), "--pruner", "none", "--sampler", "random"]
    first = CliRunner().invoke(app, [*command, "--trials", "2"])
    assert first.exit_code == 0, first.output
    assert "2 finished trials (2 now" in first.output and "best test/accuracy" in first.output
    second = CliRunner().invoke(app, [*command, "--trials", "3"])
    assert second.exit_code == 0 and "3 finished trials (1 now" in second.output, second.output
    with Store(db) as store:
        assert [r.name for r in store.runs()] == ["trial 0", "trial 1", "trial 2"]
