"""Curvature operators and estimators against dense float64 oracles on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab.core import ConfigError, ShapeError
from reglab.linalg.density import spectral_density
from reglab.linalg.eigen import lanczos, power_iteration
from reglab.linalg.functional import output_jvp, output_vjp, per_sample_gradients, select_params
from reglab.linalg.operators import HessianOperator, MatrixOperator
from reglab.linalg.trace import frobenius_norm, hutchinson, hutchpp


def make_net(d_in=4, width=12, k=3, seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, width)]
    if bn:
        layers.append(nn.BatchNorm1d(width))
    layers += [nn.Tanh(), nn.Linear(width, width), nn.Softplus(), nn.Linear(width, k)]
    return nn.Sequential(*layers).double()


def make_data(n=40, d_in=4, k=3, seed=1, regression=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64) if regression else torch.randint(0, k, (n,), generator=g)
    return x, y


def flat_loss(net, loss_fn, x, y):
    """The loss as a function of one flat parameter vector (the oracle's view of the model)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    buffers = {n: b.clone() for n, b in net.named_buffers()}

    def f(v):
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return loss_fn(torch.func.functional_call(net, {**params, **buffers}, (x,)), y)

    return f


def dense_hessian(net, loss_fn, x, y):
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return torch.autograd.functional.hessian(flat_loss(net, loss_fn, x, y), p0)


LOSSES = [(F.cross_entropy, False), (F.mse_loss, True)]


@pytest.mark.parametrize(("loss_fn", "regression"), LOSSES)
def test_hessian_to_dense_equals_autograd_hessian_over_batches(loss_fn, regression):
    net, (x, y) = make_net(), make_data(regression=regression)
    assert sum(p.numel() for p in net.parameters()) <= 2000
    H = HessianOperator(net, loss_fn, [(x[:13], y[:13]), (x[13:30], y[13:30]), (x[30:], y[30:])])
    torch.testing.assert_close(H.to_dense(), dense_hessian(net, loss_fn, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("loss_fn", "regression"), LOSSES)
def test_ggn_equals_jacobian_sandwich(loss_fn, regression):
    net, (x, y) = make_net(), make_data(regression=regression)
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    out_fn = flat_loss(net, lambda z, _: z, x, y)
    J = torch.autograd.functional.jacobian(out_fn, p0).reshape(-1, p0.numel())
    z = out_fn(p0).detach()
    H_out = torch.autograd.functional.hessian(lambda zz: loss_fn(zz.view_as(z), y), z.reshape(-1))
    G = HessianOperator(net, loss_fn, [(x[:25], y[:25]), (x[25:], y[25:])], curvature="ggn").to_dense()
    torch.testing.assert_close(G, J.T @ H_out @ J, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(G).min() > -1e-10  # PSD for convex losses


def test_empirical_fisher_equals_mean_outer_product_of_per_sample_gradients():
    net, (x, y) = make_net(), make_data()
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    rows = [
        torch.autograd.grad(flat_loss(net, F.cross_entropy, x[i : i + 1], y[i : i + 1])(p0.requires_grad_()), p0)[0]
        for i in range(len(x))
    ]
    G = torch.stack(rows)
    torch.testing.assert_close(per_sample_gradients(net, F.cross_entropy, x, y), G, rtol=1e-10, atol=1e-12)
    Fisher = HessianOperator(net, F.cross_entropy, [(x[:9], y[:9]), (x[9:], y[9:])], curvature="empirical_fisher")
    torch.testing.assert_close(Fisher.to_dense(), G.T @ G / len(x), rtol=1e-10, atol=1e-12)


def test_output_jvp_and_vjp_equal_explicit_jacobian():
    net, (x, _) = make_net(), make_data(n=6)
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    J = torch.autograd.functional.jacobian(flat_loss(net, lambda z, _: z, x, None), p0).reshape(-1, p0.numel())
    g = torch.Generator().manual_seed(3)
    v = torch.randn(p0.numel(), generator=g, dtype=torch.float64)
    u = torch.randn(6, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(output_jvp(net, x, v).reshape(-1), J @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(output_vjp(net, x, u), J.T @ u.reshape(-1), rtol=1e-10, atol=1e-12)


def test_parameter_subset_by_regex_names_and_module_is_the_dense_block():
    net, (x, y) = make_net(), make_data()
    full = dense_hessian(net, F.cross_entropy, x, y)
    sizes = [p.numel() for p in net.parameters()]
    start = sum(sizes[:2])  # block of layer "2" (weight, bias)
    block = full[start : start + sizes[2] + sizes[3], start : start + sizes[2] + sizes[3]]
    for selection in (r"^2\.", ["2.weight", "2.bias"], net[2], [net[2]]):
        H = HessianOperator(net, F.cross_entropy, (x, y), params=selection)
        assert H.names == ["2.weight", "2.bias"]
        torch.testing.assert_close(H.to_dense(), block, rtol=1e-10, atol=1e-12)


def test_parameter_selection_errors_name_the_problem():
    net = make_net()
    with pytest.raises(ConfigError, match="selects no trainable"):
        select_params(net, r"^nothing")
    with pytest.raises(ConfigError, match="unknown or frozen"):
        select_params(net, ["0.weight", "zzz"])
    with pytest.raises(ConfigError, match="curvature"):
        HessianOperator(net, F.cross_entropy, make_data(), curvature="fisherr")
    with pytest.raises(ConfigError, match="empty"):
        HessianOperator(net, F.cross_entropy, [])
    H = HessianOperator(net, F.cross_entropy, make_data())
    with pytest.raises(ShapeError, match="matvec expects"):
        H.matvec(torch.zeros(3, dtype=torch.float64))


def test_operator_leaves_model_buffers_mode_and_rng_untouched():
    net, (x, y) = make_net(bn=True), make_data()
    net.train()
    net[2].eval()  # a mixed-mode model: each submodule's mode must come back
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    H = HessianOperator(net, F.cross_entropy, (x, y))
    lanczos(H, k=2)
    hutchpp(H, n_probes=9)
    H.loss_and_gradient()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())


def test_float32_data_on_float64_model_and_loss_gradient():
    net, (x, y) = make_net(), make_data()
    H = HessianOperator(net, F.cross_entropy, (x.float(), y))
    assert H.dtype == torch.float64
    loss, g = H.loss_and_gradient()
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).requires_grad_()
    value = flat_loss(net, F.cross_entropy, x.float().double(), y)(p0)
    assert loss == pytest.approx(value.item(), rel=1e-12)
    torch.testing.assert_close(g, torch.autograd.grad(value, p0)[0], rtol=1e-10, atol=1e-12)


# -- eigenvalues ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss_fn", "regression"), LOSSES)
def test_lanczos_top5_match_eigvalsh(loss_fn, regression):
    net, (x, y) = make_net(), make_data(regression=regression)
    exact = torch.linalg.eigvalsh(dense_hessian(net, loss_fn, x, y)).flip(0)
    H = HessianOperator(net, loss_fn, (x, y))
    r = lanczos(H, k=5, tol=1e-10)
    assert r.converged and r.n_hvp == H.n_matvec
    torch.testing.assert_close(r.values, exact[:5], rtol=1e-6, atol=0)
    # the reported residuals are the true ones ‖A y − θ y‖ (up to round-off)
    dense = dense_hessian(net, loss_fn, x, y)
    true_res = (dense @ r.vectors - r.vectors * r.values).norm(dim=0)
    assert torch.all(true_res <= r.residuals + 1e-9)


def test_lanczos_smallest_and_magnitude_and_degenerate_spectrum():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(80, 80, generator=g, dtype=torch.float64)
    A = A + A.T
    ev = torch.linalg.eigvalsh(A)
    small = lanczos(MatrixOperator(A), k=3, which="smallest", tol=1e-10)
    torch.testing.assert_close(small.values, ev[:3], rtol=1e-8, atol=0)
    mag = lanczos(MatrixOperator(A), k=2, which="magnitude", tol=1e-10)
    torch.testing.assert_close(mag.values, ev[ev.abs().argsort(descending=True)][:2], rtol=1e-8, atol=0)
    # a multiple eigenvalue: the Krylov space closes after one step and Lanczos restarts
    r = lanczos(MatrixOperator(2 * torch.eye(6, dtype=torch.float64)), k=3)
    torch.testing.assert_close(r.values, torch.full((3,), 2.0, dtype=torch.float64))
    assert r.converged


def test_lanczos_reports_non_convergence_when_budget_runs_out():
    A = torch.diag(torch.linspace(1.0, 1.001, 500, dtype=torch.float64))  # clustered spectrum: slow
    r = lanczos(MatrixOperator(A), k=1, tol=1e-14, max_iter=5)
    assert not r.converged and r.n_hvp == 5


def test_power_iteration_with_deflation():
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.tensor([10.0, -6.0, 3.0]), torch.linspace(-1, 1, 27)]).double()
    A = Q @ torch.diag(spectrum) @ Q.T
    r = power_iteration(MatrixOperator(A), k=3, tol=1e-10, max_iter=5000)
    torch.testing.assert_close(r.values, torch.tensor([10.0, -6.0, 3.0], dtype=torch.float64), rtol=1e-8, atol=0)
    assert r.converged


# -- traces -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hessian_case():
    net, (x, y) = make_net(), make_data()
    dense = dense_hessian(net, F.cross_entropy, x, y)
    return HessianOperator(net, F.cross_entropy, (x, y)), dense


@pytest.mark.parametrize("estimator", [hutchinson, hutchpp])
def test_trace_estimators_unbiased_with_honest_stderr(hessian_case, estimator):
    """Over 200 seeds: the mean is within 3 standard errors of tr(H), and the reported
    stderr agrees with the spread of the estimates across seeds (ratio within ±25%,
    a wide band for the sampling error of a standard deviation from 200 draws)."""
    H, dense = hessian_case
    exact = float(torch.trace(dense))
    # the estimator sees only products: the Hessian operator and its dense matrix give the same estimate
    assert estimator(H, n_probes=30, seed=0).estimate == pytest.approx(
        estimator(MatrixOperator(dense), n_probes=30, seed=0).estimate, rel=1e-10
    )
    runs = [estimator(MatrixOperator(dense), n_probes=30, seed=s) for s in range(200)]
    estimates = torch.tensor([r.estimate for r in runs])
    spread = float(estimates.std())
    assert abs(float(estimates.mean()) - exact) <= 3 * spread / math.sqrt(len(runs))
    mean_reported = float(torch.tensor([r.stderr for r in runs]).mean())
    assert 0.75 <= mean_reported / spread <= 1.25
    assert all(r.n_hvp == 30 for r in runs)


def test_hutchpp_exact_for_low_rank_and_beats_hutchinson_on_decaying_spectrum():
    g = torch.Generator().manual_seed(0)
    n = 200
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    A = Q @ torch.diag(1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 2) @ Q.T
    exact = float(torch.trace(A))
    err_pp = [abs(hutchpp(MatrixOperator(A), 60, s).estimate - exact) for s in range(30)]
    err_h = [abs(hutchinson(MatrixOperator(A), 60, s).estimate - exact) for s in range(30)]
    assert sum(err_pp) < 0.5 * sum(err_h)
    low = Q[:, :4] @ torch.diag(torch.tensor([4.0, 3, 2, 1], dtype=torch.float64)) @ Q[:, :4].T
    r = hutchpp(MatrixOperator(low), n_probes=15)
    assert r.estimate == pytest.approx(10.0, abs=1e-10)


def test_frobenius_norm_estimate(hessian_case):
    H, dense = hessian_case
    exact = float(torch.linalg.matrix_norm(dense))
    runs = [frobenius_norm(MatrixOperator(dense), n_probes=40, seed=s).estimate for s in range(60)]
    assert runs[0] == pytest.approx(frobenius_norm(H, n_probes=40, seed=0).estimate, rel=1e-10)
    mean = sum(runs) / len(runs)
    spread = float(torch.tensor(runs).std())
    # sqrt of an unbiased estimate is biased low by O(var/norm); allow 3 stderr plus that bias bound
    assert abs(mean - exact) <= 3 * spread / math.sqrt(len(runs)) + spread**2 / exact


# -- spectral density ---------------------------------------------------------------------------------------------


def test_slq_density_integrates_to_one_and_moments_match(hessian_case):
    H, dense = hessian_case
    n = dense.shape[0]
    d = spectral_density(MatrixOperator(dense), n_probes=40, n_iter=n, seed=0)
    one = spectral_density(H, n_probes=1, n_iter=20, seed=0)
    torch.testing.assert_close(one.nodes[0], spectral_density(MatrixOperator(dense), 1, 20, 0).nodes[0])
    torch.testing.assert_close(d.weights.sum(dim=1), torch.ones(40, dtype=torch.float64))
    for power in (1, 2, 3):
        exact = float(torch.trace(torch.linalg.matrix_power(dense, power))) / n
        assert abs(d.moment(power) - exact) <= 3 * d.moment_stderr(power) + 1e-12
    lo, hi = float(d.nodes.min()), float(d.nodes.max())
    grid = torch.linspace(lo - 1, hi + 1, 4001, dtype=torch.float64)
    mass = torch.trapezoid(d.density(grid, sigma=0.05), grid)
    assert float(mass) == pytest.approx(1.0, abs=1e-6)


def test_slq_moment_exact_per_probe_for_low_powers():
    """Gauss quadrature with m nodes is exact for polynomials of degree <= 2m - 1: one probe's moment equals vᵀA^p v."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(50, 50, generator=g, dtype=torch.float64)
    A = (A + A.T) / 10
    d = spectral_density(MatrixOperator(A), n_probes=1, n_iter=3, seed=5)
    gen = torch.Generator().manual_seed(5)
    z = (torch.randint(0, 2, (50,), generator=gen) * 2 - 1).double()
    for p in range(6):  # 2m - 1 = 5
        exact = float(z @ torch.linalg.matrix_power(A, p) @ z) / 50
        assert d.moment(p) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_lanczos_finds_repeated_eigenvalues():
    """A multi-output linear model under MSE has every Hessian eigenvalue repeated once per output."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    net = nn.Linear(4, 3).double()
    exact = torch.linalg.eigvalsh(dense_hessian(net, F.mse_loss, x, y)).flip(0)
    assert torch.allclose(exact[0], exact[2])  # a triple eigenvalue on top
    r = lanczos(HessianOperator(net, F.mse_loss, (x, y)), k=5, tol=1e-10)
    torch.testing.assert_close(r.values, exact[:5], rtol=1e-8, atol=0)
    smallest = lanczos(HessianOperator(net, F.mse_loss, (x, y)), k=4, which="smallest", tol=1e-10)
    torch.testing.assert_close(smallest.values, exact.flip(0)[:4], rtol=1e-6, atol=1e-10)


def test_per_sample_gradients_and_fisher_with_a_reglab_loss_under_vmap():
    """reglab's losses validate targets in Python; under vmap they must still give the same per-example gradients."""
    from reglab.losses import CrossEntropy

    net, (x, y) = make_net(), make_data(n=12)
    G = per_sample_gradients(net, CrossEntropy(), x, y)
    torch.testing.assert_close(G, per_sample_gradients(net, F.cross_entropy, x, y), rtol=1e-12, atol=1e-14)
    fisher = HessianOperator(net, CrossEntropy(), (x, y), curvature="empirical_fisher").to_dense()
    torch.testing.assert_close(fisher, G.T @ G / len(x), rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_fall_back_when_the_loss_rejects_vmap():
    def picky(outputs, targets):
        assert float(targets.sum()) >= 0  # reads a value: impossible under vmap
        return F.cross_entropy(outputs, targets)

    net, (x, y) = make_net(), make_data(n=7)
    torch.testing.assert_close(
        per_sample_gradients(net, picky, x, y), per_sample_gradients(net, F.cross_entropy, x, y), rtol=1e-12, atol=1e-14
    )


# -- regressions found by the independent review ----------------------------------------------------------------


def test_hutchpp_small_probe_counts_are_never_falsely_exact():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(100, 100, generator=g, dtype=torch.float64))[0]
    A = U @ torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)) @ U.T
    r = hutchpp(MatrixOperator(A), n_probes=4)
    assert r.n_hvp == 4 and math.isfinite(r.stderr) and r.stderr > 0  # 1 sketch column, 2 residual probes
    with pytest.raises(ConfigError, match="n_probes"):
        hutchpp(MatrixOperator(A), n_probes=3)
    small = MatrixOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    exact = hutchpp(small, n_probes=9)  # the sketch spans the whole space
    assert exact.estimate == pytest.approx(6.0, abs=1e-12) and exact.stderr == 0.0


