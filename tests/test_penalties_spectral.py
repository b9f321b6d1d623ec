"""Spectral and orthogonality penalties against independent float64 oracles.

Oracles: numpy SVD / eigenvalues of the flattened weights, and, for the
orthogonal-convolution loss, the dense matrix of a circular convolution built
entry by entry with loops (no torch convolution).

Tolerances (float64, eps = 2.2e-16):
- closed-form values (nuclear norm, condition number, soft orthogonality, conv
  orthogonality): both sides round O(n) operations on O(1) numbers, ~1e-15
  relative, so ``rtol=1e-10, atol=1e-12`` keeps a wide margin and still catches
  any formula error (which would be O(1));
- "zero at an orthogonal matrix": entries of Q Q^T - I are at most ~n eps for
  n <= 12, so a squared Frobenius norm is at most n^2 (n eps)^2 < 1e-24 and a
  spectral norm at most n * n eps < 1e-12;
- power iteration: from a start at angle theta_0, after t iterations
  ``0 <= 1 - sigma / sigma_1 <= tan(theta_0)^2 (sigma_2 / sigma_1)^(4t - 2)``
  (the error of the Rayleigh quotient of (W^T W)^t); tests assert this bound
  plus a rounding floor of 64 eps, with theta_0 measured from the stored vector.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import reglab.penalties  # noqa: F401  (populates the registry with the base members)
from reglab.core import ConfigError, PenaltySum, ShapeError, StepContext
from reglab.linalg import singular_power_iteration
from reglab.linalg.singular import singular_power_iterations
from reglab.penalties.norms import L2
from reglab.penalties.registry import REGISTRY
from reglab.penalties.spectral import (
    SRIP,
    ConditionNumber,
    KernelOrthogonality,
    NuclearNorm,
    SoftOrthogonality,
    SpectralNorm,
    SpectralRegularizer,
    conv_orthogonality_loss,
    weight_matrices,
)
from reglab.train import train_step

EPS = torch.finfo(torch.float64).eps
TOL = {"rtol": 1e-10, "atol": 1e-12}
MEMBERS = {
    "spectral_norm": SpectralNorm,
    "spectral_cl": SpectralRegularizer,
    "nuclear_norm": NuclearNorm,
    "condition_number": ConditionNumber,
    "soft_orthogonality": SoftOrthogonality,
    "srip": SRIP,
    "conv_orthogonality": KernelOrthogonality,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: extra intra-op threads only add synchronization on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- models and oracles ---------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Conv1d(2 -> 3, k=3) -> ReLU -> flatten -> Linear(15 -> 6) -> ReLU -> Linear(6 -> 4); no features/head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc1 = nn.Linear(15, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _convnet(seed=0):
    torch.manual_seed(seed)
    return ConvNet().double()


def _ctx(model, x=None):
    x = torch.randn(5, 2, 5, dtype=torch.float64) if x is None else x
    return StepContext(model=model, inputs=x, targets=torch.zeros(len(x), dtype=torch.long))


def _with_spectrum(shape, s, seed=0):
    """A float64 matrix of ``shape`` with singular values ``s`` (descending) and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    r = len(s)
    return U[:, :r] @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ V[:, :r].T


def _set_spectra(model, spectra):
    with torch.no_grad():
        for (_, _, w), s in zip(weight_matrices(model), spectra):
            w.copy_(_with_spectrum((w.shape[0], w[0].numel()), s).reshape(w.shape))


def _mats(model):
    """Flattened weight matrices of the Linear/Conv layers, as numpy (the independent side)."""
    return [w.detach().numpy().reshape(w.shape[0], -1) for _, _, w in weight_matrices(model)]


def _svals(a):
    return np.linalg.svd(a, compute_uv=False)


def _small_gram_minus_eye(a):
    g = a @ a.T if a.shape[0] < a.shape[1] else a.T @ a
    return g - np.eye(g.shape[0])


