"""⊥Grad, LAWN and CLASSP: hand-computed float64 steps, edge cases, checkpoints, registry, train_step."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import reglab.optim
from reglab.core import ConfigError
from reglab.optim import CLASSP, LAWN, OptimizerWrapper, OrthoGrad, orthogonal_gradient
from reglab.optim.spectra import SPECTRA
from reglab.train import train_step


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _data(seed=1, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)


def _backward(model, x, y):
    model.zero_grad()
    (0.5 * (model(x) - y).pow(2).sum()).backward()


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()], [p.grad.clone() for p in model.parameters()]


def _same(m1, m2):
    return all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def _round_trip(make, steps_before=3, steps_after=3, seed=0):
    """Run, checkpoint (deep-copied, as torch.save would), load into a fresh instance, continue both."""
    model, (x, y) = _model(seed), _data()
    opt = make(model.parameters())
    for _ in range(steps_before):
        _backward(model, x, y)
        opt.step()
    twin = copy.deepcopy(model)
    fresh = make(twin.parameters())
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(steps_after):
        for m, o in ((model, opt), (twin, fresh)):
            _backward(m, x, y)
            o.step()
    return _same(model, twin)


# --- ⊥Grad ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rescale", [True, False])
def test_ortho_grad_step_is_the_hand_computed_step_and_orthogonal_to_the_weights(rescale):
    model, (x, y) = _model(), _data()
    lr = 0.1
    opt = OrthoGrad(torch.optim.SGD(model.parameters(), lr=lr), rescale=rescale)
    _backward(model, x, y)
    before, grads = _snapshot(model)
    opt.step()
    for p, w, g in zip(model.parameters(), before, grads):
        wf, gf = w.flatten(), g.flatten()
        perp = gf - (wf @ gf) / (wf @ wf) * wf
        if rescale:
            perp = perp * gf.norm() / perp.norm()
        torch.testing.assert_close(p.detach(), w - lr * perp.view_as(w), atol=1e-15, rtol=0)
        step = (p.detach() - w).flatten()
        # <w, step> vanishes up to float64 round-off of the dot products: a few eps * ||w|| ||step||
        assert abs(float(wf @ step)) <= 1e-14 * float(wf.norm() * step.norm())
        assert abs(float(wf @ gf)) > 1e-3 * float(wf.norm() * gf.norm())  # the raw gradient was not orthogonal


def test_orthogonal_gradient_edge_cases():
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    assert torch.equal(orthogonal_gradient(torch.zeros_like(g), g), g)  # theta = 0: g unchanged
    assert torch.equal(orthogonal_gradient(torch.zeros_like(g), g, rescale=False), g)
    w = torch.tensor([[2.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    assert torch.equal(orthogonal_gradient(w, -3 * w), torch.zeros_like(w))  # g parallel to w: nothing left
    assert torch.equal(orthogonal_gradient(w, torch.zeros_like(w)), torch.zeros_like(w))


def test_ortho_grad_zero_weights_and_opted_out_groups_keep_the_raw_gradient():
    model, (x, y) = _model(), _data()
    with torch.no_grad():
        model[0].bias.zero_()
    opt = OrthoGrad(
        torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "ortho_grad": False}], lr=0.1
        )
    )
    _backward(model, x, y)
    _, grads = _snapshot(model)
    opt.step()
    # model[0].bias was 0: its gradient is left as is; model[2] is opted out; the base stepped with them
    for p, g in list(zip(model.parameters(), grads))[1:]:
        assert torch.equal(p.grad, g)
    assert not torch.equal(model[0].weight.grad, grads[0])  # the first weight's gradient was projected


def test_ortho_grad_state_dict_round_trip_with_adamw():
    assert _round_trip(lambda ps: OrthoGrad(torch.optim.AdamW(ps, lr=0.01, weight_decay=0.0)))


def test_ortho_grad_registry_and_train_step():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = reglab.optim.get("ortho_grad", model.parameters(), base={"name": "sgd", "lr": 0.1})
    assert isinstance(opt, OrthoGrad) and opt.param_groups[0]["ortho_grad_rescale"] and opt.param_groups[0]["lr"] == 0.1
    train_step(model, (x, y), nn.MSELoss(reduction="sum"), opt)
    ref = OrthoGrad(torch.optim.SGD(twin.parameters(), lr=0.1))
    twin.zero_grad()
    nn.MSELoss(reduction="sum")(twin(x), y).backward()
    ref.step()
    assert _same(model, twin)
    assert isinstance(reglab.optim.get("ortho_grad", _model().parameters()).base, torch.optim.AdamW)


def test_ortho_grad_validation():
    params = list(_model().parameters())
    with pytest.raises(ConfigError, match="params must be an iterable of parameters .* got str"):
        OrthoGrad("sgd")
    with pytest.raises(ConfigError, match="rescale must be a bool \\(true or false\\), got 1"):
        OrthoGrad(torch.optim.SGD(params, lr=0.1), rescale=1)
    with pytest.raises(ConfigError, match="OrthoGrad .* cannot wrap LBFGS.*requires_closure"):
        OrthoGrad(torch.optim.LBFGS(params))
    with pytest.raises(ConfigError, match="optimizer 'ortho_grad' has no argument 'lr'"):
        reglab.optim.get("ortho_grad", params, lr=0.1)


# --- LAWN -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("project_gradient", [False, True])
def test_lawn_free_warmup_then_projected_steps_by_hand(project_gradient):
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    lr = 0.2
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=lr), warmup_steps=2, project_gradient=project_gradient)
    ref = torch.optim.SGD(twin.parameters(), lr=lr)
    for _ in range(2):  # warm-up: plain SGD, bit for bit
        for m, o in ((model, opt), (twin, ref)):
            _backward(m, x, y)
            o.step()
        assert _same(model, twin)
    frozen = [float(p.detach().norm()) for p in model.parameters()]
    for _ in range(3):
        _backward(model, x, y)
        before, grads = _snapshot(model)
        opt.step()
        for p, w, g, c in zip(model.parameters(), before, grads, frozen):
            if p.ndim == 2:
                if project_gradient:
                    g = g - (w.flatten() @ g.flatten()) / (w.flatten() @ w.flatten()) * w
                moved = w - lr * g
                expected = c * moved / moved.norm()
                torch.testing.assert_close(float(p.detach().norm()), c, atol=1e-14, rtol=0)
            else:  # biases are free under apply_to="matrices"
                expected = w - lr * g
            torch.testing.assert_close(p.detach(), expected, atol=1e-14, rtol=0)


def test_lawn_parameter_selection_by_group_key_and_apply_to():
    model, (x, y) = _model(), _data()
    groups = [
        {"params": [model[0].weight], "lawn": False},
        {"params": [model[0].bias], "lawn": True},
        {"params": model[2].parameters()},
    ]
    opt = LAWN(torch.optim.SGD(groups, lr=0.3), warmup_steps=0)
    norms = {name: float(p.detach().norm()) for name, p in model.named_parameters()}
    for _ in range(4):
        _backward(model, x, y)
        opt.step()
    after = {name: float(p.detach().norm()) for name, p in model.named_parameters()}
    for name in ("0.bias", "2.weight"):
        assert after[name] == pytest.approx(norms[name], abs=1e-13)
    for name in ("0.weight", "2.bias"):
        assert abs(after[name] - norms[name]) > 1e-6
    model2 = _model()
    opt2 = LAWN(torch.optim.SGD(model2.parameters(), lr=0.3), apply_to="all")
    norms2 = [float(p.detach().norm()) for p in model2.parameters()]
    for _ in range(3):
        _backward(model2, x, y)
        opt2.step()
    for p, n in zip(model2.parameters(), norms2):
        assert float(p.detach().norm()) == pytest.approx(n, abs=1e-13)


def test_lawn_zero_norm_parameter_stays_free():
    model, (x, y) = _model(), _data()
    with torch.no_grad():
        model[2].weight.zero_()
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1))
    _backward(model, x, y)
    w, g = model[2].weight.detach().clone(), model[2].weight.grad.clone()
    opt.step()
    assert 3 not in opt.norms and 0 in opt.norms  # indices into the flat parameter list
    torch.testing.assert_close(model[2].weight.detach(), w - 0.1 * g, atol=0, rtol=0)


@pytest.mark.parametrize("before", [1, 4])
def test_lawn_state_dict_round_trip_before_and_after_warmup(before):
    make = lambda ps: LAWN(torch.optim.Adam(ps, lr=0.05), warmup_steps=2, project_gradient=True)  # noqa: E731
    assert _round_trip(make, steps_before=before, steps_after=3)
    model = _model()
    opt = make(model.parameters())
    for _ in range(3):
        _backward(model, *_data())
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["wrapper"]["state"]  # checkpoints load without unpickling code
    assert state["steps_taken"] == 3 and set(state["norms"]) == {0, 2}
    torch.testing.assert_close(state["norms"][2], model[2].weight.detach().norm(), atol=1e-14, rtol=0)


def test_lawn_registry_and_train_step():
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = reglab.optim.get("lawn", model.parameters(), warmup_steps=1, base={"name": "sgd", "lr": 0.1})
    assert isinstance(opt, LAWN) and isinstance(opt.base, torch.optim.SGD)
    ref = LAWN(torch.optim.SGD(twin.parameters(), lr=0.1), warmup_steps=1)
    for _ in range(3):
        train_step(model, (x, y), nn.MSELoss(reduction="sum"), opt)
        twin.zero_grad()
        nn.MSELoss(reduction="sum")(twin(x), y).backward()
        ref.step()
    assert _same(model, twin)
    assert isinstance(reglab.optim.get("lawn", _model().parameters()).base, torch.optim.Adam)


def test_lawn_validation():
    params = list(_model().parameters())
    base = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ConfigError, match="warmup_steps must be an int >= 0, got -1"):
        LAWN(base, warmup_steps=-1)
    with pytest.raises(ConfigError, match="apply_to must be one of 'matrices', 'all', got 'weights'"):
        LAWN(base, apply_to="weights")
    with pytest.raises(ConfigError, match="project_gradient must be a bool"):
        LAWN(base, project_gradient="yes")
    with pytest.raises(ConfigError, match="LAWN with project_gradient=True cannot wrap LBFGS"):
        LAWN(torch.optim.LBFGS(params), project_gradient=True)
    assert LAWN(torch.optim.LBFGS(params)).requires_closure  # projection after the step works with any base


# --- CLASSP -----------------------------------------------------------------------------------------------


def _quadratic(seed=2):
    """f(w) = 0.5 ||A w - b||^2 with gradient A^T (A w - b), written out independently of autograd."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    w = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    return A, b, w


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("include_current", [False, True])
def test_classp_steps_by_hand(power, include_current):
    A, b, w = _quadratic()
    lr, thr, eps = 0.1, 0.5, 0.7
    opt = CLASSP([w], lr, threshold=thr, power=power, eps=eps, include_current=include_current)
    w_ref = w.detach().clone()
    acc = [0.0] * 4
    updated_any = skipped_any = False
    for _ in range(4):
        w.grad = None
        (0.5 * (A @ w - b).pow(2).sum()).backward()
        grad = (A.T @ (A @ w_ref - b)).tolist()
        torch.testing.assert_close(w.grad, torch.tensor(grad, dtype=torch.float64), atol=1e-14, rtol=0)
        new = w_ref.tolist()
        for i, gi in enumerate(grad):  # one weight at a time, in plain floats
            if gi * gi > thr:
                updated_any = True
                if include_current:
                    acc[i] += abs(gi) ** power
                    new[i] -= lr * gi / (eps + acc[i]) ** (1 / power)
                else:
                    new[i] -= lr * gi / (eps + acc[i]) ** (1 / power)
                    acc[i] += abs(gi) ** power
            else:
                skipped_any = True
        opt.step()
        w_ref = torch.tensor(new, dtype=torch.float64)
        torch.testing.assert_close(w.detach(), w_ref, atol=1e-14, rtol=0)
        torch.testing.assert_close(opt.state[w]["accumulator"], torch.tensor(acc, dtype=torch.float64))
    assert updated_any and skipped_any  # both branches of the threshold were exercised


