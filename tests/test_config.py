"""Config and study validation: errors name the field path and suggest the fix."""

from __future__ import annotations

import numpy as np
import pytest

from reglab import tasks
from reglab.core import ConfigError, UnknownNameError
from reglab.experiments.config import deep_merge, load_config, parse_config
from reglab.experiments.runner import build_all
from reglab.experiments.study import parse_study
from reglab.penalties import L2

BASE = {"task": {"name": "two_moons", "n": 100, "n_test": 50}, "train": {"steps": 5}}


def test_minimal_config_fills_defaults():
    cfg = parse_config(BASE)
    assert cfg.optimizer.name == "adam" and cfg.train.batch_size == 128 and cfg.loss is None
    assert cfg.task.kwargs == {"n": 100, "n_test": 50}


@pytest.mark.parametrize(
    "patch, message",
    [
        (
            {"penalties": [{"name": "l2", "weight": 1e-4}, {"name": "l3", "weight": 1.0}]},
            r"penalties\[1\]\.name: unknown penalty 'l3'; did you mean 'l2'",
        ),
        ({"optimizer": {"name": "adamm"}}, r"optimizer\.name: unknown optimizer 'adamm'; did you mean 'adam'"),
        (
            {"loss": {"name": "label_smothing"}},
            r"loss\.name: unknown loss 'label_smothing'; did you mean 'label_smoothing'",
        ),
        ({"task": {"name": "mnist_1d"}}, r"task\.name: unknown task 'mnist_1d'; did you mean 'mnist1d'"),
        ({"model": {"name": "cnn"}}, r"model\.name: unknown model 'cnn'"),
        ({"transforms": [{"name": "label_nois", "rate": 0.2}]}, r"transforms\[0\]\.name: .*'label_noise'"),
        ({"augment": [{"name": "gausian_noise"}]}, r"augment\[0\]\.name: .*'gaussian_noise'"),
        ({"probes": [{"name": "weight_nrm"}]}, r"probes\[0\]\.name: .*'weight_norm'"),
    ],
)
def test_unknown_names_name_field_and_suggest(patch, message):
    with pytest.raises(UnknownNameError, match=message):
        parse_config(deep_merge(BASE, patch))


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"trian": {"steps": 3}}, r"trian: unknown key; did you mean 'train'"),
        ({"train": {"stesp": 3}}, r"train\.stesp: unknown key; did you mean 'steps'"),
        ({"train": {"steps": -3}}, r"train\.steps: .*greater than or equal to 0"),
        ({"train": {"batch_size": "half"}}, r"train\.batch_size"),
        (
            {"penalties": [{"name": "l2", "wieght": 0.1}]},
            r"penalties\[0\]: penalty 'l2' .*'wieght'; did you mean 'weight'",
        ),
        ({"penalties": [{"name": "l2"}]}, r"penalties\[0\]: penalty 'l2' needs the argument 'weight'"),
        (
            {"optimizer": {"name": "sgd", "learning_rate": 0.1}},
            r"optimizer: optimizer 'sgd' has no argument 'learning_rate'",
        ),
        (
            {"task": {"name": "two_moons", "noize": 0.1}},
            r"task: task 'two_moons' has no argument 'noize'; did you mean 'noise'",
        ),
    ],
)
def test_bad_keys_name_field(patch, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(deep_merge(BASE, patch))


def test_config_hash_ignores_name_and_tracks_everything_else():
    a = parse_config(BASE)
    assert a.config_hash() == parse_config({**BASE, "name": "other"}).config_hash()
    assert a.config_hash() != parse_config(deep_merge(BASE, {"train": {"seed": 1}})).config_hash()
    assert len(a.config_hash()) == 16


def test_load_config_uses_safe_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_study_expands_variants_times_seeds():
    study = parse_study(
        {
            "study": "s",
            "base": BASE,
            "seeds": [0, 3],
            "variants": {"plain": {}, "l2": {"penalties": [{"name": "l2", "weight": 0.1}]}},
        }
    )
    runs = study.expand()
    assert [(r.name, r.train.seed) for r in runs] == [("plain", 0), ("plain", 3), ("l2", 0), ("l2", 3)]
    assert runs[2].penalties[0].kwargs == {"weight": 0.1} and runs[0].penalties == []
    assert len({r.config_hash() for r in runs}) == 4


def test_study_errors_name_the_variant():
    with pytest.raises(ConfigError, match=r"run 'bad'.*penalties\[0\]\.name"):
        parse_study(
            {"study": "s", "base": BASE, "variants": {"bad": {"penalties": [{"name": "l9", "weight": 1}]}}}
        ).expand()
    with pytest.raises(ConfigError, match="unknown key 'variant'"):
        parse_study({"study": "s", "base": BASE, "variant": {}})
    with pytest.raises(ConfigError, match="seeds"):
        parse_study({"study": "s", "base": BASE, "seeds": [-1]})


def test_deep_merge_merges_dicts_and_replaces_lists():
    merged = deep_merge({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2]}, "c": 3})
    assert merged == {"a": {"x": 1, "y": [2]}, "b": 1, "c": 3}


