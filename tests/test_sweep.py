"""Sweeps: study expansion, resume, divergence, interruption, SIGKILL of the driver, Ray vs local."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reglab.core import ConfigError
from reglab.experiments.store import Store
from reglab.experiments.study import parse_study, set_path
from reglab.experiments.sweep import plan_sweep, run_sweep

BASE = {
    "task": {"name": "two_moons", "n": 120, "n_test": 60},
    "model": {"name": "mlp", "width": 8},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "penalties": [{"name": "l2", "weight": 1.0e-4}],
    "train": {"steps": 20, "eval_every": 10, "batch_size": 30},
}
ROOT = Path(__file__).resolve().parents[1]


def study(**extra):
    return parse_study({"study": "s", "base": BASE, **extra})


def test_expansion_is_variants_times_grid_times_zip_times_seeds():
    s = study(
        variants={"a": {}, "b": {"optimizer": {"name": "adam", "lr": 1e-3}}},
        grid={"penalties.0.weight": [1e-4, 1e-3], "train.batch_size": [10, 30]},
        zip={"train.steps": [20, 30, 40], "train.eval_every": [10, 15, 20]},
        seeds=[0, 1],
    )
    runs = s.expand()
    assert len(runs) == 2 * 4 * 3 * 2
    assert len({r.config_hash() for r in runs}) == len(runs)
    first = runs[0]
    assert first.run_name == "a[penalties.0.weight=0.0001, train.batch_size=10, train.steps=20, train.eval_every=10]"
    assert first.penalties[0].kwargs["weight"] == 1e-4 and first.train.steps == 20 and first.train.seed == 0
    assert {(r.train.steps, r.train.eval_every) for r in runs} == {(20, 10), (30, 15), (40, 20)}  # zipped, not crossed
    names = {r.run_name for r in study(grid={"optimizer.lr": [0.1, 0.2]}).expand()}
    assert names == {"optimizer.lr=0.1", "optimizer.lr=0.2"}


def test_identical_configs_run_once_and_axis_errors_are_clear():
    # a variant equal to the base and a grid value equal to the base's: one run per distinct config
    runs = study(variants={"a": {}, "same": {"optimizer": {"lr": 0.1}}}, seeds=[0]).expand()
    assert len(runs) == 1
    with pytest.raises(ConfigError, match="equal lengths"):
        study(zip={"optimizer.lr": [0.1, 0.2], "train.steps": [5]})
    with pytest.raises(ConfigError, match="seeds"):
        study(grid={"train.seed": [1, 2]})
    with pytest.raises(ConfigError, match="non-empty list"):
        study(grid={"optimizer.lr": 0.1})
    with pytest.raises(ConfigError, match="not an index"):
        set_path({"penalties": [{"weight": 1}]}, "penalties.3.weight", 2)
    with pytest.raises(ConfigError, match=r"run 'optimizer.lrr=0.1'"):
        study(grid={"optimizer.lrr": [0.1]}).expand()


def test_config_hashes_are_stable_across_processes():
    spec = {"study": "s", "base": BASE, "grid": {"optimizer.lr": [0.1, 0.3]}, "seeds": [0, 1]}
    here = [r.config_hash() for r in parse_study(spec).expand()]
    code = (
        "import json, sys; from reglab.experiments.study import parse_study; "
        "print(json.dumps([r.config_hash() for r in parse_study(json.loads(sys.argv[1])).expand()]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == here


def test_resume_skips_done_runs_and_reruns_the_rest(tmp_path):
    configs = study(grid={"optimizer.lr": [0.05, 0.1]}, seeds=[0, 1]).expand()
    with Store(tmp_path / "runs.db") as store:
        first = run_sweep(configs, store, study="s", backend="sequential")
        assert first.counts() == {"done": 4}
        again = run_sweep(configs, store, study="s", backend="sequential")
        assert again.outcomes == [] and len(again.plan.skipped) == 4
        # a failed and an interrupted run are done again; their old rows are replaced
        records = store.runs()
        store.finish_run(records[0].id, "failed", error="x")
        store.finish_run(records[1].id, "interrupted")
        third = run_sweep(configs, store, study="s", backend="sequential")
        assert len(third.outcomes) == 2 and third.plan.cleared == 2
        per_hash = collections.Counter(r.config_hash for r in store.runs())
        assert set(per_hash.values()) == {1} and len(per_hash) == 4
        assert all(r.status == "done" for r in store.runs())


def test_a_running_row_of_a_live_process_is_left_alone(tmp_path):
    configs = study(seeds=[0]).expand()
    with Store(tmp_path / "runs.db") as store:
        run_id = store.create_run(
            configs[0].model_dump(mode="json"), name="x", config_hash=configs[0].config_hash(), seed=0
        )
        store.start_run(run_id)  # this (live) process
        plan = plan_sweep(configs, store)
        assert plan.busy == configs and plan.todo == []


@pytest.mark.slow
def test_local_backend_records_divergence_and_finishes_the_rest(tmp_path):
    configs = study(variants={"ok": {}, "nan": {"optimizer": {"lr": 1.0e12}}}, seeds=[0, 1]).expand()
    with Store(tmp_path / "runs.db") as store:
        result = run_sweep(configs, store, study="s", backend="local", workers=2)
        assert result.counts() == {"done": 2, "diverged": 2}
        by_name = {(r.name, r.seed): r.status for r in store.runs()}
        assert by_name == {("ok", 0): "done", ("ok", 1): "done", ("nan", 0): "diverged", ("nan", 1): "diverged"}
        # the driver stored every metric row the workers produced
        assert all(store.metrics(r.id, split="test") for r in store.runs())


DRIVER = textwrap.dedent(
    """
    import sys
    from reglab.experiments.store import Store
    from reglab.experiments.study import load_study
    from reglab.experiments.sweep import run_sweep

    if __name__ == "__main__":
        with Store(sys.argv[2]) as store:
            run_sweep(load_study(sys.argv[1]).expand(), store, study="kill", backend="local", workers=2)
    """
)


def _write_study(tmp_path: Path, n_seeds: int, steps: int) -> Path:
    import yaml

    spec = {
        "study": "kill",
        "base": {**BASE, "train": {**BASE["train"], "steps": steps}},
        "seeds": list(range(n_seeds)),
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    (tmp_path / "driver.py").write_text(DRIVER)
    return path


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def _statuses(db: Path) -> list[str]:
    if not db.exists():
        return []
    with Store(db) as store:
        return [r.status for r in store.runs()]


@pytest.mark.slow
def test_sigkilled_driver_is_resumed_with_every_run_done_exactly_once(tmp_path):
    spec_path, db = _write_study(tmp_path, n_seeds=6, steps=1500), tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(spec_path), str(db)], env=env)
    try:
        _wait_for(lambda: "done" in _statuses(db), timeout=240)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    left = collections.Counter(_statuses(db))
    assert left["running"] > 0, left  # the killed driver left rows that say running
    configs = parse_study(__import__("yaml").safe_load(spec_path.read_text())).expand()
    with Store(db) as store:
        assert all(r.stale for r in store.runs() if r.status == "running")
        result = run_sweep(configs, store, study="kill", backend="sequential")
        assert len(result.plan.skipped) == left["done"] and len(result.outcomes) == 6 - left["done"]
        per_hash = collections.Counter(r.config_hash for r in store.runs())
        assert sorted(per_hash) == sorted(c.config_hash() for c in configs)
        assert set(per_hash.values()) == {1}
        assert {r.status for r in store.runs()} == {"done"}


@pytest.mark.slow
def test_ctrl_c_marks_unfinished_runs_interrupted(tmp_path):
    spec_path, db = _write_study(tmp_path, n_seeds=6, steps=1500), tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "reglab", "sweep", str(spec_path), "--store", str(db), "--workers", "2"]
    # a shell's background jobs inherit SIGINT ignored (then Python installs no KeyboardInterrupt handler):
    # give the driver the default disposition a terminal's foreground process has
    driver = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(lambda: "done" in _statuses(db), timeout=240)
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=60)[0].decode()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    assert "interrupted" in output
    statuses = collections.Counter(_statuses(db))
    assert statuses["interrupted"] > 0 and statuses["running"] == 0, statuses
    assert set(statuses) <= {"done", "interrupted"}


@pytest.mark.slow
def test_ray_backend_stores_the_same_metrics_as_the_local_backend(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    configs = study(variants={"ok": {}, "nan": {"optimizer": {"lr": 1.0e12}}}, seeds=[0, 1]).expand()

    def metrics(backend: str) -> dict:
        with Store(tmp_path / f"{backend}.db") as store:
            result = run_sweep(configs, store, study="s", backend=backend, workers=2)
            assert result.counts() == {"done": 2, "diverged": 2}
            return {
                (r.config_hash, step, split, name): value
                for r in store.runs()
                for step, split, name, value in store.metrics(r.id)
            }

    local, ray = metrics("local"), metrics("ray")
    assert local.keys() == ray.keys() and len(local) > 0
    assert all(local[k] == ray[k] or (local[k] != local[k] and ray[k] != ray[k]) for k in local)  # NaN == NaN


@pytest.mark.slow
def test_a_local_sweep_stores_bitwise_the_metrics_of_reglab_run(tmp_path):
    """``reglab run`` (a process with torch's default thread count) and a 2-worker sweep: identical numbers.

    The MLP on ``digits`` gives other numbers with 1 and 2 threads (measured), so equal numbers mean both paths
    used the runs' ``train.threads``.
    """
    import yaml

    base = {
        "task": {"name": "digits"},
        "model": {"name": "mlp", "width": 128},
        "optimizer": {"name": "adam", "lr": 1.0e-3},
        "train": {"steps": 20, "batch_size": 128, "eval_every": 10},
    }
    spec = {"study": "det", "base": base, "seeds": [0, 1]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "reglab", "run", "study.yaml", "--store", "run.db"]
    out = subprocess.run(cmd, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    with Store(tmp_path / "sweep.db") as store:
        assert run_sweep(parse_study(spec).expand(), store, study="det", backend="local", workers=2).counts() == {
            "done": 2
        }
    assert _all_metrics(tmp_path / "run.db") == _all_metrics(tmp_path / "sweep.db")


def _all_metrics(path: Path) -> dict:
    with Store(path) as store:
        return {(r.config_hash, *row[:3]): row[3] for r in store.runs() for row in store.metrics(r.id)}


def test_a_sequential_sweep_builds_each_config_to_run_once(tmp_path, monkeypatch):
    from reglab.experiments import runner

    built = []
    monkeypatch.setattr(runner, "build", lambda cfg, real=runner.build: built.append(cfg) or real(cfg))
    configs = study(seeds=[0, 1]).expand()
    with Store(tmp_path / "runs.db") as store:
        assert run_sweep(configs, store, study="s", backend="sequential").counts() == {"done": 2}
        assert built == configs
        run_sweep(configs, store, study="s", backend="sequential")  # all done: nothing is built
        assert built == configs
        assert {r.group_hash for r in store.runs()} == {configs[0].group_hash()}


def test_a_bad_value_stops_a_sequential_sweep_before_anything_is_written(tmp_path):
    configs = study(variants={"ok": {}, "bad": {"optimizer": {"lr": -1.0}}}).expand()
    with Store(tmp_path / "runs.db") as store:
        with pytest.raises(ConfigError, match=r"run 'bad' \(seed 0\): optimizer: Invalid learning rate"):
            run_sweep(configs, store, study="s", backend="sequential")
        assert store.runs() == []


def test_same_config_in_another_study_runs_for_that_study(tmp_path):
    configs = study(seeds=[0]).expand()
    with Store(tmp_path / "runs.db") as store:
        run_sweep(configs, store, study="A", backend="sequential")
        b = run_sweep(configs, store, study="B", backend="sequential")
        assert len(b.outcomes) == 1 and [r.study for r in store.runs()] == ["A", "B"]


def test_config_values_json_cannot_hold_are_rejected_by_name():
    import numpy as np

    with pytest.raises(ConfigError, match=r"optimizer\.lr = np\.float32"):
        study(grid={"optimizer.lr": [np.float32(0.1)]}).expand()


@pytest.mark.slow
def test_a_method_unknown_in_the_workers_fails_that_run_without_hanging(tmp_path):
    """A penalty registered only in the driver (e.g. in a notebook) is unknown to spawned workers."""
    from reglab.core import Penalty
    from reglab.penalties import REGISTRY

    class DriverOnly(Penalty):
        """Registered in this process only."""

        def compute(self, ctx):
            return sum(p.pow(2).sum() for p in ctx.model.parameters())

    REGISTRY.add("driver_only_penalty", DriverOnly, "test-only")
    try:
        configs = study(variants={"ok": {}, "custom": {"penalties": [{"name": "driver_only_penalty", "weight": 0.1}]}})
        with Store(tmp_path / "runs.db") as store:
            result = run_sweep(configs.expand(), store, study="s", backend="local", workers=2)
            assert result.counts() == {"done": 1, "failed": 1}
            failed = next(o for o in result.outcomes if o.status == "failed")
            assert "driver_only_penalty" in failed.error
            assert {r.status for r in store.runs()} == {"done", "failed"}
    finally:
        REGISTRY._entries.pop("driver_only_penalty", None)
