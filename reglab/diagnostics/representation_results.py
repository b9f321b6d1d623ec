"""Result types of the representation diagnostics: neural collapse, effective and stable rank, the spectral probe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class NeuralCollapseResult:
    """NC1–NC4 of features (and classifier) on one labelled dataset; each is 0 at exact neural collapse.

    Attributes:
        nc1: tr(Sigma_W Sigma_B^+) / K, within-class variability relative to between-class (NaN when Sigma_B = 0).
        nc2_equinorm: std / mean of the centered class-mean norms ||mu_c - mu_G|| (std with K - 1 in the denominator).
        nc2_equiangle: std over the K(K-1)/2 pairs c < c' of cos(mu_c - mu_G, mu_c' - mu_G) (population std).
        nc2_maxangle: mean over pairs of |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(K-1)| (distance to the simplex angle).
        nc2_etf: || G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F with G the Gram matrix of the centered class means.
        nc2_equinorm_w, nc2_equiangle_w, nc2_maxangle_w: the same for the classifier rows w_c (None without one).
        nc3: || W/||W||_F - M/||M||_F ||_F^2, M the centered class means as rows (None without a classifier).
        nc4: fraction of examples whose network prediction differs from the nearest class mean (None without logits).
        accuracy: the network's accuracy on the labels (None without logits).
        trace_within, trace_between: tr(Sigma_W) and tr(Sigma_B).
        n, num_classes, feature_dim: the data's size.
        seconds: wall time.
    """

    nc1: float
    nc2_equinorm: float
    nc2_equiangle: float
    nc2_maxangle: float
    nc2_etf: float
    nc3: float | None
    nc4: float | None
    nc2_equinorm_w: float | None
    nc2_equiangle_w: float | None
    nc2_maxangle_w: float | None
    accuracy: float | None
    trace_within: float
    trace_between: float
    n: int
    num_classes: int
    feature_dim: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RankResult:
    """Effective and stable rank of each weight matrix (parameters with >= 2 dims, flattened to (shape[0], -1))."""

    effective_rank: dict[str, float] = field(default_factory=dict)
    stable_rank: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureRankResult:
    """Effective and stable rank of an (n, D) feature matrix, with its singular values (descending)."""

    effective_rank: float
    stable_rank: float
    n: int
    feature_dim: int
    centered: bool
    singular_values: list[float] = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpectralProbeResult:
    """Spectral linear probe and spectral truncation curves, one entry per k in ``ks``.

    Attributes:
        ks: the numbers of leading principal components.
        head_train_accuracy, head_test_accuracy: probe on the top-k components, accuracy on the (possibly noisy)
            training labels and on the test labels.
        tail_train_accuracy, tail_test_accuracy: probe on the components k+1..D.
        head_train_accuracy_noisy, head_train_accuracy_clean, tail_train_accuracy_noisy, tail_train_accuracy_clean:
            training accuracy on the examples marked noisy / not noisy (None without a ``noisy`` mask; NaN on an
            empty subset).
        truncated_train_accuracy, truncated_test_accuracy: the model's own head on the rank-k truncated features
            (None without a head).
        full_train_accuracy, full_test_accuracy: the head on the untruncated features (None without a head).
        singular_values: of the centered training features, descending.
        effective_rank: of the centered training features (Roy & Vetterli, 2007).
        rank: numerical rank r of the centered training features, singular values above max(n, D) * eps * sigma_1
            with eps of the features' dtype (components beyond r carry nothing).
        ridge, n_train, n_test, feature_dim, num_classes: the setting.
        seconds: wall time.
    """

    ks: list[int]
    head_train_accuracy: list[float]
    head_test_accuracy: list[float]
    tail_train_accuracy: list[float]
    tail_test_accuracy: list[float]
    truncated_train_accuracy: list[float] | None
    truncated_test_accuracy: list[float] | None
    full_train_accuracy: float | None
    full_test_accuracy: float | None
    head_train_accuracy_noisy: list[float] | None
    head_train_accuracy_clean: list[float] | None
    tail_train_accuracy_noisy: list[float] | None
    tail_train_accuracy_clean: list[float] | None
    singular_values: list[float] = field(repr=False)
    effective_rank: float = 0.0
    rank: int = 0
    ridge: float = 0.0
    n_train: int = 0
    n_test: int = 0
    feature_dim: int = 0
    num_classes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
