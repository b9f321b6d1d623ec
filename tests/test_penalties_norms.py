"""The norm-family penalties beyond L2/L1/L2ToInit, and the weight compander, against float64 oracles.

Tolerances: the oracles below are float64 NumPy re-computations of the same
finite sums in another order. Each sum has at most a few hundred terms, so the
two differ by at most ~n * eps (eps = 2.2e-16) relative, below 1e-13; RTOL =
1e-12 bounds that with margin and is far below any formula error (O(1e-2) and
up for a missing factor or a wrong group).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import reglab.penalties  # noqa: F401  (populates the registry)
from reglab.core import ConfigError, MissingContextError, ShapeError, StepContext
from reglab.penalties.compander import WeightCompander, remove_weight_compander, weight_compander
from reglab.penalties.norms import L1, L2, ElasticNet, GroupLasso, L2ToInit, NormLoss, WassersteinToInit
from reglab.penalties.registry import REGISTRY
from reglab.penalties.shrinkage import HYPERSPARSE_INFLECTION, HyperSparse, SelectiveDecay
from reglab.train.step import train_step

torch.set_num_threads(1)

EPS = torch.finfo(torch.float64).eps
RTOL = 1e-12
MEMBERS = {
    "elastic_net": ElasticNet,
    "group_lasso": GroupLasso,
    "norm_loss": NormLoss,
    "wasserstein_to_init": WassersteinToInit,
    "lobster": SelectiveDecay,
    "hypersparse": HyperSparse,
}


class TinyConv(nn.Module):
    """Conv1d (2 -> 3 channels, kernel 3) then Linear, float64; has features/head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.out = nn.Linear(3 * 4, 2)

    def features(self, x):
        return torch.tanh(self.conv(x)).flatten(1)

    def head(self, h):
        return self.out(h)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def conv_ctx():
    torch.manual_seed(3)
    model = TinyConv().double()
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    return StepContext(model=model, inputs=x, targets=torch.tensor([0, 1, 1, 0]))


def _np(model, ndim_min=0):
    return [p.detach().numpy().copy() for p in model.parameters() if p.ndim >= ndim_min]


def _close(actual, expected, rtol=RTOL):
    torch.testing.assert_close(
        torch.as_tensor(actual), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=0
    )


def _as_function(penalty, ctx):
    """``penalty(ctx)`` as a function of fresh leaf copies of the model's parameters, for gradcheck."""
    slots = [(mod, key) for mod in ctx.model.modules() for key, p in mod._parameters.items() if p is not None]
    originals = [mod._parameters[key] for mod, key in slots]

    def f(*tensors):
        for (mod, key), t in zip(slots, tensors):
            mod._parameters[key] = t
        try:
            return penalty(ctx)
        finally:
            for (mod, key), p in zip(slots, originals):
                mod._parameters[key] = p

    return f, tuple(p.detach().clone().requires_grad_(True) for p in originals)


# -- registry and construction ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MEMBERS))
def test_registered_with_description_and_matching_breakdown_name(name):
    entry = REGISTRY.entry(name)
    assert entry.factory is MEMBERS[name]
    assert entry.description and "\n" not in entry.description
    penalty = reglab.penalties.get(name, 0.25)
    assert isinstance(penalty, MEMBERS[name]) and penalty.weight == 0.25
    assert penalty.name == name  # the record key penalty/<name> is the registry name


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ElasticNet, {"alpha": 1.5}, "alpha"),
        (ElasticNet, {"alpha": "0.5"}, "alpha"),
        (ElasticNet, {"params": "biases"}, "params"),
        (GroupLasso, {"groups": "cols"}, "groups"),
        (WassersteinToInit, {"params": "bias"}, "params"),
        (SelectiveDecay, {"normalize": "yes"}, "normalize"),
        (SelectiveDecay, {"params": "every"}, "params"),
        (HyperSparse, {"prune_rate": 1.0}, "prune_rate"),
        (HyperSparse, {"prune_rate": -0.1}, "prune_rate"),
        (NormLoss, {}, None),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_constructor_validation(cls, kwargs, match):
    if match is not None:
        with pytest.raises(ConfigError, match=match):
            cls(1.0, **kwargs)
    with pytest.raises(ConfigError, match="weight"):
        cls(-1.0)


