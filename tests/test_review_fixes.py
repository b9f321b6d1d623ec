"""Regression tests for defects found in review of the foundation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reglab import tasks
from reglab.core import ConfigError, ShapeError
from reglab.diagnostics import WeightNormProbe
from reglab.experiments import parse_config
from reglab.experiments.config import deep_merge
from reglab.experiments.runner import check_buildable
from reglab.losses import MSE, CrossEntropy
from reglab.penalties import L2
from reglab.train import Trainer, train_step

BASE = {"task": {"name": "two_moons", "n": 100, "n_test": 50}, "train": {"steps": 5}}


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


def test_lbfgs_is_driven_with_a_closure(tiny):
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    before = CrossEntropy()(tiny(x), y).item()
    train_step(tiny, (x, y), CrossEntropy(), torch.optim.LBFGS(tiny.parameters(), lr=0.5, max_iter=5))
    assert CrossEntropy()(tiny(x), y).item() < before


def test_float64_model_trains_on_a_float32_task():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8).double()
    result = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=3).fit()
    assert result.status == "done"


def test_regression_output_shape_mismatch_is_an_error():
    task = tasks.get("teacher_student", d=3, n=20, n_test=10)

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x).squeeze(1)

    model = Flat()
    with pytest.raises(ShapeError, match=r"must output \(n, 1\)"):
        Trainer(task, model, MSE(), torch.optim.SGD(model.parameters(), lr=0.1), steps=0).evaluate()


def test_all_flipped_training_set_is_not_divergence():
    task = tasks.subset(tasks.with_label_noise(tasks.get("two_moons", n=100, n_test=50), 0.9, seed=0), 3, seed=0)
    assert bool(task.flipped.all())
    model = task.make_model(width=8)
    result = Trainer(
        task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=4, batch_size=3, eval_every=2
    ).fit()
    assert result.status == "done"


def test_probe_measures_at_the_last_step():
    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8)
    result = Trainer(
        task,
        model,
        CrossEntropy(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        steps=5,
        batch_size=10,
        callbacks=[WeightNormProbe(every=2)],
    ).fit()
    assert [s for s, split, *_ in result.history if split == "probe"] == [0, 2, 4, 5]


def test_fit_twice_starts_a_fresh_history():
    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8)
    trainer = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=2)
    first = trainer.fit()
    n_first = len(first.history)
    second = trainer.fit()  # continues at step 2 = steps: one evaluation, nothing appended to the first result
    assert len(first.history) == n_first and {row[0] for row in second.history} == {2}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"optimizer": {"name": "sgd", "lr": "1e-3"}}, r"optimizer\.lr: '1e-3' is text, not a number"),
        ({"penalties": [{"name": "l2", "weight": "1e-4"}]}, r"penalties\[0\]\.weight: '1e-4' is text"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size"),
        ({"train": {"steps": True}}, r"train\.steps"),
        ({"train": {"seed": 2**70}}, r"train\.seed"),
    ],
)
def test_bad_values_fail_at_parse_time_with_the_field(patch, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(deep_merge(BASE, patch))


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"transforms": [{"name": "label_noise", "rate": 1.5}]}, r"transforms\[0\]: rate must be in \[0, 1\)"),
        ({"penalties": [{"name": "l2", "weight": -1.0}]}, r"penalties\[0\]: L2 weight must be >= 0"),
        ({"model": {"name": "mlp", "width": 0}}, r"model: width must be an int >= 1"),
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, r"optimizer: Invalid learning rate"),
    ],
)
def test_bad_values_fail_before_training_with_run_and_field(patch, message):
    cfg = parse_config(deep_merge(BASE, {"name": "r", **patch}))
    with pytest.raises(ConfigError, match=r"run 'r' \(seed 0\): " + message):
        check_buildable([cfg])


def test_numpy_scalars_are_accepted():
    assert L2(np.float64(0.1)).weight == pytest.approx(0.1)
    assert len(tasks.subset(tasks.get("two_moons", n=100, n_test=50), np.int64(5)).train) == 5


# -- losses ---------------------------------------------------------------------


def test_squentropy_hard_targets_do_not_cancel():
    from reglab.losses import Squentropy

    z = torch.tensor([[1e4, 30.0]])
    value = Squentropy(reduction="none")(z, torch.tensor([0]))
    ce = torch.nn.functional.cross_entropy(z, torch.tensor([0]), reduction="none")
    torch.testing.assert_close(value, ce + 900.0)


def test_repeated_index_in_a_batch_keeps_the_last_row():
    from reglab.losses import ELR

    loss = ELR(num_examples=4, num_classes=3, beta=0.5)
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    loss(z, torch.tensor([0, 2]), indices=torch.tensor([1, 1]))
    p = z[1].softmax(0).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(loss.running_targets[1], 0.5 * p / p.sum())


def test_state_follows_float64_logits():
    from reglab.losses import PSKD

    loss = PSKD(num_examples=3, num_classes=3, total_epochs=2)
    loss(torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 1]), indices=torch.tensor([0, 2]))
    assert loss.predictions.dtype == torch.float64


@pytest.mark.parametrize(
    "targets", [torch.tensor([0, -100]), torch.tensor([0, 3]), torch.tensor([0, 1], dtype=torch.int32)]
)
def test_class_targets_must_be_int64_in_range(targets):
    from reglab.losses import CrossEntropy, PolyLoss

    for loss in (CrossEntropy(), PolyLoss()):
        with pytest.raises(ShapeError, match="targets must be int64|class indices must be in"):
            loss(torch.randn(2, 3), targets)


def test_soft_targets_do_not_promote_the_output_dtype():
    from reglab.losses import CrossEntropy, LabelSmoothingCrossEntropy

    z, q = torch.randn(2, 3), torch.full((2, 3), 1 / 3, dtype=torch.float64)
    assert CrossEntropy()(z, q).dtype == torch.float32 == LabelSmoothingCrossEntropy()(z, q).dtype


def test_teacher_probabilities_must_be_finite():
    from reglab.losses import TeacherGuidedDistillation

    loss = TeacherGuidedDistillation(num_examples=2, num_classes=2)
    with pytest.raises(ConfigError, match="teacher probs"):
        loss.set_teacher(torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]))


def _loss_call(name, k, n):
    import inspect

    from reglab import losses

    params = inspect.signature(losses.REGISTRY.entry(name).factory).parameters
    extra = {"num_examples": n, "num_classes": k, "total_epochs": 2, "switch_step": 1}
    loss = losses.get(name, **{key: v for key, v in extra.items() if key in params})
    if hasattr(loss, "set_teacher"):
        loss.set_teacher(torch.full((n, k), 1.0 / k, dtype=torch.float64))
    if "indices" in loss.needs:
        return loss, lambda z, t: loss(z, t, indices=torch.arange(n))
    return loss, loss


def _soft_target_losses():
    from reglab import losses

    return [n for n in losses.REGISTRY.names() if getattr(losses.REGISTRY.entry(n).factory, "soft_targets", False)]


def test_the_soft_target_losses_are_the_expected_ones():
    assert {"cross_entropy", "label_smoothing", "elr", "nce", "xi_distill"} <= set(_soft_target_losses())
    assert "ldr_kl" not in _soft_target_losses() and "circle" not in _soft_target_losses()


@pytest.mark.parametrize("name", _soft_target_losses())
def test_a_loss_declaring_soft_targets_gives_the_hard_value_on_one_hot_targets(name):
    """Capability test driven by the registry: soft_targets=True means one-hot probabilities == class indices."""
    k, n = 4, 5
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    loss, call = _loss_call(name, k, n)
    loss.eval()  # no state updates between the two calls
    hard = call(z, y)
    soft = call(z, torch.nn.functional.one_hot(y, k).double())
    torch.testing.assert_close(soft, hard)
