"""A self-contained HTML report of the runs in a store.

:func:`write_report` writes ``index.html`` and the PNG figures it shows into one
directory; the page loads nothing from the network (CSS and its small
table-sorting script are inline, images are files beside it). It shows:

- per method (runs whose configs differ only in the seed), the final metrics as
  mean ± 95% confidence interval over the seeds that finished, with the number
  of seeds and the status counts, in a sortable table;
- learning curves (train/test loss and accuracy against step), mean over seeds
  with a band from the seeds' minimum to maximum;
- one section per probe that logged metrics (split ``probe``): the edge of
  stability (λ_max against 2/η), calibration, neural collapse, Lipschitz bounds,
  ranks, weight norm, gradient statistics, and any other metric generically,
  grouped by the prefix of its name (``prefix/metric``);
- for a search study (``reglab tune``), the search: the objective of every
  trial against its number (pruned trials at the value they were stopped at,
  the best so far as a line), the parameter importances and a table of the
  trials with their parameters and runs, read from the study's Optuna record
  beside the store (:func:`reglab.experiments.tune.load_search`);
- the runs that did not finish, with the first line of their error, and every
  run with its config.

Run names, metric names, config values and error texts are HTML-escaped (jinja2
autoescape).

Example::

    from reglab.experiments import Store, write_report

    with Store("runs.db") as store:
        index = write_report(store, "reglab-report", study="demo")
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats as _stats

from reglab import __version__  # noqa: E402
from reglab.core import StoreError  # noqa: E402
from reglab.diagnostics import REGISTRY, Probe, ReportSection  # noqa: E402
from reglab.experiments.store import FINAL_STATUSES, Store  # noqa: E402

__all__ = [
    "CURVES",
    "TABLE_METRICS",
    "Cell",
    "Panel",
    "Section",
    "config_differences",
    "draw_panels",
    "final_values",
    "label_groups",
    "mean_ci",
    "plot_curve",
    "probe_sections",
    "summary_table",
    "table_columns",
    "write_report",
]

#: (split, name) of the final metrics shown first in the table, in column order; other ``test`` metrics follow.
TABLE_METRICS = (("test", "accuracy"), ("test", "loss"), ("train", "accuracy"), ("train", "loss"))
#: (split, name, title, log-scale) of the learning curves drawn, one PNG each.
CURVES = (
    ("train", "loss", "train loss", True),
    ("test", "loss", "test loss", True),
    ("train", "accuracy", "train accuracy", False),
    ("test", "accuracy", "test accuracy", False),
)
#: Confidence level of the intervals in the table.
CONFIDENCE = 0.95
#: Most panels drawn in one PNG; a section with more gets several PNGs.
MAX_PANELS = 9

# Probe metric derived by the report: λ_max · η / 2 (1 at the edge of stability), and its axes title.
_EOS_RATIO = "probe/_eos_ratio"
_EOS_RATIO_LABEL = r"$\lambda_{\max}\cdot\eta/2$ (1 = edge of stability)"


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass
class Cell:
    """Mean of one metric over seeds with its Student-t confidence interval.

    Attributes:
        mean: the sample mean (NaN when ``n == 0``).
        std: the sample standard deviation (``ddof=1``; 0 when ``n < 2``).
        n: the number of finite values.
        half: the interval's half-width ``t_{(1+c)/2, n-1} · std / sqrt(n)`` (NaN when ``n < 2``).
        confidence: the confidence level ``c``.
    """

    mean: float
    std: float
    n: int
    half: float = math.nan
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float:
        """Lower end of the interval (NaN when ``n < 2``)."""
        return self.mean - self.half

    @property
    def high(self) -> float:
        """Upper end of the interval (NaN when ``n < 2``)."""
        return self.mean + self.half

    def __str__(self) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "–"
        if self.n == 1:
            return f"{_fmt(self.mean)} (n=1)"
        return f"{_fmt(self.mean)} ± {_fmt(self.half)}"

    @property
    def detail(self) -> str:
        """A one-line description for a tooltip: n, standard deviation and interval."""
        if self.n == 0:
            return "no finished run logged this metric"
        if self.n == 1:
            return "n=1: a single seed, no interval"
        level = f"{100 * self.confidence:g}%"
        return f"n={self.n}, s={_fmt(self.std)}, {level} CI [{_fmt(self.low)}, {_fmt(self.high)}] (Student t)"


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.4f}"
    return f"{x:.3e}"


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Cell:
    """Mean ± Student-t confidence interval of the finite ``values`` (NaN and ±inf are left out).

    .. math::

        \\bar x \\pm t_{(1+c)/2,\\,n-1}\\, s / \\sqrt{n}, \\qquad s^2 = \\tfrac{1}{n-1} \\sum_i (x_i - \\bar x)^2

    Args:
        values: one number per seed.
        confidence: the level ``c`` in (0, 1); 0.95 by default.

    Returns:
        A :class:`Cell`; with one value the half-width is NaN, with none the mean is NaN too.

    Raises:
        ValueError: ``confidence`` is not in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Cell(math.nan, math.nan, 0, math.nan, confidence)
    mean = float(x.mean())
    if n == 1:
        return Cell(mean, 0.0, 1, math.nan, confidence)
    std = float(x.std(ddof=1))
    half = float(_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Cell(mean, std, n, half, confidence)


# ---------------------------------------------------------------------------------------------------- grouping


def label_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """Add a ``group`` column: runs that differ only in their seed (equal ``group_hash``) share a group (a "method").

    The label is the run name; when runs of one name have different configs
    (another learning rate, another number of steps), each config gets the
    name plus a short hash, so that different configs are never averaged.
    """
    runs = runs.copy()
    runs["run_name"] = runs["run_name"].fillna("(unnamed)").astype(str)
    keys = runs["group_hash"]
    per_name = keys.groupby(runs["run_name"]).transform("nunique")
    labels = zip(runs["run_name"], per_name, keys)
    runs["group"] = [name if n == 1 else f"{name} [{key[:6]}]" for name, n, key in labels]
    return runs


def final_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The last logged value (NaN included) of every (run, split, name): one row per run, columns ``split/name``."""
    last = frame.sort_values("step").groupby(["run_id", "split", "name"], as_index=False).tail(1).copy()
    last["metric"] = last["split"] + "/" + last["name"]
    return last.pivot_table(index="run_id", columns="metric", values="value", dropna=False).reset_index()


def table_columns(frame: pd.DataFrame) -> list[str]:
    """The table's metric columns: :data:`TABLE_METRICS` first, then every other ``test`` metric logged."""
    columns = [f"{s}/{m}" for s, m in TABLE_METRICS]
    if len(frame):
        extra = sorted(set(frame.loc[frame["split"] == "test", "name"]) - {m for s, m in TABLE_METRICS if s == "test"})
        columns += [f"test/{m}" for m in extra]
    return columns


def summary_table(
    frame: pd.DataFrame, runs: pd.DataFrame, columns: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per group (runs that differ only in the seed): status counts and mean ± 95% CI over seeds.

    Only runs with status ``done`` enter the statistics; a diverged, failed or
    interrupted run is counted in its status column and nowhere else.

    Returns:
        Dicts with ``name``, ``runs`` (all runs of the group), ``seeds`` (distinct
        seeds), ``counts`` ({status: count}), ``status`` (the counts as text),
        ``config`` (the config values in which this group differs from the
        others) and one :class:`Cell` per column ``split/name``.
    """
    runs = runs if "group" in runs else label_groups(runs)
    columns = list(columns) if columns is not None else table_columns(frame)
    finals = final_values(frame) if len(frame) else pd.DataFrame(columns=["run_id"])
    differences = config_differences(runs)
    rows = []
    for name, group in runs.groupby("group", sort=False):
        done = finals[finals["run_id"].isin(group.loc[group["status"] == "done", "run_id"])]
        seeds = group["seed"].dropna()
        row: dict[str, Any] = {
            "name": name,
            "runs": len(group),
            "seeds": int(seeds.nunique()) if len(seeds) == len(group) else len(group),
            "counts": {k: int(v) for k, v in group["status"].value_counts().items()},
            "status": _status_counts(group["status"]),
            "config": differences.get(name, ""),
        }
        for col in columns:
            row[col] = mean_ci(done[col] if col in done else ())
        rows.append(row)
    return rows


def _status_counts(status: pd.Series) -> str:
    return ", ".join(f"{k} {v}" for k, v in status.value_counts().items())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def config_differences(runs: pd.DataFrame, limit: int = 6) -> dict[str, str]:
    """For each group, ``key=value`` of the config entries (name and seed aside) that differ between groups."""
    if "group" not in runs or runs["group"].nunique() < 2:
        return {}
    flat: dict[str, dict[str, Any]] = {}
    for name, group in runs.groupby("group", sort=False):
        config = group["config"].iloc[0]
        config = dict(config) if isinstance(config, dict) else {}
        config.pop("name", None)
        items = _flatten(config)
        items.pop("train.seed", None)
        flat[name] = items
    keys = sorted({k for items in flat.values() for k in items})
    missing = object()
    varying = [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flat.values()}) > 1]
    out = {}
    for name, items in flat.items():
        parts = [f"{k}={_short(items[k])}" for k in varying if k in items]
        out[name] = ", ".join(parts[:limit]) + (f", … ({len(parts) - limit} more)" if len(parts) > limit else "")
    return out


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------------- probe sections


@dataclass(frozen=True)
class Panel:
    """One axes of a figure: one or more metrics (``split/name``) against step, a line per group.

    Attributes:
        title: the axes title.
        metrics: the metrics drawn, each with its own line style when there are several.
        log: log-scale y axis: True (when every value is positive), False, or None (automatic: positive
            values spanning two decades or more).
        threshold: a metric drawn as a dashed line in each group's colour (e.g. the stability limit 2/η).
        hline: a horizontal reference line.
    """

    title: str
    metrics: tuple[str, ...]
    log: bool | None = None
    threshold: str | None = None
    hline: float | None = None


@dataclass
class Section:
    """A part of the probe report: a title, a sentence on what it shows, and its panels."""

    key: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        """The probe metric names (without ``probe/``) the section draws, derived ones left out."""
        names = {m for p in self.panels for m in (*p.metrics, *((p.threshold,) if p.threshold else ()))}
        return sorted(m.split("/", 1)[1] for m in names if m != _EOS_RATIO)


def _plain(text: str) -> str:
    """``text`` shown literally by matplotlib (a ``$`` would start mathtext, and a malformed one raise)."""
    return text.replace("$", r"\$")


def _declaring_probes() -> list[type[Probe]]:
    """The registered probe classes that declare a report section, in the sections' page order."""
    factories = (REGISTRY.entry(name).factory for name in REGISTRY)
    probes = [f for f in factories if isinstance(f, type) and issubclass(f, Probe) and f.report_section is not None]
    return sorted(probes, key=lambda probe: probe.report_section.order)


def _label(name: str) -> str:
    """The axes title of probe metric ``name``: the label its probe declares, else the name shown literally."""
    labels = (probe.label(name) for probe in _declaring_probes())
    return next((label for label in labels if label is not None), _plain(name))


def probe_sections(names: Iterable[str]) -> list[Section]:
    """Arrange probe metric names into report sections.

    Every name ends up in exactly one section: a name that a registered probe
    labels (:attr:`reglab.diagnostics.Probe.labels`) goes to that probe's
    ``report_section``, in the sections' page order, with the section's special
    panels; any other name gets a panel of its own in a section named after its
    prefix (the part before the first ``/``), names without a prefix in
    "Other probe metrics".
    """
    probes = _declaring_probes()
    declared: dict[ReportSection, list[str]] = {}
    pending = []
    for name in sorted(set(names)):
        section = next((probe.report_section for probe in probes if probe.label(name) is not None), None)
        if section is None:
            pending.append(name)
        else:
            declared.setdefault(section, []).append(name)
    sections = [
        Section(s.key, s.title, s.description, _special_panels(s.key, mine))
        for s, mine in sorted(declared.items(), key=lambda item: item[0].order)
    ]
    by_prefix: dict[str, list[str]] = {}
    for name in pending:
        prefix = name.split("/", 1)[0] if "/" in name else ""
        by_prefix.setdefault(prefix, []).append(name)
    for prefix in sorted(by_prefix, key=lambda p: (p == "", p)):
        mine = by_prefix[prefix]
        title = prefix if prefix else "Other probe metrics"
        sections.append(
            Section(prefix or "other", title, "Logged by a probe; mean over seeds.", [_panel(n) for n in mine])
        )
    return sections


def _panel(name: str, **kwargs: Any) -> Panel:
    return Panel(_label(name), (f"probe/{name}",), **kwargs)


def _special_panels(key: str, names: list[str]) -> list[Panel]:
    if key == "sharpness":
        panels = []
        rest = list(names)
        if "sharpness" in names:
            has_threshold = "stability_threshold" in names
            panels.append(
                Panel(
                    _label("sharpness") if has_threshold else r"$\lambda_{\max}$ (sharpness)",
                    ("probe/sharpness",),
                    threshold="probe/stability_threshold" if has_threshold else None,
                )
            )
            rest.remove("sharpness")
            if has_threshold:
                panels.append(Panel(_EOS_RATIO_LABEL, (_EOS_RATIO,), log=False, hline=1.0))
                rest.remove("stability_threshold")
        return panels + [_panel(n) for n in rest]
    if key == "neural_collapse":
        return [_panel(n, log=True) for n in names]
    if key == "lipschitz":
        return [Panel("Lipschitz bounds", tuple(f"probe/{n}" for n in names), log=True)]
    return [_panel(n) for n in names]


def _with_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``probe/_eos_ratio`` = sharpness / stability_threshold at each (run, step) where both were logged."""
    probe = frame[frame["split"] == "probe"]
    lam = probe[probe["name"] == "sharpness"].set_index(["run_id", "step"])["value"]
    limit = probe[probe["name"] == "stability_threshold"].set_index(["run_id", "step"])["value"]
    if lam.empty or limit.empty:
        return frame
    ratio = (lam / limit).dropna().rename("value").reset_index()
    if ratio.empty:
        return frame
    ratio["split"], ratio["name"] = "probe", "_eos_ratio"
    ratio = ratio.merge(frame[["run_id", "group"]].drop_duplicates(), on="run_id")
    ratio["key"] = _EOS_RATIO
    return pd.concat([frame, ratio.reindex(columns=frame.columns)], ignore_index=True)


# ---------------------------------------------------------------------------------------------------- figures


def _colors(groups: Sequence[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    n = cmap.N
    if len(groups) <= n:
        return {g: cmap(i) for i, g in enumerate(groups)}
    hsv = matplotlib.colormaps["hsv"]
    return {g: hsv(i / len(groups)) for i, g in enumerate(groups)}


_STYLES = ("-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _use_log(values: np.ndarray, log: bool | None) -> bool:
    finite = values[np.isfinite(values)]
    if log is False or finite.size == 0 or (finite <= 0).any():
        return False
    return True if log else finite.max() / finite.min() >= 100


def draw_panels(
    panels: Sequence[Panel],
    data: dict[str, pd.DataFrame],
    colors: dict[str, Any],
    path: Path,
    *,
    dimmed: frozenset[str] = frozenset(),
) -> bool:
    """Draw ``panels`` into one PNG at ``path``: per group, the mean over seeds with a min..max band.

    Args:
        panels: the axes to draw.
        data: rows (columns group, run_id, step, value) of each metric ``split/name``.
        colors: the colour of each group (the same in every figure of a report).
        path: the PNG written.
        dimmed: groups drawn dashed (none of their runs finished).

    Returns:
        False (and no file) when none of the panels has data.
    """
    panels = [p for p in panels if any(m in data for m in p.metrics)]
    if not panels:
        return False
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    shown = [g for g in colors if any(g in set(data[m]["group"]) for p in panels for m in p.metrics if m in data)]
    # A fixed layout in inches: constrained/tight layout would cost more than drawing the figure.
    legend_h = 0.25 * math.ceil(len(shown) / 3) + 0.1
    width, height = (5.4, 3.4 + legend_h) if len(panels) == 1 else (4.4 * ncols, 3.1 * nrows + legend_h)
    fig = Figure(figsize=(width, height), dpi=100)  # no pyplot: the caller's backend and figure list are left alone
    axes = fig.subplots(nrows, ncols, squeeze=False)
    gap_w, gap_h, left, right, top, bottom = 0.7, 0.75, 0.7, 0.2, 0.35, 0.5 + legend_h
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=gap_w / ((width - left - right - (ncols - 1) * gap_w) / ncols),
        hspace=gap_h / ((height - top - bottom - (nrows - 1) * gap_h) / nrows),
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        values = [data[m]["value"].to_numpy() for m in (*panel.metrics, panel.threshold) if m in data]
        for i, metric in enumerate(panel.metrics):
            if metric not in data:
                continue
            style = _STYLES[i % len(_STYLES)]
            for group, rows in data[metric].groupby("group", sort=False):
                stats = rows.groupby("step")["value"].agg(["mean", "min", "max"])
                color = colors[group]
                ax.plot(stats.index, stats["mean"], color=color, linestyle="--" if group in dimmed else style, lw=1.4)
                if rows["run_id"].nunique() > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.18, linewidth=0)
        if panel.threshold and panel.threshold in data:
            for group, rows in data[panel.threshold].groupby("group", sort=False):
                stats = rows.groupby("step")["value"].mean()
                ax.plot(stats.index, stats.values, color=colors[group], linestyle="--", lw=1.0, alpha=0.8)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="black", linestyle="--", lw=0.8)
        if _use_log(np.concatenate(values) if values else np.array([]), panel.log):
            ax.set_yscale("log")
        if not any(np.isfinite(v).any() for v in values):
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="gray")
        handles = []
        if len(panel.metrics) > 1:
            handles += [
                Line2D([], [], color="black", linestyle=_STYLES[i % len(_STYLES)], label=_label(m.split("/", 1)[1]))
                for i, m in enumerate(panel.metrics)
                if m in data
            ]
        if panel.threshold and panel.threshold in data:
            handles.append(Line2D([], [], color="black", linestyle="--", lw=1.0, label=_label("stability_threshold")))
        if handles:
            ax.legend(handles=handles, fontsize=7, loc="best")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    group_handles = [
        Line2D([], [], color=colors[g], linestyle="--" if g in dimmed else "-", label=_plain(_short(str(g), 48)))
        for g in shown
    ]
    fig.legend(
        handles=group_handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.02),
        ncols=max(1, min(3, len(shown))),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path)
    return True


def plot_curve(frame: pd.DataFrame, split: str, metric: str, ylabel: str, log: bool, path: Path) -> bool:
    """Draw ``split/metric`` against step, one line per ``group`` column (mean over seeds, band = min..max)."""
    data = frame[(frame["split"] == split) & (frame["name"] == metric)]
    if data.empty:
        return False
    colors = _colors(list(dict.fromkeys(data["group"])))
    return draw_panels(
        [Panel(ylabel, (f"{split}/{metric}",), log=log or False)], {f"{split}/{metric}": data}, colors, path
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class _Files:
    """Unique PNG file names in the report directory."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, stem: str) -> str:
        stem, i = _slug(stem), 1
        name = f"{stem}.png"
        while name in self.used:
            i += 1
            name = f"{stem}_{i}.png"
        self.used.add(name)
        return name


# ---------------------------------------------------------------------------------------------------- the report


def _plot_frame(frame: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, frozenset[str]]:
    """The points the curves show: of the runs that finished; a group with no finished run shows all its runs."""
    finished = set(runs.loc[runs["status"] == "done", "group"])
    keep = runs.loc[(runs["status"] == "done") | ~runs["group"].isin(finished), "run_id"]
    dimmed = frozenset(set(runs["group"]) - finished)
    return frame[frame["run_id"].isin(keep)], dimmed


#: Marker and colour of each trial status in the search figure.
_TRIAL_STYLE = {
    "done": ("o", "tab:blue"),
    "pruned": ("v", "tab:orange"),
    "diverged": ("x", "tab:red"),
    "failed": ("x", "tab:gray"),
}


def search_section(store_path: str | Path, study: str, out: Path, files: _Files) -> dict[str, Any] | None:
    """The search section of a search study's report (figures written into ``out``), or None when ``study`` has no
    Optuna record beside the store (not a search, or Optuna not installed)."""
    from reglab.experiments.tune import load_search

    summary = load_search(store_path, study)
    if summary is None or not summary.trials:
        return None
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    for status, (marker, color) in _TRIAL_STYLE.items():
        shown = [t for t in summary.trials if t["status"] == status and t["value"] is not None]
        if shown:
            xs, ys = [t["number"] for t in shown], [t["value"] for t in shown]
            ax.scatter(xs, ys, marker=marker, color=color, label=status)
    complete = [t for t in summary.trials if t["state"] == "complete" and t["value"] is not None]
    if complete:
        pick = max if summary.direction == "maximize" else min
        best, xs, ys = None, [], []
        for t in complete:
            best = t["value"] if best is None else pick(best, t["value"])
            xs.append(t["number"])
            ys.append(best)
        ax.step(xs, ys, where="post", color="black", lw=1.0, label="best so far")
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(_plain(summary.objective), fontsize=8)
    ax.set_title(_plain(f"{summary.objective} per trial ({summary.direction})"), fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.14)
    figures = [{"file": files("search_objective"), "alt": f"{summary.objective} per trial", "caption": ""}]
    fig.savefig(out / figures[0]["file"])
    if summary.importances:
        names = list(summary.importances)[::-1]
        fig = Figure(figsize=(5.4, 0.6 + 0.35 * len(names)), dpi=100)
        ax = fig.subplots()
        ax.barh([_plain(n) for n in names], [summary.importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (fANOVA, sums to 1)", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.subplots_adjust(left=0.35, right=0.97, top=0.95, bottom=0.6 / (0.6 + 0.35 * len(names)) + 0.05)
        figures.append({"file": files("search_importance"), "alt": "parameter importances", "caption": ""})
        fig.savefig(out / figures[1]["file"])
    params = list(dict.fromkeys(p for t in summary.trials for p in t["params"]))
    trials = [
        {
            "number": t["number"],
            "status": t["status"],
            "value": "–" if t["value"] is None else _fmt(t["value"]),
            "step": _int_or_dash(t["step"]),
            "params": [_short(t["params"].get(p, "–")) for p in params],
            "run_id": _int_or_dash(t["run_id"]) + ("" if t["duplicate_of"] is None else f" (as {t['duplicate_of']})"),
        }
        for t in summary.trials
    ]
    return {
        "objective": summary.objective,
        "direction": summary.direction,
        "figures": figures,
        "importances": [(k, _fmt(v)) for k, v in summary.importances.items()],
        "importance_note": summary.importance_note,
        "params": params,
        "trials": trials,
    }


def _first_line(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        return ""
    return text.strip().splitlines()[0]


def _no_runs_message(store: Store, study: str | None) -> str:
    if study is None:
        return "the store has no runs; run `reglab run CONFIG` or `reglab demo` first"
    studies = sorted({r.study for r in store.runs() if r.study is not None})
    known = f"the studies in this store are: {', '.join(map(repr, studies))}" if studies else "it holds no study"
    return f"the store has no runs for study {study!r} ({known}); run `reglab run CONFIG` or `reglab demo` first"


def write_report(
    store: Store | str | Path, out_dir: str | Path, *, study: str | None = None, title: str = "reglab report"
) -> Path:
    """Write ``out_dir/index.html`` and its PNGs for the runs in ``store`` (optionally one study).

    Args:
        store: a :class:`Store` or the path of one.
        out_dir: the report directory (created); an earlier report there is replaced (its ``index.html`` and
            ``curve_*.png`` files).
        study: only the runs of this study.
        title: the page title.

    Returns:
        The path of ``index.html``.

    Raises:
        StoreError: the store holds no runs (for that study); the message names the studies it holds.
    """
    own = not isinstance(store, Store)
    store = Store(store) if own else store
    store_path = store.path
    try:
        frame = store.to_frame(study=study)
        runs = store.runs_frame(study=study)
        message = _no_runs_message(store, study) if runs.empty else ""
    finally:
        if own:
            store.close()
    if message:
        raise StoreError(message)
    runs = label_groups(runs)
    frame = frame.merge(runs[["run_id", "group"]], on="run_id")
    frame["key"] = frame["split"] + "/" + frame["name"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("curve_*.png"):  # figures of an earlier report that this one may not redraw
        old.unlink()

    groups = list(dict.fromkeys(runs["group"]))
    colors = _colors(groups)
    columns = table_columns(frame)
    rows = summary_table(frame, runs, columns)
    curves = frame[["run_id", "group", "step", "split", "name", "value", "key"]]
    shown, dimmed = _plot_frame(_with_derived(curves), runs)
    data = {key: part for key, part in shown.groupby("key", sort=False)}
    files = _Files()

    def figures(panels: list[Panel], stem: str, caption: str = "") -> list[dict[str, str]]:
        made = []
        chunks = [panels[i : i + MAX_PANELS] for i in range(0, len(panels), MAX_PANELS)]
        for chunk in chunks:
            file = files(stem)
            if draw_panels(chunk, data, colors, out / file, dimmed=dimmed):
                alt = ", ".join(m.removeprefix("probe/") for p in chunk for m in p.metrics)
                made.append({"file": file, "alt": alt, "caption": caption})
        return made

    learning = []
    for split, metric, label, log in CURVES:
        learning += figures([Panel(label, (f"{split}/{metric}",), log=log)], f"curve_{split}_{metric}")
    standard = {f"{s}/{m}" for s, m, _, _ in CURVES}
    other_keys = sorted(k for k in data if not k.startswith("probe/") and k not in standard)
    other_panels = [Panel(_plain(k), (k,)) for k in other_keys]
    other = figures(other_panels, "curve_other", ", ".join(other_keys)) if other_keys else []

    probe_names = sorted({k.split("/", 1)[1] for k in data if k.startswith("probe/") and k != _EOS_RATIO})
    sections = []
    for section in probe_sections(probe_names):
        figs = figures(section.panels, f"curve_probe_{section.key}", ", ".join(section.metrics))
        sections.append(
            {
                "key": _slug(section.key),
                "title": section.title,
                "description": section.description,
                "metrics": section.metrics,
                "figures": figs,
                "narrow": len(section.panels) == 1,
            }
        )

    search = search_section(store_path, study, out, files) if study is not None and store_path != ":memory:" else None
    unfinished = [
        {
            "run_id": r["run_id"],
            "name": r["group"],
            "seed": _int_or_dash(r["seed"]),
            "status": r["status"] + (" (stale)" if r["stale"] else ""),
            "step": _int_or_dash(r["step"]),
            "error": _first_line(r["error"]),
            "traceback": r["error"] if isinstance(r["error"], str) and "\n" in r["error"].strip() else "",
        }
        for r in runs.to_dict("records")
        if r["status"] != "done"
    ]
    all_runs = [
        {
            "run_id": r["run_id"],
            "name": r["group"],
            "seed": _int_or_dash(r["seed"]),
            "status": r["status"],
            "step": _int_or_dash(r["step"]),
            "config_hash": r["config_hash"] or "",
            "seconds": _seconds(r["started"], r["ended"]),
            "config": json.dumps(r["config"], indent=1, sort_keys=True, default=str),
        }
        for r in runs.to_dict("records")
    ]
    status_counts = runs["status"].value_counts()
    other_statuses = sorted(set(status_counts.index) - set(FINAL_STATUSES))

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reglab.experiments", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html").render(
        title=title,
        study=study,
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        version=__version__,
        n_runs=len(runs),
        n_groups=len(groups),
        status_counts=[(s, int(status_counts.get(s, 0))) for s in (*FINAL_STATUSES, *other_statuses)],
        statuses=FINAL_STATUSES,
        other_statuses=other_statuses,
        columns=columns,
        rows=rows,
        show_config=any(r["config"] for r in rows),
        confidence=f"{100 * CONFIDENCE:g}%",
        learning=learning,
        other=other,
        sections=sections,
        search=search,
        unfinished=unfinished,
        runs=all_runs,
        has_metrics=bool(len(frame)),
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index


def _int_or_dash(value: object) -> str:
    try:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))
    except (TypeError, ValueError):
        return str(value)


def _seconds(started: object, ended: object) -> str:
    try:
        seconds = float(ended) - float(started)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(seconds) else f"{seconds:.1f}"