# -- elastic net ---------------------------------------------------------------------------


def test_elastic_net_value_is_sklearn_parameterization(ctx):
    weight, alpha = 0.3, 0.4
    ps = _np(ctx.model)
    expected = weight * (alpha * sum(np.abs(p).sum() for p in ps) + (1 - alpha) / 2 * sum((p**2).sum() for p in ps))
    _close(ElasticNet(weight, alpha=alpha)(ctx), expected)
    mats = _np(ctx.model, 2)
    only = weight * (alpha * sum(np.abs(p).sum() for p in mats) + (1 - alpha) / 2 * sum((p**2).sum() for p in mats))
    _close(ElasticNet(weight, alpha=alpha, params="weights")(ctx), only)


@pytest.mark.parametrize("params", ["all", "weights"])
def test_elastic_net_endpoints_are_l1_and_l2(ctx, params):
    torch.testing.assert_close(ElasticNet(0.7, alpha=1.0, params=params)(ctx), L1(0.7, params=params)(ctx))
    torch.testing.assert_close(ElasticNet(0.7, alpha=0.0, params=params)(ctx), L2(0.7, params=params)(ctx))


def test_elastic_net_gradcheck(ctx):
    f, inputs = _as_function(ElasticNet(0.5, alpha=0.3), ctx)
    assert all((t.abs() > 1e-3).all() for t in inputs)  # away from the kink of |x| at 0
    assert torch.autograd.gradcheck(f, inputs)


# -- group lasso ---------------------------------------------------------------------------


def _group_lasso_np(model, groups):
    total = 0.0
    for w in _np(model, 2):
        m = w.reshape(w.shape[0], -1) if groups == "rows" else np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
        total += math.sqrt(m.shape[1]) * np.sqrt((m**2).sum(axis=1)).sum()
    return total


@pytest.mark.parametrize("groups", ["rows", "columns"])
def test_group_lasso_value_linear_and_conv(ctx, conv_ctx, groups):
    for c in (ctx, conv_ctx):
        _close(GroupLasso(0.3, groups=groups)(c), 0.3 * _group_lasso_np(c.model, groups))


def test_group_lasso_conv_groups_are_output_filters(conv_ctx):
    w = conv_ctx.model.conv.weight  # (out=3, in=2, k=3): 3 groups of 6
    with torch.no_grad():
        w.zero_()
        w[1] = 2.0  # one filter with norm 2 * sqrt(6), group size 6
    lin = conv_ctx.model.out.weight
    expected_lin = math.sqrt(lin.shape[1]) * lin.detach().norm(dim=1).sum().item()
    _close(GroupLasso(1.0)(conv_ctx), math.sqrt(6) * 2.0 * math.sqrt(6) + expected_lin)


def test_group_lasso_zero_group_contributes_zero_with_finite_subgradient(ctx):
    with torch.no_grad():
        ctx.model.out.weight[1].zero_()
    value = GroupLasso(1.0)(ctx)
    _close(value, _group_lasso_np(ctx.model, "rows"))
    ctx.model.zero_grad()
    value.backward()
    grad = ctx.model.out.weight.grad
    assert torch.isfinite(grad).all()
    assert (grad[1] == 0).all()  # 0 is in the subdifferential of ||.|| at 0
    assert (grad[0] != 0).all()


def test_group_lasso_gradcheck(conv_ctx):
    f, inputs = _as_function(GroupLasso(0.5, groups="columns"), conv_ctx)
    assert torch.autograd.gradcheck(f, inputs)


# -- norm loss -----------------------------------------------------------------------------


def test_norm_loss_value(ctx, conv_ctx):
    for c in (ctx, conv_ctx):
        expected = sum(((np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1)) - 1) ** 2).sum() for w in _np(c.model, 2))
        _close(NormLoss(0.2)(c), 0.2 * expected)


