"""Weight-perturbation optimizers: hand-computed steps, the shared engine's contract, registry and train_step."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import reglab.optim
from reglab import tasks
from reglab.core import ConfigError
from reglab.losses import CrossEntropy
from reglab.optim import OptimizerWrapper, OrthoGrad
from reglab.optim.perturbation import AMP, GAM, GSAM, IGNITE, SAM, FiniteDifferenceGR
from reglab.train import train_step

torch.set_num_threads(1)
F64 = torch.float64
EPS = 1e-12  # the constant added to norms in the reference implementations

# float64 round-off: each hand-computed step is O(10) operations on O(1) numbers, each exact to 2^-53 ~ 1.1e-16,
# so the two computations agree to ~1e-15; 1e-13 leaves a factor 100 for the differently ordered reductions.
TOL = dict(rtol=0.0, atol=1e-13)


# --------------------------------------------------------------------------- a quadratic with two parameter tensors


class Quad(nn.Module):
    """L(w, v) = 1/2 z^T A z - b^T z with z = [w; v]; gradient A z - b, Hessian A."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(5, 5, generator=g, dtype=F64)
        self.register_buffer("A", m @ m.T / 5 + torch.eye(5, dtype=F64))
        self.register_buffer("b", torch.randn(5, generator=g, dtype=F64))
        self.w = nn.Parameter(torch.randn(3, generator=g, dtype=F64))
        self.v = nn.Parameter(torch.randn(2, generator=g, dtype=F64))

    def z(self) -> torch.Tensor:
        return torch.cat([self.w.detach(), self.v.detach()])

    def loss(self) -> torch.Tensor:
        z = torch.cat([self.w, self.v])
        return 0.5 * z @ self.A @ z - self.b @ z

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        return self.A @ z - self.b


def quad_closure(opt, model):
    def closure():
        opt.zero_grad()
        loss = model.loss()
        loss.backward()
        return loss

    return closure


def unit(v):
    return v / (v.norm() + EPS)


# --------------------------------------------------------------------------- hand-computed steps


@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sam_step_is_the_hand_computed_step(rho):
    q = Quad()
    opt = SAM(torch.optim.SGD(q.parameters(), lr=0.1), rho=rho)
    for _ in range(3):
        z = q.z()
        g = q.grad(z)
        expected = z - 0.1 * q.grad(z + rho * unit(g))
        opt.step(quad_closure(opt, q))
        torch.testing.assert_close(q.z(), expected, **TOL)
    assert opt.last_evaluations == 2 and not opt.last_step_skipped


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_asam_step_is_the_hand_computed_step(eta):
    q = Quad()
    opt = SAM(torch.optim.SGD(q.parameters(), lr=0.1), rho=0.5, adaptive=True, eta=eta)
    for _ in range(2):
        z = q.z()
        g = q.grad(z)
        t = z.abs() + eta
        e = 0.5 * t**2 * g / ((t * g).norm() + EPS)
        expected = z - 0.1 * q.grad(z + e)
        opt.step(quad_closure(opt, q))
        torch.testing.assert_close(q.z(), expected, **TOL)


def _gsam_direction(q, z, rho, alpha):
    g = q.grad(z)
    gp = q.grad(z + rho * unit(g))
    cos = (g @ gp) / (g.norm() * gp.norm() + EPS)
    g_perp = g - cos * g.norm() * gp / (gp.norm() + EPS)
    return gp - alpha * g_perp, g_perp


def test_gsam_step_is_the_hand_computed_step():
    q = Quad()
    opt = GSAM(torch.optim.SGD(q.parameters(), lr=0.1), rho=0.3, alpha=0.4)
    for _ in range(3):
        z = q.z()
        d, g_perp = _gsam_direction(q, z, 0.3, 0.4)
        assert g_perp.norm() > 1e-3  # the correction is not negligible on this problem
        opt.step(quad_closure(opt, q))
        torch.testing.assert_close(q.z(), z - 0.1 * d, **TOL)


