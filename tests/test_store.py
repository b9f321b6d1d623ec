"""Tests of reglab.experiments.store: the SQLite result store."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from reglab.core.errors import StoreError
from reglab.experiments.config import config_hash, parse_config, stored_group_hash
from reglab.experiments.store import FINAL_STATUSES, SCHEMA_VERSION, STATUSES, RunRecord, Store

REPO = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).resolve().parent / "store_writer.py"

CONFIG = {
    "task": {"name": "two_moons", "n": 512},
    "penalties": [{"name": "l2", "weight": 1e-4}, {"name": "soft_orthogonality", "weight": 1e-3}],
    "optimizer": {"name": "sam", "lr": 0.1, "rho": 0.05, "nesterov": True},
    "notes": "ünïcode ✓",
    "schedule": None,
}


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "runs.db") as s:
        yield s


def _new_run(store: Store, **kwargs) -> int:
    args = {"name": "run", "config_hash": "h0", "seed": 0, "study": "s"}
    args.update(kwargs)
    return store.create_run(CONFIG, **args)


# ---------------------------------------------------------------------- opening


def test_new_file_has_schema_and_pragmas(tmp_path: Path):
    path = tmp_path / "sub" / "dir" / "runs.db"  # parent directories are created
    with Store(path) as s:
        conn = s._db
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "metrics"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_config_hash", "runs_study"} <= indexes
    assert path.exists()


def test_reopen_keeps_data(tmp_path: Path):
    path = tmp_path / "runs.db"
    with Store(path) as s:
        rid = _new_run(s)
        s.log_metric(rid, 0, "train", "loss", 1.5)
    with Store(str(path)) as s:
        assert s.run(rid).name == "run"
        assert s.metrics(rid) == [(0, "train", "loss", 1.5)]


def test_memory_store():
    with Store(":memory:") as s:
        rid = _new_run(s)
        s.log_metric(rid, 3, "test", "accuracy", 0.5)
        assert s.metrics(rid) == [(3, "test", "accuracy", 0.5)]
        with pytest.raises(StoreError, match="in-memory"):
            pickle.dumps(s)


def test_other_schema_version_is_refused(tmp_path: Path):
    path = tmp_path / "runs.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}"):
        Store(path)


def test_not_a_database_is_refused(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not an SQLite file, " * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store(path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a reglab store"):
        Store(path)


def test_unopenable_path(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        Store(blocker / "runs.db")  # parent is a file
    with pytest.raises(StoreError, match="empty"):
        Store("")


def test_closed_store_raises(tmp_path: Path):
    s = Store(tmp_path / "runs.db")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.runs()


# ---------------------------------------------------------------------- runs


def test_run_round_trip(store: Store):
    before = time.time()
    rid = store.create_run(CONFIG, name="sam-rho0.05", config_hash="abc", seed=7, study="sam")
    rec = store.run(rid)
    assert isinstance(rec, RunRecord)
    assert rec.id == rid
    assert rec.name == "sam-rho0.05"
    assert rec.config == CONFIG  # JSON round trip, key order and unicode kept
    assert list(rec.config) == list(CONFIG)
    assert rec.config_hash == "abc"
    assert rec.seed == 7
    assert rec.study == "sam"
    assert rec.status == "queued"
    assert rec.step is None and rec.started is None and rec.ended is None
    assert rec.host is None and rec.pid is None and rec.versions is None and rec.error is None
    assert before <= rec.created <= time.time()
    assert not rec.stale and not rec.finished
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "done"  # type: ignore[misc]


def test_group_hash_is_written_at_creation(store: Store):
    run_config = parse_config({"task": {"name": "two_moons"}, "train": {"seed": 3}})
    given = store.create_run({}, name="a", config_hash="h", group_hash="g")
    computed = store.create_run(run_config.model_dump(mode="json"), name="b", config_hash="h")
    other = store.create_run(CONFIG, name="c", config_hash="h")  # not a run config: the raw dict is hashed
    assert store.run(given).group_hash == "g"
    assert store.run(computed).group_hash == run_config.group_hash() != run_config.config_hash()
    assert store.run(other).group_hash == stored_group_hash(CONFIG)
    assert store.runs_frame()["group_hash"].tolist() == ["g", run_config.group_hash(), stored_group_hash(CONFIG)]


#: The ``runs`` table of schema version 1 (before ``group_hash``), as reglab wrote it.
_RUNS_V1 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, study TEXT, config TEXT, config_hash TEXT, seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'diverged', 'failed', 'interrupted')),
    step INTEGER, created REAL, started REAL, ended REAL, host TEXT, pid INTEGER, versions TEXT, error TEXT
);
CREATE INDEX runs_config_hash ON runs (config_hash);
CREATE INDEX runs_study ON runs (study);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id), step INTEGER NOT NULL, split TEXT NOT NULL, name TEXT NOT NULL,
    value REAL, PRIMARY KEY (run_id, step, split, name)
) WITHOUT ROWID;
"""