def test_norm_loss_is_zero_at_unit_norm_filters(ctx, conv_ctx):
    for c in (ctx, conv_ctx):
        rows = 0
        with torch.no_grad():
            for p in c.model.parameters():
                if p.ndim >= 2:
                    p.div_(p.flatten(1).norm(dim=1).reshape(-1, *([1] * (p.ndim - 1))))
                    rows += p.shape[0]
        value = NormLoss(1.0)(c).item()
        # each filter norm is 1 up to a few ulps after normalization: (||w|| - 1)^2 <= (8 eps)^2 per filter
        assert 0.0 <= value <= rows * (8 * EPS) ** 2
        with torch.no_grad():
            c.model.out.weight.mul_(2.0)  # now those filters have norm 2: each contributes exactly 1
        _close(NormLoss(1.0)(c), c.model.out.weight.shape[0], rtol=1e-12)


def test_norm_loss_gradcheck(conv_ctx):
    f, inputs = _as_function(NormLoss(0.5), conv_ctx)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("cls", [GroupLasso, NormLoss, HyperSparse])
def test_structured_penalties_name_themselves_on_a_model_without_weight_matrices(cls):
    only_vectors = nn.LayerNorm(4).double()
    c = StepContext(model=only_vectors, inputs=torch.randn(2, 4, dtype=torch.float64), targets=torch.zeros(2))
    p = cls(1.0)
    with pytest.raises(ShapeError, match=p.name):
        p(c)


# -- Wasserstein to init ---------------------------------------------------------------------


