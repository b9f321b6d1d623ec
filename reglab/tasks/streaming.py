"""Tasks over any map-style dataset, read on demand: :func:`from_datasets` and :class:`StreamedDataset`.

A researcher's data (torchvision, Hugging Face, their own ``Dataset``) yields
``(x, y)`` pairs; reglab's trainer, losses and penalties want ``(x, y, index)``.
:class:`StreamedDataset` is that view, without reading anything up front::

    from reglab import tasks

    task = tasks.from_datasets(cifar_train, cifar_test)     # num_classes from .classes, input_shape from item 0
    x, y, i = task.train[5]                                 # reads cifar_train[5] only

Each item read is checked: a pair, an input tensor of the task's shape (PIL
images and NumPy arrays are converted as ``ToTensor`` would), an integer label
in ``[0, num_classes)`` (or, for regression, a float target of the task's
output size). A bad item raises :class:`~reglab.core.ShapeError` naming the
item and the fix; the trainer's evaluation at step 0 reads every item, so a bad
one stops the run before any optimizer step. Labels that the dataset exposes
without decoding inputs (``.targets``, torchvision's convention) are checked
all at once when the task is built.

Task transforms (label noise, subsets, long tails) act on a streamed dataset
through its labels and a row map, never materializing the inputs; a dataset
with training augmentation can carry an ``eval_base`` (the same items without
augmentation) that evaluation and probes read instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_int
from reglab.tasks.base import Task


def _pil_to_tensor(image: Any) -> Tensor:
    """A PIL image as float32 ``(C, H, W)`` in [0, 1], as ``torchvision.transforms.ToTensor`` makes it."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    t = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return t.to(torch.float32).div_(255.0) if t.dtype == torch.uint8 else t.to(torch.float32)


def as_input(x: Any, where: str) -> Tensor:
    """An input value as a tensor: tensors as they are, NumPy arrays and numbers wrapped, PIL images converted."""
    if isinstance(x, Tensor):
        return x
    if hasattr(x, "getbands") and hasattr(x, "size"):  # a PIL image, without importing PIL
        return _pil_to_tensor(x)
    if isinstance(x, (np.ndarray, np.generic, int, float, list)):
        t = torch.as_tensor(np.asarray(x))
        return t.to(torch.float32) if t.dtype == torch.float64 else t
    raise ShapeError(
        f"{where}: the input is a {type(x).__name__}, not a tensor, array or image; give the dataset a transform "
        "that returns a tensor (e.g. torchvision.transforms.ToTensor())"
    )


def _label_of(y: Any, where: str, num_classes: int | None, output_dim: int) -> Tensor:
    if num_classes is None:  # regression: a float target of output_dim values
        t = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
        if not t.is_floating_point() or t.numel() != output_dim:
            raise ShapeError(
                f"{where}: the regression target must be {output_dim} float value(s), got {t.dtype} of shape "
                f"{tuple(t.shape)}"
            )
        return t.reshape(output_dim).to(torch.float32) if t.dtype == torch.float64 else t.reshape(output_dim)
    if isinstance(y, Tensor):
        if y.numel() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise ShapeError(f"{where}: the label must be one integer class index, got {y.dtype} {tuple(y.shape)}")
        label = int(y.item())
    elif isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        label = int(y)
    else:
        raise ShapeError(f"{where}: the label must be an integer class index, got {type(y).__name__} {y!r}")
    if not 0 <= label < num_classes:
        raise ShapeError(f"{where}: label {label} is outside [0, num_classes) = [0, {num_classes})")
    return torch.tensor(label, dtype=torch.long)


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
        raise ShapeError(f"{where}: items must be (x, y) pairs, got {kind}")
    return item[0], item[1]


