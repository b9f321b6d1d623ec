"""The result store: runs and their metrics in one SQLite file.

A :class:`Store` keeps every run of a study (its config, its hash with and
without the seed, seed, status, where and with which library versions it ran)
and every metric point it logged, as rows ``(run_id, step, split, name,
value)``. It uses only the standard library's ``sqlite3``; pandas is imported
when a frame is asked for.

Schema versions (``PRAGMA user_version``): a store written by an older version
is migrated when opened, in one transaction, one step per version:

- 1 → 2: the ``group_hash`` column (the config hash without the seed), filled
  from each run's stored config.
- 2 → 3: the status ``pruned`` (a search trial its pruner stopped early): the
  ``runs`` table is rebuilt with the wider ``CHECK`` on ``status`` (SQLite
  cannot alter a constraint), its rows and ids kept.

Durability and concurrency:

- The file is in WAL mode with ``synchronous=NORMAL`` and a 30 s busy timeout,
  so several processes (the workers of a sweep) can write to the same file at
  once; a writer waits for the lock instead of failing with "database is
  locked".
- Every write method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``). A
  process killed at any point loses at most the transaction in flight, never
  part of one; the run it was writing stays ``running`` and
  :attr:`RunRecord.stale` tells that its process is gone. (A power loss may in
  addition lose the last few commits, never the file's consistency.)
- Re-logging a point (same run, step, split and name) replaces it, so a resumed
  run can replay steps without creating duplicates.
- A store opened in one process and used in a forked child reconnects in the
  child (SQLite connections must not cross a fork); a store pickles as its path.

Listeners (:meth:`Store.add_listener`, e.g. the trackers of
:mod:`reglab.experiments.trackers`) see every run created, started and finished
and every metric row logged through this object, after its transaction has
committed: what a listener is told is in the store. A listener that raises is
detached with a :class:`StoreListenerWarning` (the store keeps every row, so
``reglab export`` can write the rest later); the write itself has succeeded.

Example::

    with Store("runs.db") as store:
        run_id = store.create_run(config, name="sam-rho0.05", config_hash=h, group_hash=g, seed=0, study="sam")
        store.start_run(run_id)
        store.log_metrics(run_id, [(100, "train", "loss", 0.31), (100, "test", "accuracy", 0.92)])
        store.finish_run(run_id, "done", step=100)
        frame = store.to_frame(study="sam")
"""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from reglab.core.errors import StoreError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "FINAL_STATUSES",
    "FRAME_COLUMNS",
    "RUNS_FRAME_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunRecord",
    "Store",
    "StoreListener",
    "StoreListenerWarning",
]

#: Version of the database layout, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 3

#: Every status a run can have, in the order of its life.
STATUSES: tuple[str, ...] = ("queued", "running", "done", "diverged", "pruned", "failed", "interrupted")

#: The statuses :meth:`Store.finish_run` accepts.
FINAL_STATUSES: tuple[str, ...] = ("done", "diverged", "pruned", "failed", "interrupted")

#: Seconds a writer waits for another process's lock before giving up.
BUSY_TIMEOUT_S = 30.0

_STATUS_SQL = ", ".join(f"'{s}'" for s in STATUSES)

_RUNS_TABLE = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    study TEXT,
    config TEXT,
    config_hash TEXT,
    group_hash TEXT,
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
    step INTEGER,
    created REAL,
    started REAL,
    ended REAL,
    host TEXT,
    pid INTEGER,
    versions TEXT,
    error TEXT
)"""
_RUNS_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_config_hash ON runs (config_hash);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
"""
_METRICS_TABLE = """
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, split, name)
) WITHOUT ROWID;
"""
_SCHEMA = ";".join((_RUNS_TABLE, _RUNS_INDEXES, _METRICS_TABLE))

_RUN_COLUMNS = (
    "id",
    "name",
    "study",
    "config",
    "config_hash",
    "seed",
    "status",
    "step",
    "created",
    "started",
    "ended",
    "host",
    "pid",
    "versions",
    "error",
    "group_hash",
)

FRAME_COLUMNS: tuple[str, ...] = (
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
)

