"""The largest singular value of a matrix by power iteration with persistent vectors.

(:func:`reglab.linalg.power_iteration` finds eigenvalues of a symmetric
linear operator; this one finds the top singular value of a matrix ``W`` and
is differentiable in ``W``, as spectral normalization needs.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from reglab.core.errors import ShapeError
from reglab.core.validation import check_int

_EPS = 1e-12  # the normalization floor of torch's spectral_norm


def singular_power_iteration(
    W: Tensor, u: Tensor, v: Tensor, n_iter: int = 1, *, eps: float = _EPS
) -> tuple[Tensor, ...]:
    """Largest singular value of a matrix by power iteration started from ``(u, v)``.

    Each iteration is ``v <- normalize(W^T u)``, ``u <- normalize(W v)``; the
    estimate is ``sigma = u^T W v`` with the new ``u`` and ``v`` detached, so
    ``sigma`` is differentiable in ``W`` with gradient ``u v^T``, the gradient of
    the exact sigma_max once ``(u, v)`` has converged to the top singular pair
    ("Spectral Normalization for Generative Adversarial Networks", Miyato et
    al., 2018; ``torch.nn.utils.spectral_norm``). With ``n_iter = 0`` the
    estimate is taken at the given vectors (they should then be unit vectors).

    Convergence: starting from ``u_0`` at angle theta_0 from the top left
    singular vector, after ``t >= 1`` iterations
    ``0 <= 1 - sigma / sigma_1 <= tan(theta_0)^2 (sigma_2 / sigma_1)^(4t - 2)``.

    Example:
        >>> W = torch.randn(5, 3)
        >>> sigma, u, v = singular_power_iteration(W, torch.randn(5), torch.randn(3), n_iter=50)

    Args:
        W: a matrix ``(m, n)``.
        u: a vector ``(m,)`` (the left vector; it seeds the iteration).
        v: a vector ``(n,)`` (used as it is only when ``n_iter = 0``).
        n_iter: number of iterations, >= 0.
        eps: floor of the norms divided by (a zero matrix gives sigma = 0).

    Returns:
        ``(sigma, u, v)``: the estimate (a scalar tensor) and the new vectors
        (fresh tensors, detached, in ``W``'s dtype and device).

    Raises:
        ShapeError: ``W`` is not a matrix or the vectors do not fit it.
        ConfigError: ``n_iter`` is not an int >= 0.
    """
    check_int("n_iter", n_iter, 0)
    if W.ndim != 2:
        raise ShapeError(f"singular_power_iteration needs a matrix W, got shape {tuple(W.shape)}")
    m, n = W.shape
    if tuple(u.shape) != (m,) or tuple(v.shape) != (n,):
        raise ShapeError(
            f"singular_power_iteration: W has shape {(m, n)}, so u must be ({m},) and v ({n},); "
            f"got u {tuple(u.shape)} and v {tuple(v.shape)}"
        )
    return _singular_power_iteration(W, u, v, n_iter, eps)


def _singular_power_iteration(
    W: Tensor, u: Tensor, v: Tensor, n_iter: int, eps: float = _EPS
) -> tuple[Tensor, Tensor, Tensor]:
    """`singular_power_iteration` without the argument checks (the returned vectors never alias the inputs)."""
    with torch.no_grad():
        Wd = W.detach()
        if u.dtype != Wd.dtype or u.device != Wd.device or v.dtype != Wd.dtype or v.device != Wd.device:
            u, v = u.to(dtype=Wd.dtype, device=Wd.device), v.to(dtype=Wd.dtype, device=Wd.device)
        u, v = u.detach(), v.detach()
        if n_iter == 0:
            u, v = u.clone(), v.clone()
        for i in range(n_iter):
            v = _normalize(Wd.mT @ u, eps)
            if i < n_iter - 1:
                u = _normalize(Wd @ v, eps)
    Wv = W @ v  # the last product carries the gradient: sigma = u^T W v with u = normalize(W v) detached
    if n_iter > 0:
        u = _normalize(Wv.detach(), eps)
    return torch.dot(u, Wv), u, v


def _normalize(x: Tensor, eps: float) -> Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)
