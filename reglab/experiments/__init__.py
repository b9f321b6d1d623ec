"""Layer 5: the config schema, studies, the runner, the SQLite result store and reports."""

from reglab.experiments.config import RunConfig, Spec, TrainSpec, load_config, parse_config
from reglab.experiments.runner import RunOutcome, build, execute, make_trainer
from reglab.experiments.store import RunRecord, Store
from reglab.experiments.study import Study, load_study, parse_study
from reglab.experiments.sweep import SweepPlan, SweepResult, plan_sweep, run_sweep
from reglab.experiments.trackers import MLflowTracker, TensorBoardTracker


def __getattr__(name: str):  # the report pulls in matplotlib and scipy: import it only when asked for
    if name == "write_report":
        from reglab.experiments.report import write_report

        return write_report
    raise AttributeError(f"module 'reglab.experiments' has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "RunOutcome",
    "RunRecord",
    "MLflowTracker",
    "Spec",
    "Store",
    "Study",
    "SweepPlan",
    "SweepResult",
    "TensorBoardTracker",
    "TrainSpec",
    "build",
    "execute",
    "load_config",
    "load_study",
    "make_trainer",
    "parse_config",
    "parse_study",
    "plan_sweep",
    "run_sweep",
    "write_report",
]