def test_parameters_unused_by_the_loss_have_zero_curvature_rows():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)

    torch.manual_seed(0)
    net = TwoHeads().double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    for curvature in ("hessian", "ggn", "empirical_fisher"):
        dense = HessianOperator(net, F.cross_entropy, (x, y), curvature=curvature).to_dense()
        assert torch.all(dense[8:, :] == 0) and torch.all(dense[:, 8:] == 0)
        assert dense[:8, :8].abs().max() > 0


def test_empirical_fisher_with_a_loss_that_rejects_vmap():
    def picky(outputs, targets):
        if (targets < 0).any():
            raise ValueError("negative labels")
        return F.cross_entropy(outputs, targets)

    net, (x, y) = make_net(), make_data(n=9)
    torch.testing.assert_close(
        HessianOperator(net, picky, (x, y), curvature="empirical_fisher").to_dense(),
        HessianOperator(net, F.cross_entropy, (x, y), curvature="empirical_fisher").to_dense(),
        rtol=1e-12,
        atol=1e-14,
    )


def test_a_dataloader_does_not_advance_the_callers_rng():
    from torch.utils.data import DataLoader, TensorDataset

    net, (x, y) = make_net(), make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    state = torch.get_rng_state()
    lanczos(HessianOperator(net, F.cross_entropy, loader), k=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_slq_padding_does_not_stretch_the_node_range():
    A = torch.diag(torch.tensor([5.0, 7.5, 10.0], dtype=torch.float64))
    d = spectral_density(MatrixOperator(A), n_probes=2, n_iter=20)  # the Krylov space closes after 3 steps
    assert float(d.nodes.min()) == pytest.approx(5.0) and d.moment(1) == pytest.approx(7.5, rel=0.5)


def symmetric_with_spectrum(spectrum, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(len(spectrum), len(spectrum), generator=g, dtype=torch.float64))[0]
    return Q @ torch.diag(spectrum) @ Q.T, Q


def test_lanczos_start_vector_saves_products_and_never_the_answer():
    spectrum = torch.cat([torch.tensor([10.0, 9.0, 8.5]), torch.linspace(-1.0, 1.0, 197)]).double()
    A, Q = symmetric_with_spectrum(spectrum)
    tol = 1e-8
    plain = lanczos(MatrixOperator(A), k=1, tol=tol, seed=0)
    near = Q[:, 0] + 0.01 * Q[:, 1:] @ torch.ones(199, dtype=torch.float64)  # a close guess of the top eigenvector
    guided = lanczos(MatrixOperator(A), k=1, tol=tol, seed=0, start=near)
    orthogonal = lanczos(MatrixOperator(A), k=1, tol=tol, seed=0, start=Q[:, 1])  # a guess with no top component
    for r in (plain, guided, orthogonal):
        assert r.converged
        # a Ritz value with residual ρ lies within ρ of an eigenvalue; with tol · |θ| < the gap 1, that is λ_max
        assert abs(float(r.values[0]) - 10.0) <= float(r.residuals[0]) <= tol * 10.0 * (1 + 1e-12)
    assert guided.n_hvp < plain.n_hvp
    # a zero start is no guess: the same sequence as without one
    zero = lanczos(MatrixOperator(A), k=1, tol=tol, seed=0, start=torch.zeros(200, dtype=torch.float64))
    assert torch.equal(zero.values, plain.values) and zero.n_hvp == plain.n_hvp
    with pytest.raises(ShapeError, match="start"):
        lanczos(MatrixOperator(A), start=torch.zeros(3, dtype=torch.float64))


def test_subsample_is_the_operator_of_the_drawn_examples():
    net, (x, y) = make_net(), make_data(n=60)
    H = HessianOperator(net, F.cross_entropy, [(x[:13], y[:13]), (x[13:41], y[13:41]), (x[41:], y[41:])])
    sub = H.subsample(17, torch.Generator().manual_seed(5))
    chosen = torch.randperm(60, generator=torch.Generator().manual_seed(5))[:17]
    assert sub.num_examples == 17 and sub.names == H.names
    torch.testing.assert_close(sub.to_dense(), dense_hessian(net, F.cross_entropy, x[chosen], y[chosen]))
    for curvature in ("ggn", "empirical_fisher"):
        whole = HessianOperator(net, F.cross_entropy, [(x[:20], y[:20]), (x[20:], y[20:])], curvature=curvature)
        same = whole.subsample(60, torch.Generator().manual_seed(0))
        torch.testing.assert_close(same.to_dense(), whole.to_dense(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="n_examples"):
        H.subsample(61, torch.Generator())