RUNS_FRAME_COLUMNS: tuple[str, ...] = (
    "run_id",
    "run_name",
    "study",
    "seed",
    "status",
    "config_hash",
    "group_hash",
    "step",
    "created",
    "started",
    "ended",
    "host",
    "pid",
    "error",
    "config",
    "stale",
)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (conservatively True when unknown)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows; cannot tell cheaply
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table.

    Attributes:
        id: the run id (unique in its store).
        name: a human-readable name, e.g. ``"sam-rho0.05-seed1"``.
        study: the study (sweep, claim) the run belongs to, or None.
        config: the run's config, parsed from JSON (tuples come back as lists).
        config_hash: the hash of the config the caller computed; runs with equal hashes repeat each other.
        seed: the seed, or None.
        status: one of :data:`STATUSES`.
        step: the last step reached (the step of divergence for a diverged run), or None.
        created, started, ended: Unix times, or None when not reached yet.
        host, pid: where the run was started (set by :meth:`Store.start_run`).
        versions: ``{"python", "torch", "numpy", "reglab", "platform"}`` at start, or None.
        error: the error message of a failed or diverged run, or None.
        group_hash: the config hash without the seed: runs that differ only in their seed share it.
    """

    id: int
    name: str | None
    study: str | None
    config: dict[str, Any]
    config_hash: str | None
    seed: int | None
    status: str
    step: int | None
    created: float | None
    started: float | None
    ended: float | None
    host: str | None
    pid: int | None
    versions: dict[str, Any] | None
    error: str | None
    group_hash: str | None

    @property
    def stale(self) -> bool:
        """True when the run says ``running`` but its process is gone.

        Decidable only on the host that started the run: a run started on another
        host is never reported stale. A process id reused by an unrelated process
        makes a dead run look alive (not stale), never the reverse.
        """
        if self.status != "running" or self.pid is None or self.host is None:
            return False
        if self.host != socket.gethostname():
            return False
        return not _pid_alive(self.pid)

    @property
    def finished(self) -> bool:
        """True when the status is final (one of :data:`FINAL_STATUSES`)."""
        return self.status in FINAL_STATUSES

    @classmethod
    def _from_row(cls, row: tuple) -> RunRecord:
        values = dict(zip(_RUN_COLUMNS, row))
        values["config"] = json.loads(values["config"]) if values["config"] is not None else {}
        values["versions"] = json.loads(values["versions"]) if values["versions"] is not None else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (``stale`` included)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["stale"] = self.stale
        return out


def _collect_versions() -> dict[str, str | None]:
    """Versions of Python, torch, numpy and reglab, and the platform; None for a library that is absent."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for module in ("torch", "numpy"):
        try:
            versions[module] = str(__import__(module).__version__)
        except Exception:  # absent or broken: record that, do not fail the run
            versions[module] = None
    try:
        import reglab

        versions["reglab"] = str(reglab.__version__)
    except Exception:
        versions["reglab"] = None
    versions["platform"] = platform.platform()
    return versions


def _check_status(status: str, valid: tuple[str, ...], what: str) -> str:
    if not isinstance(status, str) or status not in valid:
        raise StoreError(f"invalid {what} {status!r}; use one of: {', '.join(valid)}")
    return status


def _as_int(value: Any, what: str, *, optional: bool = False) -> int | None:
    """``value`` as an int (numpy and torch integers included); StoreError naming ``what`` otherwise."""
    if optional and value is None:
        return None
    try:
        return operator.index(value)
    except TypeError:
        kind = "an integer or None" if optional else "an integer"
        raise StoreError(f"{what} must be {kind}, got {value!r}") from None


def _metric_row(run_id: int, row: Any) -> tuple[int, int, str, str, float | None]:
    """Validate one ``(step, split, name, value)`` row; non-finite values become None (SQL NULL)."""
    try:
        step, split, name, value = row
    except (TypeError, ValueError):
        raise StoreError(f"run {run_id}: a metric row must be (step, split, name, value), got {row!r}") from None
    step = _as_int(step, f"run {run_id}: metric step")
    if not isinstance(split, str) or not isinstance(name, str):
        raise StoreError(f"run {run_id}: metric split and name must be strings, got {split!r}, {name!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise StoreError(
            f"run {run_id}: metric {split}/{name} at step {step} must be a number, got {value!r}"
        ) from None
    return run_id, step, split, name, (value if math.isfinite(value) else None)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _add_group_hash(conn: sqlite3.Connection) -> None:
    """Schema 1 → 2: add ``runs.group_hash``, filled from each run's stored config."""
    from reglab.experiments.config import stored_group_hash  # the registries, imported only when needed

    conn.execute("ALTER TABLE runs ADD COLUMN group_hash TEXT")
    rows = conn.execute("SELECT id, config FROM runs").fetchall()
    values = [(stored_group_hash(json.loads(config) if config else {}), run_id) for run_id, config in rows]
    conn.executemany("UPDATE runs SET group_hash = ? WHERE id = ?", values)


