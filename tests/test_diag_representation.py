"""Representation diagnostics against float64 oracles: NC1–NC4, effective/stable rank, spectral probe, probes."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from torch import nn

from reglab import tasks
from reglab.core import ConfigError, MissingContextError, ShapeError
from reglab.diagnostics import (
    EffectiveRankProbe,
    NeuralCollapseProbe,
    effective_rank,
    feature_rank,
    neural_collapse,
    neural_collapse_metrics,
    rank_metrics,
    spectral_probe,
    spectral_probe_features,
    stable_rank,
)
from reglab.diagnostics.registry import REGISTRY
from reglab.losses import CrossEntropy
from reglab.train import Trainer

EPS = torch.finfo(torch.float64).eps
# exact-collapse values are sums of O(K * D) float64 round-off terms of O(1) quantities: a few hundred eps at most
ROUND_OFF = 1e3 * EPS


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before, training, rng):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training == training
    assert torch.equal(torch.get_rng_state(), rng)


# -- neural collapse -------------------------------------------------------------------------------------------


def _collapsed(k=4, d=7, per_class=5, seed=0):
    """Features at exact neural collapse: class means a scaled simplex ETF (rotated into R^d) plus a global offset."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    means = 3.0 * (torch.eye(k, dtype=torch.float64) - 1.0 / k) @ q.T  # rows sum to 0: centered ETF
    offset = torch.randn(d, generator=g, dtype=torch.float64)
    labels = torch.arange(k).repeat(per_class)
    return means[labels] + offset, labels, means, offset


def test_exact_collapse_gives_zero_for_every_metric():
    h, y, means, offset = _collapsed()
    w = 2.5 * means  # self-dual up to scale
    r = neural_collapse_metrics(h, y, w, classifier_bias=-(w @ offset))
    for name in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle", "nc2_etf", "nc3", "nc4"):
        assert abs(getattr(r, name)) <= ROUND_OFF, (name, getattr(r, name))
    for name in ("nc2_equinorm_w", "nc2_equiangle_w", "nc2_maxangle_w"):
        assert abs(getattr(r, name)) <= ROUND_OFF, (name, getattr(r, name))
    assert r.accuracy == 1.0 and r.trace_within <= ROUND_OFF and r.trace_between > 1


def test_random_features_are_not_collapsed():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(20)
    logits = torch.randn(60, 3, generator=g, dtype=torch.float64)
    r = neural_collapse_metrics(h, y, torch.randn(3, 5, generator=g, dtype=torch.float64), logits)
    for name in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle", "nc2_etf", "nc3", "nc4"):
        assert getattr(r, name) > 1e-3, (name, getattr(r, name))


