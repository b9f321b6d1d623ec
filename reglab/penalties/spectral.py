"""Spectral and orthogonality penalties on weight matrices.

- the largest singular value: :class:`SpectralNorm` (Yoshida & Miyato),
  :class:`SpectralRegularizer` (Lewandowski et al., keeps it near 1), both by
  power iteration with persistent vectors (:func:`reglab.linalg.singular_power_iteration`);
- the whole spectrum: :class:`NuclearNorm`, :class:`ConditionNumber`;
- orthogonality: :class:`SoftOrthogonality` (Frobenius), :class:`SRIP`
  (spectral, by power iteration) and :class:`KernelOrthogonality`, the
  orthogonal-convolution regularizer of Wang et al., which asks the
  convolution *operator* to be orthogonal, not only its flattened kernel
  (:func:`conv_orthogonality_loss`).

Every penalty reads the weights of the selected layers as matrices: a Linear
weight as it is, ``(out, in)``, and a convolution kernel ``(out, in / groups,
*kernel)`` flattened to ``(out, in / groups * prod(kernel))`` (as
``torch.nn.utils.spectral_norm`` does; the singular values of that matrix are
not those of the convolution operator, see :class:`KernelOrthogonality` for
the operator). Layers are chosen by type, ``types`` (``"linear"``: ``nn.Linear``;
``"conv"``: ``nn.Conv1d/2d/3d``; transposed convolutions are not included), and
optionally by name, ``names``: a regular expression searched (``re.search``) in
each layer's qualified module name (``names=r"^body\\."``). Layers whose weight
does not require a gradient are skipped. A model in which no layer is selected
is an error (:class:`~reglab.core.ConfigError`), not a silent zero.

The penalties sum their per-layer terms over the selected layers.
"""

from __future__ import annotations

import abc
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reglab.core import ConfigError, Penalty, ShapeError, StepContext
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.linalg.singular import singular_power_iteration, singular_power_iterations
from reglab.penalties.registry import REGISTRY

__all__ = [
    "SRIP",
    "ConditionNumber",
    "KernelOrthogonality",
    "NuclearNorm",
    "SoftOrthogonality",
    "SpectralNorm",
    "SpectralRegularizer",
    "conv_orthogonality_loss",
    "weight_matrices",
]

#: Layer types a penalty can select, by the name used in ``types``.
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
}

#: Power iterations run when a layer's vectors are first created (as ``torch.nn.utils.parametrizations.spectral_norm``).
WARMUP_ITERATIONS = 15


# --- pure helpers ------------------------------------------------------------------------------------------


def _conv_fn(ndim: int):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]


