"""The runner, the store integration and the HTML report."""

from __future__ import annotations

import math

import pytest
import torch

from reglab.core import Callback
from reglab.experiments import Store, execute, parse_config, write_report
from reglab.experiments.config import deep_merge

BASE = {
    "task": {"name": "two_moons", "n": 200, "n_test": 100},
    "model": {"name": "mlp", "width": 16},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "train": {"steps": 20, "batch_size": 50, "eval_every": 10},
    "probes": [{"name": "weight_norm", "every": 10}],
}


def test_execute_records_run_metrics_and_probes(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        out = execute(parse_config(BASE), store, study="s")
        assert out.status == "done" and out.steps == 20
        rec = store.run(out.run_id)
        assert rec.status == "done" and rec.study == "s" and rec.step == 20
        assert rec.config["task"]["name"] == "two_moons" and rec.config_hash == parse_config(BASE).config_hash()
        rows = store.metrics(out.run_id)
        names = {(split, name) for _, split, name, _ in rows}
        assert {("train", "loss"), ("test", "accuracy"), ("probe", "weight_norm"), ("train", "grad_norm")} <= names
        assert {s for s, sp, n, _ in rows if (sp, n) == ("test", "accuracy")} == {0, 10, 20}
        assert out.final["test/accuracy"] == pytest.approx(
            [v for s, sp, n, v in rows if (s, sp, n) == (20, "test", "accuracy")][0]
        )


def test_diverged_run_is_recorded_not_raised(tmp_path):
    cfg = parse_config(deep_merge(BASE, {"optimizer": {"lr": 1e6}, "train": {"steps": 200}}))
    with Store(tmp_path / "runs.db") as store:
        out = execute(cfg, store)
        rec = store.run(out.run_id)
    assert out.status == "diverged" == rec.status
    assert out.diverged_at is not None and rec.step == out.diverged_at < 200


def test_failing_run_is_recorded_with_its_error(tmp_path):
    cfg = parse_config(deep_merge(BASE, {"transforms": [{"name": "label_noise", "rate": 1.5}]}))
    with Store(tmp_path / "runs.db") as store:
        out = execute(cfg, store)
        rec = store.run(out.run_id)
    assert out.status == "failed" == rec.status
    assert "rate" in rec.error


#: A run whose numbers depend on torch's thread count (measured: 1 and 2 threads differ in the 7th digit).
THREAD_SENSITIVE = {
    "task": {"name": "digits"},
    "model": {"name": "mlp", "width": 128},
    "optimizer": {"name": "adam", "lr": 1.0e-3},
    "train": {"steps": 20, "batch_size": 128, "eval_every": 10},
}


def test_same_config_and_seed_store_identical_metrics_in_one_process(tmp_path):
    """Built here or by build_all before other configs were built, run twice: bitwise the same stored metrics."""
    from reglab.experiments.runner import build_all

    cfg = parse_config(THREAD_SENSITIVE)
    other = parse_config(deep_merge(THREAD_SENSITIVE, {"train": {"seed": 5}}))
    with Store(tmp_path / "runs.db") as store:
        first = execute(cfg, store)
        built, _ = build_all([cfg, other])
        second = execute(cfg, store, built=built)
        assert store.metrics(first.run_id) == store.metrics(second.run_id) and store.metrics(first.run_id)
        assert store.run(first.run_id).config["train"]["threads"] == 1  # the thread count is recorded


class _Threads(Callback):
    def __init__(self):
        self.seen = set()

    def on_step_end(self, trainer, step, info):
        self.seen.add(torch.get_num_threads())


def test_a_run_uses_its_train_threads_and_restores_the_process_count():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for threads in (1, 2):
            seen = _Threads()
            execute(parse_config(deep_merge(BASE, {"train": {"threads": threads, "steps": 3}})), callbacks=[seen])
            assert seen.seen == {threads} and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    default, explicit = parse_config(BASE), parse_config(deep_merge(BASE, {"train": {"threads": 1}}))
    assert default.config_hash() == explicit.config_hash()  # the default stays out of the hash
    assert default.config_hash() != parse_config(deep_merge(BASE, {"train": {"threads": 2}})).config_hash()


def test_report_escapes_names_and_shows_mean_over_seeds(tmp_path):
    nasty = "<script>alert(1)</script>"
    with Store(tmp_path / "runs.db") as store:
        for seed in (0, 1):
            execute(parse_config(deep_merge(BASE, {"name": nasty, "train": {"seed": seed}})), store)
        index = write_report(store, tmp_path / "report")
    html = index.read_text()
    assert nasty not in html and "&lt;script&gt;" in html
    assert (tmp_path / "report" / "curve_test_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "report" / "curve_probe_weight_norm.png").is_file()
    assert "±" in html


def test_report_of_empty_store_says_what_to_do(tmp_path):
    from reglab.core import StoreError

    with pytest.raises(StoreError, match="reglab run"):
        write_report(tmp_path / "empty.db", tmp_path / "r")


def _fake_run(store, name, config, seed, status, test_accuracy):
    run = store.create_run(config, name=name, config_hash="h", seed=seed)
    store.start_run(run)
    store.log_metrics(run, [(0, "test", "accuracy", 0.1), (10, "test", "accuracy", test_accuracy)])
    store.finish_run(run, status, step=10)


def test_summary_table_averages_seeds_of_one_config_and_counts_only_finished_runs(tmp_path):
    from reglab.experiments.report import summary_table

    config = {"task": {"name": "t"}, "train": {"seed": 0}}
    with Store(tmp_path / "runs.db") as store:
        _fake_run(store, "m", config, 0, "done", 0.8)
        _fake_run(store, "m", {**config, "train": {"seed": 1}}, 1, "done", 0.6)
        _fake_run(store, "m", {**config, "train": {"seed": 2}}, 2, "diverged", float("nan"))
        rows = summary_table(store.to_frame(), store.runs_frame())
    (row,) = rows
    assert row["runs"] == 3 and "diverged 1" in row["status"] and "done 2" in row["status"]
    cell = row["test/accuracy"]
    assert cell.n == 2 and cell.mean == pytest.approx(0.7) and cell.std == pytest.approx(math.sqrt(0.02))


def test_summary_table_never_merges_different_configs_of_one_name(tmp_path):
    from reglab.experiments.report import summary_table

    with Store(tmp_path / "runs.db") as store:
        _fake_run(store, "m", {"optimizer": {"lr": 0.5}}, 0, "done", 0.9)
        _fake_run(store, "m", {"optimizer": {"lr": 1e-4}}, 0, "done", 0.3)
        rows = summary_table(store.to_frame(), store.runs_frame())
    assert len(rows) == 2 and all(r["name"].startswith("m [") for r in rows)
    assert sorted(r["test/accuracy"].mean for r in rows) == pytest.approx([0.3, 0.9])


def test_final_value_is_the_last_even_when_nan(tmp_path):
    from reglab.experiments.report import final_values

    with Store(tmp_path / "runs.db") as store:
        run = store.create_run({}, name="n", config_hash="h", seed=0)
        store.log_metrics(run, [(0, "test", "loss", 0.3), (5, "test", "loss", float("nan"))])
        finals = final_values(store.to_frame())
    assert math.isnan(finals["test/loss"].iloc[0])


def test_report_groups_an_explicit_default_with_its_omission(tmp_path):
    """Runs that are one config_hash apart only by their seed share a report row."""
    from reglab.experiments.report import summary_table

    a = parse_config({**BASE, "name": "m"})
    b = parse_config(deep_merge(BASE, {"name": "m", "optimizer": {"momentum": 0}, "train": {"seed": 1}}))
    with Store(tmp_path / "runs.db") as store:
        _fake_run(store, "m", a.model_dump(mode="json"), 0, "done", 0.8)
        _fake_run(store, "m", b.model_dump(mode="json"), 1, "done", 0.6)
        rows = summary_table(store.to_frame(), store.runs_frame())
    assert len(rows) == 1 and rows[0]["test/accuracy"].n == 2
