"""Weight-decay exclusions: what each keyword selects, the groups, one step of each optimizer kind, configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reglab import optim
from reglab.core import ConfigError
from reglab.experiments import build, parse_config
from reglab.optim import no_weight_decay_names, weight_decay_groups
from reglab.train import train_step


class MyRMSNorm(nn.Module):
    """A hand-written norm layer, as in many LLM codebases (not a torch class)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.scale / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.body = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.rms = MyRMSNorm(6)
        self.head = nn.Linear(6, 3, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))


def test_what_each_keyword_selects():
    model = Zoo()
    assert no_weight_decay_names(model, ["bias"]) == [
        "attn.in_proj_bias",
        "attn.out_proj.bias",
        "body.bias",
        "bn.bias",
        "ln.bias",
    ]
    assert no_weight_decay_names(model, ["norm"]) == ["bn.weight", "bn.bias", "ln.weight", "ln.bias", "rms.scale"]
    assert no_weight_decay_names(model, ["embedding"]) == ["embed.weight"]
    one_d = [n for n, p in model.named_parameters() if p.ndim <= 1]
    assert no_weight_decay_names(model, ["ndim<=1"]) == one_d
    assert "temperature" in one_d and "rms.scale" in one_d
    # anything else is a regex searched in the full name; entries combine by union, in named_parameters order
    assert no_weight_decay_names(model, [r"^head\.", "temp"]) == ["temperature", "head.weight"]  # own params first
    assert no_weight_decay_names(model, ("embedding", "bias")) == [
        "embed.weight",
        "attn.in_proj_bias",
        "attn.out_proj.bias",
        "body.bias",
        "bn.bias",
        "ln.bias",
    ]


def test_tied_weight_is_listed_once_and_excluded_through_either_owner():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    assert no_weight_decay_names(model, ["embedding"]) == ["0.weight"]
    groups = weight_decay_groups(model, ["embedding"])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and len(groups[0]["params"]) == 1


def test_groups_split_every_parameter_once_and_leave_the_rest_to_the_optimizer():
    model = Zoo()
    decayed, excluded = weight_decay_groups(model, ["bias", "norm"])
    assert set(decayed) == {"params"} and set(excluded) == {"params", "weight_decay"} and excluded["weight_decay"] == 0
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in excluded["params"]] == no_weight_decay_names(model, ["bias", "norm"])
    assert sorted(names[id(p)] for p in decayed["params"] + excluded["params"]) == sorted(names.values())
    (given, _) = weight_decay_groups(model, ["bias"], weight_decay=0.3)
    assert given["weight_decay"] == 0.3
    (only,) = weight_decay_groups(model, [])  # nothing excluded: one group, the optimizer's decay
    assert set(only) == {"params"} and len(only["params"]) == len(names)


@pytest.mark.parametrize(
    "entries, match",
    [
        (["baias"], r"'baias' selects no parameter of Zoo; keywords are bias, norm, embedding, ndim<=1"),
        (["bias", "^nothing$"], r"'\^nothing\$' selects no parameter"),
        ("bias", r"must be a list of keywords or regexes, got the string 'bias'; write \[bias\]"),
        ([3], "must be a list of non-empty strings"),
        ([""], "must be a list of non-empty strings"),
        ({"bias": True}, "must be a list of non-empty strings"),
        (["body.("], r"'body.\(' is neither a keyword nor a valid regex"),
    ],
)
def test_bad_entries_are_refused_by_name(entries, match):
    with pytest.raises(ConfigError, match=match):
        weight_decay_groups(Zoo(), entries)
    with pytest.raises(ConfigError, match=r"weight_decay must be >= 0"):
        weight_decay_groups(Zoo(), ["bias"], weight_decay=-1.0)


# -- one step: excluded parameters follow the optimizer without decay, the others with it -------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.ln(self.body(x))))


def _half_mse(out, y):
    return 0.5 * (out - y).pow(2).mean()


def _net_and_batch():
    torch.manual_seed(0)
    net = Net().double()
    with torch.no_grad():  # norm parameters away from their init, so that decay would move them
        net.ln.weight.add_(torch.randn(6, dtype=torch.float64))
        net.ln.bias.add_(torch.randn(6, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    return net, (
        torch.randn(16, 4, generator=g, dtype=torch.float64),
        torch.randn(16, 3, generator=g, dtype=torch.float64),
    )


# name, kwargs with decay (each optimizer's own decay keys), the same with every decay at 0
OPTIMIZERS = [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}, {"weight_decay": 0.0}),
    ("adamw", {"lr": 0.05, "weight_decay": 0.5}, {"weight_decay": 0.0}),
    (
        "sam",
        {"rho": 0.05, "base": {"name": "adamw", "lr": 0.05, "weight_decay": 0.5}},
        {"base": {"name": "adamw", "lr": 0.05, "weight_decay": 0.0}},
    ),
    (
        "muon",
        {"lr": 0.05, "weight_decay": 0.5, "adamw_lr": 0.01, "adamw_weight_decay": 0.5, "ns_dtype": "float64"},
        {"weight_decay": 0.0, "adamw_weight_decay": 0.0},
    ),
]


