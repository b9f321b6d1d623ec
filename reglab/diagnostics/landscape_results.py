"""Result types of the loss-landscape measurements: 1-D curves, 2-D surfaces, random-direction sharpness.

Each holds float64 tensors or numbers and reports what it cost (``n_evals``,
``n_hvp``, ``seconds``); ``to_dict()`` gives numbers and lists only (the
directions used are kept on the result but left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class LandscapeResult:
    """A 1-D loss curve: along a linear path between two models or along a direction from one.

    Attributes:
        kind: ``"interpolation"`` or ``"direction"``.
        alphas: the α grid (float64).
        loss: L at each α (float64), batches weighted by size.
        accuracy: top-1 accuracy at each α, or None (targets not class labels).
        loss_a, loss_b, accuracy_a, accuracy_b: endpoint values (interpolation; None otherwise).
        loss_barrier, error_barrier: max_α [v(α) − ((1−α)v_a + α v_b)] for the loss and for the error
            1 − accuracy (interpolation; error only with accuracy).
        loss_barrier_mean, error_barrier_mean: max_α v(α) − (v_a + v_b)/2 (Frankle et al., 2020).
        center_loss, center_accuracy: L(θ) at α = 0 (direction; None otherwise).
        direction_norm: ‖d‖ (direction; None otherwise).
        n_evals: full-data loss evaluations; seconds: wall time.
        settings: the options used (buffers, normalization, seed, ...).
        direction: the flat direction used (direction kind), left out of :meth:`to_dict`.
    """

    kind: str
    alphas: Tensor
    loss: Tensor
    accuracy: Tensor | None
    loss_a: float | None = None
    loss_b: float | None = None
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    loss_barrier: float | None = None
    error_barrier: float | None = None
    loss_barrier_mean: float | None = None
    error_barrier_mean: float | None = None
    center_loss: float | None = None
    center_accuracy: float | None = None
    direction_norm: float | None = None
    n_evals: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    direction: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Numbers and lists only (the direction is left out)."""
        out = {k: v for k, v in vars(self).items() if k != "direction"}
        for k in ("alphas", "loss", "accuracy"):
            out[k] = None if out[k] is None else out[k].tolist()
        out["settings"] = dict(self.settings)
        return out


@dataclass
class SurfaceResult:
    """A 2-D loss surface L(θ + α d_1 + β d_2) on a grid.

    Attributes:
        alphas, betas: the grid along d_1 and d_2 (float64).
        loss: matrix with ``loss[i, j]`` = L(θ + α_i d_1 + β_j d_2) (float64).
        accuracy: the same for top-1 accuracy, or None.
        center_loss, center_accuracy: L(θ) and its accuracy.
        directions_kind: ``"random"``, ``"hessian"`` or ``"given"``.
        eigenvalues: the two Hessian eigenvalues (``"hessian"``; None otherwise).
        direction_norms: ‖d_1‖, ‖d_2‖.
        n_evals: full-data loss evaluations; n_hvp: Hessian-vector products; seconds: wall time.
        settings: the options used.
        directions: the two flat directions (left out of :meth:`to_dict`).
    """

    alphas: Tensor
    betas: Tensor
    loss: Tensor
    accuracy: Tensor | None
    center_loss: float
    center_accuracy: float | None
    directions_kind: str
    eigenvalues: list[float] | None
    direction_norms: list[float]
    n_evals: int
    n_hvp: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    directions: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Numbers and (nested) lists only (the directions are left out)."""
        out = {k: v for k, v in vars(self).items() if k != "directions"}
        for k in ("alphas", "betas", "loss", "accuracy"):
            out[k] = None if out[k] is None else out[k].tolist()
        out["settings"] = dict(self.settings)
        return out


@dataclass
class SharpnessResult:
    """Random-direction sharpness S = max_{k, s=±1} L(θ + s r d_k) − L(θ).

    Attributes:
        sharpness: S; mean_increase: the mean of the 2K increases; increases: all of them,
            ordered (d_1, +), (d_1, −), (d_2, +), ...
        base_loss: L(θ); radius: r; n_directions: K.
        n_evals: full-data evaluations (2K + 1); seconds: wall time.
    """

    sharpness: float
    mean_increase: float
    increases: list[float]
    base_loss: float
    radius: float
    n_directions: int
    n_evals: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))
