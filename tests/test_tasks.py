"""Tests of reglab.tasks: the task contract, the builders, the transforms and their errors.

Generic tests are parametrized over ``REGISTRY`` and ``TRANSFORMS``, so a new
task or transform is tested without new code (a new transform needs one entry
in ``TRANSFORM_EXAMPLES``; a test fails until it has one).
"""

from __future__ import annotations

import json
import random
import socket

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reglab import tasks
from reglab.core.errors import ConfigError, ShapeError, UnknownNameError
from reglab.tasks import MODELS, REGISTRY, TRANSFORMS, IndexedDataset, Task, as_tensors

# Smaller sizes for the slow-to-generate tasks, so every test stays well under a second.
# Tasks not listed are built with their defaults.
SMALL: dict[str, dict] = {"mnist1d": {"n_train": 300, "n_test": 100}, "modular_arithmetic": {"p": 13}}

# Options for each registered transform (applied to a classification task).
TRANSFORM_EXAMPLES: dict[str, dict] = {
    "label_noise": {"rate": 0.3},
    "subset": {"n": 50},
    "long_tail": {"imbalance": 5.0},
}

#: The offline, in-memory tasks (torchvision and hf_dataset read external data: test_vision_hf.py).
TASK_NAMES = [n for n in REGISTRY.names() if n not in ("torchvision", "hf_dataset")]


def options(name: str, **changes) -> dict:
    return {**SMALL.get(name, {}), **changes}


def build(name: str, **changes) -> Task:
    """Build through ``tasks.get`` (cached)."""
    return tasks.get(name, **options(name, **changes))


def build_uncached(name: str, **changes) -> Task:
    """Build with the builder itself, bypassing the cache."""
    factory = REGISTRY.entry(name).factory
    return getattr(factory, "__wrapped__", factory)(**options(name, **changes))


def classification_task_names() -> list[str]:
    return [n for n in TASK_NAMES if build(n).is_classification]


def regression_task_names() -> list[str]:
    return [n for n in TASK_NAMES if not build(n).is_classification]