def test_shipped_examples_are_valid():
    from pathlib import Path

    from reglab.experiments.config import read_yaml
    from reglab.experiments.study import is_study

    examples = sorted((Path(__file__).parents[1] / "reglab" / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        data = read_yaml(path)
        (parse_study(data).expand() if is_study(data) else [parse_config(data)])


def test_study_null_variant_and_seed_list_rules():
    study = parse_study({"study": "s", "base": BASE, "variants": {"plain": None}})
    assert [r.name for r in study.expand()] == ["plain"]
    for seeds in ([], [1, 1]):
        with pytest.raises(ConfigError, match="non-empty list of distinct seeds"):
            parse_study({"study": "s", "base": BASE, "seeds": seeds})


def test_config_hash_fills_defaults_and_ignores_int_float_spelling():
    a = parse_config(deep_merge(BASE, {"optimizer": {"name": "sgd", "lr": 0.1}}))
    b = parse_config(deep_merge(BASE, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0}}))
    c = parse_config(deep_merge(BASE, {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}))
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_schedule_entry_is_validated_built_and_stepped():
    from reglab.experiments.runner import build, make_trainer

    cfg = parse_config(
        {
            "task": {"name": "two_moons", "n": 60, "n_test": 20},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "schedule": {"name": "linear", "warmup_steps": 2},
            "train": {"steps": 10, "eval_every": 5},
        }
    )
    built = build(cfg)
    assert built.scheduler.total_steps == 10  # filled from train.steps
    make_trainer(cfg, built).fit()
    assert built.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # decayed to 0 at the last step
    with pytest.raises(ConfigError, match=r"schedule\.name: unknown schedule 'cosine'"):
        parse_config({"task": {"name": "two_moons"}, "schedule": {"name": "cosine"}})
    with pytest.raises(ConfigError, match="warmup"):
        parse_config({"task": {"name": "two_moons"}, "schedule": {"name": "linear", "warmupsteps": 2}})
    # a config without a schedule keeps the hash it had before schedules existed
    assert parse_config({"task": {"name": "two_moons"}}).config_hash() == "ada812a6ce1c0c36"


def test_a_wrappers_base_is_hashed_with_its_defaults():
    """``base: sgd``, ``{name: sgd}`` and ``{name: sgd, momentum: 0}`` are the same run; another lr is not."""

    def h(optimizer):
        return parse_config({"task": {"name": "two_moons"}, "optimizer": optimizer}).config_hash()

    same = {
        h({"name": "sam", "rho": 0.05}),
        h({"name": "sam", "base": "sgd"}),
        h({"name": "sam", "base": {"name": "sgd"}}),
        h({"name": "sam", "base": {"name": "sgd", "momentum": 0}}),
    }
    assert len(same) == 1
    assert h({"name": "sam", "base": {"name": "sgd", "lr": 0.2}}) not in same


