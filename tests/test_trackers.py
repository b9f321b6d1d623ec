"""Trackers: every row a store holds is in TensorBoard's event files and MLflow's store, read back row by row.

TensorBoard keeps scalars as float32, so a value read back equals the store's value rounded to float32 (NaN stays
NaN); MLflow keeps float64, so its values equal the store's exactly.
"""

from __future__ import annotations

import doctest
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from reglab import cli
from reglab.core import ConfigError
from reglab.experiments import trackers
from reglab.experiments.store import Store, StoreListenerWarning
from reglab.experiments.trackers import (
    EXPORT_COLUMNS,
    MLflowTracker,
    TensorBoardTracker,
    export,
    flatten_config,
    mlflow_key,
    tensorboard_run_dir,
)

TINY = {
    "task": {"name": "two_moons", "n": 120, "n_test": 60},
    "model": {"name": "mlp", "width": 8},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "penalties": [{"name": "l2", "weight": 1.0e-4}],
    "train": {"steps": 12, "eval_every": 4, "batch_size": 30},
}


# ---------------------------------------------------------------------------------------------------- read back


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def tensorboard_rows(run_dir: Path) -> dict[tuple[int, str, str], float]:
    """Every scalar of one run directory as ``{(step, split, name): value}``; fails on a repeated point."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    rows: dict[tuple[int, str, str], float] = {}
    for tag in acc.Tags()["scalars"]:
        split, name = tag.split("/", 1)
        for event in acc.Scalars(tag):
            assert (event.step, split, name) not in rows, f"{tag} at step {event.step} written twice"
            rows[(event.step, split, name)] = event.value
    return rows


def assert_tensorboard_matches(store: Store, logdir: Path, run_ids: list[int]) -> None:
    """The event files of each run hold exactly the store's rows, each value the store's rounded to float32."""
    for run_id in run_ids:
        record = store.run(run_id)
        got = tensorboard_rows(logdir / tensorboard_run_dir(record))
        want = {(step, split, name): value for step, split, name, value in store.metrics(run_id)}
        assert want and set(got) == set(want), f"run {run_id}: {sorted(set(got) ^ set(want))}"
        for key, value in want.items():
            assert _same(got[key], float(np.float32(value))), (run_id, key, got[key], value)


def mlflow_runs(uri: str, experiment: str) -> dict[int, object]:
    """``{reglab run id: MLflow run}`` of one experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    by_id = {int(r.data.tags["reglab.run_id"]): r for r in runs}
    assert len(by_id) == len(runs), "two MLflow runs for one reglab run"
    return by_id


