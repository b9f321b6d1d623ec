"""Hugging Face datasets as reglab tasks: the ``hf_dataset`` task.

Needs the ``hf`` extra (``pip install 'reglab[hf]'``)::

    task: {name: hf_dataset, path: ./my_saved_dataset, split: train, test_split: test,
           input_column: image, label_column: label}

``path`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(read with ``datasets.load_from_disk``, memory-mapped: nothing is read up
front), or else a name or path for ``datasets.load_dataset`` (a hub name needs
the network or the local cache). Rows are read one at a time; images become
float tensors in [0, 1] as ``ToTensor`` makes them, lists and arrays become
tensors. The label column is read as a whole (an Arrow column: no input is
decoded) to check every label and, with a ``ClassLabel`` feature, to name the
classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from reglab.core.errors import ConfigError
from reglab.tasks.base import REGISTRY, Task
from reglab.tasks.streaming import from_datasets


class HFPairs(Dataset):
    """A ``datasets.Dataset`` seen as ``(x, y)`` pairs: ``(row[input_column], row[label_column])``.

    ``targets`` (the label column) and ``classes`` (a ``ClassLabel``'s names) follow torchvision's conventions,
    so :func:`~reglab.tasks.from_datasets` checks the labels and counts the classes without decoding inputs.
    """

    def __init__(self, dataset: Any, input_column: str, label_column: str):
        self.dataset, self.input_column, self.label_column = dataset, input_column, label_column
        feature = dataset.features[label_column]
        names = getattr(feature, "names", None)
        self.classes = list(names) if names else None
        column = dataset[label_column]
        labels = torch.as_tensor(list(column)) if len(column) else torch.zeros(0, dtype=torch.long)
        self.targets: Tensor | None = None if labels.is_floating_point() else labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        row = self.dataset[int(i)]
        y = row[self.label_column]
        return row[self.input_column], (torch.tensor(y, dtype=torch.float32) if isinstance(y, (float, list)) else y)


def _load(path: str, split: str, field: str) -> Any:
    import datasets

    local = Path(path).expanduser()
    if local.is_dir() and any(
        (local / name).exists() for name in ("dataset_dict.json", "dataset_info.json", "state.json")
    ):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"task.{field}: {path!r} has no split {split!r}; its splits: {', '.join(loaded)}")
            return loaded[split]
        if field == "test_split":
            raise ConfigError(
                f"task.test_split: {path!r} holds a single Dataset, not a DatasetDict with a {split!r} split; save "
                "a DatasetDict({'train': ..., 'test': ...}) instead"
            )
        return loaded
    try:
        return datasets.load_dataset(path, split=split)
    except Exception as err:  # no network, no cache, no such split: one message that says where and what
        raise ConfigError(
            f"task.path: cannot load {path!r} split {split!r} with datasets.load_dataset ({type(err).__name__}: "
            f"{err}); give a folder written by save_to_disk, or load it once with network access so it is cached"
        ) from None


@REGISTRY.register("hf_dataset")
def hf_dataset(
    path: str,
    split: str = "train",
    test_split: str = "test",
    input_column: str = "image",
    label_column: str = "label",
    num_classes: int | None = None,
) -> Task:
    """A Hugging Face dataset (a ``save_to_disk`` folder or a ``load_dataset`` name), streamed row by row.

    Args:
        path: a folder written by ``save_to_disk``, or a name/path for ``datasets.load_dataset``.
        split: the training split.
        test_split: the test split.
        input_column: the column of inputs (images, arrays or lists of numbers).
        label_column: the column of integer class labels (or float regression targets).
        num_classes: the class count; None: from a ``ClassLabel`` feature, else ``max(label) + 1``.

    Raises:
        ConfigError: ``datasets`` missing, a path or split that cannot be loaded, or a column that does not exist.
    """
    try:
        import datasets  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"the hf_dataset task needs the datasets library ({err}); pip install 'reglab[hf]'") from None
    local = Path(path).expanduser()
    if (path.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ConfigError(f"task.path: the dataset folder {str(local)!r} does not exist")
    pairs = []
    for field, name in (("split", split), ("test_split", test_split)):
        ds = _load(path, name, field)
        for column_field, column in (("input_column", input_column), ("label_column", label_column)):
            if column not in ds.column_names:
                raise ConfigError(f"task.{column_field}: no column {column!r} in {path!r}; columns: {ds.column_names}")
        pairs.append(HFPairs(ds, input_column, label_column))
    info = {"path": path, "split": split, "test_split": test_split}
    return from_datasets(pairs[0], pairs[1], num_classes=num_classes, name="hf_dataset", info=info)
