"""Long-run machinery: the cost of checkpointing and the scaling of a data-parallel run.

- ``checkpoint``: the MNIST-1D CNN (``cnn1d``, Adam, batch 128) trained for ``--steps`` steps without checkpoints
  and with ``train.checkpoint_every: 100`` (each checkpoint: model, optimizer, RNG states, rows; written to a
  temporary file, fsynced and renamed), in alternation, ``--repeats`` times each; the overhead is the ratio of the
  median wall times minus one (target: <= 3%). Both runs go through :func:`reglab.experiments.runner.execute` into a
  store, so store writes are in both.
- ``ddp``: the same run, with ``--steps`` steps and a global batch of 256, by ``reglab run`` in one process and with
  ``--nproc 2`` (two gloo processes, one thread each); wall time of the whole command (interpreter and process-group
  start-up included) and of the run itself (the store's start-to-end time: build, training, evaluation).
  On a 2-core machine the two processes share both cores with nothing else, so the speed-up is at most 2x minus
  the all-reduce of every step's gradients.

    python benchmarks/long_runs.py [--steps 600] [--repeats 3] [--only checkpoint|ddp]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402
from reglab.experiments.config import parse_config  # noqa: E402
from reglab.experiments.runner import execute  # noqa: E402
from reglab.experiments.store import Store  # noqa: E402


def _config(steps: int, **train) -> dict:
    return {
        "task": {"name": "mnist1d"},
        "model": {"name": "cnn1d"},
        "optimizer": {"name": "adam", "lr": 1.0e-3},
        "train": {"steps": steps, "batch_size": 128, "eval_every": steps, "log_every": 10, "threads": 1, **train},
    }


def checkpoint_overhead(steps: int, repeats: int) -> list[dict]:
    times: dict[str, list[float]] = {"none": [], "every 100": []}
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "warm-up.db") as store:  # MNIST-1D's generation and the first allocations
            execute(parse_config(_config(20)), store)
        for i in range(repeats):
            for label, extra in (("none", {}), ("every 100", {"checkpoint_every": 100})):
                with Store(Path(tmp) / f"{i}-{label.replace(' ', '')}.db") as store:
                    cfg = parse_config(_config(steps, **extra))
                    start = time.perf_counter()
                    outcome = execute(cfg, store)
                    times[label].append(time.perf_counter() - start)
                    assert outcome.status == "done", outcome.error
    base, ckpt = statistics.median(times["none"]), statistics.median(times["every 100"])
    overhead = ckpt / base - 1
    return [
        {"case": "checkpoint_every: 100", "steps": steps, "seconds without": base, "seconds with": ckpt,
         "overhead": overhead, "checkpoints": steps // 100, "target": "<= 3%", "met": overhead <= 0.03},
    ]  # fmt: skip


def ddp_scaling(steps: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "run.yaml"
        config.write_text(yaml.safe_dump(_config(steps, batch_size=256)))
        for nproc in (1, 2):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "reglab", "run", str(config), "--store", f"{tmp}/{nproc}.db",
                 "--nproc", str(nproc)],
                capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - start
            assert done.returncode == 0, done.stdout + done.stderr
            with Store(f"{tmp}/{nproc}.db") as store:
                (run,) = store.runs()
                trained = run.ended - run.started
                accuracy = store.metrics(run.id, split="test", name="accuracy")[-1][3]
            rows.append({"processes": nproc, "steps": steps, "global batch": 256, "command seconds": wall,
                         "run seconds": trained, "test accuracy": accuracy})  # fmt: skip
    base = rows[0]["run seconds"]
    for row in rows:
        row["speed-up"] = base / row["run seconds"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("checkpoint", "ddp"))
    args = parser.parse_args(argv)
    if args.only in (None, "checkpoint"):
        save(
            "checkpoint_overhead",
            checkpoint_overhead(args.steps, args.repeats),
            f"MNIST-1D CNN (cnn1d, Adam, batch 128, 1 thread), {args.steps} steps through execute() into a store, "
            f"without and with a checkpoint every 100 steps, alternating, median of {args.repeats}.",
        )
    if args.only in (None, "ddp"):
        save(
            "ddp_scaling",
            ddp_scaling(args.steps),
            f"`reglab run --nproc N` on this machine's CPUs (gloo, 1 thread per process), MNIST-1D CNN, global batch "
            f"256, {args.steps} steps; run seconds: the store's start-to-end time of the run (build + training + "
            "evaluation, without the interpreter and process-group start-up), command seconds: the whole command.",
        )


if __name__ == "__main__":
    main()
