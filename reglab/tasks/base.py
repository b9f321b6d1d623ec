"""The task contract: indexed datasets, the :class:`Task` dataclass and the three registries.

A task is a pair of in-memory datasets whose items are ``(x, y, index)`` plus what a
trainer needs to build a model and a loss for them::

    from reglab import tasks

    task = tasks.get("two_moons", n=200, seed=1)
    x, y, i = task.train[0]            # x: float32 (2,), y: int64 scalar, i: 0
    model = task.make_model(width=64)  # tasks.MODELS["mlp"]((2,), 2, width=64)
    noisy = tasks.with_label_noise(task, rate=0.2)

Targets: classification tasks hold int64 labels of shape ``(n,)`` and set
``num_classes``; regression tasks hold float targets of shape ``(n, output_dim)``
and set ``num_classes=None``.

Registries (read by configs and ``reglab list``):

- ``REGISTRY`` ("task"): builders ``(**options) -> Task``.
- ``TRANSFORMS`` ("task transform"): ``(task, **options) -> Task``, always a new task.
- ``MODELS`` ("model"): ``(input_shape, num_outputs, **kwargs) -> nn.Module``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from reglab.core.errors import ShapeError
from reglab.core.registry import Registry
from reglab.core.validation import check_int

REGISTRY = Registry("task")
TRANSFORMS = Registry("task transform", positional=("task",))
MODELS = Registry("model", positional=("input_shape", "num_outputs"))

_MAX_SEED = 2**32  # numpy's RandomState accepts seeds in [0, 2**32)


class IndexedDataset(Dataset):
    """An in-memory dataset whose items are ``(x[i], y[i], i)``.

    The index is a Python int, so the default collate function turns a batch of
    indices into an int64 tensor; losses and penalties with per-example state
    (ELR, PS-KD, forgetting counts) use it.

    Args:
        x: inputs, first dimension = number of examples.
        y: targets, same first dimension.

    Raises:
        ShapeError: ``x`` and ``y`` are not tensors with at least one dimension and equal first dimensions.
    """

    def __init__(self, x: Tensor, y: Tensor):
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise ShapeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise ShapeError(
                f"x and y must have the same first dimension, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        i = int(i)
        if i < 0:
            i += len(self)
        return self.x[i], self.y[i], i

    def all_targets(self) -> Tensor:
        """Every target, ``y`` (no copy)."""
        return self.y

    def subset(self, keep: Tensor) -> IndexedDataset:
        """The examples ``keep``, re-indexed from 0."""
        return IndexedDataset(self.x[keep], self.y[keep])

    def relabel(self, targets: Tensor) -> IndexedDataset:
        """The same inputs (shared, not copied) with new targets."""
        return IndexedDataset(self.x, targets)

    def for_eval(self) -> IndexedDataset:
        """What evaluation reads: the dataset itself (in-memory datasets carry no augmentation)."""
        return self

    def __repr__(self) -> str:
        return f"IndexedDataset(n={len(self)}, x={tuple(self.x.shape[1:])} {self.x.dtype}, y={self.y.dtype})"


def indexed(dataset: Dataset) -> Any:
    """``dataset`` if it has the task-transform methods (``all_targets``, ``subset``, ``relabel``), else its items
    read into an :class:`IndexedDataset` (meant for small datasets)."""
    if all(callable(getattr(dataset, m, None)) for m in ("all_targets", "subset", "relabel")):
        return dataset
    return IndexedDataset(*as_tensors(dataset)[:2])


def as_tensors(dataset: Dataset) -> tuple[Tensor, Tensor, Tensor]:
    """The whole dataset as ``(x, y, indices)`` tensors.

    For an :class:`IndexedDataset` this returns its own ``x`` and ``y`` (no copy:
    do not modify them in place) and ``indices = arange(n)``. Any other dataset
    whose items are ``(x, y, index)`` is read item by item and stacked, which is
    meant for small in-memory datasets only.

    Raises:
        ShapeError: the items are not ``(x, y, index)`` triples.
    """
    if isinstance(dataset, IndexedDataset):
        return dataset.x, dataset.y, torch.arange(len(dataset))
    xs, ys, idx = [], [], []
    for k in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[k]
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ShapeError(f"dataset items must be (x, y, index) triples, item {k} is {type(item).__name__}")
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
        idx.append(int(item[2]))
    if not xs:
        raise ShapeError("cannot stack an empty dataset")
    return torch.stack(xs), torch.stack(ys), torch.tensor(idx, dtype=torch.long)


@dataclass(eq=False)
class Task:
    """A learning problem: train/test datasets of ``(x, y, index)`` and how to build models for them.

    Args:
        name: the registry name of the builder that made it.
        train: training dataset (items ``(x, y, index)``, index in ``range(len(train))``).
        test: test dataset.
        num_classes: number of classes, or None for regression.
        input_shape: shape of one input ``x``.
        default_model: the ``MODELS`` name used by :meth:`make_model` when none is given.
        models: the ``MODELS`` names suitable for this task.
        output_dim: model output size: ``num_classes`` for classification, the target dimension for regression.
        flipped: bool mask over training indices, True where the training label differs from
            ``clean_targets`` (set by label noise).
        clean_targets: training labels before label noise.
        info: the builder's options (seed, sizes, ...) and, under ``"transforms"``, the list of
            transforms applied. Plain Python values, so it can be stored as JSON.

    Tasks returned by :func:`reglab.tasks.get` are independent copies of a cached
    original; transforms never modify their input and return a new Task. Tasks
    compare by identity (their fields hold tensors).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int | None
    input_shape: tuple[int, ...]
    default_model: str
    models: tuple[str, ...]
    output_dim: int
    flipped: Tensor | None = None
    clean_targets: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_classification(self) -> bool:
        """True when the task has class labels (``num_classes`` is not None)."""
        return self.num_classes is not None

    def make_model(self, name: str | None = None, **kwargs: Any) -> nn.Module:
        """Build ``MODELS[name or default_model]`` with ``(input_shape, output_dim, **kwargs)``.

        Keys of ``info["model_kwargs"]`` (e.g. ``vocab_size`` for token tasks) are
        passed too when the model accepts them and ``kwargs`` does not set them.

        Raises:
            UnknownNameError: ``name`` is not a registered model.
            ConfigError: a keyword argument is not accepted by the model.
        """
        name = name or self.default_model
        accepted = MODELS.parameters(name)
        for key, value in self.info.get("model_kwargs", {}).items():
            if key not in kwargs and (accepted is None or key in accepted):
                kwargs[key] = value
        return MODELS.get(name, tuple(self.input_shape), self.output_dim, **kwargs)

    def replace(self, **changes: Any) -> Task:
        """A shallow copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.is_classification else f"regression, dim {self.output_dim}"
        return (
            f"Task({self.name!r}, train={len(self.train)}, test={len(self.test)}, "  # type: ignore[arg-type]
            f"input_shape={self.input_shape}, {kind}, default_model={self.default_model!r})"
        )


F = TypeVar("F", bound=Callable[..., Task])


def cached_task(fn: F, maxsize: int = 32) -> F:
    """Cache a task builder on its bound arguments (defaults applied); return a deep copy on each call.

    Building some tasks takes seconds (MNIST-1D), so builders are cached; each
    call returns an independent deep copy, so a caller that modifies its task
    (or its tensors) cannot change what the next caller gets. The wrapper keeps
    the builder's signature and docstring (for the registry) and has
    ``cache_clear()``.
    """
    sig = inspect.signature(fn)
    cache: OrderedDict[tuple, Task] = OrderedDict()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Task:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((k, type(v).__name__, v) for k, v in bound.arguments.items())
        try:
            hash(key)
        except TypeError:
            return fn(*args, **kwargs)
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = fn(*args, **kwargs)
            while len(cache) > maxsize:
                cache.popitem(last=False)
        return copy.deepcopy(cache[key])

    wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# --- argument validation shared by builders, transforms and models -------------------------------


def check_seed(seed: Any) -> int:
    """Return ``seed`` if it is an int in ``[0, 2**32)``; else raise ConfigError."""
    return check_int("seed", seed, 0, _MAX_SEED - 1)
