"""Smoothness penalties on the function of the inputs: Jacobian, input gradient, local linearity, VAT, equivariance.

Each of these runs the model again on the (perturbed or transformed) inputs,
except :class:`JacobianNorm` inside ``train_step``, which differentiates the
step's own forward pass. Those extra forward passes leave batch-norm running
statistics untouched (:func:`~reglab.penalties.gradient.frozen_norm_stats`);
dropout draws fresh masks. Random draws (projections, perturbations, group elements) use torch's
global generator, so ``reglab.core.seed_everything`` makes them reproducible.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reglab.core import ConfigError, Penalty, ShapeError, StepContext
from reglab.core.validation import check_float, check_int
from reglab.penalties.context import (
    float_inputs,
    frozen_norm_stats,
    per_example_loss,
    require_fields,
)
from reglab.penalties.registry import REGISTRY


def _leaf_inputs(x: Tensor) -> Tensor:
    """``x`` itself when it already requires grad (so the penalty stays differentiable in it), else a leaf copy."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def _per_example(shape_like: Tensor, values: Tensor) -> Tensor:
    """Reshape ``(n,)`` values to broadcast against ``shape_like`` (``(n, 1, ..., 1)``)."""
    return values.reshape(-1, *([1] * (shape_like.ndim - 1)))


@REGISTRY.register("jacobian_norm")
class JacobianNorm(Penalty):
    """Squared Frobenius norm of the input-output Jacobian, E_x ||J_f(x)||_F^2, by random projections.

    .. math:: R = \\frac{1}{n} \\sum_i \\lVert J_f(x_i) \\rVert_F^2,
        \\qquad \\lVert J \\rVert_F^2 = C\\, \\mathbb{E}_{v \\sim U(S^{C-1})} \\lVert v^\\top J \\rVert^2

    with C the output dimension: for v uniform on the unit sphere E[v v^T] = I / C,
    so ``C ||v^T J||^2`` is an unbiased estimate, averaged over ``n_projections``
    draws (one vector-Jacobian product each, v drawn per example). With
    ``n_projections=None`` the C basis vectors are used and the value is exact.
    Caveat: with a model whose layers mix examples within a batch (BatchNorm in
    train mode) the per-example projections and the exact mode measure
    different things (the exact mode picks up cross-example terms); evaluate
    such a model in eval mode, or read the value as an estimate.
    This is the estimator of "Robust Learning with Jacobian Regularization"
    (Hoffman, Roberts & Yaida, 2019), checked against the authors' code
    (facebookresearch/jacobian_regularizer, ``JacobianReg``), which returns
    *half* of this value: ``JacobianReg`` with coefficient lambda_JR equals this
    penalty with weight lambda_JR / 2. GrokAlign ("GrokAlign: Geometric
    Characterisation and Acceleration of Grokking", Walker et al., 2025) uses
    the same estimator to accelerate grokking. One projection per step is the
    paper's default; usual weights 1e-4 to 1e-1.

    Where J comes from: the penalty declares ``differentiable_inputs``, so
    ``train_step`` runs its forward pass on inputs that require grad and J is
    taken from that pass (``ctx.outputs``), with no second forward pass: with
    dropout, J is the Jacobian of the network under the step's own dropout
    masks, the function whose loss the step minimizes; with BatchNorm in train
    mode, of the batch-statistics function that pass computed. Given a context
    without ``differentiable_inputs`` (or ``outputs``), the penalty runs the
    model again on the inputs (fresh dropout masks, batch-norm running
    statistics untouched): the same value when the model draws no random
    numbers. The projections are drawn after the forward pass either way. The
    outputs may have any shape ``(n, ...)`` (flattened to C values).

    Example:
        >>> penalty = JacobianNorm(0.01, n_projections=1)

    Args:
        weight: the coefficient, >= 0.
        n_projections: number of random projections, >= 1; None for the exact value (C products).

    Raises:
        ConfigError: n_projections < 1; integer inputs (token ids have no Jacobian).
    """

    needs = frozenset({"inputs", "outputs", "differentiable_inputs"})

    def __init__(self, weight: float, *, n_projections: int | None = 1, name: str | None = None):
        super().__init__(weight, name=name)
        self.n_projections = None if n_projections is None else check_int("n_projections", n_projections, 1)

    def compute(self, ctx: StepContext) -> Tensor:
        if ctx.differentiable_inputs is not None and ctx.outputs is not None:
            x, y = ctx.differentiable_inputs, ctx.outputs
        else:
            x = _leaf_inputs(float_inputs(ctx, self.name))
            with torch.enable_grad(), frozen_norm_stats(ctx.model):
                y = ctx.model(x)
        n = y.shape[0]
        y = y.reshape(n, -1)
        c = y.shape[1]
        if self.n_projections is None:  # the C basis vectors: sum_j ||e_j^T J||^2 = ||J||_F^2 exactly
            eye = torch.eye(c, dtype=y.dtype, device=y.device)
            projections = [eye[j].expand(n, c) for j in range(c)]
        else:
            projections = []
            for _ in range(self.n_projections):
                v = torch.randn(n, c, dtype=y.dtype, device=y.device)
                projections.append(v / torch.linalg.vector_norm(v, dim=1, keepdim=True))
        total = y.new_zeros(())
        for v in projections:
            (vjp,) = torch.autograd.grad(y, x, v, create_graph=True)
            total = total + vjp.pow(2).sum()
        # C * mean over projections (exact mode: C / C = 1) and mean over the batch, as in the reference
        return c * total / (len(projections) * n)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_projections={self.n_projections}"


