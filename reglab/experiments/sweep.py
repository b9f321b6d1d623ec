"""Sweeps: run a study's configs on this machine's cores or on a Ray cluster, resumably, into one store.

The driver (the process that calls :func:`run_sweep`) is the only writer of
the store: workers receive a config, train it and send back the outcome and
every metric row, so they need no access to the store file (a Ray worker on
another machine has none).

Resuming and interruption:

- Runs are identified by :meth:`RunConfig.config_hash`. A run whose hash has
  a ``done`` or ``diverged`` row in the store is skipped: re-running a study
  resumes it. An ``interrupted`` run, or a ``running`` one whose process is
  gone (a driver killed with SIGKILL), that has a checkpoint
  (``train.checkpoint_every``) continues from it in its own row
  (:func:`~reglab.experiments.runner.resumable_run`). The other rows of the
  same hash that are not results — ``failed``, ``interrupted`` or stale
  without a checkpoint, ``queued`` — are deleted with their checkpoints and
  the run is done again, so each config ends with exactly one row. A
  ``running`` row whose process is alive belongs to another driver and is
  left to it.
- Every row this driver opens is ``running`` under the driver's pid from
  the start, so a killed driver leaves rows the next sweep recognises as
  stale. Ctrl-C stops the workers and marks the unfinished runs
  ``interrupted``, then re-raises ``KeyboardInterrupt``.
- One run's failure or divergence is recorded as such and never stops the others.

Backends: ``sequential`` (this process, metrics streamed as they come),
``local`` (a pool of ``workers`` spawned processes) and ``ray`` (with no
``address`` a local Ray instance on the loopback interface with ``workers``
CPUs, else the cluster at ``address``; needs the ``ray`` extra). Every run
uses its ``train.threads`` CPU threads whatever the backend, so a config and
seed give the same numbers in a sweep as in ``reglab run``; a Ray task reserves
that many CPUs, and the local pool's default size is the number of cores
divided by the largest ``train.threads``.

Each config to run is built once, in the process that trains it. The
sequential backend builds them all before the first trains, so a bad value
(``lr: -1``) stops the sweep before anything is written; the worker backends
check in the driver only what needs no training objects (the config itself,
and for ``local`` the device and precision on this machine), so a bad value
ends its own run ``failed`` with the error naming the field.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from reglab.core import ConfigError
from reglab.core.validation import check_choice, check_int
from reglab.experiments.config import RunConfig, parse_config
from reglab.experiments.runner import (
    Built,
    RunOutcome,
    build_all,
    check_checkpoint_root,
    check_machine,
    checkpoint_dir,
    close_run,
    for_each_run,
    open_run,
    resumable_run,
    train,
)
from reglab.experiments.store import Store

BACKENDS = ("sequential", "local", "ray")
#: Statuses that are results: a config with one of these in the store is not run again.
RESULT_STATUSES = ("done", "diverged")


@dataclass
class SweepPlan:
    """What a sweep will do: ``todo`` configs to run, ``skipped`` ones already done, ``busy`` ones another
    live driver is running, and ``leftovers``: the ids of the to-do configs' rows that are not results
    (failed, interrupted, queued, stale), which :func:`run_sweep` deletes before it runs them."""

    todo: list[RunConfig]
    skipped: list[RunConfig] = field(default_factory=list)
    busy: list[RunConfig] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)
    #: ``{config hash: run id}`` of the to-do configs that continue an interrupted run from its checkpoint
    resumed: dict[str, int] = field(default_factory=dict)

    @property
    def cleared(self) -> int:
        """The number of leftover rows."""
        return len(self.leftovers)


@dataclass
class SweepResult:
    """The outcomes of the runs this sweep trained, and its plan."""

    plan: SweepPlan
    outcomes: list[RunOutcome]
    seconds: float

    def counts(self) -> dict[str, int]:
        """Number of outcomes per status."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def plan_sweep(configs: Sequence[RunConfig], store: Store, study: str | None = None) -> SweepPlan:
    """Sort ``configs`` into to-do, already done and running elsewhere, and list the to-do ones' leftover rows
    (the store is only read).

    Rows count for the same ``study`` only: an identical config in another study is run again for this one,
    so that the study's report has all its runs.
    """
    plan = SweepPlan(todo=[])
    for cfg in configs:
        records = [r for r in store.find(cfg.config_hash()) if r.study == study]
        if any(r.status in RESULT_STATUSES for r in records):
            plan.skipped.append(cfg)
            continue
        if any(r.status == "running" and not r.stale for r in records):
            plan.busy.append(cfg)
            continue
        resumed = resumable_run(store, cfg, study)
        if resumed is not None:
            plan.resumed[cfg.config_hash()] = resumed
        plan.leftovers += [r.id for r in records if r.id != resumed]
        plan.todo.append(cfg)
    return plan