def _tan2(u, A):
    """tan^2 of the angle between u and the top left singular vector of A."""
    U, _, _ = torch.linalg.svd(A)
    c2 = (torch.dot(u / u.norm(), U[:, 0]) ** 2).item()
    return (1 - c2) / c2


# --- singular_power_iteration ----------------------------------------------------------------------------------------


def test_power_iteration_obeys_the_convergence_bound_and_reaches_matrix_norm():
    s = [1.0, 0.9, 0.5, 0.2]  # ratio 0.9: slow enough to see the convergence
    W = _with_spectrum((5, 4), s, seed=1)
    g = torch.Generator().manual_seed(2)
    u0, v0 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    tan2, exact = _tan2(u0, W), torch.linalg.matrix_norm(W, ord=2).item()
    errors = []
    for t in (1, 5, 20, 80, 200):
        sigma, u, v = singular_power_iteration(W, u0, v0, t)
        err = 1 - sigma.item() / exact
        assert -64 * EPS <= err <= tan2 * 0.9 ** (4 * t - 2) + 64 * EPS
        assert u.norm().item() == pytest.approx(1, abs=1e-14) and v.norm().item() == pytest.approx(1, abs=1e-14)
        errors.append(err)
    assert errors[0] > 1e-4  # the start is genuinely off, and the iteration closes the gap
    assert errors[-1] < 1e-12


def test_power_iteration_gradient_is_u_vT_and_leaves_inputs_alone():
    W = _with_spectrum((4, 3), [2.0, 1.0, 0.5]).requires_grad_()
    u0, v0 = torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    sigma, u, v = singular_power_iteration(W, u0, v0, 60)
    (grad,) = torch.autograd.grad(sigma, W)
    torch.testing.assert_close(grad, torch.outer(u, v))
    assert not u.requires_grad and torch.equal(u0, torch.ones(4, dtype=torch.float64))
    U, S, Vh = torch.linalg.svd(W.detach())
    torch.testing.assert_close(torch.outer(u, v), torch.outer(U[:, 0], Vh[0]), **TOL)  # the sign cancels


def test_power_iteration_zero_matrix_and_errors():
    sigma, u, v = singular_power_iteration(torch.zeros(3, 2), torch.ones(3), torch.ones(2), 3)
    assert sigma.item() == 0 and torch.isfinite(u).all() and torch.isfinite(v).all()
    with pytest.raises(ShapeError, match=r"u must be \(3,\)"):
        singular_power_iteration(torch.zeros(3, 2), torch.ones(2), torch.ones(2))
    with pytest.raises(ShapeError, match="matrix"):
        singular_power_iteration(torch.zeros(3, 2, 1), torch.ones(3), torch.ones(2))
    with pytest.raises(ConfigError, match="n_iter"):
        singular_power_iteration(torch.zeros(3, 2), torch.ones(3), torch.ones(2), -1)


@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_power_iterations_on_several_matrices_match_one_at_a_time_loops(n_iter):
    """Matrices of three shapes iterated together equal the textbook loop on each alone; the gradient of
    sum_l c_l sigma_l is c_l u_l v_l^T for each matrix. Float64, the same operations per matrix:
    rtol=1e-12 (rounding is ~1e-16 relative)."""
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 4), (3, 7), (6, 6)]
    mats = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    us = [torch.nn.functional.normalize(torch.randn(m, generator=g, dtype=torch.float64), dim=0) for m, _ in shapes]
    vs = [torch.nn.functional.normalize(torch.randn(n, generator=g, dtype=torch.float64), dim=0) for _, n in shapes]
    sigmas, new_us, new_vs = singular_power_iterations(mats, us, vs, n_iter)
    assert sigmas.shape == (3,) and not any(t.requires_grad for t in new_us + new_vs)
    for W, u, v, sigma, u_new, v_new in zip(mats, us, vs, sigmas, new_us, new_vs):
        A = W.detach()
        for _ in range(n_iter):
            v = A.T @ u / (A.T @ u).norm()
            u = A @ v / (A @ v).norm()
        torch.testing.assert_close(u_new, u, **TOL)
        torch.testing.assert_close(v_new, v, **TOL)
        torch.testing.assert_close(sigma, u @ A @ v, **TOL)
    c = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    grads = torch.autograd.grad(sigmas @ c, mats)
    for grad, ci, u, v in zip(grads, c, new_us, new_vs):
        torch.testing.assert_close(grad, ci * torch.outer(u, v), **TOL)


