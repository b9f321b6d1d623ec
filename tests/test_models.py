"""Tests of the reference models in reglab.tasks.MODELS.

Every (task, model) pair that a registered task lists in ``task.models`` is
tested for the ``features``/``head`` contract, shapes, float64, gradients and
``torch.func`` compatibility, so new tasks and models are covered without new code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from reglab import tasks
from reglab.core.errors import ConfigError
from reglab.tasks import MODELS, REGISTRY, DiagonalLinear, Task

# Smaller sizes for the slow-to-generate tasks (tasks not listed use their defaults).
SMALL: dict[str, dict] = {"mnist1d": {"n_train": 300, "n_test": 100}, "modular_arithmetic": {"p": 13}}
# Small model sizes keep the tests fast; the architecture is the same.
SMALL_MODEL = {
    "mlp": {"width": 16},
    "cnn1d": {"channels": 4, "width": 8},
    "cnn2d": {"channels": 4, "width": 8},
    "embedding_mlp": {"embed_dim": 8, "width": 16},
    "transformer": {"d_model": 16, "n_heads": 2, "d_mlp": 32},
}


def get_task(name: str) -> Task:
    return tasks.get(name, **SMALL.get(name, {}))


#: Tasks over external data (torchvision, Hugging Face) and their models are tested in test_vision_hf.py.
EXTERNAL_TASKS, EXTERNAL_MODELS = {"torchvision", "hf_dataset"}, {"torchvision", "timm"}
PAIRS = [
    (t, m) for t in REGISTRY.names() if t not in EXTERNAL_TASKS for m in get_task(t).models if m not in EXTERNAL_MODELS
]


def build(task: Task, model: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return task.make_model(model, **{**SMALL_MODEL.get(model, {}), **kwargs})


def batch(task: Task, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return task.train.x[:n], task.train.y[:n]


def loss_fn(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.is_classification:
        return nn.functional.cross_entropy(out, y)
    return nn.functional.mse_loss(out, y.to(out.dtype))


def test_every_model_is_used_by_some_task():
    used = {m for _, m in PAIRS}
    assert set(MODELS.names()) - EXTERNAL_MODELS <= used, f"no task lists {sorted(set(MODELS.names()) - used)}"


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_forward_is_head_of_features(task_name, model_name):
    task = get_task(task_name)
    model = build(task, model_name).eval()
    x, _ = batch(task)
    h = model.features(x)
    out = model(x)
    assert h.dim() == 2 and h.shape == (len(x), model.feature_dim)
    assert out.shape == (len(x), task.output_dim)
    assert torch.equal(out, model.head(h))


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_default_size_model_builds_and_runs(task_name, model_name):
    task = get_task(task_name)
    model = build(task, model_name).eval()
    torch.manual_seed(0)
    default = task.make_model(model_name).eval()
    x, _ = batch(task, 2)
    assert default(x).shape == (2, task.output_dim) and model(x).shape == (2, task.output_dim)


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_float64(task_name, model_name):
    task = get_task(task_name)
    model = build(task, model_name).double().eval()
    x, _ = batch(task)
    x = x.double() if x.dtype.is_floating_point else x
    out = model(x)
    assert out.dtype == torch.float64 and model.features(x).dtype == torch.float64
    assert torch.equal(out, model.head(model.features(x)))


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_every_parameter_receives_a_gradient(task_name, model_name):
    task = get_task(task_name)
    model = build(task, model_name).train()
    x, y = batch(task, 16)
    loss_fn(task, model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero or non-finite gradient"


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_init_is_deterministic_given_the_global_seed(task_name, model_name):
    task = get_task(task_name)
    a, b = build(task, model_name, seed=3), build(task, model_name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_per_sample_gradients_with_torch_func_match_a_loop(task_name, model_name):
    """Diagnostics compute per-example gradients with vmap(grad(functional_call)); check against backward."""
    task = get_task(task_name)
    model = build(task, model_name).double().eval()
    x, y = batch(task, 3)
    x = x.double() if x.dtype.is_floating_point else x
    y = y.double() if y.dtype.is_floating_point else y
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return loss_fn(task, functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss_fn(task, model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("task_name, model_name", PAIRS)
def test_hessian_vector_product_matches_finite_differences(task_name, model_name):
    """Double backward works (curvature diagnostics): Hv against central differences of the gradient, float64."""
    task = get_task(task_name)
    model = build(task, model_name).double().eval()
    x, y = batch(task, 4)
    x = x.double() if x.dtype.is_floating_point else x
    params = list(model.parameters())
    torch.manual_seed(1)
    v = [torch.randn_like(p) for p in params]

    def gradient():
        return torch.autograd.grad(loss_fn(task, model(x), y), params, create_graph=True)

    g = gradient()
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    eps = 1e-5
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(eps * vi)
    g_plus = [t.detach() for t in gradient()]
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.sub_(2 * eps * vi)
    g_minus = [t.detach() for t in gradient()]
    for h, gp, gm in zip(hv, g_plus, g_minus):
        # ReLU kinks and max-pooling can make finite differences cross a kink; eps is tiny, so they rarely do
        torch.testing.assert_close(h, (gp - gm) / (2 * eps), rtol=1e-4, atol=1e-6)


# --- individual models ---------------------------------------------------------------------------


def test_mlp_depth_zero_is_linear_and_dropout_only_in_training():
    linear = tasks.MLP((1, 8, 8), 10, depth=0)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(linear.features(x), x.flatten(1)) and linear.feature_dim == 64
    torch.manual_seed(0)
    model = tasks.MLP((4,), 3, width=32, dropout=0.5)
    x = torch.randn(8, 4)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_mlp_activations(activation):
    model = tasks.MLP((3,), 2, width=4, activation=activation)
    assert type(model.body[1]).__name__.lower() == activation


def test_cnn1d_pooling_makes_features_invariant_to_circular_shifts_of_a_zero_padded_signal():
    torch.manual_seed(0)
    model = tasks.CNN1d((40,), 10, channels=4, width=8).eval()
    x = torch.zeros(1, 40)
    x[0, 10:15] = torch.randn(5)
    shifted = torch.roll(x, 7, dims=1)  # the signal stays away from the borders, so the conv maps just shift
    torch.testing.assert_close(model.features(x), model.features(shifted))
    assert tasks.CNN1d((2, 40), 3).conv[0].in_channels == 2


def test_cnn2d_accepts_channel_less_shapes():
    model = tasks.CNN2d((8, 8), 10, channels=4, width=8)
    assert model(torch.rand(2, 8, 8)).shape == (2, 10)


def test_token_models_default_vocab_to_num_outputs():
    for cls in (tasks.EmbeddingMLP, tasks.Transformer):
        assert cls((2,), 7).vocab_size == 7 and cls((2,), 7, vocab_size=9).vocab_size == 9


def test_transformer_reads_the_equals_token_at_the_last_position():
    torch.manual_seed(0)
    model = tasks.Transformer((2,), 5, d_model=8, n_heads=2, d_mlp=16).eval()
    assert model.token_embed.num_embeddings == 6 and model.pos_embed.num_embeddings == 3
    x = torch.tensor([[1, 2], [3, 4]])
    before = model(x)
    with torch.no_grad():
        model.token_embed.weight[5] += torch.randn(8)  # the '=' token (not a constant: LayerNorm removes those)
    assert not torch.allclose(before, model(x))
    plain = tasks.Transformer((2,), 5, d_model=8, n_heads=2, d_mlp=16, layer_norm=False)
    assert isinstance(plain.ln1, nn.Identity) and plain(x).shape == (2, 5)


def test_transformer_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    model = tasks.Transformer((2,), 5, d_model=8, n_heads=2, d_mlp=16).double()
    reference = nn.MultiheadAttention(8, 2, batch_first=True).double()
    with torch.no_grad():
        reference.in_proj_weight.copy_(model.qkv.weight)
        reference.in_proj_bias.copy_(model.qkv.bias)
        reference.out_proj.weight.copy_(model.attn_out.weight)
        reference.out_proj.bias.copy_(model.attn_out.bias)
    h = torch.randn(3, 4, 8, dtype=torch.float64)
    expected, _ = reference(h, h, h, need_weights=False)
    torch.testing.assert_close(model._attention(h), expected, rtol=1e-10, atol=1e-12)


def test_diagonal_linear_beta_and_exact_gradient():
    model = DiagonalLinear((5,), 1, init_scale=0.3)
    assert torch.equal(model.beta, torch.zeros(5, 1))
    torch.manual_seed(0)
    with torch.no_grad():
        model.u.copy_(torch.randn(5, 1))
        model.v.copy_(torch.randn(5, 1))
    x, y = torch.randn(7, 5), torch.randn(7, 1)
    torch.testing.assert_close(model.beta, model.u * model.u - model.v * model.v)
    torch.testing.assert_close(model(x), x @ model.beta)
    assert torch.equal(model.features(x), x)
    # L = mean (x beta - y)^2 / 2 => dL/dbeta = x^T r / n, dL/du = 2 u * dL/dbeta, dL/dv = -2 v * dL/dbeta
    residual = x @ model.beta - y
    (0.5 * (residual**2).mean()).backward()
    g_beta = x.T @ residual.detach() / 7
    torch.testing.assert_close(model.u.grad, 2 * model.u.detach() * g_beta)
    torch.testing.assert_close(model.v.grad, -2 * model.v.detach() * g_beta)


@pytest.mark.parametrize(
    "name, input_shape, kwargs, match",
    [
        ("mlp", (4,), {"activation": "swish"}, "activation must be one of"),
        ("mlp", (4,), {"depth": -1}, "depth must be an int >= 0"),
        ("mlp", (4,), {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("mlp", (0,), {}, "input_shape"),
        ("cnn1d", (1, 8, 8), {}, r"input_shape must be \(length,\)"),
        ("cnn1d", (40,), {"kernel_size": 4}, "kernel_size must be odd"),
        ("cnn1d", (40,), {"pool": "min"}, "pool must be one of"),
        ("cnn2d", (40,), {}, "input_shape must be"),
        ("embedding_mlp", (2,), {"vocab_size": 0}, "vocab_size must be an int >= 1"),
        ("embedding_mlp", (2, 3), {}, "input_shape"),
        ("transformer", (2,), {"n_heads": 3}, r"n_heads must divide d_model \(128\), got 3"),
        ("diagonal_linear", (4,), {"init_scale": 0.0}, r"init_scale must be > 0"),
        ("mlp", (4,), {"bogus": 1}, "bogus"),
    ],
)
def test_model_argument_errors(name, input_shape, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODELS.get(name, input_shape, 3, **kwargs)
