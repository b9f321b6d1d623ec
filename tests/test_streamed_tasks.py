"""Tasks over any map-style dataset: streaming, item checks, transforms, and the Trainer's DataLoader path."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from reglab import tasks
from reglab.core import ConfigError, ShapeError
from reglab.losses import CrossEntropy
from reglab.tasks import IndexedDataset, StreamedDataset, from_datasets
from reglab.train import Trainer


class Pairs(Dataset):
    """(x, y) pairs from tensors, counting every read; optional ``.targets``/``.classes`` like torchvision."""

    def __init__(self, x, y, *, expose_targets=True, classes=None):
        self.x, self.y, self.reads = x, y, 0
        if expose_targets:
            self.targets = y.tolist()
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], int(self.y[i])


def _data(n=200, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


def _task(n=200, k=3, **kwargs):
    x, y = _data(n, k=k)
    xt, yt = _data(50, k=k, seed=1)
    return from_datasets(Pairs(x, y), Pairs(xt, yt), **kwargs), (x, y)


def test_from_datasets_wraps_items_and_infers_shape_and_classes():
    task, (x, y) = _task()
    assert isinstance(task.train, StreamedDataset)
    assert task.input_shape == (6,) and task.num_classes == 3 and task.output_dim == 3
    xi, yi, i = task.train[7]
    assert torch.equal(xi, x[7]) and yi.dtype == torch.long and int(yi) == int(y[7]) and i == 7
    assert task.train[-1][2] == 199
    with pytest.raises(IndexError):
        task.train[200]
    # reading the task built it from one item only
    assert task.train.base.reads == 1 + 2


def test_num_classes_from_classes_attribute_and_regression_from_float_labels():
    x, y = _data(20)
    task = from_datasets(Pairs(x, y, expose_targets=False, classes=list("abcde")), Pairs(x, y, expose_targets=False))
    assert task.num_classes == 5

    class Regress(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((4,), float(i)), torch.tensor([float(i), 1.0])

    reg = from_datasets(Regress(), Regress())
    assert reg.num_classes is None and reg.output_dim == 2
    assert reg.train[3][1].dtype == torch.float32 and reg.train[3][1].tolist() == [3.0, 1.0]


def test_num_classes_that_cannot_be_inferred_is_a_config_error():
    x, y = _data(20)
    with pytest.raises(ConfigError, match="num_classes: cannot be inferred"):
        from_datasets(Pairs(x, y, expose_targets=False), Pairs(x, y, expose_targets=False))
    task = from_datasets(Pairs(x, y, expose_targets=False), Pairs(x, y, expose_targets=False), num_classes=3)
    assert task.num_classes == 3


def test_trainer_streams_only_the_batches_it_uses():
    x, y = _data(1000)
    train, train_eval = Pairs(x, y), Pairs(x, y)
    test = Pairs(*_data(100, seed=1))
    task = from_datasets(train, test, train_eval=train_eval)
    train.reads = 0
    torch.manual_seed(0)
    model = task.make_model("mlp", width=16, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = Trainer(task, model, CrossEntropy(), opt, steps=3, batch_size=8, eval_every=100).fit()
    assert result.status == "done" and result.steps == 3
    assert train.reads == 3 * 8  # the training set is read only for the three batches used
    assert train_eval.reads == 2 * 1000  # evaluation at step 0 and at the end reads the un-augmented view


def test_streamed_and_in_memory_training_agree():
    """The same data, batch order and model give the same run through the DataLoader path as in memory."""
    x, y = _data(96)
    xt, yt = _data(40, seed=1)
    streamed = from_datasets(Pairs(x, y), Pairs(xt, yt))
    memory = streamed.replace(train=IndexedDataset(x, y), test=IndexedDataset(xt, yt))
    runs = []
    for task in (streamed, memory):
        torch.manual_seed(3)
        model = task.make_model("mlp", width=16, depth=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(Trainer(task, model, CrossEntropy(), opt, steps=20, batch_size=16, eval_every=5, seed=4).fit())
    # RandomSampler and the in-memory path both draw randperm(n) from a generator seeded with the run's seed
    assert runs[0].history == runs[1].history


@pytest.mark.slow
def test_streamed_runs_repeat_exactly_with_worker_processes():
    x, y = _data(256)
    task = from_datasets(Pairs(x, y), Pairs(*_data(64, seed=1)))
    histories = []
    for workers in (2, 2, 0):
        torch.manual_seed(0)
        model = task.make_model("mlp", width=16, depth=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(task, model, CrossEntropy(), opt, steps=12, batch_size=32, eval_every=6, num_workers=workers)
        histories.append(trainer.fit().history)
    assert histories[0] == histories[1]
    assert histories[0] == histories[2]  # no random transform: the worker count does not change the numbers


def test_examples_read_a_seeded_subset_only():
    task, (x, y) = _task(n=300)
    model = task.make_model("mlp", width=8, depth=1)
    trainer = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), steps=0)
    task.train.base.reads = 0
    xs, ys = trainer.examples("train", 20, seed=5)
    assert task.train.base.reads == 20
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(5))[:20]
    assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])
    xo, _ = trainer.examples("train", 20, seed=5, in_order=True)
    assert torch.equal(xo, x[idx.sort().values])
    xa, ya = trainer.examples("test")
    assert len(xa) == 50
    with pytest.raises(ConfigError, match="split"):
        trainer.examples("valid")


def test_transforms_keep_a_streamed_task_streamed_and_read_no_inputs():
    task, (x, y) = _task(n=300)
    task.train.base.reads = 0
    noisy = tasks.with_label_noise(task, 0.2, seed=1)
    sub = tasks.subset(noisy, 100, seed=2)
    tail = tasks.long_tail(task, imbalance=5.0, seed=3)
    assert task.train.base.reads == 0  # labels came from .targets
    for t in (noisy, sub, tail):
        assert isinstance(t.train, StreamedDataset)
    assert int(noisy.flipped.sum()) == 60
    # the view's labels are the noisy ones, the inputs the dataset's
    i = int(noisy.flipped.nonzero()[0, 0])
    xi, yi, _ = noisy.train[i]
    assert torch.equal(xi, x[i]) and int(yi) != int(y[i]) and int(yi) == int(noisy.train.all_targets()[i])
    # a subset of the noisy task keeps the noisy labels and re-indexes from 0
    keep = torch.randperm(300, generator=torch.Generator().manual_seed(2))[:100].sort().values
    assert torch.equal(sub.train.all_targets(), noisy.train.all_targets()[keep])
    assert sub.train[0][2] == 0 and torch.equal(sub.train[0][0], x[keep[0]])
    assert torch.equal(sub.clean_targets, y[keep])


def test_bad_items_are_shape_errors_naming_the_item():
    x, y = _data(30)

    class NotPairs(Pairs):
        def __getitem__(self, i):
            return self.x[i], int(self.y[i]), "extra"

    with pytest.raises(ShapeError, match=r"train\[0\]: items must be \(x, y\) pairs, got a 3-tuple"):
        from_datasets(NotPairs(x, y), Pairs(x, y))

    class Ragged(Pairs):
        def __getitem__(self, i):
            return (self.x[i] if i != 4 else self.x[i][:3]), int(self.y[i])

    task = from_datasets(Ragged(x, y), Pairs(x, y))
    with pytest.raises(ShapeError, match=r"train\[4\]: input of shape \(3,\), but the task's input_shape is \(6,\)"):
        task.train[4]

    bad = y.clone()
    bad[9] = 7
    with pytest.raises(ShapeError, match=r"train\[9\]: label 7 is outside \[0, num_classes\) = \[0, 3\)"):
        from_datasets(Pairs(x, bad), Pairs(x, y), num_classes=3)  # .targets: found when the task is built
    hidden = from_datasets(Pairs(x, bad, expose_targets=False), Pairs(x, y), num_classes=3)
    with pytest.raises(ShapeError, match=r"train\[9\]: label 7 is outside"):
        hidden.train[9]  # no .targets: found when the item is read

    class Words(Pairs):
        def __getitem__(self, i):
            return "text", 0

    with pytest.raises(ShapeError, match="give the dataset a transform that returns a tensor"):
        from_datasets(Words(x, y), Pairs(x, y))


def test_empty_and_iterable_datasets_are_config_errors():
    x, y = _data(10)
    with pytest.raises(ConfigError, match="train dataset is empty"):
        from_datasets(Pairs(x[:0], y[:0]), Pairs(x, y))
    with pytest.raises(ConfigError, match="test dataset is empty"):
        from_datasets(Pairs(x, y), Pairs(x[:0], y[:0]))
    with pytest.raises(ConfigError, match="map-style"):
        from_datasets(iter([(x[0], 0)]), Pairs(x, y))


def test_a_bad_item_stops_the_run_before_any_optimizer_step():
    """Evaluation at step 0 reads every item, so an item found bad only when read fails before training."""
    x, y = _data(40)
    bad = y.clone()
    bad[33] = 5
    task = from_datasets(Pairs(x, bad, expose_targets=False), Pairs(x, y), num_classes=3)
    model = task.make_model("mlp", width=8, depth=1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ShapeError, match=r"train\[33\]"):
        Trainer(task, model, CrossEntropy(), opt, steps=5, batch_size=8).fit()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_pil_images_and_numpy_inputs_are_converted():
    from PIL import Image

    class Images(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            array = (torch.arange(5 * 7 * 3) % 256).reshape(5, 7, 3).to(torch.uint8).numpy()
            return Image.fromarray(array), i % 2

    task = from_datasets(Images(), Images(), num_classes=2)
    assert task.input_shape == (3, 5, 7)
    x, _, _ = task.train[0]
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert float(x[1, 0, 0]) == pytest.approx(1 / 255)  # channel 1 of pixel (0, 0) holds 1


def test_evaluation_and_probes_do_not_change_the_training_run():
    """Evaluating a streamed task builds DataLoaders; they must not draw from torch's global generator (dropout's)."""
    x, y = _data(128)
    task = from_datasets(Pairs(x, y), Pairs(*_data(32, seed=1)))
    losses = []
    for every in (1, 100):
        torch.manual_seed(0)
        model = task.make_model("mlp", width=16, depth=1, dropout=0.5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        result = Trainer(task, model, CrossEntropy(), opt, steps=6, batch_size=16, eval_every=every, log_every=1).fit()
        losses.append([v for _, split, name, v in result.history if split == "train" and name == "batch_loss"])
    assert losses[0] == losses[1]


class RandomAugment(Dataset):
    """Items whose input is a fresh random draw: a stand-in for random crops and flips in a worker process."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.rand(1), i % 2


