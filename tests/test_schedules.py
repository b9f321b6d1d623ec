"""Learning-rate schedules: exact factors, the refinement rule, recorder, wrappers, checkpoints, validation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from torch import nn

from reglab import tasks
from reglab.core import ConfigError, ShapeError, UnknownNameError
from reglab.losses import CrossEntropy
from reglab.optim.schedules import (
    SCHEDULES,
    GradNormRecorder,
    RefinedSchedule,
    get_schedule,
    median_smooth,
    refined_schedule,
)
from reglab.train import Trainer, train_step

# Python floats: the schedules compute in float64, hand values below are exact to ~1e-16.
EXACT = {"rel": 1e-12, "abs": 1e-15}


def _opt(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(2, dtype=torch.float64))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(sched, opt, steps: int, group: int = 0) -> list[float]:
    """lr used by optimizer steps 0..steps-1 (the scheduler is stepped after each)."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        sched.step()
    return out


def test_registry_members():
    assert SCHEDULES.names() == ["constant", "linear", "onecycle", "refined", "warmup_cosine"]
    assert all(SCHEDULES.describe().values())
    assert SCHEDULES.required("linear") == ["total_steps"]
    assert SCHEDULES.required("refined") == ["grad_norms"]
    assert SCHEDULES.required("onecycle") == ["total_steps"]


def test_constant_keeps_each_groups_lr():
    opt = _opt(0.1, 0.02)
    sched = get_schedule("constant", opt)
    assert _lrs(sched, opt, 5, 0) == [0.1] * 5
    assert opt.param_groups[1]["lr"] == 0.02


def test_linear_factors_by_hand():
    opt = _opt(0.2, 0.04)
    sched = get_schedule("linear", opt, total_steps=10, warmup_steps=2, final=0.1)
    # warmup (t+1)/2 for t < 2; then 1 - 0.9 (t - 2) / 8; final 0.1 from t = 10 on.
    hand = [0.5, 1.0, 1.0, 0.8875, 0.775, 0.6625, 0.55, 0.4375, 0.325, 0.2125, 0.1, 0.1, 0.1]
    got = _lrs(sched, opt, len(hand))
    assert got == pytest.approx([0.2 * f for f in hand], **EXACT)
    # the second group follows the same factor on its own initial lr
    assert opt.param_groups[1]["lr"] == pytest.approx(0.04 * 0.1, **EXACT)


def test_linear_without_warmup_is_one_minus_t_over_T():
    opt = _opt(1.0)
    sched = get_schedule("linear", opt, total_steps=4)
    assert _lrs(sched, opt, 6) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0], **EXACT)


def test_warmup_cosine_factors_by_hand():
    opt = _opt(1.0)
    sched = get_schedule("warmup_cosine", opt, total_steps=10, warmup_steps=2, min_factor=0.1)
    got = _lrs(sched, opt, 12)
    c = math.cos(math.pi / 4)  # progress 1/4 at t = 4, 3/4 at t = 8
    assert got[0] == pytest.approx(0.5, **EXACT)
    assert got[1] == pytest.approx(1.0, **EXACT)
    assert got[2] == pytest.approx(1.0, **EXACT)
    assert got[4] == pytest.approx(0.1 + 0.45 * (1 + c), **EXACT)
    assert got[6] == pytest.approx(0.55, **EXACT)
    assert got[8] == pytest.approx(0.1 + 0.45 * (1 - c), **EXACT)
    assert got[10] == pytest.approx(0.1, **EXACT) and got[11] == pytest.approx(0.1, **EXACT)


# -- 1cycle ----------------------------------------------------------------------------------------


def _lr_and_momentum(sched, opt, steps: int) -> list[tuple[float, ...]]:
    """(lr, momentum or beta1) of every group, for optimizer steps 0..steps-1."""
    out = []
    for _ in range(steps):
        out.append(
            tuple(
                x
                for g in opt.param_groups
                for x in (g["lr"], g["betas"][0] if "betas" in g else g.get("momentum", float("nan")))
            )
        )
        opt.step()
        sched.step()
    return out


