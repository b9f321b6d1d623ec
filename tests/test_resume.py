"""Checkpoints and resume: a run killed with SIGKILL and resumed is bitwise the uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from reglab.core import ConfigError
from reglab.experiments.config import parse_config
from reglab.experiments.runner import checkpoint_dir, execute
from reglab.experiments.store import Store
from reglab.experiments.sweep import plan_sweep, run_sweep
from reglab.train.checkpoint import CheckpointError, CheckpointMismatchError, Checkpoints
from reglab.train.trainer import epoch_batches

STEPS = 14

OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "adamw": {"name": "adamw", "lr": 1.0e-2, "weight_decay": 0.01},
    "sam": {"name": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    "muon": {"name": "muon", "lr": 0.02},
}


def _config(optimizer: dict, **train) -> dict:
    """A run with every kind of state: per-example loss state (ELR), a schedule, dropout (the global
    generator), momentum, a probe, and a batch order over several epochs."""
    return {
        "name": f"resume-{optimizer['name']}",
        "task": {"name": "two_moons", "n": 96, "n_test": 32, "noise": 0.2},
        "model": {"name": "mlp", "width": 16, "depth": 2, "dropout": 0.1},
        "loss": {"name": "elr", "beta": 0.7, "lam": 3.0},
        "optimizer": optimizer,
        "schedule": {"name": "warmup_cosine", "warmup_steps": 3},
        "probes": [{"name": "weight_norm", "every": 4}],
        "train": {"steps": STEPS, "batch_size": 20, "eval_every": 5, "log_every": 1, "seed": 3,
                  "checkpoint_every": 3, **train},
    }


_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from reglab.core import Callback
    from reglab.experiments.config import parse_config
    from reglab.experiments.runner import execute
    from reglab.experiments.store import Store

    class KillAt(Callback):
        def __init__(self, step):
            self.at = step
        def on_step_end(self, trainer, step, info):
            if step == self.at:
                os.kill(os.getpid(), signal.SIGKILL)

    config, store, step = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    execute(parse_config(config), Store(store), callbacks=[KillAt(step)])
    """
)