@REGISTRY.register("input_gradient_norm")
class InputGradientNorm(Penalty):
    """Squared norm of the input gradient of each example's loss, mean_i ||grad_x l(f(x_i), y_i)||^2 (double backprop).

    .. math:: R = \\frac{1}{n} \\sum_i \\lVert \\nabla_{x_i} \\ell(f(x_i), y_i) \\rVert^2

    Penalizes how fast the loss changes when the input moves ("Improving
    Generalization Performance Using Double Backpropagation", Drucker & LeCun,
    1992; used for adversarial robustness as input-gradient regularization,
    Ross & Doshi-Velez, 2018). The per-example loss l is ``loss_fn`` with
    ``reduction="none"`` (see :func:`~reglab.penalties.gradient.per_example_loss`);
    using each example's own loss keeps R independent of the batch size (the
    gradient of a batch-mean loss would be 1/n smaller). Minimizing R
    differentiates through the gradient (double backpropagation). Usual weights:
    1e-3 to 10 (input scale dependent).

    Example:
        >>> penalty = InputGradientNorm(0.1)

    Args:
        weight: the coefficient, >= 0.

    Raises:
        ConfigError: integer inputs; a loss with per-example state.
        MissingContextError: ``ctx.loss_fn`` is missing.
        ShapeError: the loss cannot give one value per example.
    """

    needs = frozenset({"inputs", "loss_fn"})

    def compute(self, ctx: StepContext) -> Tensor:
        require_fields(ctx, self.name, "loss_fn")
        x = _leaf_inputs(float_inputs(ctx, self.name))
        with torch.enable_grad(), frozen_norm_stats(ctx.model):
            losses = per_example_loss(ctx.loss_fn, ctx.model(x), ctx.targets, self.name)
            (grad,) = torch.autograd.grad(losses.sum(), x, create_graph=True)
        return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