def test_gsam_rho_follows_the_learning_rate():
    q = Quad()
    base = torch.optim.SGD(q.parameters(), lr=0.1)
    opt = GSAM(base, rho=0.4, alpha=0.2, rho_min=0.1, lr_min=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: [1.0, 0.5, 0.0][min(t, 2)])
    for lr, rho in [(0.1, 0.4), (0.05, 0.25), (0.0, 0.1)]:
        assert base.param_groups[0]["lr"] == pytest.approx(lr)
        assert opt.current_rho() == pytest.approx(rho, abs=1e-15)
        z = q.z()
        d, _ = _gsam_direction(q, z, opt.current_rho(), 0.2)
        opt.step(quad_closure(opt, q))
        assert opt.last_rho == opt.current_rho()
        torch.testing.assert_close(q.z(), z - lr * d, **TOL)
        sched.step()


def _amp_direction(q, z, epsilon, zeta, steps, per_tensor):
    parts = [slice(0, 3), slice(3, 5)] if per_tensor else [slice(0, 5)]
    delta = torch.zeros(5, dtype=F64)
    g = q.grad(z)
    clipped = []
    for _ in range(steps):
        delta = delta + zeta * g
        for s in parts:
            n = delta[s].norm()
            clipped.append(bool(n > epsilon))
            if n > epsilon:
                delta[s] = delta[s] * epsilon / (n + EPS)
        g = q.grad(z + delta)
    return g, clipped


@pytest.mark.parametrize("norm", ["tensor", "global"])
@pytest.mark.parametrize("steps", [1, 3])
def test_amp_step_is_the_hand_computed_step(norm, steps):
    q = Quad()
    opt = AMP(torch.optim.SGD(q.parameters(), lr=0.1), epsilon=0.6, inner_lr=0.3, inner_steps=steps, norm=norm)
    z = q.z()
    d, clipped = _amp_direction(q, z, 0.6, 0.3, steps, norm == "tensor")
    assert any(clipped)  # the projection is exercised
    opt.step(quad_closure(opt, q))
    torch.testing.assert_close(q.z(), z - 0.1 * d, **TOL)
    assert opt.last_evaluations == steps + 1


def test_amp_tensor_and_global_balls_differ():
    steps = {}
    for norm in ("tensor", "global"):
        q = Quad()
        opt = AMP(torch.optim.SGD(q.parameters(), lr=0.1), epsilon=0.6, inner_lr=0.3, norm=norm)
        opt.step(quad_closure(opt, q))
        steps[norm] = q.z()
    assert (steps["tensor"] - steps["global"]).abs().max() > 1e-4


def test_gam_step_is_the_hand_computed_step():
    rho, rho_p, alpha, beta, gamma = 0.2, 0.05, 0.6, 0.3, 0.2
    q = Quad()
    opt = GAM(torch.optim.SGD(q.parameters(), lr=0.1), rho=rho, rho_prime=rho_p, alpha=alpha, beta=beta, gamma=gamma)
    for _ in range(2):
        z = q.z()
        g0 = q.grad(z)
        g1 = q.grad(z + rho_p * unit(g0))
        adv = rho * unit(g1 - g0)
        g2 = q.grad(z + adv)
        g3 = q.grad(z + adv + rho_p * unit(g2))
        u = alpha * g1 + (1 - alpha) * g3
        m = g0 + (1 - beta) * g2
        cos = (m @ u) / (m.norm() * u.norm() + EPS)
        d = u - gamma * (m - cos * m.norm() * u / (u.norm() + EPS))
        opt.step(quad_closure(opt, q))
        # g1 - g0 is a difference of nearby gradients (|g1 - g0| ~ rho' |A|): its direction carries a relative
        # error ~ 2^-53 |g| / |g1 - g0| ~ 1e-15 / 0.05, which rho = 0.2 and the Hessian turn into ~1e-14.
        torch.testing.assert_close(q.z(), z - 0.1 * d, **TOL)
    assert opt.last_evaluations == 4


@pytest.mark.parametrize("variant", ["forward", "backward", "central"])
def test_fd_gr_is_exact_on_a_quadratic(variant):
    """On a quadratic, H g is exactly a gradient difference: the direction is g + gamma A g for any eps."""
    gamma, eps = 0.3, 0.05
    q = Quad()
    opt = FiniteDifferenceGR(torch.optim.SGD(q.parameters(), lr=0.1), gamma=gamma, eps=eps, variant=variant)
    z = q.z()
    g = q.grad(z)
    opt.step(quad_closure(opt, q))
    # round-off: the gradient difference (~eps |A g|) is exact to ~1e-16 |g|, divided by eps and times gamma:
    # ~ 1e-16 * 0.3 / 0.05 ~ 1e-15 on the direction; the tolerance allows a factor ~100.
    torch.testing.assert_close(q.z(), z - 0.1 * (g + gamma * q.A @ g), **TOL)
    assert opt.last_evaluations == (3 if variant == "central" else 2)


class SmoothNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def forward(self, x):
        return self.body(x)


def _data(n=16, d=3, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, k, (n,), generator=g)


def test_fd_gr_converges_to_the_double_backprop_gradient():
    """Error vs the exact gradient of L + gamma/2 ||grad L||^2: ~eps (forward, backward), ~eps^2 (central)."""
    gamma = 0.1
    x, y = _data()
    net = SmoothNet()
    params = list(net.parameters())
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    reg = loss + gamma / 2 * sum((g**2).sum() for g in grads)
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reg, params)])
    plain = torch.cat([g.detach().reshape(-1) for g in grads])
    assert (exact - plain).norm() > 1e-3 * plain.norm()  # the regularizer matters

    errors: dict[str, list[float]] = {}
    signed: dict[str, torch.Tensor] = {}
    epss = [4e-3, 2e-3, 1e-3, 5e-4]
    for variant in ("forward", "backward", "central"):
        errors[variant] = []
        for eps in epss:
            opt = FiniteDifferenceGR(torch.optim.SGD(params, lr=0.0), gamma=gamma, eps=eps, variant=variant)

            def closure(opt=opt):
                opt.zero_grad()
                value = F.cross_entropy(net(x), y)
                value.backward()
                return value

            opt.step(closure)  # lr = 0: the weights stay; p.grad holds the direction
            d = torch.cat([p.grad.reshape(-1) for p in params])
            errors[variant].append(float((d - exact).norm()))
            if eps == epss[0]:
                signed[variant] = d - exact
    for variant, order in (("forward", 1), ("backward", 1), ("central", 2)):
        ratios = [a / b for a, b in zip(errors[variant], errors[variant][1:])]
        # Taylor: err(eps) = c eps^order (1 + O(eps)), so halving eps divides it by 2^order up to a relative O(eps)
        # term (eps <= 4e-3 here, so ~1%); round-off (~1e-16 gamma / eps ~ 1e-13) is far below the errors (>1e-10).
        # Measured: 2.000 / 2.000 / 4.000 at every halving.
        for r in ratios:
            assert r == pytest.approx(2.0**order, rel=0.02), (variant, errors[variant])
    # forward and backward errors are the same leading term with opposite signs
    cos = (signed["forward"] @ signed["backward"]) / (signed["forward"].norm() * signed["backward"].norm())
    assert cos < -0.99
    assert errors["central"][0] < 0.1 * errors["forward"][0]


def test_ignite_primal_dual_steps_are_the_hand_computed_steps():
    rho, epsilon, lr_lambda, r = 0.2, 0.3, 0.5, 0.01
    q = Quad()
    opt = IGNITE(
        torch.optim.SGD(q.parameters(), lr=0.1),
        rho=rho,
        epsilon=epsilon,
        lr_lambda=lr_lambda,
        fd_radius=r,
        lambda_init=0.5,
    )
    lam = 0.5
    for _ in range(3):
        z = q.z()
        g = q.grad(z)
        d = g + lam * rho * q.A @ g / g.norm()  # the exact gradient of L + lam (rho ||grad L|| - epsilon)
        opt.step(quad_closure(opt, q))
        # the finite difference is exact on a quadratic up to round-off: ~2^-53 |g| / r ~ 1e-14, times lam rho
        torch.testing.assert_close(q.z(), z - 0.1 * d, rtol=0.0, atol=1e-12)
        violation = rho * g.norm().item() - epsilon
        assert opt.last_violation == pytest.approx(violation, abs=1e-14)
        lam = max(0.0, lam + lr_lambda * violation)
        assert opt.lambda_ == pytest.approx(lam, abs=1e-14)
    assert 0.0 < opt.lambda_ != 0.5


