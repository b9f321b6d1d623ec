"""Real image data and real models through torchvision (and timm): the ``torchvision`` task and model entries.

Needs the ``vision`` extra (``pip install 'reglab[vision]'``; torch and
torchvision must be a matching pair). Nothing is imported until an entry is
used, and nothing is downloaded unless ``download: true``::

    task:  {name: torchvision, dataset: CIFAR10, root: ~/data, download: false, augment: true}
    model: {name: torchvision, arch: resnet18, pretrained: false}      # CIFAR stem chosen for 32x32 inputs
    model: {name: timm, arch: resnet18}

The task streams the dataset (see :func:`~reglab.tasks.from_datasets`): items
are ``ToTensor`` + the dataset's standard per-channel normalization; with
``augment`` the training items are also randomly cropped and flipped the usual
way (see :func:`image_transforms`), while evaluation and probes read the same
training images without augmentation.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from reglab.core.errors import ConfigError, closest
from reglab.core.validation import check_bool, check_int
from reglab.tasks.base import MODELS, REGISTRY, Task
from reglab.tasks.split import split_model
from reglab.tasks.streaming import from_datasets

#: Per-channel (mean, std) of the training images, the values the field normalizes with.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "CIFAR10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "CIFAR100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "SVHN": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "MNIST": ((0.1307,), (0.3081,)),
    "FashionMNIST": ((0.2860,), (0.3530,)),
    "KMNIST": ((0.1918,), (0.3483,)),
}
#: ImageNet's statistics, for natural-image datasets not listed above (ImageFolder trees included).
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Datasets of digits and characters: no horizontal flip (it changes the class).
NO_FLIP = frozenset({"MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "USPS", "SVHN", "Omniglot"})


def _torchvision(what: str) -> Any:
    try:
        import torchvision
    except ImportError as err:
        raise ConfigError(
            f"{what} needs torchvision, which is not installed or does not import ({err}); install the vision "
            "extra with a torchvision that matches your torch: pip install 'reglab[vision]'"
        ) from None
    return torchvision


def image_transforms(dataset: str, size: tuple[int, int], augment: bool, image_size: int | None = None) -> tuple:
    """The (training, evaluation) transforms of ``dataset`` for images of ``size`` (H, W).

    Evaluation: ``[Resize(image_size * 8/7), CenterCrop(image_size)]`` when ``image_size`` is given (ImageNet's
    recipe), then ``ToTensor`` and the normalization of :data:`NORMALIZATION` (ImageNet's for other natural
    images, 0.5/0.5 for other known grayscale sets). Training with ``augment``: small images (<= 64 pixels) get
    ``RandomCrop(size, padding=size/8)`` (4 pixels at 32, the CIFAR recipe of He et al. 2016); an ``image_size``
    gets ``RandomResizedCrop(image_size)``; both then ``RandomHorizontalFlip`` unless the dataset is of digits or
    characters (:data:`NO_FLIP`).
    """
    tv = _torchvision("the torchvision task")
    T = tv.transforms
    mean, std = NORMALIZATION.get(dataset, IMAGENET_NORMALIZATION if dataset not in NO_FLIP else ((0.5,), (0.5,)))
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if image_size is not None:
        evaluation = T.Compose([T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size), *tail])
    else:
        evaluation = T.Compose(tail)
    if not augment:
        return evaluation, evaluation
    if image_size is not None:
        crop = [T.RandomResizedCrop(image_size)]
    elif max(size) <= 64:
        crop = [T.RandomCrop(size, padding=max(1, size[0] // 8))]
    else:
        crop = []
    flip = [] if dataset in NO_FLIP else [T.RandomHorizontalFlip()]
    return T.Compose([*crop, *flip, *tail]), evaluation


def _with_transform(dataset: Any, transform: Any) -> Any:
    """A shallow copy of a torchvision dataset that applies ``transform`` (the images themselves are shared)."""
    out = copy.copy(dataset)
    out.transform = transform
    if hasattr(out, "transforms"):
        from torchvision.datasets.vision import StandardTransform

        out.transforms = StandardTransform(transform, getattr(out, "target_transform", None))
    return out


def _open(cls: Any, dataset: str, root: Path | None, download: bool, train: bool, kwargs: dict[str, Any]) -> Any:
    """One split of a torchvision dataset, with missing files turned into a ConfigError that says where and how."""
    params = inspect.signature(cls).parameters
    args = dict(kwargs)
    if dataset == "ImageFolder":
        split_dir = _image_folder_split(root, train)
        return cls(str(split_dir), **args)
    if "root" in params:
        if root is None:
            raise ConfigError(f"task.root: {dataset} needs root, the folder that holds (or will hold) its files")
        args["root"] = str(root)
    if "download" in params:
        args["download"] = download
    if "train" in params:
        args["train"] = train
    elif "split" in params:
        args.setdefault("split", "train" if train else "test")
    elif not train and "random_offset" in params:  # FakeData: other images for the test split
        args.setdefault("random_offset", args.get("size", 1000))
    try:
        return cls(**args)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        where = root / getattr(cls, "base_folder", "") if root is not None else "(no root)"
        how = (
            "set download: true on a machine with network access, or copy the official files there"
            if "download" in params
            else "copy the dataset's files there (this dataset cannot be downloaded by torchvision)"
        )
        raise ConfigError(f"task: {dataset} files not found or not valid under {str(where)!r} ({err}); {how}") from None
    except TypeError as err:
        raise ConfigError(f"task.dataset_kwargs: {dataset} does not accept them: {err}") from None


def _image_folder_split(root: Path | None, train: bool) -> Path:
    if root is None or not root.is_dir():
        raise ConfigError(
            f"task.root: the ImageFolder tree {str(root)!r} does not exist; it must hold train/ and test/ (or val/) "
            "folders with one sub-folder of images per class"
        )
    names = ("train",) if train else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise ConfigError(f"task.root: {str(root)!r} has no {' or '.join(n + '/' for n in names)} folder")


@REGISTRY.register("torchvision")
def torchvision_task(
    dataset: str,
    root: str | None = None,
    download: bool = False,
    augment: bool = True,
    image_size: int | None = None,
    num_classes: int | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
) -> Task:
    """Any torchvision classification dataset by name (CIFAR10, CIFAR100, MNIST, SVHN, ImageFolder, FakeData, ...).

    The train and test splits are the dataset's (``train=True/False``, or
    ``split="train"/"test"``); an ``ImageFolder`` ``root`` holds ``train/`` and
    ``test/`` (or ``val/``) trees. Items are normalized tensors; training items
    are augmented when ``augment`` (:func:`image_transforms`). Nothing is read
    into memory beyond what the dataset class itself loads (CIFAR's arrays).
    ``FakeData``'s test split uses other images (``random_offset`` = its size).

    Args:
        dataset: the class name in ``torchvision.datasets``.
        root: the folder of the dataset's files (``~`` expanded).
        download: let torchvision download missing files (never needed in reglab's tests).
        augment: random crop and flip of training images.
        image_size: resize and crop every image to this size (ImageNet-style datasets); None: keep the size.
        num_classes: the class count when the dataset exposes neither ``.classes`` nor ``.targets`` (FakeData:
            its ``num_classes`` argument).
        dataset_kwargs: more arguments for the dataset class (e.g. FakeData's ``size`` and ``image_size``).

    Raises:
        ConfigError: torchvision missing, an unknown dataset, missing files (naming where they were looked for and
            how to get them), or an argument the dataset does not take.
    """
    tv = _torchvision("the torchvision task")
    cls = getattr(tv.datasets, dataset, None) if isinstance(dataset, str) else None
    if cls is None or not inspect.isclass(cls):
        names = [n for n in dir(tv.datasets) if n[:1].isupper()]
        near = closest(str(dataset), names)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"task.dataset: torchvision has no dataset {dataset!r}{hint}")
    check_bool("download", download)
    check_bool("augment", augment)
    if image_size is not None:
        check_int("image_size", image_size, 1)
    kwargs = dict(dataset_kwargs or {})
    if dataset == "FakeData" and num_classes is None:
        num_classes = kwargs.get("num_classes", 10)
    path = Path(root).expanduser() if root is not None else None
    raw_train = _open(cls, dataset, path, download, True, kwargs)
    raw_test = _open(cls, dataset, path, download, False, kwargs)
    if len(raw_train) == 0:
        raise ConfigError(f"task: the {dataset} training split under {str(path)!r} is empty")
    first = raw_train[0][0]
    width, height = first.size if hasattr(first, "size") and not callable(first.size) else (None, None)
    size = (height, width) if height is not None else (32, 32)
    train_tf, eval_tf = image_transforms(dataset, size, augment, image_size)
    info = {"dataset": dataset, "root": root, "augment": augment, "image_size": image_size}
    return from_datasets(
        _with_transform(raw_train, train_tf),
        _with_transform(raw_test, eval_tf),
        num_classes=num_classes,
        name="torchvision",
        train_eval=_with_transform(raw_train, eval_tf) if augment else None,
        info=info,
    )


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make the first ``Conv2d`` take ``in_channels`` (a grayscale dataset on an RGB architecture)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                attr,
                nn.Conv2d(
                    in_channels,
                    module.out_channels,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    module.groups,
                    module.bias is not None,
                ),
            )
            return


def _cifar_stem(model: nn.Module) -> None:
    """The ResNet stem for 32x32 inputs: a 3x3 stride-1 first convolution and no max-pooling (He et al. 2016)."""
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
        raise ConfigError(
            f"cifar_stem: only ResNet-style models (conv1 + maxpool) have the CIFAR stem, not {type(model).__name__}"
        )
    conv = model.conv1
    model.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
    model.maxpool = nn.Identity()


def _check_image_shape(input_shape: Sequence[int], entry: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ConfigError(f"model: {entry} models take images (C, H, W), the task's input_shape is {shape}")
    return shape  # type: ignore[return-value]


@MODELS.register("torchvision")
def torchvision_model(
    input_shape: Sequence[int],
    num_outputs: int,
    arch: str = "resnet18",
    pretrained: bool = False,
    cifar_stem: bool | None = None,
    head: str | None = None,
) -> nn.Module:
    """A ``torchvision.models`` classifier, its output layer sized from the task, with ``features``/``head``.

    Args:
        input_shape: ``(C, H, W)``; a first convolution for ``C != 3`` channels replaces the architecture's.
        num_outputs: classes (the head's output size).
        arch: a name of ``torchvision.models.list_models()`` (``resnet18``, ``vgg11_bn``, ``vit_b_16``, ...).
        pretrained: load the default ImageNet weights (downloaded by torchvision to its cache unless present),
            then replace the head.
        cifar_stem: the 32x32 stem for ResNets (3x3 stride-1 conv1, no max-pool); None: when H and W are <= 64.
        head: the head module's name; None: found automatically (:func:`~reglab.tasks.split.find_head`).

    Raises:
        ConfigError: torchvision missing, an unknown arch, weights that cannot be loaded, or a non-image task.
    """
    tv = _torchvision("the torchvision model")
    channels, height, width = _check_image_shape(input_shape, "torchvision")
    check_int("num_outputs", num_outputs, 1)
    if arch not in tv.models.list_models(module=tv.models):
        near = closest(str(arch), tv.models.list_models(module=tv.models))
        raise ConfigError(
            f"model.arch: torchvision has no classification model {arch!r}"
            + (f"; did you mean {near[0]!r}?" if near else "")
        )
    if pretrained:
        try:
            model = tv.models.get_model(arch, weights="DEFAULT")
        except Exception as err:  # no network, no cache: say so instead of a urllib traceback
            raise ConfigError(
                f"model.pretrained: cannot load the pretrained weights of {arch} ({type(err).__name__}: {err}); "
                "put them in torch's hub cache (TORCH_HOME) on a machine with network access, or set pretrained: false"
            ) from None
        _resize_head(model, num_outputs, head)
    else:
        model = tv.models.get_model(arch, num_classes=num_outputs)
    if cifar_stem is None:
        cifar_stem = max(height, width) <= 64 and arch.startswith(("resnet", "resnext", "wide_resnet"))
    if cifar_stem:
        _cifar_stem(model)
    _replace_first_conv(model, channels)
    return split_model(model, head)


def _resize_head(model: nn.Module, num_outputs: int, head: str | None) -> None:
    from reglab.tasks.split import find_head

    name = head or find_head(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(attr)
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"model.head: cannot resize {name!r}, a {type(old).__name__}; name the readout nn.Linear")
    setattr(parent, attr, nn.Linear(old.in_features, num_outputs, bias=old.bias is not None))


@MODELS.register("timm")
def timm_model(
    input_shape: Sequence[int],
    num_outputs: int,
    arch: str = "resnet18",
    pretrained: bool = False,
) -> nn.Module:
    """A ``timm`` model (``timm.create_model(arch, num_classes=num_outputs, in_chans=C)``) with ``features``/``head``.

    Raises:
        ConfigError: timm missing, an unknown arch, pretrained weights that cannot be loaded, or a non-image task.
    """
    try:
        import timm
    except ImportError as err:
        raise ConfigError(f"the timm model needs timm ({err}); pip install 'reglab[vision]'") from None
    channels, _, _ = _check_image_shape(input_shape, "timm")
    if not timm.is_model(arch):
        near = closest(str(arch), timm.list_models())
        raise ConfigError(f"model.arch: timm has no model {arch!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_outputs, in_chans=channels)
    except Exception as err:
        raise ConfigError(f"model: timm could not build {arch!r} ({type(err).__name__}: {err})") from None
    return split_model(model)
