"""Muon, NorMuon, AuON, ROOT: hand-computed steps, torch.optim.Muon agreement, routing, checkpoints, training."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import reglab.optim
from reglab.core import ConfigError, ShapeError
from reglab.linalg.newton_schulz import QUINTIC
from reglab.optim.orthogonal import (
    ROOT,
    ROOT_COEFFICIENTS,
    AuON,
    Muon,
    NorMuon,
    OrthogonalOptimizer,
    lr_ratio,
    split_params,
)
from reglab.train import train_step

FAMILY = [Muon, NorMuon, AuON, ROOT]
NAMES = {Muon: "muon", NorMuon: "normuon", AuON: "auon", ROOT: "root"}
F64_TOL = 1e-12  # float64 round-off of a few matrix products on 5x3 matrices, times the NS amplification (< 1e3)


# --- independent float64 references ------------------------------------------------------------------------


def ns_ref(M, coefficients, steps, eps=1e-7):
    """Newton–Schulz written out: transpose tall, normalise, X <- aX + b(XX^T)X + c(XX^T)^2 X."""
    tall = M.shape[0] > M.shape[1]
    X = M.T if tall else M
    X = X / (X.norm() + eps)
    for _ in range(steps):
        a, b, c = coefficients
        A = X @ X.T
        X = a * X + b * A @ X + c * A @ A @ X
    return X.T if tall else X


def adamw_ref(p, g, st, lr, betas, eps, wd):
    st["t"] = st.get("t", 0) + 1
    st["m"] = betas[0] * st.get("m", torch.zeros_like(p)) + (1 - betas[0]) * g
    st["v"] = betas[1] * st.get("v", torch.zeros_like(p)) + (1 - betas[1]) * g * g
    m_hat = st["m"] / (1 - betas[0] ** st["t"])
    v_hat = st["v"] / (1 - betas[1] ** st["t"])
    return p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)


class Linear53(nn.Module):
    """y = x W^T + b with W 5x3 (the matrix) and b (the AdamW part), float64; loss 0.5 mean ||y - t||^2."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.W.T + self.b


def data53(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)


def analytic_grads(W, b, x, t):
    """Gradients of 0.5 * sum((x W^T + b - t)^2) / n, by hand."""
    R = x @ W.T + b - t
    return R.T @ x / len(x), R.sum(0) / len(x)


def run_two_steps(opt_cls, kwargs):
    model = Linear53()
    opt = opt_cls([{"params": [model.W], "use_muon": True}, {"params": [model.b], "use_muon": False}], **kwargs)
    for seed in (1, 2):
        x, t = data53(seed)
        opt.zero_grad()
        (0.5 * (model(x) - t).pow(2).sum(1).mean()).backward()
        opt.step()
    return model


def reference_two_steps(direction_fn, lr, wd, adamw=(3e-4, (0.9, 0.95), 1e-8, 0.0)):
    """Two steps of W <- (1 - lr wd) W - lr * D with D = direction_fn(gW, state), AdamW on b."""
    model = Linear53()
    W, b = model.W.detach().clone(), model.b.detach().clone()
    st_w, st_b = {}, {}
    for seed in (1, 2):
        x, t = data53(seed)
        gW, gb = analytic_grads(W, b, x, t)
        W = W * (1 - lr * wd) - lr * direction_fn(gW, st_w)
        b = adamw_ref(b, gb, st_b, *adamw)
    return W, b


# --- hand-computed steps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", [None, "match_rms_adamw"])
def test_muon_hand_step(nesterov, adjust):
    lr, wd, mu = 0.05, 0.1, 0.9
    ratio = math.sqrt(5 / 3) if adjust is None else 0.2 * math.sqrt(5)

    def direction(g, st):
        st["B"] = mu * st.get("B", torch.zeros_like(g)) + (1 - mu) * g
        M = g + mu * (st["B"] - g) if nesterov else st["B"]
        return ratio * ns_ref(M, QUINTIC, 5)

    kw = dict(lr=lr, weight_decay=wd, momentum=mu, nesterov=nesterov, adjust_lr_fn=adjust, ns_dtype="float64")
    model = run_two_steps(Muon, kw)
    W, b = reference_two_steps(direction, lr, wd)
    assert torch.allclose(model.W, W, rtol=0, atol=F64_TOL)
    assert torch.allclose(model.b, b, rtol=0, atol=F64_TOL)


