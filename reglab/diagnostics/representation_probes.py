"""The representation probes: neural collapse and the effective rank of the features, logged during training."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from reglab.core import ShapeError
from reglab.core.validation import check_bool, check_int
from reglab.diagnostics.features import check_max_examples
from reglab.diagnostics.neural_collapse import neural_collapse
from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.rank import feature_rank, rank_metrics
from reglab.diagnostics.registry import REGISTRY


def _train_pair(trainer: Any, max_examples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """The examples ``subsample(n, max_examples, seed)`` keeps, in order, read by the trainer (streams read no more)."""
    return trainer.examples("train", max_examples, seed, in_order=True)


@REGISTRY.register("neural_collapse")
class NeuralCollapseProbe(Probe):
    """Logs NC1–NC4 on the training set every N steps (metrics ``neural_collapse/<nc1|nc2_...|nc3|nc4>``).

    Logged: ``nc1``, ``nc2_equinorm``, ``nc2_equiangle``, ``nc2_maxangle``,
    ``nc2_etf``, ``nc3`` (when the head is affine) and ``nc4`` of
    :func:`~reglab.diagnostics.neural_collapse.neural_collapse` on ``trainer.task.train`` (the labels trained on).

    Args:
        every: measure every this many steps, >= 1.
        max_examples: subsample at most this many training examples (None: all).
        seed: seed of the subsample (the same examples at every measurement).
    """

    report_section = ReportSection(
        "neural_collapse",
        "Neural collapse",
        "NC1 (within-class variability), NC2 (class means approaching a simplex ETF), NC3 (classifier aligned "
        "with the class means), NC4 (nearest-class-centre agreement) on a log scale; all go to 0 under collapse "
        "(Papyan, Han, Donoho 2020, Prevalence of Neural Collapse during the Terminal Phase of Deep Learning "
        "Training).",
        order=30,
    )
    labels = {
        "neural_collapse/nc1": "NC1: within-class variability",
        "neural_collapse/nc2_equinorm": "NC2: equinorm",
        "neural_collapse/nc2_equiangle": "NC2: equiangularity",
        "neural_collapse/nc2_maxangle": "NC2: max-angle",
        "neural_collapse/nc2_etf": "NC2: distance to simplex ETF",
        "neural_collapse/nc3": "NC3: self-duality",
        "neural_collapse/nc4": "NC4: NCC disagreement",
    }

    def __init__(self, every: int = 100, max_examples: int | None = None, seed: int = 0):
        super().__init__(every)
        self.max_examples = check_max_examples(max_examples)
        self.seed = check_int("seed", seed, 0)

    def measure(self, trainer: Any) -> dict[str, float]:
        try:
            r = neural_collapse(
                trainer.model,
                _train_pair(trainer, self.max_examples, self.seed),
                max_examples=self.max_examples,
                seed=self.seed,
            )
        except ShapeError:  # e.g. a class with no training example: the metrics are undefined, training goes on
            return dict.fromkeys(self.labels, math.nan)
        values = {name: getattr(r, name.split("/", 1)[1]) for name in self.labels}  # neural_collapse/<field>
        return {name: v for name, v in values.items() if v is not None}


@REGISTRY.register("effective_rank")
class EffectiveRankProbe(Probe):
    """Logs the effective and stable rank of the training features (``effective_rank/features``, ``stable_rank/...``).

    Measures :func:`~reglab.diagnostics.rank.feature_rank` on at most ``max_examples`` training examples
    (a fixed subsample drawn with ``seed``); with ``weights=True`` also logs
    ``effective_rank/<parameter>`` and ``stable_rank/<parameter>`` for every
    weight matrix (:func:`~reglab.diagnostics.rank.rank_metrics`).

    Args:
        every: measure every this many steps, >= 1.
        max_examples: subsample size, >= 1, or None for all; 2000 by default.
        center: remove the feature means before the SVD.
        weights: also log the ranks of the weight matrices.
        seed: seed of the subsample.
    """

    report_section = ReportSection(
        "rank",
        "Effective and stable rank",
        "Effective rank (exp of the entropy of the normalised singular values) and stable rank (‖A‖_F² / ‖A‖₂²) "
        "of the features and weights.",
        order=50,
    )
    labels = {
        "effective_rank/features": "effective rank of the features",
        "stable_rank/features": "stable rank of the features",
        "effective_rank/*": "effective rank of {}",
        "stable_rank/*": "stable rank of {}",
    }

    def __init__(
        self,
        every: int = 100,
        max_examples: int | None = 2000,
        center: bool = True,
        weights: bool = False,
        seed: int = 0,
    ):
        super().__init__(every)
        self.max_examples = check_max_examples(max_examples)
        check_bool("center", center)
        check_bool("weights", weights)
        self.center, self.weights = center, weights
        self.seed = check_int("seed", seed, 0)

    def measure(self, trainer: Any) -> dict[str, float]:
        r = feature_rank(
            trainer.model,
            _train_pair(trainer, self.max_examples, self.seed),
            max_examples=self.max_examples,
            center=self.center,
            seed=self.seed,
        )
        out = {"effective_rank/features": r.effective_rank, "stable_rank/features": r.stable_rank}
        if self.weights:
            w = rank_metrics(trainer.model)
            out.update({f"effective_rank/{k}": v for k, v in w.effective_rank.items()})
            out.update({f"stable_rank/{k}": v for k, v in w.stable_rank.items()})
        return out
