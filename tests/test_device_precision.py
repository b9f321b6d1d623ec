"""Devices and precision: resolution and errors, bf16 autocast on the CPU, the SAM engine under a GradScaler,
and (marked ``gpu``) the same runs on CUDA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from reglab import tasks
from reglab.core import ConfigError
from reglab.experiments import parse_config
from reglab.experiments.runner import build, train
from reglab.losses import CrossEntropy
from reglab.optim import SAM
from reglab.train import Precision, Trainer, resolve_device, train_step

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# --- resolution and errors -------------------------------------------------------------------------


def test_resolve_device_names_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"):
        resolve_device("gpu")


def test_missing_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device is 'cuda:1' but CUDA is not available"):
        resolve_device("cuda:1", field="train.device")
    assert resolve_device("auto") == torch.device("cpu")


def test_missing_cuda_fails_a_config_before_anything_is_built(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = parse_config({"task": {"name": "two_moons"}, "train": {"steps": 2, "device": "cuda"}})
    built = []
    monkeypatch.setattr(tasks, "get", lambda *a, **k: built.append(a))
    with pytest.raises(ConfigError, match="train.device is 'cuda'"):
        build(cfg)
    assert built == []  # no data was built
    outcome, _ = train(cfg)
    assert outcome.status == "failed" and "CUDA is not available" in outcome.error


def test_precision_values_and_fp16_on_cpu():
    with pytest.raises(ConfigError, match="fp16' is not supported on the CPU.*use 'bf16'"):
        Precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Precision("16", "cpu")
    assert Precision("bf16", "cpu").grad_scaler() is None and Precision("32", "cpu").dtype is None
    with pytest.raises(ConfigError, match=r"train.precision: Input should be '32', 'bf16' or 'fp16'"):
        parse_config({"task": {"name": "two_moons"}, "train": {"precision": "half"}})
    with pytest.raises(ConfigError, match=r"train.device"):
        parse_config({"task": {"name": "two_moons"}, "train": {"device": "gpu0"}})
    cfg = parse_config({"task": {"name": "two_moons"}, "train": {"precision": 32, "device": "cpu"}})
    assert cfg.train.precision == "32"
    fp16 = parse_config({"task": {"name": "two_moons"}, "train": {"precision": "fp16", "device": "cpu"}})
    with pytest.raises(ConfigError, match="train.precision 'fp16' is not supported on the CPU"):
        build(fp16)


def test_new_train_keys_at_their_defaults_keep_old_config_hashes():
    plain = parse_config({"task": {"name": "two_moons"}})
    explicit = parse_config({"task": {"name": "two_moons"}, "train": {"device": "auto", "precision": "32"}})
    other = parse_config({"task": {"name": "two_moons"}, "train": {"precision": "bf16"}})
    assert plain.config_hash() == explicit.config_hash() != other.config_hash()
    # the hashes computed by reglab before train.device existed (commit 8872e4f), as stores hold them
    assert plain.config_hash() == "ada812a6ce1c0c36"
    sam = {"task": {"name": "digits"}, "optimizer": {"name": "sam", "base": {"name": "sgd", "lr": 0.1}}}
    assert parse_config({**sam, "train": {"steps": 7}}).config_hash() == "67247987b5fdf9f3"


# --- bf16 on the CPU -------------------------------------------------------------------------------


def _digits_run(precision, steps=30, optimizer=None, model_seed=0):
    task = tasks.get("digits")
    torch.manual_seed(model_seed)
    model = task.make_model("mlp", width=32, depth=1)
    opt = optimizer(model) if optimizer else torch.optim.SGD(model.parameters(), lr=0.2)
    trainer = Trainer(
        task,
        model,
        CrossEntropy(),
        opt,
        steps=steps,
        batch_size=64,
        eval_every=steps,
        device="cpu",
        precision=precision,
    )
    return trainer.fit(), model


def test_bf16_autocast_trains_close_to_float32_on_the_cpu():
    r32, m32 = _digits_run("32")
    r16, m16 = _digits_run("bf16")
    assert r16.status == "done"
    assert all(p.dtype == torch.float32 for p in m16.parameters())  # autocast: the weights stay float32
    # bf16 has an 8-bit mantissa: forward values agree to ~2^-8 relative; after 30 SGD steps the accuracy agrees
    assert abs(r16.final["test/accuracy"] - r32.final["test/accuracy"]) < 0.05
    assert r16.history != r32.history  # it did run in bf16


def test_bf16_forward_runs_under_autocast():
    task = tasks.get("two_moons")
    model = task.make_model("mlp", width=8, depth=1)
    seen = []
    model.readout.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y, idx = tasks.as_tensors(task.train)
    train_step(model, (x[:8], y[:8]), CrossEntropy(), opt, precision=Precision("bf16", "cpu"))
    assert seen == [torch.bfloat16]


def test_sam_runs_in_bf16_from_a_config():
    cfg = parse_config(
        {
            "task": {"name": "digits"},
            "model": {"name": "mlp", "width": 32, "depth": 1},
            "optimizer": {"name": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1}},
            "train": {"steps": 10, "eval_every": 10, "device": "cpu", "precision": "bf16"},
        }
    )
    outcome, _ = train(cfg)
    assert outcome.status == "done", outcome.error


# --- the SAM engine under a GradScaler (the CPU scaler runs the same code as CUDA's) ---------------


def _sam_setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    return model, x, y


def _closure(model, opt, x, y, scaler=None, blow_up_on=None, calls=None):
    def closure():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        if calls is not None:
            calls.append(1)
        target = loss * 1e38 if blow_up_on is not None and len(calls) == blow_up_on else loss
        (scaler.scale(target) if scaler is not None else target).backward()
        return loss

    return closure


def test_sam_under_a_grad_scaler_takes_the_unscaled_step():
    """Scaling by 2^16 and unscaling are exact in float32, so the step equals SAM's without a scaler, bit for bit."""
    model, x, y = _sam_setup()
    twin = copy.deepcopy(model)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    ref = SAM(torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for _ in range(3):
        opt.step(_closure(model, opt, x, y, scaler), grad_scaler=scaler)
        ref.step(_closure(twin, ref, x, y))
        assert not opt.last_step_skipped and opt.last_evaluations == 2
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("blow_up_on", [1, 2])
def test_an_inf_gradient_on_any_pass_skips_the_step_and_backs_off_once(blow_up_on):
    model, x, y = _sam_setup()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05, model=model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, backoff_factor=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    calls: list[int] = []
    opt.step(_closure(model, opt, x, y, scaler, blow_up_on=blow_up_on, calls=calls), grad_scaler=scaler)
    assert opt.last_step_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights restored, no base step
    assert opt.base.state == {}  # momentum untouched
    assert scaler.get_scale() == 2.0**15  # one update for the whole step, backed off once
    assert len(calls) == blow_up_on  # the first pass's inf stops before the perturbed pass


def test_the_scaler_is_updated_once_per_sam_step():
    """With growth_interval=2 the scale doubles after two successful steps; two updates per step would double it
    after one."""
    model, x, y = _sam_setup()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=2, growth_factor=2.0)
    opt.step(_closure(model, opt, x, y, scaler), grad_scaler=scaler)
    assert scaler.get_scale() == 4.0
    opt.step(_closure(model, opt, x, y, scaler), grad_scaler=scaler)
    assert scaler.get_scale() == 8.0