def test_normuon_hand_step():
    lr, wd, mu, beta2 = 0.02, 0.05, 0.95, 0.9

    def direction(g, st):
        st["B"] = mu * st.get("B", torch.zeros_like(g)) + (1 - mu) * g
        ortho = ns_ref(g + mu * (st["B"] - g), QUINTIC, 5)
        row_ms = (ortho**2).mean(1, keepdim=True)  # mean over columns: one value per row (neuron)
        st["v"] = beta2 * st.get("v", torch.zeros(5, 1, dtype=g.dtype)) + (1 - beta2) * row_ms
        normed = ortho / (st["v"].sqrt() + 1e-10)
        normed = normed * ortho.norm() / (normed.norm() + 1e-10)
        return math.sqrt(max(1, 5 / 3)) * normed

    model = run_two_steps(NorMuon, dict(lr=lr, weight_decay=wd, momentum=mu, beta2=beta2, ns_dtype="float64"))
    W, b = reference_two_steps(direction, lr, wd)
    assert torch.allclose(model.W, W, rtol=0, atol=F64_TOL)
    assert torch.allclose(model.b, b, rtol=0, atol=F64_TOL)


@pytest.mark.parametrize("hybrid", [False, True])
def test_auon_hand_step(hybrid):
    lr, wd, mu, gamma = 0.08, 0.01, 0.95, 1.5

    def direction(g, st):
        st["B"] = mu * st.get("B", torch.zeros_like(g)) + (1 - mu) * g
        M = g + mu * (st["B"] - g)
        if hybrid:
            M = ns_ref(M, QUINTIC, 1)
        r = torch.sqrt(torch.mean(torch.cosh(gamma * M / (M.norm() + 1e-7)) ** 2))
        return M / (r + 1e-8)

    model = run_two_steps(AuON, dict(lr=lr, weight_decay=wd, momentum=mu, gamma=gamma, hybrid=hybrid))
    W, b = reference_two_steps(direction, lr, wd)
    assert torch.allclose(model.W, W, rtol=0, atol=F64_TOL)
    assert torch.allclose(model.b, b, rtol=0, atol=F64_TOL)


@pytest.mark.parametrize("fixed", [None, 0.05])
@pytest.mark.parametrize("table", [None, {(3, 5): (3.0, -3.2, 1.2)}])
def test_root_hand_step(fixed, table):
    lr, wd, mu, q = 0.01, 0.1, 0.9, 0.75
    coeffs = QUINTIC if table is None else (3.0, -3.2, 1.2)  # the (5, 3) weight reads the (3, 5) entry

    def direction(g, st):
        st["B"] = mu * st.get("B", torch.zeros_like(g)) + g  # classical momentum
        M = g + mu * st["B"]
        eps = fixed if fixed is not None else torch.quantile(M.abs().flatten(), q) + 1e-9
        outliers = torch.sign(M) * torch.clamp(M.abs() - eps, min=0)  # soft threshold T_eps
        return 0.2 * math.sqrt(5) * ns_ref(M - outliers, coeffs, 5)

    kw = dict(lr=lr, weight_decay=wd, momentum=mu, threshold_quantile=q, threshold=fixed, coefficient_table=table)
    model = run_two_steps(ROOT, kw)
    W, b = reference_two_steps(direction, lr, wd)
    assert torch.allclose(model.W, W, rtol=0, atol=F64_TOL)
    assert torch.allclose(model.b, b, rtol=0, atol=F64_TOL)


def test_root_table_lookup_uses_the_reference_entries():
    assert ROOT_COEFFICIENTS[(2048, 2048)] == (3.4916, -4.8224, 2.1095)
    opt = ROOT([nn.Parameter(torch.zeros(2, 2))], coefficient_table={(16384, 2048): (1.0, 0.0, 0.0)})
    table = opt.param_groups[0]["coefficient_table"]
    assert table[(2048, 16384)] == (1.0, 0.0, 0.0) and table[(2048, 8192)] == ROOT_COEFFICIENTS[(2048, 8192)]


def test_lr_ratio():
    assert lr_ratio(None, 8, 2) == 2.0 and lr_ratio("original", 2, 8) == 1.0
    assert lr_ratio("match_rms_adamw", 2, 100) == pytest.approx(2.0)


# --- torch.optim.Muon and torch.optim.AdamW agreement ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"adjust_lr_fn": "match_rms_adamw", "nesterov": False, "lr": 0.05}, {"momentum": 0.5, "weight_decay": 0.0}],
    ids=["defaults", "moonshot_no_nesterov", "momentum0.5"],
)
def test_muon_matches_torch_muon(dtype, shape, kwargs):
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(*shape, generator=g, dtype=dtype)
    ours, theirs = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    opt_ours, opt_theirs = Muon([ours], ns_dtype="bfloat16", **kwargs), torch.optim.Muon([theirs], **kwargs)
    for _ in range(10):
        grad = torch.randn(*shape, generator=g, dtype=dtype)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    # the same operations in the same order (EMA momentum, bfloat16 NS with addmm, decay then step): same bits
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, W0)