def assert_mlflow_matches(store: Store, uri: str, experiment: str, run_ids: list[int]) -> None:
    """One MLflow run per reglab run, with the config as params, the tags, the status and exactly the store's rows."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = mlflow_runs(uri, experiment)
    assert sorted(runs) == sorted(run_ids)
    for run_id in run_ids:
        record, run = store.run(run_id), runs[run_id]
        assert run.data.params == flatten_config(record.config)
        tags = run.data.tags
        assert tags["reglab.config_hash"] == record.config_hash and tags["reglab.group_hash"] == record.group_hash
        assert tags["reglab.status"] == record.status and tags["reglab.store"] == str(Path(store.path).resolve())
        assert run.info.run_name == record.name
        if record.finished:
            assert run.info.status == trackers.MLFLOW_STATUS[record.status]
        got = {}
        for key in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, key):
                assert (metric.step, key) not in got, f"{key} at step {metric.step} logged twice"
                got[(metric.step, key)] = metric.value
        want = {(step, mlflow_key(split, name)): value for step, split, name, value in store.metrics(run_id)}
        assert want and set(got) == set(want), f"run {run_id}: {sorted(set(got) ^ set(want))}"
        for key, value in want.items():
            assert _same(got[key], value), (run_id, key, got[key], value)


def write_store(path: Path) -> Store:
    """A store written by hand: two studies, odd metric names, non-finite values, every kind of ending."""
    store = Store(path)
    specs = [
        ("a", "sam rho=0.05", "done", None),
        ("a", "sgd", "failed", "RuntimeError: boom"),
        ("b", "adam", "diverged", "loss is nan at step 2"),
        (None, "loose", None, None),  # still running: no end
    ]
    for i, (study, name, status, error) in enumerate(specs):
        run_id = store.create_run(
            {
                "optimizer": {"name": name.split()[0], "lr": 0.1 * (i + 1)},
                "penalties": [{"name": "l2", "weight": 1e-4}],
            },
            name=name,
            config_hash=f"h{i}",
            seed=i,
            study=study,
        )
        store.start_run(run_id)
        store.log_metrics(
            run_id,
            [(step, "train", "loss", 1.0 / (step + 1) + i) for step in range(4)]
            + [(3, "test", "accuracy", 0.5 + 0.1 * i), (2, "probe", "late_stopping/flagged", 3.0)]
            + [(1, "probe", "sharpness[top]", float("inf")), (3, "probe", "gap", float("nan"))],
        )
        if status is not None:
            store.finish_run(run_id, status, step=3, error=error)
    return store


def invoke(*args: str):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------------- live


@pytest.mark.slow
def test_run_writes_every_row_to_tensorboard_and_mlflow(tmp_path):
    """`reglab run STUDY --tensorboard DIR --mlflow DIR`: both trackers hold the store's rows, run by run."""
    study = {"study": "tiny", "base": TINY, "seeds": [0, 1]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    db, tb, ml = tmp_path / "r.db", tmp_path / "tb", tmp_path / "mlruns"
    out = invoke("run", tmp_path / "s.yaml", "--store", db, "--tensorboard", tb, "--mlflow", ml)
    assert out.exit_code == 0, out.output
    with Store(db) as store:
        run_ids = [r.id for r in store.runs()]
        assert len(run_ids) == 2 and all(r.status == "done" for r in store.runs())
        assert {split for _, split, _, _ in store.metrics(run_ids[0])} == {"train", "test"}
        assert_tensorboard_matches(store, tb, run_ids)
        assert_mlflow_matches(store, str(ml), "tiny", run_ids)


@pytest.mark.slow
def test_sweep_local_backend_writes_the_rows_workers_send_back(tmp_path):
    """A local-pool sweep: the driver writes each worker's rows into the store and the trackers (MLflow in SQLite)."""
    study = {"study": "pool", "base": TINY, "grid": {"optimizer.lr": [0.05, 0.2]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    db, tb, uri = tmp_path / "r.db", tmp_path / "tb", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("sweep", tmp_path / "s.yaml", "--store", db, "--backend", "local", "--workers", "2")
    out = invoke(*args, "--tensorboard", tb, "--mlflow", uri)
    assert out.exit_code == 0, out.output
    with Store(db) as store:
        run_ids = [r.id for r in store.runs()]
        assert len(run_ids) == 2 and all(r.status == "done" for r in store.runs())
        assert_tensorboard_matches(store, tb, run_ids)
        assert_mlflow_matches(store, uri, "pool", run_ids)
    again = invoke(*args, "--tensorboard", tb, "--mlflow", uri)  # a finished study: nothing runs, nothing is added
    assert again.exit_code == 0, again.output
    assert len(mlflow_runs(uri, "pool")) == 2


def test_tensorboard_opens_a_run_at_its_first_rows_and_closes_it_at_its_end(tmp_path):
    """A sweep opens every run before the first trains: no event file (and no writer thread) until rows come."""
    store, tb = Store(tmp_path / "r.db"), TensorBoardTracker(tmp_path / "tb")
    store.add_listener(tb)
    run_ids = [store.create_run({}, name=f"r{i}", config_hash=f"h{i}") for i in range(3)]
    for run_id in run_ids:
        store.start_run(run_id)
    assert [p.name for p in (tmp_path / "tb").iterdir()] == []
    store.log_metrics(run_ids[1], [(0, "train", "loss", 1.0)])
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["2-r1"]
    assert tensorboard_rows(tmp_path / "tb" / "2-r1") == {(0, "train", "loss"): 1.0}  # flushed as logged
    store.finish_run(run_ids[1], "done")
    store.log_metrics(run_ids[1], [(1, "train", "loss", 0.5)])  # a run logged to after its end is opened again
    store.finish_run(run_ids[1], "done")
    assert tensorboard_rows(tmp_path / "tb" / "2-r1") == {(0, "train", "loss"): 1.0, (1, "train", "loss"): 0.5}
    tb.close()


@pytest.mark.parametrize("reopened", [False, True], ids=["same-writer", "new-process"])
def test_tensorboard_drops_the_points_a_resumed_run_replays(tmp_path, reopened):
    """Rows after step 2 removed and logged again (a resume from the checkpoint of step 2): each step once."""
    store, tb = Store(tmp_path / "r.db"), TensorBoardTracker(tmp_path / "tb")
    store.add_listener(tb)
    run_id = store.create_run({}, name="r", config_hash="h")
    store.log_metrics(run_id, [(step, "train", "loss", float(step)) for step in range(6)])
    if reopened:  # the first process ended; the resuming process has its own tracker
        tb.close()
        store.remove_listener(tb)
        tb = TensorBoardTracker(tmp_path / "tb")
        store.add_listener(tb)
    assert store.delete_metrics(run_id, after=2) == 3  # what a resume from the checkpoint of step 2 does
    store.log_metrics(run_id, [(step, "train", "loss", 10.0 + step) for step in (3, 4)])
    tb.close()
    want = {(0, "train", "loss"): 0.0, (1, "train", "loss"): 1.0, (2, "train", "loss"): 2.0}
    assert tensorboard_rows(tmp_path / "tb" / "1-r") == {**want, (3, "train", "loss"): 13.0, (4, "train", "loss"): 14.0}


def test_a_run_resumed_in_another_process_continues_its_mlflow_run(tmp_path):
    """A tracker that never saw a run created finds the MLflow run tagged with the same store and run id."""
    store = Store(tmp_path / "r.db")
    first = MLflowTracker(tmp_path / "mlruns", experiment="e")
    store.add_listener(first)
    run_id = store.create_run({"x": 1}, name="r", config_hash="h", seed=0)
    store.start_run(run_id)
    store.log_metrics(run_id, [(0, "train", "loss", 2.0), (1, "train", "loss", 1.5)])
    store.finish_run(run_id, "interrupted", step=1)
    store.remove_listener(first)
    assert mlflow_runs(str(tmp_path / "mlruns"), "e")[run_id].info.status == "KILLED"

    later = Store(tmp_path / "r.db")  # another process: a new store object and a new tracker
    later.add_listener(MLflowTracker(tmp_path / "mlruns", experiment="e"))
    later.start_run(run_id)
    assert mlflow_runs(str(tmp_path / "mlruns"), "e")[run_id].info.status == "RUNNING"
    later.log_metrics(run_id, [(2, "train", "loss", 1.0)])
    later.finish_run(run_id, "done", step=2)
    assert_mlflow_matches(later, str(tmp_path / "mlruns"), "e", [run_id])


# ---------------------------------------------------------------------------------------------------- export


def test_export_to_every_target_reads_back_row_by_row(tmp_path):
    store = write_store(tmp_path / "r.db")
    run_ids = [r.id for r in store.runs()]
    frame = store.to_frame()
    assert export(store, "csv", tmp_path / "out" / "runs.csv") == 4
    assert export(store, "parquet", tmp_path / "out" / "runs.parquet") == 4
    for got in (pd.read_csv(tmp_path / "out" / "runs.csv"), pd.read_parquet(tmp_path / "out" / "runs.parquet")):
        assert list(got.columns) == list(EXPORT_COLUMNS) and len(got) == len(frame)
        for column in ("run_id", "step", "split", "name", "run_name", "status", "config_hash"):
            assert got[column].tolist() == frame[column].tolist(), column
        np.testing.assert_array_equal(got["value"].to_numpy(), frame["value"].to_numpy())  # NaN == NaN here
        records = {r.id: r for r in store.runs()}
        assert [yaml.safe_load(c) for c in got["config"]] == [records[i].config for i in got["run_id"]]
        assert got["group_hash"].tolist() == [records[i].group_hash for i in got["run_id"]]

    assert export(store, "tensorboard", tmp_path / "tb") == 4
    assert_tensorboard_matches(store, tmp_path / "tb", run_ids)

    assert export(store, "mlflow", tmp_path / "mlruns") == 4  # one experiment per study, "reglab" for none
    by_study = {"a": [1, 2], "b": [3], "reglab": [4]}
    for experiment, ids in by_study.items():
        assert_mlflow_matches(store, str(tmp_path / "mlruns"), experiment, ids)
    assert mlflow_runs(str(tmp_path / "mlruns"), "reglab")[4].info.status == "RUNNING"  # not finished in the store
    assert mlflow_runs(str(tmp_path / "mlruns"), "a")[2].data.tags["reglab.error"] == "RuntimeError: boom"

    with pytest.raises(ConfigError, match="already hold event files; export to a new directory"):
        export(store, "tensorboard", tmp_path / "tb")
    with pytest.raises(ConfigError, match=r"experiment 'a' .* already holds runs 1, 2 of the store"):
        export(store, "mlflow", tmp_path / "mlruns")


def test_export_command_with_a_study_filter(tmp_path):
    write_store(tmp_path / "r.db").close()
    out = invoke("export", tmp_path / "r.db", "--to", "csv", tmp_path / "a.csv", "--study", "a")
    assert out.exit_code == 0, out.output
    assert "exported 2 runs" in out.output
    assert sorted(set(pd.read_csv(tmp_path / "a.csv")["run_id"])) == [1, 2]
    out = invoke("export", tmp_path / "r.db", "--to", "tensorboard", tmp_path / "tb", "--study", "b")
    assert out.exit_code == 0, out.output
    assert [p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()] == ["3-adam"]


def test_export_refuses_bad_targets_and_destinations(tmp_path, monkeypatch):
    store = write_store(tmp_path / "r.db")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError, match="export --to must be one of tensorboard, mlflow, csv, parquet, got 'json'"):
        export(store, "json", tmp_path / "x.json")
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        export(store, "csv", tmp_path)
    with pytest.raises(ConfigError, match=r"export --to csv .*file.*cannot write to the directory"):
        export(store, "csv", tmp_path / "file" / "runs.csv")
    with pytest.raises(ConfigError, match="export --to tensorboard: cannot write to the directory"):
        export(store, "tensorboard", tmp_path / "file" / "tb")
    with pytest.raises(ConfigError, match="export --to mlflow: cannot write to the directory"):
        export(store, "mlflow", tmp_path / "file" / "mlruns")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match="export --to parquet needs pyarrow"):
        export(store, "parquet", tmp_path / "runs.parquet")
    assert not (tmp_path / "runs.parquet").exists()
    missing = invoke("export", tmp_path / "nope.db", "--to", "csv", tmp_path / "x.csv")
    assert "no store at" in str(missing.exception)


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "option, dest",
    [
        ("--tensorboard", "{file}/tb"),
        ("--mlflow", "{file}/mlruns"),
        ("--mlflow", "file://{file}/mlruns"),
        ("--mlflow", "sqlite:///{file}/m.db"),
    ],
    ids=["tensorboard-dir", "mlflow-dir", "mlflow-file-uri", "mlflow-sqlite"],
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_an_unwritable_tracker_fails_before_anything_trains_and_the_store_is_untouched(
    tmp_path, monkeypatch, command, option, dest
):
    """The destination is checked before the store is opened or any config is built; the store stays as it was."""
    from reglab.experiments import runner, sweep

    def no_training(*args, **kwargs):
        raise AssertionError("trained although a tracker destination is unwritable")

    monkeypatch.setattr(runner, "build_all", no_training)
    monkeypatch.setattr(sweep, "run_sweep", no_training)
    (tmp_path / "file").write_text("not a directory")
    write_store(tmp_path / "r.db").close()
    before = Store(tmp_path / "r.db").to_frame()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"study": "s", "base": TINY}))
    out = invoke(
        command, tmp_path / "s.yaml", "--store", tmp_path / "r.db", option, dest.format(file=tmp_path / "file")
    )
    assert isinstance(out.exception, ConfigError), out.output
    assert str(out.exception).startswith(option) and "file" in str(out.exception)
    pd.testing.assert_frame_equal(Store(tmp_path / "r.db").to_frame(), before)
    fresh = invoke(
        command, tmp_path / "s.yaml", "--store", tmp_path / "new.db", option, dest.format(file=tmp_path / "file")
    )
    assert isinstance(fresh.exception, ConfigError) and not (tmp_path / "new.db").exists()


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"--tensorboard \(TensorBoard\) needs the track extra.*reglab\[track\]"):
        TensorBoardTracker(tmp_path / "tb")
    for module in ("mlflow", "mlflow.entities", "mlflow.tracking"):  # None in sys.modules: import fails
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=r"--mlflow \(MLflow\) needs the track extra.*reglab\[track\]"):
        MLflowTracker(tmp_path / "mlruns")
    with pytest.raises(ConfigError, match="--mlflow: the MLflow tracking URI is empty"):
        MLflowTracker("")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(ConfigError, match=r"--mlflow='sqlite:///m.db': MLflow's SQL store needs sqlalchemy"):
        MLflowTracker("sqlite:///m.db")