def _perturb(model, seed=5, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_wasserstein_zero_at_anchor_then_sorted_formula(ctx):
    p = WassersteinToInit(0.7)
    assert p(ctx).item() == 0.0
    anchor = [np.sort(a.ravel()) for a in _np(ctx.model)]
    _perturb(ctx.model)
    expected = 0.7 * sum(((np.sort(a.ravel()) - b) ** 2).sum() for a, b in zip(_np(ctx.model), anchor))
    _close(p(ctx), expected)
    assert p(ctx).item() > 0


def test_wasserstein_invariant_to_permutations_within_a_layer_and_below_l2_to_init(ctx):
    w = WassersteinToInit(1.0)
    l2 = L2ToInit(1.0)
    w(ctx), l2(ctx)  # both anchor at the same weights
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # permute every tensor's entries: the distributions do not change
        for q in ctx.model.parameters():
            q.copy_(q.flatten()[torch.randperm(q.numel(), generator=g)].reshape(q.shape))
    assert w(ctx).item() == 0.0
    assert l2(ctx).item() > 0.1  # but the weights did move
    _perturb(ctx.model)
    before = w(ctx)
    with torch.no_grad():
        for q in ctx.model.parameters():
            q.copy_(q.flatten()[torch.randperm(q.numel(), generator=g)].reshape(q.shape))
    assert w(ctx).item() == before.item()  # exactly: the sorted vectors are identical
    # sorting is the optimal 1-D coupling, so it never exceeds the identity coupling ||theta - theta_0||^2
    assert w(ctx).item() <= 2 * l2(ctx).item() * (1 + RTOL)


def test_wasserstein_state_dict_round_trips_into_fresh_instance(ctx):
    p = WassersteinToInit(1.0, params="weights")
    p(ctx)
    _perturb(ctx.model)
    fresh = WassersteinToInit(1.0, params="weights")
    fresh.load_state_dict(p.state_dict())
    assert fresh.anchored
    torch.testing.assert_close(fresh(ctx), p(ctx), rtol=0, atol=0)
    assert fresh(ctx).item() > 0


def test_wasserstein_errors_on_a_changed_model(ctx):
    from conftest import TinyNet

    p = WassersteinToInit(1.0)
    p(ctx)
    other = TinyNet(width=5).double()
    with pytest.raises(ConfigError, match="wasserstein_to_init.*reset"):
        p(StepContext(model=other, inputs=ctx.inputs, targets=ctx.targets))
    p.reset(other)
    assert p(StepContext(model=other, inputs=ctx.inputs, targets=ctx.targets)).item() == 0.0


def test_wasserstein_gradcheck(ctx):
    p = WassersteinToInit(0.5)
    p(ctx)
    _perturb(ctx.model)
    f, inputs = _as_function(p, ctx)
    assert torch.autograd.gradcheck(f, inputs)


# -- LOBSTER ---------------------------------------------------------------------------------


def _scaled_ce(outputs, targets):
    return 40.0 * F.cross_entropy(outputs, targets)  # large enough that some |dL/dtheta| exceed 1


def _lobster_ctx(ctx):
    return StepContext(
        model=ctx.model, inputs=ctx.inputs, targets=ctx.targets, outputs=ctx.model(ctx.inputs), loss_fn=_scaled_ce
    )


def _independent_grads(ctx):
    params = list(ctx.model.parameters())
    loss = _scaled_ce(ctx.model(ctx.inputs), ctx.targets)  # a separate forward pass
    return [g.detach() for g in torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("normalize", [False, True])
def test_lobster_value_and_gradient_are_the_lobster_update(ctx, normalize):
    grads = _independent_grads(ctx)
    flat = torch.cat([g.abs().flatten() for g in grads])
    assert (flat > 1).any() and (flat < 1).any()  # both sides of the (1 - s)_+ kink are exercised
    sens = [g.abs() / g.abs().max() if normalize else g.abs() for g in grads]
    params = [p.detach().numpy() for p in ctx.model.parameters()]
    expected = 0.3 * 0.5 * sum((np.maximum(1 - s.numpy(), 0) * p**2).sum() for s, p in zip(sens, params))
    penalty = SelectiveDecay(0.3, normalize=normalize)
    lctx = _lobster_ctx(ctx)
    value = penalty(lctx)
    _close(value, expected)
    ctx.model.zero_grad()
    value.backward()
    for p, s in zip(ctx.model.parameters(), sens):
        # s is held constant: the gradient is lambda * (1 - s)_+ * theta, LOBSTER's decay term
        torch.testing.assert_close(p.grad, 0.3 * (1 - s).clamp_min(0) * p.detach(), rtol=RTOL, atol=0)


def test_lobster_needs_outputs_and_loss_fn(ctx):
    assert SelectiveDecay.needs == {"outputs", "loss_fn"}
    with pytest.raises(MissingContextError, match="lobster.*train_step"):
        SelectiveDecay(1.0)(ctx)
    with torch.no_grad():
        detached = ctx.model(ctx.inputs)
    c = StepContext(model=ctx.model, inputs=ctx.inputs, targets=ctx.targets, outputs=detached, loss_fn=_scaled_ce)
    with pytest.raises(MissingContextError, match="lobster.*graph"):
        SelectiveDecay(1.0)(c)


def test_lobster_refuses_a_stateful_loss(ctx):
    class StatefulLoss:
        needs = frozenset({"indices"})

        def __call__(self, outputs, targets, indices=None):
            return F.cross_entropy(outputs, targets)

    c = _lobster_ctx(ctx)
    c.loss_fn = StatefulLoss()
    with pytest.raises(ConfigError, match="lobster.*stateless"):
        SelectiveDecay(1.0)(c)


# -- HyperSparse -------------------------------------------------------------------------------


def _hypersparse_grad_np(w, prune_rate):
    """The reference gradient (GreenAutoML4FAS/HyperSparse, grad_HS_loss) in NumPy, and its largest size."""
    a = np.abs(w)
    s = HYPERSPARSE_INFLECTION / np.sort(a)[math.floor(prune_rate * a.size)]
    scale = s * a.sum() / np.tanh(s * a).sum()  # |g_i| at |w_i| = 0, the largest
    return np.sign(w) * scale / np.cosh(s * a) ** 2, scale


@pytest.mark.parametrize(("prune_rate", "params"), [(0.9, "weights"), (0.5, "weights"), (0.0, "all")])
def test_hypersparse_gradient_is_the_reference_gradient(conv_ctx, prune_rate, params):
    model = conv_ctx.model
    covered = [p for p in model.parameters() if params == "all" or p.ndim >= 2]
    w = np.concatenate([p.detach().numpy().ravel() for p in covered])
    penalty = HyperSparse(0.2, prune_rate=prune_rate, params=params)
    value = penalty(conv_ctx)
    _close(value, 0.2 * np.abs(w).sum())  # the logged value is the L1 mass
    model.zero_grad()
    value.backward()
    got = np.concatenate([p.grad.numpy().ravel() for p in covered])
    expected, scale = _hypersparse_grad_np(w, prune_rate)
    # autograd forms sech^2 as 1 - tanh^2, exact to ~2 eps absolute (not relative, where tanh ~ 1)
    np.testing.assert_allclose(got, 0.2 * expected, rtol=RTOL, atol=0.2 * scale * 4 * EPS)
    if params == "weights":
        assert all(p.grad is None for p in model.parameters() if p.ndim < 2)


def test_hypersparse_spares_the_largest_weights(conv_ctx):
    model = conv_ctx.model
    HyperSparse(1.0, prune_rate=0.9)(conv_ctx).backward()
    w = torch.cat([p.detach().flatten() for p in model.parameters() if p.ndim >= 2]).abs()
    g = torch.cat([p.grad.flatten() for p in model.parameters() if p.ndim >= 2]).abs()
    order = w.argsort()
    assert (g[order][1:] <= g[order][:-1] * (1 + RTOL)).all()  # pressure decreases with magnitude
    cut = math.floor(0.9 * w.numel())
    assert g[order][cut + 1 :].max() < g[order][: cut // 2].min()  # kept weights feel less than small ones


def test_hypersparse_all_zero_weights_give_zero_not_nan(conv_ctx):
    with torch.no_grad():
        for p in conv_ctx.model.parameters():
            p.zero_()
    value = HyperSparse(1.0)(conv_ctx)
    value.backward()
    assert value.item() == 0.0
    assert all(torch.isfinite(p.grad).all() and (p.grad == 0).all() for p in conv_ctx.model.parameters() if p.ndim >= 2)


# -- in train_step -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("elastic_net", {"alpha": 0.3}),
        ("group_lasso", {"groups": "columns"}),
        ("norm_loss", {}),
        ("wasserstein_to_init", {}),
        ("lobster", {"normalize": True}),
        ("hypersparse", {"prune_rate": 0.8}),
    ],
)
def test_one_train_step_with_each_member(tiny, name, kwargs):
    penalty = reglab.penalties.get(name, 0.01, **kwargs)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    before = [p.detach().clone() for p in tiny.parameters()]
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    record = train_step(tiny, (x, y), F.cross_entropy, opt, penalty)
    assert f"penalty/{name}" in record
    assert all(math.isfinite(v) for v in record.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, tiny.parameters()))
    # a second step: stateful members keep their anchor, and the term stays finite
    record = train_step(tiny, (x, y), F.cross_entropy, opt, penalty, step=1)
    assert math.isfinite(record[f"penalty/{name}"])
    if name == "wasserstein_to_init":
        assert record[f"penalty/{name}"] > 0