class StreamedDataset(Dataset):
    """A map-style dataset of ``(x, y)`` pairs seen as reglab items ``(x, y, index)``, read on demand.

    Args:
        base: the dataset; ``base[j]`` is ``(x, y)``.
        num_classes: class count (labels are int64 in ``[0, num_classes)``), or None for regression.
        input_shape: the shape every input must have.
        output_dim: the regression target size (ignored for classification).
        eval_base: the same items without training augmentation, read by :meth:`for_eval`; None: ``base``.
        rows: item ``i`` of this view is ``base[rows[i]]``; None: the identity.
        labels: labels that replace the dataset's (label noise), one per item of this view; None: the dataset's.
        name: the name used in error messages (``train``, ``test``).

    Raises:
        ShapeError: an item read is not a valid pair (see the module docstring).
    """

    def __init__(
        self,
        base: Dataset,
        *,
        num_classes: int | None,
        input_shape: tuple[int, ...],
        output_dim: int = 1,
        eval_base: Dataset | None = None,
        rows: Tensor | None = None,
        labels: Tensor | None = None,
        name: str = "dataset",
    ):
        self.base, self.eval_base = base, eval_base
        self.num_classes, self.input_shape, self.output_dim = num_classes, tuple(input_shape), output_dim
        self.rows, self.labels, self.name = rows, labels, name

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.base)  # type: ignore[arg-type]

    def _read(self, base: Dataset, i: int) -> tuple[Tensor, Tensor, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} dataset of {n} items")
        i = i % n
        j = int(self.rows[i]) if self.rows is not None else i
        where = f"{self.name}[{j}]"
        x, y = _pair(base[j], where)
        x = as_input(x, where)
        if tuple(x.shape) != self.input_shape:
            raise ShapeError(
                f"{where}: input of shape {tuple(x.shape)}, but the task's input_shape is {self.input_shape} "
                "(taken from the first item unless given); resize every input to one shape in the dataset's transform"
            )
        target = self.labels[i] if self.labels is not None else _label_of(y, where, self.num_classes, self.output_dim)
        return x, target, i

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self._read(self.base, int(i))

    def for_eval(self) -> StreamedDataset:
        """The same items read from ``eval_base`` (no training augmentation); ``self`` when there is none."""
        if self.eval_base is None:
            return self
        return self._replace(base=self.eval_base, eval_base=None)

    def all_targets(self) -> Tensor:
        """Every label of this view: the override, else the dataset's ``.targets`` if it has them, else read item by
        item (decoding every input: slow for large datasets)."""
        if self.labels is not None:
            return self.labels
        known = dataset_targets(self.base)
        if known is not None:
            return known[self.rows] if self.rows is not None else known
        return torch.stack([self[i][1] for i in range(len(self))])

    def subset(self, keep: Tensor) -> StreamedDataset:
        """The view restricted to items ``keep`` (re-indexed from 0)."""
        rows = self.rows[keep] if self.rows is not None else keep.clone()
        labels = self.labels[keep] if self.labels is not None else None
        return self._replace(rows=rows, labels=labels)

    def relabel(self, labels: Tensor) -> StreamedDataset:
        """The view with its labels replaced by ``labels`` (one per item)."""
        if labels.shape[0] != len(self):
            raise ShapeError(f"relabel needs {len(self)} labels, got {labels.shape[0]}")
        return self._replace(labels=labels)

    def _replace(self, base: Dataset | None = None, **changes: Any) -> StreamedDataset:
        """This view with some fields changed (``base`` too when given)."""
        fields = dict(
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            output_dim=self.output_dim,
            eval_base=self.eval_base,
            rows=self.rows,
            labels=self.labels,
            name=self.name,
        )
        fields.update(changes)
        return StreamedDataset(self.base if base is None else base, **fields)

    def __repr__(self) -> str:
        base = type(self.base).__name__
        return f"StreamedDataset({self.name}, n={len(self)}, input_shape={self.input_shape}, base={base})"


def dataset_targets(dataset: Any) -> Tensor | None:
    """The labels a dataset exposes without decoding its inputs (``.targets``, torchvision's convention), or None.

    None also when the dataset has a ``target_transform``: ``.targets`` then holds the labels before it.
    """
    if getattr(dataset, "target_transform", None) is not None:
        return None
    targets = getattr(dataset, "targets", None)
    if targets is None or isinstance(targets, str) or callable(targets):
        return None
    try:
        t = torch.as_tensor(np.asarray(targets))
    except (TypeError, ValueError):
        return None
    if t.dim() != 1 or t.is_floating_point() or len(t) != len(dataset):
        return None
    return t.long()


def _infer_num_classes(train: Any, y: Any) -> int | None:
    """Classification or regression from the first label; the class count from ``.classes`` or ``.targets``."""
    if isinstance(y, Tensor) and y.is_floating_point() or isinstance(y, (float, np.floating)):
        return None
    if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.floating):
        return None
    # with a target_transform, .classes and .targets describe the labels before it
    classes = getattr(train, "classes", None) if getattr(train, "target_transform", None) is None else None
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        return len(classes)
    targets = dataset_targets(train)
    if targets is not None and len(targets):
        return int(targets.max()) + 1
    raise ConfigError(
        f"num_classes: cannot be inferred from the dataset ({type(train).__name__} has neither .classes nor "
        ".targets, and reading every label would read the whole dataset); pass num_classes="
    )


