"""Curvature diagnostics: eigenvalues, trace, density, stability report and the sharpness probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab import tasks
from reglab.core import ConfigError
from reglab.diagnostics.curvature import (
    SharpnessProbe,
    hessian_density,
    hessian_eigs,
    hessian_trace,
    stability_report,
)
from reglab.diagnostics.plots import plot_density
from reglab.losses import CrossEntropy
from reglab.train import Trainer


def linear_regression(n=64, d=5, seed=0):
    """A linear model under MSE: L = (1/n)Σ(wᵀx + b − y)², so H = (2/n) X̃ᵀX̃ exactly, at every θ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1).double()
    X = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # weight entries, then the bias
    return model, (x, y), 2 * X.T @ X / n


def test_eigs_trace_density_on_an_exact_quadratic():
    model, data, H = linear_regression()
    exact = torch.linalg.eigvalsh(H).flip(0)
    for method in ("lanczos", "power"):
        r = hessian_eigs(model, F.mse_loss, data, k=2, method=method, tol=1e-10, max_iter=5000)
        torch.testing.assert_close(r.values, exact[:2], rtol=1e-7, atol=0)
    assert hessian_trace(model, F.mse_loss, data, method="exact").estimate == pytest.approx(float(H.trace()), rel=1e-12)
    # n = 6 parameters: a Hutch++ sketch of ceil(9/3) = 3 columns plus 3 residual probes, unbiased
    estimates = [hessian_trace(model, F.mse_loss, data, n_probes=9, seed=s).estimate for s in range(100)]
    spread = float(torch.tensor(estimates).std())
    assert abs(sum(estimates) / 100 - float(H.trace())) <= 3 * spread / 10
    density = hessian_density(model, F.mse_loss, data, n_probes=3, n_iter=6)
    assert density.moment(1) == pytest.approx(float(H.trace()) / 6, rel=0.5)  # 3 probes: a loose sanity band
    assert density.moment(0) == pytest.approx(1.0, abs=1e-12)


def test_per_layer_curvature_and_curvature_kinds():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 2, (30,))
    full = hessian_eigs(net, F.cross_entropy, (x, y), k=1, tol=1e-10).values[0]
    last = hessian_eigs(net, F.cross_entropy, (x, y), k=1, tol=1e-10, params=net[2]).values[0]
    assert last <= full + 1e-10  # a principal submatrix's top eigenvalue is at most the whole one's
    ggn = hessian_eigs(net, F.cross_entropy, (x, y), k=1, tol=1e-10, curvature="ggn").values[0]
    assert ggn > 0
    with pytest.raises(ConfigError, match="method"):
        hessian_eigs(net, F.cross_entropy, (x, y), method="arnoldi")
    with pytest.raises(ConfigError, match="which"):
        hessian_eigs(net, F.cross_entropy, (x, y), method="power", which="smallest")
    with pytest.raises(ConfigError, match="method"):
        hessian_trace(net, F.cross_entropy, (x, y), method="hutch")


def test_stability_report_on_a_quadratic_matches_the_conditions():
    model, data, H = linear_regression()
    lam, tr = float(torch.linalg.eigvalsh(H).max()), float(H.trace())
    frob = float(torch.linalg.matrix_norm(H))
    lr = 1.0 / lam  # 2/η = 2λ_max: GD-stable
    r = stability_report(model, F.mse_loss, data, lr=lr, batch_size=4, n_probes=60, tol=1e-10)
    assert r.threshold == pytest.approx(2 / lr)
    assert r.lambda_max == pytest.approx(lam, rel=1e-8)
    assert r.gd_stable is True
    assert abs(r.trace - tr) <= 4 * r.trace_stderr + 1e-9
    assert r.sgd_stable == (r.trace <= 2 / lr)
    assert abs(r.frobenius - frob) <= 4 * r.frobenius_stderr + frob**2 / 60  # delta-method band plus sqrt bias
    assert r.frobenius_bound == pytest.approx(math.sqrt(4) / lr)
    unstable = stability_report(model, F.mse_loss, data, lr=2.5 / lam, n_probes=30, tol=1e-10)
    assert unstable.gd_stable is False and unstable.sgd_stable is False and unstable.frobenius_bound is None
    assert r.to_dict()["lambda_max"] == r.lambda_max
    with pytest.raises(ConfigError, match="lr"):
        stability_report(model, F.mse_loss, data, lr=0.0)
    with pytest.raises(ConfigError, match="batch_size"):
        stability_report(model, F.mse_loss, data, lr=0.1, batch_size=0)


