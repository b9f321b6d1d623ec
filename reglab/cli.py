"""The ``reglab`` command: list methods, run configs and studies, show the store, check claims, run the demo."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from reglab.core import Callback, ReglabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="reglab: regularization methods, instruments and a lab to compare them.",
)
console = Console()

DEMO_STUDY = Path(__file__).parent / "examples" / "demo.yaml"


def _families() -> dict[str, Any]:
    from reglab import claims
    from reglab.experiments.config import family_registries

    return {**family_registries(), "claim": claims.REGISTRY}


@app.command("list")
def list_(
    family: str = typer.Argument(
        None, help="penalty, loss, optimizer, augmentation, probe, task, transform, model or claim; all when omitted"
    ),
) -> None:
    """List registered methods with a one-line description."""
    from reglab.core import UnknownNameError

    families = _families()
    if family is not None and family not in families:
        raise UnknownNameError("family", family, families, listing=False)
    for name, registry in families.items():
        if family not in (None, name):
            continue
        table = Table(title=f"{name} ({len(registry)})", title_justify="left", show_header=False)
        for member, description in registry.describe().items():
            table.add_row(member, description)
        console.print(table)


class _ProgressCallback(Callback):
    def __init__(self, progress: Progress, label: str, total: int):
        self.progress, self.task = progress, progress.add_task(label, total=total)

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        self.progress.update(self.task, completed=step)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[self.task].total)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _open_trackers(stack: ExitStack, tensorboard: Path | None, mlflow: str | None, experiment: str | None) -> list:
    """The trackers asked for by ``--tensorboard`` / ``--mlflow``, each destination checked now (before anything
    trains) and closed by ``stack``; MLflow runs go to the experiment named after the study (``reglab`` without)."""
    from reglab.experiments.trackers import MLflowTracker, TensorBoardTracker

    trackers: list = []
    try:
        if tensorboard is not None:
            trackers.append(stack.enter_context(TensorBoardTracker(tensorboard)))
        if mlflow is not None:
            trackers.append(stack.enter_context(MLflowTracker(mlflow, experiment=experiment or "reglab")))
    except BaseException:
        stack.close()
        raise
    return trackers


_TENSORBOARD_HELP = "also write every metric row to TensorBoard event files here (one directory per run)"
_MLFLOW_HELP = "also write every run to this MLflow tracking URI (a directory, sqlite:///file.db or a server)"


def configs_without_results(configs: list, store_path: Path, study: str | None) -> list:
    """``configs`` less those the store already has a result of (done, diverged) in ``study``, saying how many."""
    from reglab.experiments.store import Store
    from reglab.experiments.sweep import RESULT_STATUSES

    with Store(store_path) as store:
        done = {
            cfg.config_hash()
            for cfg in configs
            if any(r.study == study and r.status in RESULT_STATUSES for r in store.find(cfg.config_hash()))
        }
    if done:
        console.print(f"{len(done)} of {len(configs)} runs already have a result in {store_path}; skipped")
    return [cfg for cfg in configs if cfg.config_hash() not in done]


def run_configs(
    configs: list, store_path: Path, study: str | None, trackers: Sequence = (), *, resume: bool = False
) -> list:
    """Run configs one after another into the store, with a progress bar per run; all are built (once) first.

    ``trackers`` (:mod:`reglab.experiments.trackers`) are attached to the store and get every row it writes.
    With ``resume``, configs the store already holds a result of (done, diverged) are skipped, and interrupted or
    killed runs continue from their last checkpoint (:func:`~reglab.experiments.runner.execute`).
    """
    from reglab.experiments.runner import build_all, check_checkpoint_root, execute
    from reglab.experiments.store import Store

    if resume:
        configs = configs_without_results(configs, store_path, study)
    check_checkpoint_root(configs, store_path)
    built = deque(build_all(configs))  # each run's objects are dropped once it has trained
    outcomes = []
    with Store(store_path) as store, _progress() as progress:
        for tracker in trackers:
            store.add_listener(tracker)
        for i, cfg in enumerate(configs, 1):
            label = escape(f"[{i}/{len(configs)}] {cfg.run_name} seed {cfg.train.seed}")
            cb = _ProgressCallback(progress, label, cfg.train.steps)
            outcome = execute(cfg, store, study=study, built=built.popleft(), callbacks=[cb], resume=resume)
            outcomes.append(outcome)
            if outcome.status != "done":
                first = (outcome.error or f"at step {outcome.diverged_at}").splitlines()[0]
                progress.console.print(f"[yellow]{label}: {outcome.status}: {escape(first)}")
    return outcomes


def _outcome_table(outcomes: list) -> Table:
    table = Table("run", "seed", "status", "steps", "test accuracy", "test loss", "seconds")
    for o in outcomes:
        acc, loss = o.final.get("test/accuracy"), o.final.get("test/loss")
        table.add_row(
            escape(o.name),
            str(o.seed),
            o.status,
            str(o.steps),
            "–" if acc is None else f"{acc:.4f}",
            "–" if loss is None else f"{loss:.4f}",
            f"{o.seconds:.1f}",
        )
    return table


@app.command()
def run(
    config: Path = typer.Argument(..., help="a run config or a study (base + variants + seeds), YAML"),
    store: Path = typer.Option(Path("runs.db"), help="SQLite result store"),
    report: Path = typer.Option(None, help="also write an HTML report to this directory"),
    tensorboard: Path = typer.Option(None, help=_TENSORBOARD_HELP),
    mlflow: str = typer.Option(None, help=_MLFLOW_HELP),
    resume: bool = typer.Option(
        False,
        help="continue interrupted or killed runs from their last checkpoint (train.checkpoint_every) and skip "
        "runs the store already has a result of",
    ),
    nproc: int = typer.Option(
        1, help="processes per run (data parallel through torch.distributed: gloo on CPUs, nccl on GPUs)"
    ),
) -> None:
    """Run one config, or every run of a study, and record them in the store."""
    from reglab.experiments.config import parse_config, read_yaml
    from reglab.experiments.study import is_study, parse_study

    data = read_yaml(config)
    study = parse_study(data) if is_study(data) else None
    configs = study.expand() if study else [parse_config(data)]
    if nproc != 1:
        from reglab.experiments.launch import launch

        code = launch(config, store, nproc, configs, resume=resume, tensorboard=tensorboard, mlflow=mlflow)
        if report is not None and code == 0:
            _write_report(store, report, study.name if study else None)
        raise typer.Exit(code)
    with ExitStack() as stack:
        trackers = _open_trackers(stack, tensorboard, mlflow, study.name if study else None)
        outcomes = run_configs(configs, store, study.name if study else None, trackers, resume=resume)
    console.print(_outcome_table(outcomes))
    if report is not None:
        _write_report(store, report, study.name if study else None)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


@app.command()
def sweep(
    study_file: Path = typer.Argument(..., metavar="STUDY", help="a study YAML (base, variants, grid, zip, seeds)"),
    store: Path = typer.Option(Path("runs.db"), help="SQLite result store (written by this process only)"),
    backend: str = typer.Option("local", help="sequential, local (a process pool) or ray"),
    workers: int = typer.Option(None, help="parallel workers / Ray CPUs (default: the number of cores)"),
    address: str = typer.Option(None, help="a Ray cluster to join (ray backend); default: a local instance"),
    report: Path = typer.Option(None, help="also write an HTML report to this directory"),
    tensorboard: Path = typer.Option(None, help=_TENSORBOARD_HELP),
    mlflow: str = typer.Option(None, help=_MLFLOW_HELP),
) -> None:
    """Run a study in parallel, resumably: runs already done in the store are skipped.

    Ctrl-C marks unfinished runs interrupted; the next sweep of the same study re-runs them,
    and runs left 'running' by a killed driver.
    """
    from reglab.experiments.store import Store
    from reglab.experiments.study import load_study
    from reglab.experiments.sweep import run_sweep

    spec = load_study(study_file)
    configs = spec.expand()
    stack = ExitStack()  # the trackers' destinations are checked before the store is opened
    trackers = _open_trackers(stack, tensorboard, mlflow, spec.name)
    with stack, Store(store) as db, _progress() as progress:
        for tracker in trackers:
            db.add_listener(tracker)  # the driver writes every row, those its workers send back included
        bar = progress.add_task(escape(f"sweep {spec.name} ({backend})"), total=None)

        def on_result(outcome: Any, finished: int, total: int) -> None:
            progress.update(bar, completed=finished, total=total)
            if outcome.status != "done":
                first = (outcome.error or f"at step {outcome.diverged_at}").splitlines()[0]
                progress.console.print(
                    f"[yellow]{escape(outcome.name)} seed {outcome.seed}: {outcome.status}: {escape(first)}"
                )

        try:
            result = run_sweep(
                configs, db, study=spec.name, backend=backend, workers=workers, address=address, on_result=on_result
            )
        except KeyboardInterrupt:
            console.print("[red]interrupted: unfinished runs are marked 'interrupted'; run the same sweep to resume")
            raise typer.Exit(130) from None
    plan = result.plan
    console.print(
        f"{len(configs)} runs: {len(plan.todo)} run now, {len(plan.skipped)} already done (skipped), "
        f"{len(plan.busy)} running in another process; {result.counts()} in {result.seconds:.0f} s"
    )
    if result.outcomes:
        console.print(_outcome_table(result.outcomes))
    if report is not None:
        _write_report(store, report, spec.name)
    if any(o.status == "failed" for o in result.outcomes):
        raise typer.Exit(1)


@app.command()
def tune(
    study_file: Path = typer.Argument(..., metavar="STUDY", help="a search study YAML (base, search, objective)"),
    trials: int = typer.Option(..., "--trials", min=1, help="finished trials wanted in total (resumes)"),
    sampler: str = typer.Option("tpe", help="tpe or random"),
    pruner: str = typer.Option("median", help="median, hyperband or none (ray: ASHA unless none)"),
    backend: str = typer.Option("local", help="local (trials one after another here) or ray (Ray Tune with ASHA)"),
    workers: int = typer.Option(None, help="trials at a time on Ray (default: the number of cores)"),
    store: Path = typer.Option(Path("runs.db"), help="SQLite result store; the Optuna record goes beside it"),
    report: Path = typer.Option(None, help="also write an HTML report (with the search section) to this directory"),
) -> None:
    """Search a study's hyperparameters with Optuna; every trial is a run in the store, pruned ones 'pruned'.

    Resumable: run the same command again after Ctrl-C or a kill, and it continues to --trials finished trials.
    """
    from reglab.experiments.store import Store
    from reglab.experiments.study import load_study
    from reglab.experiments.tune import run_tune

    spec = load_study(study_file)
    with Store(store) as db, _progress() as progress:
        bar = progress.add_task(escape(f"tune {spec.name} ({backend}, {sampler}, {pruner})"), total=trials)

        def on_trial(record: Any, finished: int, total: int) -> None:
            progress.update(bar, completed=finished)
            value = "–" if record.value is None else f"{record.value:.4g}"
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.params.items())
            line = f"trial {record.number}: {record.status} {spec.objective}={value} ({params})"
            progress.console.print(escape(line))

        try:
            result = run_tune(
                spec, db, trials=trials, sampler=sampler, pruner=pruner, backend=backend, workers=workers,
                on_trial=on_trial,
            )
        except KeyboardInterrupt:
            console.print("[red]interrupted: the trial in progress is trained again when you run the same command")
            raise typer.Exit(130) from None
    console.print(
        f"{result.finished} finished trials ({len(result.trials)} now: {result.counts()}) in {result.seconds:.0f} s; "
        f"optuna record: {result.storage}"
    )
    if result.best_value is not None:
        console.print(
            escape(f"best {spec.objective} = {result.best_value:.4g} (run {result.best_run_id}): {result.best_params}")
        )
    if report is not None:
        _write_report(store, report, spec.name)


def _write_report(store: Path, out: Path, study: str | None) -> None:
    from reglab.experiments.report import write_report

    index = write_report(store, out, study=study, title=f"reglab report: {study}" if study else "reglab report")
    console.print(f"report: {index}")


@app.command()
def report(
    store: Path = typer.Argument(Path("runs.db"), help="SQLite result store"),
    out: Path = typer.Option(Path("reglab-report"), "-o", "--out", help="output directory"),
    study: str = typer.Option(None, help="only the runs of this study"),
) -> None:
    """Write a self-contained HTML report (results table and learning curves) of a store."""
    _check_store(store)
    _write_report(store, out, study)


@app.command()
def export(
    store: Path = typer.Argument(..., metavar="DB", help="SQLite result store"),
    dest: str = typer.Argument(..., metavar="DEST", help="a directory (tensorboard), a URI (mlflow) or a file"),
    to: str = typer.Option(..., "--to", help="tensorboard, mlflow, csv or parquet"),
    study: str = typer.Option(None, help="only the runs of this study"),
) -> None:
    """Export what a store holds: reglab export DB --to tensorboard DIR | mlflow URI | csv FILE | parquet FILE."""
    from reglab.experiments.store import Store
    from reglab.experiments.trackers import export as export_store

    _check_store(store)
    with Store(store) as db:
        count = export_store(db, to, dest, study=study)
    console.print(f"exported {count} runs of {escape(str(store))} to {to} {escape(dest)}")


def _check_store(store: Path) -> None:
    from reglab.core import StoreError

    if not store.is_file():
        raise StoreError(f"no store at {str(store)!r}; run `reglab run CONFIG --store {store}` first")


@app.command()
def show(store: Path = typer.Argument(Path("runs.db"), help="SQLite result store")) -> None:
    """List the runs in a store with their status and final test metrics; flags stale runs."""
    from reglab.experiments.store import Store

    _check_store(store)
    with Store(store) as db:
        records = db.runs()
        table = Table("id", "name", "study", "seed", "status", "step", "test accuracy", "test loss", "seconds")
        for r in records:
            finals = {(s, n): v for _, s, n, v in db.metrics(r.id, split="test")}
            status = f"{r.status} (stale: its process is gone)" if r.stale else r.status
            seconds = f"{r.ended - r.started:.1f}" if r.ended and r.started else "–"
            acc, loss = finals.get(("test", "accuracy")), finals.get(("test", "loss"))
            table.add_row(
                str(r.id),
                escape(r.name or ""),
                escape(r.study or ""),
                str(r.seed),
                status,
                str(r.step),
                "–" if acc is None else f"{acc:.4f}",
                "–" if loss is None else f"{loss:.4f}",
                seconds,
            )
    console.print(table)


@app.command()
def claims(
    names: list[str] = typer.Argument(None, help="claims to run (all when omitted)"),
    quick: bool = typer.Option(False, "--quick", help="the ~1-minute CI mode"),
    seed: int = typer.Option(0, help="first seed"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="run every claim on this many seeds (seed, seed+1, ...)"),
    json_out: Path = typer.Option(None, "--json", help="also write every claim's numbers and verdicts to this file"),
    report: Path = typer.Option(None, help="write an HTML report (index.html, claims.json) to this directory"),
) -> None:
    """Run paper claims over seeds; print paper, prediction, measured numbers and the fraction of seeds that hold."""
    from reglab.claims import REGISTRY
    from reglab.claims.suite import run_suite, write_suite_report

    selected = names or REGISTRY.names()
    for name in selected:
        REGISTRY.entry(name)
    seed_list = list(range(seed, seed + seeds))
    with _progress() as progress:
        bar = progress.add_task(f"claims ({'quick' if quick else 'full'})", total=len(selected) * len(seed_list))

        def on_start(name: str, s: int) -> None:
            progress.update(bar, description=escape(f"claim {name} seed {s}"))

        def on_result(record: Any, outcome: Any) -> None:
            progress.advance(bar)
            verdict = "holds" if outcome.holds else ("error" if outcome.holds is None else "does not hold")
            progress.console.print(f"{escape(record.name)} seed {outcome.seed}: {verdict} ({outcome.seconds:.0f} s)")

        records = run_suite(selected, quick=quick, seeds=seed_list, on_result=on_result, on_start=on_start)
    table = Table(show_lines=True)
    for column in ("claim", "paper", "prediction", "measured (first seed)", "held", "seconds"):
        table.add_column(column, overflow="fold")
    for r in records:
        color = "green" if r.held == len(r.seeds) else ("red" if r.held == 0 else "yellow")
        cells = (escape(r.paper), escape(r.prediction), escape(r.seeds[0].summary))
        total = sum(s.seconds for s in r.seeds)
        table.add_row(r.name, *cells, f"[{color}]{r.held}/{len(r.seeds)}", f"{total:.0f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps([r.to_dict() for r in records], indent=2, default=str))
    if report is not None:
        console.print(f"claims report: {write_suite_report(records, report)}")


@app.command()
def demo(
    store: Path = typer.Option(Path("runs.db"), help="SQLite result store"),
    out: Path = typer.Option(Path("reglab-report"), "-o", "--out", help="report directory"),
    steps: int = typer.Option(None, help="override the number of steps (e.g. 50 for a smoke test)"),
) -> None:
    """The main job: baseline vs L2 vs label smoothing on MNIST-1D, 2 seeds, stored and reported."""
    from reglab.experiments.config import deep_merge, read_yaml
    from reglab.experiments.study import parse_study

    start = time.perf_counter()
    data = read_yaml(DEMO_STUDY)
    if steps is not None:
        data = deep_merge(data, {"base": {"train": {"steps": steps, "eval_every": max(1, steps // 10)}}})
    study = parse_study(data)
    outcomes = run_configs(study.expand(), store, study.name)
    console.print(_outcome_table(outcomes))
    _write_report(store, out, study.name)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; open {out / 'index.html'}")


@app.command("lr-find")
def lr_find(
    config: Path = typer.Argument(..., help="a run config, YAML"),
    start: float = typer.Option(1e-7, help="first learning rate of the ramp"),
    end: float = typer.Option(10.0, help="last learning rate of the ramp"),
    steps: int = typer.Option(100, help="steps of the exponential ramp (fewer if the loss diverges)"),
    out: Path = typer.Option(Path("lr_find.png"), "-o", "--out", help="PNG of the loss against the learning rate"),
) -> None:
    """Smith's learning-rate range test: train the config's run with an exponentially rising lr, plot the loss
    and print the suggested lr (a tenth of the lr of the lowest smoothed loss). Nothing is stored."""
    from reglab.experiments.config import load_config
    from reglab.experiments.lr_find import lr_find as range_test

    result = range_test(load_config(config), start=start, end=end, steps=steps, out=out)
    stopped = {"end": "the ramp ended", "diverged": "the loss diverged", "not finite": "the loss was not finite"}
    last = f" at lr {result.lrs[-1]:.3g}" if result.lrs else ""
    console.print(f"{len(result.lrs)} steps; stopped: {stopped[result.stop]}{last}")
    console.print(f"steepest descent of the smoothed loss: lr {result.steepest:.3g}")
    console.print(f"suggested lr (lowest smoothed loss / 10): [bold]{result.suggested:.3g}[/bold]")
    console.print(f"plot: {out}")


def main() -> None:
    """Entry point of the console script: reglab errors print as one clear message and exit 2."""
    try:
        app()
    except ReglabError as err:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {escape(str(err))}")
        raise SystemExit(2) from None