# -- weight compander ------------------------------------------------------------------------------


def test_compander_is_odd_bounded_and_increasing():
    comp = WeightCompander(max_abs=0.7, slope=3.0, dtype=torch.float64)
    v = torch.cat([torch.linspace(-5, 5, 2001, dtype=torch.float64), torch.tensor([1e6, 1e300], dtype=torch.float64)])
    v = torch.cat([-v.flip(0), v])
    out = comp(v)
    a = comp.max_abs
    assert (out.abs() <= a).all()
    torch.testing.assert_close(comp(-v), -out, rtol=0, atol=EPS * a.item())  # odd, up to one ulp of A
    small = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    assert (comp(small).diff() > 0).all()  # strictly increasing where it has not saturated
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(comp(x).sum(), x)
    torch.testing.assert_close(slope, torch.tensor([3.0], dtype=torch.float64), rtol=4 * EPS, atol=0)
    torch.testing.assert_close(comp(torch.tensor([1e6], dtype=torch.float64)), a.reshape(1), rtol=EPS, atol=0)


def test_compander_gradcheck_through_learnable_hyperparameters():
    comp = WeightCompander(max_abs=0.8, slope=2.0, learnable=True, dtype=torch.float64)
    v = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def f(v, log_a, log_s):
        a, s = log_a.exp(), log_s.exp()
        return a * torch.tanh(s * v / a)

    inputs = (v, comp.log_max_abs.detach().clone().requires_grad_(True), comp.log_slope.detach().clone())
    inputs[2].requires_grad_(True)
    torch.testing.assert_close(f(*inputs), comp(v), rtol=0, atol=0)
    assert torch.autograd.gradcheck(f, inputs)