def test_adamw_part_matches_torch_adamw():
    g = torch.Generator().manual_seed(1)
    b0 = torch.randn(6, generator=g)
    ours, theirs = nn.Parameter(b0.clone()), nn.Parameter(b0.clone())
    opt_ours = Muon([ours], adamw_lr=0.01, adamw_betas=(0.8, 0.9), adamw_eps=1e-6, adamw_weight_decay=0.1)
    opt_theirs = torch.optim.AdamW([theirs], lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, foreach=False)
    for _ in range(5):
        grad = torch.randn(6, generator=g)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    assert torch.equal(ours, theirs)


def test_conv_kernel_is_the_flattened_matrix():
    g = torch.Generator().manual_seed(2)
    K0 = torch.randn(4, 3, 3, 3, generator=g)
    conv, flat = nn.Parameter(K0.clone()), nn.Parameter(K0.reshape(4, -1).clone())
    for cls in FAMILY:
        opt_c, opt_f = cls([conv]), cls([flat])
        for _ in range(3):
            grad = torch.randn(4, 3, 3, 3, generator=g)
            conv.grad, flat.grad = grad.clone(), grad.reshape(4, -1).clone()
            opt_c.step()
            opt_f.step()
        assert torch.equal(conv.detach().reshape(4, -1), flat.detach()), cls.__name__


# --- NorMuon: neuron-wise normalisation --------------------------------------------------------------------


def row_norm_cv(D):
    r = D.norm(dim=1)
    return (r.std() / r.mean()).item()


