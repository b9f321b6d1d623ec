"""The HTML report: confidence intervals, escaping, probe sections, unfinished runs and empty stores."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image
from scipy import stats

from reglab.core import StoreError
from reglab.diagnostics import REGISTRY
from reglab.experiments import Store, write_report
from reglab.experiments.report import mean_ci, probe_sections, summary_table

NASTY = "<script>alert(1)</script>"

#: Textbook two-sided 95% Student-t quantiles t_{0.975, dof} (independent of scipy), 3 decimals.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def _run(store, name, seed, status="done", metrics=(), config=None, error=None, study=None):
    config = config if config is not None else {"task": {"name": "fake"}, "optimizer": {"name": "sgd", "lr": 0.1}}
    config = {**config, "train": {"seed": seed}}
    run = store.create_run(config, name=name, config_hash=f"{name}-{seed}", seed=seed, study=study)
    store.start_run(run)
    store.log_metrics(run, list(metrics))
    store.finish_run(run, status, step=10, error=error)
    return run


def _curves(final_acc, steps=(0, 5, 10)):
    rows = []
    for step in steps:
        frac = step / steps[-1]
        rows += [
            (step, "train", "loss", 1.0 - 0.5 * frac),
            (step, "test", "loss", 1.1 - 0.5 * frac),
            (step, "train", "accuracy", 0.5 + (final_acc - 0.5) * frac),
            (step, "test", "accuracy", 0.4 + (final_acc - 0.4) * frac),
        ]
    return rows


def _img_sources(text):
    return re.findall(r'<img src="([^"]+)"', text)


def _assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 5  # something is drawn, not a blank canvas


# ------------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_mean_ci_matches_scipy_t_interval(n):
    values = np.random.default_rng(n).normal(3.0, 0.7, size=n)
    cell = mean_ci(values)
    low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values))
    assert cell.n == n
    assert cell.mean == pytest.approx(values.mean(), rel=1e-12)
    assert cell.std == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (cell.low, cell.high) == pytest.approx((low, high), rel=1e-10)
    # the quantile itself, against a printed table (3 decimals)
    assert cell.half / (cell.std / math.sqrt(n)) == pytest.approx(T_TABLE[n - 1], abs=5e-4)
    assert str(cell) == f"{cell.mean:.4f} ± {cell.half:.4f}"


def test_mean_ci_single_and_no_value_and_non_finite():
    one = mean_ci([0.25])
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.half) and str(one) == "0.2500 (n=1)"
    assert "n=1" in one.detail
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean) and str(none) == "–"
    mixed = mean_ci([1.0, float("nan"), 3.0, float("inf")])  # non-finite values are left out
    assert mixed.n == 2 and mixed.mean == 2.0
    assert mixed.half == pytest.approx(12.7062, abs=1e-4)  # t_{0.975,1} · s/√n with s/√n = √2/√2 = 1
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_summary_table_ci_over_done_seeds_only(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        for seed, acc in enumerate((0.7, 0.8, 0.9)):
            _run(store, "m", seed, metrics=_curves(acc))
        # a diverged run with a finite last value and a failed one: neither enters the statistics
        _run(store, "m", 3, "diverged", metrics=_curves(0.1), error="loss is nan at step 7")
        _run(store, "m", 4, "failed", error="ValueError: bad")
        (row,) = summary_table(store.to_frame(), store.runs_frame())
    assert row["runs"] == 5 and row["seeds"] == 5
    assert row["counts"] == {"done": 3, "diverged": 1, "failed": 1}
    cell = row["test/accuracy"]
    expected = stats.t.interval(0.95, 2, loc=0.8, scale=stats.sem([0.7, 0.8, 0.9]))
    assert cell.n == 3 and cell.mean == pytest.approx(0.8) and (cell.low, cell.high) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ the page


def test_report_escapes_names_config_values_errors_and_metric_names(tmp_path):
    evil_value = '"><img src=x onerror=alert(2)>'
    with Store(tmp_path / "runs.db") as store:
        config = {"task": {"name": "fake", "note": evil_value}, "optimizer": {"name": "sgd", "lr": 0.1}}
        for seed in (0, 1):
            _run(store, NASTY, seed, metrics=_curves(0.8), config=config)
        # "$...$" would be mathtext to matplotlib, and a malformed one raise: names are drawn literally
        metrics = [*_curves(0.6), (10, "test", "<b>bold</b>", 1.0), (10, "probe", "odd/$\\frac$", 2.0)]
        _run(store, "other $\\frac$", 0, metrics=metrics)
        _run(store, NASTY, 2, "failed", config=config, error="ValueError: <i>bad</i> rate\nTraceback ...")
        index = write_report(store, tmp_path / "rep", title="t <u>x</u>")
    text = index.read_text()
    for raw in (NASTY, "<i>bad</i>", "<b>bold</b>", "<u>x</u>"):
        assert raw not in text and str(escape(raw)) in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text  # in the configs
    assert text.count("<script") == 1  # the report's own sorting script, nothing else
    assert "ValueError: &lt;i&gt;bad&lt;/i&gt; rate" in text  # the first line of the error
    assert "other $\\frac$" in text and (tmp_path / "rep" / "curve_probe_odd.png").is_file()


def test_report_table_shows_ci_seeds_and_status_counts(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        for seed, acc in enumerate((0.7, 0.8, 0.9)):
            _run(store, "three", seed, metrics=_curves(acc))
        _run(store, "single", 0, metrics=_curves(0.5), config={"task": {"name": "fake"}, "optimizer": {"lr": 1.0}})
        index = write_report(store, tmp_path / "rep")
    text = index.read_text()
    table = text.split('id="results-table"')[1].split("</table>")[0]
    half = stats.t.ppf(0.975, 2) * stats.sem([0.7, 0.8, 0.9])
    assert f"0.8000 ± {half:.4f}" in table
    assert "0.5000 (n=1)" in table
    assert "<th>seeds</th>" in table and all(f"<th>{s}</th>" in table for s in ("done", "diverged", "failed"))
    assert "optimizer.lr=" in table  # the config values in which the methods differ


def test_report_with_probes_has_a_section_and_a_png_per_probe_family(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        for seed in (0, 1):
            probe = []
            for step in (0, 5, 10):
                probe += [
                    (step, "probe", "sharpness", 5.0 + step + seed),
                    (step, "probe", "stability_threshold", 20.0),
                    (step, "probe", "calibration/ece", 0.1 / (1 + step)),
                    (step, "probe", "neural_collapse/nc1", 10.0 ** (-step / 5)),
                    (step, "probe", "lipschitz/product_bound", 100.0 + step),
                    (step, "probe", "lipschitz/sampled_lower", 2.0),
                    (step, "probe", "brand_new/thing", float(step)),
                ]
            _run(store, "m", seed, metrics=[*_curves(0.8), *probe])
        index = write_report(store, tmp_path / "rep")
    text = index.read_text()
    for key in ("sharpness", "calibration", "neural_collapse", "lipschitz", "brand_new"):
        assert f'id="probe-{key}"' in text
        _assert_png(tmp_path / "rep" / f"curve_probe_{key}.png")
    assert "Sharpness and the edge of stability" in text and "brand_new/thing" in text
    sources = _img_sources(text)
    assert len(sources) == 4 + 5  # four learning curves and one figure per probe section
    for src in sources:
        assert "/" not in src  # beside index.html, referenced relatively
        _assert_png(tmp_path / "rep" / src)


def test_probe_sections_place_every_name_once_with_special_panels():
    names = [
        "sharpness",
        "stability_threshold",
        "sharpness_trace",
        "calibration/ece",
        "neural_collapse/nc1",
        "lipschitz/product_bound",
        "lipschitz/sampled_lower",
        "effective_rank/features",
        "stable_rank/features",
        "weight_norm",
        "gradient_coherence/alpha",
        "grokking/sc_fraction",
        "ntk_change/alignment",
        "lonely",
    ]
    sections = probe_sections(names)
    keys = [s.key for s in sections]
    assert keys == [
        "sharpness",
        "calibration",
        "neural_collapse",
        "lipschitz",
        "rank",
        "weight_norm",
        "gradients",
        "ntk_change",
        "other",
    ]
    placed = [m for s in sections for m in s.metrics]
    assert sorted(placed) == sorted(names)
    sharp = sections[0].panels
    assert sharp[0].metrics == ("probe/sharpness",) and sharp[0].threshold == "probe/stability_threshold"
    assert sharp[1].hline == 1.0  # λ_max·η/2 against the edge of stability
    assert sections[2].panels[0].log is True  # neural collapse on a log scale
    (lip,) = sections[3].panels  # upper and lower bounds in one panel
    assert lip.metrics == ("probe/lipschitz/product_bound", "probe/lipschitz/sampled_lower")


#: The section titles, in page order, and the axes titles the report showed when both were hard-coded in it; the
#: probes declare them now (``report_section``, ``labels``) and the same store must give the same report.
BEFORE_SECTIONS = {
    "sharpness": "Sharpness and the edge of stability",
    "calibration": "Calibration",
    "neural_collapse": "Neural collapse",
    "lipschitz": "Lipschitz constant",
    "rank": "Effective and stable rank",
    "weight_norm": "Weight norm",
    "gradients": "Gradient statistics",
}
BEFORE_LABELS = {
    "sharpness": r"$\lambda_{\max}$ (sharpness) and $2/\eta$",
    "sharpness_trace": r"tr$(H)$ (Hessian trace)",
    "stability_threshold": r"stability limit $2/\eta$",
    "sharpness_1d": "random-direction sharpness (max)",
    "sharpness_1d_mean": "random-direction sharpness (mean)",
    "calibration/ece": "ECE (equal-width bins)",
    "calibration/ece_equal_mass": "ECE (equal-mass bins)",
    "calibration/mce": "MCE (max calibration error)",
    "calibration/nll": "NLL",
    "calibration/brier": "Brier score",
    "calibration/aurc": "AURC (risk-coverage)",
    "neural_collapse/nc1": "NC1: within-class variability",
    "neural_collapse/nc2_equinorm": "NC2: equinorm",
    "neural_collapse/nc2_equiangle": "NC2: equiangularity",
    "neural_collapse/nc2_maxangle": "NC2: max-angle",
    "neural_collapse/nc2_etf": "NC2: distance to simplex ETF",
    "neural_collapse/nc3": "NC3: self-duality",
    "neural_collapse/nc4": "NC4: NCC disagreement",
    "weight_norm": r"$\|\theta\|_2$",
    "gradient_coherence/alpha": r"gradient coherence $\alpha$",
    "gradient_coherence/m_coherence": "m-coherence",
    "gradient_noise_scale/b_simple": r"$B_{simple}$ = tr$(\Sigma)/|G|^2$",
    "gradient_noise_scale/trace_sigma": r"tr$(\Sigma)$",
    "gradient_noise_scale/grad_sq_norm": r"$|G|^2$",
    "grokking/nlm_cosine": "NLM cosine",
    "grokking/sc_fraction": "Softmax-Collapse fraction",
    "grokking/zero_loss_fraction": "zero-loss fraction",
    "grokking/weight_norm": r"$\|\theta\|_2$",
    "grokking/effective_lr": "effective learning rate",
}


def test_report_sections_and_labels_are_the_ones_the_probes_declare(tmp_path):
    """A store with the metrics of every registered probe gives the sections and axes titles it always gave."""
    names = [*BEFORE_LABELS, "lipschitz/product_bound", "lipschitz/sampled_lower", "lipschitz/ibp_bound"]
    names += ["effective_rank/features", "stable_rank/features", "effective_rank/0.weight", "ntk_change/alignment"]
    with Store(tmp_path / "runs.db") as store:
        for seed in (0, 1):
            probe = [(step, "probe", name, 1.0 + step + seed) for step in (0, 5, 10) for name in names]
            _run(store, "m", seed, metrics=[*_curves(0.8), *probe])
        index = write_report(store, tmp_path / "rep")
    text = index.read_text()
    sections = probe_sections(names)
    assert [s.key for s in sections] == [*BEFORE_SECTIONS, "ntk_change"]  # NTK change was grouped by its prefix
    for section in sections:
        assert f'id="probe-{section.key}"' in text and str(escape(section.title)) in text
        assert str(escape(section.description)) in text
        _assert_png(tmp_path / "rep" / f"curve_probe_{section.key}.png")
    assert {s.key: s.title for s in sections if s.key in BEFORE_SECTIONS} == BEFORE_SECTIONS
    titles = {p.metrics[0].split("/", 1)[1]: p.title for s in sections for p in s.panels if len(p.metrics) == 1}
    for name, label in BEFORE_LABELS.items():
        if name != "stability_threshold":  # drawn as the dashed threshold of the sharpness panel
            assert titles[name] == label, name
    assert titles["_eos_ratio"] == r"$\lambda_{\max}\cdot\eta/2$ (1 = edge of stability)"
    assert REGISTRY.entry("sharpness").factory.label("stability_threshold") == BEFORE_LABELS["stability_threshold"]
    assert titles["effective_rank/0.weight"] == "effective rank of 0.weight"
    (lipschitz,) = next(s for s in sections if s.key == "lipschitz").panels  # bounds in one panel, as before
    assert lipschitz.title == "Lipschitz bounds" and len(lipschitz.metrics) == 3


def test_unfinished_runs_are_listed_and_do_not_break_the_statistics(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        _run(store, "ok", 0, metrics=_curves(0.8))
        _run(store, "ok", 1, metrics=_curves(0.6))
        _run(
            store,
            "ok",
            2,
            "diverged",
            metrics=[(0, "train", "loss", 1.0), (5, "train", "loss", math.inf)],
            error="loss is inf at step 5",
        )
        _run(store, "broken", 0, "failed", error="ValueError: rate must be in [0, 1]\nTraceback (most recent ...)")
        _run(
            store, "stopped", 0, "interrupted", metrics=[(0, "test", "accuracy", 0.3)], error="interrupted by the user"
        )
        index = write_report(store, tmp_path / "rep")
        (ok,) = [r for r in summary_table(store.to_frame(), store.runs_frame()) if r["name"] == "ok"]
    text = index.read_text()
    unfinished = text.split('id="unfinished-table"')[1].split("</table>")[0]
    for line in ("loss is inf at step 5", "ValueError: rate must be in [0, 1]", "interrupted by the user"):
        assert line in unfinished
    assert "Traceback" in unfinished.split("<details>")[1]  # the rest of the message is folded away
    assert ok["test/accuracy"].n == 2 and ok["test/accuracy"].mean == pytest.approx(0.7)
    broken_row = [r for r in text.split("<tr>") if r.startswith('<td class="text">broken</td>')][0]
    assert broken_row.count("–") == 4  # no finished run: no value in any metric column, no crash
    _assert_png(tmp_path / "rep" / "curve_test_accuracy.png")


def test_report_of_empty_store_or_unknown_study_says_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="no runs; run `reglab run CONFIG`"):
        write_report(tmp_path / "empty.db", tmp_path / "r")
    with Store(tmp_path / "runs.db") as store:
        _run(store, "m", 0, metrics=_curves(0.8), study="sweep_a")
        with pytest.raises(StoreError, match="no runs for study 'sweep_b'.*'sweep_a'"):
            write_report(store, tmp_path / "r", study="sweep_b")
    assert not (tmp_path / "r" / "index.html").exists()


def test_report_of_runs_without_metrics_explains_the_empty_page(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        _run(store, "early", 0, "failed", error="ConfigError: unknown task")
        index = write_report(store, tmp_path / "rep")
    text = index.read_text()
    assert "No run logged any metric yet" in text and "ConfigError: unknown task" in text
    assert _img_sources(text) == []


def test_rewriting_a_report_removes_figures_it_no_longer_draws(tmp_path):
    with Store(tmp_path / "a.db") as store:
        _run(store, "m", 0, metrics=[*_curves(0.8), (10, "probe", "weight_norm", 3.0)])
        write_report(store, tmp_path / "rep")
    assert (tmp_path / "rep" / "curve_probe_weight_norm.png").is_file()
    with Store(tmp_path / "b.db") as store:
        _run(store, "m", 0, metrics=_curves(0.8))
        write_report(store, tmp_path / "rep")
    assert not (tmp_path / "rep" / "curve_probe_weight_norm.png").exists()
