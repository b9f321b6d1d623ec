"""SPECTRA: hand-computed steps, the clip bound, the weight-norm bound, delegation, checkpoints, registry."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import reglab.optim
from reglab.core import ConfigError
from reglab.linalg.spectral_clip import soft_spectral_clip
from reglab.optim.spectra import SPECTRA
from reglab.train import train_step


def _hard_clip(M, c):
    """Independent oracle: U diag(min(s, c)) V^T from numpy's SVD."""
    U, S, Vh = (torch.from_numpy(a) for a in np.linalg.svd(M.numpy(), full_matrices=False))
    return U @ torch.diag(S.clamp(max=c)) @ Vh


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _data(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)


def _loss(model, x, y):
    return 0.5 * (model(x) - y).pow(2).sum()


def _backward(model, x, y):
    model.zero_grad()
    _loss(model, x, y).backward()


def _spectral_norm(M):
    return torch.linalg.matrix_norm(M.reshape(M.shape[0], -1), ord=2)


# --- the step ---------------------------------------------------------------------------------------------


def test_hard_step_is_the_hand_computed_step_with_sgd():
    model, (x, y) = _model(), _data()
    lr, wd, c = 0.1, 0.3, 0.5
    opt = SPECTRA(torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd), c)
    _backward(model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(_spectral_norm(g) > c for g in grads if g.ndim == 2)  # the clip is active on both layers
    opt.step()
    for p, w, g in zip(model.parameters(), before, grads):
        if p.ndim == 2:  # (1 - lr wd) W - lr clip_c(g): SGD's direction with the decay taken out is g itself
            expected = (1 - lr * wd) * w - lr * _hard_clip(g, c)
        else:  # vectors keep the base's step
            expected = w - lr * (g + wd * w)
        torch.testing.assert_close(p.detach(), expected, atol=1e-14, rtol=0)


def test_soft_step_is_the_soft_formula_with_adamw_direction():
    model, (x, y) = _model(), _data()
    lr, wd, c = 0.01, 0.1, 0.05
    twin = copy.deepcopy(model)
    opt = SPECTRA(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd), c, mode="soft", ns_steps=30)
    base_only = torch.optim.AdamW(twin.parameters(), lr=lr, weight_decay=wd)
    for m in (model, twin):
        _backward(m, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    base_only.step()
    for p, q, w in zip(model.parameters(), twin.parameters(), before):
        if p.ndim == 2:
            U = (w - q.detach()) / lr - wd * w  # AdamW: w_new = w - lr wd w - lr u, so this is u
            expected = (1 - lr * wd) * w - lr * soft_spectral_clip(U, c, method="svd")
            # with sigma_max(U) / c <= 100, sqrt(alpha) <= 100 sqrt(4) and 30 coupled steps exceed the
            # log(200) / log(1.5) + 5 ~ 18 needed; 1e-12 covers the round-off of recovering U (eps ||w|| / lr)
            assert _spectral_norm(U) / c <= 100
            torch.testing.assert_close(p.detach(), expected, atol=1e-12, rtol=0)
        else:
            torch.testing.assert_close(p.detach(), q.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_applied_update_has_spectral_norm_at_most_c(mode):
    model, (x, y) = _model(), _data()
    lr, wd, c = 0.05, 0.2, 0.3
    opt = SPECTRA(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd), c, mode=mode)
    for _ in range(5):
        _backward(model, x, y)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        for p, w in zip(model.parameters(), before):
            if p.ndim == 2:
                applied = ((1 - lr * wd) * w - p.detach()) / lr
                # hard: singular values min(s, c) up to SVD round-off; soft: s / sqrt(1 + s^2/c^2) < c; the
                # recovery ((1 - lr wd) w - p) / lr adds ~eps ||w|| / lr ~ 1e-14
                assert _spectral_norm(applied) <= c + 1e-12


def test_large_c_hard_mode_is_the_base_optimizer_bit_for_bit():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = SPECTRA(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01), c=1e6)
    ref = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(4):
        for m, o in ((model, opt), (twin, ref)):
            _backward(m, x, y)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_large_c_soft_mode_is_close_to_the_base_optimizer():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    lr, c = 0.1, 1e3
    opt = SPECTRA(torch.optim.SGD(model.parameters(), lr=lr), c, mode="soft")
    ref = torch.optim.SGD(twin.parameters(), lr=lr)
    for m in (model, twin):
        _backward(m, x, y)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    ref.step()
    for p, q, g in zip(model.parameters(), twin.parameters(), grads):
        if p.ndim == 2:
            # lr ||g - H_c(g)||_F <= lr sqrt(rank) s_max^3 / (2 c^2), plus round-off of the recovered direction
            s = _spectral_norm(g)
            bound = lr * min(g.shape) ** 0.5 * s**3 / (2 * c**2)
            assert 0 < torch.linalg.matrix_norm(p - q) <= bound + 1e-14
        else:
            assert torch.equal(p, q)


