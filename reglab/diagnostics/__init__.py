"""Diagnostics: functions ``(model, ...) -> result`` that measure without changing the model, and their probes."""

from __future__ import annotations

from typing import Any

from reglab.diagnostics.calibration import (
    CalibrationProbe,
    CalibrationResult,
    aurc,
    bin_statistics,
    brier_score,
    calibration_metrics,
    calibration_report,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
)
from reglab.diagnostics.curvature import (
    SharpnessProbe,
    StabilityReport,
    hessian_density,
    hessian_eigs,
    hessian_trace,
    stability_report,
)
from reglab.diagnostics.directions import normalize_direction, random_directions
from reglab.diagnostics.gradient_probes import GradientCoherenceProbe, GradientNoiseScaleProbe, GrokkingStatsProbe
from reglab.diagnostics.gradients import (
    CoherenceResult,
    GrokkingStats,
    NoiseScaleResult,
    coherence_from_gradients,
    effective_learning_rate,
    gradient_coherence,
    gradient_noise_scale,
    grokking_statistics,
    noise_scale_from_gradients,
    noise_scale_two_batch,
    softmax_collapse_fraction,
    zero_loss_fraction,
)
from reglab.diagnostics.kernels import (
    NTKChangeProbe,
    empirical_ntk,
    kernel_alignment,
    relative_kernel_change,
    relative_weight_change,
)
from reglab.diagnostics.landscape import along_direction, barrier, interpolate, random_sharpness, surface
from reglab.diagnostics.landscape_probes import RandomSharpnessProbe
from reglab.diagnostics.landscape_results import LandscapeResult, SharpnessResult, SurfaceResult
from reglab.diagnostics.lipschitz import LipschitzProbe, LipschitzResult, lipschitz_bounds
from reglab.diagnostics.malignant_tail import spectral_probe, spectral_probe_features
from reglab.diagnostics.neural_collapse import neural_collapse, neural_collapse_metrics
from reglab.diagnostics.plots import plot_contour, plot_curve, plot_density, plot_reliability, plot_surface
from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.rank import effective_rank, feature_rank, rank_metrics, stable_rank
from reglab.diagnostics.registry import REGISTRY
from reglab.diagnostics.representation_probes import EffectiveRankProbe, NeuralCollapseProbe
from reglab.diagnostics.representation_results import (
    FeatureRankResult,
    NeuralCollapseResult,
    RankResult,
    SpectralProbeResult,
)
from reglab.diagnostics.weights import WeightNormProbe, WeightNormResult, weight_norm


def get(name: str, **kwargs: Any) -> Probe:
    """Build the probe registered as ``name`` (e.g. ``get("weight_norm", every=50)``)."""
    return REGISTRY.get(name, **kwargs)


__all__ = [
    "CoherenceResult",
    "GradientCoherenceProbe",
    "GradientNoiseScaleProbe",
    "GrokkingStats",
    "GrokkingStatsProbe",
    "NoiseScaleResult",
    "coherence_from_gradients",
    "effective_learning_rate",
    "gradient_coherence",
    "gradient_noise_scale",
    "grokking_statistics",
    "noise_scale_from_gradients",
    "noise_scale_two_batch",
    "softmax_collapse_fraction",
    "zero_loss_fraction",
    "NTKChangeProbe",
    "empirical_ntk",
    "kernel_alignment",
    "relative_kernel_change",
    "relative_weight_change",
    "LandscapeResult",
    "RandomSharpnessProbe",
    "SharpnessResult",
    "SurfaceResult",
    "along_direction",
    "barrier",
    "interpolate",
    "normalize_direction",
    "plot_contour",
    "plot_curve",
    "plot_surface",
    "random_directions",
    "random_sharpness",
    "surface",
    "LipschitzProbe",
    "LipschitzResult",
    "lipschitz_bounds",
    "REGISTRY",
    "EffectiveRankProbe",
    "FeatureRankResult",
    "NeuralCollapseProbe",
    "NeuralCollapseResult",
    "RankResult",
    "SharpnessProbe",
    "SpectralProbeResult",
    "StabilityReport",
    "effective_rank",
    "feature_rank",
    "hessian_density",
    "hessian_eigs",
    "hessian_trace",
    "neural_collapse",
    "neural_collapse_metrics",
    "plot_density",
    "rank_metrics",
    "spectral_probe",
    "spectral_probe_features",
    "stability_report",
    "stable_rank",
    "CalibrationProbe",
    "CalibrationResult",
    "Probe",
    "ReportSection",
    "WeightNormProbe",
    "WeightNormResult",
    "aurc",
    "bin_statistics",
    "brier_score",
    "calibration_metrics",
    "calibration_report",
    "expected_calibration_error",
    "get",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "plot_reliability",
    "weight_norm",
]
