"""The hand-written backward paths of the losses (reglab.losses.fused) against autograd of their plain formulas.

For class-index targets several losses compute their values without a graph
and write the gradient in closed form. Here, in float64 on every such loss:
the values and gradients equal those of the loss's plain torch formula
(``_reference``, differentiated by autograd); double backward (Hessian-vector
products) and ``torch.func`` transforms (vmap, grad, jvp) give the formula's
derivatives; and the sort-free sparsemax threshold equals a bisection.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vmap

from reglab import losses
from reglab.core import ConfigError, ShapeError
from reglab.losses.normalizations import _sparsemax_support, _sparsemax_threshold, sparsemax

N, K = 7, 6
TOL = {"rtol": 1e-10, "atol": 1e-12}

# (registry name, kwargs): every loss whose class-index path goes through a hand-written backward
FUSED = [
    ("squentropy", {}),
    ("z_loss", {"a": 2.0, "b": 0.5}),
    ("max_suppression", {"alpha": 0.3}),
    ("acls", {"alpha": 0.2, "lambda_pos": 1.0, "lambda_neg": 0.5, "margin": 1.0}),
    ("acls", {"alpha": 0.2, "lambda_neg": 0.5, "margin": 0.5, "detach_max": False}),
    ("circle", {"gamma": 16.0, "margin": 0.25}),
    ("circle", {"gamma": 8.0, "margin": 0.0}),
    ("sparsemax", {}),
    ("stablemax_ce", {}),
    ("nce", {}),
    ("apl", {"alpha": 2.0, "beta": 0.5}),
    ("apl", {"passive": "mae"}),
    ("bootstrap", {}),
    ("bootstrap", {"beta": 0.7, "detach_prediction": True}),
    ("bootstrap", {"mode": "hard"}),
    ("xi_distill", {"xi": 1.3}),
    ("elr", {"lam": 3.0}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in kwargs.items()) for name, kwargs in FUSED]


def _inputs(name: str, seed: int = 0, n: int = N, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if name == "circle":  # cosine similarities, some on and beyond the clamp's bounds
        z = torch.rand(n, k, generator=g, dtype=torch.float64) * 2.4 - 1.2
        z[0, :3] = torch.tensor([1.0, -1.0, 1.0000001], dtype=torch.float64)
    else:
        z = 3.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    return z, torch.randint(0, k, (n,), generator=g)


def _build(name: str, kwargs: dict, n: int = N, k: int = K, dtype: torch.dtype = torch.float64):
    """(loss module with state in eval mode, call(z, y) -> per-example values, reference(z, y) -> same)."""
    params = inspect.signature(losses.REGISTRY.entry(name).factory).parameters
    extra = {key: v for key, v in (("num_examples", n), ("num_classes", k)) if key in params}
    loss = losses.get(name, reduction="none", **extra, **kwargs).to(dtype).eval()
    g = torch.Generator().manual_seed(9)
    if name == "xi_distill":
        loss.set_teacher(torch.softmax(torch.randn(n, k, generator=g, dtype=dtype), 1))
    if name == "elr":
        loss.running_targets.copy_(0.8 * torch.softmax(torch.randn(n, k, generator=g, dtype=dtype), 1))
    idx = torch.arange(n)
    if "indices" in loss.needs:
        call = lambda z, y: loss(z, y, indices=idx)  # noqa: E731
    else:
        call = loss
    return loss, call, lambda z, y: _reference(loss, z, y, idx)


def _reference(loss, z: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The loss's plain formula (what the fused path must reproduce), with its state fixed."""
    if isinstance(loss, losses.ELR):
        p = F.hardtanh(F.softmax(z, dim=1), 1e-4, 1 - 1e-4)
        t = loss.running_targets[idx]
        return F.cross_entropy(z, y, reduction="none") + loss.lam * torch.log1p(-(t * p).sum(1))
    if isinstance(loss, losses.TeacherGuidedDistillation):
        return loss._reference(z, y, loss.teacher_probs[idx])
    if isinstance(loss, (losses.NormalizedCrossEntropy, losses.ActivePassiveLoss)):
        q = F.one_hot(y, z.shape[1]).double()
        logp = F.log_softmax(z, dim=1)
        nce = (q * logp).sum(1) / logp.sum(1)
        if isinstance(loss, losses.NormalizedCrossEntropy):
            return nce
        one_minus_p = 1 - logp.exp().gather(1, y[:, None])[:, 0]
        passive = -loss.log_zero * one_minus_p if loss.passive == "rce" else 2 * one_minus_p
        return loss.alpha * nce + loss.beta * passive
    return loss._reference(z, y)


@pytest.mark.parametrize("name, kwargs", FUSED, ids=IDS)
def test_values_and_gradient_equal_autograd_of_the_formula(name, kwargs):
    _, call, reference = _build(name, kwargs)
    z, y = _inputs(name)
    w = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # uneven upstream gradient
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, expected = call(a, y), reference(b, y)
    torch.testing.assert_close(got, expected, **TOL)
    (got * w).sum().backward()
    (expected * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, **TOL)