# --- persistent power iteration in the penalties --------------------------------------------------------


def test_spectral_norm_estimate_converges_to_matrix_norm_over_calls():
    model = nn.Sequential(nn.Linear(4, 5)).double()
    _set_spectra(model, [[1.0, 0.9, 0.5, 0.2]])
    W = model[0].weight.detach()
    exact = torch.linalg.matrix_norm(W, ord=2).item()
    p = SpectralNorm(1.0, squared=False)
    ctx = _ctx(model, torch.randn(3, 4, dtype=torch.float64))
    p(ctx)  # creates the vectors (warm-up) and stores them
    tan2 = _tan2(p.u__0__weight, W)
    errors = []
    for calls in range(1, 151):
        err = 1 - p(ctx).item() / exact
        assert -64 * EPS <= err <= tan2 * 0.9 ** (4 * calls - 2) + 64 * EPS
        errors.append(err)
    assert errors[0] > 1e-6 and errors[-1] < 1e-12  # one iteration per call: the estimate improves call by call


def test_eval_mode_freezes_the_vectors():
    model = _convnet()
    p = SpectralNorm(1.0)
    ctx = _ctx(model)
    p(ctx)
    p.eval()
    before = {k: b.clone() for k, b in p.named_buffers()}
    assert p(ctx).item() == p(ctx).item()
    assert all(torch.equal(before[k], b) for k, b in p.named_buffers())
    p.train()
    p(ctx)
    assert any(not torch.equal(before[k], b) for k, b in p.named_buffers())


@pytest.mark.parametrize("cls", [SpectralNorm, SpectralRegularizer, SRIP], ids=lambda c: c.__name__)
def test_state_dict_round_trips_the_vectors_into_a_fresh_instance(cls):
    model = _convnet()
    ctx = _ctx(model)
    p = cls(0.5)
    for _ in range(3):
        p(ctx)
    state = p.state_dict()
    assert {k.split("__")[0] for k in state} == {"u", "v"} and len(state) == 6  # a pair per layer
    fresh = cls(0.5, seed=123)  # another seed: only the loaded vectors can make it agree
    fresh.load_state_dict(state)
    for k, b in p.named_buffers():
        torch.testing.assert_close(fresh.get_buffer(k), b, rtol=0, atol=0)
    assert fresh(ctx).item() == p(ctx).item()  # the same next iteration from the same vectors
    # also nested in a sum (prefixed keys)
    total = L2(0.1) + cls(0.5)
    total(ctx)
    fresh_total = L2(0.1) + cls(0.5, seed=7)
    fresh_total.load_state_dict(total.state_dict())
    assert isinstance(fresh_total, PenaltySum)
    assert fresh_total(ctx).item() == total(ctx).item()


def test_vectors_follow_dtype_and_shape_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    p = SpectralNorm(1.0)
    ctx = StepContext(model=model, inputs=torch.randn(2, 3), targets=torch.zeros(2))
    assert p(ctx).dtype == torch.float32 and p.u__0__weight.dtype == torch.float32
    model.double()
    assert p(ctx).dtype == torch.float64 and p.u__0__weight.dtype == torch.float64
    model[0] = nn.Linear(3, 6).double()
    p(ctx)
    assert p.u__0__weight.shape == (6,)


