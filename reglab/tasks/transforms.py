"""Task transforms: label noise, random subsets and long-tailed class imbalance.

Each transform takes a :class:`~reglab.tasks.Task` and returns a NEW task with a
new training dataset; the input task is never modified, the test set is the
same object (untouched), and input tensors are shared rather than copied. Each
appends a record ``{"name": ..., <options>}`` to ``info["transforms"]``, so a
transformed task says how it was made::

    from reglab import tasks

    task = tasks.get("mnist1d")
    noisy = tasks.with_label_noise(tasks.long_tail(task, imbalance=10), rate=0.2)
    noisy.flipped.sum()  # number of corrupted training labels

``flipped`` and ``clean_targets`` always refer to the original (pre-noise)
labels, and every transform keeps them consistent with the training indices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reglab.core.errors import ConfigError
from reglab.core.validation import check_choice, check_float, check_int
from reglab.tasks.base import TRANSFORMS, Task, check_seed, indexed

NOISE_KINDS = ("symmetric", "pairflip")


def _record(task: Task, entry: dict[str, Any], **updates: Any) -> dict[str, Any]:
    """A new info dict: the task's, plus ``updates``, plus ``entry`` appended to ``transforms``."""
    info = dict(task.info)
    info.update(updates)
    info["transforms"] = [*task.info.get("transforms", []), entry]
    return info


def _require_classification(task: Task, transform: str) -> int:
    if not task.is_classification:
        raise ConfigError(
            f"{transform} needs a classification task, got the regression task {task.name!r} (num_classes=None)"
        )
    if task.num_classes < 2:  # type: ignore[operator]
        raise ConfigError(f"{transform} needs num_classes >= 2, got {task.num_classes}")
    return int(task.num_classes)  # type: ignore[arg-type]


def _select(task: Task, keep: Tensor, entry: dict[str, Any], **updates: Any) -> Task:
    """The task restricted to the training examples ``keep`` (re-indexed from 0)."""
    info = _record(task, entry, **updates)
    if "class_counts" not in updates:
        info.pop("class_counts", None)  # stale after a change of the training set
    return task.replace(
        train=indexed(task.train).subset(keep),
        flipped=None if task.flipped is None else task.flipped[keep],
        clean_targets=None if task.clean_targets is None else task.clean_targets[keep],
        info=info,
    )


@TRANSFORMS.register("label_noise")
def with_label_noise(task: Task, rate: float, kind: str = "symmetric", seed: int = 0) -> Task:
    """Corrupt exactly round(rate * n_train) training labels, chosen uniformly without replacement.

    ``symmetric``: each chosen label y becomes ``(y + s) mod K`` with ``s`` uniform
    in ``{1, ..., K-1}``, i.e. a uniformly random *different* class.
    ``pairflip``: each chosen label becomes ``(y + 1) mod K``.
    (``round`` is Python's: halves go to the even integer.)

    The result records ``clean_targets`` (the labels before any noise) and
    ``flipped = (y_train != clean_targets)``. Applied to an already noisy task,
    the new noise is drawn on the current labels and both records stay relative
    to the original clean labels (a label flipped twice may come back clean).

    References: Zhang et al., "Understanding Deep Learning Requires Rethinking
    Generalization" (2017); Han et al., "Co-teaching" (2018) for pair flipping.

    Args:
        task: a classification task.
        rate: fraction of training labels to corrupt, in [0, 1); 0.2–0.8 usual.
        kind: ``"symmetric"`` or ``"pairflip"``.
        seed: seed of the choice of examples and of the new labels.

    Returns:
        A new task; the test set is the input's.

    Raises:
        ConfigError: regression task, rate outside [0, 1), unknown kind, or a bad seed.
    """
    num_classes = _require_classification(task, "label_noise")
    rate = check_float("rate", rate, 0.0, 1.0, high_open=True)
    check_choice("kind", kind, NOISE_KINDS)
    check_seed(seed)
    train = indexed(task.train)
    y = train.all_targets()
    n = y.shape[0]
    n_flip = round(rate * n)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=g)[:n_flip]
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (n_flip,), generator=g)
    else:
        shift = torch.ones(n_flip, dtype=y.dtype)
    noisy = y.clone()
    noisy[chosen] = (y[chosen] + shift) % num_classes
    clean = (task.clean_targets if task.clean_targets is not None else y).clone()
    entry = {"name": "label_noise", "rate": rate, "kind": kind, "seed": seed, "n_flipped": n_flip}
    return task.replace(
        train=train.relabel(noisy),
        flipped=noisy != clean,
        clean_targets=clean,
        info=_record(task, entry),
    )


@TRANSFORMS.register("subset")
def subset(task: Task, n: int, seed: int = 0) -> Task:
    """A uniformly random subset of n training examples, kept in their original order and re-indexed 0..n-1.

    ``flipped`` and ``clean_targets`` are restricted to the same examples.

    Args:
        task: any task.
        n: number of training examples to keep, in [1, len(task.train)].
        seed: seed of the choice.

    Returns:
        A new task; the test set is the input's.

    Raises:
        ConfigError: n out of range, or a bad seed.
    """
    n_train = len(task.train)  # type: ignore[arg-type]
    check_int("n", n, 1)
    if n > n_train:
        raise ConfigError(f"n must be <= the number of training examples ({n_train}), got {n}")
    check_seed(seed)
    keep = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return _select(task, keep, {"name": "subset", "n": n, "seed": seed})


@TRANSFORMS.register("long_tail")
def long_tail(task: Task, imbalance: float, seed: int = 0) -> Task:
    """Long-tailed training set: class c keeps n_max * imbalance^(-c/(K-1)) examples (exponential profile).

    ``n_max`` is the size of the smallest class of the input training set, so
    every class can supply its quota; counts are rounded down (at least 1), so
    ``imbalance = n_0 / n_{K-1}`` up to rounding. Classes are the clean labels
    when the task has ``clean_targets``. Examples are chosen uniformly within
    each class; the test set is untouched (balanced, as usual). The per-class
    counts are ``info["class_counts"]``.

    References: Cui et al., "Class-Balanced Loss Based on Effective Number of
    Samples" (2019); Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss" (2019).

    Args:
        task: a classification task.
        imbalance: ratio of the largest to the smallest class size, >= 1; 10–100 usual.
        seed: seed of the choice.

    Returns:
        A new task; the test set is the input's.

    Raises:
        ConfigError: regression task, imbalance < 1, a class with no training example, or a bad seed.
    """
    num_classes = _require_classification(task, "long_tail")
    imbalance = check_float("imbalance", imbalance, 1.0)
    check_seed(seed)
    y = indexed(task.train).all_targets()
    labels = task.clean_targets if task.clean_targets is not None else y
    available = torch.bincount(labels, minlength=num_classes)
    n_max = int(available.min())
    if n_max == 0:
        empty = [c for c in range(num_classes) if available[c] == 0]
        raise ConfigError(f"long_tail needs at least one training example per class, classes {empty} have none")
    counts = [max(1, int(n_max * imbalance ** (-c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)]
    g = torch.Generator().manual_seed(seed)
    parts = []
    for c, count in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        parts.append(members[torch.randperm(len(members), generator=g)[:count]])
    keep = torch.cat(parts).sort().values
    entry = {"name": "long_tail", "imbalance": imbalance, "seed": seed, "class_counts": counts}
    return _select(task, keep, entry, class_counts=counts)