# --- bad values fail early, naming the field -----------------------------------------------------

BAD_VALUES_BASE = {"task": {"name": "two_moons", "n": 100, "n_test": 50}, "train": {"steps": 5}}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"optimizer": {"name": "sgd", "lr": "1e-3"}}, r"optimizer\.lr: '1e-3' is text, not a number"),
        ({"penalties": [{"name": "l2", "weight": "1e-4"}]}, r"penalties\[0\]\.weight: '1e-4' is text"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size"),
        ({"train": {"steps": True}}, r"train\.steps"),
        ({"train": {"seed": 2**70}}, r"train\.seed"),
    ],
)
def test_bad_values_fail_at_parse_time_with_the_field(patch, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(deep_merge(BAD_VALUES_BASE, patch))


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"transforms": [{"name": "label_noise", "rate": 1.5}]}, r"transforms\[0\]: rate must be in \[0, 1\)"),
        ({"penalties": [{"name": "l2", "weight": -1.0}]}, r"penalties\[0\]: L2 weight must be >= 0"),
        ({"model": {"name": "mlp", "width": 0}}, r"model: width must be an int >= 1"),
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, r"optimizer: Invalid learning rate"),
    ],
)
def test_bad_values_fail_before_training_with_run_and_field(patch, message):
    cfg = parse_config(deep_merge(BAD_VALUES_BASE, {"name": "r", **patch}))
    with pytest.raises(ConfigError, match=r"run 'r' \(seed 0\): " + message):
        build_all([cfg])


def test_numpy_scalars_are_accepted():
    assert L2(np.float64(0.1)).weight == pytest.approx(0.1)
    assert len(tasks.subset(tasks.get("two_moons", n=100, n_test=50), np.int64(5)).train) == 5


# --- run-provided arguments: one table for what a config may omit and what build fills ---------------------------


def test_run_arguments_fill_every_factory_that_takes_them_and_the_config_wins():
    from reglab.experiments.config import FILLED_FIELDS, RUN_ARGUMENTS
    from reglab.experiments.runner import build

    cfg = parse_config(
        {
            "task": {"name": "two_moons", "n": 60, "n_test": 20},
            "model": {"name": "mlp", "width": 8},
            "loss": {"name": "elr"},  # needs num_examples and num_classes: filled from the task
            "penalties": [{"name": "center_loss", "weight": 0.1}],  # needs num_classes
            "optimizer": {"name": "sam", "rho": 0.05},  # takes model: the built one
            "schedule": {"name": "linear", "total_steps": 4},  # a config value wins over train.steps
            "augment": [{"name": "mixup", "num_classes": 2}],
            "train": {"steps": 10},
        }
    )
    built = build(cfg)
    assert built.loss.running_targets.shape == (60, 2)  # ELR's per-example targets
    assert built.penalty.num_classes == 2
    assert built.optimizer.model is built.model  # BatchNorm statistics protected in config runs
    assert built.scheduler.total_steps == 4
    assert set(RUN_ARGUMENTS) == {"num_examples", "num_classes", "model", "total_steps"}
    assert set(FILLED_FIELDS) <= set(type(cfg).model_fields)


def test_an_argument_a_method_gained_keeps_old_hashes_at_its_default():
    """GSAM gained ``eta``; a gsam config without it hashes as it did before (computed at commit 90de699)."""
    cfg = {"task": {"name": "two_moons"}, "optimizer": {"name": "gsam"}, "train": {"steps": 10}}
    assert parse_config(cfg).config_hash() == "94f714750daf5e46"
    with_eta = deep_merge(cfg, {"optimizer": {"eta": 0.01}})
    assert parse_config(with_eta).config_hash() != "94f714750daf5e46"