def test_weight_compander_preserves_weights_and_trains_the_latent(tiny):
    w0 = tiny.out.weight.detach().clone()
    weight_compander(tiny.out, max_abs=1.0, slope=2.0)
    assert parametrize.is_parametrized(tiny.out, "weight")
    # f(f^{-1}(w)): atanh/tanh are conditioned by 1 / (1 - (w/A)^2) <= 1.6 here, a few ulps each
    assert w0.abs().max().item() < 0.6
    torch.testing.assert_close(tiny.out.weight, w0, rtol=0, atol=16 * EPS)
    latent = tiny.out.parametrizations.weight.original
    a = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(latent, a / 2.0 * torch.atanh(w0 / a), rtol=RTOL, atol=0)
    x = torch.randn(3, 4, dtype=torch.float64)
    tiny.head(x).sum().backward()
    # dL/dv = dL/dw * f'(v), f'(v) = slope * sech^2(slope v / A)
    dw = torch.ones(3, 1, dtype=torch.float64) * x.sum(0)  # dL/dw for sum of outputs
    torch.testing.assert_close(latent.grad, dw * 2.0 / torch.cosh(2.0 * latent.detach()) ** 2, rtol=RTOL, atol=0)


def test_weight_compander_without_preserve_uses_weights_as_latent(tiny):
    with torch.no_grad():
        tiny.out.weight.mul_(10.0)  # beyond max_abs: fine without preserve
    w0 = tiny.out.weight.detach().clone()
    weight_compander(tiny.out, max_abs=0.5, slope=1.5, preserve=False)
    assert torch.equal(tiny.out.parametrizations.weight.original.detach(), w0)
    torch.testing.assert_close(tiny.out.weight, 0.5 * torch.tanh(1.5 * w0 / 0.5), rtol=RTOL, atol=0)
    assert (tiny.out.weight.abs() < 0.5).all()


def test_weight_compander_errors(tiny):
    with torch.no_grad():
        tiny.out.weight[0, 0] = 1.5
    with pytest.raises(ConfigError, match="max_abs"):
        weight_compander(tiny.out, max_abs=1.0)
    assert not parametrize.is_parametrized(tiny.out)  # the module was left untouched
    with pytest.raises(ConfigError, match="no parameter 'kernel'"):
        weight_compander(tiny.out, name="kernel")
    with pytest.raises(ConfigError, match="slope"):
        weight_compander(tiny.out, max_abs=2.0, slope=0.0)
    weight_compander(tiny.out, max_abs=2.0)
    with pytest.raises(ConfigError, match="already parametrized"):
        weight_compander(tiny.out, max_abs=2.0)
    with pytest.raises(ConfigError, match="no weight compander"):
        remove_weight_compander(tiny.body)