def test_density_plot_is_written(tmp_path):
    model, data, _ = linear_regression()
    path = plot_density(hessian_density(model, F.mse_loss, data, n_probes=2, n_iter=6), tmp_path / "d.png")
    assert path.stat().st_size > 1000


def test_sharpness_probe_in_a_trainer_run():
    task = tasks.get("two_moons", n=200, n_test=50)
    model = task.make_model(width=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = SharpnessProbe(every=5, n_examples=64, trace=True, n_probes=9)
    result = Trainer(
        task,
        model,
        CrossEntropy(),
        torch.optim.SGD(model.parameters(), lr=0.05),
        steps=10,
        batch_size=20,
        callbacks=[probe],
    ).fit()
    rows = [(s, name, v) for s, split, name, v in result.history if split == "probe"]
    assert {s for s, *_ in rows} == {0, 5, 10}
    assert {name for _, name, _ in rows} == {"sharpness", "sharpness_trace", "stability_threshold"}
    assert all(math.isfinite(v) for *_, v in rows)
    assert all(v == pytest.approx(2 / 0.05) for _, name, v in rows if name == "stability_threshold")
    # at step 0 the probe measured the initial model: compare with a direct computation on the same subsample
    model.load_state_dict(state)
    x, y = result_subsample(task, 64)
    first = next(v for s, name, v in rows if s == 0 and name == "sharpness")
    direct = hessian_eigs(model, CrossEntropy(), (x, y), tol=1e-3).values[0]
    assert first == pytest.approx(float(direct), rel=1e-2)
    with pytest.raises(ConfigError, match="n_examples"):
        SharpnessProbe(n_examples=0)


def result_subsample(task, n):
    x, y, _ = tasks.as_tensors(task.train)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return x[idx], y[idx]


def test_power_method_means_largest_magnitude_and_says_so():
    model, data, _ = linear_regression()
    assert hessian_eigs(model, F.mse_loss, data, method="power", tol=1e-8).values.shape == (1,)
    with pytest.raises(ConfigError, match="magnitude"):
        hessian_eigs(model, F.mse_loss, data, method="power", which="largest")


def test_probes_fall_back_to_plain_losses_for_losses_with_per_example_state():
    from reglab.losses import get as get_loss

    task = tasks.get("two_moons", n=100, n_test=40)
    model = task.make_model(width=8)
    elr = get_loss("elr", num_examples=len(task.train), num_classes=2)
    result = Trainer(
        task,
        model,
        elr,
        torch.optim.SGD(model.parameters(), lr=0.05),
        steps=4,
        batch_size=20,
        callbacks=[SharpnessProbe(every=2, n_examples=32)],
    ).fit()
    assert result.status == "done"
    assert all(math.isfinite(v) for _, split, name, v in result.history if split == "probe")


def test_warm_started_eigenvalues_match_the_dense_hessian_and_report_both_costs():
    """N = 1024 examples: Lanczos starts from Lanczos on 128 of them; the answer still meets tol."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1024, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (1024,), generator=g)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    p0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    names, shapes = [n for n, _ in net.named_parameters()], [p.shape for p in net.parameters()]

    def loss(v):
        params = dict(zip(names, (c.view(s) for c, s in zip(v.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, p0)).flip(0)
    tol = 1e-8
    warm = hessian_eigs(net, F.cross_entropy, (x, y), k=2, tol=tol)
    cold = hessian_eigs(net, F.cross_entropy, (x, y), k=2, tol=tol, warm_start=None)
    for r in (warm, cold):
        assert r.converged
        # each Ritz value is within its residual (<= tol · θ_max) of an eigenvalue, here the right one: the top
        # three eigenvalues are 0.68, 0.50, 0.28, far more than tol apart
        assert torch.all((r.values - exact[:2]).abs() <= r.residuals + 1e-12)
    assert warm.extra["warm_start_examples"] == 128 and warm.extra["warm_start_hvp"] > 0
    assert warm.extra["full_product_equivalents"] == warm.n_hvp + warm.extra["warm_start_hvp"] / 8
    assert "warm_start_hvp" not in cold.extra
    with pytest.raises(ConfigError, match="warm_start"):
        hessian_eigs(net, F.cross_entropy, (x, y), warm_start=1.5)
