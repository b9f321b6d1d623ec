"""Every registered probe declares its report section and a label for every metric it logs (registry-driven)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.mathtext import MathTextParser

from reglab import tasks
from reglab.diagnostics import REGISTRY, Probe, ReportSection
from reglab.losses import CrossEntropy
from reglab.train import Trainer

NAMES = REGISTRY.names()

#: Options under which each probe logs every metric it can (the optional ones: the Hessian trace, the ranks of
#: each weight matrix, the IBP bound), on few examples; probes not listed run with their defaults.
FULL = {
    "sharpness": {"trace": True, "n_examples": 64, "n_probes": 8},
    "effective_rank": {"weights": True},
    "lipschitz": {"n_points": 8, "radius": 0.05, "n_samples": 2, "ibp": True},
    "ntk_change": {"n_examples": 8},
    "random_sharpness": {"n_directions": 2, "max_examples": 64},
}


def _probe_class(name: str) -> type[Probe]:
    factory = REGISTRY.entry(name).factory
    assert isinstance(factory, type) and issubclass(factory, Probe), name
    return factory


@pytest.fixture(scope="module")
def logged() -> dict[str, set[str]]:
    """The metric names each registered probe logs in one short run of a ReLU MLP on two moons."""
    assert set(FULL) <= set(NAMES)
    task = tasks.get("two_moons", n=80, n_test=40)
    out = {}
    for name in NAMES:  # one probe per run, so that a metric name tells which probe logged it
        torch.manual_seed(0)
        model = task.make_model("mlp", width=8)
        probe = REGISTRY.get(name, every=2, **FULL.get(name, {}))
        opt, loss = torch.optim.SGD(model.parameters(), lr=0.1), CrossEntropy()
        result = Trainer(task, model, loss, opt, steps=2, batch_size=20, eval_every=2, callbacks=[probe]).fit()
        assert result.status == "done", name
        out[name] = {metric for _, split, metric, _ in result.history if split == "probe"}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_probe_declares_a_report_section(name):
    section = _probe_class(name).report_section
    assert isinstance(section, ReportSection), name
    assert section.key and section.key == section.key.lower() and section.key.replace("_", "").isalnum()
    assert section.title.strip() and section.description.strip() and isinstance(section.order, int)


def test_sections_are_shared_not_copied():
    """Probes of one section share one object: a key, or a page position, names exactly one section."""
    sections = {_probe_class(name).report_section for name in NAMES}
    assert len({s.key for s in sections}) == len(sections)
    assert len({s.order for s in sections}) == len(sections)


@pytest.mark.parametrize("name", NAMES)
def test_probe_labels_every_metric_it_logs_and_no_other(name, logged):
    probe = _probe_class(name)
    assert logged[name], f"{name} logged nothing"
    unlabelled = sorted(m for m in logged[name] if probe.label(m) is None)
    assert not unlabelled, f"{name} logs metrics without a label: {unlabelled}"
    exact = {key for key in probe.labels if not key.endswith("*")}
    assert exact <= logged[name], f"{name} labels metrics it never logs: {sorted(exact - logged[name])}"
    patterns = [key for key in probe.labels if key.endswith("*")]
    for key in patterns:
        assert any(m.startswith(key[:-1]) and m not in exact for m in logged[name]), (name, key)


@pytest.mark.parametrize("name", NAMES)
def test_labels_render_as_matplotlib_text(name, logged):
    parser = MathTextParser("path")
    for metric in sorted(logged[name]):
        label = _probe_class(name).label(metric)
        assert label and "{}" not in label
        if label.count("$") >= 2:
            parser.parse(label)  # raises ValueError on malformed mathtext


def test_a_metric_has_one_probe(logged):
    """No two probes label the same metric, so a metric's section and title do not depend on the registry order."""
    for metric in set().union(*logged.values()):
        owners = [name for name in NAMES if _probe_class(name).label(metric) is not None]
        assert len(owners) == 1, (metric, owners)


def test_label_patterns_and_undeclared_probes():
    class Custom(Probe):
        labels = {"custom/total": r"$\Sigma$", "custom/*": "part {}"}

        def measure(self, trainer):
            return {}

    assert Custom.label("custom/total") == r"$\Sigma$"  # an exact key wins over the pattern
    assert Custom.label("custom/layer.0") == "part layer.0"
    assert Custom.label("other") is None
    assert Custom.report_section is None and Probe.label("anything") is None