def test_classp_below_threshold_weights_and_accumulators_do_not_move():
    A, b, w = _quadratic()
    opt = CLASSP([w], 0.1, threshold=1e9)
    (0.5 * (A @ w - b).pow(2).sum()).backward()
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), before)
    assert torch.equal(opt.state[w]["accumulator"], torch.zeros(4, dtype=torch.float64))


def test_classp_with_p2_no_threshold_and_current_gradient_is_adagrad():
    """The paper's remark: p = 2 and threshold 0 recover AdaGrad (with the current gradient in the sum)."""
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = CLASSP(model.parameters(), 0.05, power=2.0, threshold=0.0, eps=1e-300, include_current=True)
    ref = torch.optim.Adagrad(twin.parameters(), lr=0.05, eps=0.0)
    for _ in range(5):
        for m, o in ((model, opt), (twin, ref)):
            _backward(m, x, y)
            o.step()
    # pow(., 1/2) against sqrt and eps placement: a few ulps per step
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=1e-13)


def test_classp_state_dict_round_trip_registry_and_train_step():
    assert _round_trip(lambda ps: CLASSP(ps, 0.05, threshold=1e-3, power=1.5))
    model, (x, y) = _model(), _data()
    twin = copy.deepcopy(model)
    opt = reglab.optim.get("classp", model.parameters(), lr=0.05, threshold=1e-3)
    assert isinstance(opt, CLASSP) and opt.defaults["power"] == 2.0
    train_step(model, (x, y), nn.MSELoss(reduction="sum"), opt)
    ref = CLASSP(twin.parameters(), 0.05, threshold=1e-3)
    twin.zero_grad()
    nn.MSELoss(reduction="sum")(twin(x), y).backward()
    ref.step()
    assert _same(model, twin)


