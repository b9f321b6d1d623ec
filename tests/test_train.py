"""train_step and the Trainer: exact steps, context filling, divergence, evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from reglab import tasks
from reglab.core import Callback, ConfigError, MissingContextError, Penalty, ShapeError
from reglab.diagnostics import WeightNormProbe
from reglab.losses import MSE, CrossEntropy, Loss
from reglab.penalties import L2
from reglab.train import Trainer, train_step


def _batch(n=6, d=3, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


def test_sgd_step_is_the_hand_computed_step(tiny):
    x, y = _batch()
    before = [p.detach().clone() for p in tiny.parameters()]
    tiny.zero_grad()
    (CrossEntropy()(tiny(x), y) + L2(0.1)(_ctx(tiny, x, y))).backward()
    expected = [b - 0.5 * p.grad for b, p in zip(before, tiny.parameters())]
    opt = torch.optim.SGD(tiny.parameters(), lr=0.5)
    record = train_step(tiny, (x, y), CrossEntropy(), opt, L2(0.1))
    for p, e in zip(tiny.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
    assert set(record) == {"loss", "objective", "penalty/l2", "grad_norm"}
    assert record["objective"] == pytest.approx(record["loss"] + record["penalty/l2"])


def _ctx(model, x, y):
    from reglab.core import StepContext

    return StepContext(model=model, inputs=x, targets=y)


class _SpyPenalty(Penalty):
    needs = frozenset({"outputs", "features"})
    seen: dict = {}

    def compute(self, ctx):
        type(self).seen = {f: getattr(ctx, f) for f in ("inputs", "outputs", "features", "indices", "loss_fn")}
        return ctx.features.pow(2).mean()


def test_context_has_exactly_the_needed_fields_from_the_same_pass(tiny):
    x, y = _batch()
    train_step(
        tiny, (x, y, torch.arange(6)), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.0), _SpyPenalty(1.0)
    )
    seen = _SpyPenalty.seen
    assert seen["indices"] is None and seen["loss_fn"] is None
    torch.testing.assert_close(seen["features"], tiny.features(x))
    torch.testing.assert_close(seen["outputs"], tiny.head(seen["features"]))


def test_missing_features_raise_naming_penalty_and_field():
    model = torch.nn.Linear(3, 3).double()
    x, y = _batch()
    with pytest.raises(MissingContextError, match=r"_spy_penalty needs 'features'.*Linear"):
        train_step(model, (x, y), CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), _SpyPenalty(1.0))


class _IndexedLoss(Loss):
    needs = frozenset({"indices"})
    got = None

    def forward(self, logits, targets, indices=None):
        type(self).got = indices
        return CrossEntropy()(logits, targets)


def test_loss_with_indices_gets_them_and_errors_without(tiny):
    x, y = _batch()
    opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
    train_step(tiny, (x, y, torch.arange(6) + 10), _IndexedLoss(), opt)
    assert _IndexedLoss.got.tolist() == list(range(10, 16))
    with pytest.raises(MissingContextError, match="needs 'indices'"):
        train_step(tiny, (x, y), _IndexedLoss(), opt)


class _ClosureSGD(torch.optim.SGD):
    """SGD that calls the closure twice, as a SAM-like optimizer does."""

    requires_closure = True
    calls = 0

    def step(self, closure):
        closure()
        type(self).calls += 1
        closure()
        type(self).calls += 1
        return super().step()


def test_closure_and_plain_optimizers_take_the_same_step():
    torch.manual_seed(0)
    a = tasks.MODELS.get("mlp", (3,), 3, width=8).double()
    b = tasks.MODELS.get("mlp", (3,), 3, width=8).double()
    b.load_state_dict(a.state_dict())
    x, y = _batch()
    ra = train_step(a, (x, y), CrossEntropy(), torch.optim.SGD(a.parameters(), lr=0.1))
    rb = train_step(b, (x, y), CrossEntropy(), _ClosureSGD(b.parameters(), lr=0.1))
    assert _ClosureSGD.calls == 2
    assert ra == rb
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_augment_is_applied_before_the_forward_pass(tiny):
    x, y = _batch()
    calls = []

    def aug(inputs, targets):
        calls.append(inputs.shape)
        return inputs * 0, targets

    train_step(tiny, (x, y), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.0), augment=aug)
    assert calls == [x.shape]


def test_nonfinite_objective_skips_the_step(tiny):
    x, y = _batch()
    before = [p.detach().clone() for p in tiny.parameters()]
    record = train_step(tiny, (x * float("nan"), y), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.1))
    assert math.isnan(record["loss"])
    for p, b in zip(tiny.parameters(), before):
        torch.testing.assert_close(p.detach(), b)


# -- Trainer ------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_reaches_90_percent_on_digits():
    torch.manual_seed(0)
    task = tasks.get("digits")
    model = task.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    result = Trainer(task, model, CrossEntropy(), opt, steps=300, batch_size=64, eval_every=100, seed=0).fit()
    assert result.status == "done" and result.steps == 300
    assert result.final["test/accuracy"] >= 0.90, result.final


def test_huge_learning_rate_is_recorded_as_diverged():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=200, n_test=100)
    model = task.make_model(width=32)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    result = Trainer(task, model, CrossEntropy(), opt, steps=200, batch_size=50, eval_every=10).fit()
    assert result.status == "diverged"
    assert result.diverged_at is not None and 1 <= result.diverged_at < 200
    assert result.steps == result.diverged_at
    logged = [r for r in result.history if r[0] == result.diverged_at and r[2] == "batch_loss"]
    assert logged and not math.isfinite(logged[0][3])


def test_trainer_is_deterministic_under_a_seed():
    def run():
        torch.manual_seed(0)
        task = tasks.get("two_moons", n=200, n_test=100)
        model = task.make_model(width=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return Trainer(task, model, CrossEntropy(), opt, steps=30, batch_size=32, eval_every=10, seed=5).fit()

    assert run().history == run().history


def test_noisy_task_reports_clean_and_flipped_accuracy():
    torch.manual_seed(0)
    task = tasks.with_label_noise(tasks.get("two_moons", n=200, n_test=100), 0.3, seed=0)
    model = task.make_model(width=16)
    trainer = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=0)
    metrics = trainer.evaluate()
    x, y, _ = tasks.as_tensors(task.train)
    with torch.no_grad():
        pred = model(x).argmax(1)
    flipped = task.flipped
    assert metrics["train/accuracy_clean"] == pytest.approx((pred[~flipped] == y[~flipped]).double().mean().item())
    assert metrics["train/accuracy_flipped"] == pytest.approx((pred[flipped] == y[flipped]).double().mean().item())
    true = task.clean_targets[flipped]
    assert metrics["train/accuracy_flipped_true"] == pytest.approx((pred[flipped] == true).double().mean().item())


def test_regression_task_evaluates_half_squared_error():
    torch.manual_seed(0)
    task = tasks.get("teacher_student", d=5, n=50, n_test=40)
    model = task.make_model(width=8)
    from reglab.losses import MSE

    metrics = Trainer(task, model, MSE(), torch.optim.SGD(model.parameters(), lr=0.01), steps=0).evaluate()
    x, y, _ = tasks.as_tensors(task.test)
    with torch.no_grad():
        expected = MSE()(model(x), y).item()
    assert metrics["test/loss"] == pytest.approx(expected)
    assert "test/accuracy" not in metrics


def test_evaluate_restores_train_mode_and_does_not_change_weights():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8, dropout=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=0)
    model.train()
    trainer.evaluate()
    assert model.training
    model.eval()
    trainer.evaluate()
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


class _Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.step))

    def on_step_end(self, trainer, step, info):
        self.events.append(("step", step))
        if step == 7:
            trainer.stop("enough")

    def on_eval(self, trainer, step, metrics):
        self.events.append(("eval", step))

    def on_train_end(self, trainer, result):
        self.events.append(("end", result.status))


def test_callbacks_order_and_stop():
    torch.manual_seed(0)
    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8)
    rec = _Recorder()
    rows = []
    result = Trainer(
        task,
        model,
        CrossEntropy(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        steps=20,
        batch_size=10,
        eval_every=5,
        callbacks=[rec],
        sink=rows.extend,
    ).fit()
    assert result.status == "stopped" and result.steps == 7 and result.reason == "enough"
    assert rec.events[:2] == [("begin", 0), ("eval", 0)]
    assert ("eval", 5) in rec.events and ("eval", 7) in rec.events
    assert rec.events[-1] == ("end", "stopped")
    assert sorted(rows) == sorted(result.history)  # every row reached the sink exactly once


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": -1}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "half"}, "batch_size"),
        ({"eval_every": 0}, "eval_every"),
    ],
)
def test_trainer_argument_errors(kwargs, field):

    task = tasks.get("two_moons", n=100, n_test=50)
    model = task.make_model(width=8)
    with pytest.raises(ConfigError, match=field):
        Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


# --- trainer edge cases ------------------------------------------------------------------------


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


class _InputGradientSpy(Penalty):
    """||d sum(outputs) / d x||^2 from the step's own pass, recording what the context held."""

    needs = frozenset({"outputs", "differentiable_inputs"})
    seen: dict = {}

    def compute(self, ctx):
        type(self).seen = {"inputs": ctx.inputs, "differentiable_inputs": ctx.differentiable_inputs}
        (grad,) = torch.autograd.grad(ctx.outputs.sum(), ctx.differentiable_inputs, create_graph=True)
        return grad.pow(2).sum()