def test_conv_kernels_are_clipped_as_flattened_matrices():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    lr, c = 0.5, 0.2
    opt = SPECTRA(torch.optim.SGD(conv.parameters(), lr=lr), c)
    conv(x).pow(2).sum().backward()
    w, g = conv.weight.detach().clone(), conv.weight.grad.clone()
    assert _spectral_norm(g) > c
    opt.step()
    expected = w - lr * _hard_clip(g.reshape(3, -1), c).view_as(w)
    torch.testing.assert_close(conv.weight.detach(), expected, atol=1e-14, rtol=0)


def test_pre_clip_clips_the_gradient_before_the_base_step():
    model, (x, y) = _model(), _data()
    lr, pre = 0.1, 0.4
    opt = SPECTRA(torch.optim.SGD(model.parameters(), lr=lr), c=1e6, pre_clip=pre)
    _backward(model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, w, g in zip(model.parameters(), before, grads):
        expected = w - lr * (_hard_clip(g, pre) if g.ndim == 2 else g)
        torch.testing.assert_close(p.detach(), expected, atol=1e-14, rtol=0)
        if g.ndim == 2:
            torch.testing.assert_close(p.grad, _hard_clip(g, pre), atol=1e-14, rtol=0)  # the base saw this


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_weight_spectral_norm_obeys_the_papers_bound(mode):
    """||X_k|| <= (1 - lr lam)^k ||X_0|| + (1 - (1 - lr lam)^k) c / lam <= max(||X_0||, c / lam)."""
    lr, lam, c = 0.1, 0.5, 1.0
    g = torch.Generator().manual_seed(3)
    X = nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
    with torch.no_grad():
        X.mul_(3.0 / torch.linalg.matrix_norm(X, ord=2))  # start outside the ball of radius c / lam = 2
    x0 = 3.0
    opt = SPECTRA(torch.optim.SGD([X], lr=lr, weight_decay=lam), c, mode=mode)
    for k in range(1, 41):
        X.grad = 50 * torch.randn(6, 4, generator=g, dtype=torch.float64)  # updates far above c
        opt.step()
        r = (1 - lr * lam) ** k
        norm = float(torch.linalg.matrix_norm(X.detach(), ord=2))
        assert norm <= r * x0 + (1 - r) * c / lam + 1e-12
        assert norm <= max(x0, c / lam) + 1e-12


# --- wrapper contract -------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_identically():
    model, (x, y) = _model(), _data()
    opt = SPECTRA(torch.optim.Adam(model.parameters(), lr=0.01), c=0.05, mode="soft")
    for _ in range(3):
        _backward(model, x, y)
        opt.step()
    twin = copy.deepcopy(model)
    fresh = SPECTRA(torch.optim.Adam(twin.parameters(), lr=0.5), c=0.05, mode="soft")
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint would (torch's load keeps references otherwise)
    assert set(state) == {"state", "param_groups", "wrapper"}
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == 0.01
    for _ in range(3):
        for m, o in ((model, opt), (twin, fresh)):
            _backward(m, x, y)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    # a plain base state dict loads too
    fresh.load_state_dict(opt.base.state_dict())


def test_delegates_groups_and_state_to_the_base_and_works_with_lr_schedulers():
    model, (x, y) = _model(), _data()
    opt = SPECTRA(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), c=1.0)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups and opt.state is opt.base.state
    assert opt.defaults is opt.base.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _backward(model, x, y)
    opt.step()
    sched.step()
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05)
    assert len(opt.base.state) == 4  # the base's momentum buffers
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    extra = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt.add_param_group({"params": [extra]})
    assert opt.base.param_groups[-1]["params"] == [extra]
    assert "SPECTRA(c=1" in repr(opt) and "SGD" in repr(opt)