def _groups(*lrs: float) -> list[dict]:
    return [{"params": [nn.Parameter(torch.zeros(2, dtype=torch.float64))], "lr": lr} for lr in lrs]


ONECYCLE_CASES = {
    "cos": {},
    "linear": {"anneal_strategy": "linear", "pct_start": 0.4},
    "three-phase": {"three_phase": True, "pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0},
    "momenta": {"base_momentum": 0.8, "max_momentum": 0.9, "pct_start": 0.1},
    "no-cycling": {"cycle_momentum": False},
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("case", ONECYCLE_CASES, ids=list(ONECYCLE_CASES))
def test_onecycle_matches_torch_onecyclelr_at_every_step(optimizer, case):
    """Two groups with their own peaks (max_lr as a list), 37 steps: lr and momentum (SGD) or beta1 (Adam)."""
    kwargs = ONECYCLE_CASES[case]
    make = {
        "sgd": lambda: torch.optim.SGD(_groups(0.4, 0.1), lr=0.4, momentum=0.9),
        "adam": lambda: torch.optim.Adam(_groups(0.4, 0.1), lr=0.4, betas=(0.9, 0.99)),
    }[optimizer]
    ours_opt, torch_opt = make(), make()
    ours = get_schedule("onecycle", ours_opt, total_steps=37, **kwargs)  # max_lr: each group's lr
    theirs = torch.optim.lr_scheduler.OneCycleLR(torch_opt, max_lr=[0.4, 0.1], total_steps=37, **kwargs)
    got, want = _lr_and_momentum(ours, ours_opt, 37), _lr_and_momentum(theirs, torch_opt, 37)
    assert np.allclose(got, want, rtol=1e-13, atol=0, equal_nan=True)
    assert got[0][0] == pytest.approx(0.4 / kwargs.get("div_factor", 25.0), **EXACT)
    peak = max(range(37), key=lambda t: got[t][0])
    assert got[peak][0] == pytest.approx(0.4, rel=0.02)
    if kwargs.get("cycle_momentum", True):  # momentum at its base where the lr peaks, at its max at both ends
        assert got[0][1] == kwargs.get("max_momentum", 0.95) and got[-1][1] == pytest.approx(got[0][1], **EXACT)
        assert min(g[1] for g in got) == pytest.approx(kwargs.get("base_momentum", 0.85), rel=0.02)
    else:
        assert {g[1] for g in got} == {0.9}
    if optimizer == "adam":
        assert {ours_opt.param_groups[0]["betas"][1]} == {0.99}  # beta2 is left alone


def test_onecycle_final_value_holds_after_total_steps():
    opt = torch.optim.SGD(_groups(1.0), lr=1.0)
    sched = get_schedule("onecycle", opt, total_steps=10, cycle_momentum=False)
    lrs = _lrs(sched, opt, 14)
    assert lrs[9:] == pytest.approx([1.0 / 25 / 1e4] * 5, **EXACT)
    assert lrs[0] == pytest.approx(1.0 / 25, **EXACT)
    assert lrs[2] == pytest.approx(1.0, **EXACT)  # a = 0.3 * 10 - 1 = 2: the peak


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no optimizer steps here
def test_onecycle_drives_a_wrapper_through_its_base_groups():
    """SAM over SGD: the wrapper's param groups are the base's, so the schedule and torch's agree on the base."""
    from reglab.optim import SAM

    model = nn.Linear(3, 2).double()
    wrapped = SAM(model.parameters(), base={"name": "sgd", "lr": 0.2, "momentum": 0.9}, rho=0.05)
    assert wrapped.param_groups is wrapped.base.param_groups
    plain = torch.optim.SGD(nn.Linear(3, 2).double().parameters(), lr=0.2, momentum=0.9)
    ours = get_schedule("onecycle", wrapped, total_steps=20)
    theirs = torch.optim.lr_scheduler.OneCycleLR(plain, max_lr=0.2, total_steps=20)
    got = []
    for _ in range(20):
        got.append((wrapped.base.param_groups[0]["lr"], wrapped.base.param_groups[0]["momentum"]))
        ours.step()
    want = []
    for _ in range(20):
        want.append((plain.param_groups[0]["lr"], plain.param_groups[0]["momentum"]))
        plain.step()
        theirs.step()
    assert np.allclose(got, want, rtol=1e-13, atol=0)
    assert wrapped.param_groups[0]["sam_rho"] == 0.05  # the wrapper's own keys are untouched


def test_onecycle_on_muon_cycles_each_group_on_its_own_peak_and_momentum_key():
    from reglab.optim import Muon

    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = Muon(model.parameters(), lr=0.02, momentum=0.95, adamw_lr=3e-3, adamw_betas=(0.9, 0.95))
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    sched = get_schedule("onecycle", opt, total_steps=30, pct_start=0.2)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD(_groups(1.0), lr=1.0, momentum=0.9), max_lr=1.0, total_steps=30, pct_start=0.2
    )
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    for _ in range(30):
        factor = reference.optimizer.param_groups[0]["lr"]  # the 1cycle shape at peak 1
        momentum = reference.optimizer.param_groups[0]["momentum"]
        matrix, adamw = opt.param_groups
        assert matrix["lr"] == pytest.approx(0.02 * factor, rel=1e-12)
        assert adamw["lr"] == pytest.approx(3e-3 * factor, rel=1e-12)
        assert matrix["momentum"] == pytest.approx(momentum, rel=1e-12) and "betas" not in matrix
        assert adamw["betas"] == pytest.approx((momentum, 0.95), rel=1e-12)  # (its unused "momentum" stays)
        train_step(model, (x, y), _half_mse, opt)
        sched.step()
        reference.optimizer.step()
        reference.step()


def test_onecycle_state_dict_resumes_lr_and_momentum():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(8, 3, dtype=torch.float64)

    def make(**kw):
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        return opt, get_schedule("onecycle", opt, **{"total_steps": 16, **kw})

    opt, sched = make()
    for _ in range(6):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt2, sched2 = make(total_steps=50, max_lr=3.0, base_momentum=0.5)  # other settings: the loaded state wins
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert _lr_and_momentum(sched2, opt2, 10) == _lr_and_momentum(sched, opt, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 0}, "total_steps must be an int >= 1"),
        ({"total_steps": 10, "pct_start": 1.5}, "pct_start must be in"),
        ({"total_steps": 10, "pct_start": 0.6, "three_phase": True}, "pct_start must be <= 0.5 with three_phase"),
        ({"total_steps": 10, "anneal_strategy": "cosine"}, "anneal_strategy"),
        ({"total_steps": 10, "max_lr": [0.1, 0.2, 0.3]}, r"max_lr must be a number or a list of 2 \(one per param"),
        ({"total_steps": 10, "max_lr": 0.0}, "max_lr must be > 0"),
        ({"total_steps": 10, "base_momentum": 1.0}, r"base_momentum must be in \[0, 1\)"),
        ({"total_steps": 10, "max_momentum": [0.9, 1.2]}, r"max_momentum\[1\] must be in"),
        ({"total_steps": 10, "div_factor": 0}, "div_factor must be > 0"),
        ({"total_steps": 10, "cycle_momentum": 1}, "cycle_momentum must be"),
    ],
)
def test_onecycle_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        get_schedule("onecycle", _opt(0.1, 0.2), **kwargs)


