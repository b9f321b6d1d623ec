"""Figures of diagnostic results: reliability diagrams, Hessian spectral densities, 1-D and 2-D loss landscapes.

Every function takes a result of a diagnostic, draws it on a
``matplotlib.figure.Figure`` made without pyplot (the caller's backend and
figure list are left alone), saves it as a PNG at ``path`` (creating the
folder) and returns the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reglab.core.validation import check_int
from reglab.diagnostics.calibration import CalibrationResult
from reglab.diagnostics.landscape_results import LandscapeResult, SurfaceResult
from reglab.linalg.density import DensityResult


def _figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` made without pyplot; matplotlib is imported only when a plot is drawn."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str | Path) -> Path:
    """Lay ``fig`` out tightly and save it as a PNG at ``path``, creating the folder."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# -- calibration ----------------------------------------------------------------------------------------------------
def plot_reliability(result: CalibrationResult, path: str | Path, title: str = "reliability diagram") -> Path:
    """Save a reliability diagram (accuracy against confidence per bin, with the diagonal) as a PNG."""
    bins = result.bins
    fig = _figure(figsize=(4, 4), dpi=110)
    ax = fig.subplots()
    width = 1.0 / result.n_bins
    ax.bar(bins["confidence"], bins["accuracy"], width=width * 0.9, alpha=0.7, label="accuracy", edgecolor="k")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {result.ece:.3f}, accuracy {result.accuracy:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


# -- curvature ------------------------------------------------------------------------------------------------------
def plot_density(
    result: DensityResult,
    path: str | Path,
    sigma: float | None = None,
    log_scale: bool = True,
    title: str = "Hessian eigenvalue density",
) -> Path:
    """Save the smoothed SLQ density as a PNG (log-scale y axis by default, as in Ghorbani et al.)."""
    lo, hi = float(result.nodes.min()), float(result.nodes.max())
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    grid = torch.linspace(lo - pad, hi + pad, 1000, dtype=torch.float64)
    density = result.density(grid, sigma)
    fig = _figure(figsize=(5, 3.5), dpi=110)
    ax = fig.subplots()
    ax.plot(grid.numpy(), density.clamp_min(1e-12).numpy() if log_scale else density.numpy())
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    return _save(fig, path)


# -- loss landscapes ------------------------------------------------------------------------------------------------
def plot_curve(result: LandscapeResult, path: str | Path, title: str | None = None) -> Path:
    """Save a 1-D landscape (loss against α, accuracy on a second axis when present) as a PNG.

    An interpolation also shows the chord (1−α)L_a + αL_b and the barrier in the title.
    """
    fig = _figure(figsize=(5, 3.6), dpi=110)
    ax = fig.subplots()
    alphas = result.alphas.numpy()
    ax.plot(alphas, result.loss.numpy(), "o-", color="C0", markersize=3, label="loss")
    if result.kind == "interpolation" and result.loss_a is not None:
        ax.plot([0, 1], [result.loss_a, result.loss_b], "--", color="C0", linewidth=1, label="chord")
    ax.set_xlabel("α")
    ax.set_ylabel("loss", color="C0")
    if result.accuracy is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, result.accuracy.numpy(), "s-", color="C1", markersize=3, label="accuracy")
        ax2.set_ylabel("accuracy", color="C1")
    if title is None:
        title = "linear interpolation" if result.kind == "interpolation" else "loss along a direction"
        if result.loss_barrier is not None:
            title += f"\nloss barrier {result.loss_barrier:.4g}"
            if result.error_barrier is not None:
                title += f", error barrier {result.error_barrier:.4g}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _grid(result: SurfaceResult) -> tuple[Any, Any, Any]:
    a, b = torch.meshgrid(result.alphas, result.betas, indexing="ij")
    return a.numpy(), b.numpy(), result.loss.numpy()


def plot_contour(result: SurfaceResult, path: str | Path, levels: int = 30, title: str | None = None) -> Path:
    """Save a contour plot of a 2-D landscape (α along x, β along y) as a PNG."""
    check_int("levels", levels, 1)
    a, b, z = _grid(result)
    fig = _figure(figsize=(4.6, 4), dpi=110)
    ax = fig.subplots()
    filled = ax.contourf(a, b, z, levels=levels, cmap="viridis")
    ax.contour(a, b, z, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="loss")
    ax.plot([0], [0], "r+", markersize=8)
    ax.set_xlabel("α (d1)")
    ax.set_ylabel("β (d2)")
    ax.set_title(title or f"loss surface ({result.directions_kind} directions)", fontsize=9)
    return _save(fig, path)


def plot_surface(result: SurfaceResult, path: str | Path, title: str | None = None) -> Path:
    """Save a 3-D surface plot of a 2-D landscape as a PNG."""
    a, b, z = _grid(result)
    fig = _figure(figsize=(5, 4), dpi=110)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("α (d1)")
    ax.set_ylabel("β (d2)")
    ax.set_zlabel("loss")
    ax.set_title(title or f"loss surface ({result.directions_kind} directions)", fontsize=9)
    return _save(fig, path)
