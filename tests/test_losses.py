"""The first losses against their formulas, torch, gradcheck and reduction semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reglab.core import ConfigError, ShapeError
from reglab.losses import MSE, CrossEntropy, LabelSmoothingCrossEntropy


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (6,), generator=g)


def test_cross_entropy_matches_formula(batch):
    z, y = batch
    expected = -(z.log_softmax(1)[torch.arange(6), y])
    torch.testing.assert_close(CrossEntropy(reduction="none")(z, y), expected)
    torch.testing.assert_close(CrossEntropy()(z, y), expected.mean())
    torch.testing.assert_close(CrossEntropy(reduction="sum")(z, y), expected.sum())


def test_cross_entropy_class_weights_mean_over_examples(batch):
    z, y = batch
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = (w.double()[y] * -(z.log_softmax(1)[torch.arange(6), y])).mean()
    torch.testing.assert_close(CrossEntropy(weight=w)(z, y), expected)


def test_cross_entropy_soft_targets_equal_hard_on_one_hot(batch):
    z, y = batch
    torch.testing.assert_close(CrossEntropy()(z, F.one_hot(y, 4).double()), CrossEntropy()(z, y))


def test_label_smoothing_is_ce_against_smoothed_one_hot(batch):
    z, y = batch
    eps = 0.2
    q = (1 - eps) * F.one_hot(y, 4).double() + eps / 4
    torch.testing.assert_close(LabelSmoothingCrossEntropy(eps)(z, y), -(q * z.log_softmax(1)).sum(1).mean())
    torch.testing.assert_close(
        LabelSmoothingCrossEntropy(eps)(z, y), torch.nn.CrossEntropyLoss(label_smoothing=eps)(z, y)
    )
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.0)(z, y), CrossEntropy()(z, y))


@pytest.mark.parametrize("loss", [CrossEntropy(), LabelSmoothingCrossEntropy(0.1)], ids=["ce", "ls"])
def test_gradcheck(loss, batch):
    z, y = batch
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (z.clone().requires_grad_(),))


@pytest.mark.parametrize("loss", [CrossEntropy(), LabelSmoothingCrossEntropy(0.1)], ids=["ce", "ls"])
def test_extreme_logits_are_finite(loss):
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], requires_grad=True)
    y = torch.tensor([1, 1])
    value = loss(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_mse_half_squared_error():
    out, tgt = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(MSE(reduction="none")(out, tgt), 0.5 * (out - tgt).pow(2).sum(1))
    with pytest.raises(ShapeError, match="differ in shape"):
        MSE()(out, tgt[:, :1])


def test_errors_name_the_argument(batch):
    z, y = batch
    with pytest.raises(ConfigError, match="reduction"):
        CrossEntropy(reduction="avg")
    with pytest.raises(ConfigError, match="smoothing"):
        LabelSmoothingCrossEntropy(1.5)
    with pytest.raises(ShapeError, match="targets"):
        CrossEntropy()(z, y.float())
    with pytest.raises(ConfigError, match="3 entries but the logits have 4"):
        CrossEntropy(weight=[1.0, 1.0, 1.0])(z, y)


# --- dtype, index and soft-target edge cases ---------------------------------------------------


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