def test_train_step_drives_sam_and_plain_optimizers_under_a_scaler():
    model, x, y = _sam_setup()
    twin = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    ref = SAM(torch.optim.SGD(twin.parameters(), lr=0.1), rho=0.05)
    rec = train_step(model, (x, y), nn.functional.cross_entropy, opt, scaler=scaler)
    ref_rec = train_step(twin, (x, y), nn.functional.cross_entropy, ref)
    assert rec["grad_norm"] == pytest.approx(ref_rec["grad_norm"], rel=1e-6)  # reported unscaled
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    plain_ref = torch.optim.SGD(twin.parameters(), lr=0.1)
    train_step(model, (x, y), nn.functional.cross_entropy, plain, scaler=scaler)
    train_step(twin, (x, y), nn.functional.cross_entropy, plain_ref)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_a_closure_optimizer_without_scaler_support_is_refused():
    model, x, y = _sam_setup()
    lbfgs = torch.optim.LBFGS(model.parameters())
    lbfgs.requires_closure = True
    with pytest.raises(ConfigError, match="use precision bf16"):
        train_step(model, (x, y), nn.functional.cross_entropy, lbfgs, scaler=torch.amp.GradScaler("cpu"))


# --- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_training_on_cuda(precision, optimizer):
    spec = {"name": "sgd", "lr": 0.1}
    if optimizer == "sam":
        spec = {"name": "sam", "rho": 0.05, "base": spec}
    cfg = parse_config(
        {
            "task": {"name": "digits"},
            "model": {"name": "cnn2d"},
            "loss": {"name": "elr", "lam": 1.0},  # per-example state must live on the GPU too
            "penalties": [{"name": "l2_to_init", "weight": 1.0e-3}],
            "optimizer": spec,
            "augment": [{"name": "cutout", "size": 2}],
            "probes": [{"name": "sharpness", "every": 20}, {"name": "calibration", "every": 20}],
            "train": {"steps": 40, "eval_every": 20, "device": "cuda", "precision": precision},
        }
    )
    outcome, history = train(cfg)
    assert outcome.status == "done", outcome.error
    assert outcome.final["test/accuracy"] > 0.5
    assert any(name == "sharpness" for _, split, name, _ in history if split == "probe")