def _allow_pruned(conn: sqlite3.Connection) -> None:
    """Schema 2 → 3: rebuild ``runs`` with the status ``pruned`` in its CHECK (SQLite's way to change a constraint:
    a new table, the rows copied with their ids, the old one dropped; foreign keys are off during migrations)."""
    columns = ", ".join(_RUN_COLUMNS)
    conn.execute(_RUNS_TABLE.replace("CREATE TABLE IF NOT EXISTS runs (", "CREATE TABLE runs_v3 (", 1))
    conn.execute(f"INSERT INTO runs_v3 ({columns}) SELECT {columns} FROM runs")
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v3 RENAME TO runs")
    for statement in _RUNS_INDEXES.split(";"):
        if statement.strip():
            conn.execute(statement)


#: ``{version: the step from it to the next}``; a store is migrated through every step up to :data:`SCHEMA_VERSION`.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_group_hash, 2: _allow_pruned}


@runtime_checkable
class StoreListener(Protocol):
    """What :meth:`Store.add_listener` accepts: four callbacks, each called after its write has committed.

    Rows are given as the store holds them: ``(step, split, name, value)`` with ``value`` a float, NaN for a
    non-finite value (stored as NULL). A run re-opened by :meth:`Store.start_run` (a resumed or retried run)
    may be started and logged to by a process whose listener never saw it created.
    """

    def run_created(self, store: Store, record: RunRecord) -> None:
        """A run was added (status ``queued``)."""

    def run_started(self, store: Store, record: RunRecord) -> None:
        """A run was marked ``running`` by this process (first start or a restart)."""

    def rows_logged(self, store: Store, run_id: int, rows: list[tuple[int, str, str, float]]) -> None:
        """Metric rows of a run were written (one call per :meth:`Store.log_metrics`)."""

    def run_finished(self, store: Store, record: RunRecord) -> None:
        """A run ended with a final status (its record has the status, step, end time and error)."""

    # Optional: ``rows_deleted(store, run_id, after)``, told that a run's rows at steps > ``after`` were removed
    # (a run resumed from the checkpoint of step ``after`` logs them again); a listener without it is not told.


class StoreListenerWarning(RuntimeWarning):
    """A store listener raised and was detached; the store itself has every row."""