def _oracle_nc(h, y, w, logits, k):
    """NC1–NC4 by explicit loops in numpy float64 (the reference code's definitions)."""
    h, y, w, logits = h.numpy(), y.numpy(), w.numpy(), logits.numpy()
    n, d = h.shape
    means = np.stack([h[y == c].mean(0) for c in range(k)])
    mu_g = means.mean(0)
    sw = np.zeros((d, d))
    for i in range(n):
        sw += np.outer(h[i] - means[y[i]], h[i] - means[y[i]])
    sw /= n
    sb = sum(np.outer(means[c] - mu_g, means[c] - mu_g) for c in range(k)) / k
    nc1 = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / k
    centered = [means[c] - mu_g for c in range(k)]

    def stats(rows):
        norms = [math.sqrt(sum(x * x for x in r)) for r in rows]
        cos = [float(rows[a] @ rows[b]) / (norms[a] * norms[b]) for a in range(k) for b in range(a + 1, k)]
        return (
            statistics.stdev(norms) / statistics.mean(norms),
            statistics.pstdev(cos),
            statistics.mean(abs(c + 1 / (k - 1)) for c in cos),
        )

    gram = np.array([[float(a @ b) for b in centered] for a in centered])
    etf = np.linalg.norm(gram / np.linalg.norm(gram) - (np.eye(k) - 1 / k) / math.sqrt(k - 1))
    m = np.stack(centered)
    nc3 = np.linalg.norm(w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2
    mismatch = 0
    for i in range(n):
        nearest = min(range(k), key=lambda c: sum((h[i, j] - means[c, j]) ** 2 for j in range(d)))
        mismatch += int(nearest != int(np.argmax(logits[i])))
    return {
        "nc1": nc1,
        "nc2_etf": etf,
        "nc3": nc3,
        "nc4": mismatch / n,
        **dict(zip(("nc2_equinorm", "nc2_equiangle", "nc2_maxangle"), stats(centered))),
        **dict(zip(("nc2_equinorm_w", "nc2_equiangle_w", "nc2_maxangle_w"), stats(list(w)))),
    }


@pytest.mark.parametrize(
    "n, k, d, balanced",
    [(60, 3, 5, True), (50, 5, 2, True), (40, 4, 10, False), (45, 3, 8, False)],
    ids=["n60-k3-d5", "d-below-k", "d10-imbalanced", "k3-d8-imbalanced"],
)
def test_matches_loop_oracle(n, k, d, balanced):
    g = torch.Generator().manual_seed(n + k + d)
    y = (
        torch.arange(k).repeat(n // k + 1)[:n]
        if balanced
        else torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    )
    h = torch.randn(n, d, generator=g, dtype=torch.float64) + 2 * torch.randn(k, d, generator=g, dtype=torch.float64)[y]
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    logits = h @ w.T + torch.randn(k, generator=g, dtype=torch.float64)
    r = neural_collapse_metrics(h, y, w, logits).to_dict()
    for name, value in _oracle_nc(h, y, w, logits, k).items():
        assert r[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_logits_default_to_the_classifier():
    h, y, means, _ = _collapsed(seed=3)
    g = torch.Generator().manual_seed(0)
    h = h + 0.5 * torch.randn(h.shape, generator=g, dtype=torch.float64)
    w, b = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    a = neural_collapse_metrics(h, y, w, classifier_bias=b)
    c = neural_collapse_metrics(h, y, w, h @ w.T + b)
    assert a.nc4 == c.nc4 and a.accuracy == c.accuracy
    assert neural_collapse_metrics(h, y).nc3 is None and neural_collapse_metrics(h, y).nc4 is None


class _LinearHeadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        self.head = nn.Linear(5, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class _SquaredHeadNet(nn.Module):
    """A head that is not affine: NC3 is undefined."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        self.lin = nn.Linear(5, 3)

    def features(self, x):
        return self.body(x)

    def head(self, h):
        return self.lin(h) ** 2


@pytest.mark.parametrize("kind", ["head_method", "head_linear"])
def test_model_level_matches_metrics_and_changes_nothing(tiny, kind):
    torch.manual_seed(0)
    model = tiny if kind == "head_method" else _LinearHeadNet().double()
    linear = model.out if kind == "head_method" else model.head
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(14)[:40]
    model.train()
    before, rng = _state(model), torch.get_rng_state()
    r = neural_collapse(model, (x, y))
    _assert_unchanged(model, before, True, rng)
    with torch.no_grad():
        h = model.features(x)
        expected = neural_collapse_metrics(h, y, linear.weight, model(x))
    for name in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc2_etf", "nc3", "nc4", "nc2_equinorm_w"):
        assert getattr(r, name) == pytest.approx(getattr(expected, name), rel=1e-9, abs=1e-12), name
    loader = torch.utils.data.DataLoader(list(zip(x, y, torch.arange(40))), batch_size=7)
    assert neural_collapse(model, loader, batch_size=3).nc1 == pytest.approx(r.nc1, rel=1e-12)


def test_float32_model_on_float64_inputs_and_affine_readout():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=60, n_test=10)
    model = task.make_model(width=8, depth=1)  # head(h) = readout(h): a method, read off as an affine map
    x, y, _ = tasks.as_tensors(task.train)
    r = neural_collapse(model, (x.double(), y))
    with torch.no_grad():
        expected = neural_collapse_metrics(model.features(x).double(), y, model.readout.weight.double())
    assert r.nc3 == pytest.approx(expected.nc3, rel=1e-5)  # float32 features: relative round-off ~1e-7 * D


def test_non_affine_head_gives_no_nc3():
    torch.manual_seed(0)
    model = _SquaredHeadNet().double()
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.arange(3).repeat(10)
    r = neural_collapse(model, (x, y))
    assert r.nc3 is None and r.nc2_equinorm_w is None
    with torch.no_grad():
        h = model.features(x)
        assert r.nc4 == neural_collapse_metrics(h, y, logits=model.head(h)).nc4
    assert r.nc4 is not None and r.nc1 > 0


def test_subsample_is_seeded_and_leaves_global_rng(tiny):
    x = torch.randn(50, 3, dtype=torch.float64)
    y = torch.arange(3).repeat(17)[:50]
    rng = torch.get_rng_state()
    a = neural_collapse(tiny, (x, y), max_examples=30, seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.n == 30 and neural_collapse(tiny, (x, y), max_examples=30, seed=4).nc1 == a.nc1
    assert neural_collapse(tiny, (x, y), max_examples=500).n == 50


def test_neural_collapse_validation(tiny):
    h, y = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ShapeError, match="labels"):
        neural_collapse_metrics(h, y.double())
    with pytest.raises(ShapeError, match=r"classes \[3\] have no examples"):
        neural_collapse_metrics(h, y, num_classes=4)
    with pytest.raises(ShapeError, match="classifier_weight"):
        neural_collapse_metrics(h, y, torch.zeros(3, 5))
    with pytest.raises(ShapeError, match="logits"):
        neural_collapse_metrics(h, y, logits=torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="at least 2 classes"):
        neural_collapse_metrics(h, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_classes"):
        neural_collapse_metrics(h, y, num_classes=1)
    with pytest.raises(ShapeError, match="features"):
        neural_collapse_metrics(torch.zeros(6), y)
    with pytest.raises(MissingContextError, match=r"features\(\.\.\.\)"):
        neural_collapse(nn.Linear(3, 3), (torch.randn(6, 3), y))
    with pytest.raises(ConfigError, match="max_examples"):
        neural_collapse(tiny, (torch.randn(6, 3).double(), y), max_examples=0)
    with pytest.raises(ConfigError, match="data is empty"):
        neural_collapse(tiny, [])


# -- effective and stable rank --------------------------------------------------------------------------------


def _np_ranks(a):
    s = np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum()), (s**2).sum() / s[0] ** 2


@pytest.mark.parametrize("n", [1, 4, 9])
def test_identity_and_rank_one(n):
    assert effective_rank(torch.eye(n)) == pytest.approx(n, abs=1e-12)
    assert stable_rank(torch.eye(n)) == pytest.approx(n, abs=1e-12)
    g = torch.Generator().manual_seed(n)
    rank_one = torch.outer(torch.randn(n + 2, generator=g, dtype=torch.float64), torch.randn(n, generator=g).double())
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-12)
    assert stable_rank(rank_one) == pytest.approx(1.0, abs=1e-12)
    # float32 round-off (sigma_2 ~ 1e-7 sigma_1) is below the float32 rank tolerance, so it does not count either
    assert effective_rank(rank_one.float()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (3, 8), (7, 7)])
def test_ranks_match_numpy_svd(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    e, s = _np_ranks(a.numpy())
    assert effective_rank(a) == pytest.approx(e, rel=1e-12)
    assert stable_rank(a) == pytest.approx(s, rel=1e-12)
    assert 1 <= effective_rank(a) <= min(shape) and 1 <= stable_rank(a) <= min(shape)


def test_zero_matrix_and_bad_shapes():
    assert effective_rank(torch.zeros(3, 4)) == 0.0 and stable_rank(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ShapeError, match="matrix"):
        effective_rank(torch.zeros(3))
    with pytest.raises(ShapeError, match="matrix"):
        stable_rank(torch.zeros(0, 3))


def test_rank_metrics_flattens_conv_and_skips_vectors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))
    before, rng = _state(model), torch.get_rng_state()
    r = rank_metrics(model)
    _assert_unchanged(model, before, True, rng)
    assert set(r.effective_rank) == {"0.weight", "3.weight"} and r.shapes["0.weight"] == [4, 2, 3, 3]
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            e, s = _np_ranks(p.detach().reshape(p.shape[0], -1).double().numpy())
            assert r.effective_rank[name] == pytest.approx(e, rel=1e-12)
            assert r.stable_rank[name] == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize("center", [True, False])
def test_feature_rank_matches_explicit_svd(tiny, center):
    x = torch.randn(25, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tiny.eval()
    before, rng = _state(tiny), torch.get_rng_state()
    r = feature_rank(tiny, (x, torch.zeros(25)), center=center)
    _assert_unchanged(tiny, before, False, rng)
    with torch.no_grad():
        h = tiny.features(x).numpy()
    e, s = _np_ranks(h - h.mean(0) if center else h)
    assert r.effective_rank == pytest.approx(e, rel=1e-12) and r.stable_rank == pytest.approx(s, rel=1e-12)
    assert r.n == 25 and r.feature_dim == 4 and r.centered is center


def test_feature_rank_subsample(tiny):
    x = torch.randn(40, 3, dtype=torch.float64)
    rng = torch.get_rng_state()
    a = feature_rank(tiny, (x, torch.zeros(40)), max_examples=10, seed=1)
    assert torch.equal(torch.get_rng_state(), rng) and a.n == 10
    assert feature_rank(tiny, (x, torch.zeros(40)), max_examples=10, seed=1).effective_rank == a.effective_rank
    with pytest.raises(MissingContextError, match="features"):
        feature_rank(nn.Linear(3, 2), (x, torch.zeros(40)))


# -- spectral linear probe and truncation ---------------------------------------------------------------------


def _pca(train):
    mu = train.mean(0)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    return mu, vt.T


def _lstsq_accuracy(z_train, y_train, z_eval, y_eval, k, ridge):
    """Least-squares (ridge) classifier with an unpenalized intercept on one-hot labels, solved densely."""
    a = np.hstack([np.ones((len(z_train), 1)), z_train])
    onehot = np.eye(k)[y_train]
    if ridge == 0:
        coef = np.linalg.lstsq(a, onehot, rcond=None)[0]
    else:
        penalty = ridge * np.diag([0.0] + [1.0] * z_train.shape[1])
        coef = np.linalg.solve(a.T @ a + penalty, a.T @ onehot)
    pred = np.hstack([np.ones((len(z_eval), 1)), z_eval]) @ coef
    return float((pred.argmax(1) == y_eval).mean())


@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_probe_accuracies_match_dense_least_squares(ridge):
    g = torch.Generator().manual_seed(7)
    n, m, d, k = 80, 50, 6, 3
    y, yt = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (m,), generator=g)
    shift = torch.randn(k, d, generator=g, dtype=torch.float64)
    scales = torch.linspace(2.0, 0.2, d, dtype=torch.float64)
    phi = torch.randn(n, d, generator=g, dtype=torch.float64) * scales + shift[y]
    phit = torch.randn(m, d, generator=g, dtype=torch.float64) * scales + shift[yt]
    ks = [1, 2, 3, 4, 5]
    r = spectral_probe_features(phi, y, phit, yt, ks=ks, ridge=ridge)
    mu, v = _pca(phi.numpy())
    z, zt = (phi.numpy() - mu) @ v, (phit.numpy() - mu) @ v
    for i, kk in enumerate(ks):
        head, tail = slice(0, kk), slice(kk, d)
        assert r.head_train_accuracy[i] == _lstsq_accuracy(z[:, head], y.numpy(), z[:, head], y.numpy(), k, ridge)
        assert r.head_test_accuracy[i] == _lstsq_accuracy(z[:, head], y.numpy(), zt[:, head], yt.numpy(), k, ridge)
        assert r.tail_train_accuracy[i] == _lstsq_accuracy(z[:, tail], y.numpy(), z[:, tail], y.numpy(), k, ridge)
        assert r.tail_test_accuracy[i] == _lstsq_accuracy(z[:, tail], y.numpy(), zt[:, tail], yt.numpy(), k, ridge)
    # the probe on every component is the ordinary least-squares classifier on the raw features
    full = spectral_probe_features(phi, y, phit, yt, ks=[d], ridge=0.0)
    assert full.head_test_accuracy[0] == _lstsq_accuracy(phi.numpy(), y.numpy(), phit.numpy(), yt.numpy(), k, 0.0)
    assert r.rank == d and r.effective_rank == pytest.approx(_np_ranks(phi.numpy() - mu)[0], rel=1e-12)


def _malignant_tail(seed=0, n=150, m=300, k=3, tail=200, rate=0.3):
    """Signal in 2 leading directions (class centers on a circle), low-variance noise in a wide tail, noisy labels."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    centers = torch.stack([angle.cos(), angle.sin()], 1)

    def draw(count):
        y = torch.arange(k).repeat(count // k)
        signal = 3 * centers[y] + 0.5 * torch.randn(count, 2, generator=g, dtype=torch.float64)
        return torch.cat([signal, 0.1 * torch.randn(count, tail, generator=g, dtype=torch.float64)], 1), y

    (phi, y), (phit, yt) = draw(n), draw(m)
    flipped = torch.rand(n, generator=g) < rate
    noisy = torch.where(flipped, (y + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k, y)
    return phi, noisy, flipped, phit, yt, centers


def test_truncation_recovers_accuracy_when_noise_lives_in_the_tail():
    phi, y_noisy, flipped, phit, yt, centers = _malignant_tail()
    k = 3
    # a memorizing readout: the clean signal head plus a tail map interpolating the noisy labels (min-norm)
    onehot = torch.nn.functional.one_hot(y_noisy, k).double()
    tail_map = torch.linalg.pinv(phi[:, 2:]) @ (3 * onehot - phi[:, :2] @ centers.T)

    def head(h):
        return h[:, :2] @ centers.T + h[:, 2:] @ tail_map

    ks = [1, 2, 3, 10, 50]
    r = spectral_probe_features(phi, y_noisy, phit, yt, ks=ks, head=head, noisy=flipped)
    assert r.full_train_accuracy == 1.0  # the readout memorized every noisy label
    # oracle: numpy PCA projection, the same head, argmax
    mu, v = _pca(phi.numpy())
    for i, kk in enumerate(ks):
        projected = mu + (phit.numpy() - mu) @ v[:, :kk] @ v[:, :kk].T
        expected = float((head(torch.from_numpy(projected)).argmax(1) == yt).double().mean())
        assert r.truncated_test_accuracy[i] == expected
    clean = float((phit[:, :2] @ centers.T).argmax(1).eq(yt).double().mean())  # nearest-center rule on the signal
    i2 = ks.index(2)
    # the construction's predictions (large margins): memorization costs test accuracy, rank-2 truncation
    # recovers the clean accuracy, the noisy labels are fit by the tail and not by the head
    assert r.full_test_accuracy < clean - 0.2
    assert r.truncated_test_accuracy[i2] >= clean - 0.02
    assert r.head_train_accuracy_noisy[i2] <= 0.05 and r.tail_train_accuracy_noisy[i2] >= 0.95
    assert r.head_test_accuracy[i2] >= clean - 0.02 and r.tail_test_accuracy[i2] <= 0.5


def test_truncating_an_interpolating_linear_head_equals_the_refit_probe():
    # closed form: if head(h) = h L with Phi L = Y (one-hot, interpolation), then
    # head(mu + Z_k V_k^T) = ybar + Z_k B_k, the head probe's prediction at every k
    phi, y_noisy, _, phit, yt, _ = _malignant_tail(seed=1, tail=200)
    lift = torch.linalg.pinv(phi) @ torch.nn.functional.one_hot(y_noisy, 3).double()
    r = spectral_probe_features(phi, y_noisy, phit, yt, ks=[1, 2, 5, 20, 100], head=lambda h: h @ lift)
    assert r.truncated_test_accuracy == r.head_test_accuracy
    assert r.truncated_train_accuracy == r.head_train_accuracy


def test_spectral_probe_on_a_model(tiny):
    g = torch.Generator().manual_seed(3)
    x, xt = torch.randn(60, 3, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64)
    y, yt = torch.arange(3).repeat(20), torch.arange(3).repeat(10)
    tiny.train()
    before, rng = _state(tiny), torch.get_rng_state()
    r = spectral_probe(tiny, (x, y), (xt, yt), ks=[1, 2, 4])
    _assert_unchanged(tiny, before, True, rng)
    with torch.no_grad():
        expected = spectral_probe_features(tiny.features(x), y, tiny.features(xt), yt, ks=[1, 2, 4], head=tiny.head)
        assert r.full_test_accuracy == float((tiny(xt).argmax(1) == yt).double().mean())
    assert r.to_dict() | {"seconds": 0} == expected.to_dict() | {"seconds": 0}
    assert r.truncated_test_accuracy[-1] == r.full_test_accuracy  # k = D: no truncation


def test_spectral_probe_validation(tiny):
    phi, y = torch.randn(10, 4, dtype=torch.float64), torch.arange(2).repeat(5)
    with pytest.raises(ConfigError, match=r"ks\[1\]"):
        spectral_probe_features(phi, y, phi, y, ks=[1, 5])
    with pytest.raises(ConfigError, match="ks must be"):
        spectral_probe_features(phi, y, phi, y, ks=3)
    with pytest.raises(ConfigError, match="ridge"):
        spectral_probe_features(phi, y, phi, y, ridge=-1.0)
    with pytest.raises(ShapeError, match="noisy"):
        spectral_probe_features(phi, y, phi, y, noisy=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="test_features"):
        spectral_probe_features(phi, y, phi[:, :3], y)
    with pytest.raises(ShapeError, match="train_labels"):
        spectral_probe_features(phi, y[:5], phi, y)
    with pytest.raises(MissingContextError, match="head"):
        spectral_probe(nn.Module(), (phi, y), (phi, y))
    with pytest.raises(ConfigError, match="test_data"):
        spectral_probe(tiny, (phi[:, :3], y), 5)


# -- probes in a Trainer ----------------------------------------------------------------------------------------


def test_probes_log_finite_numbers_in_a_trainer_run():
    torch.manual_seed(0)
    task = tasks.get("digits")
    model = task.make_model(width=32, depth=1)
    probes = [REGISTRY.get("neural_collapse", every=5), REGISTRY.get("effective_rank", every=5, weights=True)]
    assert isinstance(probes[0], NeuralCollapseProbe) and isinstance(probes[1], EffectiveRankProbe)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = Trainer(task, model, CrossEntropy(), opt, steps=10, batch_size=64, eval_every=10, callbacks=probes).fit()
    logged = {}
    for step, split, name, value in result.history:
        if split == "probe":
            logged.setdefault(name, []).append((step, value))
    expected = {f"neural_collapse/{m}" for m in ("nc1", "nc2_equinorm", "nc2_equiangle", "nc2_maxangle", "nc2_etf")}
    expected |= {"neural_collapse/nc3", "neural_collapse/nc4", "effective_rank/features", "stable_rank/features"}
    expected |= {"effective_rank/readout.weight", "stable_rank/body.0.weight"}
    assert expected <= set(logged)
    for name, rows in logged.items():
        assert [s for s, _ in rows] == [0, 5, 10], name
        assert all(math.isfinite(v) for _, v in rows), name
    assert all(1 <= v <= 32 for _, v in logged["effective_rank/features"])


def test_probe_validation():
    with pytest.raises(ConfigError, match="every"):
        NeuralCollapseProbe(every=0)
    with pytest.raises(ConfigError, match="max_examples"):
        NeuralCollapseProbe(max_examples=0)
    with pytest.raises(ConfigError, match="max_examples"):
        EffectiveRankProbe(max_examples=-3)
    with pytest.raises(ConfigError, match="center"):
        EffectiveRankProbe(center="yes")
    with pytest.raises(ConfigError, match="seed"):
        EffectiveRankProbe(seed=-1)


def test_diagnostics_restore_each_submodules_mode():
    """A training model with a frozen (eval-mode) BatchNorm gets back exactly that mixed mode."""
    import torch
    from torch import nn

    from reglab.diagnostics import feature_rank, neural_collapse
    from reglab.diagnostics.calibration import calibration_report
    from reglab.diagnostics.lipschitz import lipschitz_bounds

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU())
            self.out = nn.Linear(6, 2)

        def features(self, x):
            return self.body(x)

        def head(self, h):
            return self.out(h)

        def forward(self, x):
            return self.head(self.features(x))

    torch.manual_seed(0)
    m = Net()
    m.train()
    m.body[1].eval()
    modes = [mod.training for mod in m.modules()]
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    neural_collapse(m, (x, y))
    feature_rank(m, (x, y))
    calibration_report(m, (x, y))
    lipschitz_bounds(m, (x, y))
    assert [mod.training for mod in m.modules()] == modes
