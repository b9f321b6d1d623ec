"""Loss landscapes: 1-D curves, barriers, 2-D surfaces, filter normalization, random sharpness and its probe.

Oracles are written here in float64: the exact quadratic expansion of an MSE
linear model (whose loss is a polynomial of degree 2 in θ), dense Hessians from
``torch.autograd.functional.hessian``, models rebuilt with ``load_state_dict``
at each interpolated point, and a hand-built network whose permuted copy
computes the same function. Tolerances: sums of ≤ 60 float64 terms of size
O(10) carry round-off ≲ 60·2.2e-16·10 ≈ 1e-13, so ``TOL = 1e-11`` (100× margin);
Lanczos' eigenpairs are checked against its stopping rule (relative residual
≤ ``hessian_tol``).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reglab import tasks
from reglab.core import ConfigError, ShapeError
from reglab.diagnostics import (
    LandscapeResult,
    RandomSharpnessProbe,
    SurfaceResult,
    along_direction,
    barrier,
    interpolate,
    normalize_direction,
    plot_contour,
    plot_curve,
    plot_surface,
    random_directions,
    random_sharpness,
    surface,
)
from reglab.diagnostics.registry import REGISTRY
from reglab.losses import CrossEntropy
from reglab.train import Trainer

TOL = 1e-11


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- a model whose loss is exactly quadratic in θ ---------------------------------------------------------------------


@pytest.fixture
def quad():
    """Linear(4, 3) with MSE on 20 examples: L(W, b) = mean((X Wᵀ + b − Y)²), a quadratic in θ = (W, b)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    g = _gen(1)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    return model, x, y