def test_ignite_multiplier_stays_nonnegative_and_zero_skips_the_extra_pass():
    q = Quad()
    opt = IGNITE(torch.optim.SGD(q.parameters(), lr=0.1), rho=0.1, epsilon=100.0, lr_lambda=1.0, lambda_init=0.1)
    opt.step(quad_closure(opt, q))
    assert opt.lambda_ == 0.0 and opt.last_evaluations == 2
    z = q.z()
    g = q.grad(z)
    opt.step(quad_closure(opt, q))
    assert opt.last_evaluations == 1  # lambda = 0: plain gradient step
    torch.testing.assert_close(q.z(), z - 0.1 * g, **TOL)


def test_ignite_with_a_constraint_closure():
    """G(w) = mean((X w)^2)/2 (a surrogate's mean output): grad G = X^T X w / n, Hessian X^T X / n."""
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(10, 4, generator=g, dtype=F64), torch.randn(10, generator=g, dtype=F64)
    w = nn.Parameter(torch.randn(4, generator=g, dtype=F64))
    rho, lam = 0.3, 2.0
    opt = IGNITE(torch.optim.SGD([w], lr=0.05), rho=rho, epsilon=0.0, lr_lambda=0.1, lambda_init=lam)

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((x @ w - t) ** 2).mean()
        loss.backward()
        return loss

    def constraint():
        opt.zero_grad()
        value = 0.5 * ((x @ w) ** 2).mean()
        value.backward()
        return value

    w0 = w.detach().clone()
    h = x.T @ x / 10
    grad_l = x.T @ (x @ w0 - t) / 10
    c = h @ w0
    expected = w0 - 0.05 * (grad_l + lam * rho * h @ c / c.norm())
    opt.step(closure, constraint_closure=constraint)
    torch.testing.assert_close(w.detach(), expected, rtol=0.0, atol=1e-12)
    assert opt.last_evaluations == 3
    assert opt.lambda_ == pytest.approx(lam + 0.1 * rho * c.norm().item(), abs=1e-14)


# --------------------------------------------------------------------------- the shared engine, for every method

MAKERS = {
    "sam": lambda base, **kw: SAM(base, rho=0.05, **kw),
    "asam": lambda base, **kw: SAM(base, rho=0.5, adaptive=True, eta=0.01, **kw),
    "gsam": lambda base, **kw: GSAM(base, rho=0.05, alpha=0.3, **kw),
    "amp": lambda base, **kw: AMP(base, epsilon=0.1, inner_lr=0.5, inner_steps=2, **kw),
    "gam": lambda base, **kw: GAM(base, **kw),
    "fd_gr": lambda base, **kw: FiniteDifferenceGR(base, gamma=0.05, eps=0.05, **kw),
    "fd_gr_backward": lambda base, **kw: FiniteDifferenceGR(base, gamma=0.05, eps=0.05, variant="backward", **kw),
    "fd_gr_central": lambda base, **kw: FiniteDifferenceGR(base, gamma=0.05, eps=0.05, variant="central", **kw),
    "ignite": lambda base, **kw: IGNITE(base, rho=0.1, epsilon=0.0, lr_lambda=0.5, lambda_init=1.0, **kw),
}

# zero radius, and how many closure calls the step then makes (1: the method skips a pass that cannot change anything)
ZERO = {
    "sam": (lambda base: SAM(base, rho=0.0), 2),
    "asam": (lambda base: SAM(base, rho=0.0, adaptive=True, eta=0.01), 2),
    "gsam": (lambda base: GSAM(base, rho=0.0, alpha=0.3), 1),
    "amp": (lambda base: AMP(base, epsilon=0.0, inner_steps=2), 3),
    "gam": (lambda base: GAM(base, rho=0.0, rho_prime=0.0), 1),
    "fd_gr": (lambda base: FiniteDifferenceGR(base, gamma=0.0), 2),
    "fd_gr_backward": (lambda base: FiniteDifferenceGR(base, gamma=0.0, variant="backward"), 2),
    "fd_gr_central": (lambda base: FiniteDifferenceGR(base, gamma=0.0, variant="central"), 3),
    "ignite": (lambda base: IGNITE(base, rho=0.0, lambda_init=1.0), 1),
}