def test_zero_lr_group_and_parameters_without_gradient_are_left_alone():
    model, (x, y) = _model(), _data()
    first, second = model[0], model[2]
    opt = SPECTRA(
        torch.optim.SGD([{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters()}], lr=0.1), c=0.01
    )
    _backward(model, x, y)
    second.weight.grad = None
    w1, w2 = first.weight.detach().clone(), second.weight.detach().clone()
    opt.step()
    assert torch.equal(first.weight, w1) and torch.equal(second.weight, w2)


class _TwoEvaluations(torch.optim.Optimizer):
    """A SAM-like test double: evaluates the closure twice, then takes an SGD step with the last gradients."""

    requires_closure = True

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            closure()
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(p.grad, alpha=group["lr"])
        return loss


def test_closure_based_base_is_driven_by_train_step_and_clipped():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    lr, c = 0.1, 0.2
    opt = SPECTRA(_TwoEvaluations(model.parameters(), lr), c)
    assert reglab.optim.requires_closure(opt)
    train_step(model, (x, y), nn.MSELoss(reduction="sum"), opt)
    _backward(twin, x, y)  # the same gradients (0.5 * sum vs MSE sum: a factor 2)
    for p, q in zip(model.parameters(), twin.parameters()):
        g = 2 * q.grad
        expected = q.detach() - lr * (_hard_clip(g, c) if g.ndim == 2 else g)
        torch.testing.assert_close(p.detach(), expected, atol=1e-13, rtol=0)
    with pytest.raises(ConfigError, match="SPECTRA with pre_clip cannot wrap _TwoEvaluations.*requires_closure"):
        SPECTRA(_TwoEvaluations(model.parameters(), lr), c, pre_clip=1.0)


def test_registry_factory_and_train_step():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = reglab.optim.get("spectra", model.parameters(), c=0.3, base={"name": "sgd", "lr": 0.1})
    assert isinstance(opt, SPECTRA) and isinstance(opt.base, torch.optim.SGD)
    assert opt.hyperparameters["c"] == 0.3 and opt.hyperparameters["mode"] == "hard"
    assert opt.param_groups[0]["lr"] == 0.1
    record = train_step(model, (x, y), nn.MSELoss(reduction="sum"), opt)
    assert set(record) == {"loss", "objective", "grad_norm"}
    ref = SPECTRA(torch.optim.SGD(twin.parameters(), lr=0.1), 0.3)
    twin.zero_grad()
    nn.MSELoss(reduction="sum")(twin(x), y).backward()
    ref.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    default = reglab.optim.get("spectra", _model().parameters())
    assert isinstance(default.base, torch.optim.AdamW)
    assert "spectra" in reglab.optim.REGISTRY.describe()


def test_validation_errors_name_the_argument():
    params = list(_model().parameters())
    base = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ConfigError, match="c must be > 0, got -1"):
        SPECTRA(base, -1)
    with pytest.raises(ConfigError, match="mode must be one of 'hard', 'soft', got 'medium'"):
        SPECTRA(base, 1.0, mode="medium")
    with pytest.raises(ConfigError, match="ns_steps must be an int >= 1, got 0"):
        SPECTRA(base, 1.0, ns_steps=0)
    with pytest.raises(ConfigError, match="pre_clip must be > 0, got 0"):
        SPECTRA(base, 1.0, pre_clip=0)
    with pytest.raises(ConfigError, match="params must be an iterable of parameters .* got Parameter"):
        SPECTRA(params[0], 1.0)
    with pytest.raises(ConfigError, match="optimizer 'spectra' has no argument 'clip'"):
        reglab.optim.get("spectra", params, clip=1.0)
    with pytest.raises(ConfigError, match="base must be an optimizer name or a mapping"):
        reglab.optim.get("spectra", params, base=3)