@REGISTRY.register("elle")
class LocalLinearity(Penalty):
    """ELLE: squared error of the loss against linear interpolation in the eps-ball, no double backprop.

    .. math::
        x_a = x + \\epsilon u_a,\\; x_b = x + \\epsilon u_b,\\; u \\sim U[-1, 1]^d,\\;
        \\alpha \\sim U[0, 1],\\; x_c = \\alpha x_a + (1 - \\alpha) x_b

        R = \\operatorname{mean}_i \\big(\\ell(x_c) - \\alpha \\ell(x_a) - (1 - \\alpha) \\ell(x_b)\\big)^2

    averaged over ``n_triplets`` independent triplets, with l the per-example
    loss. R is zero when the loss is locally linear (affine) in the input; for a
    quadratic loss 1/2 x^T A x it is (alpha (1 - alpha) / 2 (x_a - x_b)^T A (x_a - x_b))^2,
    so it measures curvature. "Efficient local linearity regularization to
    overcome catastrophic overfitting" (Abad Rocamora et al., ICLR 2024), checked
    against the authors' snippet (LIONS-EPFL/ELLE README): points sampled
    uniformly in the l-infinity ball (not clipped to a data range), one
    triplet by default, per-example cross-entropy, MSE over the batch; the
    code writes x_c = (1 - alpha) x_a + alpha x_b, the same distribution. Added
    to single-step (FGSM) adversarial training with eps the attack radius (8/255
    to 16/255 on images in [0, 1]); the weight lambda is large because R is a
    squared small quantity (the paper's ELLE-A raises it adaptively when R
    spikes; not implemented here).

    Example:
        >>> penalty = LocalLinearity(100.0, epsilon=0.1)

    Args:
        weight: lambda, >= 0.
        epsilon: radius of the l-infinity ball, > 0 (in input units).
        n_triplets: triplets per step, >= 1.

    Raises:
        ConfigError: epsilon <= 0, n_triplets < 1; integer inputs; a loss with per-example state.
        MissingContextError: ``ctx.loss_fn`` is missing.
        ShapeError: the loss cannot give one value per example.
    """

    needs = frozenset({"inputs", "loss_fn"})

    def __init__(self, weight: float, *, epsilon: float, n_triplets: int = 1, name: str | None = None):
        super().__init__(weight, name=name or "elle")
        self.epsilon = check_float("epsilon", epsilon, 0.0, low_open=True)
        self.n_triplets = check_int("n_triplets", n_triplets, 1)

    def compute(self, ctx: StepContext) -> Tensor:
        require_fields(ctx, self.name, "loss_fn")
        x = float_inputs(ctx, self.name)
        n = x.shape[0]
        targets = torch.cat([ctx.targets] * 3)
        total = x.new_zeros(())
        for _ in range(self.n_triplets):
            doubled = x.repeat(2, *([1] * (x.ndim - 1)))
            x_ab = doubled + self.epsilon * (2 * torch.rand_like(doubled) - 1)
            alpha = torch.rand(n, dtype=x.dtype, device=x.device)
            x_a, x_b = x_ab[:n], x_ab[n:]
            a = _per_example(x, alpha)
            x_c = a * x_a + (1 - a) * x_b
            with frozen_norm_stats(ctx.model):
                losses = per_example_loss(ctx.loss_fn, ctx.model(torch.cat([x_a, x_b, x_c])), targets, self.name)
            l_a, l_b, l_c = losses[:n], losses[n : 2 * n], losses[2 * n :]
            total = total + (l_c - alpha * l_a - (1 - alpha) * l_b).pow(2).mean()
        return total / self.n_triplets

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon:g}, n_triplets={self.n_triplets}"


def _unit(d: Tensor) -> Tensor:
    """Each example's slice scaled to unit L2 norm (all-zero slices stay zero).

    Divides by the max |d| first, as the reference code does, so that tiny
    finite-difference gradients do not underflow when squared.
    """
    dims = tuple(range(1, d.ndim))
    tiny = torch.finfo(d.dtype).tiny
    d = d / d.abs().amax(dim=dims, keepdim=True).clamp_min(tiny)
    return d / torch.linalg.vector_norm(d, dim=dims, keepdim=True).clamp_min(tiny)


def _kl_with_logits(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """mean_i KL(softmax(p_i) || softmax(q_i)) over the rows."""
    log_p = F.log_softmax(p_logits, dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=-1))).sum(-1).mean()