def test_a_param_longer_than_mlflow_takes_is_cut_to_its_limit(tmp_path):
    store = Store(tmp_path / "r.db")
    store.add_listener(MLflowTracker(tmp_path / "mlruns", experiment="e"))
    run_id = store.create_run({"note": "x" * 7000, "lr": 0.1}, name="long", config_hash="h")
    params = mlflow_runs(str(tmp_path / "mlruns"), "e")[run_id].data.params
    assert params == {"note": "x" * trackers.MLFLOW_MAX_PARAM, "lr": "0.1"}


def test_a_deleted_experiment_is_refused(tmp_path):
    tracker = MLflowTracker(tmp_path / "mlruns", experiment="gone")
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(ConfigError, match="the MLflow experiment 'gone' is deleted"):
        MLflowTracker(tmp_path / "mlruns", experiment="gone")


# ---------------------------------------------------------------------------------------------------- the store hook


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.events: list[tuple] = []
        self.fail_on = fail_on

    def _event(self, name, *args):
        if name == self.fail_on:
            raise OSError("disk full")
        self.events.append((name, *args))

    def run_created(self, store, record):
        self._event("created", record.id, record.status)

    def run_started(self, store, record):
        self._event("started", record.id, record.status)

    def rows_logged(self, store, run_id, rows):
        self._event("rows", run_id, rows)

    def run_finished(self, store, record):
        self._event("finished", record.id, record.status, record.step)