def test_differentiable_inputs_are_the_inputs_of_the_forward_pass(tiny):
    """A copy of x that requires grad, the one the outputs came from: its input gradient is the dense one
    (sum_i ||1^T J(x_i)||^2 by jacrev, float64: equal to ~1e-15 relative, rtol=1e-12)."""
    x, y = _batch()
    record = train_step(
        tiny, (x, y), CrossEntropy(), torch.optim.SGD(tiny.parameters(), lr=0.0), _InputGradientSpy(1.0)
    )
    seen = _InputGradientSpy.seen
    assert seen["inputs"] is x and not x.requires_grad
    leaf = seen["differentiable_inputs"]
    assert leaf.requires_grad and leaf.is_leaf and torch.equal(leaf, x)
    expected = sum(torch.func.jacrev(tiny)(xi).sum(0).pow(2).sum() for xi in x).item()
    assert record["penalty/_input_gradient_spy"] == pytest.approx(expected, rel=1e-12)


def test_token_inputs_get_no_differentiable_inputs():
    """Integer ids cannot require grad: the field stays None and the penalty reports the inputs itself."""
    from reglab.penalties import JacobianNorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(3, 4), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    ids, y = torch.randint(0, 3, (5, 2)), torch.randint(0, 3, (5,))
    with pytest.raises(ConfigError, match="jacobian_norm perturbs or differentiates.*floating-point"):
        train_step(model, (ids, y), CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), JacobianNorm(1.0))
