"""Gradient clipping and accumulation in ``train_step`` and the Trainer, against hand-written steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reglab import losses, optim, tasks
from reglab.core import ConfigError
from reglab.experiments.config import parse_config
from reglab.experiments.runner import execute
from reglab.losses import CrossEntropy
from reglab.penalties import L2
from reglab.train import Trainer, train_step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _batch(n: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g), torch.arange(n)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "sam": lambda p: optim.get("sam", p, rho=0.05, base={"name": "sgd", "lr": 0.1}),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("parts", [2, 3])
def test_accumulated_micro_batches_equal_one_large_batch(name, parts):
    a, b = _model(), _model()
    opt_a, opt_b = OPTIMIZERS[name](a.parameters()), OPTIMIZERS[name](b.parameters())
    loss, penalty = CrossEntropy(), L2(weight=1e-2)
    for step in range(3):
        ra = train_step(a, _batch(), loss, opt_a, penalty, step=step)
        rb = train_step(b, _batch(), loss, opt_b, penalty, step=step, accumulate=parts)
    # float64: the only difference is the order of the sums (a few ulps of each gradient)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
    assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-12)
    assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-12)
    assert rb["penalty/l2"] == pytest.approx(ra["penalty/l2"], rel=1e-12)


def test_accumulation_keeps_per_example_state_of_a_stateful_loss():
    """ELR's per-example targets are updated by every micro-batch for its own examples, as by the whole batch."""
    a, b = _model(), _model()
    la, lb = losses.get("elr", num_examples=24, num_classes=3), losses.get("elr", num_examples=24, num_classes=3)
    la.double(), lb.double()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    for step in range(2):
        train_step(a, _batch(), la, opt_a, step=step)
        train_step(b, _batch(), lb, opt_b, step=step, accumulate=4)
    for (ka, va), (kb, vb) in zip(la.state_dict().items(), lb.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)


def test_accumulate_must_divide_the_batch():
    model = _model()
    with pytest.raises(ConfigError, match="train.accumulate=5 must divide the batch of 24"):
        train_step(model, _batch(), CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), accumulate=5)


def test_trainer_with_accumulation_reads_the_batches_of_the_larger_batch():
    task = tasks.get("two_moons", n=120, n_test=40)
    results = []
    for batch_size, accumulate in ((30, 1), (10, 3)):
        model = task.make_model(width=8)
        torch.manual_seed(0)
        model = task.make_model(width=8)
        trainer = Trainer(
            task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=9,
            batch_size=batch_size, accumulate=accumulate, eval_every=9,
        )
        trainer.fit()
        results.append(copy.deepcopy(model.state_dict()))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def _clipped_sgd_step(model: nn.Module, batch, max_norm: float) -> float:
    x, y, _ = batch
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    return norm


@pytest.mark.parametrize("max_norm", [0.05, 100.0])
def test_clip_grad_norm_is_torchs_clip_before_the_step(max_norm):
    a, b = _model(), _model()
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    for step in range(3):
        record = train_step(a, _batch(), CrossEntropy(), opt, step=step, clip_grad_norm=max_norm)
        norm = _clipped_sgd_step(b, _batch(), max_norm)
        assert record["grad_norm"] == pytest.approx(norm, rel=1e-12)  # the norm before clipping
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
    assert max_norm > 1 or record["grad_norm"] > max_norm  # the small limit did clip


def test_sam_clips_the_gradient_of_the_update():
    """SAM + clip: ascend along the (unclipped) gradient's direction, clip the gradient at the perturbed point,
    step the base optimizer with it."""
    a, b = _model(), _model()
    rho, lr, max_norm = 0.05, 0.1, 0.02
    opt = optim.get("sam", a.parameters(), rho=rho, base={"name": "sgd", "lr": lr})
    x, y, _ = _batch()
    for step in range(3):
        train_step(a, _batch(), CrossEntropy(), opt, step=step, clip_grad_norm=max_norm)
        params = list(b.parameters())
        g = torch.autograd.grad(nn.functional.cross_entropy(b(x), y), params)
        norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))
        e = [rho * t / (norm + 1e-12) for t in g]
        with torch.no_grad():
            for p, d in zip(params, e):
                p += d
        g2 = torch.autograd.grad(nn.functional.cross_entropy(b(x), y), params)
        n2 = torch.linalg.vector_norm(torch.stack([t.norm() for t in g2]))
        coef = min(1.0, max_norm / (n2.item() + 1e-6))
        assert coef < 1
        with torch.no_grad():
            for p, d, t in zip(params, e, g2):
                p -= d
                p -= lr * coef * t
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-12)


def test_train_section_takes_clip_and_accumulate(tmp_path):
    data = {
        "task": {"name": "two_moons", "n": 64, "n_test": 16},
        "model": {"name": "mlp", "width": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "train": {"steps": 3, "batch_size": 8, "eval_every": 3, "clip_grad_norm": 1, "accumulate": 2},
    }
    cfg = parse_config(data)
    assert cfg.train.clip_grad_norm == 1.0 and cfg.train.accumulate == 2
    assert execute(cfg).status == "done"
    plain = parse_config({**data, "train": {"steps": 3, "batch_size": 8, "eval_every": 3}})
    assert plain.config_hash() != cfg.config_hash()
    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        parse_config({**data, "train": {"clip_grad_norm": 0}})
    with pytest.raises(ConfigError, match="train.accumulate"):
        parse_config({**data, "train": {"accumulate": 0}})