@pytest.mark.parametrize("name, kwargs", FUSED, ids=IDS)
def test_double_backward_is_the_formulas(name, kwargs):
    _, call, reference = _build(name, kwargs)
    z, y = _inputs(name, seed=2)
    v = torch.randn(N, K, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hvp = []
    for fn in (call, reference):
        x = z.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(x, y).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x, allow_unused=True)
        hvp.append(torch.zeros_like(x) if h is None else h)
    torch.testing.assert_close(hvp[0], hvp[1], **TOL)


@pytest.mark.parametrize("name, kwargs", FUSED, ids=IDS)
def test_torch_func_transforms_use_the_formula(name, kwargs):
    loss, call, reference = _build(name, kwargs)
    z, y = _inputs(name, seed=4)
    x = z.clone().requires_grad_()
    call(x, y).sum().backward()
    # grad and jvp of the summed loss
    torch.testing.assert_close(grad(lambda t: call(t, y).sum())(z), x.grad, **TOL)
    v = torch.randn(N, K, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, tangent = jvp(lambda t: call(t, y).sum(), (z,), (v,))
    torch.testing.assert_close(tangent, (x.grad * v).sum(), **TOL)
    if "indices" not in loss.needs:  # per-example values under vmap (as reglab.linalg's sample_losses)
        per_example = vmap(lambda zi, yi: call(zi[None], yi[None])[0])(z, y)
        torch.testing.assert_close(per_example, reference(z, y), **TOL)


@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 3.0, 30.0, 1e4])
def test_sort_free_sparsemax_threshold_equals_the_sort_based_one(scale):
    g = torch.Generator().manual_seed(6)
    z = scale * torch.randn(64, 50, generator=g, dtype=torch.float64)
    z[0] = 0.0  # uniform: the whole row is the support
    z[1, :10] = z[1].max()  # tied maxima
    z[2] = torch.tensor([2.0, 1.0] + [-5.0] * 48, dtype=torch.float64) * scale  # a one- or two-element support
    found = _sparsemax_support(z)
    assert found is not None
    support, tau = found
    torch.testing.assert_close(tau, _sparsemax_threshold(z), rtol=0, atol=1e-12 * max(scale, 1.0))
    torch.testing.assert_close(support, (z > tau).double())
    # the sum is tau arithmetic on |z| ~ scale: a few ulps of the scale
    ones = torch.ones(64, dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z).sum(1), ones, rtol=0, atol=1e-13 * max(scale, 1.0))


def test_sparsemax_float32_matches_float64():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(256, 1000, generator=g)
    y = torch.randint(0, 1000, (256,), generator=g)
    loss = losses.SparsemaxLoss(reduction="none")
    torch.testing.assert_close(loss(z, y).double(), loss(z.double(), y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["focal", "encouraging", "comp_sum", "gce", "rce", "mae", "sce", "ldr_kl", "poly1"])
def test_cross_entropy_based_losses_at_many_classes_match_float64(name):
    """The class-index paths built on torch's fused cross-entropy, float32 at K = 1000 against float64."""
    g = torch.Generator().manual_seed(8)
    z = 4.0 * torch.randn(128, 1000, generator=g)
    z[:8, 0] += 40.0  # confidently right rows: p_y rounds to 1 in float32
    y = torch.randint(0, 1000, (128,), generator=g)
    y[:8] = 0
    loss = losses.get(name, reduction="none")
    a, b = z.clone().requires_grad_(), z.double().requires_grad_()
    low, high = loss(a, y), loss(b, y)
    torch.testing.assert_close(low.double(), high, rtol=1e-4, atol=1e-6)
    low.sum().backward()
    high.sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-3, atol=1e-6)


def test_stateful_losses_check_class_and_dataset_indices_in_one_read():
    loss = losses.ELR(num_examples=10, num_classes=K)
    z = torch.randn(3, K, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"class indices must be in \[0, 6\), got values in \[0, 7\]"):
        loss(z, torch.tensor([0, 7, 1]), indices=torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match=r"got values in \[0, 11\]"):
        loss(z, torch.tensor([0, 5, 1]), indices=torch.tensor([0, 11, 2]))


@pytest.mark.parametrize("name, kwargs", FUSED, ids=IDS)
def test_low_precision_logits_under_autocast(name, kwargs):
    """bfloat16 logits from an autocast region: the gradient comes back in the logits' dtype, close to float32's."""
    _, call, _ = _build(name, kwargs, dtype=torch.float32)
    z, y = _inputs(name, seed=10)
    layer = torch.nn.Linear(K, K)
    torch.nn.init.eye_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    grads = []
    for autocast in (True, False):
        x = z.float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = layer(x)
            assert logits.dtype == (torch.bfloat16 if autocast else torch.float32)
            call(logits, y).sum().backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=0.05, atol=0.05)