@REGISTRY.register("vat")
class VAT(Penalty):
    """Virtual adversarial training: KL(p(x) || p(x + r_adv)), r_adv the most sensitive direction of radius eps.

    .. math::
        r_{adv} = \\epsilon \\, \\frac{g}{\\lVert g \\rVert}, \\quad
        g = \\nabla_r \\mathrm{KL}(p(\\cdot|x) \\,\\|\\, p(\\cdot|x + r))\\big|_{r = \\xi d}, \\quad
        d \\leftarrow g / \\lVert g \\rVert \\;(K \\text{ times, from } d \\sim N(0, I))

        R = \\operatorname{mean}_i \\mathrm{KL}(p(\\cdot|x_i) \\,\\|\\, p(\\cdot|x_i + r_{adv,i}))

    p(.|x) (``ctx.outputs``) is held constant (detached). Each power iteration
    approximates d <- H d / ||H d||, H the Hessian of the KL in r at 0, by a
    finite difference of size xi, so r_adv aligns with H's top eigenvector.
    Targets are not used: VAT regularizes unlabelled inputs too ("Virtual
    Adversarial Training: A Regularization Method for Supervised and
    Semi-Supervised Learning", Miyato et al., TPAMI 2018). Checked against the
    authors' code (takerum/vat_tf ``vat.py``): d normalized per example (after
    division by max |d|), d = xi * d before each iteration, KL(clean || perturbed)
    averaged over the batch, K = 1 and eps = 8.0 (for ZCA-whitened CIFAR-10) by
    default. eps depends on the scale of the inputs: of the order of the
    distance between nearby examples; weight alpha = 1. Extra forward passes
    leave batch-norm statistics untouched, as in the reference
    (``update_batch_stats=False``).

    Departure from the reference: its xi = 1e-6 is below float32 resolution
    for inputs of unit scale (x + xi d rounds back to nearly x), which leaves
    the power iteration with a nearly random direction (measured on MNIST-1D
    with an MLP in float32, three initializations: median |cos| 0.39 to 0.59
    to the float64 direction after 20 iterations; above 0.9999 with the
    default here). By default (``xi=None``) each example uses the usual
    finite-difference step ``sqrt(machine eps) * max(||x_i||, 1)`` (1.5e-8
    relative in float64, 3.5e-4 in float32); a number fixes xi for every
    example (the paper's 1e-6 is fine in float64).

    Example:
        >>> penalty = VAT(1.0, epsilon=2.0)

    Args:
        weight: alpha, >= 0.
        epsilon: radius of the perturbation, > 0 (input units).
        xi: finite-difference step of the power iteration, > 0, or None for
            ``sqrt(machine eps) * max(||x_i||, 1)`` per example.
        n_power: power iterations K, >= 1.

    Raises:
        ConfigError: a bad argument; integer inputs.
        MissingContextError: ``ctx.outputs`` is missing.
        ShapeError: outputs are not logits of shape (n, num_classes).
    """

    needs = frozenset({"inputs", "outputs"})

    def __init__(
        self, weight: float, *, epsilon: float, xi: float | None = None, n_power: int = 1, name: str | None = None
    ):
        super().__init__(weight, name=name)
        self.epsilon = check_float("epsilon", epsilon, 0.0, low_open=True)
        self.xi = None if xi is None else check_float("xi", xi, 0.0, low_open=True)
        self.n_power = check_int("n_power", n_power, 1)

    def _check_logits(self, ctx: StepContext) -> Tensor:
        require_fields(ctx, self.name, "outputs")
        if ctx.outputs.ndim != 2:
            raise ShapeError(
                f"{self.name} compares class distributions and needs logits of shape (n, num_classes), got "
                f"{tuple(ctx.outputs.shape)}; for regression use a smoothness penalty such as jacobian_norm"
            )
        return ctx.outputs.detach()

    def step_size(self, x: Tensor) -> Tensor | float:
        """The finite-difference step xi: the fixed value, or ``sqrt(eps) * max(||x_i||, 1)`` per example."""
        if self.xi is not None:
            return self.xi
        norms = torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).clamp_min(1.0)
        return math.sqrt(torch.finfo(x.dtype).eps) * _per_example(x, norms)

    def perturbation(self, ctx: StepContext) -> Tensor:
        """r_adv for the batch, shape of ``ctx.inputs``, without autograd history."""
        x = float_inputs(ctx, self.name).detach()
        logits = self._check_logits(ctx)
        d = torch.randn_like(x)
        with torch.enable_grad(), frozen_norm_stats(ctx.model):
            for _ in range(self.n_power):
                d = (self.step_size(x) * _unit(d)).requires_grad_(True)
                (grad,) = torch.autograd.grad(_kl_with_logits(logits, ctx.model(x + d)), d)
                d = grad.detach()
        return self.epsilon * _unit(d)

    def compute(self, ctx: StepContext) -> Tensor:
        logits = self._check_logits(ctx)
        r_adv = self.perturbation(ctx)
        with frozen_norm_stats(ctx.model):
            perturbed = ctx.model(ctx.inputs + r_adv)
        return _kl_with_logits(logits, perturbed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon:g}, xi={self.xi}, n_power={self.n_power}"