def _split(v: torch.Tensor, m: int = 3, d_in: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat direction of Linear(d_in, m) as (dW, db) in named_parameters order (weight, then bias)."""
    return v[: m * d_in].view(m, d_in), v[m * d_in : m * d_in + m]


def _quadratic(model, x, y, directions):
    """Coefficients of L(θ + Σ_k t_k d_k) = L0 + Σ_k g_k t_k + Σ_kl C_kl t_k t_l, exactly (a degree-2 polynomial)."""
    W, b = model.weight.detach(), model.bias.detach()
    r = x @ W.T + b - y
    n = r.numel()
    us = []
    for d in directions:
        dW, db = _split(d, *W.shape)
        us.append(x @ dW.T + db)
    L0 = float((r * r).sum() / n)
    g = torch.stack([2 * (r * u).sum() / n for u in us])
    C = torch.stack([torch.stack([(u * v).sum() / n for v in us]) for u in us])
    return L0, g, C


def _flat(d: dict) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


def test_along_direction_is_the_closed_form_quadratic(quad):
    model, x, y = quad
    d = torch.randn(15, generator=_gen(2), dtype=torch.float64)
    alphas = torch.linspace(-2, 2, 9, dtype=torch.float64)
    r = along_direction(model, F.mse_loss, (x, y), d, alphas=alphas)
    L0, g, C = _quadratic(model, x, y, [d])
    expected = L0 + alphas * g[0] + alphas**2 * C[0, 0]
    torch.testing.assert_close(r.loss, expected, rtol=TOL, atol=TOL)
    assert r.kind == "direction" and r.accuracy is None  # float targets: no accuracy
    assert r.center_loss == pytest.approx(L0, rel=TOL) and r.direction_norm == pytest.approx(float(d.norm()))
    assert r.n_evals == len(alphas)  # α = 0 is on the grid and reused
    # the same direction as a dict; a dict missing "bias" moves the bias by zero
    dW, db = _split(d)
    same = along_direction(model, F.mse_loss, (x, y), {"weight": dW, "bias": db}, alphas=alphas)
    torch.testing.assert_close(same.loss, r.loss, rtol=0, atol=0)
    weight_only = along_direction(model, F.mse_loss, (x, y), {"weight": dW}, alphas=alphas)
    L0, g, C = _quadratic(model, x, y, [torch.cat([dW.reshape(-1), torch.zeros(3, dtype=torch.float64)])])
    torch.testing.assert_close(weight_only.loss, L0 + alphas * g[0] + alphas**2 * C[0, 0], rtol=TOL, atol=TOL)


def test_along_random_direction_uses_the_first_random_direction(quad):
    model, x, y = quad
    r = along_direction(model, F.mse_loss, (x, y), "random", n_points=7, span=(-0.5, 0.5), seed=4)
    d = _flat(random_directions(model, k=1, seed=4)[0])
    assert torch.equal(r.direction, d)
    L0, g, C = _quadratic(model, x, y, [d])
    a = torch.linspace(-0.5, 0.5, 7, dtype=torch.float64)
    torch.testing.assert_close(r.loss, L0 + a * g[0] + a**2 * C[0, 0], rtol=TOL, atol=TOL)


def test_surface_random_is_the_closed_form_quadratic(quad):
    model, x, y = quad
    s = surface(model, F.mse_loss, (x, y), "random", span=(-1.5, 1.5), resolution=5, seed=3)
    d1, d2 = (_flat(d) for d in random_directions(model, k=2, seed=3))
    assert torch.equal(s.directions[0], d1) and torch.equal(s.directions[1], d2)
    L0, g, C = _quadratic(model, x, y, [d1, d2])
    A, B = torch.meshgrid(s.alphas, s.betas, indexing="ij")
    expected = L0 + g[0] * A + g[1] * B + C[0, 0] * A**2 + 2 * C[0, 1] * A * B + C[1, 1] * B**2
    torch.testing.assert_close(s.loss, expected, rtol=TOL, atol=TOL)
    assert s.loss.shape == (5, 5) and s.accuracy is None and s.directions_kind == "random"
    assert s.center_loss == pytest.approx(L0, rel=TOL) and s.n_evals == 26 and s.n_hvp == 0


def test_surface_given_directions_and_hessian_directions(quad):
    # one output: with m outputs the MSE Hessian is I_m ⊗ (2/(nm)) AᵀA and every eigenvalue is m-fold, which a
    # single-vector Lanczos cannot resolve (it returns the distinct eigenvalues); one output keeps them simple
    _, x, _ = quad
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    y = torch.randn(20, 1, generator=_gen(3), dtype=torch.float64)
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).clone()

    def loss_of(flat):
        W, b = _split(flat, 1, 4)
        return F.mse_loss(x @ W.T + b, y)

    H = torch.autograd.functional.hessian(loss_of, theta)
    evals, evecs = torch.linalg.eigh(H)
    top = evals.flip(0)[:2]
    s = surface(model, F.mse_loss, (x, y), "hessian", resolution=3, seed=0, hessian_tol=1e-4)
    assert s.directions_kind == "hessian" and s.n_hvp > 0
    # Lanczos' stopping rule: ‖H d − λ d‖ <= tol·|λ_max| for each returned pair, so |λ − λ_exact| is within it too
    bound = 1e-4 * float(top[0]) + TOL
    for lam, d, exact in zip(s.eigenvalues, s.directions, top, strict=True):
        assert float(d.norm()) == pytest.approx(1.0, abs=TOL)
        assert float((H @ d - lam * d).norm()) <= bound
        assert abs(lam - float(exact)) <= bound
    d1, d2 = s.directions
    L0, g, C = _quadratic(model, x, y, [d1, d2])
    A, B = torch.meshgrid(s.alphas, s.betas, indexing="ij")
    expected = L0 + g[0] * A + g[1] * B + C[0, 0] * A**2 + 2 * C[0, 1] * A * B + C[1, 1] * B**2
    torch.testing.assert_close(s.loss, expected, rtol=TOL, atol=TOL)
    # a given pair is used as it is (here: the exact eigenvectors, as dicts and as a flat vector)
    e1, e2 = evecs[:, -1], evecs[:, -2]
    dict_e1 = {"weight": _split(e1, 1, 4)[0], "bias": _split(e1, 1, 4)[1]}
    given = surface(model, F.mse_loss, (x, y), (dict_e1, e2), resolution=3)
    L0, g, C = _quadratic(model, x, y, [e1, e2])
    expected = L0 + g[0] * A + g[1] * B + C[0, 0] * A**2 + 2 * C[0, 1] * A * B + C[1, 1] * B**2
    torch.testing.assert_close(given.loss, expected, rtol=TOL, atol=TOL)
    assert given.directions_kind == "given" and given.eigenvalues is None


# -- interpolation ----------------------------------------------------------------------------------------------------


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():  # move the running statistics away from their initial values
        net.train()
        net(torch.randn(32, 3, generator=_gen(seed + 100), dtype=torch.float64) * (1 + seed) + seed)
    return net


def _classification_data(n=20, seed=7):
    g = _gen(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _oracle_at(a: nn.Module, b: nn.Module, alpha: float, buffers: str, x, y):
    """Loss and accuracy of a rebuilt network with the interpolated state, in eval mode."""
    sa, sb = a.state_dict(), b.state_dict()
    params = {n for n, _ in a.named_parameters()}
    state = {}
    for n, t in sa.items():
        mix = n in params or (buffers == "interpolate" and t.is_floating_point())
        state[n] = (1 - alpha) * t + alpha * sb[n] if mix else t
    net = copy.deepcopy(a)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


@pytest.mark.parametrize("buffers", ["interpolate", "model_a"])
def test_interpolation_matches_rebuilt_networks_and_endpoints(buffers):
    a, b = _bn_net(0), _bn_net(1)
    x, y = _classification_data()
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    r = interpolate(a, b, F.cross_entropy, (x, y), alphas=alphas, buffers=buffers)
    oracle = [_oracle_at(a, b, t, buffers, x, y) for t in alphas]
    torch.testing.assert_close(r.loss, torch.tensor([o[0] for o in oracle], dtype=torch.float64), rtol=TOL, atol=TOL)
    assert r.accuracy.tolist() == [o[1] for o in oracle]
    # the endpoints are the two models (with model_a's running statistics at α = 1 under buffers="model_a")
    for net, value, acc in ((a, r.loss_a, r.accuracy_a), (b, r.loss_b, r.accuracy_b)):
        if net is b and buffers == "model_a":
            net = copy.deepcopy(b)
            net.load_state_dict({**b.state_dict(), **dict(a.named_buffers())})
        net = copy.deepcopy(net).eval()
        with torch.no_grad():
            out = net(x)
        assert value == pytest.approx(float(F.cross_entropy(out, y)), rel=TOL, abs=TOL)
        assert acc == float((out.argmax(1) == y).double().mean())
    assert r.n_evals == len(alphas)  # both endpoints on the grid: reused
    lin = max(float(v) - ((1 - t) * r.loss_a + t * r.loss_b) for t, v in zip(alphas, r.loss, strict=True))
    assert r.loss_barrier == pytest.approx(lin, abs=TOL)


def test_interpolation_over_batches_weights_them_by_size():
    a, b = _bn_net(0), _bn_net(1)
    x, y = _classification_data(n=23)
    whole = interpolate(a, b, F.cross_entropy, (x, y), n_points=5)
    loader = DataLoader(TensorDataset(x, y, torch.arange(23)), batch_size=7)  # batches of 7, 7, 7, 2 with indices
    batched = interpolate(a, b, F.cross_entropy, loader, n_points=5)
    torch.testing.assert_close(batched.loss, whole.loss, rtol=TOL, atol=TOL)
    assert batched.accuracy.tolist() == whole.accuracy.tolist()
    assert torch.equal(whole.alphas, torch.linspace(0, 1, 5, dtype=torch.float64))


def test_interpolation_endpoints_evaluated_when_off_the_grid():
    a, b = _bn_net(0), _bn_net(1)
    x, y = _classification_data()
    r = interpolate(a, b, F.cross_entropy, (x, y), alphas=[0.3, 0.6])
    assert r.n_evals == 4
    assert r.loss_a == pytest.approx(_oracle_at(a, b, 0.0, "interpolate", x, y)[0], rel=TOL)
    assert r.loss_b == pytest.approx(_oracle_at(a, b, 1.0, "interpolate", x, y)[0], rel=TOL)


# -- barriers ---------------------------------------------------------------------------------------------------------


def test_barrier_of_two_identical_models_is_zero():
    a = _bn_net(3)
    x, y = _classification_data()
    r = interpolate(a, copy.deepcopy(a), F.cross_entropy, (x, y), n_points=11)
    # (1−α)θ + αθ equals θ up to one rounding per entry, so the loss moves by round-off only
    assert abs(r.loss_barrier) <= TOL and abs(r.loss_barrier_mean) <= TOL
    assert r.error_barrier == 0.0 and r.error_barrier_mean == 0.0


class _TwoUnit(nn.Module):
    """x -> W2 tanh(W1 x), 2 hidden units, 2 logits."""

    def __init__(self, W1, W2):
        super().__init__()
        self.hidden = nn.Linear(2, 2, bias=False, dtype=torch.float64)
        self.out = nn.Linear(2, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.hidden.weight.copy_(W1)
            self.out.weight.copy_(W2)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def test_barrier_of_a_network_and_its_permutation():
    """Swapping the hidden units keeps the function; halfway the units coincide and the logits vanish."""
    W1 = torch.eye(2, dtype=torch.float64) * 3
    W2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64) * 2
    P = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a, b = _TwoUnit(W1, W2), _TwoUnit(P @ W1, W2 @ P.T)
    x = torch.randn(40, 2, generator=_gen(9), dtype=torch.float64)
    y = (x[:, 1] > x[:, 0]).long()  # class 0 when tanh(3x1) > tanh(3x2)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    alphas = torch.linspace(0, 1, 11, dtype=torch.float64)
    r = interpolate(a, b, F.cross_entropy, (x, y), alphas=alphas)
    # oracle: the path written out by hand
    losses, errors = [], []
    for t in alphas.tolist():
        W1t, W2t = (1 - t) * W1 + t * (P @ W1), (1 - t) * W2 + t * (W2 @ P.T)
        out = torch.tanh(x @ W1t.T) @ W2t.T
        losses.append(float(F.cross_entropy(out, y)))
        errors.append(float((out.argmax(1) != y).double().mean()))
    torch.testing.assert_close(r.loss, torch.tensor(losses, dtype=torch.float64), rtol=TOL, atol=TOL)
    assert (1 - r.accuracy).tolist() == pytest.approx(errors, abs=1e-15)
    assert float(r.loss[5]) == pytest.approx(math.log(2), abs=TOL)  # zero logits halfway
    assert errors[5] == float((y == 1).double().mean())  # ties go to class 0
    L0, L1 = losses[0], losses[-1]
    assert L0 == pytest.approx(L1, abs=TOL)
    expected = max(v - ((1 - t) * L0 + t * L1) for t, v in zip(alphas.tolist(), losses, strict=True))
    assert r.loss_barrier == pytest.approx(expected, abs=TOL) and r.loss_barrier > 0.3
    e0, e1 = errors[0], errors[-1]
    expected_error = max(v - ((1 - t) * e0 + t * e1) for t, v in zip(alphas.tolist(), errors, strict=True))
    assert r.error_barrier == pytest.approx(expected_error, abs=1e-15) and r.error_barrier > 0.2
    assert r.loss_barrier_mean == pytest.approx(max(losses) - (L0 + L1) / 2, abs=TOL)


def test_barrier_function_definitions():
    assert barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0], 1.0, 2.0) == pytest.approx(1.5)  # 3 − (1 + 2)/2 at α = ½
    assert barrier([0.25], [1.0], 0.0, 4.0, baseline="linear") == pytest.approx(0.0)  # endpoints count: max(0, 0, 0)
    assert barrier([0.25], [1.0], 0.0, 4.0, baseline="mean") == pytest.approx(2.0)  # max(1, 0, 4) − 2
    with pytest.raises(ConfigError, match="same length"):
        barrier([0.0, 1.0], [1.0], 0.0, 1.0)
    with pytest.raises(ConfigError, match="baseline"):
        barrier([0.5], [1.0], 0.0, 1.0, baseline="max")


# -- filter normalization, determinism, invariants --------------------------------------------------------------------


def _conv_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.LayerNorm(5)
    ).double()


def test_filter_normalization_matches_each_weight_filter_and_zeroes_bias_and_bn():
    net = _conv_net()
    params = dict(net.named_parameters())
    for d in random_directions(net, k=2, seed=5):
        assert list(d) == list(params)
        for name, t in d.items():
            theta = params[name].detach()
            if theta.dim() <= 1:  # conv/linear biases, BatchNorm and LayerNorm weights and biases
                assert torch.count_nonzero(t) == 0, name
            else:  # each output channel / row has its weight filter's norm
                torch.testing.assert_close(
                    t.reshape(len(t), -1).norm(dim=1), theta.reshape(len(theta), -1).norm(dim=1), rtol=TOL, atol=0
                )
    # layer normalization: each parameter tensor has the weight's norm; ignore="none" keeps θ on 1-D parameters
    d = random_directions(net, seed=5, normalization="layer", ignore="none")[0]
    for name, t in d.items():
        theta = params[name].detach()
        if theta.dim() <= 1:
            assert torch.equal(t, theta), name
        else:
            assert float(t.norm()) == pytest.approx(float(theta.norm()), rel=TOL)
    # a given direction: a zero filter stays zero, the others take the weight's filter norm
    w = torch.ones(5, 36, dtype=torch.float64)
    w[2] = 0
    nd = normalize_direction(net, {"4.weight": w})
    norms = nd["4.weight"].norm(dim=1)
    assert norms[2] == 0
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(norms[keep], params["4.weight"].detach().norm(dim=1)[keep], rtol=TOL, atol=0)
    assert torch.count_nonzero(nd["0.weight"]) == 0  # missing names are zero directions


def test_random_directions_are_deterministic_in_the_seed_and_leave_the_global_rng_alone():
    net = _conv_net()
    state = torch.get_rng_state()
    first, again, other = (random_directions(net, k=2, seed=s) for s in (11, 11, 12))
    assert torch.equal(torch.get_rng_state(), state)
    for d, e, f in zip(first, again, other, strict=True):
        assert all(torch.equal(d[n], e[n]) for n in d)
        assert not torch.equal(d["0.weight"], f["0.weight"])


def _snapshot(model: nn.Module):
    return (
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
        [m.training for m in model.modules()],
    )


def test_diagnostics_leave_model_and_global_rng_unchanged():
    a, b = _bn_net(0), _bn_net(1)
    a.train()
    a[1].eval()  # a mixed mode, to see that each submodule's own mode comes back
    x, y = _classification_data()
    before, before_b, rng = _snapshot(a), _snapshot(b), torch.get_rng_state()
    interpolate(a, b, F.cross_entropy, (x, y), n_points=3)
    along_direction(a, F.cross_entropy, (x, y), "random", n_points=3)
    surface(a, F.cross_entropy, (x, y), "random", resolution=2)
    surface(a, F.cross_entropy, (x, y), "hessian", resolution=2)
    random_sharpness(a, F.cross_entropy, (x, y), n_directions=2)
    after = _snapshot(a)
    for one, two in ((before, after), (before_b, _snapshot(b))):
        assert all(torch.equal(one[0][n], two[0][n]) for n in one[0])
        assert all(torch.equal(one[1][n], two[1][n]) for n in one[1])
        assert one[2] == two[2]
    assert torch.equal(torch.get_rng_state(), rng)


# -- random sharpness and its probe -----------------------------------------------------------------------------------


def test_random_sharpness_is_the_quadratic_increase(quad):
    model, x, y = quad
    r, k = 0.2, 3
    s = random_sharpness(model, F.mse_loss, (x, y), radius=r, n_directions=k, seed=6)
    ds = [_flat(d) for d in random_directions(model, k=k, seed=6)]
    L0, g, C = _quadratic(model, x, y, ds)
    increases = [sign * r * float(g[i]) + r * r * float(C[i, i]) for i in range(k) for sign in (1.0, -1.0)]
    assert s.increases == pytest.approx(increases, abs=TOL)
    assert s.sharpness == pytest.approx(max(increases), abs=TOL)
    assert s.mean_increase == pytest.approx(sum(increases) / (2 * k), abs=TOL)
    assert s.base_loss == pytest.approx(L0, rel=TOL) and s.n_evals == 2 * k + 1


def test_random_sharpness_probe_in_a_trainer_run():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=300, n_test=100)
    model = task.make_model(width=16, depth=1)
    probe = REGISTRY.get("random_sharpness", every=3, radius=0.1, n_directions=2, max_examples=200, seed=1)
    assert isinstance(probe, RandomSharpnessProbe)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = Trainer(task, model, CrossEntropy(), opt, steps=6, batch_size=32, eval_every=6, callbacks=[probe]).fit()
    logged = {}
    for step, split, name, value in result.history:
        if split == "probe":
            logged.setdefault(name, []).append((step, value))
    assert set(logged) == {"sharpness_1d", "sharpness_1d_mean"}
    for rows in logged.values():
        assert [s for s, _ in rows] == [0, 3, 6] and all(math.isfinite(v) for _, v in rows)
    # the last logged value is random_sharpness of the final model on the probe's fixed subsample
    x, y, _ = tasks.as_tensors(task.train)
    keep = torch.randperm(len(x), generator=_gen(1))[:200].sort().values
    direct = random_sharpness(model, CrossEntropy(), (x[keep], y[keep]), radius=0.1, n_directions=2, seed=1)
    assert logged["sharpness_1d"][-1][1] == pytest.approx(direct.sharpness, rel=1e-6, abs=1e-9)


# -- results, plots, validation ---------------------------------------------------------------------------------------


def test_results_serialize_and_plots_are_written(tmp_path):
    a, b = _bn_net(0), _bn_net(1)
    x, y = _classification_data()
    curve = interpolate(a, b, F.cross_entropy, (x, y), n_points=5)
    line = along_direction(a, F.cross_entropy, (x, y), "random", n_points=5)
    surf = surface(a, F.cross_entropy, (x, y), "random", resolution=4)
    assert isinstance(curve, LandscapeResult) and isinstance(surf, SurfaceResult)
    for result in (curve, line, surf, random_sharpness(a, F.cross_entropy, (x, y))):
        back = json.loads(json.dumps(result.to_dict()))  # numbers and lists only
        assert "direction" not in back and "directions" not in back  # the direction tensors are left out
    assert len(surf.to_dict()["accuracy"]) == 4 and len(surf.to_dict()["loss"][0]) == 4
    paths = [
        plot_curve(curve, tmp_path / "curve.png"),
        plot_curve(line, tmp_path / "line.png"),
        plot_contour(surf, tmp_path / "contour.png"),
        plot_surface(surf, tmp_path / "surface.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, d: interpolate(m, nn.Linear(3, 4).double(), F.cross_entropy, d), "model_b"),
        (lambda m, d: interpolate(m, nn.Sequential(nn.Linear(3, 3)).double(), F.cross_entropy, d), "model_b"),
        (lambda m, d: interpolate(m, m, F.cross_entropy, d, n_points=1), "n_points"),
        (lambda m, d: interpolate(m, m, F.cross_entropy, d, alphas=[]), "alphas"),
        (lambda m, d: interpolate(m, m, F.cross_entropy, d, alphas=[[0.0, 1.0]]), "alphas"),
        (lambda m, d: interpolate(m, m, F.cross_entropy, d, alphas=[0.0, math.nan]), "alphas"),
        (lambda m, d: interpolate(m, m, F.cross_entropy, d, buffers="model_b"), "buffers"),
        (lambda m, d: interpolate(m, m, "ce", d), "loss_fn"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, "hessian"), "direction"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, torch.zeros(3)), "direction"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, {"nope": torch.zeros(1)}), "direction"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, {"weight": torch.zeros(3)}), "direction"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, 3.0), "direction"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, span=(1.0, -1.0)), "span"),
        (lambda m, d: along_direction(m, F.cross_entropy, d, normalization="unit"), "normalization"),
        (lambda m, d: surface(m, F.cross_entropy, d, resolution=1), "resolution"),
        (lambda m, d: surface(m, F.cross_entropy, d, directions="pca"), "directions"),
        (lambda m, d: surface(m, F.cross_entropy, d, directions=(torch.zeros(15),)), "directions"),
        (lambda m, d: surface(m, F.cross_entropy, d, span=(0.0,)), "span"),
        (lambda m, d: surface(m, F.cross_entropy, d, seed=-1), "seed"),
        (lambda m, d: surface(m, F.cross_entropy, d, ignore="bias"), "ignore"),
        (lambda m, d: random_sharpness(m, F.cross_entropy, d, radius=0.0), "radius"),
        (lambda m, d: random_sharpness(m, F.cross_entropy, d, n_directions=0), "n_directions"),
        (lambda m, d: random_directions(m, k=0), "k"),
        (lambda m, d: RandomSharpnessProbe(every=0), "every"),
        (lambda m, d: RandomSharpnessProbe(max_examples=0), "max_examples"),
    ],
)
def test_validation_errors_name_the_argument(call, match):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    data = (torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))
    with pytest.raises((ConfigError, ShapeError), match=match):
        call(model, data)