def test_listeners_see_committed_writes_as_the_store_holds_them(tmp_path):
    store = Store(tmp_path / "r.db")
    seen = Recorder()
    store.add_listener(seen)
    store.add_listener(seen)  # attached once
    run_id = store.create_run({}, name="r", config_hash="h")
    store.start_run(run_id)
    store.log_metrics(run_id, [(1, "train", "loss", np.float32(0.5)), (2, "train", "loss", float("-inf"))])
    store.log_metrics(run_id, [])  # nothing written, nothing told
    with pytest.raises(Exception, match="metric step must be an integer"):
        store.log_metrics(run_id, [("x", "train", "loss", 1.0)])  # refused: nothing written, nothing told
    store.finish_run(run_id, "done", step=2)
    rows = seen.events[2][2]
    assert [e[0] for e in seen.events] == ["created", "started", "rows", "finished"]
    assert seen.events[0] == ("created", run_id, "queued") and seen.events[1] == ("started", run_id, "running")
    assert rows[0] == (1, "train", "loss", 0.5) and type(rows[0][3]) is float and math.isnan(rows[1][3])
    assert seen.events[3] == ("finished", run_id, "done", 2)
    store._notify("rows_deleted", run_id, 1)  # an optional event: a listener without it is skipped, not detached
    store.remove_listener(seen)
    store.create_run({}, name="r2", config_hash="h2")
    assert len(seen.events) == 4
    with pytest.raises(Exception, match="lacks run_started, rows_logged, run_finished"):
        store.add_listener(type("Half", (), {"run_created": lambda self, s, r: None})())