def test_onecycle_refuses_to_cycle_a_momentum_that_does_not_exist():
    opt = torch.optim.Adagrad(_groups(0.1), lr=0.1)
    with pytest.raises(
        ConfigError, match="no param group of Adagrad has a 'momentum' or 'betas'.*cycle_momentum=False"
    ):
        get_schedule("onecycle", opt, total_steps=5)
    sched = get_schedule("onecycle", opt, total_steps=5, cycle_momentum=False)
    assert _lrs(sched, opt, 1) == pytest.approx([0.1 / 25], **EXACT)


def test_onecycle_from_a_config_peaks_at_the_optimizer_lr():
    from reglab.experiments import build, parse_config

    cfg = parse_config(
        {
            "task": {"name": "two_moons", "n": 64, "n_test": 32},
            "model": {"name": "mlp", "width": 8},
            "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
            "schedule": {"name": "onecycle", "pct_start": 0.5},
            "train": {"steps": 10},
        }
    )
    built = build(cfg)
    assert built.scheduler.total_steps == 10 and built.scheduler.max_lrs == [0.5]
    assert _lrs(built.scheduler, built.optimizer, 10)[4] == pytest.approx(0.5, **EXACT)  # a = 0.5 * 10 - 1 = 4


# -- refinement -----------------------------------------------------------------------------------


