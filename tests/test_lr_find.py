"""The lr range test: the ramp, the smoothing and stopping rule, the readings, a quadratic oracle, config and CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from reglab.core import ConfigError
from reglab.experiments import parse_config
from reglab.experiments.lr_find import ExponentialRamp, LRRangeTest, _readings, lr_find
from reglab.tasks.base import IndexedDataset, Task
from reglab.train import Trainer


def test_ramp_is_exponential_and_keeps_the_ratios_between_groups():
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "lr": lr} for lr in (0.02, 0.005)]
    opt = torch.optim.SGD(groups, lr=0.02)
    ramp = ExponentialRamp(opt, 1e-4, 1.0, 5)  # ratio 10 per step
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        ramp.step()
    want = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.0]  # the last value after the ramp
    assert [s[0] for s in seen] == pytest.approx(want, rel=1e-12)
    assert [s[1] for s in seen] == pytest.approx([w / 4 for w in want], rel=1e-12)
    assert [ramp.lr(t) for t in range(5)] == pytest.approx(want[:5], rel=1e-12)


def test_readings_by_hand():
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    smoothed = [4.0, 3.5, 1.5, 1.0, 3.0]
    minimum, steepest = _readings(lrs, smoothed, 1e-3, 10.0)
    assert minimum == pytest.approx(0.1)  # lowest smoothed loss at lr 1, over 10
    # np.gradient over the points up to the minimum, in log lr steps of ln 10: [-0.5, -1.5, -1.25, -0.5] / ln 10
    assert steepest == pytest.approx(1e-2)
    # a curve that only rises: both readings clamp to start
    assert _readings([1e-3, 1e-2], [1.0, 2.0], 1e-3, 1e-2) == (1e-3, 1e-3)


# -- a quadratic with a known optimal lr ------------------------------------------------------------------------------


def _quadratic_task(curvature: float) -> Task:
    """Full-batch MSE of a bias-free linear model on x = s I, y = 0: loss = (s^2 / 4) |w|^2 in 4 dimensions.

    With s^2 = 2 h the Hessian is h I: gradient descent converges for lr < 2 / h, in one step at lr = 1 / h.
    """
    x = math.sqrt(2 * curvature) * torch.eye(4, dtype=torch.float64)
    y = torch.zeros(4, 1, dtype=torch.float64)
    data = IndexedDataset(x, y)
    return Task("quadratic", data, data, None, (4,), "mlp", ("mlp",), 1)


def _mse(out, y):
    return (out - y).pow(2).mean()


def _range_test(task, model, batch_size="full"):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    test = LRRangeTest(1e-4, 1e4, 100)
    trainer = Trainer(
        task, model, _mse, opt, steps=100, batch_size=batch_size, scheduler=test.schedule(opt), callbacks=[test]
    )
    return test.result(trainer.fit())


@pytest.mark.parametrize("curvature", [1.0, 4.0])
def test_quadratic_curve_is_recorded_exactly_and_the_test_stops_past_the_edge_of_stability(curvature):
    """Gradient descent on h |w|^2 / 2: the loss of step i is loss_0 prod_{j < i} (1 - lr_j h)^2."""
    model = nn.Linear(4, 1, bias=False).double()
    w0 = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(w0)
    task = _quadratic_task(curvature)
    result = _range_test(task, model)
    optimal, edge = 1 / curvature, 2 / curvature
    loss, hand = _mse(w0 @ task.train.x.T, 0).item(), []
    for lr in result.lrs:
        hand.append(loss)
        loss *= (1 - lr * curvature) ** 2
    assert result.losses == pytest.approx(hand, rel=1e-9)
    assert result.stop == "diverged" and len(result.lrs) < 100
    assert edge < result.lrs[-1] < 10 * edge
    smoothed = np.asarray(result.smoothed)  # stopped at the first step above 4x the running minimum
    assert smoothed[-1] > 4 * smoothed.min() and (smoothed[:-1] <= 4 * np.minimum.accumulate(smoothed[:-1])).all()
    # without noise the loss all but vanishes at lr = 1 / h and takes decades of lr to come back, so the
    # lowest smoothed loss comes late: its tenth is only below the edge; the steepest descent is near the optimum
    assert result.minimum < edge
    assert optimal / 10 <= result.steepest <= optimal


@pytest.mark.parametrize("curvature", [1.0, 4.0])
def test_noisy_regression_oracle_suggestion_is_within_a_decade_below_the_optimal_lr(curvature):
    """SGD (batches of 16) on a linear regression whose Hessian is h I (E[x x^T] = h / 2 I): optimal lr 1 / h."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g, dtype=torch.float64) * math.sqrt(curvature / 2)
    w_true = torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    y = x @ w_true + 0.5 * torch.randn(512, 1, generator=g, dtype=torch.float64)
    data = IndexedDataset(x, y)
    model = nn.Linear(4, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    result = _range_test(Task("regression", data, data, None, (4,), "mlp", ("mlp",), 1), model, batch_size=16)
    assert result.stop == "diverged" and len(result.lrs) < 100
    assert 0.1 / curvature <= result.suggested <= 1 / curvature


def test_smoothing_is_the_bias_corrected_average():
    task = _quadratic_task(1.0)
    model = nn.Linear(4, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    test = LRRangeTest(1e-3, 1e-2, 20, beta=0.9)
    Trainer(task, model, _mse, opt, steps=20, batch_size="full", scheduler=test.schedule(opt), callbacks=[test]).fit()
    avg, want = 0.0, []
    for i, loss in enumerate(test.losses):
        avg = 0.9 * avg + 0.1 * loss
        want.append(avg / (1 - 0.9 ** (i + 1)))
    assert test.smoothed == pytest.approx(want, rel=1e-12) and test.stop == "end" and len(test.lrs) == 20


# -- from a config ----------------------------------------------------------------------------------------------------

CONFIG = {
    "task": {"name": "two_moons", "n": 128, "n_test": 32},
    "model": {"name": "mlp", "width": 16},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "schedule": {"name": "onecycle"},  # ignored by the range test
    "train": {"steps": 500, "batch_size": 32, "eval_every": 50},
    "probes": [{"name": "weight_norm", "every": 1}],
}


def test_lr_find_on_a_config_records_stops_and_plots(tmp_path):
    result = lr_find(parse_config(CONFIG), start=1e-5, end=1e6, steps=60, out=tmp_path / "plots" / "lr.png")
    assert result.stop in ("diverged", "not finite") and 5 < len(result.lrs) < 60
    ramp = [1e-5 * (1e11) ** (i / 59) for i in range(len(result.lrs))]
    assert result.lrs == pytest.approx(ramp, rel=1e-12)  # the config's onecycle schedule is not used
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)
    assert 1e-5 <= result.suggested <= 1e6 and 1e-5 <= result.steepest <= 1e6
    assert (tmp_path / "plots" / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lr.png", "plots"]  # nothing else written
    again = lr_find(parse_config(CONFIG), start=1e-5, end=1e6, steps=60)  # same seed, same batches: same curve
    assert again.losses == result.losses


def test_cli_prints_the_suggestion_and_writes_the_png(tmp_path):
    from typer.testing import CliRunner

    from reglab import cli

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    out = CliRunner().invoke(
        cli.app,
        ["lr-find", str(path), "--start", "1e-4", "--end", "100", "--steps", "25", "--out", str(tmp_path / "f.png")],
    )
    assert out.exit_code == 0, out.output
    assert "suggested lr (lowest smoothed loss / 10)" in out.output and "steepest descent" in out.output
    assert (tmp_path / "f.png").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start": 0.0}, "start must be > 0"),
        ({"start": 1.0, "end": 0.5}, "end must be > 1"),
        ({"steps": 1}, "steps must be an int >= 2"),
        ({"beta": 1.0}, r"beta must be in \[0, 1\)"),
        ({"diverge": 1.0}, "diverge must be > 1"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LRRangeTest(**kwargs)


def test_the_test_needs_its_ramp_and_a_nonzero_lr():
    task = _quadratic_task(1.0)
    model = nn.Linear(4, 1, bias=False).double()
    test = LRRangeTest(steps=5)
    trainer = Trainer(task, model, _mse, torch.optim.SGD(model.parameters(), lr=0.1), steps=5, callbacks=[test])
    with pytest.raises(ConfigError, match=r"scheduler=test.schedule\(optimizer\)"):
        trainer.fit()
    with pytest.raises(ConfigError, match="every param group has lr 0"):
        test.schedule(torch.optim.SGD(model.parameters(), lr=0.0))