def test_a_failing_listener_is_detached_and_the_rows_stay_in_the_store(tmp_path):
    store = Store(tmp_path / "r.db")
    broken, fine = Recorder(fail_on="rows"), Recorder()
    store.add_listener(broken)
    store.add_listener(fine)
    run_id = store.create_run({}, name="r", config_hash="h")
    with pytest.warns(StoreListenerWarning, match=r"failed in rows_logged: OSError: disk full; it is detached"):
        store.log_metrics(run_id, [(1, "train", "loss", 1.0)])
    store.log_metrics(run_id, [(2, "train", "loss", 0.5)])
    assert store.metrics(run_id) == [(1, "train", "loss", 1.0), (2, "train", "loss", 0.5)]
    assert [e[0] for e in broken.events] == ["created"]
    assert [e[0] for e in fine.events] == ["created", "rows", "rows"]


# ---------------------------------------------------------------------------------------------------- helpers


def test_flatten_config_and_metric_keys():
    assert flatten_config({"a": {"b": [1, {"c": None}], "d": {}}, "e": True, "f": "x"}) == {
        "a.b.0": "1",
        "a.b.1.c": "null",
        "a.d": "{}",
        "e": "true",
        "f": "x",
    }
    assert mlflow_key("probe", "late_stopping/flagged") == "probe/late_stopping/flagged"
    assert mlflow_key("probe", "sharpness[top](x)") == "probe/sharpness_top__x_"
    assert mlflow_key("probe", "a//../b") == "probe/a/_/_/b"
    result = doctest.testmod(trackers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 1 and result.failed == 0