def test_initial_vectors_do_not_touch_the_global_rng_and_depend_on_seed():
    model = _convnet()
    ctx = _ctx(model)
    torch.manual_seed(5)
    SpectralNorm(1.0)(ctx)
    after = torch.randn(3)
    torch.manual_seed(5)
    torch.testing.assert_close(torch.randn(3), after)
    a, b = SpectralNorm(1.0, seed=0), SpectralNorm(1.0, seed=1)
    a(ctx), b(ctx)
    assert not torch.equal(a.u__fc1__weight, b.u__fc1__weight)


# --- values against independent formulas ---------------------------------------------------------------

SPECTRA = [[2.0, 1.0, 0.5], [1.5, 0.6, 0.3, 0.1], [3.0, 1.2, 0.7, 0.4]]  # conv (3x6), fc1 (6x15), fc2 (4x6)


def _converged(p, ctx, calls=60):
    """Run enough calls that the bound tan^2 * r^(4t-2) is below 1e-30 (r <= 0.5 in SPECTRA), then freeze."""
    for _ in range(calls):
        p(ctx)
    p.eval()
    return p(ctx)


def test_spectral_norm_value_and_gradient():
    model = _convnet()
    _set_spectra(model, SPECTRA)
    ctx = _ctx(model)
    value = _converged(SpectralNorm(0.3), ctx)
    expected = 0.3 * sum(0.5 * _svals(a)[0] ** 2 for a in _mats(model))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert _converged(SpectralNorm(0.3, squared=False), ctx).item() == pytest.approx(
        0.3 * sum(_svals(a)[0] for a in _mats(model)), rel=1e-12
    )
    _check_gradient_matches_exact(SpectralNorm(0.3), model, lambda W: 0.5 * torch.linalg.svdvals(W)[0] ** 2, 0.3)


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
def test_spectral_cl_value_and_gradient(k):
    model = _convnet()
    _set_spectra(model, SPECTRA)
    ctx = _ctx(model)
    value = _converged(SpectralRegularizer(0.2, k=k), ctx)
    expected = 0.2 * sum((_svals(a)[0] ** k - 1) ** 2 for a in _mats(model))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    _check_gradient_matches_exact(
        SpectralRegularizer(0.2, k=k), model, lambda W: (torch.linalg.svdvals(W)[0] ** k - 1) ** 2, 0.2
    )


