"""Gradient coherence, gradient noise scale and grokking statistics against explicit float64 oracles."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab import tasks
from reglab.core import ConfigError, ShapeError
from reglab.diagnostics.gradient_probes import GradientCoherenceProbe, GradientNoiseScaleProbe, GrokkingStatsProbe
from reglab.diagnostics.gradients import (
    coherence_from_gradients,
    effective_learning_rate,
    gradient_coherence,
    gradient_noise_scale,
    grokking_statistics,
    noise_scale_from_gradients,
    noise_scale_two_batch,
    softmax_collapse_fraction,
    zero_loss_fraction,
)
from reglab.losses import CrossEntropy
from reglab.train import Trainer

# float64 round-off on sums of a few dozen products of O(1) numbers is ~1e-15; 1e-10 leaves a wide margin
# while any formula error (a missing 1/m, a dropped diagonal, n instead of n - 1) is O(0.1).
TOL = 1e-10


def _data(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _oracle_per_sample(model, loss_fn, x, y):
    """Per-example gradients by one autograd call per example (model in eval mode, on a copy)."""
    net = copy.deepcopy(model).eval()
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(loss_fn(net(x[i : i + 1]), y[i : i + 1]), list(net.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _loop_coherence(G):
    m = len(G)
    cross = sum(float(G[i] @ G[j]) for i in range(m) for j in range(m))
    diag = sum(float(G[i] @ G[i]) for i in range(m))
    return (cross / m**2) / (diag / m), (cross - diag) / (m * (m - 1)) / (diag / m)


class ItemLoss(nn.Module):
    """Cross-entropy that checks its targets with ``.item()``, so it cannot run under ``vmap`` (as reglab's losses)."""

    def forward(self, logits, targets):
        if int(targets.max()) >= logits.shape[1]:
            raise ValueError("bad target")
        return F.cross_entropy(logits, targets)


# -- coherence --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coherence_matches_double_loop(seed):
    G = torch.randn(7, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    r = coherence_from_gradients(G)
    alpha, off = _loop_coherence(G)
    assert r.alpha == pytest.approx(alpha, abs=TOL)
    assert r.m_coherence == pytest.approx(7 * alpha, abs=TOL)
    assert r.alpha_offdiagonal == pytest.approx(off, abs=TOL)
    assert r.m_coherence == pytest.approx(1 + 6 * r.alpha_offdiagonal, abs=TOL)


def test_coherence_limits():
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    same = coherence_from_gradients(g.repeat(6, 1))
    assert same.m_coherence == pytest.approx(6.0, abs=TOL) and same.alpha == pytest.approx(1.0, abs=TOL)
    orthogonal = coherence_from_gradients(torch.diag(torch.tensor([1.0, 3.0, 0.2, 7.0], dtype=torch.float64)))
    assert orthogonal.m_coherence == pytest.approx(1.0, abs=TOL) and orthogonal.alpha_offdiagonal == pytest.approx(0.0)
    opposite = coherence_from_gradients(torch.stack([g, -g]).double())
    assert opposite.m_coherence == pytest.approx(0.0, abs=TOL)
    assert math.isnan(coherence_from_gradients(torch.zeros(3, 2)).alpha)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_gradient_coherence_on_a_model(tiny, chunk_size):
    x, y = _data()
    r = gradient_coherence(tiny, F.cross_entropy, (x, y), chunk_size=chunk_size)
    alpha, _ = _loop_coherence(_oracle_per_sample(tiny, F.cross_entropy, x, y))
    assert r.m == 7 and r.n_grad == 7
    assert r.alpha == pytest.approx(alpha, abs=TOL)


def test_loss_that_rejects_vmap_gives_the_same_gradients(tiny):
    x, y = _data(9)
    batches = [(x[:4], y[:4], torch.arange(4)), (x[4:], y[4:], torch.arange(4, 9))]  # a DataLoader-like iterable
    a = gradient_coherence(tiny, ItemLoss(), batches, chunk_size=4)
    b = gradient_coherence(tiny, F.cross_entropy, (x, y))
    assert a.alpha == pytest.approx(b.alpha, abs=TOL) and a.mean_sq_norm == pytest.approx(b.mean_sq_norm, abs=TOL)
    c = gradient_noise_scale(tiny, CrossEntropy(), (x, y), b_small=2)  # reglab's loss, fallback path
    d = gradient_noise_scale(tiny, F.cross_entropy, (x, y), b_small=2)
    assert c.b_simple == pytest.approx(d.b_simple, rel=TOL) and c.b_simple_two_batch == pytest.approx(
        d.b_simple_two_batch, rel=TOL
    )


def test_subsample_is_seeded_and_leaves_the_global_rng(tiny):
    x, y = _data(20)
    state = torch.get_rng_state()
    a = gradient_coherence(tiny, F.cross_entropy, (x, y), max_examples=8, seed=3)
    b = gradient_coherence(tiny, F.cross_entropy, (x, y), max_examples=8, seed=3)
    c = gradient_coherence(tiny, F.cross_entropy, (x, y), max_examples=8, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.m == 8 and a.alpha == b.alpha and a.alpha != c.alpha


# -- gradient noise scale ---------------------------------------------------------------------------------------------


def _explicit_noise_scale(G):
    n = len(G)
    mean = G.mean(0)
    trace = float(torch.cov(G.T).trace())  # unbiased covariance, denominator n - 1
    g2 = float(mean @ mean) - trace / n
    return trace, g2, trace / g2


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_scale_matches_explicit_formula(seed):
    G = torch.randn(9, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1.0
    r = noise_scale_from_gradients(G)
    trace, g2, b = _explicit_noise_scale(G)
    assert (r.trace_sigma, r.grad_sq_norm, r.b_simple) == pytest.approx((trace, g2, b), rel=TOL)
    assert r.mean_grad_sq_norm == pytest.approx(float(G.mean(0).pow(2).sum()), rel=TOL)


def test_two_batch_estimator_matches_appendix_a():
    g2, tr = noise_scale_two_batch(small_sq_norm=5.0, big_sq_norm=2.0, b_small=2, b_big=8)
    assert g2 == pytest.approx((8 * 2.0 - 2 * 5.0) / 6) and tr == pytest.approx((5.0 - 2.0) / (1 / 2 - 1 / 8))
    with pytest.raises(ConfigError, match="b_big"):
        noise_scale_two_batch(1.0, 1.0, 4, 4)
    with pytest.raises(ConfigError, match="b_small"):
        noise_scale_two_batch(1.0, 1.0, 0, 4)


@pytest.mark.parametrize("chunk_size", [2, 4, 64])
def test_gradient_noise_scale_on_a_model(tiny, chunk_size):
    x, y = _data(14)
    r = gradient_noise_scale(tiny, F.cross_entropy, (x, y), b_small=3, seed=5, chunk_size=chunk_size)
    # the documented grouping: shuffle with randperm(n, Generator().manual_seed(seed)), groups of b_small, rest dropped
    perm = torch.randperm(14, generator=torch.Generator().manual_seed(5))
    G = _oracle_per_sample(tiny, F.cross_entropy, x[perm], y[perm])
    trace, g2, b = _explicit_noise_scale(G)
    assert (r.trace_sigma, r.grad_sq_norm, r.b_simple) == pytest.approx((trace, g2, b), rel=TOL)
    groups = G[:12].reshape(4, 3, -1).mean(1)
    small, big = float(groups.pow(2).sum(1).mean()), float(G[:12].mean(0).pow(2).sum())
    g2_tb = (12 * big - 3 * small) / (12 - 3)
    tr_tb = (small - big) / (1 / 3 - 1 / 12)
    assert (r.b_small, r.b_big) == (3, 12)
    assert (r.grad_sq_norm_two_batch, r.trace_sigma_two_batch) == pytest.approx((g2_tb, tr_tb), rel=TOL)
    assert r.b_simple_two_batch == pytest.approx(tr_tb / g2_tb, rel=TOL)


def test_two_batch_with_single_examples_equals_the_per_sample_estimate(tiny):
    x, y = _data(10)
    r = gradient_noise_scale(tiny, F.cross_entropy, (x, y), b_small=1)
    assert r.b_big == 10
    assert r.trace_sigma_two_batch == pytest.approx(r.trace_sigma, rel=TOL)
    assert r.grad_sq_norm_two_batch == pytest.approx(r.grad_sq_norm, rel=TOL)


def test_noise_scale_estimates_are_unbiased():
    """Gradients drawn from N(mu, diag(s^2)): the estimates average to |mu|^2 and sum(s^2) within 4 standard errors."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    reps, n, b_small = 2000, 8, 2
    G = mu + s * torch.randn(reps, n, 3, generator=gen, dtype=torch.float64)
    per_sample = [noise_scale_from_gradients(g) for g in G]
    two_batch = [
        noise_scale_two_batch(
            float(g.reshape(n // b_small, b_small, 3).mean(1).pow(2).sum(1).mean()), float(g.mean(0).pow(2).sum()), 2, n
        )
        for g in G
    ]
    truth = {"g2": float(mu @ mu), "trace": float((s * s).sum())}

    def check(values, target):
        v = torch.tensor(values, dtype=torch.float64)
        return abs(float(v.mean()) - target) / (float(v.std()) / math.sqrt(len(v)))

    assert check([r.grad_sq_norm for r in per_sample], truth["g2"]) < 4
    assert check([r.trace_sigma for r in per_sample], truth["trace"]) < 4
    assert check([g2 for g2, _ in two_batch], truth["g2"]) < 4
    assert check([tr for _, tr in two_batch], truth["trace"]) < 4
    # the test has power: the plain |mean g|^2 is off by tr(Sigma)/n = 0.66, far beyond 4 standard errors
    assert check([r.mean_grad_sq_norm for r in per_sample], truth["g2"]) > 10


# -- grokking statistics ----------------------------------------------------------------------------------------------


def test_softmax_collapse_and_zero_loss_on_hand_built_logits():
    z = torch.tensor(
        [[0.0, -30.0, -30.0, -30.0], [2.0, 30.0, -1.0, 0.0], [0.0, -5.0, -5.0, -5.0], [1.0, 1.0, 1.0, 1.0]]
    )
    # float32: exp(-30) ~ 9e-14 and exp(-28) are absorbed by 1 (half an ulp is 6e-8); exp(-5) is not
    assert softmax_collapse_fraction(z) == 0.5
    assert softmax_collapse_fraction(z, torch.float64) == 0.0  # float64 resolves 9e-14 and 7e-13 (half an ulp: 1.1e-16)
    assert softmax_collapse_fraction(torch.tensor([[0.0, -800.0]], dtype=torch.float64)) == 1.0  # exp underflows
    labels = torch.tensor([0, 0, 0, 0])  # row 0: collapsed on its label; row 1: collapsed on another class
    assert zero_loss_fraction(z, labels) == 0.25
    assert zero_loss_fraction(z, labels, torch.float64) == 0.0
    with pytest.raises(ShapeError, match="logits"):
        softmax_collapse_fraction(torch.zeros(3))
    with pytest.raises(ShapeError, match="labels"):
        zero_loss_fraction(z, torch.zeros(4))


def test_grokking_statistics_match_autograd(tiny):
    x, y = _data(8)
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]  # unequal batches: the full-data gradient weights them by size
    s = grokking_statistics(tiny, F.cross_entropy, batches, lr=0.3)
    net = copy.deepcopy(tiny)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    g = torch.cat([t.reshape(-1) for t in grads])
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert s.nlm_cosine == pytest.approx(float(-(g @ theta) / (g.norm() * theta.norm())), abs=TOL)
    assert s.grad_norm == pytest.approx(float(g.norm()), rel=TOL)
    assert s.loss == pytest.approx(F.cross_entropy(net(x), y).item(), rel=TOL)
    assert s.weight_norm == pytest.approx(float(theta.norm()), rel=TOL)
    assert s.effective_lr == pytest.approx(0.3 / float(theta.norm()) ** 2, rel=TOL)
    assert s.effective_lr == pytest.approx(effective_learning_rate(0.3, tiny), rel=TOL)
    assert s.sc_fraction == 0.0 and s.zero_loss_fraction == 0.0 and (s.n, s.n_grad) == (8, 2)


def test_grokking_statistics_see_collapse_of_scaled_logits():
    net = nn.Linear(3, 4)  # float32
    x, _ = _data(16)
    x = x.float()
    with torch.no_grad():
        y = net(x).argmax(1)
        net.weight.mul_(1e4)
        net.bias.mul_(1e4)
    s = grokking_statistics(net, F.cross_entropy, (x, y))
    logits = net(x).detach()
    assert s.sc_fraction == softmax_collapse_fraction(logits) and s.sc_fraction > 0.5
    assert s.zero_loss_fraction == zero_loss_fraction(logits, y) and math.isnan(s.effective_lr)


def test_nlm_cosine_is_one_for_a_gradient_along_the_weights():
    """L(θ) = -(θ·θ)/2 has -∇L = θ exactly: the naïve-loss-minimization direction."""
    net = nn.Linear(3, 1, bias=False).double()
    x = torch.eye(3, dtype=torch.float64)

    def loss(out, target):  # sum_i out_i^2 / 2 = |w|^2 / 2 for x = I, and the mean over 3 rows
        return -(out.pow(2).sum()) / 2 * 3 / len(out)

    s = grokking_statistics(net, loss, (x, torch.zeros(3, 1, dtype=torch.float64)))
    assert s.nlm_cosine == pytest.approx(1.0, abs=TOL)


# -- contract: nothing changes ----------------------------------------------------------------------------------------


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5))
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.body(x))


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: gradient_coherence(m, CrossEntropy(), d, max_examples=6, seed=1),
        lambda m, d: gradient_noise_scale(m, F.cross_entropy, d, b_small=2, seed=1),
        lambda m, d: grokking_statistics(m, CrossEntropy(), d, lr=0.1),
    ],
    ids=["coherence", "noise_scale", "grokking"],
)
def test_model_buffers_mode_and_rng_unchanged(call):
    torch.manual_seed(0)
    model = BNNet().double()
    model(torch.randn(16, 3, dtype=torch.float64))  # move the running statistics off their defaults
    model.train()
    model.out.eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    call(model, _data(10))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


# -- probes in a real training run ------------------------------------------------------------------------------------


def _fit(callbacks):
    task = tasks.get("two_moons", n=60, n_test=30)
    torch.manual_seed(0)
    model = task.make_model(width=8)
    trainer = Trainer(
        task,
        model,
        CrossEntropy(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        steps=4,
        batch_size=20,
        eval_every=2,
        callbacks=callbacks,
    )
    return trainer.fit()


def test_probes_log_finite_numbers_and_do_not_perturb_training():
    probes = [
        GradientCoherenceProbe(every=2, n_examples=32),
        GradientNoiseScaleProbe(every=2, n_examples=32),
        GrokkingStatsProbe(every=2, n_examples=32, seed=1),
    ]
    result = _fit(probes)
    rows = [(step, name, value) for step, split, name, value in result.history if split == "probe"]
    names = {
        "gradient_coherence/alpha",
        "gradient_coherence/m_coherence",
        "gradient_noise_scale/b_simple",
        "gradient_noise_scale/trace_sigma",
        "gradient_noise_scale/grad_sq_norm",
        "grokking/nlm_cosine",
        "grokking/sc_fraction",
        "grokking/zero_loss_fraction",
        "grokking/weight_norm",
        "grokking/effective_lr",
    }
    assert {name for _, name, _ in rows} == names
    assert sorted({step for step, _, _ in rows}) == [0, 2, 4]
    assert all(math.isfinite(v) for _, _, v in rows)
    at = {(step, name): v for step, name, v in rows}
    for step in (0, 2, 4):
        assert at[step, "grokking/effective_lr"] == pytest.approx(0.1 / at[step, "grokking/weight_norm"] ** 2)
        assert 0.0 <= at[step, "gradient_coherence/alpha"] <= 1.0
        assert 0.0 <= at[step, "gradient_coherence/m_coherence"] <= 32.0
    assert result.final == _fit([]).final  # the probes changed neither the model nor the batch order


def test_probe_validation():
    with pytest.raises(ConfigError, match="n_examples"):
        GradientCoherenceProbe(n_examples=1)
    with pytest.raises(ConfigError, match="seed"):
        GrokkingStatsProbe(seed=-1)
    with pytest.raises(ConfigError, match="every"):
        GradientNoiseScaleProbe(every=0)


# -- validation -------------------------------------------------------------------------------------------------------


def test_validation_errors_name_the_argument(tiny):
    data = _data(6)
    with pytest.raises(ConfigError, match="chunk_size"):
        gradient_coherence(tiny, F.cross_entropy, data, chunk_size=0)
    with pytest.raises(ConfigError, match="max_examples"):
        gradient_coherence(tiny, F.cross_entropy, data, max_examples=0)
    with pytest.raises(ConfigError, match="b_small"):
        gradient_noise_scale(tiny, F.cross_entropy, data, b_small=4)  # 6 // 4 = 1 group: needs two
    with pytest.raises(ConfigError, match="at least 2 examples"):
        gradient_noise_scale(tiny, F.cross_entropy, (data[0][:1], data[1][:1]))
    with pytest.raises(ConfigError, match="lr"):
        grokking_statistics(tiny, F.cross_entropy, data, lr=-1.0)
    with pytest.raises(ConfigError, match="params"):
        gradient_coherence(tiny, F.cross_entropy, data, params="no_such_layer")
    with pytest.raises(ShapeError, match="grads"):
        coherence_from_gradients(torch.zeros(4))
    with pytest.raises(ShapeError, match="n >= 2"):
        noise_scale_from_gradients(torch.zeros(1, 3))