@pytest.mark.slow
def test_worker_augmentation_differs_from_epoch_to_epoch():
    task = from_datasets(RandomAugment(), RandomAugment(), num_classes=2)
    model = task.make_model("mlp", width=4, depth=1)
    trainer = Trainer(task, model, CrossEntropy(), torch.optim.SGD(model.parameters(), lr=0.1), num_workers=1)
    batches = trainer._batches(torch.Generator().manual_seed(0))
    seen: dict[int, list[float]] = {}
    for _ in range(3):  # batch_size 128 > 16 items: each batch is one whole epoch
        x, _, idx = next(batches)
        for value, i in zip(x[:, 0].tolist(), idx.tolist()):
            seen.setdefault(i, []).append(value)
    assert all(len(v) == 3 for v in seen.values())
    assert all(len(set(v)) == len(v) for v in seen.values())  # each epoch draws anew; no replay of epoch 1


def test_target_transform_labels_are_checked_as_read_not_from_targets():
    x, y = _data(20, k=10)

    class Coarse(Pairs):  # torchvision-style: .targets and .classes hold the labels before target_transform
        def __init__(self, x, y):
            super().__init__(x, y, classes=[str(c) for c in range(10)])
            self.target_transform = lambda t: t // 5

        def __getitem__(self, i):
            xi, yi = super().__getitem__(i)
            return xi, self.target_transform(yi)

    task = from_datasets(Coarse(x, y), Coarse(x, y), num_classes=2)
    assert task.num_classes == 2 and all(int(task.train[i][1]) in (0, 1) for i in range(20))
    with pytest.raises(ConfigError, match="num_classes: cannot be inferred"):
        from_datasets(Coarse(x, y), Coarse(x, y))