def _check_targets(dataset: Any, num_classes: int, field: str) -> None:
    targets = dataset_targets(dataset)
    if targets is None:
        return
    bad = (targets < 0) | (targets >= num_classes)
    if bad.any():
        j = int(bad.nonzero()[0, 0])
        raise ShapeError(
            f"{field}[{j}]: label {int(targets[j])} is outside [0, num_classes) = [0, {num_classes}) "
            f"({int(bad.sum())} bad label(s) in {field}.targets)"
        )


def from_datasets(
    train: Dataset,
    test: Dataset,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    name: str = "custom",
    default_model: str | None = None,
    train_eval: Dataset | None = None,
    info: dict[str, Any] | None = None,
) -> Task:
    """A :class:`~reglab.tasks.Task` over two map-style datasets of ``(x, y)`` pairs, read on demand.

    Nothing is read into memory: the trainer streams the task through a
    ``DataLoader`` (``train.num_workers``, shuffled with the run's seed). One
    item of ``train`` is read here, to infer what is not given.

    Args:
        train: the training dataset; ``train[i]`` is ``(x, y)``.
        test: the test dataset, same form.
        num_classes: class count; None: regression if the first label is a float, else ``len(train.classes)`` or
            ``max(train.targets) + 1``.
        input_shape: the shape of one input; None: the first training item's.
        name: the task's name.
        default_model: the model :meth:`Task.make_model` builds when none is named; None: ``mlp`` for flat inputs,
            ``torchvision`` (ResNet-18) for images ``(C, H, W)`` when torchvision is installed, else ``cnn2d``.
        train_eval: the training items without augmentation (same order), read by evaluation and probes.
        info: extra fields for ``task.info`` (plain values).

    Raises:
        ConfigError: an empty dataset, or a class count that cannot be inferred or is < 1.
        ShapeError: the first item is not an ``(x, y)`` pair, or a label exposed by ``.targets`` is out of range.
    """
    for field, ds in (("train", train), ("test", test)):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise ConfigError(
                f"{field} must be a map-style dataset (with __len__ and __getitem__), got {type(ds).__name__}; "
                "an IterableDataset cannot be indexed, shuffled with the run's seed or evaluated in order"
            )
        if len(ds) == 0:
            raise ConfigError(f"{field} dataset is empty")
    if train_eval is not None and len(train_eval) != len(train):
        raise ConfigError(f"train_eval must have as many items as train ({len(train)}), got {len(train_eval)}")
    x0, y0 = _pair(train[0], "train[0]")
    x0 = as_input(x0, "train[0]")
    if input_shape is None:
        input_shape = tuple(x0.shape)
    else:
        input_shape = tuple(check_int("input_shape[i]", s, 1) for s in input_shape)
    if num_classes is None:
        num_classes = _infer_num_classes(train, y0)
    else:
        num_classes = check_int("num_classes", num_classes, 1)
    if num_classes is None:
        output_dim = int(torch.as_tensor(np.asarray(y0) if not isinstance(y0, Tensor) else y0).numel())
    else:
        output_dim = num_classes
        _check_targets(train, num_classes, "train")
        _check_targets(test, num_classes, "test")
    common = dict(num_classes=num_classes, input_shape=input_shape, output_dim=output_dim)
    if default_model is None:
        default_model = _default_model(input_shape)
    from reglab.tasks.base import MODELS

    return Task(
        name=name,
        train=StreamedDataset(train, eval_base=train_eval, name="train", **common),
        test=StreamedDataset(test, name="test", **common),
        num_classes=num_classes,
        input_shape=input_shape,
        default_model=default_model,
        models=tuple(MODELS.names()),
        output_dim=output_dim,
        info=dict(info or {}),
    )


def _default_model(input_shape: tuple[int, ...]) -> str:
    from reglab.tasks.base import MODELS

    if len(input_shape) == 3 and "torchvision" in MODELS.names():
        try:
            import torchvision  # noqa: F401
        except ImportError:
            return "cnn2d"
        return "torchvision"
    return "cnn2d" if len(input_shape) == 3 else "mlp"