def test_a_version_1_store_is_migrated_with_the_group_hash_of_every_run(tmp_path: Path):
    base = {"task": {"name": "two_moons", "n": 100}, "optimizer": {"name": "sgd", "lr": 0.1}}
    configs = [
        parse_config({**base, "name": "m", "train": {"seed": seed}}).model_dump(mode="json") for seed in (0, 1)
    ]
    configs.append({**base, "train": {"seed": 2}})  # the same run written without defaults: same group
    configs.append(parse_config({**base, "optimizer": {"name": "sgd", "lr": 0.2}}).model_dump(mode="json"))
    configs.append({"notes": "not a run config", "train": {"seed": 4}})
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_RUNS_V1)
    for i, config in enumerate(configs):
        conn.execute(
            "INSERT INTO runs (name, config, config_hash, seed, status) VALUES (?, ?, ?, ?, 'done')",
            (f"r{i}", json.dumps(config), f"h{i}", i),
        )
    conn.execute("INSERT INTO metrics VALUES (1, 10, 'test', 'accuracy', 0.5)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        hashes = [r.group_hash for r in s.runs()]
        assert s.metrics(1) == [(10, "test", "accuracy", 0.5)] and [r.config_hash for r in s.runs()][0] == "h0"
    fresh = [parse_config(c).group_hash() for c in configs[:4]]
    assert hashes == [*fresh, config_hash({"notes": "not a run config", "train": {}})]
    assert hashes[0] == hashes[1] == hashes[2] != hashes[3]
    with Store(path) as s:  # opened again: nothing left to migrate
        assert [r.group_hash for r in s.runs()] == hashes


def test_a_version_2_store_takes_the_pruned_status_and_keeps_its_runs_ids_and_metrics(tmp_path: Path):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.executescript(_RUNS_V1.replace("error TEXT\n", "error TEXT, group_hash TEXT\n"))
    for i, status in enumerate(("done", "running", "failed")):
        conn.execute(
            "INSERT INTO runs (id, name, config, config_hash, group_hash, seed, status) "
            "VALUES (?, ?, '{}', ?, ?, ?, ?)",
            (10 + i, f"r{i}", f"h{i}", f"g{i}", i, status),
        )
    conn.execute("INSERT INTO metrics VALUES (11, 5, 'test', 'accuracy', 0.25)")
    with pytest.raises(sqlite3.IntegrityError):  # the old CHECK refuses the new status
        conn.execute("UPDATE runs SET status = 'pruned' WHERE id = 11")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Store(path) as s:
        s.finish_run(11, "pruned", step=5)
        rows = [(r.id, r.status, r.group_hash) for r in s.runs()]
        assert rows == [(10, "done", "g0"), (11, "pruned", "g1"), (12, "failed", "g2")]
        assert s.metrics(11) == [(5, "test", "accuracy", 0.25)]
        assert s.create_run({}, name="new", config_hash="h") == 13  # AUTOINCREMENT continues after the copied ids
        indexes = {r[0] for r in s._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_config_hash", "runs_study"} <= indexes
        assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced again after the migration
            s._db.execute("INSERT INTO metrics VALUES (99, 1, 'test', 'loss', 1.0)")


def test_config_tuples_become_lists_and_bad_configs_raise(store: Store):
    rid = store.create_run({"betas": (0.9, 0.99)}, name="adam", config_hash="h")
    assert store.run(rid).config == {"betas": [0.9, 0.99]}
    with pytest.raises(StoreError, match="JSON"):
        store.create_run({"path": object()}, name="bad", config_hash="h")
    with pytest.raises(StoreError, match="dict"):
        store.create_run([1, 2], name="bad", config_hash="h")  # type: ignore[arg-type]


def test_start_run(store: Store):
    import socket

    rid = _new_run(store)
    store.start_run(rid)
    rec = store.run(rid)
    assert rec.status == "running"
    assert rec.started is not None and rec.ended is None
    assert rec.host == socket.gethostname()
    assert rec.pid == os.getpid()
    assert set(rec.versions) == {"python", "torch", "numpy", "reglab", "platform"}
    assert rec.versions["python"].count(".") == 2
    assert not rec.stale  # this process is alive
    # the same run on another host cannot be judged stale
    assert not dataclasses.replace(rec, host="some-other-host", pid=2**22 + 12345).stale


def test_finish_run_statuses(store: Store):
    for status in FINAL_STATUSES:
        rid = _new_run(store, name=status)
        store.start_run(rid)
        store.set_step(rid, 10)
        store.finish_run(rid, status)
        rec = store.run(rid)
        assert rec.status == status and rec.finished and not rec.stale
        assert rec.step == 10  # kept when finish_run gets no step
        assert rec.ended is not None and rec.ended >= rec.started
    rid = _new_run(store, name="div")
    store.start_run(rid)
    store.finish_run(rid, "diverged", step=42, error="loss is nan at step 42")
    rec = store.run(rid)
    assert (rec.status, rec.step, rec.error) == ("diverged", 42, "loss is nan at step 42")
    # restarting clears the end and the error, keeps the step
    store.start_run(rid)
    rec = store.run(rid)
    assert (rec.status, rec.ended, rec.error, rec.step) == ("running", None, None, 42)


@pytest.mark.parametrize("status", ["running", "queued", "bogus", "DONE", ""])
def test_invalid_final_status(store: Store, status: str):
    rid = _new_run(store)
    with pytest.raises(StoreError) as info:
        store.finish_run(rid, status)
    for valid in FINAL_STATUSES:
        assert valid in str(info.value)
    assert store.run(rid).status == "queued"


def test_invalid_status_filter(store: Store):
    with pytest.raises(StoreError) as info:
        store.runs(status="finished")
    for valid in STATUSES:
        assert valid in str(info.value)


def test_check_constraint_on_status(store: Store):
    rid = _new_run(store)
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute("UPDATE runs SET status = 'weird' WHERE id = ?", (rid,))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.run(9999),
        lambda s: s.start_run(9999),
        lambda s: s.set_step(9999, 1),
        lambda s: s.finish_run(9999, "done"),
        lambda s: s.log_metrics(9999, [(0, "train", "loss", 1.0)]),
        lambda s: s.log_metrics(9999, []),
        lambda s: s.log_metric(9999, 0, "train", "loss", 1.0),
        lambda s: s.metrics(9999),
        lambda s: s.delete_run(9999),
    ],
)
def test_unknown_run_id(store: Store, call):
    _new_run(store)
    with pytest.raises(StoreError, match="9999"):
        call(store)
    assert len(store.runs()) == 1
    assert store.to_frame().empty