@pytest.mark.gpu
@cuda
def test_fp16_sam_matches_float32_sam_on_cuda():
    model, x, y = _sam_setup()
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    twin = copy.deepcopy(model)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    ref = SAM(torch.optim.SGD(twin.parameters(), lr=0.1), rho=0.05)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(5):
        opt.step(_closure(model, opt, x, y, scaler), grad_scaler=scaler)
        ref.step(_closure(twin, ref, x, y))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@cuda
def test_instruments_run_where_the_model_is():
    from reglab.diagnostics import hessian_eigs, hessian_trace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    cpu = hessian_eigs(model, nn.functional.cross_entropy, (x, y), k=2, seed=0)
    gpu = hessian_eigs(model.cuda(), nn.functional.cross_entropy, (x.cuda(), y.cuda()), k=2, seed=0)
    torch.testing.assert_close(torch.as_tensor(gpu.values).cpu(), torch.as_tensor(cpu.values), rtol=1e-8, atol=1e-10)
    tr = hessian_trace(model, nn.functional.cross_entropy, (x.cuda(), y.cuda()), seed=0)
    assert tr.estimate == tr.estimate  # finite, computed on the GPU


@pytest.mark.gpu
@cuda
def test_muon_keeps_bf16_newton_schulz_on_cuda():
    from reglab.optim import Muon

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Linear(32, 4)).cuda()
    opt = Muon(model, lr=0.02)
    x, y = torch.randn(8, 16, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())
    from reglab.optim.orthogonal.base import ns_compute_dtype as _dtype

    assert _dtype("auto", torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_a_gradient_overflow_under_the_scaler_is_a_skipped_step_not_divergence(optimizer):
    """fp16 runs overflow now and then by design (the scale grows until they do); the scaler skips those steps."""
    task = tasks.get("two_moons")
    torch.manual_seed(0)
    model = task.make_model("mlp", width=8, depth=1)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SAM(base, rho=0.05) if optimizer == "sam" else base

    def loss(outputs, targets):  # about 7: times the scale below it overflows float32, so every gradient is inf
        return 10 * nn.functional.cross_entropy(outputs, targets)

    trainer = Trainer(task, model, loss, opt, steps=3, eval_every=3, log_every=1, device="cpu")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=10**6)
    before = [p.detach().clone() for p in model.parameters()]
    result = trainer.fit()
    assert result.status == "done" and result.steps == 3
    assert trainer.scaler.get_scale() == 2.0**124  # backed off once per step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every step skipped
    assert not math.isfinite(next(v for _, s, n, v in result.history if n == "grad_norm"))  # logged as it was


def test_a_one_element_loss_is_recorded():
    model, x, y = _sam_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    record = train_step(model, (x, y), lambda o, t: nn.functional.cross_entropy(o, t).reshape(1), opt)
    assert isinstance(record["loss"], float) and record["loss"] == record["objective"]
