"""Lists of tensors treated as one vector: norms, inner products, finiteness, the SAM ascent and GSAM's split.

The weight-perturbation optimizers see the parameters (and each gradient) as
one long vector stored as a list of tensors. These helpers compute on such
lists with fused ``torch._foreach_*`` kernels where every tensor shares one
dtype and device, and tensor by tensor otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NORM_EPS",
    "all_finite",
    "ascent_offsets",
    "ascent_scale",
    "finite_loss",
    "global_norm",
    "inner",
    "norms",
    "orthogonal_part",
    "take_grad",
]

#: added to a norm before dividing by it, as in the reference implementations
#: (davda54/sam, juntang-zhuang/GSAM, xxgege/GAM, hiyouga/AMP-Regularizer).
NORM_EPS = 1e-12


def common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def same_kind(tensors: Sequence[Tensor]) -> bool:
    """Whether all tensors share the first one's dtype and device (the fused ``torch._foreach_*`` case)."""
    device, dtype = tensors[0].device, tensors[0].dtype
    return all(t.device == device and t.dtype == dtype for t in tensors)


def norms(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """The tensors' Euclidean norms as one 1-D tensor on the first one's device, in ``dtype`` (default common)."""
    device, common = tensors[0].device, common_dtype(tensors)
    dtype = dtype or common
    if same_kind(tensors):  # one fused call
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=None if dtype == common else dtype))
    return torch.stack([torch.linalg.vector_norm(t, dtype=dtype).to(device) for t in tensors])


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of ``tensors`` (a 0-dim tensor)."""
    return torch.linalg.vector_norm(norms(tensors))


def inner(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Sum over the list of ``<a_i, b_i>`` (a 0-dim tensor)."""
    device, dtype = a[0].device, common_dtype(list(a) + list(b))
    return torch.stack([(x * y).sum().to(device=device, dtype=dtype) for x, y in zip(a, b)]).sum()


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry is finite, read from the tensors' norms (one reduction each, one host sync).

    A NaN or an infinity makes a norm non-finite; so does a norm that overflows its dtype (entries of about
    ``sqrt(max / numel)``; norms of half-precision tensors are taken in float32), which counts as non-finite
    here. Several times cheaper than ``isfinite(t).all()``, which allocates a mask per tensor.
    """
    if not tensors:
        return True
    # one host read of the sum (torch.isfinite is several kernels; math.isfinite on the number is free)
    return math.isfinite(norms(tensors, torch.promote_types(common_dtype(tensors), torch.float32)).sum().item())


def take_grad(p: Tensor) -> Tensor:
    """``p.grad`` (zeros if None), detached from ``p``: the next closure call cannot change it.

    The gradient tensor itself is taken and ``p.grad`` set to None, so the next
    backward allocates a new one (no copy). A gradient that is a view of
    other memory (DistributedDataParallel's ``gradient_as_bucket_view``, whose
    bucket the next backward overwrites) is copied instead.
    """
    grad = p.grad
    if grad is None:
        return torch.zeros_like(p)
    if grad._is_view() or grad.requires_grad:
        return grad.detach().clone()
    p.grad = None
    return grad


def finite_loss(loss: Any) -> bool:
    if loss is None:
        return True
    try:
        return math.isfinite(float(loss))
    except (TypeError, ValueError, RuntimeError):
        return True  # not a scalar (e.g. a tuple): nothing to check here


def ascent_offsets(
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    radius: float,
    *,
    adaptive: bool = False,
    eta: float = 0.0,
) -> list[Tensor]:
    """The SAM step of length ``radius`` along ``vectors``: ``e = radius * T^2 v / (||T v|| + 1e-12)``.

    ``T = |w| + eta`` elementwise when ``adaptive`` (ASAM), else the identity,
    with ``w`` the current values of ``params``. The norm is over all tensors
    together. This is ``first_step`` of davda54/sam (``e_w = (p^2 if adaptive
    else 1) * g * rho / (||(|p| if adaptive else 1) * g|| + 1e-12)``) with the
    optional ``eta`` of SamsungLabs/ASAM.
    """
    if adaptive:
        scales = [p.detach().abs() + eta for p in params]
        norm = global_norm([s * v for s, v in zip(scales, vectors)])
        coef = radius / (norm + NORM_EPS)
        return [v * (s * s) * coef for s, v in zip(scales, vectors)]
    coef = ascent_scale(vectors, radius)
    if same_kind(vectors):
        return list(torch._foreach_mul(list(vectors), coef))
    return [v * coef for v in vectors]


def ascent_scale(vectors: Sequence[Tensor], radius: float) -> float | Tensor:
    """``radius / (||v|| + 1e-12)`` with the norm over all tensors: a Python float when they are on the CPU (no
    extra kernels), a 0-dim tensor elsewhere (no host synchronization)."""
    norm = global_norm(vectors)
    if norm.device.type == "cpu":
        return radius / (norm.item() + NORM_EPS)
    return radius / (norm + NORM_EPS)


def orthogonal_part(v: Sequence[Tensor], u: Sequence[Tensor]) -> list[Tensor]:
    """``v - cos(v, u) ||v|| u / (||u|| + 1e-12)``: the part of ``v`` orthogonal to ``u``, as GSAM computes it.

    ``cos = <v, u> / (||v|| ||u|| + 1e-12)`` (juntang-zhuang/GSAM ``gradient_decompose``).
    """
    nv, nu = global_norm(v), global_norm(u)
    cos = inner(v, u) / (nv * nu + NORM_EPS)
    coef = cos * nv / (nu + NORM_EPS)
    return [a - b * coef for a, b in zip(v, u)]


# --------------------------------------------------------------------------- fp16 gradient scaling