def test_runs_filters_and_find(store: Store):
    a = _new_run(store, name="a", study="s1", config_hash="h1")
    b = _new_run(store, name="b", study="s1", config_hash="h2")
    c = _new_run(store, name="c", study="s2", config_hash="h1")
    store.start_run(b)
    store.start_run(c)
    store.finish_run(c, "done")
    assert [r.id for r in store.runs()] == [a, b, c]
    assert [r.id for r in store.runs(study="s1")] == [a, b]
    assert [r.id for r in store.runs(status="queued")] == [a]
    assert [r.id for r in store.runs(status="running")] == [b]
    assert [r.id for r in store.runs(status="done", study="s2")] == [c]
    assert [r.id for r in store.runs(status="done", study="s1")] == []
    assert [r.id for r in store.runs(config_hash="h1")] == [a, c]
    assert [r.id for r in store.find("h1")] == [a, c]
    assert store.find("nope") == []


def test_delete_run(store: Store):
    a = _new_run(store, name="a")
    b = _new_run(store, name="b")
    store.log_metrics(a, [(s, "train", "loss", 1.0) for s in range(5)])
    store.log_metrics(b, [(s, "train", "loss", 2.0) for s in range(3)])
    store.delete_run(a)
    assert [r.id for r in store.runs()] == [b]
    assert store._db.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (a,)).fetchone()[0] == 0
    assert len(store.metrics(b)) == 3
    with pytest.raises(StoreError, match=str(a)):
        store.run(a)
    assert _new_run(store, name="c") not in (a, b)  # AUTOINCREMENT never reuses an id