# -- workers ---------------------------------------------------------------------------------------------------------


def _init_worker() -> None:
    """Pool initializer: leave Ctrl-C to the driver, and exit when the driver is gone (a driver killed with
    SIGKILL must not leave workers training runs nobody will collect)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="reglab-parent-watch").start()


def train_config(
    config: dict[str, Any], checkpoint_dir: str | None = None, resume: bool = False
) -> tuple[dict[str, Any], list[tuple[int, str, str, float]]]:
    """Worker entry point: train one config (a JSON dict) and return its outcome (as a dict) and metric rows
    (all of them, also those before the checkpoint a resumed run continues from; see
    :func:`~reglab.experiments.runner.train` for ``checkpoint_dir`` and ``resume``).

    Never raises (an error, even one building the config, is a ``failed`` outcome), and returns only plain
    Python values, so nothing needs unpickling in the driver but dicts, lists and numbers.
    """
    try:
        outcome, history = train(parse_config(config), checkpoint_dir=checkpoint_dir, resume=resume)
    except Exception as err:  # e.g. a method registered in the driver's __main__ only, unknown in a worker
        name = config.get("name") or "run"
        seed = int(config.get("train", {}).get("seed", 0))
        return _failed(name, seed, f"{type(err).__name__}: {err}"), []
    return outcome.to_dict(), [tuple(row) for row in history]


def _failed(name: str, seed: int, error: str) -> dict[str, Any]:
    return RunOutcome(None, name, seed, "failed", error=error).to_dict()


def _local(configs: list[tuple[dict[str, Any], str, bool]], workers: int) -> Iterator[tuple[int, tuple[dict, list]]]:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools into the children
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    try:
        futures = {pool.submit(train_config, *c): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                yield i, future.result()
            except Exception as err:  # a worker died (BrokenProcessPool: killed by the OS, a crash in native code)
                error = f"{type(err).__name__}: {err} (a worker process died; the run is re-run by the next sweep)"
                yield i, (_failed(configs[i][0].get("name") or "run", configs[i][0]["train"]["seed"], error), [])
    finally:
        processes = list(getattr(pool, "_processes", {}).values())  # no public way to stop running workers
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()


def _ray(
    configs: list[tuple[dict[str, Any], str, bool]], workers: int, address: str | None
) -> Iterator[tuple[int, tuple[dict, list]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray' needs Ray: pip install 'reglab[ray]'") from None
    started = not ray.is_initialized()
    if not started and address is not None:
        raise ConfigError(
            f"address={address!r} cannot be used: Ray is already initialized in this process; "
            "leave address out to use that instance, or call ray.shutdown() first"
        )
    if started:
        if address is None:  # a private local instance on the loopback interface
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    remote = ray.remote(train_config)
    refs: dict[Any, int] = {}
    try:  # a task reserves the CPUs its run uses
        refs = {remote.options(num_cpus=c[0]["train"]["threads"]).remote(*c): i for i, c in enumerate(configs)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    yield i, ray.get(ref)
                except Exception as err:  # the task or its worker failed
                    error = f"{type(err).__name__}: {err}".splitlines()[0]
                    yield i, (_failed(configs[i][0].get("name") or "run", configs[i][0]["train"]["seed"], error), [])
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


# -- the driver ------------------------------------------------------------------------------------------------------


def run_sweep(
    configs: Sequence[RunConfig],
    store: Store,
    *,
    study: str | None = None,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    on_result: Callable[[RunOutcome, int, int], None] | None = None,
) -> SweepResult:
    """Run every config of ``configs`` not already done in ``store``; see the module docstring.

    Args:
        configs: the runs (e.g. ``Study.expand()``); the ones to run are checked first (see the module docstring).
        store: where results go (written by this process only).
        study: the study name stored with each run.
        backend: ``"sequential"``, ``"local"`` or ``"ray"``.
        workers: parallel workers (local: processes, default the number of cores divided by the largest
            ``train.threads``; ray: CPUs of the local instance, default the number of cores).
        address: a Ray cluster to join (``ray`` backend only).
        on_result: called as ``on_result(outcome, finished, total)`` after each run, for progress display.

    Raises:
        ConfigError: a bad backend/workers, an address without the ray backend, or a config that cannot be built
            (sequential) or whose device or precision this machine lacks (local); nothing is written then.
        KeyboardInterrupt: after marking the unfinished runs ``interrupted``.
    """
    start = time.perf_counter()
    check_choice("backend", backend, BACKENDS)
    if workers is None:
        threads = max((cfg.train.threads for cfg in configs), default=1)
        workers = max(1, (os.cpu_count() or 1) // threads) if backend == "local" else os.cpu_count() or 1
    workers = check_int("workers", workers, 1)
    if address is not None and backend != "ray":
        raise ConfigError(f"address is for the ray backend; got backend={backend!r}")
    plan = plan_sweep(configs, store, study)
    check_checkpoint_root(plan.todo, store)
    built = deque(_check_todo(plan.todo, backend, workers, address))  # dropped one by one as they train
    for run_id in plan.leftovers:
        store.delete_run(run_id)
        shutil.rmtree(checkpoint_dir(store, run_id), ignore_errors=True)
    outcomes: list[RunOutcome] = []
    total = len(plan.todo)

    def report(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        if on_result is not None:
            on_result(outcome, len(outcomes), total)

    # every row is opened (running, this pid) before anything trains, so a second driver sees them as busy
    run_ids = [_reopen(store, plan, cfg) or open_run(store, cfg, study) for cfg in plan.todo]
    resumed = [cfg.config_hash() in plan.resumed for cfg in plan.todo]
    finished: set[int] = set()
    try:
        if backend == "sequential":
            results: Iterator[tuple[int, tuple[dict, list]]] = (
                (i, _train_streaming(cfg, built.popleft(), store, run_ids[i], resumed[i]))
                for i, cfg in enumerate(plan.todo)
            )
        else:
            payload = [
                (cfg.model_dump(mode="json"), str(checkpoint_dir(store, run_ids[i])), resumed[i])
                for i, cfg in enumerate(plan.todo)
            ]
            results = _local(payload, workers) if backend == "local" else _ray(payload, workers, address)
        for i, (outcome_dict, rows) in results:
            outcome = RunOutcome(**outcome_dict)
            outcome.run_id = run_ids[i]
            store.log_metrics(run_ids[i], rows)
            close_run(store, run_ids[i], outcome)
            finished.add(i)
            report(outcome)
    except BaseException as err:  # Ctrl-C, or a failure of the driver itself: no row stays 'running'
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        reason = "sweep interrupted by the user" if status == "interrupted" else f"sweep driver failed: {err!r}"
        for i, run_id in enumerate(run_ids):
            if i not in finished:
                store.finish_run(run_id, status, error=reason)
        raise
    return SweepResult(plan, outcomes, time.perf_counter() - start)


def _check_todo(todo: list[RunConfig], backend: str, workers: int, address: str | None) -> list[Built]:
    """Check the configs to run before anything is written: build them all for the sequential backend (and
    return what it then trains), check the device and precision on this machine for the local one (its workers
    build); Ray's workers may be other machines, so only the CPUs of a local Ray instance are checked."""
    if backend == "sequential":
        return build_all(todo)
    if backend == "local":
        for_each_run(todo, check_machine)
    elif address is None and (threads := max((c.train.threads for c in todo), default=1)) > workers:
        raise ConfigError(
            f"train.threads={threads} needs that many CPUs, more than the {workers} of the local Ray instance; "
            f"give workers >= {threads}"
        )
    return []


def _reopen(store: Store, plan: SweepPlan, cfg: RunConfig) -> int | None:
    """The id of the interrupted run ``cfg`` continues, marked ``running`` in this process; None for a new run."""
    run_id = plan.resumed.get(cfg.config_hash())
    if run_id is not None:
        store.start_run(run_id)
    return run_id


def _train_streaming(
    cfg: RunConfig, built: Built, store: Store, run_id: int, resume: bool
) -> tuple[dict[str, Any], list]:
    """Train ``built`` in this process, streaming metric rows into the run's row as they come."""
    outcome, _ = train(
        cfg,
        built=built,
        sink=lambda rows: store.log_metrics(run_id, rows),
        checkpoint_dir=checkpoint_dir(store, run_id),
        resume=resume,
        on_resume=lambda step: store.delete_metrics(run_id, after=step),
    )
    return outcome.to_dict(), []