@pytest.mark.parametrize("name, kwargs, no_decay", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_one_step_excluded_parameters_are_not_decayed_and_the_others_are(name, kwargs, no_decay):
    """Reference: the same optimizer over all parameters, once with the decay and once with every decay at 0.

    Each excluded parameter (biases, the LayerNorm, and the head's weight by regex: a matrix, so Muon's own
    update) must end where the no-decay reference puts it, each other parameter where the decayed reference does.
    """
    entries = ["bias", "norm", r"^head\.weight$"]
    net, batch = _net_and_batch()
    ref_decay, ref_plain = copy.deepcopy(net), copy.deepcopy(net)
    opt = optim.get(name, weight_decay_groups(net, entries), **kwargs)
    train_step(net, batch, _half_mse, opt)
    for ref, extra in ((ref_decay, {}), (ref_plain, no_decay)):
        train_step(ref, batch, _half_mse, optim.get(name, ref.parameters(), **{**kwargs, **extra}))
    excluded = set(no_weight_decay_names(net, entries))
    assert excluded == {"body.bias", "ln.weight", "ln.bias", "head.weight", "head.bias"}
    moved_by_decay = 0
    for (n, p), d, q in zip(net.named_parameters(), ref_decay.parameters(), ref_plain.parameters()):
        torch.testing.assert_close(p, q if n in excluded else d, rtol=1e-12, atol=1e-14, msg=n)
        moved_by_decay += int(not torch.allclose(d, q, rtol=1e-9, atol=0))
    assert moved_by_decay == len(list(net.parameters()))  # the decay changes every parameter: the test can fail


def test_muon_keeps_its_routing_and_hyperparameters_in_both_groups():
    net, _ = _net_and_batch()
    opt = optim.Muon(
        weight_decay_groups(net, ["bias", "norm", r"^head\.weight$"]), lr=0.02, momentum=0.9, adamw_lr=3e-3
    )
    names = {id(p): n for n, p in net.named_parameters()}
    rows = [(g["use_muon"], g["weight_decay"], g["lr"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups]
    assert rows == [
        (True, 0.1, 0.02, ["body.weight"]),
        (True, 0.0, 0.02, ["head.weight"]),
        (False, 0.0, 3e-3, ["body.bias", "ln.weight", "ln.bias", "head.bias"]),
    ]
    assert [g.get("momentum") for g in opt.param_groups[:2]] == [0.9, 0.9]
    assert opt.param_groups[2]["betas"] == (0.9, 0.95)


def test_route_params_keeps_other_keys_on_the_matrix_half_only():
    """Only a zero weight decay crosses to the AdamW half; a nonzero one or an lr stays with the matrices."""
    w, b = nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(3))
    opt = optim.Muon([{"params": [w, b], "weight_decay": 0.2, "lr": 0.5}], adamw_weight_decay=0.01)
    assert [(g["use_muon"], g["weight_decay"], g["lr"]) for g in opt.param_groups] == [
        (True, 0.2, 0.5),
        (False, 0.01, 3e-4),
    ]


# -- configs ----------------------------------------------------------------------------------------------------------


def _cfg(optimizer):
    return {
        "task": {"name": "two_moons", "n": 64, "n_test": 32},
        "model": {"name": "mlp", "width": 8},
        "optimizer": optimizer,
    }


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1, "weight_decay": 0.01, "no_weight_decay": ["bias"]},
        {"name": "sam", "rho": 0.05, "base": {"name": "adamw", "weight_decay": 0.05}, "no_weight_decay": ["bias"]},
        {"name": "muon", "no_weight_decay": ["bias", r"\.weight$"]},
    ],
    ids=["sgd", "sam-adamw", "muon"],
)
def test_config_entry_builds_the_groups(optimizer):
    built = build(parse_config(_cfg(optimizer)))
    excluded = {id(p) for p in built.model.parameters() if p.ndim == 1}
    if optimizer["name"] == "muon":  # every weight too, by regex
        excluded = {id(p) for p in built.model.parameters()}
    for group in built.optimizer.param_groups:
        zero = group["weight_decay"] == 0
        assert all((id(p) in excluded) == zero for p in group["params"])
    assert sum(len(g["params"]) for g in built.optimizer.param_groups) == len(list(built.model.parameters()))


def test_config_hash_unchanged_without_the_key_and_changed_with_it():
    plain = parse_config(_cfg({"name": "adamw", "lr": 1e-3}))
    assert plain.config_hash() == parse_config(_cfg({"name": "adamw", "lr": 1e-3})).config_hash()
    assert parse_config({"task": {"name": "two_moons"}}).config_hash() == "ada812a6ce1c0c36"  # pinned in test_config
    with_key = parse_config(_cfg({"name": "adamw", "lr": 1e-3, "no_weight_decay": ["bias"]}))
    assert with_key.config_hash() != plain.config_hash()


@pytest.mark.parametrize(
    "optimizer, match, when",
    [
        ({"name": "adamw", "no_weight_decay": "bias"}, r"optimizer\.no_weight_decay must be a list", "parse"),
        ({"name": "adamw", "no_weight_decay": ["b("]}, r"optimizer\.no_weight_decay: 'b\(' is neither", "parse"),
        (
            {"name": "sam", "base": {"name": "adamw", "no_weight_decay": ["bias"]}},
            r"optimizer\.base\.no_weight_decay: write no_weight_decay on the outer entry",
            "parse",
        ),
        ({"name": "adamw", "no_weight_decay_": ["bias"]}, r"has no argument 'no_weight_decay_'", "parse"),
        (
            {"name": "adamw", "no_weight_decay": ["embedding"]},
            r"optimizer: no_weight_decay: 'embedding' selects no",
            "build",
        ),
        (
            {"name": "classp", "no_weight_decay": ["bias"]},
            r"'classp' has no weight_decay .* remove no_weight_decay",
            "build",
        ),
    ],
)
def test_config_errors_name_the_field(optimizer, match, when):
    if when == "parse":
        with pytest.raises(ConfigError, match=match):
            parse_config(_cfg(optimizer))
    else:
        cfg = parse_config(_cfg(optimizer))
        with pytest.raises(ConfigError, match=match):
            build(cfg)