def test_srip_value_and_gradient():
    model = _convnet()
    _set_spectra(model, SPECTRA)
    ctx = _ctx(model)
    value = _converged(SRIP(0.4), ctx)
    expected = 0.4 * sum(np.abs(np.linalg.eigvalsh(_small_gram_minus_eye(a))).max() for a in _mats(model))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    squared = _converged(SRIP(0.4, squared=True), ctx)
    expected_sq = 0.4 * sum(np.abs(np.linalg.eigvalsh(_small_gram_minus_eye(a))).max() ** 2 for a in _mats(model))
    assert squared.item() == pytest.approx(expected_sq, rel=1e-12)

    def exact(W):
        G = W @ W.T if W.shape[0] < W.shape[1] else W.T @ W
        return torch.linalg.eigvalsh(G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max()

    _check_gradient_matches_exact(SRIP(0.4), model, exact, 0.4)


def _check_gradient_matches_exact(penalty, model, exact_fn, weight):
    """At convergence the power-iteration gradient equals the gradient of the exact spectral quantity.

    The vectors are within tan(theta_0) r^(2t-1) < 1e-15 of the top singular pair (r <= 0.5, t >= 60),
    so the two gradients agree to rounding."""
    _converged(penalty, _ctx(model))
    model.zero_grad()
    penalty(_ctx(model)).backward()
    for _, _, w in weight_matrices(model):
        W = w.detach().reshape(w.shape[0], -1).clone().requires_grad_()
        (expected,) = torch.autograd.grad(weight * exact_fn(W), W)
        torch.testing.assert_close(w.grad.reshape(W.shape), expected, **TOL)


def test_nuclear_norm_value():
    model = _convnet()
    value = NuclearNorm(0.7)(_ctx(model))
    assert value.item() == pytest.approx(0.7 * sum(_svals(a).sum() for a in _mats(model)), rel=1e-12)


@pytest.mark.parametrize("log", [False, True])
def test_condition_number_value(log):
    model = _convnet()
    value = ConditionNumber(0.25, log=log)(_ctx(model))
    kappas = [_svals(a)[0] / _svals(a)[-1] for a in _mats(model)]
    expected = 0.25 * sum(math.log(k) if log else k for k in kappas)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_soft_orthogonality_value_uses_the_smaller_gram():
    model = _convnet()  # conv 3x6 and fc2 4x6 are wide (W W^T), fc1 6x15 is wide, so add a tall layer
    model.fc3 = nn.Linear(4, 7).double()  # 7x4: tall, W^T W
    value = SoftOrthogonality(0.5)(_ctx(model))
    mats = _mats(model)
    expected = 0.5 * sum(
        min(((a @ a.T - np.eye(a.shape[0])) ** 2).sum(), ((a.T @ a - np.eye(a.shape[1])) ** 2).sum()) for a in mats
    )
    assert value.item() == pytest.approx(expected, rel=1e-12)
    for a in mats:  # the identity that makes both Gram choices share a gradient
        rows = ((a @ a.T - np.eye(a.shape[0])) ** 2).sum()
        cols = ((a.T @ a - np.eye(a.shape[1])) ** 2).sum()
        assert rows - cols == pytest.approx(a.shape[0] - a.shape[1], abs=1e-9)


# --- orthogonal convolutions ------------------------------------------------------------------------------


def _dense_circular_conv(K, stride, dilation, n):
    """Matrix of y[m, p] = sum_{c, a} K[m, c, a] x[c, (stride p + dilation a) mod n], built entry by entry."""
    M, C, *ks = K.shape
    d, n_out = len(ks), n // stride
    A = torch.zeros(M * n_out**d, C * n**d, dtype=torch.float64)
    for m, p in itertools.product(range(M), itertools.product(range(n_out), repeat=d)):
        row = m * n_out**d + sum(pi * n_out ** (d - 1 - i) for i, pi in enumerate(p))
        for c, a in itertools.product(range(C), itertools.product(*(range(k) for k in ks))):
            x = [(stride * pi + dilation * ai) % n for pi, ai in zip(p, a)]
            A[row, c * n**d + sum(xi * n ** (d - 1 - i) for i, xi in enumerate(x))] += K[(m, c, *a)]
    return A, n_out**d


# (M, C, kernel, stride, dilation, n): n divisible by the stride and n >= 2 k_eff - 1, so offsets never wrap.
DENSE_CASES = [
    (2, 2, (3,), 1, 1, 8),  # 1-D, square
    (3, 1, (3,), 2, 1, 8),  # 1-D strided, M > C S: column case
    (2, 1, (3,), 1, 2, 12),  # 1-D dilated, column case
    (2, 2, (3, 3), 1, 1, 6),  # 2-D
    (5, 2, (3, 3), 1, 1, 6),  # 2-D column case
    (3, 2, (3, 3), 2, 1, 6),  # 2-D strided, row case (M < C S^2)
    (2, 3, (1, 1), 2, 1, 4),  # stride larger than the kernel
]


@pytest.mark.parametrize("M,C,ks,stride,dilation,n", DENSE_CASES)
def test_conv_orthogonality_matches_dense_convolution_matrix(M, C, ks, stride, dilation, n):
    torch.manual_seed(M * 10 + C)
    K = torch.randn(M, C, *ks, dtype=torch.float64)
    A, positions = _dense_circular_conv(K, stride, dilation, n)
    rows = (A @ A.T - torch.eye(A.shape[0], dtype=A.dtype)).pow(2).sum()
    cols = (A.T @ A - torch.eye(A.shape[1], dtype=A.dtype)).pow(2).sum()
    value = conv_orthogonality_loss(K, stride, dilation)
    assert value.item() == pytest.approx((min(rows, cols) / positions).item(), rel=1e-10)
    conv = getattr(nn, f"Conv{len(ks)}d")(C, M, ks, stride=stride, dilation=dilation, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(K)
    assert KernelOrthogonality(0.3)(StepContext(model=conv, inputs=K, targets=K)).item() == pytest.approx(
        0.3 * value.item(), rel=1e-12
    )


def test_conv_orthogonality_zero_for_orthogonal_convolutions_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    # 1x1 with orthonormal rows (out < in), then orthonormal columns (out > in: the subtracted constant is 4)
    assert conv_orthogonality_loss(Q[:4].reshape(4, 8, 1, 1)).item() <= 1e-24
    col = conv_orthogonality_loss(Q[:, :4].reshape(8, 4, 1, 1)).item()
    assert abs(col) <= 64 * EPS * 4
    # 2x2 kernel with stride 2 over 2 input channels (space-to-depth): an orthogonal 8x8 operator per patch
    assert conv_orthogonality_loss(Q.reshape(8, 2, 2, 2), stride=2).item() <= 1e-24
    # a generic kernel is far from orthogonal
    assert conv_orthogonality_loss(torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64)).item() > 1.0


def test_kernel_orthogonality_is_not_implied_by_flattened_orthogonality():
    """OCNN's point: orthonormal flattened filters (soft_orthogonality = 0) need not give an orthogonal conv."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(18, 18, generator=g, dtype=torch.float64))
    conv = nn.Conv2d(2, 4, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(Q[:4].reshape(4, 2, 3, 3))
    ctx = StepContext(model=conv, inputs=torch.zeros(1), targets=torch.zeros(1))
    assert SoftOrthogonality(1.0)(ctx).item() <= 1e-24
    assert KernelOrthogonality(1.0)(ctx).item() > 1e-2


def test_conv_orthogonality_groups_add_up():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, groups=2, stride=1, bias=False).double()
    whole = KernelOrthogonality(1.0)(StepContext(model=conv, inputs=torch.zeros(1), targets=torch.zeros(1)))
    parts = sum(conv_orthogonality_loss(k) for k in conv.weight.detach().split(3, dim=0))
    assert whole.item() == pytest.approx(parts.item(), rel=1e-12)


def test_conv_orthogonality_needs_conv_layers():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"conv_orthogonality: Sequential has no .*Conv2d.*soft_orthogonality"):
        KernelOrthogonality(0.1)(StepContext(model=mlp, inputs=torch.zeros(1), targets=torch.zeros(1)))
    with pytest.raises(ConfigError, match=r"matches 'nothing'"):
        KernelOrthogonality(0.1, names="nothing")(_ctx(_convnet()))
    transposed = nn.Sequential(nn.ConvTranspose2d(2, 3, 3))  # not a convolution this penalty understands
    with pytest.raises(ConfigError, match="conv_orthogonality"):
        KernelOrthogonality(0.1)(StepContext(model=transposed, inputs=torch.zeros(1), targets=torch.zeros(1)))
    with pytest.raises(ShapeError, match="spatial"):
        conv_orthogonality_loss(torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="groups=2"):
        conv_orthogonality_loss(torch.zeros(3, 1, 3), groups=2)


# --- invariances and edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)], ids=["wide", "tall"])
def test_orthogonality_penalties_vanish_on_orthogonal_matrices(shape):
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(max(shape), max(shape), generator=g, dtype=torch.float64))
    lin = nn.Linear(shape[1], shape[0], bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(Q[: shape[0], : shape[1]])
    ctx = StepContext(model=lin, inputs=torch.zeros(1), targets=torch.zeros(1))
    assert SoftOrthogonality(1.0)(ctx).item() <= 1e-24
    assert abs(SRIP(1.0)(ctx).item()) <= 1e-12
    assert abs(SpectralRegularizer(1.0)(ctx).item()) <= 1e-24  # sigma_max = 1
    assert ConditionNumber(1.0)(ctx).item() == pytest.approx(1.0, abs=1e-12)
    assert abs(ConditionNumber(1.0, log=True)(ctx).item()) <= 1e-12


def test_spectral_values_invariant_to_orthogonal_rotation_and_kappa_to_scale():
    torch.manual_seed(0)
    lin = nn.Linear(4, 5).double()
    ctx = StepContext(model=lin, inputs=torch.zeros(1), targets=torch.zeros(1))
    before = {c: c(1.0)(ctx).item() for c in (NuclearNorm, ConditionNumber)}
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    with torch.no_grad():
        lin.weight.copy_(Q @ lin.weight)
    for c, v in before.items():
        assert c(1.0)(ctx).item() == pytest.approx(v, rel=1e-12)
    kappa = ConditionNumber(1.0)(ctx).item()
    with torch.no_grad():
        lin.weight.mul_(7.5)
    assert ConditionNumber(1.0)(ctx).item() == pytest.approx(kappa, rel=1e-12)


def test_layer_selection_by_type_name_and_trainability():
    model = _convnet()
    assert [k for k, _, _ in weight_matrices(model)] == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert [k for k, _, _ in weight_matrices(model, "linear")] == ["fc1.weight", "fc2.weight"]
    assert [k for k, _, _ in weight_matrices(model, ["conv"], names="^fc")] == []
    assert [k for k, _, _ in weight_matrices(model, names=r"fc\d")] == ["fc1.weight", "fc2.weight"]
    model.fc2.weight.requires_grad_(False)
    assert [k for k, _, _ in weight_matrices(model)] == ["conv.weight", "fc1.weight"]
    ctx = _ctx(model)
    only_fc1 = NuclearNorm(1.0, names="fc1")(ctx).item()
    assert only_fc1 == pytest.approx(_svals(_mats(model)[1]).sum(), rel=1e-12)


def test_model_without_selected_layers_is_a_clear_error():
    emb = nn.Sequential(nn.Embedding(5, 3))
    ctx = StepContext(model=emb, inputs=torch.zeros(1), targets=torch.zeros(1))
    for cls in (SpectralNorm, SpectralRegularizer, NuclearNorm, ConditionNumber, SoftOrthogonality, SRIP):
        p = cls(1.0)
        with pytest.raises(ConfigError, match=rf"{p.name}: Sequential has no trainable .*Linear.*types=/names="):
            p(ctx)
    with pytest.raises(ConfigError, match="matches 'head'"):
        SpectralNorm(1.0, types="linear", names="head")(_ctx(_convnet()))


# --- gradcheck (float64) ---------------------------------------------------------------------------------------


def _frozen(p):
    p.eval()
    return p


GRADCHECK = {
    "spectral_norm": lambda: _frozen(SpectralNorm(0.5)),
    "spectral_cl": lambda: _frozen(SpectralRegularizer(0.5, k=3)),
    "srip_squared": lambda: _frozen(SRIP(0.5, squared=True)),
    "nuclear_norm": lambda: NuclearNorm(0.5),
    "condition_number": lambda: ConditionNumber(0.5),
    "condition_number_log": lambda: ConditionNumber(0.5, log=True),
    "soft_orthogonality": lambda: SoftOrthogonality(0.5),
    "conv_orthogonality": lambda: KernelOrthogonality(0.5),
}


@pytest.mark.parametrize("make", GRADCHECK.values(), ids=GRADCHECK.keys())
def test_gradcheck(make):
    """Gradients of the penalty with respect to the layer weights (power-iteration vectors frozen in eval mode)."""
    model = _convnet()
    model.conv.stride = (2,)  # a strided conv: exercises the padding P = floor((k-1)/S) S
    ctx = _ctx(model)
    p = make()
    p(ctx)  # create any vectors first, so that the function is fixed
    weights = [w for _, _, w in weight_matrices(model)]
    assert torch.autograd.gradcheck(lambda *ws: p(ctx), weights, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_grouped_dilated_conv_orthogonality():
    torch.manual_seed(2)
    conv = nn.Conv1d(4, 6, 3, groups=2, dilation=2, stride=2).double()
    ctx = StepContext(model=conv, inputs=torch.zeros(1), targets=torch.zeros(1))
    p = KernelOrthogonality(1.0)
    assert torch.autograd.gradcheck(lambda w: p(ctx), (conv.weight,), eps=1e-6, atol=1e-6, rtol=1e-5)


# --- registry, construction, train_step ------------------------------------------------------------------------


def test_registry_members_and_descriptions():
    described = REGISTRY.describe()
    for name, cls in MEMBERS.items():
        assert name in described and described[name], name
        built = reglab.penalties.get(name, 0.1)
        assert type(built) is cls and built.weight == 0.1
        assert built.name == name  # the breakdown key is the registry name
        assert REGISTRY.required(name) == ["weight"]


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (SpectralNorm, {"n_power_iterations": 0}, "n_power_iterations must be an int >= 1, got 0"),
        (SpectralNorm, {"squared": "yes"}, "squared must be a bool \\(true or false\\), got 'yes'"),
        (SpectralNorm, {"seed": -1}, "seed must be an int"),
        (SpectralNorm, {"types": ("lstm",)}, "types must be one of 'linear', 'conv', got 'lstm'"),
        (SpectralNorm, {"types": ()}, "types must name at least one"),
        (SpectralNorm, {"types": 3}, "types must be a layer type"),
        (SpectralNorm, {"names": "("}, "names must be a valid regular expression"),
        (SpectralNorm, {"names": 3}, "names must be a regular expression"),
        (SpectralRegularizer, {"k": 0}, "k must be > 0, got 0"),
        (SpectralRegularizer, {"k": float("nan")}, "k must be a finite number"),
        (SpectralRegularizer, {"n_power_iterations": 1.5}, "n_power_iterations must be an int"),
        (ConditionNumber, {"log": 1}, "log must be a bool \\(true or false\\), got 1"),
        (SRIP, {"squared": None}, "squared must be a bool"),
        (SoftOrthogonality, {"types": "dense"}, "types must be one of"),
        (NuclearNorm, {"names": ["fc"]}, "names must be a regular expression"),
        (KernelOrthogonality, {"names": "[a-"}, "names must be a valid regular expression"),
    ],
)
def test_constructor_validation(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(0.1, **kwargs)


@pytest.mark.parametrize("cls", MEMBERS.values(), ids=MEMBERS.keys())
def test_negative_weight_rejected(cls):
    with pytest.raises(ConfigError, match="weight"):
        cls(-0.1)


@pytest.mark.parametrize("name", MEMBERS)
def test_works_inside_train_step(name):
    """One SGD step: finite record equal to the penalty at the step's weights, weights moved, no context needed.

    The model is a plain nn.Module without features/head: train_step would refuse it if the penalty
    declared 'features'; every member needs nothing beyond the model."""
    model = _convnet()
    penalty = reglab.penalties.get(name, 1e-2)
    assert penalty.needs == frozenset()
    x, y = torch.randn(6, 2, 5, dtype=torch.float64), torch.randint(0, 4, (6,))
    expected = copy.deepcopy(penalty)(_ctx(copy.deepcopy(model), x)).item()
    before = [q.detach().clone() for q in model.parameters()]
    record = train_step(model, (x, y), nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), penalty)
    assert math.isfinite(record[f"penalty/{name}"])
    assert record[f"penalty/{name}"] == pytest.approx(expected, rel=1e-12)
    assert record["objective"] == pytest.approx(record["loss"] + record[f"penalty/{name}"])
    assert any(not torch.equal(b, q) for b, q in zip(before, model.parameters()))
