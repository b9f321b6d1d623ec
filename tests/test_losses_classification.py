"""Classification losses against independent float64 formulas, gradcheck, reductions, extremes and properties.

The generic tests are driven by ``CASES``: one row per registered loss
configuration, with the loss's formula written out again below in plain
float64 (loops over classes, no shared helpers with the implementation). A new
loss is covered by adding a row; ``test_every_registered_loss_has_a_case``
fails until it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import reglab.losses  # noqa: F401  (populates the registry)
from reglab.core import ConfigError, ShapeError
from reglab.losses.base import REGISTRY
from reglab.losses.calibrated import ACLS, TSLA, MaxSup
from reglab.losses.classification import (
    CircleLoss,
    CompSumLoss,
    CrossEntropy,
    EncouragingLoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    PolyLoss,
    SphericalZLoss,
    log1m_softmax,
)
from reglab.losses.normalizations import SparsemaxLoss, StableMaxCrossEntropy, log_stablemax, sparsemax, stablemax

# Float64 values of the implementation and of the reference formulas below differ only by rounding: a few
# ulps (2.2e-16) per operation, amplified by at most the condition number of log/exp/softmax on logits with
# |z| <= 10 (< 1e3 here). 1e-10 relative is far above that and far below any formula error.
RTOL, ATOL = 1e-10, 1e-12
N, K = 6, 5


# -- independent reference formulas (float64, per example, loops over classes) ------------------------


def _softmax_row(z: torch.Tensor) -> list[float]:
    m = max(float(v) for v in z)
    e = [math.exp(float(v) - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _rows(fn: Callable[[torch.Tensor, torch.Tensor], float]):
    def ref(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.tensor([fn(z[i], q[i]) for i in range(z.shape[0])], dtype=torch.float64)

    return ref


def _expected_over_classes(per_class: Callable[[torch.Tensor, int], float]):
    """sum_k q_k loss(z, k): the soft-target convention, and the hard loss when q is one-hot."""
    return _rows(lambda z, q: sum(float(q[k]) * per_class(z, k) for k in range(len(z)) if float(q[k]) != 0.0))


def ref_ce(z, k):
    return -math.log(_softmax_row(z)[k])


def ref_ls(eps):
    return _rows(lambda z, q: sum(((1 - eps) * float(q[k]) + eps / len(z)) * ref_ce(z, k) for k in range(len(z))))


def ref_poly1(eps):
    return _expected_over_classes(lambda z, k: ref_ce(z, k) + eps * (1 - _softmax_row(z)[k]))


def ref_focal(gamma, alpha=None):
    def per_class(z, k):
        p = _softmax_row(z)[k]
        return (1.0 if alpha is None else alpha[k]) * (1 - p) ** gamma * -math.log(p)

    return _expected_over_classes(per_class)


def ref_encouraging(log_end):
    def per_class(z, k):
        p = _softmax_row(z)[k]
        if p > log_end:
            bonus = (p - log_end) / (log_end - 1) + math.log(1 - log_end)
        else:
            bonus = math.log(max(1 - p, 1e-5))
        return -math.log(p) + bonus

    return _expected_over_classes(per_class)


def ref_squentropy():
    return _expected_over_classes(
        lambda z, k: ref_ce(z, k) + sum(float(z[j]) ** 2 for j in range(len(z)) if j != k) / (len(z) - 1)
    )


def ref_comp_sum(tau):
    def per_class(z, k):
        u = sum(math.exp(float(z[j]) - float(z[k])) for j in range(len(z)) if j != k)
        return math.log1p(u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)

    return _expected_over_classes(per_class)


def ref_z_loss(a, b):
    def per_class(o, k):
        vals = [float(v) for v in o]
        mu = sum(vals) / len(vals)
        sigma = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
        zk = (vals[k] - mu) / sigma
        return math.log1p(math.exp(a * (b - zk))) / a

    return _expected_over_classes(per_class)


def _s(x: float) -> float:
    return x + 1 if x >= 0 else 1 / (1 - x)


def ref_stablemax_ce():
    def per_class(z, k):
        s = [_s(float(v)) for v in z]
        return -math.log(s[k] / sum(s))

    return _expected_over_classes(per_class)


def ref_sparsemax_tau(z: list[float]) -> float:
    """tau with sum_j max(z_j - tau, 0) = 1, by bisection (independent of the sort-based algorithm)."""
    lo, hi = min(z) - 1.0, max(z)
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(v - mid, 0.0) for v in z) > 1:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def ref_sparsemax():
    def loss(z, q):
        vals, qs = [float(v) for v in z], [float(v) for v in q]
        tau = ref_sparsemax_tau(vals)
        support = [v for v in vals if v > tau]
        return (
            -sum(a * b for a, b in zip(qs, vals))
            + 0.5 * sum(v * v - tau * tau for v in support)
            + 0.5 * sum(v * v for v in qs)
        )

    return _rows(loss)


def ref_circle(gamma, m):
    def loss(s, q):
        y = int(q.argmax())
        sy = float(s[y])
        pos = math.exp(-gamma * max(1 + m - sy, 0.0) * (sy - (1 - m)))
        neg = sum(math.exp(gamma * max(float(s[j]) + m, 0.0) * (float(s[j]) - m)) for j in range(len(s)) if j != y)
        return math.log1p(neg * pos)

    return _rows(loss)


def ref_max_suppression(alpha):
    def loss(z, q):
        vals = [float(v) for v in z]
        ce = sum(float(q[k]) * ref_ce(z, k) for k in range(len(z)))
        return ce + alpha * (max(vals) - sum(vals) / len(vals))

    return _rows(loss)


def ref_acls(alpha, lambda_pos, lambda_neg, margin):
    def loss(z, q):
        vals = [float(v) for v in z]
        top = max(range(len(vals)), key=lambda j: vals[j])
        pos = max(vals[top] - margin, 0.0) ** 2
        neg = sum(max(vals[top] - vals[j] - margin, 0.0) ** 2 for j in range(len(vals)) if j != top)
        ce = sum(float(q[k]) * ref_ce(z, k) for k in range(len(z)))
        return ce + alpha * (lambda_pos * pos + lambda_neg * neg / (len(vals) - 1))

    return _rows(loss)


# -- the table ------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    name: str  # registry name
    kwargs: dict
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z, q) -> per-example float64
    bad_kwargs: list[tuple[dict, str]] = field(default_factory=list)  # (kwargs, message regex)
    grad_kwargs: dict = field(default_factory=dict)  # overrides for gradcheck (e.g. no stop-gradient)
    inputs: str = "logits"  # "logits" (scale 3) or "cosine" (in (-0.9, 0.9))
    bounded: bool = True  # False: the true value overflows for very misclassified examples (documented)

    def build(self, **overrides):
        return REGISTRY.get(self.name, **{**self.kwargs, **overrides})


CASES = [
    Case("cross_entropy", "cross_entropy", {}, _expected_over_classes(ref_ce)),
    Case("label_smoothing", "label_smoothing", {"smoothing": 0.2}, ref_ls(0.2), [({"smoothing": 1.0}, "smoothing")]),
    Case(
        "poly1",
        "poly1",
        {"epsilon": 2.0},
        ref_poly1(2.0),
        [({"epsilon": -1.5}, r"epsilon must be >= -1, got -1.5"), ({"epsilon": "1"}, r"epsilon must be a finite")],
    ),
    Case("focal", "focal", {"gamma": 2.0}, ref_focal(2.0), [({"gamma": -0.5}, r"gamma must be >= 0, got -0.5")]),
    Case(
        "focal_half_alpha",
        "focal",
        {"gamma": 0.5, "alpha": [1.0, 0.5, 2.0, 1.5, 0.25]},
        ref_focal(0.5, [1.0, 0.5, 2.0, 1.5, 0.25]),
        [({"alpha": [1.0, -1.0]}, r"alpha must be a 1-D sequence of finite non-negative")],
    ),
    Case(
        "encouraging",
        "encouraging",
        {"log_end": 0.75},
        ref_encouraging(0.75),
        [({"log_end": 0.0}, r"log_end must be in \(0, 1\], got 0.0"), ({"log_end": 1.5}, "log_end")],
    ),
    Case("encouraging_plain", "encouraging", {"log_end": 1.0}, ref_encouraging(1.0)),
    Case("squentropy", "squentropy", {}, ref_squentropy()),
    Case("comp_sum_gce", "comp_sum", {"tau": 1.5}, ref_comp_sum(1.5), [({"tau": -1.0}, r"tau must be >= 0, got -1.0")]),
    Case("comp_sum_mae", "comp_sum", {"tau": 2.0}, ref_comp_sum(2.0)),
    Case("comp_sum_exp", "comp_sum", {"tau": 0.5}, ref_comp_sum(0.5), bounded=False),
    Case(
        "z_loss",
        "z_loss",
        {"a": 2.0, "b": 0.5},
        ref_z_loss(2.0, 0.5),
        [({"a": 0.0}, r"a must be > 0, got 0.0"), ({"b": math.inf}, r"b must be a finite number, got inf")],
    ),
    Case("stablemax_ce", "stablemax_ce", {}, ref_stablemax_ce()),
    Case("sparsemax", "sparsemax", {}, ref_sparsemax()),
    Case(
        "circle",
        "circle",
        {"gamma": 16.0, "margin": 0.25},
        ref_circle(16.0, 0.25),
        [({"gamma": 0.0}, r"gamma must be > 0, got 0.0"), ({"margin": 1.5}, r"margin must be in \[0, 1\], got 1.5")],
        grad_kwargs={"detach_weights": False},
        inputs="cosine",
    ),
    Case(
        "tsla",
        "tsla",
        {"smoothing": 0.2, "switch_step": 1000},
        ref_ls(0.2),
        [
            ({"switch_step": -1}, r"switch_step must be an int >= 0, got -1"),
            ({"switch_step": 2.5}, "switch_step"),
            ({"smoothing": 1.0, "switch_step": 1}, r"smoothing must be in \[0, 1\), got 1.0"),
        ],
    ),
    Case(
        "max_suppression",
        "max_suppression",
        {"alpha": 0.3},
        ref_max_suppression(0.3),
        [({"alpha": -0.1}, r"alpha must be >= 0, got -0.1")],
    ),
    Case(
        "acls",
        "acls",
        {"alpha": 0.2, "lambda_pos": 1.0, "lambda_neg": 0.5, "margin": 1.0},
        ref_acls(0.2, 1.0, 0.5, 1.0),
        [
            ({"margin": -1.0}, r"margin must be >= 0, got -1.0"),
            ({"lambda_neg": -0.1}, "lambda_neg"),
            ({"lambda_pos": math.nan}, r"lambda_pos must be a finite number, got nan"),
        ],
        grad_kwargs={"detach_max": False},
    ),
]
IDS = [c.id for c in CASES]


def _inputs(case: Case, seed: int = 0, n: int = N, k: int = K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (z, int targets, probability targets) in float64."""
    g = torch.Generator().manual_seed(seed)
    if case.inputs == "cosine":
        z = torch.rand(n, k, generator=g, dtype=torch.float64) * 1.8 - 0.9
    else:
        z = 3.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    q = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)
    return z, y, q