def test_remove_weight_compander_keeps_effective_weights(tiny):
    weight_compander(tiny.out, max_abs=0.9, learnable=True)
    weight_compander(tiny.body[0], max_abs=0.9, preserve=False)
    expected = {n: m.weight.detach().clone() for n, m in (("out", tiny.out), ("body", tiny.body[0]))}
    remove_weight_compander(tiny)
    for n, m in (("out", tiny.out), ("body", tiny.body[0])):
        assert not parametrize.is_parametrized(m)
        assert type(m) is nn.Linear and isinstance(m.weight, nn.Parameter)
        assert torch.equal(m.weight.detach(), expected[n])
    assert {n for n, _ in tiny.named_parameters()} == {"body.0.weight", "body.0.bias", "out.weight", "out.bias"}


def test_weight_compander_state_dict_round_trip_and_learnable_parameters(tiny):
    from conftest import TinyNet

    weight_compander(tiny.out, max_abs=0.9, slope=1.7, learnable=True)
    names = {n for n, _ in tiny.named_parameters()}
    assert {"out.parametrizations.weight.0.log_max_abs", "out.parametrizations.weight.0.log_slope"} <= names
    torch.manual_seed(11)
    fresh = TinyNet().double()
    weight_compander(fresh.out, max_abs=0.5, slope=1.0, learnable=True)
    fresh.load_state_dict(tiny.state_dict())
    assert torch.equal(fresh.out.weight, tiny.out.weight)
    torch.testing.assert_close(fresh.out.parametrizations.weight[0].slope, torch.tensor(1.7, dtype=torch.float64))


def test_weight_compander_in_train_step(tiny):
    for m in (tiny.body[0], tiny.out):
        weight_compander(m, max_abs=0.8, learnable=True)
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    log_a = tiny.out.parametrizations.weight[0].log_max_abs.detach().clone()
    for step in range(3):
        record = train_step(tiny, (x, y), F.cross_entropy, opt, ElasticNet(1e-3), step=step)
        assert all(math.isfinite(v) for v in record.values())
    assert not torch.equal(tiny.out.parametrizations.weight[0].log_max_abs.detach(), log_a)  # phi is learned
    for m in (tiny.body[0], tiny.out):
        assert (m.weight.abs() < m.parametrizations.weight[0].max_abs).all()


# -- the fused kernels: against per-tensor float64 oracles ------------------------------------------------


class Mixed(nn.Module):
    """A float64 and a float32 Linear, a frozen layer, a zero bias and one weight shared by two modules."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.a = nn.Linear(4, 3).double()
        self.b = nn.Linear(3, 5)
        self.frozen = nn.Linear(5, 2)
        self.frozen.requires_grad_(False)
        self.tied = nn.Linear(4, 3, bias=False).double()
        self.tied.weight = self.a.weight  # counted once, as named_parameters does
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            self.b.bias.zero_()


def _oracle_grads(model, value_fn):
    """Value and per-parameter gradients of ``value_fn(list of float64 leaf copies)``, for the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    leaves = [p.detach().double().requires_grad_(True) for p in params]
    value = value_fn(leaves)
    return value.item(), torch.autograd.grad(value, leaves, allow_unused=True), params