# ---------------------------------------------------------------------- metrics


def test_metrics_round_trip_order_and_filters(store: Store):
    rid = _new_run(store)
    rows = [
        (20, "train", "loss", 0.5),
        (0, "train", "loss", 2.0),
        (10, "test", "accuracy", 0.7),
        (10, "train", "loss", 1.0),
        (0, "probe", "sharpness", 12.5),
    ]
    store.log_metrics(rid, rows)
    got = store.metrics(rid)
    assert got == sorted(rows, key=lambda r: (r[0], r[1], r[2]))
    assert [r[0] for r in got] == sorted(r[0] for r in got)
    assert store.metrics(rid, split="train") == [
        (0, "train", "loss", 2.0),
        (10, "train", "loss", 1.0),
        (20, "train", "loss", 0.5),
    ]
    assert store.metrics(rid, name="accuracy") == [(10, "test", "accuracy", 0.7)]
    assert store.metrics(rid, split="test", name="loss") == []
    other = _new_run(store, name="other")
    assert store.metrics(other) == []


def test_relog_is_idempotent(store: Store):
    rid = _new_run(store)
    store.log_metric(rid, 5, "train", "loss", 1.0)
    store.log_metric(rid, 5, "train", "loss", 0.25)  # replayed step after a resume
    store.log_metrics(rid, [(5, "test", "loss", 3.0), (5, "test", "loss", 4.0)])  # twice in one batch
    assert store.metrics(rid) == [(5, "test", "loss", 4.0), (5, "train", "loss", 0.25)]
    assert store._db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2


def test_non_finite_values_read_back_as_nan(store: Store):
    rid = _new_run(store)
    store.log_metrics(
        rid,
        [(0, "train", "loss", float("nan")), (1, "train", "loss", float("inf")), (2, "train", "loss", -math.inf)],
    )
    values = [v for _, _, _, v in store.metrics(rid)]
    assert len(values) == 3 and all(math.isnan(v) for v in values)
    assert store._db.execute("SELECT COUNT(*) FROM metrics WHERE value IS NULL").fetchone()[0] == 3
    frame = store.to_frame()
    assert frame["value"].dtype == "float64" and frame["value"].isna().all()


def test_metric_values_of_numpy_and_torch_types(store: Store):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    rid = _new_run(store)
    store.log_metrics(
        rid,
        [
            (np.int64(1), "train", "loss", np.float32(0.5)),
            (2, "train", "loss", torch.tensor(0.25, dtype=torch.float64)),
        ],
    )
    got = store.metrics(rid)
    assert got == [(1, "train", "loss", 0.5), (2, "train", "loss", 0.25)]
    assert all(type(v) is float and type(s) is int for s, _, _, v in got)


