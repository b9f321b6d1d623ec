"""The gradient-statistics probes: coherence, gradient noise scale and the grokking statistics during training."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reglab.core.validation import check_int
from reglab.diagnostics.gradients import gradient_coherence, gradient_noise_scale, grokking_statistics
from reglab.diagnostics.probe import Probe, ReportSection, probe_loss
from reglab.diagnostics.registry import REGISTRY

#: The report section of the gradient-statistics probes.
GRADIENT_SECTION = ReportSection(
    "gradients",
    "Gradient statistics",
    "Coherence of per-example gradients, the gradient noise scale, and the statistics of grokking and "
    "Softmax Collapse (NLM cosine, fraction of collapsed softmax outputs, effective learning rate).",
    order=70,
)


class _TrainSubsetProbe(Probe):
    """A probe measuring on at most ``n_examples`` training examples drawn with ``seed`` (the same ones each time)."""

    def __init__(self, every: int = 100, n_examples: int = 256, seed: int = 0):
        super().__init__(every)
        self.n_examples = check_int("n_examples", n_examples, 2)
        self.seed = check_int("seed", seed, 0)

    def _data(self, trainer: Any) -> tuple[Tensor, Tensor]:
        return trainer.examples("train", self.n_examples, self.seed)


@REGISTRY.register("gradient_coherence")
class GradientCoherenceProbe(_TrainSubsetProbe):
    """Logs α and m-coherence of per-example training gradients (``gradient_coherence/alpha``, ``/m_coherence``).

    Args:
        every: measure every this many steps.
        n_examples: examples used (m), at most; drawn once from the training set with ``seed``.
        seed: subsample seed.
    """

    report_section = GRADIENT_SECTION
    labels = {
        "gradient_coherence/alpha": r"gradient coherence $\alpha$",
        "gradient_coherence/m_coherence": "m-coherence",
    }

    def measure(self, trainer: Any) -> dict[str, float]:
        r = gradient_coherence(trainer.model, probe_loss(trainer), self._data(trainer))
        return {"gradient_coherence/alpha": r.alpha, "gradient_coherence/m_coherence": r.m_coherence}


@REGISTRY.register("gradient_noise_scale")
class GradientNoiseScaleProbe(_TrainSubsetProbe):
    """Logs B_simple = tr(Σ)/|G|² from per-example training gradients (``gradient_noise_scale/b_simple``, ...).

    Also logs ``gradient_noise_scale/trace_sigma`` and ``/grad_sq_norm``.

    Args:
        every: measure every this many steps.
        n_examples: examples used, at most; drawn once from the training set with ``seed``.
        seed: subsample seed.
    """

    report_section = GRADIENT_SECTION
    labels = {
        "gradient_noise_scale/b_simple": r"$B_{simple}$ = tr$(\Sigma)/|G|^2$",
        "gradient_noise_scale/trace_sigma": r"tr$(\Sigma)$",
        "gradient_noise_scale/grad_sq_norm": r"$|G|^2$",
    }

    def measure(self, trainer: Any) -> dict[str, float]:
        r = gradient_noise_scale(trainer.model, probe_loss(trainer), self._data(trainer))
        return {f"gradient_noise_scale/{k}": getattr(r, k) for k in ("b_simple", "trace_sigma", "grad_sq_norm")}


@REGISTRY.register("grokking_stats")
class GrokkingStatsProbe(_TrainSubsetProbe):
    """Logs NLM cosine, Softmax-Collapse fraction, weight norm and effective LR (``grokking/<name>``).

    The learning rate is that of the optimizer's first parameter group at the
    time of the measurement (so it follows a scheduler).

    Args:
        every: measure every this many steps.
        n_examples: examples used, at most; drawn once from the training set with ``seed``.
        seed: subsample seed.
    """

    report_section = GRADIENT_SECTION
    labels = {
        "grokking/nlm_cosine": "NLM cosine",
        "grokking/sc_fraction": "Softmax-Collapse fraction",
        "grokking/zero_loss_fraction": "zero-loss fraction",
        "grokking/weight_norm": r"$\|\theta\|_2$",
        "grokking/effective_lr": "effective learning rate",
    }

    def measure(self, trainer: Any) -> dict[str, float]:
        lr = float(trainer.optimizer.param_groups[0]["lr"])
        s = grokking_statistics(trainer.model, probe_loss(trainer), self._data(trainer), lr=lr)
        keys = ("nlm_cosine", "sc_fraction", "zero_loss_fraction", "weight_norm", "effective_lr")
        return {f"grokking/{k}": getattr(s, k) for k in keys}
