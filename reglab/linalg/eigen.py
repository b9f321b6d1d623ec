"""Extreme eigenpairs of a symmetric operator: Lanczos with full reorthogonalization and power iteration.

Both take a :class:`~reglab.linalg.operators.LinearOperator` (or anything with
``matvec``, ``shape``, ``dtype`` and ``device``) and return an
:class:`EigResult` with the eigenvalues, the unit eigenvectors as columns,
the residual norms ‖A y − θ y‖ and what it cost.

- Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, §10.1):
  builds an orthonormal Krylov basis Q_m and the tridiagonal T_m = Q_mᵀ A Q_m;
  the eigenpairs (θ_i, s_i) of T_m give Ritz pairs (θ_i, Q_m s_i) whose
  residual norm is exactly β_m |e_mᵀ s_i| when Q_m is orthonormal, which full
  reorthogonalization (two Gram-Schmidt passes, "twice is enough") keeps to
  round-off. Stops when the k wanted Ritz pairs have relative residual ≤ tol.
  The Krylov sequence starts from a random unit vector r, or from
  s/‖s‖ + r when a start direction s is given (a guess of the wanted
  eigenvectors: the closer, the fewer products; r keeps every eigenvector's
  component nonzero with probability 1, so a poor guess costs about one
  product, never the answer).
- Power iteration with deflation (the method of PyHessian, Yao et al. 2020):
  v ← A' v / ‖A' v‖ on A' = A − Σ_j λ_j u_j u_jᵀ, one eigenpair at a time; it
  converges to the eigenvalue of largest *magnitude* at the rate |λ_2/λ_1|,
  which is why Lanczos is the default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reglab.core.errors import ShapeError
from reglab.core.validation import check_choice, check_float, check_int

WHICH = ("largest", "smallest", "magnitude")


@dataclass
class EigResult:
    """Eigenpairs found by an iterative method.

    ``values`` are sorted as asked (``which``), ``vectors`` are the matching
    unit eigenvectors as columns (n × k), ``residuals`` the norms ‖A y − θ y‖,
    ``n_hvp`` the operator products used, ``seconds`` the wall time and
    ``converged`` whether every residual met the tolerance.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_hvp: int
    seconds: float
    converged: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Numbers only (the eigenvectors are left out)."""
        return {
            "values": self.values.tolist(),
            "residuals": self.residuals.tolist(),
            "n_hvp": self.n_hvp,
            "seconds": self.seconds,
            "converged": self.converged,
            **self.extra,
        }


def random_unit(n: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> Tensor:
    """A Gaussian vector normalised to length 1, drawn from ``generator`` (the global RNG is not touched)."""
    v = torch.randn(n, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / v.norm()


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (validated)."""
    check_int("seed", seed, 0)
    return torch.Generator().manual_seed(int(seed))