@pytest.mark.parametrize(
    "row",
    [
        (1.5, "train", "loss", 1.0),
        ("1", "train", "loss", 1.0),
        (1, None, "loss", 1.0),
        (1, "train", 3, 1.0),
        (1, "train", "loss", "high"),
        (1, "train", "loss"),
        5,
    ],
)
def test_bad_metric_rows_raise_and_write_nothing(store: Store, row):
    rid = _new_run(store)
    with pytest.raises(StoreError, match=f"run {rid}"):
        store.log_metrics(rid, [(0, "train", "loss", 1.0), row])
    assert store.metrics(rid) == []  # the whole batch is one transaction


def test_failing_iterable_writes_nothing(store: Store):
    rid = _new_run(store)

    def rows():
        yield (0, "train", "loss", 1.0)
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        store.log_metrics(rid, rows())
    assert store.metrics(rid) == []
    assert not store._db.in_transaction


def test_set_step(store: Store):
    rid = _new_run(store)
    store.set_step(rid, 3)
    store.set_step(rid, 4)
    assert store.run(rid).step == 4
    with pytest.raises(StoreError, match="integer"):
        store.set_step(rid, 4.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- frames


def test_to_frame(store: Store):
    a = _new_run(store, name="a", study="s1", seed=1, config_hash="h1")
    b = _new_run(store, name="b", study="s2", seed=None, config_hash="h2")
    store.start_run(a)
    store.finish_run(a, "done")
    store.log_metrics(a, [(1, "train", "loss", 0.5), (0, "train", "loss", 1.0), (0, "test", "accuracy", 0.1)])
    store.log_metrics(b, [(0, "train", "loss", 3.0)])
    frame = store.to_frame()
    assert list(frame.columns) == [
        "run_id",
        "run_name",
        "study",
        "seed",
        "status",
        "config_hash",
        "step",
        "split",
        "name",
        "value",
    ]
    assert len(frame) == 4
    assert frame.iloc[0].to_dict() == {
        "run_id": a,
        "run_name": "a",
        "study": "s1",
        "seed": 1,
        "status": "done",
        "config_hash": "h1",
        "step": 0,
        "split": "test",
        "name": "accuracy",
        "value": 0.1,
    }
    assert list(frame["run_id"]) == [a, a, a, b]
    assert list(frame["step"]) == [0, 0, 1, 0]
    assert list(frame["value"]) == [0.1, 1.0, 0.5, 3.0]
    only = store.to_frame(study="s2")
    assert list(only["run_name"]) == ["b"] and only["status"].tolist() == ["queued"]
    empty = store.to_frame(study="nothing")
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_runs_frame(store: Store):
    a = _new_run(store, name="a", study="s1")
    _new_run(store, name="b", study="s2")
    store.start_run(a)
    frame = store.runs_frame()
    assert len(frame) == 2
    for col in ("run_id", "run_name", "seed", "status", "config_hash", "group_hash", "step", "config", "stale"):
        assert col in frame.columns
    assert frame["run_name"].tolist() == ["a", "b"]
    assert frame["status"].tolist() == ["running", "queued"]
    assert frame["config"].iloc[0] == CONFIG
    assert store.runs_frame(study="s2")["run_name"].tolist() == ["b"]
    assert store.runs_frame(study="none").empty


# ---------------------------------------------------------------------- processes


def test_pickle_reopens_same_file(store: Store):
    rid = _new_run(store)
    clone = pickle.loads(pickle.dumps(store))
    try:
        clone.log_metric(rid, 1, "train", "loss", 0.5)
        assert store.metrics(rid) == [(1, "train", "loss", 0.5)]
    finally:
        clone.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reconnects(store: Store):
    rid = _new_run(store)
    store.log_metric(rid, 0, "train", "loss", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "process is multi-threaded" on 3.12+
        pid = os.fork()
    if pid == 0:  # child: use the inherited Store object, never return into pytest
        code = 1
        try:
            store.log_metric(rid, 1, "train", "loss", 0.5)
            code = 0 if store._conn is not None and store._pid == os.getpid() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.metrics(rid) == [(0, "train", "loss", 1.0), (1, "train", "loss", 0.5)]
    store.log_metric(rid, 2, "train", "loss", 0.25)  # the parent's connection still works
    assert len(store.metrics(rid)) == 3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=str(REPO),
    )


def _line_reader(proc: subprocess.Popen) -> queue.Queue:
    """Lines of proc's stdout, read on a thread so the test can wait with a timeout."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(proc: subprocess.Popen, lines: queue.Queue, timeout: float = 60.0) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        pytest.fail(f"helper process printed nothing for {timeout} s")
    if line is None:
        proc.wait()
        pytest.fail(f"helper process exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
    return line


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_run_loses_at_most_the_transaction_in_flight(tmp_path: Path):
    path = tmp_path / "runs.db"
    rows_per_step, kill_after = 50, 30
    proc = _spawn("kill", str(path), str(rows_per_step))
    lines = _line_reader(proc)
    try:
        first = _next_line(proc, lines)
        assert first.startswith("run ")
        rid = int(first.split()[1])
        reported = []
        while not reported or reported[-1] < kill_after:
            line = _next_line(proc, lines)
            assert line.startswith("step "), line
            reported.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)  # reap it: a zombie still answers os.kill(pid, 0)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert reported == list(range(kill_after + 1))

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()

    with Store(path) as s:
        rec = s.run(rid)
        assert rec.status == "running"
        assert rec.pid == proc.pid
        assert rec.stale
        assert rec.step >= reported[-1]
        got = s.metrics(rid)
        keys = [(step, split, name) for step, split, name, _ in got]
        assert len(keys) == len(set(keys))  # no duplicates
        by_step: dict[int, dict[str, float]] = {}
        for step, _, name, value in got:
            by_step.setdefault(step, {})[name] = value
        # every committed step is complete (no half transaction) and every reported one is there
        assert set(by_step) == set(range(max(by_step) + 1))
        assert max(by_step) >= reported[-1]
        for step, values in by_step.items():
            assert values == {f"m{i}": step + i / 1000.0 for i in range(rows_per_step)}
        assert rec.step in (max(by_step), max(by_step) - 1)  # set_step follows log_metrics
        # the store is writable afterwards
        s.finish_run(rid, "interrupted")
        s.log_metric(rid, max(by_step) + 1, "train", "m0", 1.0)
        new = _new_run(s, name="after")
        s.start_run(new)
        assert s.run(rid).status == "interrupted" and not s.run(rid).stale
        assert s.run(new).status == "running"


def test_two_processes_write_at_once(tmp_path: Path):
    path = tmp_path / "runs.db"
    go = tmp_path / "go"
    steps = 150
    with Store(path) as s:
        shared = _new_run(s, name="shared")
    procs = [_spawn("concurrent", str(path), tag, str(shared), str(steps), str(go)) for tag in ("a", "b")]
    readers = [_line_reader(p) for p in procs]
    try:
        own = {}
        for tag, proc, lines in zip(("a", "b"), procs, readers):
            line = _next_line(proc, lines)
            assert line.startswith("ready "), line
            own[tag] = int(line.split()[1])
        go.touch()  # both are ready: start writing together
        for proc, lines in zip(procs, readers):
            line = _next_line(proc, lines)
            assert line.startswith("done "), line
        for proc in procs:
            proc.wait(timeout=60)
        errors = [p.stderr.read() for p in procs]  # type: ignore[union-attr]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert not any("locked" in e for e in errors), errors

    with Store(path) as s:
        for tag, rid in own.items():
            rec = s.run(rid)
            assert (rec.status, rec.step, rec.config) == ("done", steps - 1, {"tag": tag})
            got = s.metrics(rid)
            assert len(got) == 2 * steps
            assert got == sorted(
                [(k, "test", "loss", k + 0.001) for k in range(steps)]
                + [(k, "train", "loss", float(k)) for k in range(steps)]
            )
        shared_rows = s.metrics(shared)
        assert len(shared_rows) == 2 * steps
        for tag in ("a", "b"):
            assert s.metrics(shared, name=f"{tag}_loss") == [
                (k, "train", f"{tag}_loss", k + 0.002) for k in range(steps)
            ]
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
