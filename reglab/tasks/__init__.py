"""Layer 3: tasks that need no download, their transforms, and small reference models.

``get(name, **options)`` builds a registered task (cached; each call returns an
independent copy); ``TRANSFORMS`` holds the task transforms (label noise,
subsets, long tails) and ``MODELS`` the reference models, each with
``features(x)`` and ``head(h)``::

    from reglab import tasks

    task = tasks.get("mnist1d")                         # 4000 train / 1000 test, 10 classes
    noisy = tasks.with_label_noise(task, rate=0.2)      # == tasks.TRANSFORMS.get("label_noise", task, rate=0.2)
    model = noisy.make_model("cnn1d")                   # == tasks.MODELS.get("cnn1d", (40,), 10)
"""

from __future__ import annotations

from typing import Any

from reglab.tasks.base import MODELS, REGISTRY, TRANSFORMS, IndexedDataset, Task, as_tensors
from reglab.tasks.generated import modular_arithmetic, sparse_regression, teacher_student, two_moons
from reglab.tasks.hf import hf_dataset  # registers the task; datasets is imported on use
from reglab.tasks.models import MLP, CNN1d, CNN2d, DiagonalLinear, EmbeddingMLP, ReferenceModel, Transformer
from reglab.tasks.packaged import digits, mnist1d
from reglab.tasks.split import SplitModel, split_model
from reglab.tasks.streaming import StreamedDataset, from_datasets
from reglab.tasks.transforms import long_tail, subset, with_label_noise
from reglab.tasks.vision import torchvision_model, torchvision_task  # registers; torchvision imported on use


def get(name: str, **options: Any) -> Task:
    """Build the registered task ``name`` with ``options`` (``REGISTRY.get``).

    Raises:
        UnknownNameError: ``name`` is not a registered task.
        ConfigError: an option is not accepted or has a bad value.
    """
    return REGISTRY.get(name, **options)


__all__ = [
    "CNN1d",
    "CNN2d",
    "MLP",
    "MODELS",
    "REGISTRY",
    "TRANSFORMS",
    "DiagonalLinear",
    "EmbeddingMLP",
    "IndexedDataset",
    "ReferenceModel",
    "Task",
    "SplitModel",
    "StreamedDataset",
    "Transformer",
    "from_datasets",
    "hf_dataset",
    "split_model",
    "torchvision_model",
    "torchvision_task",
    "as_tensors",
    "digits",
    "get",
    "long_tail",
    "mnist1d",
    "modular_arithmetic",
    "sparse_regression",
    "subset",
    "teacher_student",
    "two_moons",
    "with_label_noise",
]