def test_refined_by_hand_sgd_and_adam_powers():
    g = [1.0, 2.0, 1.0, 0.5]
    # power 2: u = [1, 1/4, 1, 4]; sums over p > t: [21/4, 5, 4, 0]; w = [21/4, 5/4, 4, 0]
    got = refined_schedule(g, power=2, smoothing=0.0)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([1.0, 5 / 21, 16 / 21, 0.0], **EXACT)
    # power 1: u = [1, 1/2, 1, 2]; sums: [7/2, 3, 2, 0]; w = [7/2, 3/2, 2, 0]
    got = refined_schedule(g, power=1, smoothing=0.0)
    assert got.tolist() == pytest.approx([1.0, 3 / 7, 4 / 7, 0.0], **EXACT)


@pytest.mark.parametrize("n", [2, 7, 50])
def test_refined_on_constant_norms_is_linear_decay(n):
    """The paper's result: equal gradient norms refine to linear decay, 1 - t / (n - 1)."""
    factors = refined_schedule(torch.full((n,), 3.7), smoothing=0.1).tolist()
    assert factors == pytest.approx([1 - t / (n - 1) for t in range(n)], **EXACT)
    opt_a, opt_b = _opt(0.3), _opt(0.3)
    refined = get_schedule("refined", opt_a, grad_norms=[3.7] * n)
    linear = get_schedule("linear", opt_b, total_steps=n - 1)
    assert _lrs(refined, opt_a, n + 2) == pytest.approx(_lrs(linear, opt_b, n + 2), **EXACT)


def test_refined_large_early_norms_give_a_warmup_and_late_rise_a_fast_anneal():
    warm = refined_schedule([8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], smoothing=0.0)
    assert int(warm.argmax()) == 3 and bool((warm[:4].diff() > 0).all())
    anneal = refined_schedule([1.0] * 8 + [4.0, 4.0], smoothing=0.0)
    linear = refined_schedule([1.0] * 10, smoothing=0.0)
    assert bool((anneal[1:-1] < linear[1:-1]).all())  # rising final norms pull the whole tail down


