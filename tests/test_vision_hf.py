"""Real data and real models: the torchvision task (FakeData, an ImageFolder of PNGs, CIFAR's missing-files error),
the hf_dataset task (a saved ``datasets.DatasetDict``), torchvision/timm models and ``split_model``, and the
CIFAR-10 example config started on FakeData."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reglab import tasks
from reglab.core import ConfigError, ShapeError
from reglab.experiments import parse_config
from reglab.experiments.config import read_yaml
from reglab.experiments.runner import build, make_trainer, train
from reglab.tasks import SplitModel, StreamedDataset, split_model

torchvision = pytest.importorskip("torchvision")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar10_resnet18_sam.yaml"


def fake(size=48, image_size=(3, 32, 32), **options):
    kwargs = {"size": size, "image_size": list(image_size)}
    return tasks.get("torchvision", dataset="FakeData", dataset_kwargs=kwargs, **options)


# --- the torchvision task --------------------------------------------------------------------------


def test_fakedata_task_is_streamed_normalized_and_augmented_for_training_only():
    task = fake(augment=True)
    assert isinstance(task.train, StreamedDataset) and task.num_classes == 10 and task.input_shape == (3, 32, 32)
    raw = torchvision.datasets.FakeData(size=48, image_size=(3, 32, 32))
    image, label = raw[5]
    expected = torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(
        torchvision.transforms.functional.to_tensor(image)
    )
    x_eval, y_eval, _ = task.train.for_eval()[5]
    assert torch.allclose(x_eval, expected) and int(y_eval) == label
    torch.manual_seed(0)
    augmented = [task.train[5][0] for _ in range(4)]
    assert any(not torch.equal(a, x_eval) for a in augmented)  # random crop/flip on the training view
    x_test, _, _ = task.test[5]
    assert not torch.equal(x_test, x_eval)  # the test split holds other images (random_offset)


def test_image_folder_of_pngs_is_read_by_torchvision(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    task = tasks.get("torchvision", dataset="ImageFolder", root=str(tmp_path), augment=False)
    assert task.num_classes == 2 and len(task.train) == 12 and len(task.test) == 6 and task.input_shape == (3, 12, 12)
    x, y, i = task.train[7]  # sorted by class: items 6..11 are dogs
    assert int(y) == 1 and x.shape == (3, 12, 12)
    resized = tasks.get("torchvision", dataset="ImageFolder", root=str(tmp_path), image_size=8)
    assert resized.input_shape == (3, 8, 8) and resized.train[0][0].shape == (3, 8, 8)


def test_missing_files_say_where_and_how():
    with pytest.raises(
        ConfigError,
        match=r"CIFAR10 files not found or not valid under '/nonexistent/cifar-10-batches-py'.*download: true",
    ):
        tasks.get("torchvision", dataset="CIFAR10", root="/nonexistent")
    with pytest.raises(ConfigError, match=r"ImageFolder tree '/nonexistent' does not exist"):
        tasks.get("torchvision", dataset="ImageFolder", root="/nonexistent")
    with pytest.raises(ConfigError, match="did you mean 'CIFAR10'"):
        tasks.get("torchvision", dataset="CIFAR-10", root="/nonexistent")


def test_a_config_with_missing_data_fails_before_training(tmp_path):
    cfg = parse_config({"task": {"name": "torchvision", "dataset": "CIFAR100", "root": str(tmp_path)}})
    with pytest.raises(ConfigError, match="task: CIFAR100 files not found"):
        build(cfg)


# --- models and split_model ------------------------------------------------------------------------


def test_torchvision_resnet_with_cifar_stem_and_features_head():
    torch.manual_seed(0)
    model = tasks.MODELS.get("torchvision", (3, 32, 32), 7, arch="resnet18")
    assert isinstance(model, SplitModel) and model.head_name == "fc" and model.feature_dim == 512
    assert model.model.conv1.kernel_size == (3, 3) and isinstance(model.model.maxpool, nn.Identity)
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    h = model.features(x)
    assert h.shape == (3, 512) and torch.equal(model(x), model.head(h))
    assert isinstance(model.model.fc, nn.Linear) and model.model.fc.out_features == 7  # head put back
    big = tasks.MODELS.get("torchvision", (1, 96, 96), 4, arch="resnet18")
    assert big.model.conv1.kernel_size == (7, 7) and big.model.conv1.in_channels == 1  # grayscale, ImageNet stem


def test_split_model_finds_heads_of_other_architectures():
    vgg = torchvision.models.vgg11(num_classes=5)
    split = split_model(vgg)
    assert split.head_name == "classifier.6" and split.feature_dim == 4096
    mobile = split_model(torchvision.models.mobilenet_v3_small(num_classes=5))
    assert mobile.head_name == "classifier.3"
    x = torch.randn(2, 3, 64, 64)
    mobile.eval()
    assert torch.equal(mobile(x), mobile.head(mobile.features(x)))

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.body(x))

    mine = split_model(Mine(), head="out")
    assert mine.features(torch.randn(4, 3, 4)).shape == (4, 6)
    with pytest.raises(ConfigError, match="has no submodule 'fc'; name the readout module, e.g. 'out'"):
        split_model(Mine(), head="fc")
    ref = tasks.MODELS.get("mlp", (4,), 3)
    assert split_model(ref) is ref  # reference models have the pair already


def test_timm_model_entry():
    pytest.importorskip("timm")
    model = tasks.MODELS.get("timm", (3, 32, 32), 6, arch="resnet18")
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert model(x).shape == (2, 6) and torch.equal(model(x), model.head(model.features(x)))
    with pytest.raises(ConfigError, match="timm has no model"):
        tasks.MODELS.get("timm", (3, 32, 32), 6, arch="resnet_eighteen")


def test_representation_probes_on_a_resnet_over_streamed_images():
    cfg = parse_config(
        {
            "task": {
                "name": "torchvision",
                "dataset": "FakeData",
                "dataset_kwargs": {"size": 40, "image_size": [3, 16, 16]},
            },
            "model": {"name": "torchvision", "arch": "resnet18"},
            "penalties": [{"name": "nc_within", "weight": 1.0e-3}],
            "optimizer": {"name": "sgd", "lr": 0.01},
            "probes": [
                {"name": "neural_collapse", "every": 2, "max_examples": 20},
                {"name": "calibration", "every": 2},
            ],
            "train": {"steps": 2, "batch_size": 8, "eval_every": 2, "device": "cpu"},
        }
    )
    outcome, history = train(cfg)
    assert outcome.status == "done", outcome.error
    probes = {name for _, split, name, _ in history if split == "probe"}
    assert "neural_collapse/nc1" in probes and "calibration/ece" in probes


# --- Hugging Face datasets -------------------------------------------------------------------------


@pytest.fixture
def saved_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"x": datasets.Sequence(datasets.Value("float32")), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )

    def split(n):
        return datasets.Dataset.from_dict(
            {"x": rng.normal(size=(n, 5)).astype(np.float32).tolist(), "label": rng.integers(0, 3, n).tolist()},
            features=features,
        )

    path = tmp_path / "saved"
    datasets.DatasetDict({"train": split(40), "test": split(12)}).save_to_disk(str(path))
    return path


def test_hf_dataset_from_a_saved_dataset_dict(saved_hf):
    task = tasks.get("hf_dataset", path=str(saved_hf), input_column="x", label_column="label")
    assert task.num_classes == 3 and task.input_shape == (5,) and len(task.train) == 40 and len(task.test) == 12
    x, y, i = task.train[3]
    assert x.dtype == torch.float32 and y.dtype == torch.long and i == 3
    cfg = parse_config(
        {
            "task": {"name": "hf_dataset", "path": str(saved_hf), "input_column": "x"},
            "model": {"name": "mlp", "width": 8},
            "train": {"steps": 4, "batch_size": 8, "eval_every": 2},
        }
    )
    outcome, _ = train(cfg)
    assert outcome.status == "done", outcome.error


def test_hf_dataset_errors_name_the_field(saved_hf, tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(ConfigError, match="task.path: the dataset folder .* does not exist"):
        tasks.get("hf_dataset", path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"task.input_column: no column 'image'.*columns: \['x', 'label'\]"):
        tasks.get("hf_dataset", path=str(saved_hf))
    with pytest.raises(ConfigError, match="task.test_split: .* has no split 'valid'; its splits: train, test"):
        tasks.get("hf_dataset", path=str(saved_hf), input_column="x", test_split="valid")


def test_hf_labels_out_of_range_are_found_when_the_task_is_built(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"x": [[0.0, 1.0]] * 4, "label": [0, 1, 2, 9]}
    path = tmp_path / "bad"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(data), "test": datasets.Dataset.from_dict(data)}
    ).save_to_disk(str(path))
    with pytest.raises(ShapeError, match=r"train\[3\]: label 9 is outside \[0, num_classes\) = \[0, 4\)"):
        tasks.get("hf_dataset", path=str(path), input_column="x", num_classes=4)


# --- the CIFAR-10 example ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cifar10_example_parses_and_starts_on_fakedata():
    from reglab.experiments.study import parse_study

    data = read_yaml(EXAMPLE)
    assert data["base"]["task"]["dataset"] == "CIFAR10" and data["base"]["train"]["precision"] == "bf16"
    assert {c.run_name for c in parse_study(data).expand()} == {"sgd", "sam"}
    fake_task = {
        "name": "torchvision",
        "dataset": "FakeData",
        "dataset_kwargs": {"size": 24, "image_size": [3, 32, 32]},
    }
    # float32 on the CPU: without bf16 instructions its convolutions are far slower (43 s for this test's evaluations)
    short = {"steps": 2, "batch_size": 8, "eval_every": 2, "device": "cpu", "precision": "32", "num_workers": 0}
    data["base"] = {
        **data["base"],
        "task": fake_task,
        "train": {**data["base"]["train"], **short},
        "probes": [
            {**p, "every": 2, **({"n_examples": 8, "tol": 0.1} if p["name"] == "sharpness" else {})}
            for p in data["base"]["probes"]
        ],
    }
    for cfg in parse_study(data).expand():
        result = make_trainer(cfg, build(cfg)).fit()
        assert result.status == "done" and result.steps == 2
        probes = {name for _, split, name, _ in result.history if split == "probe"}
        assert {"sharpness", "calibration/ece"} <= probes
