"""Trackers: a store's runs and metric rows written to TensorBoard, MLflow, CSV or Parquet.

A tracker is a :class:`~reglab.experiments.store.StoreListener` with a
``close()``: attached to a :class:`~reglab.experiments.store.Store` with
``store.add_listener(tracker)``, it writes every metric row as the store
commits it, whichever backend trained the run (the sweep driver writes the rows
its workers send back, at the end of each run). :func:`export` replays what a
store already holds through the same trackers, or writes it to a CSV or Parquet
file.

- :class:`TensorBoardTracker` writes one event-file directory per run,
  ``LOGDIR/<run id>-<run name>`` (:func:`tensorboard_run_dir`), a scalar per row
  with tag ``split/name`` and global step = the row's step, and the run's config
  as text (tag ``reglab/config``).
- :class:`MLflowTracker` writes one MLflow run per reglab run into one
  experiment: params = the flattened config (``optimizer.lr``,
  ``penalties.0.weight``), tags ``reglab.run_id``, ``reglab.store`` (the
  store's absolute path), ``reglab.config_hash``, ``reglab.group_hash``,
  ``reglab.seed``, ``reglab.study`` and ``reglab.status``; metric key
  ``split/name`` (:func:`mlflow_key`), step = the row's step. A run's final
  status maps to MLflow's: done and diverged → FINISHED, failed → FAILED,
  interrupted → KILLED (``reglab.status`` keeps the reglab one).

Every constructor checks its destination before anything trains (creates the
directory and writes a probe file, or opens the MLflow store and creates the
experiment) and raises :class:`~reglab.core.ConfigError` naming the option
(``--tensorboard``, ``--mlflow``) and the destination. TensorBoard and MLflow
are the ``track`` extra (``pip install 'reglab[track]'``), imported only here
and only when a tracker is made.

MLflow URIs: a plain path or ``file:`` URI is MLflow's local file store; MLflow
3 keeps that store in maintenance mode and refuses it unless the environment
variable ``MLFLOW_ALLOW_FILE_STORE`` is true, so this module sets it to
``true`` when the user has not set it (the file store is the MLflow store that
needs no server and no database, and reglab writes only params, tags and
metrics, which it fully supports). ``sqlite:///path.db`` is MLflow's SQL store
(it needs ``sqlalchemy`` and ``alembic``, in the extra too); ``http(s)://`` a tracking server.

Example::

    with Store("runs.db") as store, TensorBoardTracker("tb") as tb:
        store.add_listener(tb)
        execute(cfg, store)             # every row is in runs.db and in tb/<id>-<name>/
    export(Store("runs.db"), "parquet", "runs.parquet")
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlparse
from urllib.request import url2pathname

from reglab.core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from reglab.experiments.store import RunRecord, Store

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_TARGETS",
    "MLflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "export",
    "export_frame",
    "flatten_config",
    "mlflow_key",
    "tensorboard_run_dir",
]

#: What :func:`export` writes to.
EXPORT_TARGETS: tuple[str, ...] = ("tensorboard", "mlflow", "csv", "parquet")

#: Columns of a CSV or Parquet export: one row per metric point, the run's columns joined.
EXPORT_COLUMNS: tuple[str, ...] = (
    "run_id",
    "run_name",
    "study",
    "seed",
    "status",
    "config_hash",
    "group_hash",
    "step",
    "split",
    "name",
    "value",
    "config",
)

#: MLflow's longest param value and tag value (``mlflow.utils.validation``); longer ones are cut to these.
MLFLOW_MAX_PARAM = 6000
MLFLOW_MAX_TAG = 8000

#: reglab's final statuses in MLflow's terms (``reglab.status`` keeps the reglab one).
MLFLOW_STATUS = {"done": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

_INSTALL = "pip install 'reglab[track]'"


@runtime_checkable
class Tracker(Protocol):
    """A :class:`~reglab.experiments.store.StoreListener` that owns a destination and is closed when done."""

    def run_created(self, store: Store, record: RunRecord) -> None: ...

    def run_started(self, store: Store, record: RunRecord) -> None: ...

    def rows_logged(self, store: Store, run_id: int, rows: list[tuple[int, str, str, float]]) -> None: ...

    def run_finished(self, store: Store, record: RunRecord) -> None: ...

    def close(self) -> None: ...


def _slug(text: str | None) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (a safe directory name part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text or "").strip("._") or "run"


def tensorboard_run_dir(record: RunRecord) -> str:
    """The sub-directory of a TensorBoard logdir that holds one run: ``"<run id>-<run name>"`` (name made safe)."""
    return f"{record.id}-{_slug(record.name)}"


def mlflow_key(split: str, name: str) -> str:
    """The MLflow metric key of a row: ``split/name``, with characters MLflow refuses replaced by ``_``.

    MLflow accepts letters, digits, ``_ - . : / `` and space, and refuses a key that a path normalization would
    change (``a//b``, ``./a``); such parts become ``_`` too.
    """
    key = re.sub(r"[^\w.\- :/]", "_", f"{split}/{name}")
    parts = [p if p not in ("", ".", "..") else "_" for p in key.split("/")]
    return "/".join(parts)


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as flat ``{"a.b.c": "value"}``: dict keys and list indices joined by dots.

    Leaves become strings: JSON for None, booleans and numbers (``null``, ``true``, ``0.1``), the text itself
    for strings; an empty dict or list becomes ``{}`` / ``[]``.

    Example:
        >>> flatten_config({"optimizer": {"name": "sgd", "lr": 0.1}, "penalties": [{"weight": 1e-4}]})
        {'optimizer.name': 'sgd', 'optimizer.lr': '0.1', 'penalties.0.weight': '0.0001'}
    """
    items: Iterable[tuple[Any, Any]]
    if isinstance(config, dict) and config:
        items = config.items()
    elif isinstance(config, (list, tuple)) and config:
        items = enumerate(config)
    else:
        leaf = config if isinstance(config, str) else json.dumps(config)
        return {prefix: leaf} if prefix else {}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _missing_extra(what: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"{what} needs the track extra, which is not installed ({exc}); run `{_INSTALL}`")


# ---------------------------------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """Write every metric row of a store's runs to TensorBoard event files, one directory per run.

    Each run gets ``logdir/<run id>-<run name>`` (:func:`tensorboard_run_dir`) with one
    ``torch.utils.tensorboard.SummaryWriter``: a row ``(step, split, name, value)`` is the scalar
    ``split/name`` at global step ``step`` (stored as float32; NaN stays NaN); the run's config is the text
    ``reglab/config`` at step 0. Rows are flushed to disk after every :meth:`rows_logged` call.

    A run's writer (a file and a thread) is opened at its first rows and closed when it finishes, so a sweep
    that opens every run before the first trains holds one writer per run in flight, not one per run; a run
    that logs no row gets no directory. When the rows after a step are removed from the store (a run resumed
    from a checkpoint, :meth:`rows_deleted`), a TensorBoard restart marker (``SessionLog.START`` at the next
    step) makes readers drop the points from that step on, so the replayed steps appear once.

    Args:
        logdir: the TensorBoard log directory; created (with its parents) when absent.
        option: the name given in error messages (the CLI option or the field that set ``logdir``).

    Raises:
        ConfigError: tensorboard is not installed, or ``logdir`` cannot be created or written (checked at
            construction with a probe file, before anything trains).
    """

    def __init__(self, logdir: str | os.PathLike[str], *, option: str = "--tensorboard") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing_extra(f"{option} (TensorBoard)", exc) from exc
        self._writer_cls = SummaryWriter
        self.logdir = Path(os.fspath(logdir)).expanduser()
        self.option = option
        _check_writable_dir(self.logdir, option)
        self._writers: dict[int, Any] = {}
        self._purge: dict[int, int] = {}  # run id -> the step a new writer starts from (drops later points)

    def __repr__(self) -> str:
        return f"TensorBoardTracker({str(self.logdir)!r})"

    def run_dir(self, record: RunRecord) -> Path:
        """Where the event files of ``record`` go."""
        return self.logdir / tensorboard_run_dir(record)

    def _writer(self, store: Store, run_id: int, record: RunRecord | None = None) -> Any:
        writer = self._writers.get(run_id)
        if writer is None:
            record = store.run(run_id) if record is None else record
            purge = self._purge.pop(run_id, None)
            writer = self._writer_cls(log_dir=str(self.run_dir(record)), flush_secs=30, purge_step=purge)
            writer.add_text("reglab/config", f"```\n{json.dumps(record.config, indent=2)}\n```", global_step=0)
            self._writers[run_id] = writer
        return writer

    def run_created(self, store: Store, record: RunRecord) -> None:
        """Nothing: the run's directory is made with its first rows."""

    def run_started(self, store: Store, record: RunRecord) -> None:
        """Nothing: the run's directory is made with its first rows."""

    def rows_logged(self, store: Store, run_id: int, rows: list[tuple[int, str, str, float]]) -> None:
        """Write each row as a scalar and flush."""
        writer = self._writer(store, run_id)
        for step, split, name, value in rows:
            writer.add_scalar(f"{split}/{name}", value, global_step=step)
        writer.flush()

    def rows_deleted(self, store: Store, run_id: int, after: int) -> None:
        """Mark a restart at step ``after + 1``: readers drop this run's points from that step on."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer = self._writers.get(run_id)
        if writer is None:  # no file open (e.g. a run resumed by a new process): the next one starts with it
            self._purge[run_id] = after + 1
            return
        restart = Event(step=after + 1, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START))
        writer.file_writer.add_event(restart)
        writer.flush()

    def run_finished(self, store: Store, record: RunRecord) -> None:
        """Close the run's event file."""
        writer = self._writers.pop(record.id, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        """Close every event file still open (idempotent)."""
        while self._writers:
            self._writers.popitem()[1].close()

    def __enter__(self) -> TensorBoardTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_writable_dir(path: Path, option: str) -> None:
    """Create ``path`` and write and remove a probe file in it; ConfigError naming ``option`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".reglab-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{option}: cannot write to the directory {str(path)!r} ({exc}); give {option} a writable directory"
        ) from exc


# ---------------------------------------------------------------------------------------------------- MLflow


def _is_file_store(uri: str) -> bool:
    """Whether ``uri`` names MLflow's local file store: a plain path (no scheme) or a ``file:`` URI."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return scheme is None or len(scheme.group(1)) == 1 or scheme.group(1).lower() == "file"  # C:\\ is a path


class MLflowTracker:
    """Write every run of a store to MLflow: one MLflow run per reglab run, in one experiment.

    A run created through the store becomes an MLflow run named like it, with the flattened config as params
    (:func:`flatten_config`; a value longer than MLflow's limit, :data:`MLFLOW_MAX_PARAM` characters, is cut
    to it) and the
    tags listed in the module docstring; each metric row is logged as ``split/name`` (:func:`mlflow_key`) at
    its step; a finished run is terminated with its status. A run this tracker has not seen created (resumed
    in a new process) continues the MLflow run tagged with the same store and run id, or gets a new one.
    MLflow cannot delete metric points: the steps a resumed run replays are in its metric history twice
    (the later point is the run's latest value).

    Args:
        uri: the MLflow tracking URI: a directory or ``file:`` URI (local file store), ``sqlite:///file.db``,
            or a tracking server's ``http(s)://`` address.
        experiment: the MLflow experiment the runs go to; created when absent.
        option: the name given in error messages.

    Raises:
        ConfigError: mlflow is not installed (or ``sqlalchemy``/``alembic`` for a ``sqlite:`` URI), or the
            store at ``uri`` cannot be opened or written (checked at construction by getting or creating the
            experiment, before anything trains), or ``experiment`` is deleted in that store.
    """

    def __init__(self, uri: str | os.PathLike[str], *, experiment: str = "reglab", option: str = "--mlflow") -> None:
        self.uri = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
        self.option = option
        if not self.uri:
            raise ConfigError(f"{option}: the MLflow tracking URI is empty; give a directory or sqlite:///file.db")
        if not isinstance(experiment, str) or not experiment:
            raise ConfigError(f"{option}: the MLflow experiment must be a non-empty name, got {experiment!r}")
        self.experiment = experiment
        if _is_file_store(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
            is_uri = self.uri.lower().startswith("file:")
            path = Path(url2pathname(urlparse(self.uri).path)) if is_uri else Path(self.uri).expanduser()
            _check_writable_dir(path, option)
        elif self.uri.lower().startswith("sqlite:"):
            for module in ("sqlalchemy", "alembic"):
                try:
                    __import__(module)
                except ImportError as exc:
                    raise ConfigError(
                        f"{option}={self.uri!r}: MLflow's SQL store needs {module} ({exc}); run "
                        f"`{_INSTALL}`, or give a directory (MLflow's file store)"
                    ) from exc
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise _missing_extra(f"{option} (MLflow)", exc) from exc
        self._entities = (Metric, Param, RunTag)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(experiment)
            elif found.lifecycle_stage != "active":
                raise ConfigError(
                    f"{option}={self.uri!r}: the MLflow experiment {experiment!r} is deleted; restore it "
                    "(`mlflow experiments restore`) or use another experiment name"
                )
            else:
                self.experiment_id = found.experiment_id
        except ConfigError:
            raise
        except Exception as exc:  # MlflowException, OSError, sqlalchemy's errors: the destination is unusable
            raise ConfigError(
                f"{option}={self.uri!r}: cannot open or write the MLflow store ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); give {option} a writable directory or "
                "sqlite:///file.db"
            ) from exc
        self._runs: dict[tuple[str, int], str] = {}  # (store path, reglab run id) -> MLflow run id

    def __repr__(self) -> str:
        return f"MLflowTracker({self.uri!r}, experiment={self.experiment!r})"

    @staticmethod
    def _store_tag(store: Store) -> str:
        return store.path if store.path == ":memory:" else str(Path(store.path).expanduser().resolve())

    def existing_runs(self, store: Store) -> dict[int, str]:
        """``{reglab run id: MLflow run id}`` of the runs of ``store`` already in this experiment."""
        tag = self._store_tag(store).replace("'", "\\'")
        found: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`reglab.store` = '{tag}'", max_results=1000, page_token=token
            )
            for run in page:
                run_id = run.data.tags.get("reglab.run_id")
                if run_id is not None and run_id.isdigit():
                    found.setdefault(int(run_id), run.info.run_id)
            token = page.token
            if not token:
                return found

    def _create(self, store: Store, record: RunRecord) -> str:
        _, Param, RunTag = self._entities
        tags = {
            "reglab.run_id": str(record.id),
            "reglab.store": self._store_tag(store),
            "reglab.config_hash": record.config_hash or "",
            "reglab.group_hash": record.group_hash or "",
            "reglab.seed": "" if record.seed is None else str(record.seed),
            "reglab.study": record.study or "",
            "reglab.status": record.status,
        }
        start = record.started or record.created or time.time()
        run = self.client.create_run(self.experiment_id, start_time=int(start * 1000), tags=tags, run_name=record.name)
        params = [Param(k, v[:MLFLOW_MAX_PARAM]) for k, v in flatten_config(record.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        return run.info.run_id

    def _mlflow_run(self, store: Store, run_id: int, record: RunRecord | None = None) -> str:
        key = (self._store_tag(store), run_id)
        if key not in self._runs:
            existing = self.existing_runs(store).get(run_id)
            self._runs[key] = existing or self._create(store, store.run(run_id) if record is None else record)
        return self._runs[key]

    def run_created(self, store: Store, record: RunRecord) -> None:
        """Create the MLflow run with the config as params and the reglab tags."""
        key = (self._store_tag(store), record.id)
        if key not in self._runs:  # a new reglab run id is a new run: no search needed
            self._runs[key] = self._create(store, record)

    def run_started(self, store: Store, record: RunRecord) -> None:
        """Mark the MLflow run running (continuing the one of a resumed run)."""
        run = self._mlflow_run(store, record.id, record)
        self.client.update_run(run, status="RUNNING")
        self.client.set_tag(run, "reglab.status", record.status)

    def rows_logged(self, store: Store, run_id: int, rows: list[tuple[int, str, str, float]]) -> None:
        """Log the rows as metrics ``split/name`` at their steps, 1000 per batch."""
        Metric = self._entities[0]
        run = self._mlflow_run(store, run_id)
        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(split, name), float(value), now, int(step)) for step, split, name, value in rows]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run, metrics=metrics[i : i + 1000])

    def run_finished(self, store: Store, record: RunRecord) -> None:
        """Terminate the MLflow run with the mapped status; tag the reglab status and error."""
        run = self._mlflow_run(store, record.id, record)
        self.client.set_tag(run, "reglab.status", record.status)
        if record.error:
            self.client.set_tag(run, "reglab.error", record.error[:MLFLOW_MAX_TAG])
        end = int((record.ended or time.time()) * 1000)
        self.client.set_terminated(run, status=MLFLOW_STATUS.get(record.status, "FINISHED"), end_time=end)

    def close(self) -> None:
        """Forget the run mapping (MLflow's client holds nothing open)."""
        self._runs.clear()

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- export


def export_frame(store: Store, *, study: str | None = None) -> pd.DataFrame:
    """Every metric point of ``store`` (of one study) with its run's columns joined: :data:`EXPORT_COLUMNS`.

    ``config`` is the run's config as JSON text; ``value`` is float64 with NaN for a non-finite value.
    Ordered by run id, step, split, name.
    """
    frame = store.to_frame(study=study)
    runs = store.runs_frame(study=study)[["run_id", "group_hash", "config"]].copy()
    runs["config"] = [json.dumps(c, sort_keys=True) for c in runs["config"]]
    joined = frame.merge(runs, on="run_id", how="left", validate="many_to_one")
    return joined[list(EXPORT_COLUMNS)].reset_index(drop=True)


def _check_file(dest: Path, to: str) -> Path:
    """Create the parent directory of an export file and check it can be written; ConfigError otherwise."""
    dest = dest.expanduser()
    if dest.is_dir():
        raise ConfigError(f"export --to {to}: {str(dest)!r} is a directory; give a file name such as runs.{to}")
    _check_writable_dir(dest.parent, f"export --to {to} {dest}")
    return dest


def _write_file(frame: pd.DataFrame, dest: Path, to: str) -> None:
    """Write ``frame`` to a temporary file beside ``dest`` and rename it over ``dest`` (no half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if to == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _replay(store: Store, records: list[RunRecord], tracker: Tracker) -> None:
    """Tell ``tracker`` each run's creation, start, rows and (when final) its end, as they happened."""
    for record in records:
        tracker.run_created(store, record)
        rows = store.metrics(record.id)
        if rows:
            tracker.rows_logged(store, record.id, rows)
        if record.finished:
            tracker.run_finished(store, record)


def export(store: Store, to: str, dest: str | os.PathLike[str], *, study: str | None = None) -> int:
    """Write what ``store`` holds (one study's runs, or all) to a tracker or a file; returns the number of runs.

    - ``tensorboard``: ``dest`` is a log directory; each run becomes ``dest/<run id>-<run name>`` as
      :class:`TensorBoardTracker` writes it.
    - ``mlflow``: ``dest`` is a tracking URI; each run becomes an MLflow run as :class:`MLflowTracker` writes it,
      in the experiment named after its study (``reglab`` for runs without one).
    - ``csv`` / ``parquet``: ``dest`` is a file, replaced whole: one row per metric point,
      :data:`EXPORT_COLUMNS` (:func:`export_frame`). Parquet needs pyarrow.

    A run still ``queued`` or ``running`` is exported with the rows it has and no end.

    Raises:
        ConfigError: an unknown ``to``; a destination that cannot be written (checked before anything is
            written); a TensorBoard run directory that already holds event files, or an MLflow experiment that
            already holds runs of this store (export to a new destination instead); a missing extra.
    """
    if to not in EXPORT_TARGETS:
        raise ConfigError(f"export --to must be one of {', '.join(EXPORT_TARGETS)}, got {to!r}")
    records = store.runs(study=study)
    if to in ("csv", "parquet"):
        path = _check_file(Path(os.fspath(dest)), to)
        if to == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise ConfigError(
                    f"export --to parquet needs pyarrow ({exc}); run `pip install pyarrow`, or export --to csv"
                ) from exc
        _write_file(export_frame(store, study=study), path, to)
        return len(records)
    if to == "tensorboard":
        tb = TensorBoardTracker(dest, option="export --to tensorboard")
        taken = [str(tb.run_dir(r)) for r in records if tb.run_dir(r).is_dir() and any(tb.run_dir(r).iterdir())]
        if taken:
            raise ConfigError(
                f"export --to tensorboard: {', '.join(taken)} already hold event files; export to a new directory"
            )
        with tb:
            _replay(store, records, tb)
        return len(records)
    by_experiment: dict[str, list[RunRecord]] = {}
    for record in records:
        by_experiment.setdefault(record.study or "reglab", []).append(record)
    trackers = {
        name: MLflowTracker(dest, experiment=name, option="export --to mlflow") for name in by_experiment or {"reglab"}
    }
    for name, tracker in trackers.items():
        already = sorted(set(tracker.existing_runs(store)) & {r.id for r in by_experiment.get(name, [])})
        if already:
            raise ConfigError(
                f"export --to mlflow: the experiment {name!r} at {tracker.uri!r} already holds runs "
                f"{', '.join(map(str, already))} of the store {store.path!r}; export to another URI"
            )
    for name, group in by_experiment.items():
        with trackers[name] as tracker:
            _replay(store, group, tracker)
    return len(records)