@REGISTRY.register("soft_equivariance")
class SoftEquivariance(Penalty):
    """Soft equivariance: E_g ||f(rho_in(g) x) - rho_out(g) f(x)||^2 for user-given group actions.

    .. math:: R = \\frac{1}{n} \\sum_i \\mathbb{E}_{g}
        \\lVert f(\\rho_{in}(g)\\, x_i) - \\rho_{out}(g)\\, f(x_i) \\rVert^2

    The equivariance regularizer of "Regularizing Towards Soft Equivariance
    Under Mixed Symmetries" (Kim et al., ICML 2023), one per symmetry
    type; with ``act_out=None`` rho_out is the identity and R measures
    invariance. The expectation over g is a Monte-Carlo average over
    ``n_samples`` draws (group elements may differ per example). Mixed
    symmetries are a sum of such penalties with their own weights; the paper's
    automatic tuning of those weights is not implemented. f(x) is
    ``ctx.outputs`` (gradients flow through both terms); f(rho_in(g) x) is a
    new forward pass.

    Callables cannot be written in a config; :class:`ShiftInvariance` and
    :class:`FlipInvariance` are registered concrete cases.

    Example:
        >>> roll = lambda x, k: torch.roll(x, int(k), dims=-1)
        >>> penalty = SoftEquivariance(0.1, act_in=roll, act_out=roll,
        ...                            sample_group=lambda x: torch.randint(x.shape[-1], ()))

    Args:
        weight: lambda, >= 0.
        act_in: ``act_in(x, g)`` -> transformed input batch.
        act_out: ``act_out(y, g)`` -> transformed output batch, or None for invariance.
        sample_group: ``sample_group(x)`` -> a group element g for the batch ``x``.
        n_samples: Monte-Carlo draws of g per step, >= 1.

    Raises:
        ConfigError: a non-callable action or sampler, n_samples < 1.
        MissingContextError: ``ctx.outputs`` is missing.
        ShapeError: f(rho_in(g) x) and rho_out(g) f(x) differ in shape.
    """

    needs = frozenset({"inputs", "outputs"})

    def __init__(
        self,
        weight: float,
        act_in: Callable[[Tensor, Any], Tensor],
        act_out: Callable[[Tensor, Any], Tensor] | None = None,
        *,
        sample_group: Callable[[Tensor], Any],
        n_samples: int = 1,
        name: str | None = None,
    ):
        super().__init__(weight, name=name)
        for arg, value in (("act_in", act_in), ("sample_group", sample_group)):
            if not callable(value):
                raise _not_callable(arg, value)
        if act_out is not None and not callable(act_out):
            raise _not_callable("act_out", act_out)
        self.act_in = act_in
        self.act_out = act_out
        self.sample_group = sample_group
        self.n_samples = check_int("n_samples", n_samples, 1)

    def compute(self, ctx: StepContext) -> Tensor:
        require_fields(ctx, self.name, "outputs")
        x, y = ctx.inputs, ctx.outputs
        n = y.shape[0]
        total = y.new_zeros(())
        for _ in range(self.n_samples):
            g = self.sample_group(x)
            with frozen_norm_stats(ctx.model):
                transformed = ctx.model(self.act_in(x, g))
            target = y if self.act_out is None else self.act_out(y, g)
            if transformed.shape != target.shape:
                raise ShapeError(
                    f"{self.name}: f(act_in(x, g)) has shape {tuple(transformed.shape)} but "
                    f"{'f(x)' if self.act_out is None else 'act_out(f(x), g)'} has shape {tuple(target.shape)}; "
                    "the actions must keep the shapes of the inputs and outputs"
                )
            total = total + (transformed - target).pow(2).reshape(n, -1).sum(1).mean()
        return total / self.n_samples

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_samples={self.n_samples}"


def _not_callable(arg: str, value: object) -> ConfigError:
    return ConfigError(f"{arg} must be callable, got {value!r}")


def _check_sequence_inputs(x: Tensor, owner: str) -> None:
    if x.ndim < 2:
        raise ShapeError(
            f"{owner} transforms signals along their last dimension and needs inputs of shape (n, ..., length), "
            f"got {tuple(x.shape)}"
        )


def _sample_shifts(x: Tensor, max_shift: int | None, owner: str) -> Tensor:
    """One circular shift per example: uniform on [-max_shift, max_shift], or on [0, length) when None."""
    _check_sequence_inputs(x, owner)
    n, length = x.shape[0], x.shape[-1]
    if max_shift is None:
        return torch.randint(0, length, (n,), device=x.device)
    return torch.randint(-max_shift, max_shift + 1, (n,), device=x.device)