class Store:
    """A result store in one SQLite file (or ``":memory:"``).

    Args:
        path: the database file; created with its tables (and missing parent
            directories) when absent. ``":memory:"`` gives a private store that
            lives as long as this object.

    Raises:
        StoreError: the file cannot be opened or created, is not an SQLite
            database, is an SQLite database that is not a reglab store, or was
            written by a newer schema version (an older one is migrated).

    Non-finite metric values (NaN, +inf, -inf) are stored as NULL and read back
    as NaN. A Store may be used from several threads (its calls are serialized)
    and from several processes at once (each opens its own Store on the same
    path).
    """

    def __init__(self, path: str | os.PathLike[str] = "runs.db") -> None:
        self.path = str(os.fspath(path))
        if not self.path:
            raise StoreError('the store path is empty; pass a file name such as "runs.db", or ":memory:"')
        self._memory = self.path == ":memory:"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._listeners: list[StoreListener] = []
        self._conn = self._connect()

    # ------------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            parent = Path(self.path).expanduser().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory {str(parent)!r} for the store {self.path!r}: {exc}; "
                    "choose a writable path"
                ) from exc
        try:
            conn = sqlite3.connect(
                self.path if self._memory else str(Path(self.path).expanduser()),
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self.path!r}: {exc}; check the path and its permissions") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"the store {self.path!r} could not be switched to WAL mode (got {mode!r}); "
                        "put it on a local file system"
                    )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._init_schema(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"cannot use {self.path!r} as a result store: {exc}; "
                "is it an SQLite file written by reglab? Pass another path to create a new store"
            ) from exc
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:  # the usual case: no write lock taken, opening stays cheap
            return
        self._check_version(version)
        # a migration may rebuild a table that metrics reference: foreign keys off (a no-op inside a transaction)
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN IMMEDIATE")  # a new file: create the tables, an old one: migrate; another process may race
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = {
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    if not r[0].startswith("sqlite_")
                }
                if tables - {"runs", "metrics"}:
                    raise StoreError(
                        f"{self.path!r} is an SQLite database but not a reglab store "
                        f"(it has tables {', '.join(sorted(tables))}); pass another path to create a new store"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                self._check_version(version)
                for old in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[old](conn)
                if broken := conn.execute("PRAGMA foreign_key_check").fetchall():
                    raise StoreError(f"migrating {self.path!r} left metric rows of missing runs: {broken[:3]}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    def _check_version(self, version: int) -> None:
        if not 0 <= version <= SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path!r} has schema version {version}, this reglab reads versions up to "
                f"{SCHEMA_VERSION}; open it with the reglab version that wrote it, or use a new file"
            )

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection of this process (reopened after a fork)."""
        if self._closed or self._conn is None:
            raise StoreError(f"the store {self.path!r} is closed; open a new Store({self.path!r})")
        if not self._memory and os.getpid() != self._pid:
            # Forked child: the parent's connection must not be used (nor closed) here.
            self._conn = self._connect()
            self._pid = os.getpid()
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken with BEGIN IMMEDIATE (waits for other writers), committed or rolled back."""
        with self._lock:
            conn = self._db
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(
                    f"cannot write to the store {self.path!r}: {exc}; another process held it for more than "
                    f"{BUSY_TIMEOUT_S:.0f} s, or the file is read-only"
                ) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreError(
                        f"cannot write to the store {self.path!r}: {exc}; check that the file is writable"
                    ) from exc
                raise

    def _read(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot read the store {self.path!r}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (idempotent). Later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None and os.getpid() == self._pid:
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}{', closed' if self._closed else ''})"

    def __getstate__(self) -> dict[str, Any]:
        if self._memory:
            raise StoreError("an in-memory store cannot be pickled or sent to another process; use a file path")
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    # ------------------------------------------------------------------ listeners

    def add_listener(self, listener: StoreListener) -> None:
        """Call ``listener`` after every run creation, start, finish and metric write through this object.

        Listeners are not pickled with the store and are not carried into another process.

        Raises:
            StoreError: ``listener`` lacks one of the :class:`StoreListener` methods.
        """
        missing = [m for m in ("run_created", "run_started", "rows_logged", "run_finished") if not hasattr(listener, m)]
        if missing:
            raise StoreError(
                f"a store listener needs the methods run_created, run_started, rows_logged and run_finished; "
                f"{type(listener).__name__} lacks {', '.join(missing)}"
            )
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove_listener(self, listener: StoreListener) -> None:
        """Stop calling ``listener`` (nothing happens if it is not attached)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, event: str, *args: Any) -> None:
        """Call ``event`` on every listener; one that raises is detached with a warning and the others still run."""
        for listener in list(self._listeners):
            method = getattr(listener, event, None)
            if method is None:  # an optional event this listener does not take
                continue
            try:
                method(self, *args)
            except Exception as exc:  # a tracker's failure must not fail the run whose rows are already stored
                self.remove_listener(listener)
                warnings.warn(
                    f"store listener {listener!r} failed in {event}: {type(exc).__name__}: {exc}; it is detached "
                    f"and gets no more rows. The store {self.path!r} has every row: `reglab export` writes them "
                    "to a tracker later",
                    StoreListenerWarning,
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _exists(conn: sqlite3.Connection, run_id: int) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise StoreError(f"unknown run id {run_id!r}; Store.runs() lists the runs in this store")

    @staticmethod
    def _run_id(run_id: Any) -> int:
        return _as_int(run_id, "a run id")

    def create_run(
        self,
        config: dict[str, Any],
        *,
        name: str,
        config_hash: str,
        group_hash: str | None = None,
        seed: int | None = None,
        study: str | None = None,
    ) -> int:
        """Add a run with status ``queued`` and return its id.

        Args:
            config: the run's config; must be JSON-serialisable (tuples are stored as lists).
            name: a human-readable name.
            config_hash: a hash of the config, computed by the caller, used by :meth:`find`.
            group_hash: the config's hash without the seed (runs that repeat each other but for the seed share
                it; a report averages them); None computes it from ``config``
                (:func:`~reglab.experiments.config.stored_group_hash`).
            seed: the run's seed.
            study: the study (sweep, claim) it belongs to.
        """
        if not isinstance(config, dict):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        try:
            config_json = json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"config of run {name!r} is not JSON-serialisable: {exc}; convert such values to "
                "str, int, float, bool, list or dict first"
            ) from exc
        seed = _as_int(seed, "seed", optional=True)
        if group_hash is None:
            from reglab.experiments.config import stored_group_hash  # the registries, imported only when needed

            group_hash = stored_group_hash(config)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (name, study, config, config_hash, group_hash, seed, status, created) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (name, study, config_json, config_hash, group_hash, seed, time.time()),
            )
            run_id = int(cursor.lastrowid)
        if self._listeners:
            self._notify("run_created", self.run(run_id))
        return run_id

    def start_run(self, run_id: int) -> None:
        """Mark a run ``running`` in this process: sets started, host, pid and versions; clears ended and error.

        A run may be started again (a resumed or retried run); its metrics are kept.
        """
        run_id = self._run_id(run_id)
        versions = json.dumps(_collect_versions())
        with self._write() as conn:
            self._exists(conn, run_id)
            conn.execute(
                "UPDATE runs SET status = 'running', started = ?, ended = NULL, error = NULL, host = ?, pid = ?, "
                "versions = ? WHERE id = ?",
                (time.time(), socket.gethostname(), os.getpid(), versions, run_id),
            )
        if self._listeners:
            self._notify("run_started", self.run(run_id))

    def set_step(self, run_id: int, step: int) -> None:
        """Record the last step a run reached (one small transaction, no fsync)."""
        run_id = self._run_id(run_id)
        step = _as_int(step, f"run {run_id}: step")
        with self._write() as conn:
            if conn.execute("UPDATE runs SET step = ? WHERE id = ?", (step, run_id)).rowcount == 0:
                raise StoreError(f"unknown run id {run_id!r}; Store.runs() lists the runs in this store")

    def finish_run(self, run_id: int, status: str, *, step: int | None = None, error: str | None = None) -> None:
        """End a run with a final status and set its end time.

        Args:
            status: one of ``done``, ``diverged``, ``pruned`` (a search trial stopped early), ``failed``,
                ``interrupted``.
            step: the last step reached (the divergence step for ``diverged``); None keeps the recorded step.
            error: an error message (a traceback, the reason of divergence); None keeps the recorded one.
        """
        run_id = self._run_id(run_id)
        _check_status(status, FINAL_STATUSES, "final status")
        step = _as_int(step, f"run {run_id}: step", optional=True)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended = ?, step = COALESCE(?, step), error = COALESCE(?, error) "
                "WHERE id = ?",
                (status, time.time(), step, error, run_id),
            )
            if cursor.rowcount == 0:
                raise StoreError(f"unknown run id {run_id!r}; Store.runs() lists the runs in this store")
        if self._listeners:
            self._notify("run_finished", self.run(run_id))

    def delete_run(self, run_id: int) -> None:
        """Remove a run and all its metrics in one transaction (e.g. before re-running it)."""
        run_id = self._run_id(run_id)
        with self._write() as conn:
            self._exists(conn, run_id)
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def delete_metrics(self, run_id: int, *, after: int) -> int:
        """Remove the metric rows of a run logged at steps greater than ``after`` (a run resumed from the
        checkpoint of step ``after`` logs them again); returns how many were removed."""
        run_id = self._run_id(run_id)
        after = _as_int(after, "after")
        with self._write() as conn:
            self._exists(conn, run_id)
            removed = conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, after)).rowcount
        if self._listeners:
            self._notify("rows_deleted", run_id, after)
        return removed

    def run(self, run_id: int) -> RunRecord:
        """The record of one run."""
        run_id = self._run_id(run_id)
        rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise StoreError(f"unknown run id {run_id!r}; Store.runs() lists the runs in this store")
        return RunRecord._from_row(rows[0])

    def runs(
        self, *, status: str | None = None, study: str | None = None, config_hash: str | None = None
    ) -> list[RunRecord]:
        """The runs matching every given filter, ordered by id."""
        where, params = self._filters(status=status, study=study, config_hash=config_hash)
        rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs{where} ORDER BY id", params)
        return [RunRecord._from_row(r) for r in rows]

    def find(self, config_hash: str) -> list[RunRecord]:
        """The runs with this config hash, ordered by id (e.g. to skip configs already done)."""
        return self.runs(config_hash=config_hash)

    @staticmethod
    def _filters(
        *, status: str | None = None, study: str | None = None, config_hash: str | None = None, prefix: str = ""
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            _check_status(status, STATUSES, "status")
            clauses.append(f"{prefix}status = ?")
            params.append(status)
        if study is not None:
            clauses.append(f"{prefix}study = ?")
            params.append(study)
        if config_hash is not None:
            clauses.append(f"{prefix}config_hash = ?")
            params.append(config_hash)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    # ------------------------------------------------------------------ metrics

    def log_metrics(self, run_id: int, rows: Iterable[tuple[int, str, str, float]]) -> None:
        """Write metric points ``(step, split, name, value)`` in one transaction.

        A point already logged (same step, split and name) is replaced. Non-finite
        values are stored as NULL and read back as NaN. ``value`` may be anything
        ``float()`` accepts (a Python or NumPy number, a 0-d tensor).
        """
        run_id = self._run_id(run_id)
        values = [_metric_row(run_id, row) for row in rows]
        with self._write() as conn:
            self._exists(conn, run_id)
            if values:
                conn.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value) VALUES (?, ?, ?, ?, ?)",
                    values,
                )
        if self._listeners and values:
            self._notify("rows_logged", run_id, [(step, sp, nm, _nan_if_none(v)) for _, step, sp, nm, v in values])

    def log_metric(self, run_id: int, step: int, split: str, name: str, value: float) -> None:
        """Write one metric point (see :meth:`log_metrics`)."""
        self.log_metrics(run_id, [(step, split, name, value)])

    def metrics(
        self, run_id: int, *, split: str | None = None, name: str | None = None
    ) -> list[tuple[int, str, str, float]]:
        """A run's metric points ``(step, split, name, value)``, ordered by step (then split, name)."""
        run_id = self._run_id(run_id)
        sql = "SELECT step, split, name, value FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        rows = self._read(sql + " ORDER BY step, split, name", params)
        if not rows:
            self.run(run_id)  # raises for an unknown id
        return [(step, sp, nm, _nan_if_none(value)) for step, sp, nm, value in rows]

    # ------------------------------------------------------------------ frames

    def to_frame(self, *, study: str | None = None) -> pd.DataFrame:
        """All metric points in long format, one row per point.

        Columns: run_id, run_name, study, seed, status, config_hash, step, split,
        name, value (float, NaN for non-finite values). Ordered by run_id, step,
        split, name.
        """
        import pandas as pd

        where, params = self._filters(study=study, prefix="r.")
        rows = self._read(
            "SELECT r.id, r.name, r.study, r.seed, r.status, r.config_hash, m.step, m.split, m.name, m.value "
            f"FROM metrics m JOIN runs r ON r.id = m.run_id{where} ORDER BY r.id, m.step, m.split, m.name",
            params,
        )
        frame = pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))
        frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64")
        return frame

    def runs_frame(self, *, study: str | None = None) -> pd.DataFrame:
        """One row per run, ordered by id.

        Columns: run_id, run_name, study, seed, status, config_hash, group_hash,
        step, created, started, ended, host, pid, error, config (the parsed dict), stale.
        """
        import pandas as pd

        records = self.runs(study=study)
        data = [
            (
                r.id,
                r.name,
                r.study,
                r.seed,
                r.status,
                r.config_hash,
                r.group_hash,
                r.step,
                r.created,
                r.started,
                r.ended,
                r.host,
                r.pid,
                r.error,
                r.config,
                r.stale,
            )
            for r in records
        ]
        return pd.DataFrame.from_records(data, columns=list(RUNS_FRAME_COLUMNS))