def test_classp_validation():
    params = list(_model().parameters())
    with pytest.raises(ConfigError, match="lr must be >= 0, got -0.1"):
        CLASSP(params, -0.1)
    with pytest.raises(ConfigError, match="threshold must be >= 0, got -1"):
        CLASSP(params, threshold=-1)
    with pytest.raises(ConfigError, match="power must be > 0, got 0"):
        CLASSP(params, power=0)
    with pytest.raises(ConfigError, match="eps must be > 0, got 0"):
        CLASSP(params, eps=0)
    with pytest.raises(ConfigError, match="include_current must be a bool"):
        CLASSP(params, include_current="no")
    with pytest.raises(ConfigError, match="optimizer 'classp' has no argument 'momentum'"):
        reglab.optim.get("classp", params, momentum=0.9)


# --- the wrapper contract, for every wrapper --------------------------------------------------------------

WRAPPERS = {
    "ortho_grad": lambda base: OrthoGrad(base),
    "lawn": lambda base: LAWN(base, warmup_steps=1),
    "spectra": lambda base: SPECTRA(base, 0.5),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrappers_delegate_to_the_base_and_follow_lr_schedulers(name):
    model, (x, y) = _model(), _data()
    base = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.5)
    opt = WRAPPERS[name](base)
    assert isinstance(opt, OptimizerWrapper) and isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is base.param_groups and opt.state is base.state and opt.defaults is base.defaults
    assert not opt.requires_closure
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        _backward(model, x, y)
        opt.step()
        sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.1)
    assert len(base.state) == 4  # momentum buffers live in the base
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o))
    opt.step()
    assert calls == [opt]
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # a plain base state dict loads into the wrapper
    opt.load_state_dict(copy.deepcopy(base.state_dict()))