def _dilate(kernel: Tensor, dilation: Sequence[int]) -> Tensor:
    """The kernel with ``dilation - 1`` zeros between its taps (the same operator with dilation 1)."""
    if all(d == 1 for d in dilation):
        return kernel
    size = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], dilation)]
    out = kernel.new_zeros(*kernel.shape[:2], *size)
    out[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = kernel
    return out


def conv_orthogonality_loss(
    kernel: Tensor,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Orthogonal-convolution loss of one kernel: ||Conv(K, K, padding=P, stride=S) - I_r0||_F^2 per group.

    For a kernel ``K`` of shape ``(M, C, k_1, ..., k_d)`` and stride ``S``,
    ``Conv(K, K, padding=P, stride=S)`` convolves the ``M`` filters (taken as a
    batch of ``C``-channel signals) with themselves, ``P_i = floor((k_i - 1) /
    S_i) * S_i``: its entries are the inner products of the rows of the
    convolution matrix ``𝒦`` at every relative offset, i.e. one block row of
    ``𝒦 𝒦^T`` (``P`` is the smallest padding that reaches every offset at which
    two rows overlap; the tests check the identity against the dense matrix).
    ``I_r0`` is ``I_M`` at the centre offset and zero elsewhere, so
    the loss is ``||𝒦 𝒦^T - I||_F^2`` per output position, for circular padding
    (row orthogonality).

    When ``M > C * prod(S)`` the rows cannot be orthonormal and the target is
    column orthogonality instead; since ``||A A^T - I||_F^2 - ||A^T A - I||_F^2 =
    rows(A) - cols(A)`` for every matrix, the column loss per position is the
    row loss minus ``M - C * prod(S)``, which is subtracted. So the value is
    ``min(||𝒦 𝒦^T - I||_F^2, ||𝒦^T 𝒦 - I||_F^2) / (number of output positions)``
    for a circular convolution on any input large enough that offsets do not
    wrap around; it is 0 exactly when the convolution is orthogonal (the
    gradient is the same either way).

    A dilated kernel is treated as the undilated kernel with zeros inserted; with
    ``groups > 1`` the operator is block diagonal and the per-group losses add up.

    Args:
        kernel: ``(M, C, *k)`` with ``d = 1, 2 or 3`` spatial dimensions (a Conv weight, ``C = in / groups``).
        stride: ``S``, an int or one per spatial dimension.
        dilation: an int or one per spatial dimension.
        groups: number of groups; must divide ``M``.

    Returns:
        A scalar tensor.

    Raises:
        ShapeError: the kernel is not 3-D to 5-D, or stride/dilation/groups do not fit it.
    """
    d = kernel.ndim - 2
    if d not in (1, 2, 3):
        raise ShapeError(
            "conv_orthogonality_loss needs an (out, in, *kernel) kernel with 1 to 3 spatial dims, "
            f"got shape {tuple(kernel.shape)}"
        )
    stride = (stride,) * d if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * d if isinstance(dilation, int) else tuple(dilation)
    if len(stride) != d or len(dilation) != d or min(stride) < 1 or min(dilation) < 1:
        raise ShapeError(
            f"conv_orthogonality_loss: stride {stride} and dilation {dilation} must be positive ints, "
            f"one per spatial dim ({d})"
        )
    M = kernel.shape[0]
    if groups < 1 or M % groups:
        raise ShapeError(f"conv_orthogonality_loss: groups={groups} must divide the {M} output channels")
    kernel = _dilate(kernel, dilation)
    size = kernel.shape[2:]
    padding = [((k - 1) // s) * s for k, s in zip(size, stride)]
    centre = tuple(p // s for p, s in zip(padding, stride))
    conv = _conv_fn(d)
    mg, c = M // groups, kernel.shape[1]
    excess = mg - c * math.prod(stride)
    total = kernel.new_zeros(())
    for kg in kernel.split(mg, dim=0):
        gram = conv(kg, kg, stride=stride, padding=padding)  # (mg, mg, *offsets)
        target = torch.zeros_like(gram)
        target[(slice(None), slice(None), *centre)] = torch.eye(mg, dtype=gram.dtype, device=gram.device)
        loss = (gram - target).pow(2).sum()
        total = total + (loss - excess if excess > 0 else loss)
    return total


def _check_types(types: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(types, str):
        types = (types,)
    try:
        types = tuple(types)
    except TypeError:
        kinds = ", ".join(repr(t) for t in LAYER_TYPES)
        raise ConfigError(f"types must be a layer type or a list of them ({kinds}), got {types!r}") from None
    if not types:
        raise ConfigError(f"types must name at least one of {', '.join(repr(t) for t in LAYER_TYPES)}, got {types!r}")
    for t in types:
        check_choice("types", t, tuple(LAYER_TYPES))
    return tuple(dict.fromkeys(types))


def _check_names(names: str | None) -> str | None:
    if names is None:
        return None
    if not isinstance(names, str):
        raise ConfigError(f"names must be a regular expression (a string) or None, got {names!r}")
    try:
        re.compile(names)
    except re.error as err:
        raise ConfigError(f"names must be a valid regular expression, got {names!r} ({err})") from None
    return names


def weight_matrices(
    model: nn.Module, types: str | Iterable[str] = ("linear", "conv"), names: str | None = None
) -> list[tuple[str, nn.Module, Tensor]]:
    """The weights of the selected layers: ``(qualified weight name, module, weight)``, in module order.

    Args:
        model: the model.
        types: layer types, from ``LAYER_TYPES`` (``"linear"``, ``"conv"``).
        names: a regular expression searched in each layer's module name, or None for all.

    Raises:
        ConfigError: ``types`` or ``names`` is invalid.
    """
    types, names = _check_types(types), _check_names(names)
    classes = tuple(c for t in types for c in LAYER_TYPES[t])
    return _select(model, classes, re.compile(names) if names is not None else None)


def _select(
    model: nn.Module, classes: tuple[type, ...], pattern: re.Pattern | None
) -> list[tuple[str, nn.Module, Tensor]]:
    out = []
    for mod_name, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        if pattern is not None and not pattern.search(mod_name):
            continue
        own = module._parameters.get("weight")
        if own is not None and not own.requires_grad:
            continue  # frozen layer (a parametrized weight is computed, not a parameter: kept)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor):
            continue
        out.append((f"{mod_name}.weight" if mod_name else "weight", module, weight))
    return out


def _as_matrix(weight: Tensor) -> Tensor:
    return weight if weight.ndim == 2 else weight.reshape(weight.shape[0], -1)


def _smaller_gram(W: Tensor) -> Tensor:
    """``W W^T`` if W has fewer rows than columns, else ``W^T W``."""
    return W @ W.mT if W.shape[0] < W.shape[1] else W.mT @ W


# --- base classes -----------------------------------------------------------------------------------------


class _LayerPenalty(Penalty):
    """A penalty summed over the weight matrices of selected layers (``types`` and ``names``)."""

    _fix = "select other layers with types=/names=, or remove this penalty"
    #: The breakdown name when none is given, where it differs from the class name in snake_case.
    _default_name: str | None = None

    def __init__(
        self,
        weight: float,
        *,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, name=name or self._default_name)
        self.types = _check_types(types)
        self.names = _check_names(names)

    def _layers(self, model: nn.Module) -> list[tuple[str, nn.Module, Tensor]]:
        classes = tuple(c for t in self.types for c in LAYER_TYPES[t])
        layers = _select(model, classes, re.compile(self.names) if self.names is not None else None)
        if not layers:
            kinds = "/".join(c.__name__ for t in self.types for c in LAYER_TYPES[t])
            where = f" whose module name matches {self.names!r}" if self.names is not None else ""
            raise ConfigError(
                f"{self.name}: {type(model).__name__} has no trainable {kinds} layers{where}; {self._fix}"
            )
        return layers

    def extra_repr(self) -> str:
        names = f", names={self.names!r}" if self.names is not None else ""
        return f"weight={self.weight:g}, types={self.types}{names}"


class _SummedLayerPenalty(_LayerPenalty):
    """A layer penalty computed one layer at a time: the sum of :meth:`layer_term`."""

    def compute(self, ctx: StepContext) -> Tensor:
        total = None
        for key, module, weight in self._layers(ctx.model):
            term = self.layer_term(key, module, weight)
            total = term if total is None else total + term
        return total

    @abc.abstractmethod
    def layer_term(self, key: str, module: nn.Module, weight: Tensor) -> Tensor:
        """The unweighted term of one layer."""


def _buffer_key(kind: str, key: str) -> str:
    return f"{kind}__" + key.replace(".", "__")


class _PowerIterationPenalty(_LayerPenalty):
    """Keeps one pair of power-iteration vectors per layer in buffers ``u__<weight>`` / ``v__<weight>``.

    In training mode each call runs ``n_power_iterations`` iterations from the
    stored vectors and stores the new ones; in eval mode (``penalty.eval()``) the
    vectors are used as stored, so the value is a fixed function of the weights.
    Vectors are created on a layer's first call (from ``seed``, without touching
    the global RNG, then ``WARMUP_ITERATIONS`` iterations), and re-created if the
    layer's shape changes. ``state_dict()`` holds them and loads into a fresh instance.
    """

    def __init__(
        self,
        weight: float,
        *,
        n_power_iterations: int = 1,
        seed: int = 0,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, types=types, names=names, name=name)
        self.n_power_iterations = check_int("n_power_iterations", n_power_iterations, 1)
        self.seed = check_int("seed", seed, 0, 2**63 - 1)

    def _vectors(self, key: str, A: Tensor) -> tuple[Tensor, Tensor]:
        ku, kv = _buffer_key("u", key), _buffer_key("v", key)
        u, v = self._buffers.get(ku), self._buffers.get(kv)
        m, n = A.shape
        if u is None or v is None or tuple(u.shape) != (m,) or tuple(v.shape) != (n,):
            g = torch.Generator().manual_seed((self.seed + zlib.crc32(key.encode())) % 2**63)
            u = torch.randn(m, generator=g, dtype=torch.float64).to(dtype=A.dtype, device=A.device)
            v = torch.randn(n, generator=g, dtype=torch.float64).to(dtype=A.dtype, device=A.device)
            _, u, v = singular_power_iteration(A, F.normalize(u, dim=0), F.normalize(v, dim=0), WARMUP_ITERATIONS)
            self.register_buffer(ku, u)
            self.register_buffer(kv, v)
        elif u.dtype != A.dtype or u.device != A.device:
            self.register_buffer(ku, u.to(dtype=A.dtype, device=A.device))
            self.register_buffer(kv, v.to(dtype=A.dtype, device=A.device))
        return self._buffers[ku], self._buffers[kv]

    def compute(self, ctx: StepContext) -> Tensor:
        layers = self._layers(ctx.model)
        sigmas = self.sigmas([key for key, _, _ in layers], [self.matrix(weight) for _, _, weight in layers])
        return self.sigma_term(sigmas).sum()

    @abc.abstractmethod
    def matrix(self, weight: Tensor) -> Tensor:
        """The matrix of one layer whose largest singular value is penalized."""

    @abc.abstractmethod
    def sigma_term(self, sigmas: Tensor) -> Tensor:
        """The unweighted term of each layer, elementwise in the vector of estimates."""

    def sigmas(self, keys: list[str], matrices: list[Tensor]) -> Tensor:
        """Power-iteration estimates of sigma_max of each layer's matrix, shape ``(L,)``, differentiable in them.

        All layers iterate together and the estimates are one autograd node
        (:func:`reglab.linalg.singular.singular_power_iterations`).
        """
        pairs = [self._vectors(key, A) for key, A in zip(keys, matrices)]
        n_iter = self.n_power_iterations if self.training else 0
        sigmas, us, vs = singular_power_iterations(matrices, [u for u, _ in pairs], [v for _, v in pairs], n_iter)
        if self.training:
            # store the new vectors as the buffers (fresh tensors: nothing saved for a backward pass is modified)
            for key, u, v in zip(keys, us, vs):
                self._buffers[_buffer_key("u", key)] = u
                self._buffers[_buffer_key("v", key)] = v
        return sigmas

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A fresh instance has no vectors yet: create buffers of the stored shapes so that loading round-trips.
        for key, value in state_dict.items():
            if key.startswith(prefix + "u__") or key.startswith(prefix + "v__"):
                local = key[len(prefix) :]
                if "." not in local and local not in self._buffers:
                    self.register_buffer(local, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_power_iterations={self.n_power_iterations}"


# --- penalties ---------------------------------------------------------------------------------------------


@REGISTRY.register("spectral_norm")
class SpectralNorm(_PowerIterationPenalty):
    """Spectral norm regularization: (weight / 2) * sum over layers of sigma_max(W)^2, by power iteration.

    .. math:: R(\\theta) = \\frac{\\lambda}{2} \\sum_l \\sigma_{\\max}(W_l)^2

    From "Spectral Norm Regularization for Improving the Generalizability of
    Deep Learning" (Yoshida & Miyato, 2017), who penalize sigma^2 / 2 so that
    the gradient is ``lambda * sigma * u v^T`` (u, v the top singular vectors)
    and treat a convolution kernel as the ``(out, in * k_h * k_w)`` matrix, as
    here. sigma_max is estimated by power iteration with vectors kept between
    calls (:func:`reglab.linalg.singular_power_iteration`; one iteration per call by default, which
    tracks the slowly moving weights); the gradient flows through ``u^T W v``
    with ``u, v`` detached. ``squared=False`` penalizes sum sigma_max instead
    (gradient ``lambda * u v^T``, no 1/2). Usual range: 1e-3 to 1e-1.

    Example:
        >>> penalty = SpectralNorm(0.01)                   # every Linear and Conv layer
        >>> penalty = SpectralNorm(0.01, names="^body")    # only layers under model.body

    Args:
        weight: lambda, >= 0.
        n_power_iterations: iterations per call in training mode, >= 1.
        squared: True for sigma^2 / 2 (the paper), False for sigma.
        seed: seed of the initial vectors.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None for all selected types.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    def __init__(
        self,
        weight: float,
        *,
        n_power_iterations: int = 1,
        squared: bool = True,
        seed: int = 0,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, n_power_iterations=n_power_iterations, seed=seed, types=types, names=names, name=name)
        self.squared = check_bool("squared", squared)

    def matrix(self, weight: Tensor) -> Tensor:
        return _as_matrix(weight)

    def sigma_term(self, sigmas: Tensor) -> Tensor:
        return 0.5 * sigmas.square() if self.squared else sigmas


@REGISTRY.register("spectral_cl")
class SpectralRegularizer(_PowerIterationPenalty):
    """Spectral regularization for continual learning: sum over layers of (sigma_max(W)^k - 1)^2.

    .. math:: R(\\theta) = \\lambda \\sum_l \\left(\\sigma_{\\max}(W_l)^k - 1\\right)^2

    From "Learning Continually by Spectral Regularization" (Lewandowski et al.,
    2024; ICLR 2025): keeping each layer's largest singular value near 1, its
    value at a good initialization, sustains gradient diversity and
    trainability over a sequence of tasks, while constraining the weights less
    than L2 or L2-to-init. sigma_max by power iteration with persistent vectors
    (one iteration per call by default, as for :class:`SpectralNorm`).

    The default exponent is ``k = 2``; biases are not penalized here (whether
    the paper drives them toward zero or folds them into W is uncertain). The
    form is not checked against the paper's text or code (see
    ``docs/provenance.md``). Usual range of lambda: 1e-5 to 1e-2.

    Example:
        >>> penalty = SpectralRegularizer(1e-3, k=2)

    Args:
        weight: lambda, >= 0.
        k: the exponent, > 0.
        n_power_iterations: iterations per call in training mode, >= 1.
        seed: seed of the initial vectors.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    _default_name = "spectral_cl"

    def __init__(
        self,
        weight: float,
        *,
        k: float = 2.0,
        n_power_iterations: int = 1,
        seed: int = 0,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, n_power_iterations=n_power_iterations, seed=seed, types=types, names=names, name=name)
        self.k = check_float("k", k, 0.0, low_open=True)

    def matrix(self, weight: Tensor) -> Tensor:
        return _as_matrix(weight)

    def sigma_term(self, sigmas: Tensor) -> Tensor:
        return (sigmas.pow(self.k) - 1.0).square()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k:g}"


@REGISTRY.register("nuclear_norm")
class NuclearNorm(_SummedLayerPenalty):
    """Nuclear norm: weight * sum over layers of the sum of the singular values of W.

    .. math:: R(\\theta) = \\lambda \\sum_l \\lVert W_l \\rVert_* = \\lambda \\sum_l \\sum_i \\sigma_i(W_l)

    The convex envelope of the rank on the spectral-norm ball, the standard
    low-rank penalty ("Guaranteed Minimum-Rank Solutions of Linear Matrix
    Equations via Nuclear Norm Minimization", Recht, Fazel & Parrilo, 2010).
    Exact singular values (``torch.linalg.svdvals``); the gradient ``U V^T`` is
    a subgradient where a singular value is 0. Cost: one SVD per layer per call.
    Usual range: 1e-5 to 1e-2.

    Example:
        >>> penalty = NuclearNorm(1e-4, types="linear")

    Args:
        weight: lambda, >= 0.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    def layer_term(self, key: str, module: nn.Module, weight: Tensor) -> Tensor:
        return torch.linalg.svdvals(_as_matrix(weight)).sum()


@REGISTRY.register("condition_number")
class ConditionNumber(_SummedLayerPenalty):
    """Condition-number penalty: weight * sum over layers of sigma_max(W) / sigma_min(W) (or its log).

    .. math:: R(\\theta) = \\lambda \\sum_l \\kappa(W_l), \\quad
              \\kappa(W) = \\sigma_{\\max}(W) / \\sigma_{\\min}(W)

    with ``sigma_min`` the smallest of the ``min(out, in)`` singular values
    (exact, ``torch.linalg.svdvals``). ``log=True`` penalizes ``log kappa =
    log sigma_max - log sigma_min`` instead, whose gradient does not grow with
    kappa. kappa is invariant to rescaling W, so the penalty shapes the
    spectrum, not the norm. kappa is infinite for a rank-deficient matrix; the
    objective is then not finite and the trainer records the run as diverged.

    "Weight Conditioning for Smooth Optimization of Neural Networks"
    (Saratchandran, Wang & Lucey, ECCV 2024) narrows the sigma_max / sigma_min
    gap by a reparameterization of W, not by a penalty: it motivates kappa as
    the quantity to control but gives no penalty form. A condition-number
    *constraint* is used by TSCNC ("Lipschitz Constant Meets Condition Number:
    Learning Robust and Compact Deep Neural Networks", Feng et al., 2025) for
    pruned networks. The ratio (and the log option) here are ours, not TSCNC's
    form. Usual range: 1e-4 to 1e-2.

    Example:
        >>> penalty = ConditionNumber(1e-3, log=True)

    Args:
        weight: lambda, >= 0.
        log: penalize log kappa instead of kappa.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    def __init__(
        self,
        weight: float,
        *,
        log: bool = False,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, types=types, names=names, name=name)
        self.log = check_bool("log", log)

    def layer_term(self, key: str, module: nn.Module, weight: Tensor) -> Tensor:
        s = torch.linalg.svdvals(_as_matrix(weight))
        return s[0].log() - s[-1].log() if self.log else s[0] / s[-1]


@REGISTRY.register("soft_orthogonality")
class SoftOrthogonality(_SummedLayerPenalty):
    """Soft orthogonality: weight * sum over layers of ||W^T W - I||_F^2, with the smaller Gram matrix.

    .. math:: R(\\theta) = \\lambda \\sum_l \\lVert G_l - I \\rVert_F^2, \\quad
              G = W W^T \\text{ if out < in, else } W^T W

    "All You Need is Beyond a Good Init: Exploring Better Solution for Training
    Extremely Deep Convolutional Neural Networks with Orthonormality and
    Modulation" (Xie, Xiong & Pu, 2017) and the SO regularizer of "Can We Gain
    More from Orthogonality Regularizations in Training Deep Networks?"
    (Bansal, Chen & Wang, 2018). A convolution kernel is the ``(out, in * k...)``
    matrix, so ``W W^T`` is the Gram matrix of the flattened filters.

    Which Gram: ``||W W^T - I_out||_F^2 - ||W^T W - I_in||_F^2 = out - in`` for
    every W, so both choices have the same gradient; the smaller one (also the
    cheaper) is the one that can reach 0 (orthonormal rows when out < in,
    orthonormal columns otherwise), as in the reference code of Bansal et al.
    Usual range: 1e-4 to 1e-1 (Bansal et al. start at 0.1-0.01 and decay it).

    Example:
        >>> penalty = SoftOrthogonality(1e-3)

    Args:
        weight: lambda, >= 0.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    def layer_term(self, key: str, module: nn.Module, weight: Tensor) -> Tensor:
        gram = _smaller_gram(_as_matrix(weight))
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return (gram - eye).pow(2).sum()


@REGISTRY.register("srip")
class SRIP(_PowerIterationPenalty):
    """Spectral restricted isometry (SRIP): weight * sum over layers of sigma_max(W^T W - I), by power iteration.

    .. math:: R(\\theta) = \\lambda \\sum_l \\sigma_{\\max}(G_l - I), \\quad
              G = W W^T \\text{ if out < in, else } W^T W

    From "Can We Gain More from Orthogonality Regularizations in Training Deep
    Networks?" (Bansal, Chen & Wang, NeurIPS 2018): the spectral norm of
    ``W^T W - I`` is the restricted isometry constant, a tighter orthogonality
    measure than the Frobenius norm of :class:`SoftOrthogonality`. The paper
    and its Keras code penalize sigma; the authors' PyTorch code
    (``l2_reg_ortho``) returns sigma^2: ``squared=True`` gives that. Both
    reference codes use the smaller Gram matrix, as here, and estimate sigma
    with two products from a fresh random vector per step; here the power
    iteration keeps its vectors between calls (one iteration per call by
    default) and the gradient flows through ``u^T (G - I) v`` with ``u, v``
    detached. Usual range: 1e-4 to 1e-1 (the paper starts at 0.01 and decays it
    to 0 over training).

    Example:
        >>> penalty = SRIP(1e-2)

    Args:
        weight: lambda, >= 0.
        squared: penalize sigma^2 instead of sigma.
        n_power_iterations: iterations per call in training mode, >= 1.
        seed: seed of the initial vectors.
        types: layer types, ``"linear"`` and/or ``"conv"``.
        names: regular expression on module names, or None.

    Raises:
        ConfigError: an argument is invalid, or the model has no selected layer.
    """

    def __init__(
        self,
        weight: float,
        *,
        squared: bool = False,
        n_power_iterations: int = 1,
        seed: int = 0,
        types: str | Iterable[str] = ("linear", "conv"),
        names: str | None = None,
        name: str | None = None,
    ):
        super().__init__(weight, n_power_iterations=n_power_iterations, seed=seed, types=types, names=names, name=name)
        self.squared = check_bool("squared", squared)

    def matrix(self, weight: Tensor) -> Tensor:
        gram = _smaller_gram(_as_matrix(weight))
        return gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)

    def sigma_term(self, sigmas: Tensor) -> Tensor:
        return sigmas.square() if self.squared else sigmas


@REGISTRY.register("conv_orthogonality")
class KernelOrthogonality(_SummedLayerPenalty):
    """Orthogonal convolution (OCNN): weight * sum over conv layers of ||Conv(K, K, padding=P, stride=S) - I_r0||_F^2.

    .. math:: R(\\theta) = \\lambda \\sum_l \\lVert \\mathrm{Conv}(K_l, K_l,
              \\mathrm{padding}=P, \\mathrm{stride}=S) - I_{r0} \\rVert_F^2,
              \\quad P = \\lfloor (k - 1) / S \\rfloor S

    From "Orthogonal Convolutional Neural Networks" (Wang, Chen, Chakraborty &
    Yu, CVPR 2020). The convolution matrix ``𝒦`` (doubly block-Toeplitz) is
    orthogonal when ``𝒦 𝒦^T = I``; ``Conv(K, K, ...)`` is one block row of ``𝒦
    𝒦^T`` and ``I_r0`` the identity at the centre offset, so this asks the
    convolution *operator* to be orthogonal. Making the flattened kernel
    orthogonal (:class:`SoftOrthogonality`) is only its centre term: necessary,
    not sufficient. Each layer uses its own stride, dilation and groups; when
    ``out > in / groups * prod(S)`` the rows cannot be orthonormal and the
    column-orthogonal loss is used (the row loss minus ``out/groups - in/groups
    * prod(S)``; see :func:`conv_orthogonality_loss`), so the value is 0 exactly
    for an orthogonal convolution (circular padding) and the gradient is the
    paper's either way.

    Relation to "Existence, Stability and Scalability of Orthogonal
    Convolutional Neural Networks" (Achour, Malgouyres & Mamalet, JMLR 2022):
    they study this same loss; with circular padding exactly
    orthogonal convolutions exist only when ``out <= in * S^d`` (row) or ``out
    >= in * S^d`` (column) under conditions on the kernel size, none exist with
    'valid' padding, and a small loss value bounds how far the layer's singular
    values are from 1 uniformly in the input size (stability, scalability).
    The existence conditions are not checked here: where none exists the loss
    plateaus above 0.

    Departures from the authors' code (``deconv_orth_dist``): it uses
    ``padding=1`` whatever the kernel size and returns the unsquared Frobenius
    norm; here the paper's ``P`` and squared norm are used. Usual range of
    lambda: 0.01 to 1 (the authors' ImageNet runs use 0.1-0.5).

    Example:
        >>> penalty = KernelOrthogonality(0.1)

    Args:
        weight: lambda, >= 0.
        names: regular expression on conv module names, or None for every Conv1d/2d/3d.

    Raises:
        ConfigError: an argument is invalid, or the model has no (selected) Conv layer.
    """

    _fix = "conv_orthogonality applies to convolutions only; use soft_orthogonality or srip for Linear layers"
    _default_name = "conv_orthogonality"

    def __init__(self, weight: float, *, names: str | None = None, name: str | None = None):
        super().__init__(weight, types=("conv",), names=names, name=name)

    def layer_term(self, key: str, module: nn.Module, weight: Tensor) -> Tensor:
        return conv_orthogonality_loss(weight, module.stride, module.dilation, module.groups)

    def extra_repr(self) -> str:
        names = f", names={self.names!r}" if self.names is not None else ""
        return f"weight={self.weight:g}{names}"
