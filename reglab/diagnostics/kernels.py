"""Kernel and regime diagnostics: the empirical NTK, kernel–target alignment, and lazy-versus-rich change measures.

- :func:`empirical_ntk` — Θ(x, x') = J(x) J(x')ᵀ with J = ∂f/∂θ ("Neural Tangent
  Kernel: Convergence and Generalization in Neural Networks", Jacot, Gabriel &
  Hongler, 2018), by chunked ``torch.func.jacrev`` + ``vmap``.
- :func:`kernel_alignment` — A(K, Y) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F) ("On
  Kernel-Target Alignment", Cristianini, Shawe-Taylor, Elisseeff & Kandola,
  2002), optionally centred ("Algorithms for Learning Kernels Based on Centered
  Alignment", Cortes, Mohri & Rostamizadeh, 2012).
- :func:`relative_weight_change`, :func:`relative_kernel_change` and the
  ``ntk_change`` probe — ‖θ_t − θ_0‖/‖θ_0‖ and ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F, which stay
  near 0 in the lazy (kernel) regime ("On Lazy Training in Differentiable
  Programming", Chizat, Oyallon & Bach, 2019).

The model is evaluated in eval mode through ``functional_call`` on copies of
its parameters and buffers: parameters, buffers and mode are left as they
were, and no random numbers are drawn except by the probe's own seeded
generator.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> x = torch.randn(5, 2)
    >>> K = empirical_ntk(net, x)  # (5, 5): summed over the 3 outputs
    >>> K.shape, bool(torch.allclose(K, K.T, atol=1e-6))
    (torch.Size([5, 5]), True)
    >>> empirical_ntk(net, x, reduce="full").shape
    torch.Size([5, 5, 3, 3])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_choice, check_int
from reglab.diagnostics.probe import Probe, ReportSection
from reglab.diagnostics.registry import REGISTRY
from reglab.linalg.functional import FunctionalModel, select_params

REDUCTIONS = ("trace", "full")
#: Entries of one chunk's Jacobian when ``empirical_ntk`` sizes its chunks itself.
JACOBIAN_BUDGET = 2**24


def _jacobian_chunks(fm: FunctionalModel, x: Tensor, chunk_size: int) -> Iterator[dict[str, Tensor]]:
    """Per-example Jacobians of the flattened output, chunk by chunk: ``{name: (c, k, numel)}``."""

    def flat_output(params: dict[str, Tensor], xi: Tensor) -> Tensor:
        return fm.output(params, xi.unsqueeze(0)).reshape(-1)

    jacobian = vmap(jacrev(flat_output), in_dims=(None, 0))
    for start in range(0, len(x), chunk_size):
        chunk = x[start : start + chunk_size]
        jac = jacobian(fm.params, chunk)
        yield {n: jac[n].reshape(len(chunk), jac[n].shape[1], -1) for n in fm.names}


def _contract(j1: dict[str, Tensor], j2: dict[str, Tensor], full: bool) -> Tensor:
    spec = "akp,blp->abkl" if full else "akp,bkp->ab"
    return sum(torch.einsum(spec, j1[n], j2[n]) for n in j1)


def _swap(block: Tensor, full: bool) -> Tensor:
    """The block of Θ(x', x) from that of Θ(x, x'): (n2, n1) or (n2, n1, l, k)."""
    return block.permute(1, 0, 3, 2) if full else block.T


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    params: Any = None,
    chunk_size: int | None = None,
    reduce: str = "trace",
) -> Tensor:
    """The empirical neural tangent kernel Θ(x, x') = J(x) J(x')ᵀ of ``model`` at its current parameters.

    .. math:: \\Theta_{kl}(x, x') = \\sum_p \\frac{\\partial f_k(x)}{\\partial \\theta_p}
        \\frac{\\partial f_l(x')}{\\partial \\theta_p}

    ``reduce="full"`` returns the (n1, n2, k, k) blocks Θ_kl; ``"trace"`` the
    (n1, n2) kernel Σ_k Θ_kk, summed over output dimensions (k = the number of
    outputs per example, the output flattened). Jacobians are computed for
    ``chunk_size`` examples at a time with ``vmap(jacrev)`` and contracted
    block by block, so at most two chunks of Jacobians (2·chunk_size·k·P
    numbers) are held; the price is recomputing the Jacobians of the second
    argument's chunks once per chunk of the first. With ``x2=None`` only the
    upper block triangle is computed and the kernel is exactly symmetric.
    ``chunk_size=None`` picks the largest chunk whose Jacobian has at most
    ``2**24`` entries (k·P per example; 64 MB in float32).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> K = empirical_ntk(net, x)  # for a linear layer: k (x·x' + 1)
        >>> bool(torch.allclose(K, 2 * (x @ x.T + 1)))
        True

    References:
        "Neural Tangent Kernel: Convergence and Generalization in Neural Networks", Jacot, Gabriel & Hongler, 2018.

    Args:
        model: any ``nn.Module`` (evaluated in eval mode; not modified).
        x1: (n1, ...) inputs.
        x2: (n2, ...) inputs, or None for ``x1``.
        params: which parameters θ the kernel differentiates (see :func:`reglab.linalg.functional.select_params`).
        chunk_size: examples per Jacobian evaluation, >= 1, or None to size chunks by memory.
        reduce: ``"trace"`` (n1, n2) or ``"full"`` (n1, n2, k, k).

    Returns:
        The kernel, in the model's dtype.

    Raises:
        ConfigError: bad ``chunk_size``, ``reduce`` or ``params``.
        ShapeError: an input has no examples.
    """
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)
    check_choice("reduce", reduce, REDUCTIONS)
    full = reduce == "full"
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and (not isinstance(x, Tensor) or x.ndim == 0 or len(x) == 0):
            raise ShapeError(f"{name} must be a tensor of at least one example, got {getattr(x, 'shape', type(x))}")
    fm = FunctionalModel(model, None, params)
    a = fm.inputs(x1)
    symmetric = x2 is None
    b = a if symmetric else fm.inputs(x2)
    if chunk_size is None:
        with torch.no_grad():
            outputs_per_example = fm.output(fm.params, a[:1]).numel()
        chunk_size = max(1, JACOBIAN_BUDGET // (outputs_per_example * fm.numel))
    rows = []
    starts_b = list(range(0, len(b), chunk_size))
    for i, ja in enumerate(_jacobian_chunks(fm, a, chunk_size)):
        blocks: list[Tensor | None] = [None] * len(starts_b)
        if symmetric:
            diagonal = _contract(ja, ja, full)
            blocks[i] = (diagonal + _swap(diagonal, full)) / 2  # exactly symmetric, whatever the summation order
            for j in range(i):  # lower triangle: the transpose of a block already computed
                blocks[j] = _swap(rows[j][i], full)
            later = _jacobian_chunks(fm, b[starts_b[i] + chunk_size :], chunk_size) if i + 1 < len(starts_b) else ()
            for j, jb in enumerate(later, start=i + 1):
                blocks[j] = _contract(ja, jb, full)
        else:
            for j, jb in enumerate(_jacobian_chunks(fm, b, chunk_size)):
                blocks[j] = _contract(ja, jb, full)
        rows.append(blocks)
    return torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)


def kernel_alignment(kernel: Tensor, targets: Tensor, centered: bool = False) -> float:
    """Kernel–target alignment A(K, Y) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F), computed in float64.

    Y is the one-hot matrix of integer labels (so (YYᵀ)_ij = [y_i = y_j] and
    the number of classes does not matter), a float target vector (n,) taken as
    a column, or float targets (n, d) as they are. ``centered=True`` replaces K
    and YYᵀ by HKH and HYYᵀH with H = I − 11ᵀ/n (Cortes et al., 2012), which
    removes the alignment that a constant kernel offset alone would give. A
    is in [−1, 1] (in [0, 1] for positive semi-definite K, uncentred); NaN when
    either matrix is zero.

    Example:
        >>> import torch
        >>> y = torch.tensor([0, 0, 1])
        >>> onehot = torch.nn.functional.one_hot(y).double()
        >>> round(kernel_alignment(onehot @ onehot.T, y), 12)  # the ideal kernel
        1.0
        >>> round(kernel_alignment(torch.eye(3), y), 4)  # tr(YY^T) / (sqrt(3) ||YY^T||_F) = 3 / (sqrt(3) sqrt(5))
        0.7746

    References:
        "On Kernel-Target Alignment", Cristianini, Shawe-Taylor, Elisseeff & Kandola, 2002;
        "Algorithms for Learning Kernels Based on Centered Alignment", Cortes, Mohri & Rostamizadeh, 2012.

    Args:
        kernel: (n, n) kernel matrix.
        targets: (n,) integer labels, (n,) float targets or (n, d) float targets.
        centered: centre both matrices first.

    Returns:
        The alignment.

    Raises:
        ShapeError: the kernel is not square or the targets do not have n rows.
    """
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ShapeError(f"kernel must be a square (n, n) matrix, got shape {tuple(kernel.shape)}")
    n = kernel.shape[0]
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ShapeError(f"targets must be (n,) or (n, d) with n = {n}, got shape {tuple(targets.shape)}")
    if targets.is_floating_point():
        y = targets.double().reshape(n, -1)
    elif targets.ndim == 1:
        y = torch.nn.functional.one_hot(targets.long() - int(targets.min())).double()
    else:
        raise ShapeError(f"integer targets must be (n,) class labels, got shape {tuple(targets.shape)}")
    k = kernel.double()
    target_kernel = y @ y.T
    if centered:
        k = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
        target_kernel = (
            target_kernel
            - target_kernel.mean(0, keepdim=True)
            - target_kernel.mean(1, keepdim=True)
            + target_kernel.mean()
        )
    denominator = float(k.norm() * target_kernel.norm())
    return float((k * target_kernel).sum()) / denominator if denominator > 0 else math.nan


def _relative(diff: float, base: float) -> float:
    if base > 0:
        return diff / base
    return 0.0 if diff == 0 else math.inf


def relative_weight_change(model: nn.Module, reference: Any, params: Any = None) -> float:
    """‖θ − θ_0‖ / ‖θ_0‖ over the selected trainable parameters (float64).

    Small values (→ 0 as width grows) mark lazy training, where the network
    stays close to its linearization around θ_0.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> start = {n: p.detach().clone() for n, p in net.named_parameters()}
        >>> with torch.no_grad():
        ...     _ = net.weight.mul_(1.5)
        ...     _ = net.bias.mul_(1.5)
        >>> round(relative_weight_change(net, start), 6)
        0.5

    References:
        "On Lazy Training in Differentiable Programming", Chizat, Oyallon & Bach, 2019.

    Args:
        model: the model at θ; not modified.
        reference: θ_0, a ``{name: tensor}`` dict (e.g. copied from ``named_parameters``) or a module with the
            same parameter names.
        params: which parameters (see :func:`reglab.linalg.functional.select_params`).

    Returns:
        The relative change (0 if θ = θ_0 = 0, inf if only θ_0 = 0).

    Raises:
        ConfigError: ``reference`` lacks a selected parameter or is of the wrong type.
        ShapeError: a reference tensor's shape differs from the parameter's.
    """
    if isinstance(reference, nn.Module):
        reference = dict(reference.named_parameters())
    if not isinstance(reference, dict):
        raise ConfigError(f"reference must be a dict of parameter tensors or a module, got {type(reference).__name__}")
    current = dict(model.named_parameters())
    diff, base = 0.0, 0.0
    for name in select_params(model, params):
        if name not in reference:
            raise ConfigError(f"reference has no parameter {name!r}; it must hold every selected parameter")
        p, p0 = current[name].detach().double(), reference[name].detach().double().to(current[name].device)
        if p.shape != p0.shape:
            raise ShapeError(f"reference {name!r} has shape {tuple(p0.shape)}, the parameter {tuple(p.shape)}")
        diff += float((p - p0).pow(2).sum())
        base += float(p0.pow(2).sum())
    return _relative(math.sqrt(diff), math.sqrt(base))


def relative_kernel_change(kernel: Tensor, reference: Tensor) -> float:
    """‖Θ − Θ_0‖_F / ‖Θ_0‖_F (float64): how far the tangent kernel has moved from its initial value.

    Example:
        >>> import torch
        >>> relative_kernel_change(2 * torch.eye(3), torch.eye(3))
        1.0

    References:
        "On Lazy Training in Differentiable Programming", Chizat, Oyallon & Bach, 2019.

    Args:
        kernel: Θ, any shape.
        reference: Θ_0, the same shape.

    Returns:
        The relative change (0 if both are zero, inf if only Θ_0 is).

    Raises:
        ShapeError: the shapes differ.
    """
    if kernel.shape != reference.shape:
        raise ShapeError(f"kernel {tuple(kernel.shape)} and reference {tuple(reference.shape)} differ in shape")
    k0 = reference.detach().double()
    return _relative(float((kernel.detach().double() - k0).norm()), float(k0.norm()))


@REGISTRY.register("ntk_change")
class NTKChangeProbe(Probe):
    """Logs relative weight and NTK change since the start of training and the NTK–label alignment (``ntk_change/*``).

    At the start of training (the first measurement) it draws ``n_examples``
    training examples with ``seed`` and stores θ_0 and Θ_0 on them; every
    measurement then logs ``ntk_change/weight_change`` = ‖θ_t − θ_0‖/‖θ_0‖,
    ``ntk_change/kernel_change`` = ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F (trace-reduced
    empirical NTK, :func:`empirical_ntk`) and ``ntk_change/alignment``, the
    uncentred :func:`kernel_alignment` of Θ_t with the training labels (one-hot)
    or targets. A new ``fit`` starts new references. Lazy training keeps both
    changes near 0 ("On Lazy Training in Differentiable Programming", Chizat et
    al., 2019).

    Args:
        every: measure every this many steps.
        n_examples: examples the kernel is computed on, >= 2 (cost ~ n_examples² · outputs · parameters).
        chunk_size: examples per Jacobian evaluation, or None to size chunks by memory (see :func:`empirical_ntk`).
        seed: subsample seed.
    """

    report_section = ReportSection(
        "ntk_change",
        "Neural tangent kernel change",
        "Relative change of the weights and of the empirical NTK since the start of training, and the kernel's "
        "alignment with the labels; lazy training keeps both changes near 0 (Chizat et al. 2019, On Lazy Training "
        "in Differentiable Programming).",
        order=80,
    )
    labels = {
        "ntk_change/weight_change": r"weight change $\|\theta_t-\theta_0\|/\|\theta_0\|$",
        "ntk_change/kernel_change": r"NTK change $\|\Theta_t-\Theta_0\|_F/\|\Theta_0\|_F$",
        "ntk_change/alignment": "NTK-label alignment",
    }

    def __init__(self, every: int = 100, n_examples: int = 64, chunk_size: int | None = None, seed: int = 0):
        super().__init__(every)
        self.n_examples = check_int("n_examples", n_examples, 2)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        self.seed = check_int("seed", seed, 0)
        self._reset()

    def _reset(self) -> None:
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._theta0: dict[str, Tensor] = {}
        self._kernel0: Tensor | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self._reset()
        super().on_train_begin(trainer)

    def measure(self, trainer: Any) -> dict[str, float]:
        model = trainer.model
        if self._x is None:
            self._x, self._y = trainer.examples("train", self.n_examples, self.seed)
            self._theta0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        kernel = empirical_ntk(model, self._x, chunk_size=self.chunk_size)
        if self._kernel0 is None:
            self._kernel0 = kernel
        return {
            "ntk_change/weight_change": relative_weight_change(model, self._theta0),
            "ntk_change/kernel_change": relative_kernel_change(kernel, self._kernel0),
            "ntk_change/alignment": kernel_alignment(kernel, self._y),
        }
