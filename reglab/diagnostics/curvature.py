"""Curvature of the training loss: Hessian eigenvalues, trace and spectral density, linear stability, sharpness probe.

Every function takes ``(model, loss_fn, data)`` — any ``nn.Module``, a loss
``loss_fn(outputs, targets)`` that averages over its batch, and an
``(inputs, targets)`` pair or a DataLoader — and measures the curvature of the
full-data loss L(θ) = (1/N) Σ_i ℓ_i through
:class:`reglab.linalg.operators.HessianOperator` (``curvature="hessian"``,
``"ggn"`` or ``"empirical_fisher"``; ``params`` restricts it to some layers).
The model is evaluated in eval mode through ``functional_call``: its
parameters, buffers, mode and the global RNG are left as they were. Each result
says what it cost (``n_hvp``, ``seconds``) and its own error (eigen residuals,
trace standard error).

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> eig = hessian_eigs(net, nn.functional.cross_entropy, (x, y), k=2)
    >>> eig.values.shape, eig.converged
    (torch.Size([2]), True)
    >>> report = stability_report(net, nn.functional.cross_entropy, (x, y), lr=0.1)
    >>> report.threshold
    20.0
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core.errors import ConfigError
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.diagnostics.probe import Probe, ReportSection, probe_loss
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.density import DensityResult, spectral_density
from reglab.linalg.eigen import EigResult, generator, lanczos, power_iteration
from reglab.linalg.operators import HessianOperator
from reglab.linalg.trace import TraceResult, hutchinson, hutchpp

LossFn = Callable[[Tensor, Tensor], Tensor]
EIG_METHODS = ("lanczos", "power")
WARM_START_MIN_EXAMPLES = 128  # below this a subsample's Hessian is a poor guide, and products are cheap anyway
WARM_START_TOL = 1e-2  # the subsample's own error limits its eigenvectors: a tighter tolerance buys nothing
TRACE_METHODS = ("hutchpp", "hutchinson", "exact")


def hessian_eigs(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 1,
    method: str = "lanczos",
    which: str | None = None,
    tol: float = 1e-4,
    max_iter: int | None = None,
    curvature: str = "hessian",
    params: Any = None,
    seed: int = 0,
    warm_start: float | None = 0.125,
) -> EigResult:
    """The ``k`` top eigenvalues (and eigenvectors) of the loss curvature.

    ``method="lanczos"`` (default; full reorthogonalization, stops when every
    wanted Ritz pair has ‖H y − θ y‖ <= tol·|θ_max|; ``tol`` bounds the
    residual, and the eigenvalue error is about residual²/gap, so tol = 1e-2
    typically gives eigenvalues to ~1e-4 relative) or ``"power"`` (power
    iteration with deflation as in PyHessian, eigenvalues of largest
    magnitude; ``max_iter`` per eigenpair; ``warm_start`` is not used). ``which`` is ``"largest"``
    (algebraic: the sharpness λ_max; Lanczos' default), ``"smallest"`` or
    ``"magnitude"`` (power iteration's only and default choice). Eigenvectors are flat, ordered as the selected
    ``named_parameters``; ``HessianOperator(...).unflatten`` maps them back.

    Warm start (Lanczos): with ``warm_start`` = f, Lanczos first runs on the
    curvature of a random f·N of the N examples (relative residual 1e-2,
    starting from that subsample's loss gradient, which lies mostly in the top
    eigenspace — Gur-Ari et al. 2018, "Gradient Descent Happens in a Tiny
    Subspace"), and the full-data run starts from the sum of its Ritz vectors
    (see :func:`~reglab.linalg.eigen.lanczos`'s ``start``). Its products cost f
    of a full one each; the full-data run's stopping rule is unchanged, so the
    answer meets ``tol`` whatever the guess. Skipped when f·N < 128 or
    ``warm_start`` is None. ``n_hvp`` counts full-data products only;
    ``extra`` gives ``warm_start_examples``, ``warm_start_hvp`` (products over
    those examples) and ``full_product_equivalents`` = n_hvp + warm_start_hvp·f.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1).double()
        >>> x = torch.randn(32, 3, dtype=torch.float64)
        >>> r = hessian_eigs(net, torch.nn.functional.mse_loss, (x, x.sum(1, keepdim=True)), k=1, tol=1e-10)
        >>> X = torch.cat([x, torch.ones(32, 1, dtype=torch.float64)], 1)  # MSE Hessian of a linear model: 2XᵀX/n
        >>> exact = torch.linalg.eigvalsh(2 * X.T @ X / 32).max()
        >>> bool(torch.isclose(r.values[0], exact))
        True
    """
    check_choice("method", method, EIG_METHODS)
    if warm_start is not None:
        check_float("warm_start", warm_start, 0.0, 1.0, low_open=True, high_open=True)
    operator = HessianOperator(model, loss_fn, data, params=params, curvature=curvature)
    if method == "power":
        if which not in (None, "magnitude"):
            raise ConfigError(
                f"which={which!r} needs method='lanczos'; power iteration finds the eigenvalues of largest "
                "magnitude (which='magnitude')"
            )
        return power_iteration(operator, k=k, tol=tol, max_iter=1000 if max_iter is None else max_iter, seed=seed)
    which = which or "largest"
    return warm_lanczos(operator, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed, fraction=warm_start)


def warm_lanczos(
    operator: HessianOperator,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    fraction: float | None = 0.125,
) -> EigResult:
    """Lanczos on ``operator`` started from Lanczos on a ``fraction`` of its examples (see :func:`hessian_eigs`)."""
    size = 0 if fraction is None else int(fraction * operator.num_examples)
    if size < WARM_START_MIN_EXAMPLES:
        return lanczos(operator, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed)
    start_time = time.perf_counter()
    sub = operator.subsample(size, generator(seed))
    gradient = sub.loss_and_gradient()[1]
    guess = lanczos(sub, k=k, which=which, tol=max(tol, WARM_START_TOL), seed=seed + 1, start=gradient)
    result = lanczos(operator, k=k, which=which, tol=tol, max_iter=max_iter, seed=seed, start=guess.vectors.sum(1))
    result.seconds = time.perf_counter() - start_time
    result.extra |= {
        "warm_start_examples": size,
        "warm_start_hvp": guess.n_hvp,
        "full_product_equivalents": result.n_hvp + guess.n_hvp * size / operator.num_examples,
    }
    return result


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    method: str = "hutchpp",
    n_probes: int = 99,
    curvature: str = "hessian",
    params: Any = None,
    seed: int = 0,
) -> TraceResult:
    """tr(H) by Hutch++ (default), Hutchinson, or exactly (``"exact"``: n products, small models only).

    ``n_probes`` is the number of Hessian-vector products for the stochastic
    methods; the result carries the standard error of the estimate.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
        >>> data = (torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 2, (40,)))
        >>> exact = hessian_trace(net, torch.nn.functional.cross_entropy, data, method="exact").estimate
        >>> approx = hessian_trace(net, torch.nn.functional.cross_entropy, data, n_probes=60)
        >>> abs(approx.estimate - exact) < 4 * approx.stderr + 1e-9
        True
    """
    check_choice("method", method, TRACE_METHODS)
    operator = HessianOperator(model, loss_fn, data, params=params, curvature=curvature)
    if method == "exact":
        start = time.perf_counter()
        value = float(torch.trace(operator.to_dense()))
        samples = torch.empty(0, dtype=torch.float64)
        return TraceResult(value, 0.0, operator.n_matvec, time.perf_counter() - start, "exact", samples, value)
    estimator = hutchpp if method == "hutchpp" else hutchinson
    return estimator(operator, n_probes=n_probes, seed=seed)


def hessian_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    n_probes: int = 10,
    n_iter: int = 80,
    curvature: str = "hessian",
    params: Any = None,
    seed: int = 0,
) -> DensityResult:
    """The eigenvalue density of the curvature by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    ``n_probes`` × ``n_iter`` Hessian-vector products. Plot it with
    :func:`~reglab.diagnostics.plots.plot_density`; ``result.moment(p)`` estimates tr(H^p)/n.
    """
    operator = HessianOperator(model, loss_fn, data, params=params, curvature=curvature)
    return spectral_density(operator, n_probes=n_probes, n_iter=n_iter, seed=seed)


@dataclass
class StabilityReport:
    """Linear-stability conditions of a minimum for GD and SGD with learning rate η.

    - ``threshold`` = 2/η;
    - ``gd_stable``: λ_max(H) <= 2/η, the GD condition (a quadratic is
      stable under GD with step η iff every eigenvalue is in [0, 2/η]);
    - ``sgd_stable``: tr(H) <= 2/η, the necessary condition for SGD of Wu & Su
      (2023) at an interpolating minimum of the square loss;
    - ``frobenius_bound`` = √B/η and ``sgd_frobenius_stable``: ‖H‖_F <= √B/η,
      the batch-size-B condition of Wu, Wang & Su (2022), "The alignment
      property of SGD noise and how it helps select flat minima" (None when no
      batch size is given).

    ``trace_stderr`` is the standard error of the trace estimate; the
    verdicts compare the point estimates.
    """

    lr: float
    threshold: float
    lambda_max: float
    lambda_residual: float
    trace: float
    trace_stderr: float
    frobenius: float
    frobenius_stderr: float
    gd_stable: bool
    sgd_stable: bool
    batch_size: int | None
    frobenius_bound: float | None
    sgd_frobenius_stable: bool | None
    n_hvp: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stability_report(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    lr: float,
    batch_size: int | None = None,
    n_probes: int = 99,
    tol: float = 1e-4,
    curvature: str = "hessian",
    params: Any = None,
    seed: int = 0,
) -> StabilityReport:
    """λ_max(H), tr(H) and ‖H‖_F against the stability limits 2/η (GD, SGD) and √B/η (SGD, batch B).

    From "The Implicit Regularization of Dynamical Stability in Stochastic
    Gradient Descent" (Wu & Su, ICML 2023): a global minimum that is linearly
    stable for GD has λ_max(H) <= 2/η; one that is linearly stable for SGD has
    tr(H) <= 2/η, a much stronger constraint since tr(H) >= λ_max(H).

    Loss normalisation: H is the Hessian of exactly the loss the optimizer
    descends, L(θ) = (1/N) Σ_i ℓ_i(θ) with ``loss_fn`` averaging over its
    batch, so that one GD step is θ ← θ − η ∇L. The paper writes the square
    loss as ℓ_i = ½(f_i − y_i)², for which H = (1/N) Σ_i ∇f_i ∇f_iᵀ at an
    interpolating minimum; ``torch.nn.functional.mse_loss`` drops the ½, so its
    H (and the step it drives) is twice that — the conditions stay consistent
    as long as ``loss_fn`` is the training loss. The SGD condition is derived
    for the square loss at interpolation; for other losses and away from a
    minimum the numbers are still measured but the verdict is only indicative.

    Costs: Lanczos for λ_max, Hutch++ with ``n_probes`` products for the trace
    and ``n_probes`` products for the Frobenius norm (E‖Hz‖²).

    Args:
        lr: the learning rate η (> 0).
        batch_size: SGD's batch size B, for the Frobenius condition; None skips it.
    """
    from reglab.linalg.trace import frobenius_norm

    start = time.perf_counter()
    check_float("lr", lr, 0.0, low_open=True)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    operator = HessianOperator(model, loss_fn, data, params=params, curvature=curvature)
    top = lanczos(operator, k=1, tol=tol, seed=seed)
    trace = hutchpp(operator, n_probes=n_probes, seed=seed + 1)
    frob = frobenius_norm(operator, n_probes=n_probes, seed=seed + 2)
    threshold = 2.0 / lr
    lambda_max = float(top.values[0])
    bound = math.sqrt(batch_size) / lr if batch_size is not None else None
    return StabilityReport(
        lr=float(lr),
        threshold=threshold,
        lambda_max=lambda_max,
        lambda_residual=float(top.residuals[0]),
        trace=trace.estimate,
        trace_stderr=trace.stderr,
        frobenius=frob.estimate,
        frobenius_stderr=frob.stderr,
        gd_stable=lambda_max <= threshold,
        sgd_stable=trace.estimate <= threshold,
        batch_size=batch_size,
        frobenius_bound=bound,
        sgd_frobenius_stable=None if bound is None else frob.estimate <= bound,
        n_hvp=operator.n_matvec,
        seconds=time.perf_counter() - start,
    )


def _current_lr(optimizer: Any) -> float:
    return float(optimizer.param_groups[0]["lr"])


#: The report section of the sharpness probes (Hessian λ_max here, random-direction sharpness in landscape_probes).
SHARPNESS_SECTION = ReportSection(
    "sharpness",
    "Sharpness and the edge of stability",
    "λ_max of the training-loss Hessian with the stability limit 2/η (dashed): full-batch gradient descent "
    "sharpens progressively until λ_max reaches 2/η, then hovers there (Cohen et al. 2021, Gradient Descent "
    "on Neural Networks Typically Occurs at the Edge of Stability).",
    order=10,
)


@REGISTRY.register("sharpness")
class SharpnessProbe(Probe):
    """Logs λ_max of the training-loss Hessian, optionally tr(H), and the stability limit 2/η (edge of stability).

    Metrics (split ``probe``): ``sharpness`` (λ_max), ``sharpness_trace``
    (tr(H), when ``trace=True``) and ``stability_threshold`` (2/η with η the
    optimizer's current learning rate of its first parameter group). Plotted
    against steps, full-batch GD shows progressive sharpening up to 2/η and
    then the edge of stability (Cohen et al. 2021, "Gradient Descent on Neural
    Networks Typically Occurs at the Edge of Stability").

    The Hessian is of the trainer's loss (without penalties) on a fixed random
    subsample of ``n_examples`` training examples (all of them when the set is
    smaller), chosen once with ``seed``.

    Args:
        every: measure every this many steps.
        n_examples: training examples the Hessian is taken over (>= 1).
        trace: also estimate tr(H) by Hutch++ with ``n_probes`` products.
        n_probes: Hessian-vector products for the trace.
        tol: Lanczos tolerance (relative residual).
        seed: subsample and probe seed.
    """

    report_section = SHARPNESS_SECTION
    labels = {
        "sharpness": r"$\lambda_{\max}$ (sharpness) and $2/\eta$",
        "sharpness_trace": r"tr$(H)$ (Hessian trace)",
        "stability_threshold": r"stability limit $2/\eta$",
    }

    def __init__(
        self,
        every: int = 100,
        n_examples: int = 1024,
        trace: bool = False,
        n_probes: int = 30,
        tol: float = 1e-3,
        seed: int = 0,
    ):
        super().__init__(every)
        self.n_examples = check_int("n_examples", n_examples, 1)
        self.trace = check_bool("trace", trace)
        self.n_probes = check_int("n_probes", n_probes, 4)
        self.tol = check_float("tol", tol, 0.0, low_open=True)
        self.seed = check_int("seed", seed, 0)

    def measure(self, trainer: Any) -> dict[str, float]:
        x, y = trainer.examples("train", self.n_examples, self.seed)
        operator = HessianOperator(trainer.model, probe_loss(trainer), (x, y))
        metrics = {
            "sharpness": float(warm_lanczos(operator, k=1, tol=self.tol, seed=self.seed).values[0]),
            # 2/η; infinite at η = 0 (the end of a schedule that decays to zero)
            "stability_threshold": 2.0 / lr if (lr := _current_lr(trainer.optimizer)) > 0 else math.inf,
        }
        if self.trace:
            metrics["sharpness_trace"] = hutchpp(operator, n_probes=self.n_probes, seed=self.seed).estimate
        return metrics
