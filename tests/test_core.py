"""The contracts: penalty algebra, breakdown, registries, errors, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reglab import augment, diagnostics, losses, optim, penalties, tasks
from reglab.core import (
    ConfigError,
    Penalty,
    PenaltySum,
    Registry,
    StepContext,
    UnknownNameError,
    seed_everything,
)
from reglab.core.penalty import snake_case
from reglab.losses import CrossEntropy
from reglab.penalties import L1, L2, L2ToInit
from reglab.train import train_step


def _sq(model):
    return sum(p.pow(2).sum() for p in model.parameters())


def test_single_penalty_is_weighted_and_breaks_down(ctx):
    p = L2(0.3)
    expected = 0.5 * 0.3 * _sq(ctx.model)
    torch.testing.assert_close(p(ctx), expected)
    assert list(p.breakdown(ctx)) == ["l2"]


def test_sum_breakdown_and_total(ctx):
    total = L2(0.1) + L1(0.2)
    assert isinstance(total, PenaltySum)
    parts = total.breakdown(ctx)
    assert list(parts) == ["l2", "l1"]
    torch.testing.assert_close(parts["l1"], 0.2 * sum(p.abs().sum() for p in ctx.model.parameters()))
    torch.testing.assert_close(total(ctx), parts["l2"] + parts["l1"])


def test_sum_flattens_and_names_duplicates(ctx):
    total = L2(0.1) + (L1(0.2) + L2(0.3))
    assert len(total.terms()) == 3
    assert list(total.breakdown(ctx)) == ["l2", "l1", "l2#2"]
    assert sum([L2(0.1), L1(0.2)]).terms()[1].name == "l1"  # builtin sum works


def test_scalar_multiplication_rescales_without_mutating(ctx):
    base = L2(0.1) + L1(0.2)
    doubled = 2 * base
    torch.testing.assert_close(doubled(ctx), 2 * base(ctx))
    assert [t.weight for t in base.terms()] == [0.1, 0.2]
    assert (L2(0.5) * 0.5).weight == 0.25


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "0.1", True])
def test_bad_weight_raises(weight):
    with pytest.raises(ConfigError, match="weight"):
        L2(weight)


def test_penalty_needs_union():
    class NeedsOutputs(Penalty):
        needs = frozenset({"outputs"})

        def compute(self, ctx):
            return ctx.outputs.pow(2).mean()

    assert (L2(1.0) + NeedsOutputs(1.0)).needs == {"outputs"}


def test_params_weights_only_skips_vectors(ctx):
    only = L2(1.0, params="weights")(ctx)
    mats = 0.5 * sum(p.pow(2).sum() for p in ctx.model.parameters() if p.ndim >= 2)
    torch.testing.assert_close(only, mats)
    with pytest.raises(ConfigError, match="params"):
        L2(1.0, params="biases")


def test_l2_to_init_zero_at_anchor_then_exact(ctx):
    p = L2ToInit(0.7)
    assert p(ctx).item() == 0.0
    anchor = [q.detach().clone() for q in ctx.model.parameters()]
    with torch.no_grad():
        for q in ctx.model.parameters():
            q.add_(0.1)
    expected = 0.5 * 0.7 * sum((q - a).pow(2).sum() for q, a in zip(ctx.model.parameters(), anchor))
    torch.testing.assert_close(p(ctx), expected)


def test_l2_to_init_state_dict_round_trips_into_fresh_instance(ctx):
    p = L2ToInit(1.0)
    p(ctx)
    with torch.no_grad():
        for q in ctx.model.parameters():
            q.mul_(1.5)
    fresh = L2ToInit(1.0)
    fresh.load_state_dict(p.state_dict())
    torch.testing.assert_close(fresh(ctx), p(ctx))
    assert fresh(ctx).item() > 0


def test_l2_gradient_matches_sgd_weight_decay(tiny):
    """L2(wd) with plain SGD takes exactly the step of SGD(weight_decay=wd)."""
    x = torch.randn(4, 3, dtype=torch.float64)
    ctx = StepContext(model=tiny, inputs=x, targets=torch.zeros(4))
    tiny.zero_grad()
    L2(0.01)(ctx).backward()
    for p in tiny.parameters():
        torch.testing.assert_close(p.grad, 0.01 * p.detach())


def test_snake_case():
    assert snake_case("SoftOrthogonality") == "soft_orthogonality"
    assert snake_case("L2ToInit") == "l2_to_init"
    assert snake_case("L2") == "l2"


# -- registries ---------------------------------------------------------------

FAMILIES = {
    "penalties": penalties,
    "losses": losses,
    "optim": optim,
    "augment": augment,
    "diagnostics": diagnostics,
    "tasks": tasks,
}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_every_family_exposes_registry_and_get(family):
    assert isinstance(family.REGISTRY, Registry)
    assert callable(family.get)
    for name, description in family.REGISTRY.describe().items():
        assert name == name.lower() and " " not in name
        assert description, f"{name} has no description"


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownNameError, match=r"unknown penalty 'l3'; did you mean 'l2'") as info:
        penalties.get("l3", 1.0)
    assert "l2" in info.value.suggestions


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UnknownNameError, match="known names: .*l1.*l2"):
        penalties.get("zzzzzz", 1.0)


def test_unknown_kwarg_suggests():
    with pytest.raises(ConfigError, match=r"has no argument 'smothing'; did you mean 'smoothing'"):
        losses.get("label_smoothing", smothing=0.1)


def test_registry_rejects_duplicates_and_bad_names():
    reg = Registry("thing")
    reg.register("a_b")(lambda: 1)
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a_b")(lambda: 2)
    with pytest.raises(ConfigError, match="snake_case"):
        reg.register("Bad Name")


def test_registry_required_arguments():
    assert penalties.REGISTRY.required("l2") == ["weight"]
    with pytest.raises(ConfigError, match="needs the argument 'weight'"):
        penalties.REGISTRY.check_kwargs("l2", {}, complete=True)


def test_optimizers_are_torchs():
    model = torch.nn.Linear(2, 1)
    assert isinstance(optim.get("sgd", model.parameters(), lr=0.1), torch.optim.SGD)
    assert isinstance(optim.get("adamw", model.parameters()), torch.optim.AdamW)
    assert optim.REGISTRY.parameters("sgd")[0] == "lr"


def test_seed_everything_is_deterministic():
    seed_everything(3)
    a = torch.randn(4)
    g = seed_everything(3)
    torch.testing.assert_close(torch.randn(4), a)
    assert isinstance(g, torch.Generator)
    with pytest.raises(ConfigError, match="seed"):
        seed_everything(-1)


def test_check_bool_refuses_what_it_used_to_coerce():
    from reglab.core import ConfigError
    from reglab.core.validation import check_bool
    from reglab.losses import CircleLoss
    from reglab.train import LateStopping

    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    for bad in (1, 0, "yes", None, 1.0):
        with pytest.raises(ConfigError, match=r"flag must be a bool \(true or false\)"):
            check_bool("flag", bad)
    with pytest.raises(ConfigError, match="detach_weights must be a bool"):
        CircleLoss(detach_weights=1)
    with pytest.raises(ConfigError, match="stop must be a bool"):
        LateStopping(stop="no")


# --- penalty algebra: edge cases ---------------------------------------------------------------


def test_scaling_a_sum_with_one_object_twice_scales_it_once(ctx):
    p = L2(1.0)
    torch.testing.assert_close(((p + p) * 2)(ctx), 4 * p(ctx))
    assert p.weight == 1.0


def test_adding_zero_and_penalty_zero_mean_no_penalty(tiny):
    p = L2(0.5)
    assert (p + 0) is p and (0 + p) is p
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    record = train_step(tiny, (x, y), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.1), sum([]))
    assert "objective" in record and not any(k.startswith("penalty/") for k in record)
    with pytest.raises(ConfigError, match="penalty must be a reglab Penalty"):
        train_step(tiny, (x, y), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.1), "l2")


def test_multiplying_by_a_non_number_is_a_type_error():
    with pytest.raises(TypeError):
        L2(1.0) * L2(1.0)
    assert (L2(1.0) * np.float32(2.0)).weight == 2.0 and (L2(1.0) * torch.tensor(3.0)).weight == 3.0