def test_refined_warmup_multiplies_the_factors():
    g = torch.linspace(1.0, 2.0, 12, dtype=torch.float64)
    plain = refined_schedule(g, smoothing=0.0)
    warm = refined_schedule(g, smoothing=0.0, warmup_steps=4)
    ramp = torch.tensor([0.25, 0.5, 0.75] + [1.0] * 9, dtype=torch.float64)
    torch.testing.assert_close(warm, plain * ramp, rtol=1e-15, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_median_smoothing_matches_the_authors_scipy_recipe(smoothing):
    g = torch.rand(41, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    width = 2 * (int(smoothing * 41) // 2) + 1
    pad = 2 * width  # the README's recipe: reflect-pad the end, nearest at the start, then crop
    smoothed = median_filter(np.pad(g.numpy(), (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    np.testing.assert_array_equal(median_smooth(g, width).numpy(), smoothed)
    u = smoothed**-2.0
    tail = np.concatenate([np.cumsum(u[::-1])[::-1][1:], [0.0]])
    expected = u * tail / (u * tail).max()
    np.testing.assert_allclose(refined_schedule(g, smoothing=smoothing).numpy(), expected, rtol=1e-13, atol=0)


def test_median_smoothing_removes_a_spike():
    g = torch.ones(30, dtype=torch.float64)
    g[10] = 100.0
    torch.testing.assert_close(median_smooth(g, 5), torch.ones(30, dtype=torch.float64), rtol=0, atol=0)


# -- wrappers, checkpoints, the trainer -----------------------------------------------------------


class DelegatingWrapper(torch.optim.Optimizer):
    """A wrapper in the reglab style: it never calls Optimizer.__init__ and delegates to its base."""

    def __init__(self, base: torch.optim.Optimizer):
        self.base = base

    @property
    def param_groups(self):
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict):
        self.base.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True):
        self.base.zero_grad(set_to_none)

    def step(self, closure=None):
        return self.base.step(closure)


def test_schedule_drives_a_wrapper_through_its_base_param_groups():
    base = _opt(0.4, 0.1)
    wrapper = DelegatingWrapper(base)
    sched = get_schedule("linear", wrapper, total_steps=4)
    assert _lrs(sched, wrapper, 5, group=1) == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0], **EXACT)
    assert base.param_groups[0]["lr"] == 0.0 and base.param_groups[0]["initial_lr"] == 0.4


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("constant", {}),
        ("linear", {"total_steps": 9, "warmup_steps": 3, "final": 0.2}),
        ("warmup_cosine", {"total_steps": 9, "warmup_steps": 2, "min_factor": 0.05}),
        ("refined", {"grad_norms": [3.0, 1.0, 2.0, 2.0, 1.5, 1.0, 1.2, 2.5, 3.0, 1.0], "smoothing": 0.3}),
        ("onecycle", {"total_steps": 12, "pct_start": 0.25, "three_phase": True}),
    ],
)
def test_state_dict_round_trip_continues_identically(name, kwargs):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = get_schedule(name, opt, **kwargs)
    x = torch.randn(8, 3, dtype=torch.float64)
    for _ in range(4):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # a fresh scheduler built with other settings: the loaded state must replace them
    other = {"grad_norms": [1.0, 1.0, 1.0]} if name == "refined" else {}
    other = {"total_steps": 40, "pct_start": 0.5, "three_phase": False} if name == "onecycle" else other
    sched2 = get_schedule(name, opt2, **{**kwargs, **other})
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert _lrs(sched2, opt2, 8) == _lrs(sched, opt, 8)


def _linear_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64))
    return model, x, y


def _half_mse(out, y):
    return 0.5 * (out - y).pow(2).mean()


@pytest.mark.parametrize("norm_type", [1, 2])
def test_recorder_hook_records_the_hand_computed_gradient_norm(norm_type):
    model, x, y = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = GradNormRecorder(norm_type).attach(opt)
    expected = []
    for step in range(3):
        w = model.weight.detach().clone()
        grad = ((x @ w.T - y) * x).mean(0)  # d/dw of 0.5 mean (x.w - y)^2
        expected.append(grad.abs().sum().item() if norm_type == 1 else grad.pow(2).sum().sqrt().item())
        train_step(model, (x, y), _half_mse, opt, step=step)
    rec.detach()
    train_step(model, (x, y), _half_mse, opt)  # not recorded after detach
    assert rec.norms == pytest.approx(expected, rel=1e-12)
    assert rec.schedule(smoothing=0.0).tolist() == pytest.approx(
        refined_schedule(expected, power=norm_type, smoothing=0.0).tolist(), rel=1e-12
    )


