"""``reglab run --nproc 2``: two gloo processes on a CPU equal one process on the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from reglab.core import ConfigError
from reglab.experiments.config import parse_config
from reglab.experiments.launch import check_nproc
from reglab.experiments.runner import checkpoint_dir, execute
from reglab.experiments.store import Store
from reglab.experiments.study import parse_study
from reglab.train.checkpoint import Checkpoints

STUDY = {
    "study": "ddp",
    "base": {
        "task": {"name": "two_moons", "n": 120, "n_test": 40, "noise": 0.2},
        "model": {"name": "mlp", "width": 16, "depth": 2},
        "loss": {"name": "elr", "beta": 0.7, "lam": 3.0},  # per-example state, keyed by global index
        "penalties": [{"name": "l2", "weight": 1.0e-3}],
        "schedule": {"name": "warmup_cosine", "warmup_steps": 2},
        "train": {"steps": 8, "batch_size": 24, "eval_every": 4, "log_every": 1, "checkpoint_every": 4},
    },
    "variants": {
        "sgd": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        "adamw": {"optimizer": {"name": "adamw", "lr": 1.0e-2}},
        "sam": {"optimizer": {"name": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1}},
                "train": {"accumulate": 2, "clip_grad_norm": 0.5}},
    },
}


def _final_state(store: Store, run_id: int) -> dict:
    (_, path), *_ = reversed(Checkpoints(checkpoint_dir(store, run_id)).files())
    return torch.load(path, weights_only=True)


def _run_parallel(tmp_path, study: dict) -> None:
    study_file = tmp_path / "ddp.yaml"
    study_file.write_text(yaml.safe_dump(study))
    done = subprocess.run(
        [sys.executable, "-m", "reglab", "run", str(study_file), "--store", str(tmp_path / "ddp.db"), "--nproc", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _compare_with_one_process(tmp_path, study: dict, tolerance: float) -> None:
    configs = parse_study(study).expand()
    with Store(tmp_path / "ddp.db") as ddp, Store(tmp_path / "one.db") as one:
        assert sorted(r.name for r in ddp.runs()) == sorted(study["variants"])
        assert all(r.status == "done" for r in ddp.runs())
        for cfg in configs:
            (parallel,) = [r for r in ddp.runs() if r.name == cfg.run_name]
            single = execute(cfg, one, study="ddp")
            a, b = _final_state(ddp, parallel.id), _final_state(one, single.run_id)
            assert a["step"] == b["step"] == 8
            for key in a["model"]:
                torch.testing.assert_close(a["model"][key], b["model"][key], rtol=tolerance, atol=tolerance, msg=key)
            for key in a["loss"]:  # ELR's targets: every rank's examples, merged
                torch.testing.assert_close(a["loss"][key], b["loss"][key], rtol=tolerance, atol=tolerance, msg=key)
            rows_a, rows_b = ddp.metrics(parallel.id), one.metrics(single.run_id)
            assert [r[:3] for r in rows_a] == [r[:3] for r in rows_b]
            for ra, rb in zip(rows_a, rows_b):  # the logged loss, penalty and grad norm are the global batch's
                assert ra[3] == pytest.approx(rb[3], rel=10 * tolerance, abs=tolerance), ra


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path):
    _run_parallel(tmp_path, STUDY)
    _compare_with_one_process(tmp_path, STUDY, 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_nccl_processes_equal_one_gpu_on_the_global_batch(tmp_path):
    study = {**STUDY, "base": {**STUDY["base"], "train": {**STUDY["base"]["train"], "device": "cuda"}}}
    _run_parallel(tmp_path, study)
    # float32 on a GPU: the all-reduce and cuBLAS sum in other orders than one device does
    _compare_with_one_process(tmp_path, study, 1e-4)


def test_nproc_must_split_the_batch_before_anything_starts():
    cfg = parse_config({**STUDY["base"], "optimizer": {"name": "sgd", "lr": 0.1}})
    check_nproc([cfg], 4)
    with pytest.raises(ConfigError, match="--nproc 32 is larger than train.batch_size=24"):
        check_nproc([cfg], 32)
    with pytest.raises(ConfigError, match="--nproc 5 does not divide train.batch_size=24"):
        check_nproc([cfg], 5)
    with pytest.raises(ConfigError, match="--nproc must be an int >= 1"):
        check_nproc([cfg], 0)