class Lanczos:
    """The Lanczos process on ``operator`` from a start vector, with full reorthogonalization.

    After j calls of :meth:`extend`, ``alphas``/``betas`` hold the j×j
    tridiagonal T_j (``betas[j-1]`` is the norm of the next residual) and
    ``basis`` the orthonormal Krylov basis. When the Krylov space becomes
    invariant (β ≈ 0) ``invariant`` turns True: the Ritz values found so far
    are exact eigenvalues of A, and :meth:`restart` continues with a new start
    vector orthogonal to the basis (T becomes block diagonal). ``exhausted``
    means the basis spans the whole space.
    """

    def __init__(self, operator: Any, start: Tensor):
        self.operator = operator
        self._basis = torch.empty(start.shape[0], 16, dtype=start.dtype, device=start.device)
        self._size = 0
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.invariant = False
        self._next = start / start.norm()

    @property
    def steps(self) -> int:
        return len(self.alphas)

    @property
    def basis(self) -> Tensor:
        """The orthonormal Krylov basis as columns (n × j)."""
        return self._basis[:, : self._size]

    @property
    def exhausted(self) -> bool:
        return self._size >= self.operator.shape[0]

    def _append(self, q: Tensor) -> None:
        if self._size == self._basis.shape[1]:  # grow by doubling
            grown = torch.empty(q.shape[0], 2 * self._size, dtype=q.dtype, device=q.device)
            grown[:, : self._size] = self._basis
            self._basis = grown
        self._basis[:, self._size] = q
        self._size += 1

    def _orthogonalize(self, w: Tensor) -> Tensor:
        Q = self.basis
        for _ in range(2):  # classical Gram-Schmidt twice against the whole basis ("twice is enough")
            w = w - Q @ (Q.T @ w)
        return w

    def extend(self) -> None:
        """One more Lanczos step (one operator product)."""
        if self.invariant or self.exhausted:
            return
        q = self._next
        self._append(q)
        product = self.operator.matvec(q)
        alpha = float(q @ product)
        w = self._orthogonalize(product)
        beta = float(w.norm())
        self.alphas.append(alpha)
        scale = max(abs(a) for a in self.alphas) + max(self.betas, default=0.0)
        if beta <= 1e3 * torch.finfo(w.dtype).eps * max(scale, 1e-300) or self.exhausted:
            self.betas.append(0.0)
            self.invariant = True
        else:
            self.betas.append(beta)
            self._next = w / beta

    def restart(self, vector: Tensor) -> None:
        """Continue from ``vector`` made orthogonal to the basis (after an invariant subspace was found)."""
        if self.exhausted:
            return
        w = self._orthogonalize(vector)
        self._next = w / w.norm()
        self.invariant = False

    def tridiagonal(self) -> Tensor:
        """T_j in float64."""
        a = torch.tensor(self.alphas, dtype=torch.float64)
        b = torch.tensor(self.betas[:-1], dtype=torch.float64)
        return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values θ (ascending), the eigenvectors S of T_j and the residual norms β_j |e_jᵀ s_i|."""
        theta, S = torch.linalg.eigh(self.tridiagonal())
        return theta, S, abs(self.betas[-1]) * S[-1].abs()


def _order(values: Tensor, which: str) -> Tensor:
    if which == "largest":
        return torch.argsort(values, descending=True)
    if which == "smallest":
        return torch.argsort(values)
    return torch.argsort(values.abs(), descending=True)


def lanczos(
    operator: Any,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    start: Tensor | None = None,
) -> EigResult:
    """The ``k`` extreme eigenpairs of a symmetric operator by Lanczos with full reorthogonalization.

    Args:
        operator: a :class:`LinearOperator` (``matvec``, ``shape``, ``dtype``, ``device``).
        k: number of eigenpairs, 1 <= k <= n.
        which: ``"largest"`` (algebraic; the sharpness λ_max), ``"smallest"`` or ``"magnitude"``.
        tol: stop when every wanted Ritz pair has ‖A y − θ y‖ <= tol · max(|θ|, ‖T‖).
        max_iter: at most this many products (default ``min(n, max(10 k + 20, 100))``).
        seed: seeds the start vector (a private generator; the global RNG is not used).
        start: a guess of the wanted eigenvectors (or of their span), shape ``(n,)``; the sequence starts
            from ``start/‖start‖ + r`` with r the random unit vector (None or a zero vector: r alone).

    Returns:
        :class:`EigResult`; ``converged`` is False if ``max_iter`` ran out first.

    Raises:
        ShapeError: ``start`` is not of shape ``(n,)``.

    Example:
        >>> import torch
        >>> from reglab.linalg.operators import MatrixOperator
        >>> A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
        >>> [round(v, 6) for v in lanczos(MatrixOperator(A), k=3, tol=1e-8).values.tolist()]
        [50.0, 49.0, 48.0]
    """
    start_time = time.perf_counter()
    n = operator.shape[0]
    check_int("k", k, 1, n)
    check_float("tol", tol, 0.0, low_open=True)
    check_choice("which", which, WHICH)
    max_iter = min(n, max(10 * k + 20, 100)) if max_iter is None else check_int("max_iter", max_iter, k)
    if start is not None and start.shape != (n,):
        raise ShapeError(f"start must be a vector of shape ({n},), got {tuple(start.shape)}")
    start_products = operator.n_matvec
    gen = generator(seed)
    values, vectors, residuals, converged, steps = _lanczos_run(operator, k, which, tol, max_iter, gen, start)
    # A single Krylov sequence sees one direction of each eigenspace, so a repeated eigenvalue is found once.
    # Check the complement of what was found: add any eigenvalue of the deflated operator that belongs in the top k.
    for _ in range(k - 1 if converged else 0):  # each round adds one missing eigenvalue at most
        if len(values) >= n:
            break
        deflated = _Deflated(operator, vectors, values, which)
        extra = _lanczos_run(deflated, 1, which, tol, max_iter, gen)
        if not extra[3] or not _beyond(float(extra[0][0]), float(values[-1]), which, tol * float(values.abs().max())):
            break
        values = torch.cat([values, extra[0]])
        vectors = torch.cat([vectors, extra[1]], dim=1)
        residuals = torch.cat([residuals, extra[2]])
        keep = _order(values, which)[:k]
        values, vectors, residuals, steps = values[keep], vectors[:, keep], residuals[keep], steps + extra[4]
    return EigResult(
        values=values,
        vectors=vectors,
        residuals=residuals,
        n_hvp=operator.n_matvec - start_products,
        seconds=time.perf_counter() - start_time,
        converged=converged,
        extra={"method": "lanczos", "iterations": steps},
    )


def _beyond(value: float, last: float, which: str, margin: float) -> bool:
    """Whether ``value`` comes strictly before ``last`` in the ``which`` order, by more than ``margin``.

    A value equal to the last one found changes no eigenvalue of the answer, only which vector spans its space.
    """
    if which == "largest":
        return value > last + margin
    if which == "smallest":
        return value < last - margin
    return abs(value) > abs(last) + margin


class _Deflated:
    """P A P + shift·YYᵀ with P = I − YYᵀ: A on the complement of the found eigenvectors Y, whose own
    eigenvalues are moved where ``which`` never looks (below the smallest found for "largest", ...)."""

    def __init__(self, operator: Any, vectors: Tensor, values: Tensor, which: str):
        self.operator, self.Y = operator, vectors
        spread = float(values.abs().max()) + 1.0
        self.shift = {"largest": float(values.min()) - 2 * spread, "smallest": float(values.max()) + 2 * spread}.get(
            which, 0.0
        )
        self.shape, self.dtype, self.device = operator.shape, operator.dtype, operator.device

    @property
    def n_matvec(self) -> int:
        return self.operator.n_matvec

    def matvec(self, v: Tensor) -> Tensor:
        inside = self.Y.T @ v
        w = self.operator.matvec(v - self.Y @ inside)
        return w - self.Y @ (self.Y.T @ w) + self.shift * (self.Y @ inside)


def _lanczos_run(
    operator: Any, k: int, which: str, tol: float, max_iter: int, gen: torch.Generator, start: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, bool, int]:
    """One Lanczos sequence: (values, vectors, residuals, converged, steps) of the k wanted Ritz pairs."""
    n = operator.shape[0]
    first = random_unit(n, operator.dtype, operator.device, gen)
    if start is not None:
        start = start.to(device=operator.device, dtype=operator.dtype)
        norm = float(start.norm())
        if 0 < norm < math.inf:
            first = first + start / norm
    process = Lanczos(operator, first)
    while True:
        process.extend()
        theta, S, residuals = process.ritz()
        chosen = _order(theta, which)[:k]
        scale = max(float(theta.abs().max()), 1e-300)
        converged = len(chosen) == k and bool((residuals[chosen] <= tol * scale).all())
        if converged or process.exhausted or process.steps >= max_iter:
            break
        if process.invariant:  # the Krylov space closed before k pairs were found: continue elsewhere
            process.restart(random_unit(n, operator.dtype, operator.device, gen))
    Q = process.basis
    vectors = Q @ S[:, chosen].to(dtype=Q.dtype, device=Q.device)
    return theta[chosen], vectors, residuals[chosen], converged or process.exhausted, process.steps


def power_iteration(
    operator: Any,
    k: int = 1,
    tol: float = 1e-4,
    max_iter: int = 1000,
    seed: int = 0,
) -> EigResult:
    """The ``k`` eigenpairs of largest magnitude by power iteration with deflation.

    For each pair: v ← w / ‖w‖ with w = A v − Σ_{found j} λ_j (u_jᵀ v) u_j,
    λ = vᵀ w, until ‖w − λ v‖ <= tol · |λ|. Converges at rate |λ_{i+1}/λ_i|;
    prefer :func:`lanczos`. ``max_iter`` bounds the products per eigenpair.

    Example:
        >>> import torch
        >>> from reglab.linalg.operators import MatrixOperator
        >>> A = torch.diag(torch.tensor([5.0, -1.0, 0.5], dtype=torch.float64))
        >>> round(power_iteration(MatrixOperator(A), tol=1e-10).values.item(), 6)
        5.0
    """
    start_time = time.perf_counter()
    n = operator.shape[0]
    check_int("k", k, 1, n)
    check_float("tol", tol, 0.0, low_open=True)
    check_int("max_iter", max_iter, 1)
    start_products = operator.n_matvec
    gen = generator(seed)
    values, vectors, residuals, converged = [], [], [], True

    def deflated(v: Tensor) -> Tensor:
        w = operator.matvec(v)
        for lam, u in zip(values, vectors, strict=True):
            w = w - lam * (u @ v) * u
        return w

    for _ in range(k):
        v = random_unit(n, operator.dtype, operator.device, gen)
        for _ in range(max_iter):
            w = deflated(v)
            lam = float(v @ w)
            res = float((w - lam * v).norm())
            if res <= tol * max(abs(lam), 1e-300) or float(w.norm()) == 0.0:
                break
            v = w / w.norm()
        else:
            converged = False
        values.append(lam)
        vectors.append(v)
        residuals.append(res)
    return EigResult(
        values=torch.tensor(values, dtype=torch.float64),
        vectors=torch.stack(vectors, dim=1),
        residuals=torch.tensor(residuals, dtype=torch.float64),
        n_hvp=operator.n_matvec - start_products,
        seconds=time.perf_counter() - start_time,
        converged=converged,
        extra={"method": "power"},
    )


def relative_error(estimate: float, exact: float) -> float:
    """|estimate − exact| / |exact| (inf when exact is 0 and the estimate is not)."""
    if exact == 0:
        return 0.0 if estimate == 0 else math.inf
    return abs(estimate - exact) / abs(exact)
