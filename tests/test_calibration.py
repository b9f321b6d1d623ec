"""Calibration metrics against hand-computed values and a brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from reglab.core import ConfigError, ShapeError
from reglab.diagnostics import (
    aurc,
    brier_score,
    calibration_metrics,
    calibration_report,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    plot_reliability,
)

# confidences 0.93, 0.64, 0.72, 0.85 (no bin edges); correct = [1, 0, 1, 1]
PROBS = torch.tensor([[0.93, 0.07], [0.64, 0.36], [0.28, 0.72], [0.15, 0.85]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 1])


def test_hand_computed_values():
    assert expected_calibration_error(PROBS, LABELS, 10) == pytest.approx((0.07 + 0.64 + 0.28 + 0.15) / 4, abs=1e-12)
    assert maximum_calibration_error(PROBS, LABELS, 10) == pytest.approx(0.64, abs=1e-12)
    # equal mass, 2 bins: {0.64 wrong, 0.72 right} and {0.85, 0.93 right}
    assert expected_calibration_error(PROBS, LABELS, 2, "equal_mass") == pytest.approx(
        0.5 * abs(0.5 - 0.68) + 0.5 * abs(1 - 0.89), abs=1e-12
    )
    nll = -(math.log(0.93) + math.log(0.36) + math.log(0.72) + math.log(0.85)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(nll, abs=1e-12)
    assert brier_score(PROBS, LABELS) == pytest.approx((2 * 0.07**2 + 2 * 0.64**2 + 2 * 0.28**2 + 2 * 0.15**2) / 4)
    assert aurc(PROBS, LABELS) == pytest.approx((0 + 0 + 0 + 1 / 4) / 4)


def _brute_force_ece(probs, labels, n_bins):
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if members:
            acc = sum(float(pred[i] == labels[i]) for i in members) / len(members)
            c = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - c)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_equal_width_matches_brute_force(seed, n_bins):
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(200, 7, generator=g, dtype=torch.float64)).softmax(1)
    labels = torch.randint(0, 7, (200,), generator=g)
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        _brute_force_ece(probs, labels, n_bins), abs=1e-12
    )


def test_perfectly_confident_and_right_is_calibrated():
    probs = torch.eye(4, dtype=torch.float64)
    labels = torch.arange(4)
    r = calibration_metrics(probs, labels)
    assert r.ece == 0 and r.mce == 0 and r.brier == 0 and r.aurc == 0 and r.nll == 0 and r.accuracy == 1


def test_report_restores_mode_and_matches_metrics(tiny):
    x = torch.randn(30, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    tiny.train()
    r = calibration_report(tiny, (x, y), n_bins=5)
    assert tiny.training
    with torch.no_grad():
        expected = expected_calibration_error(tiny(x).softmax(1), y, 5)
    assert r.ece == pytest.approx(expected, abs=1e-12)
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=7)
    assert calibration_report(tiny, loader, n_bins=5).ece == pytest.approx(expected, abs=1e-12)


def test_reliability_png(tmp_path, monkeypatch):
    import matplotlib

    # plotting must not switch the caller's backend (a notebook's inline plots) nor touch pyplot's figure list
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("matplotlib.use was called"))
    path = plot_reliability(calibration_metrics(PROBS, LABELS, 10), tmp_path / "rel.png")
    assert path.stat().st_size > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_errors():
    with pytest.raises(ShapeError, match="probs must be"):
        expected_calibration_error(PROBS[:, 0], LABELS)
    with pytest.raises(ShapeError, match="integer"):
        brier_score(PROBS, LABELS.double())
    with pytest.raises(ConfigError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, 0)
    with pytest.raises(ConfigError, match="binning"):
        expected_calibration_error(PROBS, LABELS, 10, "quantile")
