"""`reglab tune` (TPE + median pruner) against the full grid over the same space, on the demo problem.

The problem is the demo study's (reglab/examples/demo.yaml: MNIST-1D, 4000 training examples, MLP 256x2, Adam,
3000 steps, evaluation every 250 steps), one seed. The space: ``optimizer.lr`` in {3e-4, 1e-3, 3e-3, 1e-2} x an L2
penalty ``penalties.0.weight`` in {0, 1e-4, 1e-3}: 12 configs. The grid trains all 12 to the end; the search runs
``--trials`` trials (default 12) with the median pruner. Training steps are counted from the store: every run's last
step (a pruned trial counts the steps it took; a trial that re-samples a config already trained costs none).
Target (issue 13): the search reaches the grid's best test accuracy with <= 50% of the grid's steps.

    python benchmarks/tune_vs_grid.py [--trials N] [--steps S] [--seed K]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402
from reglab.experiments.config import read_yaml  # noqa: E402
from reglab.experiments.store import Store  # noqa: E402
from reglab.experiments.study import parse_study  # noqa: E402
from reglab.experiments.sweep import run_sweep  # noqa: E402
from reglab.experiments.tune import run_tune  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "reglab" / "examples" / "demo.yaml"
LRS = [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]
WEIGHTS = [0.0, 1.0e-4, 1.0e-3]
OBJECTIVE = "test/accuracy"


def base(steps: int) -> dict:
    data = read_yaml(DEMO)["base"]
    every = max(1, steps // 12)
    train = {**data["train"], "steps": steps, "eval_every": every}
    return {**data, "penalties": [{"name": "l2", "weight": 0.0}], "train": train}


def final_objective(store: Store, run_id: int) -> float:
    split, name = OBJECTIVE.split("/")
    values = store.metrics(run_id, split=split, name=name)
    return values[-1][3] if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="reglab-tune-bench-"))
    grid_study = parse_study(
        {
            "study": "grid",
            "base": base(args.steps),
            "grid": {"optimizer.lr": LRS, "penalties.0.weight": WEIGHTS},
            "seeds": [args.seed],
        }
    )
    search_study = parse_study(
        {
            "study": "search",
            "base": base(args.steps),
            "search": {"optimizer.lr": {"choices": LRS}, "penalties.0.weight": {"choices": WEIGHTS}},
            "objective": OBJECTIVE,
            "direction": "maximize",
            "seeds": [args.seed],
        }
    )
    rows = []
    with Store(folder / "runs.db") as store:
        start = time.perf_counter()
        run_sweep(grid_study.expand(), store, study="grid", backend="sequential")
        grid_seconds = time.perf_counter() - start
        grid_runs = store.runs(study="grid")
        grid_steps = sum(r.step or 0 for r in grid_runs)
        grid_best = max(final_objective(store, r.id) for r in grid_runs)
        start = time.perf_counter()
        result = run_tune(search_study, store, trials=args.trials, sampler="tpe", pruner="median", seed=args.seed)
        tune_seconds = time.perf_counter() - start
        tune_runs = store.runs(study="search")
        tune_steps = sum(r.step or 0 for r in tune_runs)
        statuses = {s: sum(r.status == s for r in tune_runs) for s in sorted({r.status for r in tune_runs})}
    rows.append(
        {"method": "grid", "configs_trained": len(grid_runs), "steps": grid_steps, "best_" + OBJECTIVE: grid_best,
         "seconds": grid_seconds, "statuses": f"done {len(grid_runs)}"}
    )
    rows.append(
        {"method": f"tune ({args.trials} trials, tpe, median)", "configs_trained": len(tune_runs), "steps": tune_steps,
         "best_" + OBJECTIVE: result.best_value, "seconds": tune_seconds,
         "statuses": ", ".join(f"{k} {v}" for k, v in statuses.items())}
    )
    ratio = tune_steps / grid_steps
    reached = result.best_value is not None and result.best_value >= grid_best
    note = (
        f"Demo problem (demo.yaml base, {args.steps} steps, eval every {args.steps // 12}), seed {args.seed}, space "
        f"optimizer.lr {LRS} x penalties.0.weight (l2) {WEIGHTS}. Tune steps / grid steps = {ratio:.3f}; "
        f"best tune {OBJECTIVE} {result.best_value} vs grid {grid_best}: reached the grid's best: {reached}. "
        f"Target (<= 0.5 of the steps, grid's best reached): {'met' if reached and ratio <= 0.5 else 'NOT met'}. "
        f"Best tune params {result.best_params}. Store and Optuna record: {folder}."
    )
    save("tune_vs_grid", rows, note)


if __name__ == "__main__":
    main()