def toy_task(n: int = 60, num_classes: int = 3) -> Task:
    """A classification task whose inputs are their own indices (x[i] = i), to trace examples through transforms."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(n) % num_classes
    test = IndexedDataset(torch.zeros(6, 1), torch.arange(6) % num_classes)
    return Task("toy", IndexedDataset(x, y), test, num_classes, (1,), "mlp", ("mlp",), num_classes, info={"seed": 0})


def snapshot(task: Task) -> dict:
    x, y, _ = as_tensors(task.train)
    return {
        "x": x.clone(),
        "y": y.clone(),
        "train": task.train,
        "test": task.test,
        "flipped": None if task.flipped is None else task.flipped.clone(),
        "clean": None if task.clean_targets is None else task.clean_targets.clone(),
        "info": json.dumps(task.info, sort_keys=True),
    }


def assert_unchanged(task: Task, before: dict) -> None:
    x, y, _ = as_tensors(task.train)
    assert task.train is before["train"] and task.test is before["test"]
    assert torch.equal(x, before["x"]) and torch.equal(y, before["y"])
    for key, value in (("flipped", task.flipped), ("clean", task.clean_targets)):
        assert (value is None) == (before[key] is None)
        if value is not None:
            assert torch.equal(value, before[key])
    assert json.dumps(task.info, sort_keys=True) == before["info"]


# --- registries ---------------------------------------------------------------------------------


def test_registries_hold_the_documented_members():
    assert {"modular_arithmetic", "two_moons", "teacher_student", "sparse_regression", "mnist1d", "digits"} <= set(
        REGISTRY.names()
    )
    assert {"label_noise", "subset", "long_tail"} <= set(TRANSFORMS.names())
    assert {"mlp", "cnn1d", "cnn2d", "embedding_mlp", "transformer", "diagonal_linear"} <= set(MODELS.names())
    for registry in (REGISTRY, TRANSFORMS, MODELS):
        assert all(registry.describe().values()), f"{registry} has a member without a description"


def test_get_unknown_task_suggests_names():
    with pytest.raises(UnknownNameError, match="mnist1d"):
        tasks.get("mnist_1d")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_get_rejects_unknown_option(name):
    with pytest.raises(ConfigError, match="bogus"):
        tasks.get(name, bogus=1)


# --- the task contract, for every registered task ------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_contract(name):
    task = build(name)
    assert isinstance(task, Task) and task.name == name
    assert task.flipped is None and task.clean_targets is None
    assert task.default_model in task.models
    assert all(m in MODELS for m in task.models)
    json.dumps(task.info)  # info is plain data
    for split in (task.train, task.test):
        x, y, idx = as_tensors(split)
        n = len(split)
        assert n > 0 and x.shape == (n, *task.input_shape)
        assert torch.equal(idx, torch.arange(n))
        if task.is_classification:
            assert task.output_dim == task.num_classes
            assert y.dtype == torch.int64 and y.shape == (n,)
            assert 0 <= int(y.min()) and int(y.max()) < task.num_classes
        else:
            assert y.dtype.is_floating_point and y.shape == (n, task.output_dim)
        if x.dtype.is_floating_point:
            assert x.dtype == torch.float32


@pytest.mark.parametrize("name", TASK_NAMES)
def test_items_are_x_y_index_and_collate_to_int64_indices(name):
    task = build(name)
    x, y, i = task.train[3]
    assert i == 3 and type(i) is int
    assert x.shape == task.input_shape
    xb, yb, ib = next(iter(DataLoader(task.train, batch_size=5)))
    assert ib.dtype == torch.int64 and torch.equal(ib, torch.arange(5))
    assert xb.shape == (5, *task.input_shape) and yb.shape[0] == 5


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_data_different_seed_different_data(name):
    seed = build(name).info["seed"]
    a, b = build_uncached(name, seed=seed), build_uncached(name, seed=seed)
    for split in ("train", "test"):
        xa, ya, _ = as_tensors(getattr(a, split))
        xb, yb, _ = as_tensors(getattr(b, split))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = build_uncached(name, seed=seed + 1)
    xa, ya, _ = as_tensors(a.train)
    xc, yc, _ = as_tensors(c.train)
    assert not (torch.equal(xa, xc) and torch.equal(ya, yc))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_building_leaves_global_rngs_alone(name):
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    build_uncached(name, seed=7)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_get_returns_independent_copies_of_the_cached_task(name):
    first = build(name)
    first.train.x.add_(1)
    first.info["scribble"] = True
    first.num_classes = 12345
    second = build(name)
    fresh = build_uncached(name)
    assert torch.equal(second.train.x, fresh.train.x)
    assert "scribble" not in second.info and second.num_classes == fresh.num_classes


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("bad", [-1, 1.5, True, 2**32])
def test_bad_seed_raises_config_error(name, bad):
    with pytest.raises(ConfigError, match="seed"):
        tasks.get(name, **options(name, seed=bad))


@pytest.mark.parametrize(
    "name, changes, match",
    [
        ("modular_arithmetic", {"p": 1}, "p must be an int >= 2"),
        ("modular_arithmetic", {"p": 15, "op": "div"}, "p must be prime"),
        ("modular_arithmetic", {"op": "pow"}, "op must be one of"),
        ("modular_arithmetic", {"train_fraction": 1.0}, r"train_fraction must be in \(0, 1\)"),
        ("modular_arithmetic", {"train_fraction": 0}, "train_fraction"),
        ("two_moons", {"n": 1}, "n must be an int >= 2"),
        ("two_moons", {"noise": -0.1}, "noise must be >= 0"),
        ("teacher_student", {"d": 0}, "d must be an int >= 1"),
        ("teacher_student", {"width": 0}, "width must be an int >= 1"),
        ("teacher_student", {"noise": float("nan")}, "noise must be a finite number"),
        ("sparse_regression", {"k": 101}, r"k must be an int in \[1, 100\]"),
        ("sparse_regression", {"n": 0}, "n must be an int >= 1"),
        ("mnist1d", {"n_train": 0}, "n_train must be an int >= 1"),
        ("mnist1d", {"n_test": 2.5}, "n_test must be an int"),
        ("digits", {"test_fraction": 1.0}, "test_fraction must be in"),
        ("digits", {"test_fraction": 0.001}, "test_fraction must leave"),
    ],
)
def test_builder_argument_errors_name_the_argument(name, changes, match):
    with pytest.raises(ConfigError, match=match):
        tasks.get(name, **options(name, **changes))


# --- individual builders -------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_modular_arithmetic_labels_and_split(op):
    p = 11
    task = tasks.get("modular_arithmetic", p=p, op=op, train_fraction=0.4)
    x = torch.cat([task.train.x, task.test.x])
    y = torch.cat([task.train.y, task.test.y])
    a, b = x[:, 0], x[:, 1]
    n = p * (p - 1) if op == "div" else p * p
    assert len(x) == n and len(task.train) == round(0.4 * n)
    assert len({tuple(r) for r in x.tolist()}) == n  # every pair once: train and test are disjoint
    expected = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p, "div": None}[op]
    if op == "div":
        assert bool((b != 0).all()) and torch.equal((y * b) % p, a)
    else:
        assert torch.equal(y, expected)
    assert task.num_classes == p and task.info["vocab_size"] == p
    assert task.make_model("transformer").vocab_size == p


def test_two_moons_classes_are_balanced_halves():
    task = tasks.get("two_moons", n=200, n_test=100)
    assert torch.bincount(task.train.y).tolist() == [100, 100]
    assert torch.bincount(task.test.y).tolist() == [50, 50]


@pytest.mark.parametrize("name", ["teacher_student", "sparse_regression"])
def test_regression_noise_is_on_training_targets_only(name):
    clean, noisy = tasks.get(name), tasks.get(name, noise=0.5)
    assert torch.equal(clean.train.x, noisy.train.x)
    assert torch.equal(clean.test.x, noisy.test.x) and torch.equal(clean.test.y, noisy.test.y)
    residual = noisy.train.y - clean.train.y
    assert 0.3 < float(residual.std()) < 0.7


def test_sparse_regression_targets_are_linear_in_the_recorded_beta():
    task = tasks.get("sparse_regression", d=30, k=4, n=20)
    beta = torch.tensor(task.info["beta"]).unsqueeze(1)
    assert beta.shape == (30, 1) and int((beta != 0).sum()) == 4
    assert set(beta[beta != 0].tolist()) <= {-1.0, 1.0}
    assert torch.nonzero(beta[:, 0]).flatten().tolist() == task.info["support"]
    torch.testing.assert_close(task.train.y, task.train.x @ beta, rtol=0, atol=1e-5)
    torch.testing.assert_close(task.test.y, task.test.x @ beta, rtol=0, atol=1e-5)


def test_teacher_student_targets_have_unit_scale():
    task = tasks.get("teacher_student")
    assert 0.1 < float(task.train.y.std()) < 3.0


def test_mnist1d_exact_sizes_and_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    task = build_uncached("mnist1d", n_train=123, n_test=45, seed=3)
    assert len(task.train) == 123 and len(task.test) == 45
    assert task.train.x.shape == (123, 40) and set(task.train.y.unique().tolist()) <= set(range(10))


@pytest.mark.slow
def test_mnist1d_defaults_are_the_published_split():
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state(), random.getstate()
    reference = make_dataset(get_dataset_args())
    np.random.set_state(state[0])
    random.setstate(state[1])
    task = tasks.get("mnist1d")
    assert len(task.train) == 4000 and len(task.test) == 1000
    torch.testing.assert_close(task.train.x, torch.tensor(reference["x"], dtype=torch.float32))
    assert torch.equal(task.test.y, torch.tensor(reference["y_test"]))


def test_digits_scaling_shape_and_stratified_split():
    task = tasks.get("digits")
    x = torch.cat([task.train.x, task.test.x])
    assert x.shape == (1797, 1, 8, 8) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert len(task.test) == 450
    share = torch.bincount(task.test.y, minlength=10).float() / torch.bincount(
        torch.cat([task.train.y, task.test.y]), minlength=10
    )
    assert float(share.min()) > 0.2 and float(share.max()) < 0.3


# --- datasets and the Task dataclass -------------------------------------------------------------


def test_indexed_dataset_validates_and_indexes():
    with pytest.raises(ShapeError, match="first dimension"):
        IndexedDataset(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ShapeError, match="tensors"):
        IndexedDataset([1, 2], torch.zeros(2))
    data = IndexedDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    assert len(data) == 3
    x, y, i = data[-1]
    assert i == 2 and torch.equal(x, torch.tensor([4.0, 5.0])) and int(y) == 0


def test_as_tensors_stacks_generic_datasets():
    class Triples(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 2, i

    x, y, idx = as_tensors(Triples())
    assert x.shape == (4, 2) and torch.equal(y, torch.tensor([0, 1, 0, 1])) and torch.equal(idx, torch.arange(4))
    subset = torch.utils.data.Subset(IndexedDataset(torch.arange(5.0), torch.arange(5)), [4, 1])
    x, y, idx = as_tensors(subset)
    assert torch.equal(idx, torch.tensor([4, 1])) and torch.equal(x, torch.tensor([4.0, 1.0]))

    class Pairs(Triples):
        def __getitem__(self, i):
            return torch.zeros(2), 0

    with pytest.raises(ShapeError, match=r"\(x, y, index\)"):
        as_tensors(Pairs())


def test_task_make_model_and_replace():
    task = toy_task()
    torch.manual_seed(0)
    model = task.make_model(width=8)
    assert model(torch.zeros(2, 1)).shape == (2, 3) and model.feature_dim == 8
    assert task.is_classification and not task.replace(num_classes=None).is_classification
    assert task.replace(name="other").name == "other" and task.name == "toy"
    modular = tasks.get("modular_arithmetic", p=13)
    assert modular.make_model().vocab_size == 13  # from info["model_kwargs"]
    assert modular.make_model("transformer", vocab_size=20).vocab_size == 20
    with pytest.raises(ConfigError, match="bogus"):
        task.make_model(bogus=1)


# --- transforms: generic ------------------------------------------------------------------------


def test_every_transform_has_an_example():
    missing = set(TRANSFORMS.names()) - set(TRANSFORM_EXAMPLES)
    assert not missing, f"add options for {sorted(missing)} to TRANSFORM_EXAMPLES"


@pytest.mark.parametrize("transform", TRANSFORMS.names())
@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_transform_contract(transform, name):
    task = build(name)
    before = snapshot(task)
    out = TRANSFORMS.get(transform, task, **TRANSFORM_EXAMPLES[transform])
    assert_unchanged(task, before)
    assert isinstance(out, Task) and out is not task and out.train is not task.train
    assert out.test is task.test
    assert out.info["transforms"][-1]["name"] == transform
    json.dumps(out.info)
    x, y, idx = as_tensors(out.train)
    assert torch.equal(idx, torch.arange(len(out.train))) and x.shape[1:] == task.input_shape
    if out.flipped is not None:
        assert out.flipped.shape == y.shape and out.flipped.dtype == torch.bool
        assert torch.equal(out.flipped, y != out.clean_targets)
    again = TRANSFORMS.get(transform, task, **TRANSFORM_EXAMPLES[transform])
    assert torch.equal(again.train.x, out.train.x) and torch.equal(again.train.y, out.train.y)


@pytest.mark.parametrize("transform", TRANSFORMS.names())
def test_transform_rejects_bad_seed(transform):
    with pytest.raises(ConfigError, match="seed"):
        TRANSFORMS.get(transform, toy_task(), seed=-1, **TRANSFORM_EXAMPLES[transform])


# --- label noise ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", classification_task_names())
@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5])
def test_label_noise_flips_exactly_round_rate_n(name, kind, rate):
    task = build(name)
    noisy = tasks.with_label_noise(task, rate=rate, kind=kind, seed=1)
    n = len(task.train)
    assert int(noisy.flipped.sum()) == round(rate * n)
    assert torch.equal(noisy.clean_targets, task.train.y)
    assert torch.equal(noisy.flipped, noisy.train.y != noisy.clean_targets)
    assert torch.equal(noisy.train.x, task.train.x)
    assert noisy.info["transforms"][-1]["n_flipped"] == round(rate * n)
    if kind == "pairflip":
        f = noisy.flipped
        assert torch.equal(noisy.train.y[f], (noisy.clean_targets[f] + 1) % task.num_classes)


def test_symmetric_noise_draws_every_other_class():
    task = tasks.get("digits")
    noisy = tasks.with_label_noise(task, rate=0.8, seed=0)
    f = noisy.flipped
    offsets = (noisy.train.y[f] - noisy.clean_targets[f]) % 10
    counts = torch.bincount(offsets, minlength=10)
    assert counts[0] == 0  # never keeps the label
    expected = int(f.sum()) / 9
    assert bool((counts[1:] > 0.7 * expected).all()) and bool((counts[1:] < 1.3 * expected).all())


def test_label_noise_is_reproducible_by_seed():
    task = tasks.get("digits")
    a = tasks.with_label_noise(task, rate=0.3, seed=5)
    b = tasks.with_label_noise(task, rate=0.3, seed=5)
    c = tasks.with_label_noise(task, rate=0.3, seed=6)
    assert torch.equal(a.flipped, b.flipped) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.flipped, c.flipped)


def test_label_noise_composes_relative_to_the_clean_labels():
    task = tasks.get("digits")
    once = tasks.with_label_noise(task, rate=0.2, kind="pairflip", seed=0)
    twice = tasks.with_label_noise(once, rate=0.2, kind="pairflip", seed=1)
    assert torch.equal(twice.clean_targets, task.train.y)
    assert torch.equal(twice.flipped, twice.train.y != task.train.y)
    assert int(twice.flipped.sum()) >= int(once.flipped.sum())  # pairflip twice never restores a label (K > 2)
    assert [t["name"] for t in twice.info["transforms"]] == ["label_noise", "label_noise"]
    assert once.info["transforms"] == [twice.info["transforms"][0]]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"rate": 1.0}, r"rate must be in \[0, 1\), got 1"),
        ({"rate": -0.1}, "rate must be in"),
        ({"rate": "0.2"}, "rate must be a finite number"),
        ({"rate": 0.2, "kind": "asymmetric"}, "kind must be one of"),
    ],
)
def test_label_noise_argument_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        tasks.with_label_noise(toy_task(), **changes)


@pytest.mark.parametrize("transform", ["label_noise", "long_tail"])
@pytest.mark.parametrize("name", regression_task_names())
def test_class_transforms_reject_regression_tasks(transform, name):
    with pytest.raises(ConfigError, match="classification task"):
        TRANSFORMS.get(transform, build(name), **TRANSFORM_EXAMPLES[transform])


# --- subset --------------------------------------------------------------------------------------


def test_subset_reindexes_and_keeps_noise_records_consistent():
    noisy = tasks.with_label_noise(toy_task(), rate=0.5, seed=0)
    sub = tasks.subset(noisy, n=20, seed=3)
    assert len(sub.train) == 20 and sub.train[19][2] == 19
    original = sub.train.x[:, 0].long()  # x[i] = original index
    assert torch.equal(original, original.sort().values) and len(original.unique()) == 20
    assert torch.equal(sub.train.y, noisy.train.y[original])
    assert torch.equal(sub.flipped, noisy.flipped[original])
    assert torch.equal(sub.clean_targets, noisy.clean_targets[original])
    assert torch.equal(tasks.subset(noisy, n=20, seed=3).train.x, sub.train.x)
    assert not torch.equal(tasks.subset(noisy, n=20, seed=4).train.x, sub.train.x)
    assert len(tasks.subset(noisy, n=60).train) == 60


@pytest.mark.parametrize("n, match", [(61, r"n must be <= the number of training examples \(60\), got 61"), (0, "n")])
def test_subset_argument_errors(n, match):
    with pytest.raises(ConfigError, match=match):
        tasks.subset(toy_task(), n=n)


# --- long tail -----------------------------------------------------------------------------------


@pytest.mark.parametrize("imbalance", [1.0, 10.0, 100.0])
def test_long_tail_counts_follow_the_exponential_profile(imbalance):
    task = tasks.get("digits")
    n_max = int(torch.bincount(task.train.y).min())
    out = tasks.long_tail(task, imbalance=imbalance, seed=0)
    expected = [max(1, int(n_max * imbalance ** (-c / 9) + 1e-9)) for c in range(10)]
    assert torch.bincount(out.train.y, minlength=10).tolist() == expected
    assert out.info["class_counts"] == expected
    assert torch.equal(out.test.y, task.test.y)
    assert expected[0] == n_max


def test_long_tail_after_label_noise_uses_clean_classes():
    noisy = tasks.with_label_noise(tasks.get("digits"), rate=0.4, seed=0)
    out = tasks.long_tail(noisy, imbalance=10.0)
    assert torch.bincount(out.clean_targets, minlength=10).tolist() == out.info["class_counts"]
    assert torch.equal(out.flipped, out.train.y != out.clean_targets)
    assert "class_counts" not in tasks.subset(out, n=50).info  # stale counts are dropped


@pytest.mark.parametrize("imbalance, match", [(0.5, r"imbalance must be >= 1, got 0.5"), ("10", "imbalance")])
def test_long_tail_argument_errors(imbalance, match):
    with pytest.raises(ConfigError, match=match):
        tasks.long_tail(toy_task(), imbalance=imbalance)


def test_long_tail_needs_every_class():
    task = toy_task(num_classes=3)
    missing = task.replace(num_classes=4, output_dim=4)
    with pytest.raises(ConfigError, match=r"classes \[3\] have none"):
        tasks.long_tail(missing, imbalance=2.0)