def _mlp(dtype=F64, seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def _closure(opt, model, x, y, micro_batches=1, autocast=False, fail_on=None):
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        total = 0.0
        for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(xs), ys)
            else:
                loss = F.cross_entropy(model(xs), ys)
            if fail_on is not None and len(calls) == fail_on:
                loss = loss * float("nan")
            (loss * (len(ys) / len(y))).backward()
            total = total + loss.detach() * (len(ys) / len(y))
        return total

    closure.calls = calls
    return closure


@pytest.mark.parametrize("name", list(ZERO))
@pytest.mark.parametrize(
    "make_base",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_zero_radius_reproduces_the_base_optimizer_bitwise(name, make_base):
    make, evaluations = ZERO[name]
    x, y = _data()
    x = x.float()
    a, b = _mlp(torch.float32), _mlp(torch.float32)
    base_a = make_base(a.parameters())
    opt = make(make_base(b.parameters()))
    for _ in range(3):
        _closure(base_a, a, x, y)()
        base_a.step()
        closure = _closure(opt, b, x, y)
        opt.step(closure)
        assert len(closure.calls) == evaluations == opt.last_evaluations
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    for p, q in zip(a.parameters(), b.parameters()):
        for key, value in base_a.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt.state[q][key]))


@pytest.mark.parametrize("name", list(MAKERS))
def test_batchnorm_statistics_are_updated_once_per_step(name):
    x, y = _data()
    model = _mlp(bn=True)
    reference = copy.deepcopy(model)
    opt = MAKERS[name](torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    opt.step(_closure(opt, model, x, y))
    assert opt.last_evaluations >= 2
    with torch.no_grad():
        reference(x)  # one plain forward pass in train mode
    for buf, ref in zip(model.buffers(), reference.buffers()):
        assert torch.equal(buf, ref)


def test_without_model_the_perturbed_pass_moves_batchnorm_statistics():
    x, y = _data()
    model = _mlp(bn=True)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.step(_closure(opt, model, x, y))
    assert int(model[1].num_batches_tracked) == 2


@pytest.mark.parametrize("name", list(MAKERS))
def test_gradient_accumulation_gives_the_full_batch_step(name):
    x, y = _data()
    a, b = _mlp(), _mlp()
    opt_a = MAKERS[name](torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9))
    opt_b = MAKERS[name](torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9))
    for _ in range(2):
        opt_a.step(_closure(opt_a, a, x, y))
        opt_b.step(_closure(opt_b, b, x, y, micro_batches=2))
    moved = sum(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), _mlp().parameters()))
    assert moved > 1e-3
    # the two closures add the same per-example terms in a different order: gradients differ by a few ulps
    # (~1e-16 on O(1) values); the finite-difference methods divide differences by eps = 0.05 (x20).
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("name", list(MAKERS))
def test_bf16_autocast_on_cpu_gives_finite_steps(name):
    x, y = _data()
    model = _mlp(torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = MAKERS[name](torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(2):
        loss = opt.step(_closure(opt, model, x.float(), y, autocast=True))
        assert math.isfinite(float(loss)) and not opt.last_step_skipped
    for p, b in zip(model.parameters(), before):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        assert not torch.equal(p, b)


@pytest.mark.parametrize("name", list(MAKERS))
def test_state_dict_round_trip_continues_identically(name):
    x, y = _data()
    a = _mlp()
    opt_a = MAKERS[name](torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9))
    for _ in range(2):
        opt_a.step(_closure(opt_a, a, x, y))
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["wrapper"]["type"] == type(opt_a).__name__

    b = copy.deepcopy(a)
    opt_b = MAKERS[name](torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.0))
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[0]["lr"] == 0.1 and opt_b.param_groups[0]["momentum"] == 0.9
    assert opt_b.hyperparameters == opt_a.hyperparameters
    if isinstance(opt_a, IGNITE):
        assert opt_b.lambda_ == opt_a.lambda_ != 1.0
    for _ in range(2):
        opt_a.step(_closure(opt_a, a, x, y))
        opt_b.step(_closure(opt_b, b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_loading_another_methods_state_dict_is_refused():
    model = _mlp()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1))
    gsam = GSAM(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="saved by SAM, cannot load it into GSAM"):
        gsam.load_state_dict(sam.state_dict())
    plain = torch.optim.SGD(model.parameters(), lr=0.3)
    sam.load_state_dict(plain.state_dict())  # a bare base-optimizer checkpoint is fine
    assert sam.param_groups[0]["lr"] == 0.3