def test_recorder_refuses_closure_optimizers_and_hookless_wrappers():
    model, _, _ = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class NeedsClosure(torch.optim.SGD):
        requires_closure = True

    with pytest.raises(ConfigError, match="Trainer"):
        GradNormRecorder().attach(NeedsClosure(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="step hooks"):
        GradNormRecorder().attach(DelegatingWrapper(opt))
    rec = GradNormRecorder().attach(opt)
    with pytest.raises(ConfigError, match="already attached"):
        rec.attach(opt)


def test_recorder_as_trainer_callback_then_refined_run():
    task = tasks.get("two_moons", n=64, n_test=32, seed=0)
    torch.manual_seed(0)
    model = task.make_model(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rec, rec_l1 = GradNormRecorder(), GradNormRecorder(norm_type=1)
    hook_l1 = GradNormRecorder(norm_type=1).attach(opt)  # the same l1 norms, read before each step
    first = Trainer(task, model, CrossEntropy(), opt, steps=12, batch_size=16, eval_every=12, log_every=1)
    first.callbacks += [rec, rec_l1]
    result = first.fit()
    logged = [v for (_, split, name, v) in result.history if split == "train" and name == "grad_norm"]
    assert rec.norms == logged and len(logged) == 12
    assert rec_l1.norms == hook_l1.norms and len(rec_l1.norms) == 12
    assert all(a >= b for a, b in zip(rec_l1.norms, rec.norms))  # ||g||_1 >= ||g||_2

    torch.manual_seed(0)
    model2 = task.make_model(width=8)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.2)
    sched = get_schedule("refined", opt2, grad_norms=rec.norms, smoothing=0.2)
    seen = []

    class LrProbe(GradNormRecorder):
        def on_step_end(self, trainer, step, info):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    Trainer(task, model2, CrossEntropy(), opt2, steps=12, batch_size=16, scheduler=sched, callbacks=[LrProbe()]).fit()
    factors = refined_schedule(rec.norms, smoothing=0.2).tolist()
    # after step t the scheduler has set the lr of step t (the next one)
    assert seen == pytest.approx([0.2 * f for f in factors[1:]] + [0.2 * factors[-1]], **EXACT)


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("linear", {"total_steps": 0}, "total_steps"),
        ("linear", {"total_steps": 10, "warmup_steps": 10}, "warmup_steps must be < total_steps"),
        ("linear", {"total_steps": 10, "warmup_steps": -1}, "warmup_steps"),
        ("linear", {"total_steps": 10, "final": 1.5}, "final"),
        ("linear", {"total_steps": 2.5}, "total_steps"),
        ("warmup_cosine", {"total_steps": 5, "warmup_steps": 6}, "warmup_steps must be < total_steps"),
        ("warmup_cosine", {"total_steps": 5, "min_factor": -0.1}, "min_factor"),
        ("refined", {"grad_norms": [1.0, 0.0, 2.0]}, "grad_norms must be finite and > 0"),
        ("refined", {"grad_norms": [1.0, float("nan")]}, "grad_norms"),
        ("refined", {"grad_norms": [1.0, 2.0], "power": 0.0}, "power"),
        ("refined", {"grad_norms": [1.0, 2.0], "smoothing": 1.5}, "smoothing"),
        ("refined", {"grad_norms": [1.0, 2.0, 3.0], "warmup_steps": 3}, r"warmup_steps must be < len\(grad_norms\)"),
        ("linear", {"total_steps": 5, "warmup": 2}, "has no argument 'warmup'"),
    ],
)
def test_validation_errors_name_the_argument(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        get_schedule(name, _opt(0.1), **kwargs)


def test_shape_and_type_errors():
    with pytest.raises(ShapeError, match="at least 2"):
        refined_schedule([1.0])
    with pytest.raises(ShapeError, match="1-D"):
        refined_schedule(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="optimizer must be a torch.optim.Optimizer"):
        get_schedule("constant", object())
    with pytest.raises(UnknownNameError, match="cosine"):
        get_schedule("cosine", _opt(0.1))
    with pytest.raises(ConfigError, match="norm_type"):
        GradNormRecorder(norm_type=3)
    with pytest.raises(ConfigError, match="width must be odd"):
        median_smooth(torch.ones(4), 2)


def test_refined_schedule_class_beyond_the_recorded_length_stays_at_zero():
    opt = _opt(1.0)
    sched = RefinedSchedule(opt, [1.0, 1.0, 1.0])
    assert _lrs(sched, opt, 5) == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0], **EXACT)