def circular_shift(x: Tensor, shifts: Tensor) -> Tensor:
    """Roll each example ``x[i]`` by ``shifts[i]`` along the last dimension (``torch.roll`` per example)."""
    n, length = x.shape[0], x.shape[-1]
    source = (torch.arange(length, device=x.device).unsqueeze(0) - shifts.reshape(n, 1)) % length
    source = source.reshape(n, *([1] * (x.ndim - 2)), length).expand_as(x)
    return x.gather(-1, source)


def _flip(x: Tensor, g: object, dim: int, owner: str) -> Tensor:
    _check_sequence_inputs(x, owner)
    if not (-x.ndim < dim < 0 or 0 < dim < x.ndim):
        raise ShapeError(f"{owner}: dim {dim} is not a non-batch dimension of inputs of shape {tuple(x.shape)}")
    return x.flip(dim)


@REGISTRY.register("shift_invariance")
class ShiftInvariance(SoftEquivariance):
    """Soft invariance to circular shifts of 1-D signals: E_k ||f(roll(x, k)) - f(x)||^2.

    The :class:`SoftEquivariance` regularizer for the cyclic group of circular
    shifts along the last input dimension, with ``act_out`` the identity. Each
    example gets its own shift k, uniform over all ``length`` shifts (the group
    average; k = 0 included) or, with ``max_shift``, uniform on
    [-max_shift, max_shift]. Suits periodic 1-D signals; for MNIST-1D-like
    data, where the true symmetry is a non-circular translation, a small
    ``max_shift`` keeps the wrap-around small.

    Example:
        >>> penalty = ShiftInvariance(0.1, max_shift=5)

    Args:
        weight: lambda, >= 0.
        max_shift: largest |k|, >= 0, or None for all shifts.
        n_samples: Monte-Carlo draws per step, >= 1.

    Raises:
        ConfigError: max_shift < 0, n_samples < 1.
        ShapeError: inputs with fewer than 2 dimensions (no signal axis).
    """

    def __init__(self, weight: float, *, max_shift: int | None = None, n_samples: int = 1, name: str | None = None):
        max_shift = None if max_shift is None else check_int("max_shift", max_shift, 0)
        super().__init__(
            weight,
            act_in=circular_shift,
            act_out=None,
            sample_group=functools.partial(_sample_shifts, max_shift=max_shift, owner="shift_invariance"),
            n_samples=n_samples,
            name=name,
        )
        self.max_shift = max_shift

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_shift={self.max_shift}"


@REGISTRY.register("flip_invariance")
class FlipInvariance(SoftEquivariance):
    """Soft invariance to reversing the inputs along one dimension: ||f(flip(x)) - f(x)||^2.

    The :class:`SoftEquivariance` regularizer for the two-element group {id,
    flip}, with ``act_out`` the identity. The flip is applied every time
    (deterministic), so the value is twice the group average (the identity
    contributes 0). ``dim=-1`` reverses 1-D signals; ``dim=-1`` on images of
    shape (n, C, H, W) is a horizontal flip.

    Example:
        >>> penalty = FlipInvariance(0.1)

    Args:
        weight: lambda, >= 0.
        dim: the input dimension to reverse (not 0, the batch dimension).

    Raises:
        ConfigError: dim is 0 or not an int.
        ShapeError: inputs without that dimension.
    """

    def __init__(self, weight: float, *, dim: int = -1, name: str | None = None):
        dim = check_int("dim", dim)
        if dim == 0:
            raise ConfigError("dim must not be 0 (the batch dimension), got 0")
        super().__init__(
            weight,
            act_in=functools.partial(_flip, dim=dim, owner="flip_invariance"),
            act_out=None,
            sample_group=_no_element,
            n_samples=1,
            name=name,
        )
        self.dim = dim

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, dim={self.dim}"


def _no_element(x: Tensor) -> None:
    return None


__all__ = [
    "VAT",
    "FlipInvariance",
    "InputGradientNorm",
    "JacobianNorm",
    "LocalLinearity",
    "ShiftInvariance",
    "SoftEquivariance",
    "circular_shift",
]