def update_row_cvs(cls, shape, steps, noisy, seed=0, **kwargs):
    """Coefficient of variation of the update's row norms at each step, for a gradient with row scales 1e-2..1."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 0, shape[0]).unsqueeze(1)
    Z = torch.randn(*shape, generator=g)
    W = nn.Parameter(torch.zeros(*shape))
    opt = cls([W], lr=0.01, weight_decay=0.0, **kwargs)
    cvs = []
    for _ in range(steps):
        if noisy:
            Z = torch.randn(*shape, generator=g)
        W.grad = scales * Z
        before = W.detach().clone()
        opt.step()
        cvs.append(row_norm_cv(W.detach() - before))
    return cvs


def test_normuon_equalises_row_norms():
    shape = (64, 16)  # tall: Muon's rows are the leverage scores of the gradient, very unequal here
    muon = update_row_cvs(Muon, shape, 10, noisy=False)
    normuon = update_row_cvs(NorMuon, shape, 10, noisy=False, ns_dtype="float32")
    # constant gradient: v stays proportional to the row mean square, so the rows are equal to float32 round-off
    assert max(normuon) <= 1e-4
    assert min(muon) >= 0.5
    # fresh noise every step: after warm-up NorMuon's rows are still far more uniform than Muon's
    for seed in range(3):
        muon = update_row_cvs(Muon, shape, 20, noisy=True, seed=seed)
        normuon = update_row_cvs(NorMuon, shape, 20, noisy=True, seed=seed)
        assert normuon[-1] <= 0.3 and normuon[-1] <= muon[-1] / 3


# --- routing -----------------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self, tie=False):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.blocks = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))
        self.norm = nn.LayerNorm(6)
        self.lm_head = nn.Linear(6, 10, bias=False)
        self.proj = nn.Linear(6, 6)  # registered after the head: the name rule, not "last Linear", finds the head
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(self.norm(self.blocks(self.embed(tokens))))


def names(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_split_params_rules():
    model = TinyLM()
    mats, others = split_params(model)
    assert names(model, mats) == ["blocks.0.weight", "blocks.2.weight", "proj.weight"]
    assert "lm_head.weight" in names(model, others) and "embed.weight" in names(model, others)
    assert "norm.weight" in names(model, others) and "blocks.0.bias" in names(model, others)
    assert len(mats) + len(others) == len(list(model.parameters()))
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # no head name: the last Linear
    assert names(seq, split_params(seq)[0]) == ["0.weight"]
    assert names(seq, split_params(seq, head=None)[0]) == ["0.weight", "2.weight"]
    assert names(model, split_params(model, head="proj")[0]) == ["blocks.0.weight", "blocks.2.weight", "lm_head.weight"]
    tied = TinyLM(tie=True)
    mats, others = split_params(tied)
    assert "embed.weight" in names(tied, others) and len(mats) + len(others) == len(list(tied.parameters()))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert names(conv, split_params(conv)[0]) == ["0.weight"]


def test_split_params_overrides_and_errors():
    model = TinyLM()
    mats, _ = split_params(model, muon=["lm_head"], adamw=["blocks.0"])
    assert names(model, mats) == ["blocks.2.weight", "lm_head.weight", "proj.weight"]
    with pytest.raises(ConfigError, match="no parameter is named 'nope'"):
        split_params(model, adamw=["nope"])
    with pytest.raises(ConfigError, match="both muon and adamw"):
        split_params(model, muon=["proj"], adamw=["proj.weight"])
    with pytest.raises(ConfigError, match=">= 2-D"):
        split_params(model, muon=["proj.bias"])
    with pytest.raises(ConfigError, match="head"):
        split_params(model, head="missing")
    with pytest.raises(ConfigError, match="muon"):
        split_params(model, muon="proj")


def test_constructor_routing():
    model = TinyLM()
    opt = Muon(model, lr=0.02, adamw_lr=1e-3)  # a module: split_params
    flags = [(g["use_muon"], g["lr"]) for g in opt.param_groups]
    assert flags == [(True, 0.02), (False, 1e-3)]
    assert names(model, opt.param_groups[0]["params"]) == ["blocks.0.weight", "blocks.2.weight", "proj.weight"]
    opt = NorMuon(model.parameters())  # a plain list: by dimension only
    assert {p.ndim >= 2 for p in opt.param_groups[0]["params"]} == {True}
    assert {p.ndim for p in opt.param_groups[1]["params"]} == {1}
    # a dict without the flag is split; its keys go to the matrix half, the other half gets the AdamW settings
    opt = AuON([{"params": list(model.blocks.parameters()), "lr": 0.5}], adamw_lr=2e-3)
    assert [(g["use_muon"], g["lr"]) for g in opt.param_groups] == [(True, 0.5), (False, 2e-3)]
    opt = ROOT([{"params": [model.proj.weight], "use_muon": True}, {"params": [model.embed.weight], "use_muon": False}])
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[1]["betas"] == (0.9, 0.95)
    with pytest.raises(ShapeError, match="use_muon=True"):
        Muon([{"params": [model.proj.bias], "use_muon": True}])
    with pytest.raises(ConfigError, match="mixes matrices"):
        opt.add_param_group({"params": [model.norm.weight, model.blocks[0].weight]})
    opt.add_param_group({"params": [model.norm.weight]})  # all 1-D: AdamW
    assert opt.param_groups[-1]["use_muon"] is False and opt.param_groups[-1]["lr"] == 3e-4
    with pytest.raises(ConfigError, match="single Tensor"):
        Muon(model.proj.weight)
    with pytest.raises(ConfigError, match="empty"):
        Muon([])
    with pytest.raises(ConfigError, match="complex"):
        Muon([nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))])


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (Muon, {"lr": -1.0}, "lr"),
        (Muon, {"weight_decay": -0.1}, "weight_decay"),
        (Muon, {"momentum": 1.0}, "momentum"),
        (Muon, {"nesterov": "yes"}, "nesterov"),
        (Muon, {"ns_steps": 0}, "ns_steps"),
        (Muon, {"ns_coefficients": "septic"}, "ns_coefficients"),
        (Muon, {"eps": -1e-7}, "eps"),
        (Muon, {"adjust_lr_fn": "sqrt"}, "adjust_lr_fn"),
        (Muon, {"ns_dtype": "int8"}, "ns_dtype"),
        (Muon, {"adamw_lr": -1.0}, "adamw_lr"),
        (Muon, {"adamw_betas": (0.9, 1.0)}, r"adamw_betas\[1\]"),
        (Muon, {"adamw_eps": -1.0}, "adamw_eps"),
        (Muon, {"adamw_weight_decay": -1.0}, "adamw_weight_decay"),
        (NorMuon, {"beta2": 1.5}, "beta2"),
        (NorMuon, {"norm_eps": -1.0}, "norm_eps"),
        (AuON, {"gamma": 0.0}, "gamma"),
        (AuON, {"hybrid": 1}, "hybrid"),
        (AuON, {"momentum": -0.1}, "momentum"),
        (ROOT, {"threshold_quantile": 0.0}, "threshold_quantile"),
        (ROOT, {"threshold": -1.0}, "threshold"),
        (ROOT, {"coefficient_table": {(0, 3): QUINTIC}}, "coefficient_table"),
        (ROOT, {"coefficient_table": {(2, 3): (1.0, 2.0)}}, "coefficient_table"),
    ],
)
def test_validation(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls([nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(3))], **kwargs)


def test_group_values_are_validated_too():
    with pytest.raises(ConfigError, match="momentum"):
        Muon([{"params": [nn.Parameter(torch.zeros(3, 2))], "use_muon": True, "momentum": 2.0}])
    with pytest.raises(ConfigError, match=r"betas\[0\] must be in \[0, 1\)"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": False, "betas": (1.5, 0.9)}])


# --- contracts: registry, train_step, checkpoints, autocast, accumulation ----------------------------------


def test_registry_and_closure_contract(tiny):
    for cls in FAMILY:
        opt = reglab.optim.get(NAMES[cls], tiny.parameters(), lr=0.01)
        assert isinstance(opt, cls) and isinstance(opt, OrthogonalOptimizer)
        assert reglab.optim.requires_closure(opt) is False and not getattr(opt, "requires_closure", False)
        assert reglab.optim.REGISTRY.describe()[NAMES[cls]].startswith(cls.__name__)
    with pytest.raises(ConfigError, match="no argument 'momentun'"):
        reglab.optim.get("muon", tiny.parameters(), momentun=0.9)


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_train_step(cls, tiny):
    opt = reglab.optim.get(NAMES[cls], tiny, lr=0.02, adamw_lr=1e-2)  # the model itself: split_params
    before = copy.deepcopy(tiny.state_dict())
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    losses = [train_step(tiny, (x, y), nn.CrossEntropyLoss(), opt)["loss"] for _ in range(5)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    for name, value in tiny.state_dict().items():  # both the matrix (body.0.weight) and the AdamW parts moved
        assert not torch.equal(value, before[name]), name


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_state_dict_round_trip(cls, tiny):
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))]
    batches *= 5
    opt = cls(tiny, lr=0.02)
    for batch in batches[:3]:
        train_step(tiny, batch, nn.CrossEntropyLoss(), opt)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = copy.deepcopy(tiny)
    fresh = cls(twin, lr=0.5)  # a different lr: the checkpoint's groups must win
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.param_groups[0]["lr"] == 0.02
    for batch in batches[3:]:
        train_step(tiny, batch, nn.CrossEntropyLoss(), opt)
        train_step(twin, batch, nn.CrossEntropyLoss(), fresh)
    for (name, a), b in zip(tiny.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_bf16_autocast_on_cpu(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = cls(model, lr=0.02)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        record = train_step(model, (x, y), nn.CrossEntropyLoss(), opt)
    assert math.isfinite(record["loss"])
    for p, p0 in zip(model.parameters(), before):
        assert p.dtype == torch.float32 and torch.isfinite(p).all() and not torch.equal(p, p0)


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_gradient_accumulation_equals_one_large_batch(cls, tiny):
    kwargs = {"ns_dtype": "float64"} if cls is not AuON else {}
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    twin = copy.deepcopy(tiny)
    whole, accumulated = cls(tiny, lr=0.05, **kwargs), cls(twin, lr=0.05, **kwargs)
    whole.zero_grad()
    loss_fn(tiny(x), y).backward()
    whole.step()
    accumulated.zero_grad()
    for part in (slice(0, 8), slice(8, 16)):
        (0.5 * loss_fn(twin(x[part]), y[part])).backward()
    accumulated.step()
    # the two gradients differ by float64 round-off (~1e-16); the NS amplifies that by < 1e3
    for a, b in zip(tiny.parameters(), twin.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_auto_ns_dtype_is_float32_on_the_cpu():
    """bfloat16 matrix products are slow on most CPUs: "auto" computes the CPU Newton–Schulz in float32."""
    from reglab.linalg.newton_schulz import newton_schulz

    g = torch.Generator().manual_seed(0)
    W = nn.Parameter(torch.randn(16, 8, generator=g))
    grad = torch.randn(16, 8, generator=g)
    opt = Muon([W], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    assert opt.param_groups[0]["ns_dtype"] == "auto"
    before = W.detach().clone()
    W.grad = grad.clone()
    opt.step()
    expected = newton_schulz(grad, 5, "quintic", 1e-7, dtype=torch.float32) * max(1, 16 / 8) ** 0.5
    torch.testing.assert_close(before - W.detach(), 0.1 * expected)