def test_a_refused_state_dict_changes_nothing_and_a_loaded_one_restores_the_hyperparameters():
    model = _mlp()
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.2)
    gsam = GSAM(torch.optim.SGD(model.parameters(), lr=0.7), rho=0.3)
    with pytest.raises(ConfigError, match="saved by GSAM, cannot load it into SAM"):
        sam.load_state_dict(gsam.state_dict())
    assert sam.param_groups[0]["lr"] == 0.1 and sam.hyperparameters["rho"] == 0.2  # the base was not loaded
    other = SAM(torch.optim.SGD(model.parameters(), lr=0.7), rho=0.05, adaptive=True)
    sam.load_state_dict(other.state_dict())
    assert sam.param_groups[0]["lr"] == 0.7 and sam.hyperparameters == {"rho": 0.05, "adaptive": True, "eta": 0.0}


@pytest.mark.parametrize("name", list(MAKERS))
def test_parameters_without_gradient_are_skipped(name):
    x, y = _data()
    model = _mlp()
    model.unused = nn.Parameter(torch.ones(4, dtype=F64))
    opt = MAKERS[name](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    opt.step(_closure(opt, model, x, y))
    assert torch.equal(model.unused.detach(), torch.ones(4, dtype=F64))
    assert model.unused.grad is None and len(opt.state[model.unused]) == 0
    assert len(opt.state[model[0].weight]) > 0


def test_a_parameter_that_gets_a_gradient_only_at_the_perturbed_point_does_not_move():
    q = Quad()
    extra = nn.Parameter(torch.ones(2, dtype=F64))
    opt = SAM(torch.optim.SGD([q.w, q.v, extra], lr=0.1), rho=0.1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = q.loss() + (extra.sum() if len(calls) > 1 else 0.0)
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(extra.detach(), torch.ones(2, dtype=F64)) and extra.grad is None


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("fail_on", [1, 2])
def test_nonfinite_loss_leaves_the_weights_and_skips_the_step(name, fail_on):
    x, y = _data()
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MAKERS[name](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    closure = _closure(opt, model, x, y, fail_on=fail_on)
    loss = opt.step(closure)
    assert opt.last_step_skipped and len(closure.calls) == fail_on
    assert math.isfinite(float(loss)) == (fail_on != 1)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert all(len(opt.state[p]) == 0 for p in model.parameters())
    opt.step(_closure(opt, model, x, y))  # the next finite step goes through
    assert not opt.last_step_skipped


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("bad", ["inf", "nan"])
@pytest.mark.parametrize("fail_on", [1, 2])
def test_a_nonfinite_gradient_with_a_finite_loss_leaves_the_weights_and_skips_the_step(name, bad, fail_on):
    """The gradient is not checked at each point; it poisons the next point's loss or the direction instead."""
    x, y = _data()
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = MAKERS[name](torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    inner = _closure(opt, model, x, y)
    calls = []

    def closure():
        calls.append(1)
        loss = inner()
        if len(calls) == fail_on:
            model[0].weight.grad[0, 0] = float(bad)  # the loss stays finite
        return loss

    loss = opt.step(closure)
    assert math.isfinite(float(loss)) and opt.last_step_skipped
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert all(len(opt.state[p]) == 0 for p in model.parameters())


def test_gradients_that_are_views_of_a_reused_buffer_are_copied():
    """As DDP's gradient_as_bucket_view: each backward writes into one flat buffer that p.grad views.

    Finite-difference GR reads the first gradient after the second closure call, so a gradient taken by
    reference instead of copied would have been overwritten by then.
    """
    q = Quad()
    bucket = torch.zeros(5, dtype=F64)
    opt = FiniteDifferenceGR(torch.optim.SGD(q.parameters(), lr=0.1), gamma=0.05, eps=0.1)

    def closure():
        loss = q.loss()
        gw, gv = torch.autograd.grad(loss, [q.w, q.v])
        bucket.copy_(torch.cat([gw, gv]))
        q.w.grad, q.v.grad = bucket[:3].view(3), bucket[3:].view(2)
        return loss.detach()

    z = q.z()
    g = q.grad(z)
    expected = z - 0.1 * (g + (q.grad(z + 0.1 * g) - g) * (0.05 / 0.1))
    opt.step(closure)
    torch.testing.assert_close(q.z(), expected, **TOL)


# --------------------------------------------------------------------------- wrapper contract


def test_step_without_a_closure_is_an_error():
    opt = SAM(torch.optim.SGD(_mlp().parameters(), lr=0.1))
    assert reglab.optim.requires_closure(opt)
    with pytest.raises(ConfigError, match="needs a closure"):
        opt.step()


def test_param_groups_and_state_are_the_base_optimizers_and_schedulers_work():
    model = _mlp()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SAM(base)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    opt.step(_closure(opt, model, x, y))
    sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    extra = nn.Parameter(torch.zeros(2, dtype=F64))
    opt.add_param_group({"params": [extra], "lr": 1.0})
    assert base.param_groups[-1]["params"] == [extra]
    assert "SAM(rho=0.05" in repr(opt)
    clone = copy.deepcopy(opt)
    assert clone.hyperparameters == opt.hyperparameters and clone.base is not base


def test_the_sam_family_are_optimizer_wrappers_that_need_a_closure():
    model = _mlp()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SAM(base)
    assert isinstance(opt, OptimizerWrapper) and opt.base is base
    assert opt.defaults is base.defaults and opt.requires_closure
    # the base's defaults are visible, so OneCycleLR can cycle the base's momentum
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4, cycle_momentum=True)
    x, y = _data()
    opt.step(_closure(opt, model, x, y))
    sched.step()
    assert base.param_groups[0]["momentum"] != 0.9 and base.param_groups[0]["lr"] != 0.1


def test_a_sam_family_member_wraps_a_wrapper_that_takes_one_gradient():
    """SAM around ⊥Grad(SGD): the SAM gradient is projected by ⊥Grad, then SGD steps (hand-computed)."""
    q = Quad()
    opt = SAM(OrthoGrad(torch.optim.SGD(q.parameters(), lr=0.1), rescale=False), rho=0.1)
    assert not opt.base.requires_closure and opt.requires_closure
    z = q.z()
    g = q.grad(z)
    g_sam = q.grad(z + 0.1 * unit(g))
    expected = []
    for w, gs in ((z[:3], g_sam[:3]), (z[3:], g_sam[3:])):  # ⊥Grad projects each tensor on its own
        expected.append(w - 0.1 * (gs - (w @ gs) / (w @ w) * w))
    opt.step(quad_closure(opt, q))
    torch.testing.assert_close(q.z(), torch.cat(expected), **TOL)


BAD_ARGUMENTS = [
    (SAM, {"rho": -0.1}, "rho must be >= 0, got -0.1"),
    (SAM, {"adaptive": 1}, "adaptive must be a bool"),
    (SAM, {"eta": -1.0}, "eta must be >= 0"),
    (GSAM, {"alpha": -0.1}, "alpha must be >= 0"),
    (GSAM, {"rho": 0.1, "rho_min": 0.2}, r"rho_min must be in \[0, 0.1\]"),
    (GSAM, {"rho_min": 0.01, "lr_max": 0.1, "lr_min": 0.1}, "lr_max must be > lr_min"),
    (GSAM, {"lr_max": 0.1}, "lr_max is only used with rho_min"),
    (AMP, {"epsilon": -1.0}, "epsilon must be >= 0"),
    (AMP, {"inner_lr": -1.0}, "inner_lr must be >= 0"),
    (AMP, {"inner_steps": 1.5}, "inner_steps must be an int"),
    (AMP, {"inner_steps": -1}, "inner_steps must be an int >= 0"),
    (AMP, {"norm": "layer"}, "norm must be one of 'tensor', 'global'"),
    (GAM, {"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    (GAM, {"beta": -0.5}, r"beta must be in \[0, 1\]"),
    (GAM, {"rho_prime": -0.1}, "rho_prime must be >= 0"),
    (GAM, {"gamma": float("inf")}, "gamma must be a finite number"),
    (FiniteDifferenceGR, {"eps": 0.0}, "eps must be > 0"),
    (FiniteDifferenceGR, {"gamma": -1.0}, "gamma must be >= 0"),
    (FiniteDifferenceGR, {"variant": "centered"}, "variant must be one of"),
    (IGNITE, {"fd_radius": 0.0}, "fd_radius must be > 0"),
    (IGNITE, {"lambda_init": -1.0}, "lambda_init must be >= 0"),
    (IGNITE, {"epsilon": float("nan")}, "epsilon must be a finite number"),
    (IGNITE, {"lr_lambda": -0.1}, "lr_lambda must be >= 0"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_ARGUMENTS, ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_constructor_validation(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(torch.optim.SGD(_mlp().parameters(), lr=0.1), **kwargs)


def test_base_and_model_validation():
    model = _mlp()
    assert isinstance(SAM(model.parameters(), base={"name": "sgd", "lr": 0.1}).base, torch.optim.SGD)
    with pytest.raises(ConfigError, match="give either a built optimizer or params with base='adam', not both"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), base="adam")
    with pytest.raises(ConfigError, match="base must be an optimizer name or a mapping"):
        SAM(model.parameters(), base=3)
    with pytest.raises(ConfigError, match="base must be a plain optimizer .* got SAM"):
        SAM(SAM(torch.optim.SGD(model.parameters(), lr=0.1)))
    with pytest.raises(ConfigError, match="base must be a plain optimizer .* got LBFGS"):
        GSAM(torch.optim.LBFGS(model.parameters()))
    with pytest.raises(ConfigError, match="model must be an nn.Module"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), model="net")


# --------------------------------------------------------------------------- registry, config path and train_step

NAMES = ["sam", "asam", "gsam", "amp", "gam", "fd_gr", "ignite"]


@pytest.mark.parametrize("name", NAMES)
def test_registry_builds_each_and_train_step_takes_a_finite_step(name):
    torch.manual_seed(0)
    model = tasks.MODELS.get("mlp", (3,), 3, width=8).double()
    before = [p.detach().clone() for p in model.parameters()]
    base = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    reglab.optim.REGISTRY.check_kwargs(name, {"base": base}, complete=True)
    opt = reglab.optim.get(name, model.parameters(), base=base)
    assert reglab.optim.requires_closure(opt) and isinstance(opt.base, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9
    x, y = _data()
    record = train_step(model, (x, y), CrossEntropy(), opt)
    assert all(math.isfinite(v) for v in record.values())
    assert not opt.last_step_skipped
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert reglab.optim.REGISTRY.describe()[name]


def test_registry_kwargs_reach_the_optimizer():
    torch.manual_seed(0)
    a, b = _mlp(), _mlp()
    x, y = _data()
    opt_a = reglab.optim.get("gsam", a.parameters(), rho=0.1, alpha=0.2, base={"name": "sgd", "lr": 0.1})
    opt_b = GSAM(torch.optim.SGD(b.parameters(), lr=0.1), rho=0.1, alpha=0.2)
    opt_a.step(_closure(opt_a, a, x, y))
    opt_b.step(_closure(opt_b, b, x, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    asam = reglab.optim.get("asam", _mlp().parameters())
    assert asam.hyperparameters == {"rho": 0.5, "adaptive": True, "eta": 0.01}
    assert isinstance(reglab.optim.get("sam", _mlp().parameters(), base="adamw").base, torch.optim.AdamW)


def test_registry_errors_name_the_argument():
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        reglab.optim.get("sam", _mlp().parameters(), rhoo=0.1)
    with pytest.raises(ConfigError, match="base must be an optimizer name or a mapping"):
        reglab.optim.get("sam", _mlp().parameters(), base=3)
    with pytest.raises(ConfigError, match="base: optimizer 'sgd' has no argument 'rho'"):
        reglab.optim.get("sam", _mlp().parameters(), base={"name": "sgd", "lr": 0.1, "rho": 0.1})


def test_a_direction_that_overflows_is_not_applied():
    q = Quad()
    before = q.z()
    opt = FiniteDifferenceGR(torch.optim.SGD(q.parameters(), lr=0.1), gamma=1e300, eps=1e-300)  # gamma/eps = inf
    opt.step(quad_closure(opt, q))
    assert opt.last_step_skipped and torch.equal(q.z(), before)
