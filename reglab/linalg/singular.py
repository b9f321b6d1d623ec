"""The largest singular value of a matrix by power iteration with persistent vectors.

(:func:`reglab.linalg.power_iteration` finds eigenvalues of a symmetric
linear operator; this one finds the top singular value of a matrix ``W`` and
is differentiable in ``W``, as spectral normalization needs.)
"""

from __future__ import annotations

from collections.abc import Sequence

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
    sigmas, (u,), (v,) = singular_power_iterations([W], [u], [v], n_iter, eps)
    return sigmas[0], u, v


def singular_power_iterations(
    matrices: Sequence[Tensor], us: Sequence[Tensor], vs: Sequence[Tensor], n_iter: int, eps: float = _EPS
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`singular_power_iteration` on several matrices at once, without argument checks.

    The iterations of all matrices run together without autograd (the
    normalizations as one fused call per step, ``torch._foreach_norm``), and
    the estimates ``sigma_l = u_l^T W_l v_l`` come back as one vector ``(L,)``
    made by a single autograd node whose backward gives each ``W_l`` the
    gradient ``g_l u_l v_l^T``; a penalty on many layers thus adds one node to
    the graph instead of a matrix-vector product and a dot product per layer.
    With ``n_iter >= 1``, ``u_l = W_l v_l / max(||W_l v_l||, eps)``, so
    ``sigma_l = ||W_l v_l||^2 / max(||W_l v_l||, eps)`` is computed from the norm.

    Args:
        matrices: ``L >= 1`` matrices ``(m_l, n_l)`` (any dtype and device each).
        us: the left vectors ``(m_l,)``.
        vs: the right vectors ``(n_l,)``.
        n_iter: iterations, >= 0.
        eps: floor of the norms divided by.

    Returns:
        ``(sigmas, us, vs)``: the estimates, shape ``(L,)`` in the first matrix's dtype,
        and the new vectors (fresh, detached, each in its matrix's dtype and device).
    """
    out = _TopSingularValues.apply(list(us), list(vs), n_iter, eps, *matrices)
    n = len(matrices)
    return out[0], list(out[1 : n + 1]), list(out[n + 1 :])


class _TopSingularValues(torch.autograd.Function):
    """sigma_l = u_l^T W_l v_l after ``n_iter`` power iterations; d sigma_l / d W_l = u_l v_l^T (u, v held fixed)."""

    @staticmethod
    def forward(
        ctx, us: list[Tensor], vs: list[Tensor], n_iter: int, eps: float, *matrices: Tensor
    ) -> tuple[Tensor, ...]:
        # autograd is off inside forward: the iteration records nothing
        Ws = [W.detach() for W in matrices]
        us, vs = [_like(u, W) for u, W in zip(us, Ws)], [_like(v, W) for v, W in zip(vs, Ws)]
        if n_iter == 0:
            us, vs = [u.clone() for u in us], [v.clone() for v in vs]
            sigmas = torch.stack([torch.dot(u, W @ v) for u, W, v in zip(us, Ws, vs)])
        for i in range(n_iter):
            vs = _normalize_all([W.mT @ u for W, u in zip(Ws, us)], eps)
            Wv = [W @ v for W, v in zip(Ws, vs)]
            if i < n_iter - 1:
                us = _normalize_all(Wv, eps)
            else:
                norms = torch.stack(torch._foreach_norm(Wv))
                floors = norms.clamp_min(eps)
                us = torch._foreach_div(Wv, floors.unbind())
                sigmas = norms * norms / floors
        ctx.mark_non_differentiable(*us, *vs)
        ctx.save_for_backward(*us, *vs)
        return (sigmas, *us, *vs)

    @staticmethod
    def backward(ctx, grad: Tensor, *vector_grads: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        n = len(saved) // 2
        grads = [torch.outer(g * u, v) for g, u, v in zip(grad.unbind(), saved[:n], saved[n:])]
        return (None, None, None, None, *grads)


def _like(x: Tensor, W: Tensor) -> Tensor:
    """``x`` detached, in ``W``'s dtype and device (a copy only where they differ)."""
    x = x.detach()
    return x if x.dtype == W.dtype and x.device == W.device else x.to(dtype=W.dtype, device=W.device)


def _normalize_all(xs: list[Tensor], eps: float) -> list[Tensor]:
    """Each vector divided by max(its norm, eps): three fused calls for the whole list."""
    return torch._foreach_div(xs, torch._foreach_clamp_min(torch._foreach_norm(xs), eps))
