"""The loss-landscape probe: random-direction sharpness of the training loss during training."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reglab.core.validation import check_float, check_int
from reglab.diagnostics.curvature import SHARPNESS_SECTION
from reglab.diagnostics.landscape import random_sharpness
from reglab.diagnostics.probe import Probe, probe_loss
from reglab.diagnostics.registry import REGISTRY


@REGISTRY.register("random_sharpness")
class RandomSharpnessProbe(Probe):
    """Logs the random-direction sharpness of the training loss every N steps (metrics ``sharpness_1d``...).

    ``sharpness_1d`` = max_{k ≤ K, s=±1} L(θ + s r d_k) − L(θ) and
    ``sharpness_1d_mean`` = the mean of those 2K increases (see
    :func:`~reglab.diagnostics.landscape.random_sharpness`), with L the trainer's loss (``trainer.loss_fn``;
    cross-entropy / MSE for a loss that needs example indices) on a fixed
    subsample of at most ``max_examples`` training examples. The directions are
    drawn from ``seed`` at every measurement (the same Gaussian draws, scaled to
    the current filters), so the curve over training is not noisier than the
    landscape. Costs 2K + 1 forward passes over the subsample.

    Args:
        every: measure every this many steps, >= 1.
        radius: r > 0; n_directions: K >= 1.
        max_examples: training examples used (None: all), chosen once with ``seed``.
        seed: seed of the subsample and of the directions.
    """

    report_section = SHARPNESS_SECTION
    labels = {
        "sharpness_1d": "random-direction sharpness (max)",
        "sharpness_1d_mean": "random-direction sharpness (mean)",
    }

    def __init__(
        self,
        every: int = 100,
        radius: float = 0.05,
        n_directions: int = 4,
        max_examples: int | None = 1024,
        seed: int = 0,
    ):
        super().__init__(every)
        self.radius = check_float("radius", radius, 0.0, low_open=True)
        self.n_directions = check_int("n_directions", n_directions, 1)
        self.max_examples = None if max_examples is None else check_int("max_examples", max_examples, 1)
        self.seed = check_int("seed", seed, 0)

    def _data(self, trainer: Any) -> tuple[Tensor, Tensor]:
        return trainer.examples("train", self.max_examples, self.seed, in_order=True)

    def measure(self, trainer: Any) -> dict[str, float]:
        loss_fn = probe_loss(trainer)
        r = random_sharpness(trainer.model, loss_fn, self._data(trainer), self.radius, self.n_directions, self.seed)
        return {"sharpness_1d": r.sharpness, "sharpness_1d_mean": r.mean_increase}