@pytest.mark.parametrize(
    ("make", "oracle"),
    [
        (lambda: L2(0.3), lambda ps, _: 0.15 * sum(p.pow(2).sum() for p in ps)),
        (lambda: L1(0.3), lambda ps, _: 0.3 * sum(p.abs().sum() for p in ps)),
        (
            lambda: ElasticNet(0.3, alpha=0.25),
            lambda ps, _: 0.3 * sum(0.25 * p.abs().sum() + 0.375 * p.pow(2).sum() for p in ps),
        ),
        (lambda: L2ToInit(0.3), lambda ps, a: 0.15 * sum((p - q).pow(2).sum() for p, q in zip(ps, a))),
        (lambda: GroupLasso(0.3), None),
        (lambda: NormLoss(0.3), None),
    ],
    ids=["l2", "l1", "elastic_net", "l2_to_init", "group_lasso", "norm_loss"],
)
def test_fused_kernels_on_mixed_dtypes_frozen_zero_and_shared_parameters(make, oracle):
    """Value and gradient of each fused penalty equal the per-tensor formula in float64: every trainable parameter
    once (the shared weight too), the frozen ones left out, a zero bias with subgradient 0, float32 and float64 mixed.

    Tolerance: the float32 tensors enter both sides exactly (the oracle upcasts them); the kernels sum the float32
    terms in float32, so the value differs by ~ n * 2^-24 relative (n <= 20 terms per tensor) and the float32
    gradients by one rounding (2^-24 relative): rtol 1e-5 bounds both; a formula error is O(1) relative.
    """
    model = Mixed()
    penalty = make()
    anchors = [p.detach().double() + 0.1 for p in model.parameters() if p.requires_grad]
    if isinstance(penalty, L2ToInit):
        penalty.reset(model)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1)
        anchors = [a - 0.1 for a in anchors]
    if oracle is None:  # the structured penalties cover the matrices only
        groups = lambda p: torch.linalg.vector_norm(p.flatten(1), dim=1)  # noqa: E731
        if isinstance(penalty, GroupLasso):
            oracle = lambda ps, _: 0.3 * sum(math.sqrt(p.shape[1]) * groups(p).sum() for p in ps if p.ndim >= 2)  # noqa: E731
        else:
            oracle = lambda ps, _: 0.3 * sum((groups(p) - 1).pow(2).sum() for p in ps if p.ndim >= 2)  # noqa: E731
    expected, grads, params = _oracle_grads(model, lambda ps: oracle(ps, anchors))
    ctx = StepContext(model=model, inputs=torch.zeros(1, 4), targets=torch.zeros(1, dtype=torch.long))
    value = penalty(ctx)
    assert value.dtype == torch.float64  # promoted, as the sum of the per-tensor terms is
    torch.testing.assert_close(value.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)
    value.backward()
    for p, g in zip(params, grads):
        if g is None:  # a vector under a penalty on matrices
            assert p.grad is None
            continue
        assert p.grad is not None and p.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad.double(), g, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.frozen.parameters())
    if isinstance(penalty, (L1, ElasticNet)):
        assert (model.b.bias.grad == 0).all()  # the subgradient of |x| at 0


@pytest.mark.parametrize(
    "make", [lambda: L2(0.3), lambda: L1(0.3), lambda: ElasticNet(0.3), lambda: GroupLasso(0.3), lambda: NormLoss(0.3)]
)
def test_fused_kernels_have_the_second_derivatives_of_the_formula(conv_ctx, make):
    """gradgradcheck (float64, central differences of the gradient) through the hand-written backward passes."""
    f, inputs = _as_function(make(), conv_ctx)
    assert all((t.abs() > 1e-3).all() for t in inputs)  # away from the kink of |x| at 0
    assert torch.autograd.gradgradcheck(f, inputs)


def test_parameter_selection_follows_the_model_between_calls(ctx):
    """Nothing stale is reused: freezing, replacing a layer and re-anchoring all show in the next value."""
    model = ctx.model
    l2, to_init = L2(1.0), L2ToInit(1.0)
    total = lambda: 0.5 * sum(p.detach().pow(2).sum() for p in model.parameters() if p.requires_grad)  # noqa: E731
    _close(l2(ctx), total().item())
    to_init(ctx)
    first = next(model.parameters())
    first.requires_grad_(False)
    _close(l2(ctx), total().item())
    _close(to_init(ctx), 0.0)
    first.requires_grad_(True)
    with torch.no_grad():
        first.add_(1.0)
    _close(to_init(ctx), 0.5 * first.numel())
    name = next(n for n, m in model.named_children() if isinstance(m, nn.Linear))
    old = getattr(model, name)
    setattr(model, name, nn.Linear(old.in_features, old.out_features).double())
    _close(l2(ctx), total().item())
    with pytest.raises(ConfigError, match="does not match the stored anchor"):
        setattr(model, name, nn.Linear(old.in_features, old.out_features + 1).double())
        to_init(ctx)
    to_init.reset(model)
    _close(to_init(ctx), 0.0)
