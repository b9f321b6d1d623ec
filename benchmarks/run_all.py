"""Run every benchmark; each prints its table and saves it under benchmarks/results/."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    bench_store,
    curvature,
    long_runs,
    losses,
    optimizers,
    penalties,
    sweeps,
    trainer_throughput,
    tune_vs_grid,
)

if __name__ == "__main__":
    trainer_throughput.main([])
    losses.main()
    penalties.main()
    bench_store.main()
    curvature.main([])
    optimizers.main([])
    sweeps.main([])
    long_runs.main([])
    tune_vs_grid.main([])