# -- generic tests ------------------------------------------------------------------------------------


def test_every_registered_loss_has_a_case():
    modules = {"reglab.losses.classification", "reglab.losses.normalizations", "reglab.losses.calibrated"}
    ours = {name for name in REGISTRY.names() if REGISTRY.entry(name).factory.__module__ in modules}
    assert ours == {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value_matches_independent_formula(case):
    z, y, _ = _inputs(case)
    got = case.build(reduction="none")(z, y)
    torch.testing.assert_close(got, case.reference(z, F.one_hot(y, K).double()), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_soft_targets(case):
    z, y, q = _inputs(case)
    loss = case.build(reduction="none")
    if not type(loss).soft_targets:
        with pytest.raises(ShapeError, match="probability targets are not supported"):
            loss(z, q)
        return
    torch.testing.assert_close(loss(z, q), case.reference(z, q), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(loss(z, F.one_hot(y, K).double()), loss(z, y), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case):
    z, y, _ = _inputs(case, seed=1)
    loss = case.build(**case.grad_kwargs)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z.clone().requires_grad_(),))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reduction_semantics(case):
    z, y, _ = _inputs(case, seed=2)
    none = case.build(reduction="none")(z, y)
    assert none.shape == (N,)
    torch.testing.assert_close(case.build(reduction="sum")(z, y), none.sum(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(case.build(reduction="mean")(z, y), none.mean(), rtol=RTOL, atol=ATOL)
    with pytest.raises(ConfigError, match="reduction must be one of"):
        case.build(reduction="avg")


EXTREME = torch.tensor(
    [
        [1e4, -1e4, 0.0, 5.0, -3.0],
        [-1e4, 1e4, 3.0, 0.0, 1.0],
        [0.0, 0.0, 1e4, -1e4, 2.0],
        [1e4, 1e4, -1e4, -1e4, 0.0],
    ]
)
EXTREME_Y = torch.tensor([0, 0, 3, 1])  # target is the max, the min, the min, a tied max
EXTREME_CORRECT = torch.tensor([True, False, False, True])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_extreme_logits_are_finite(case):
    z = EXTREME.clone().requires_grad_()  # float32, as in training
    values = case.build(reduction="none")(z, EXTREME_Y)
    assert not torch.isnan(values).any(), values
    if case.bounded:
        values.sum().backward()
        assert torch.isfinite(values).all(), values
        assert torch.isfinite(z.grad).all(), z.grad
    else:  # the exact value overflows for badly misclassified rows: +inf, never nan; the others stay finite
        assert torch.isinf(values[~EXTREME_CORRECT]).all() and (values[~EXTREME_CORRECT] > 0).all()
        z = EXTREME[EXTREME_CORRECT].clone().requires_grad_()
        values = case.build(reduction="none")(z, EXTREME_Y[EXTREME_CORRECT])
        values.sum().backward()
        assert torch.isfinite(values).all() and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("case", [c for c in CASES if c.bad_kwargs], ids=[c.id for c in CASES if c.bad_kwargs])
def test_constructor_validation(case):
    for kwargs, pattern in case.bad_kwargs:
        with pytest.raises(ConfigError, match=pattern):
            case.build(**kwargs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_shape_errors(case):
    z, y, _ = _inputs(case)
    loss = case.build()
    with pytest.raises(ShapeError, match="logits must have shape"):
        loss(z[0], y[:1])
    with pytest.raises(ShapeError, match="targets must be"):
        loss(z, y[:-1])


# -- properties ---------------------------------------------------------------------------------------


def test_poly1_epsilon_zero_and_focal_gamma_zero_equal_ce():
    z, y, q = _inputs(CASES[0])
    ce = CrossEntropy(reduction="none")
    for loss in (PolyLoss(epsilon=0.0, reduction="none"), FocalLoss(gamma=0.0, reduction="none")):
        torch.testing.assert_close(loss(z, y), ce(z, y), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(loss(z, q), ce(z, q), rtol=RTOL, atol=ATOL)


def test_focal_alpha_length_must_match_classes():
    z, y, _ = _inputs(CASES[0])
    with pytest.raises(ConfigError, match="alpha has 3 entries but the logits have 5 classes"):
        FocalLoss(alpha=[1.0, 1.0, 1.0])(z, y)


def test_log1m_softmax_is_accurate_near_one():
    z = torch.tensor([[40.0, 0.0, -1.0], [0.3, 0.1, -0.2]], dtype=torch.float64)
    got = log1m_softmax(z)
    # row 0, class 0: 1 - p_0 = (1 + e^-1) / sum_j e^z_j ~ 5.8e-18 is below float64's eps, so forming 1 - p gives 0;
    # the exact value is log(1 + e^-1) - logsumexp(z)
    exact = math.log1p(math.exp(-1.0)) - torch.logsumexp(z[0], 0)
    torch.testing.assert_close(got[0, 0], exact, rtol=1e-14, atol=0)
    assert torch.log1p(-torch.softmax(z[0], 0))[0] == -math.inf  # what the naive formula gives
    torch.testing.assert_close(got[1], torch.log1p(-torch.softmax(z[1], 0)), rtol=1e-14, atol=0)


def test_comp_sum_members():
    z, y, _ = _inputs(CASES[0])
    p_y = torch.softmax(z, 1)[torch.arange(N), y]
    # tau = 1 is CE exactly (same float operations)
    torch.testing.assert_close(
        CompSumLoss(tau=1.0, reduction="none")(z, y), F.cross_entropy(z, y, reduction="none"), rtol=0, atol=0
    )
    torch.testing.assert_close(CompSumLoss(tau=2.0, reduction="none")(z, y), 1 - p_y, rtol=RTOL, atol=ATOL)
    gce_q = 0.3  # generalized cross-entropy (1 - p^q) / q at tau = 1 + q
    torch.testing.assert_close(
        CompSumLoss(tau=1.3, reduction="none")(z, y), (1 - p_y**gce_q) / gce_q, rtol=RTOL, atol=ATOL
    )
    sum_exp = (z - z[torch.arange(N), y][:, None]).exp().sum(1) - 1
    torch.testing.assert_close(CompSumLoss(tau=0.0, reduction="none")(z, y), sum_exp, rtol=RTOL, atol=ATOL)


def test_z_loss_is_shift_and_scale_invariant():
    z, y, _ = _inputs(CASES[0])
    loss = SphericalZLoss(a=2.0, b=0.5, reduction="none")
    base = loss(z, y)
    # a shift by c loses about log2(c / |z|) bits in the centring: c = 100, |z| ~ 3 -> ~1e-14 absolute; scaling
    # by a power of 2 is exact and by 7 or 1e-3 costs a few ulps, so 1e-12 is a safe stated bound.
    for transformed in (z + 100.0, z - 3.7, z * 7.0, z * 1e-3, z * 1024.0, 2.5 * z + 11.0):
        torch.testing.assert_close(loss(transformed, y), base, rtol=0, atol=1e-12)
    assert not torch.allclose(loss(-z, y), base)  # a negative scale flips the ranking and is not invariant


def test_z_loss_needs_three_classes():
    with pytest.raises(ShapeError, match="at least 3 classes"):
        SphericalZLoss()(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


def test_sparsemax_is_a_sparse_distribution():
    g = torch.Generator().manual_seed(3)
    z = 4.0 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    p = sparsemax(z)
    # the sum is tau-arithmetic on |z| <~ 20: a few ulps of 20 each over 7 classes
    torch.testing.assert_close(p.sum(1), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-13)
    assert (p >= 0).all()
    assert (p == 0).sum(1).min() >= 1 and (p == 0).float().mean() > 0.5  # spread logits: exact zeros
    for i in range(5):
        tau = ref_sparsemax_tau(z[i].tolist())
        torch.testing.assert_close(p[i], (z[i] - tau).clamp_min(0), rtol=0, atol=1e-12)
    # dim argument and the uniform case: equal logits give the uniform distribution
    torch.testing.assert_close(sparsemax(z.T, dim=0), p.T)
    torch.testing.assert_close(sparsemax(torch.zeros(2, 4)), torch.full((2, 4), 0.25))


def test_sparsemax_jacobian():
    z = torch.tensor([1.2, 0.9, 0.1, -2.0, 0.5], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(sparsemax, z)
    s = (sparsemax(z) > 0).double()
    torch.testing.assert_close(jac, torch.diag(s) - torch.outer(s, s) / s.sum())


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_sparsemax_loss_gradient_is_sparsemax_minus_target(soft):
    z, y, q = _inputs(CASES[0], seed=4)
    target = q if soft else y
    z = z.clone().requires_grad_()
    SparsemaxLoss(reduction="sum")(z, target).backward()
    onehot = q if soft else F.one_hot(y, K).double()
    torch.testing.assert_close(z.grad, sparsemax(z.detach()) - onehot, rtol=0, atol=1e-12)
    # and the loss is zero when the target already holds all the sparsemax mass
    separated = torch.tensor([[5.0, 0.0, -1.0]], dtype=torch.float64)
    assert SparsemaxLoss()(separated, torch.tensor([0])) == 0


def test_stablemax_preserves_ranking_and_normalizes():
    g = torch.Generator().manual_seed(5)
    z = 5.0 * torch.randn(20, 9, generator=g, dtype=torch.float64)
    p = stablemax(z)
    assert torch.equal(p.argsort(dim=1), torch.softmax(z, 1).argsort(dim=1))
    torch.testing.assert_close(p.sum(1), torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(log_stablemax(z, dim=1).exp(), p, rtol=1e-12, atol=0)
    assert torch.isfinite(log_stablemax(torch.tensor([[3e38, -3e38, 0.0]]))).all()


def test_stablemax_ce_is_computed_in_float64():
    z, y, _ = _inputs(CASES[0])
    z32 = z.float()
    got = StableMaxCrossEntropy(reduction="none")(z32, y)
    assert got.dtype == torch.float32
    # the float64 value of the float32 input, rounded once to float32
    expected = ref_stablemax_ce()(z32.double(), F.one_hot(y, K).double()).float()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_max_suppression_equals_label_smoothing_on_argmax_targets():
    z, y, _ = _inputs(CASES[0])
    top = z.argmax(1)
    alpha = 0.15
    torch.testing.assert_close(
        MaxSup(alpha, reduction="none")(z, top),
        LabelSmoothingCrossEntropy(alpha, reduction="none")(z, top),
        rtol=RTOL,
        atol=ATOL,
    )
    wrong = (top + 1) % K
    assert not torch.allclose(MaxSup(alpha)(z, wrong), LabelSmoothingCrossEntropy(alpha)(z, wrong))


def test_tsla_switches_from_label_smoothing_to_ce():
    z, y, _ = _inputs(CASES[0])
    loss = TSLA(0.2, switch_step=3)
    ls, ce = LabelSmoothingCrossEntropy(0.2)(z, y), CrossEntropy()(z, y)
    seen = [loss(z, y) for _ in range(5)]
    for value in seen[:3]:
        torch.testing.assert_close(value, ls, rtol=RTOL, atol=ATOL)
    for value in seen[3:]:
        torch.testing.assert_close(value, ce, rtol=RTOL, atol=ATOL)
    assert int(loss.step) == 5 and not loss.smoothing_active


def test_tsla_counts_only_training_calls():
    z, y, _ = _inputs(CASES[0])
    loss = TSLA(0.2, switch_step=1).eval()
    for _ in range(3):
        torch.testing.assert_close(loss(z, y), LabelSmoothingCrossEntropy(0.2)(z, y))
    assert int(loss.step) == 0
    loss.train()(z, y)
    assert int(loss.step) == 1
    torch.testing.assert_close(loss(z, y), CrossEntropy()(z, y))


def test_tsla_step_round_trips_through_state_dict():
    z, y, _ = _inputs(CASES[0])
    loss = TSLA(0.2, switch_step=4)
    for _ in range(4):
        loss(z, y)
    state = loss.state_dict()
    assert int(state["step"]) == 4
    resumed = TSLA(0.2, switch_step=4)
    resumed.load_state_dict(state)
    assert int(resumed.step) == 4 and not resumed.smoothing_active
    torch.testing.assert_close(resumed(z, y), CrossEntropy()(z, y))


def test_encouraging_bonus_is_tangent_at_log_end():
    # p_y just below and above log_end: the bonus and its slope are continuous (the linear part is a tangent)
    le = 0.75
    loss = EncouragingLoss(log_end=le, reduction="none")
    plain = EncouragingLoss(log_end=1.0, reduction="none")
    # two classes: p_0 = sigmoid(z0 - z1); choose z0 so p_0 = le -+ delta
    delta = 1e-6
    logit = math.log(le / (1 - le))
    zs = torch.tensor([[logit - 4 * delta, 0.0], [logit + 4 * delta, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0])
    values = loss(zs, y)
    values.sum().backward()
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-5)  # |slope| * 8 delta
    torch.testing.assert_close(zs.grad[0], zs.grad[1], rtol=0, atol=1e-4)  # curvature * 8 delta
    # below log_end both forms agree; above, the conservative bonus is larger (bounded)
    z = torch.tensor([[0.1, 0.0, -0.3], [6.0, 0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0, 0])
    torch.testing.assert_close(loss(z, t)[0], plain(z, t)[0])
    assert loss(z, t)[1] > plain(z, t)[1]


def test_circle_detached_gradient_matches_formula():
    case = next(c for c in CASES if c.name == "circle")
    s, y, _ = _inputs(case, seed=6)
    gamma, m = 16.0, 0.25
    s = s.clone().requires_grad_()
    CircleLoss(gamma, m, reduction="sum")(s, y).backward()
    onehot = F.one_hot(y, K).bool()
    alpha = torch.where(onehot, 1 + m - s.detach(), s.detach() + m).clamp_min(0)
    delta = torch.where(onehot, 1 - m, m)
    p = torch.softmax(gamma * alpha * (s.detach() - delta), 1)
    torch.testing.assert_close(s.grad, gamma * alpha * (p - onehot.double()), rtol=RTOL, atol=ATOL)


def test_acls_detached_gradient_matches_formula():
    g = torch.Generator().manual_seed(7)
    z = 3.0 * torch.randn(N, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (N,), generator=g)
    alpha, lp, ln, m = 0.2, 1.0, 0.5, 1.0
    z = z.clone().requires_grad_()
    ACLS(alpha, lp, ln, m, reduction="sum")(z, y).backward()
    zd = z.detach()
    top = F.one_hot(zd.argmax(1), K).bool()
    z_max = zd.max(1, keepdim=True).values
    grad_pos = torch.where(top, 2 * lp * (z_max - m).clamp_min(0), 0.0)
    grad_neg = torch.where(top, 0.0, -2 * ln / (K - 1) * (z_max - zd - m).clamp_min(0))
    expected = torch.softmax(zd, 1) - F.one_hot(y, K).double() + alpha * (grad_pos + grad_neg)
    torch.testing.assert_close(z.grad, expected, rtol=RTOL, atol=ATOL)


def test_acls_defaults_follow_the_reference():
    loss = ACLS()
    assert (loss.alpha, loss.lambda_pos, loss.lambda_neg, loss.margin, loss.detach_max) == (0.1, 1.0, 0.1, 10.0, True)


def test_encouraging_plain_bonus_is_floored_like_the_reference():
    # log_end = 1: the reference clamps 1 - p at 1e-5, so past p = 1 - 1e-5 the bonus is constant (no gradient)
    z = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    value = EncouragingLoss(log_end=1.0)(z, y)
    value.backward()
    ce = F.cross_entropy(z.detach(), y)
    torch.testing.assert_close(value.detach(), ce + math.log(1e-5), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(z.grad, torch.softmax(z.detach(), 1) - F.one_hot(y, 3).double(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_target_log_probs_match_the_full_computation(scale):
    """The target-column fast path equals log_softmax and log1m_softmax gathered at the target."""
    from reglab.losses.classification import log1m_softmax, target_log_probs

    g = torch.Generator().manual_seed(3)
    z = scale * torch.randn(64, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (64,), generator=g)
    logp_y, log1m_p_y = target_log_probs(z, y)
    torch.testing.assert_close(logp_y, z.log_softmax(1).gather(1, y[:, None]).squeeze(1))
    torch.testing.assert_close(log1m_p_y, log1m_softmax(z).gather(1, y[:, None]).squeeze(1))
