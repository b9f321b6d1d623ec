"""Calibration: ECE (equal-width and equal-mass bins), MCE, NLL, Brier score, AURC, reliability bins; their probe.

All metrics take class probabilities ``probs`` of shape (n, K) and integer
labels of shape (n,); :func:`calibration_report` computes them for a model on
data, in eval mode and without gradients, and restores the model's mode.

Definitions (confidence c_i = max_k p_ik, prediction = argmax_k p_ik):

- ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)| over confidence bins B_b
  ("On Calibration of Modern Neural Networks", Guo et al., 2017; Naeini et al.,
  2015). Equal-width bins split [0, 1] into ``n_bins`` intervals (0, 1/M], ...,
  with 0 put in the first; equal-mass bins split the examples sorted by
  confidence into ``n_bins`` groups of sizes differing by at most one
  ("Measuring Calibration in Deep Learning", Nixon et al., 2019).
- MCE = max_b |acc(B_b) - conf(B_b)| over non-empty bins.
- NLL = -(1/n) sum_i log p_{i, y_i}; Brier = (1/n) sum_i sum_k (p_ik - [k = y_i])^2.
- AURC = (1/n) sum_{m=1}^{n} risk(m), with risk(m) the error rate of the m most
  confident examples: the area under the risk-coverage curve ("Bias-Reduced
  Uncertainty Estimation for Deep Neural Classifiers", Geifman et al., 2019).
  Ties in confidence are broken by example order.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_int
from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.functional import eval_mode, on_model_device

BINNINGS = ("equal_width", "equal_mass")


def _check(probs: Tensor, labels: Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ShapeError(
            f"probs must be (n, K) and labels (n,) with n >= 1, got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise ShapeError(f"labels must be integer class indices, got {labels.dtype}")


def _bins(confidence: Tensor, n_bins: int, binning: str) -> list[Tensor]:
    """Index sets of the non-empty bins."""
    check_int("n_bins", n_bins, 1)
    if binning == "equal_width":
        # bin b holds confidences in (b/M, (b+1)/M]; confidence 0 goes to the first bin
        which = (torch.ceil(confidence.double() * n_bins).long() - 1).clamp(0, n_bins - 1)
        return [idx for b in range(n_bins) if len(idx := torch.nonzero(which == b).flatten())]
    if binning == "equal_mass":
        order = torch.argsort(confidence, stable=True)
        return [chunk for chunk in torch.tensor_split(order, n_bins) if len(chunk)]
    raise ConfigError(f"binning must be one of {BINNINGS}, got {binning!r}")


def bin_statistics(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal_width") -> dict[str, Tensor]:
    """Per non-empty bin: ``count``, mean ``confidence`` and ``accuracy`` (float64 tensors)."""
    _check(probs, labels)
    confidence, prediction = probs.double().max(dim=1)
    correct = (prediction == labels).double()
    bins = _bins(confidence, n_bins, binning)
    return {
        "count": torch.tensor([len(b) for b in bins], dtype=torch.float64, device=confidence.device),
        "confidence": torch.stack([confidence[b].mean() for b in bins]),
        "accuracy": torch.stack([correct[b].mean() for b in bins]),
    }


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal_width") -> float:
    """ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)|."""
    s = bin_statistics(probs, labels, n_bins, binning)
    return float((s["count"] / s["count"].sum() * (s["accuracy"] - s["confidence"]).abs()).sum())


def maximum_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal_width") -> float:
    """MCE = max_b |acc(B_b) - conf(B_b)| over non-empty bins."""
    s = bin_statistics(probs, labels, n_bins, binning)
    return float((s["accuracy"] - s["confidence"]).abs().max())


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """NLL = -(1/n) sum_i log p_{i, y_i} (probabilities clamped at the smallest positive float64)."""
    _check(probs, labels)
    p = probs.double().gather(1, labels[:, None]).squeeze(1)
    return float(-p.clamp_min(torch.finfo(torch.float64).tiny).log().mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Brier = (1/n) sum_i sum_k (p_ik - [k = y_i])^2 (multi-class form, range [0, 2])."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float((probs.double() - onehot).pow(2).sum(1).mean())


def aurc(probs: Tensor, labels: Tensor) -> float:
    """Area under the risk-coverage curve: (1/n) sum_m (errors among the m most confident) / m."""
    _check(probs, labels)
    confidence, prediction = probs.double().max(dim=1)
    order = torch.argsort(-confidence, stable=True)
    errors = (prediction[order] != labels[order]).double()
    coverage = torch.arange(1, len(errors) + 1, dtype=torch.float64, device=errors.device)
    return float((errors.cumsum(0) / coverage).mean())


@dataclass
class CalibrationResult:
    """Calibration of a classifier on one dataset; ``bins`` holds the reliability-diagram data."""

    ece: float
    ece_equal_mass: float
    mce: float
    nll: float
    brier: float
    aurc: float
    accuracy: float
    n: int
    n_bins: int
    bins: dict[str, list[float]] = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_metrics(probs: Tensor, labels: Tensor, n_bins: int = 15) -> CalibrationResult:
    """Every calibration metric of ``probs`` against ``labels``."""
    start = time.perf_counter()
    stats = bin_statistics(probs, labels, n_bins, "equal_width")
    return CalibrationResult(
        ece=expected_calibration_error(probs, labels, n_bins, "equal_width"),
        ece_equal_mass=expected_calibration_error(probs, labels, n_bins, "equal_mass"),
        mce=maximum_calibration_error(probs, labels, n_bins, "equal_width"),
        nll=negative_log_likelihood(probs, labels),
        brier=brier_score(probs, labels),
        aurc=aurc(probs, labels),
        accuracy=float((probs.argmax(1) == labels).double().mean()),
        n=len(labels),
        n_bins=n_bins,
        bins={k: v.tolist() for k, v in stats.items()},
        seconds=time.perf_counter() - start,
    )


def _as_pair(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        return data[0], data[1]
    xs, ys = [], []
    for batch in data:  # a DataLoader of (x, y) or (x, y, index)
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise ConfigError("data is empty: give an (inputs, labels) pair or a non-empty DataLoader")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def calibration_report(model: nn.Module, data: Any, n_bins: int = 15, batch_size: int = 4096) -> CalibrationResult:
    """Calibration of ``model``'s softmax probabilities on ``data`` ((x, y) pair or DataLoader).

    The model runs in eval mode without gradients (no buffer changes); its
    train/eval mode is restored afterwards.
    """
    x, y = on_model_device(model, *_as_pair(data))
    with eval_mode(model):
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return calibration_metrics(logits.double().softmax(1), y, n_bins)


@REGISTRY.register("calibration")
class CalibrationProbe(Probe):
    """Logs test-set ECE, MCE, NLL, Brier and AURC every N steps (metrics ``calibration/<name>``)."""

    report_section = ReportSection(
        "calibration",
        "Calibration",
        "Expected and maximum calibration error, NLL, Brier score and AURC of the predictions; lower is better.",
        order=20,
    )
    labels = {
        "calibration/ece": "ECE (equal-width bins)",
        "calibration/ece_equal_mass": "ECE (equal-mass bins)",
        "calibration/mce": "MCE (max calibration error)",
        "calibration/nll": "NLL",
        "calibration/brier": "Brier score",
        "calibration/aurc": "AURC (risk-coverage)",
    }

    def __init__(self, every: int = 100, n_bins: int = 15):
        super().__init__(every)
        self.n_bins = check_int("n_bins", n_bins, 1)

    def measure(self, trainer: Any) -> dict[str, float]:
        r = calibration_report(trainer.model, trainer.test_data, self.n_bins)
        return {f"calibration/{k}": getattr(r, k) for k in ("ece", "ece_equal_mass", "mce", "nll", "brier", "aurc")}