def _kill_at(config: dict, store: Path, step: int) -> None:
    import json

    done = subprocess.run(
        [sys.executable, "-c", _KILLER, json.dumps(config), str(store), str(step)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def _final_weights(store: Store, run_id: int) -> dict[str, torch.Tensor]:
    files = Checkpoints(checkpoint_dir(store, run_id)).files()
    assert files[-1][0] == STEPS
    return torch.load(files[-1][1], weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_run_killed_with_sigkill_and_resumed_is_bitwise_the_uninterrupted_run(tmp_path, optimizer):
    cfg = parse_config(_config(OPTIMIZERS[optimizer]))
    kill_step = random.Random(optimizer).randint(2, STEPS - 1)  # a random step, the same on every machine

    with Store(tmp_path / "whole.db") as whole:
        reference = execute(cfg, whole)
        assert reference.status == "done"
        expected_rows = whole.metrics(reference.run_id)
        expected_weights = _final_weights(whole, reference.run_id)

    killed_db = tmp_path / "killed.db"
    _kill_at(_config(OPTIMIZERS[optimizer]), killed_db, kill_step)
    with Store(killed_db) as store:
        (record,) = store.runs()
        assert record.status == "running" and record.stale
        outcome = execute(cfg, store, resume=True)
        assert outcome.run_id == record.id and outcome.status == "done"
        assert len(store.runs()) == 1
        rows = store.metrics(record.id)
        weights = _final_weights(store, record.id)

    assert rows == expected_rows  # every row, exactly
    assert weights.keys() == expected_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], expected_weights[key]), key


def test_epoch_batches_started_late_continue_the_same_order():
    whole = epoch_batches(10, 3, torch.Generator().manual_seed(5))
    order = [next(whole) for _ in range(12)]  # 4 epochs of 3 batches
    for start in (0, 2, 3, 7):
        late = epoch_batches(10, 3, torch.Generator().manual_seed(5), start)
        assert all(torch.equal(next(late), b) for b in order[start:])


def test_resumed_in_process_from_each_checkpoint_matches(tmp_path):
    """Resume from a middle checkpoint (the newest deleted) in this process: same rows and weights."""
    cfg = parse_config(_config(OPTIMIZERS["adamw"], steps=9, checkpoint_every=2))
    with Store(tmp_path / "a.db") as store:
        first = execute(cfg, store)
        expected = store.metrics(first.run_id)
        folder = Checkpoints(checkpoint_dir(store, first.run_id))
        assert [s for s, _ in folder.files()] == [8, 9]  # the last two are kept
        folder.files()[-1][1].unlink()  # back to step 8
        store.finish_run(first.run_id, "interrupted")
        second = execute(cfg, store, resume=True)
        assert second.run_id == first.run_id
        got = store.metrics(first.run_id)
    assert got == expected


def test_a_corrupted_last_checkpoint_falls_back_to_the_one_before_it_saying_so(tmp_path):
    folder = Checkpoints(tmp_path / "ck", config_hash="abc")
    folder.save({"step": 3, "x": torch.ones(2)}, 3)
    path = folder.save({"step": 6, "x": torch.ones(2)}, 6)
    path.write_bytes(path.read_bytes()[:40])  # truncated, as by a full disk
    with pytest.warns(UserWarning, match="step-000000006.pt.*cannot be read.*resuming from the checkpoint before"):
        state = folder.latest()
    assert state["step"] == 3
    path.write_bytes(b"not a checkpoint at all")
    (tmp_path / "ck" / "step-000000003.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="no checkpoint .* can be read"):
        folder.latest()


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    Checkpoints(tmp_path, config_hash="aaaa").save({"step": 1}, 1)
    with pytest.raises(CheckpointMismatchError, match="belongs to config aaaa, not to this run's config bbbb"):
        Checkpoints(tmp_path, config_hash="bbbb").latest()


def test_resume_with_a_checkpoint_of_another_config_fails_the_run_naming_the_file(tmp_path):
    cfg = parse_config(_config(OPTIMIZERS["sgd"], steps=4))
    with Store(tmp_path / "s.db") as store:
        run = execute(cfg, store)
        store.finish_run(run.run_id, "interrupted")
        Checkpoints(checkpoint_dir(store, run.run_id), config_hash="0" * 16).save({"step": 2}, 99)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = execute(cfg, store, resume=True)
    assert outcome.status == "failed" and "step-000000099.pt" in outcome.error and "belongs to config" in outcome.error


def test_an_unwritable_checkpoint_folder_is_an_error_before_anything_trains(tmp_path):
    (tmp_path / "runs.checkpoints").write_text("a file where the folder should be")
    cfg = parse_config(_config(OPTIMIZERS["sgd"], steps=4))
    with Store(tmp_path / "runs.db") as store:
        with pytest.raises(ConfigError, match="train.checkpoint_every: cannot write checkpoints to .*runs.checkpoints"):
            run_sweep([cfg], store, backend="sequential")
        assert store.runs() == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_is_an_error(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write checkpoints"):
            Checkpoints(tmp_path / "ro" / "7")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_checkpoint_every_without_a_store_is_an_error():
    outcome = execute(parse_config(_config(OPTIMIZERS["sgd"], steps=4)))
    assert outcome.status == "failed" and "checkpoints are written next to a store" in outcome.error


def test_checkpoint_every_is_not_part_of_the_config_hash():
    a = parse_config(_config(OPTIMIZERS["sgd"]))
    b = parse_config(_config(OPTIMIZERS["sgd"], checkpoint_every=7))
    assert a.config_hash() == b.config_hash()


@pytest.mark.slow
def test_a_sweep_continues_a_killed_run_from_its_checkpoint(tmp_path):
    """A stale ``running`` row with a checkpoint is continued in its own row by the next sweep (local workers)."""
    config = _config(OPTIMIZERS["sgd"])
    db = tmp_path / "sweep.db"
    _kill_at(config, db, 8)
    cfg = parse_config(config)
    with Store(db) as store:
        (killed,) = store.runs()
        plan = plan_sweep([cfg], store)
        assert plan.resumed == {cfg.config_hash(): killed.id} and plan.leftovers == []
        result = run_sweep([cfg], store, backend="local", workers=1)
        assert [o.status for o in result.outcomes] == ["done"]
        (record,) = store.runs()
        assert record.id == killed.id and record.status == "done"
        rows = store.metrics(killed.id)
    with Store(tmp_path / "ref.db") as ref:
        expected = ref.metrics(execute(cfg, ref).run_id)
    assert rows == expected
