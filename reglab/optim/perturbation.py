"""Weight-perturbation optimizers: SAM/ASAM, GSAM, AMP, GAM, finite-difference GR and IGNITE.

Every method here takes the gradient at the current weights ``theta``, moves
the weights to one or more nearby points ``theta + delta``, takes the gradient
there, puts the weights back and hands a combination of those gradients to a
base optimizer. That "perturb -> re-evaluate -> restore" loop is written once,
in :class:`PerturbationOptimizer`; each method only says where to go and how to
combine what it found (:meth:`PerturbationOptimizer._direction`).

Shared behaviour (the engine):

- The optimizer is an :class:`~reglab.optim.wrappers.OptimizerWrapper`
  around a *constructed* base optimizer (``opt.base``): ``param_groups``,
  ``state``, ``defaults``, ``zero_grad``, ``add_param_group``, ``state_dict``
  and ``load_state_dict`` are the base's, so LR schedulers and checkpoints
  work as with the base alone. The method's own hyperparameters live in
  ``opt.hyperparameters``; they, the optimizer's type and its own state
  (IGNITE's multiplier) are saved under the key ``"wrapper"`` of the state
  dict.
- ``step(closure)``: the closure zeroes the gradients, recomputes the loss,
  calls ``backward()`` and returns the loss; it is called several times per
  step (``requires_closure = True``; :func:`reglab.train.train_step` builds it).
  Gradient accumulation inside the closure is fine: the engine only reads
  ``p.grad`` after each call. ``step`` returns the loss of the first call, at
  the unperturbed weights.
- Only parameters whose ``grad`` is not None after the first call take part;
  the others are neither perturbed nor stepped.
- The weights are restored by copying the saved values back, so nothing of the
  perturbation is left in them (with a zero radius every method reproduces its
  base optimizer bitwise).
- BatchNorm running statistics: pass ``model=`` and the closure evaluations
  after the first, unperturbed one run inside
  :func:`reglab.linalg.functional.frozen_norm_stats` (normalization layers
  use their batch statistics, as always in train mode, and update nothing),
  so the statistics are updated once per step. Configs pass the built model
  (``reglab.experiments.runner.build``); in code, pass ``model=`` when the
  model has BatchNorm.
- A non-finite loss, at the weights or at a perturbed point, or a non-finite
  direction leaves the weights as they were and skips the base step
  (``last_step_skipped`` is True); what to do next is the caller's choice. A
  non-finite gradient is not looked for at each point (a full pass over it):
  it makes the next perturbed point, hence its loss, non-finite, or it reaches
  the direction, which is checked once before the base step.
- Cost: besides the closure calls, one copy of the weights, one norm pass per
  ascent and one over the direction; the gradients are taken from ``p.grad``,
  not copied (unless ``p.grad`` is a view, as with DDP's
  ``gradient_as_bucket_view``). ``benchmarks/optimizers.py`` measures it.
- Distributed data parallel: every closure's ``backward()`` is all-reduced by
  DDP as usual, so all ranks perturb by the same, global gradient and take the
  same step (the global-batch semantics; per-rank "m-sharpness" would need
  ``no_sync``, which is not done here).

After ``step`` each taking-part ``p.grad`` holds the direction that was handed
to the base optimizer.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from reglab.core.errors import ConfigError
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.linalg.functional import frozen_norm_stats
from reglab.optim.registry import REGISTRY, build_base
from reglab.optim.wrappers import WRAPPER_KEY, OptimizerWrapper

Closure = Callable[[], Any]

#: added to a norm before dividing by it, as in the reference implementations
#: (davda54/sam, juntang-zhuang/GSAM, xxgege/GAM, hiyouga/AMP-Regularizer).
NORM_EPS = 1e-12


# --------------------------------------------------------------------------- tensor-list helpers


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _same_kind(tensors: Sequence[Tensor]) -> bool:
    """Whether all tensors share the first one's dtype and device (the fused ``torch._foreach_*`` case)."""
    device, dtype = tensors[0].device, tensors[0].dtype
    return all(t.device == device and t.dtype == dtype for t in tensors)


def _norms(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """The tensors' Euclidean norms as one 1-D tensor on the first one's device, in ``dtype`` (default common)."""
    device, common = tensors[0].device, _common_dtype(tensors)
    dtype = dtype or common
    if _same_kind(tensors):  # one fused call
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=None if dtype == common else dtype))
    return torch.stack([torch.linalg.vector_norm(t, dtype=dtype).to(device) for t in tensors])


def _global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of ``tensors`` (a 0-dim tensor)."""
    return torch.linalg.vector_norm(_norms(tensors))


def _inner(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Sum over the list of ``<a_i, b_i>`` (a 0-dim tensor)."""
    device, dtype = a[0].device, _common_dtype(list(a) + list(b))
    return torch.stack([(x * y).sum().to(device=device, dtype=dtype) for x, y in zip(a, b)]).sum()


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry is finite, read from the tensors' norms (one reduction each, one host sync).

    A NaN or an infinity makes a norm non-finite; so does a norm that overflows its dtype (entries of about
    ``sqrt(max / numel)``; norms of half-precision tensors are taken in float32), which counts as non-finite
    here. Several times cheaper than ``isfinite(t).all()``, which allocates a mask per tensor.
    """
    if not tensors:
        return True
    return bool(torch.isfinite(_norms(tensors, torch.promote_types(_common_dtype(tensors), torch.float32)).sum()))


def _take_grad(p: Tensor) -> Tensor:
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


def _finite_loss(loss: Any) -> bool:
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
        norm = _global_norm([s * v for s, v in zip(scales, vectors)])
        coef = radius / (norm + NORM_EPS)
        return [v * (s * s) * coef for s, v in zip(scales, vectors)]
    coef = radius / (_global_norm(vectors) + NORM_EPS)
    if _same_kind(vectors):
        return list(torch._foreach_mul(list(vectors), coef))
    return [v * coef for v in vectors]


def _orthogonal_part(v: Sequence[Tensor], u: Sequence[Tensor]) -> list[Tensor]:
    """``v - cos(v, u) ||v|| u / (||u|| + 1e-12)``: the part of ``v`` orthogonal to ``u``, as GSAM computes it.

    ``cos = <v, u> / (||v|| ||u|| + 1e-12)`` (juntang-zhuang/GSAM ``gradient_decompose``).
    """
    nv, nu = _global_norm(v), _global_norm(u)
    cos = _inner(v, u) / (nv * nu + NORM_EPS)
    coef = cos * nv / (nu + NORM_EPS)
    return [a - b * coef for a, b in zip(v, u)]


# --------------------------------------------------------------------------- fp16 gradient scaling


class _GradientSet:
    """What ``GradScaler.unscale_`` reads from an optimizer: ``param_groups``. One per closure evaluation, so the
    scaler unscales (and checks for inf/NaN) the gradients of every pass, and ``update`` sees every pass's check."""

    def __init__(self, params: list[Tensor]):
        self.param_groups = [{"params": params}]


class _Unscaler:
    """Unscales the gradients of each closure evaluation with a ``torch.amp.GradScaler``.

    ``__call__(params)`` divides the gradients by the scale in place (one fused kernel per device and dtype, the
    scaler's own) and returns whether they were all finite. ``update()`` updates the scaler once, growing or
    backing off its scale from every check made since the last update.
    """

    def __init__(self, scaler: Any):
        self.scaler = scaler
        self._sets: list[_GradientSet] = []  # kept alive: the scaler keys its per-call records by id()

    def _found_inf(self, grads: _GradientSet) -> dict[Any, Tensor]:
        # the scaler's record of its inf/NaN check of one unscale_ call (a 1-element tensor per device)
        return self.scaler._per_optimizer_states[id(grads)]["found_inf_per_device"]

    def __call__(self, params: list[Tensor]) -> bool:
        grads = _GradientSet(params)
        self._sets.append(grads)
        self.scaler.unscale_(grads)
        return not any(bool(v.item()) for v in self._found_inf(grads).values())

    def update(self) -> None:
        if any(self._found_inf(s) for s in self._sets):  # update() needs at least one recorded check
            self.scaler.update()
        self._sets.clear()


# --------------------------------------------------------------------------- the engine


class Perturbation:
    """One step's bookkeeping: the taking-part parameters, their saved values, gradients at perturbed points.

    Built by :class:`PerturbationOptimizer` after the first closure call.

    Attributes:
        params: the parameters that had a gradient after the first call.
        origin: their values at the start of the step (copies).
        grad: the gradient at ``origin`` (copies of ``p.grad``).
        evaluations: closure calls so far in this step (the first one included).
    """

    def __init__(self, closure: Closure, params: list[Tensor], grad: list[Tensor], unscale: _Unscaler | None = None):
        self.closure = closure
        self.unscale = unscale
        self.params = params
        self.origin = [p.detach().clone() for p in params]
        self.grad = grad
        self.evaluations = 1
        self._at_origin = True  # the weights hold exactly ``origin`` (no copy needed before the next move)

    def move(self, offsets: Sequence[Tensor] | None, *, force: bool = False) -> None:
        """Set the weights to ``origin + offsets`` (``None``: back to ``origin``).

        The copy of ``origin`` is skipped when the weights already hold it
        (the closure does not change the weights); ``force=True`` copies anyway.
        """
        with torch.no_grad():
            if force or not self._at_origin:
                torch._foreach_copy_(self.params, self.origin)
            if offsets is not None:
                torch._foreach_add_(self.params, list(offsets))
            self._at_origin = offsets is None

    def grad_at(self, offsets: Sequence[Tensor] | None, closure: Closure | None = None) -> list[Tensor] | None:
        """The gradient at ``origin + offsets`` (``None``: at ``origin``), or None if the loss there is not finite.

        ``closure`` defaults to the step's closure. A parameter that gets no
        gradient at that point counts as a zero gradient. The gradient itself is
        not checked here (a full pass over it); a non-finite gradient reaches
        the direction, which the engine checks before the base step. Under a
        gradient scaler the gradients are unscaled here, and an inf/NaN among
        them (which the scaler finds anyway) also gives None.
        """
        self.move(offsets)
        with torch.enable_grad():
            loss = (closure or self.closure)()
        self.evaluations += 1
        if self.unscale is not None and not self.unscale([p for p in self.params if p.grad is not None]):
            return None
        if not _finite_loss(loss):
            return None
        return [_take_grad(p) for p in self.params]


class PerturbationOptimizer(OptimizerWrapper, abc.ABC):
    """Base class of the weight-perturbation optimizers: perturb, re-evaluate the gradient, restore, step the base.

    An :class:`~reglab.optim.wrappers.OptimizerWrapper`: ``param_groups``,
    ``state``, ``defaults``, ``zero_grad``, ``add_param_group``, ``state_dict``
    and ``load_state_dict`` are the base's (``opt.base``), so LR schedulers
    (``OneCycleLR``'s momentum cycling included) and checkpoints work as with
    the base alone. The method's own hyperparameters are in
    ``hyperparameters`` (a dict; change a value between steps to schedule it),
    and the state dict's ``"wrapper"`` entry holds this optimizer's type, its
    hyperparameters and its own state (IGNITE's multiplier). Unlike a plain
    wrapper, ``requires_closure`` is always True.

    A subclass implements :meth:`_direction`, which receives a
    :class:`Perturbation` (the gradient at the weights is ``point.grad``; more
    gradients come from ``point.grad_at(offsets)``) and returns the direction
    to hand to the base optimizer, or None to skip the step. Weights are
    restored, and BatchNorm statistics left untouched, by the engine whatever
    happens in between.
    See the module docstring for the shared contract.

    Args:
        base: a constructed ``torch.optim.Optimizer`` over the parameters that takes one gradient per step.
        hyperparameters: the subclass's validated hyperparameters (saved in the state dict).
        model: optional module whose BatchNorm running statistics are protected
            from the perturbed forward passes.

    Raises:
        ConfigError: ``base`` is not a torch optimizer or itself needs a closure
            (a perturbation optimizer, LBFGS); ``model`` is not an ``nn.Module``.
    """

    requires_closure = True
    supports_grad_scaler = True

    def __init__(self, base: Optimizer, hyperparameters: dict[str, Any], *, model: nn.Module | None = None):
        super().__init__(base)
        from reglab.optim import requires_closure  # the package imports this module

        if requires_closure(base):
            raise ConfigError(
                f"base must be a plain optimizer that takes one gradient per step, got {type(base).__name__}, "
                "which re-evaluates the loss inside step (requires_closure=True) and cannot be stepped without its "
                "own closure; wrap the plain optimizer directly"
            )
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError(f"model must be an nn.Module or None, got {type(model).__name__}")
        self.model = model
        self.hyperparameters = hyperparameters
        self.last_step_skipped = False
        self.last_evaluations = 0

    # ---- what the wrapper keeps besides the base
    def _extra_repr(self) -> str:
        return "".join(f"{k}={v!r}, " for k, v in self.hyperparameters.items())

    def _wrapper_state(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "hyperparameters": dict(self.hyperparameters),
            "state": self._extra_state(),
        }

    def _check_wrapper_state(self, state: dict[str, Any]) -> None:
        if state and state.get("type") != type(self).__name__:
            raise ConfigError(
                f"state_dict was saved by {state.get('type', 'another wrapper')}, cannot load it into "
                f"{type(self).__name__}; build the same optimizer class, or load state_dict without its "
                f"'{WRAPPER_KEY}' entry"
            )

    def _load_wrapper_state(self, state: dict[str, Any]) -> None:
        if state:  # empty: a bare base-optimizer state dict was loaded
            self.hyperparameters.update(state["hyperparameters"])
            self._load_extra_state(state["state"])

    # ---- the step
    @torch.no_grad()
    def step(self, closure: Closure | None = None, *, grad_scaler: Any = None) -> Any:  # type: ignore[override]
        """Evaluate ``closure`` at the weights and at the method's perturbed points, then step the base optimizer.

        Args:
            closure: zeroes the gradients, computes the loss, calls ``backward()`` (on the scaled loss,
                ``grad_scaler.scale(loss).backward()``, under fp16) and returns the (unscaled) loss.
            grad_scaler: a ``torch.amp.GradScaler`` for fp16 training, or None. The gradients of every closure
                evaluation are unscaled before they are used (so the ascent direction and its norm are those of the
                true gradient); if any evaluation has an inf/NaN gradient the step is skipped (weights, BatchNorm
                statistics and the base optimizer untouched) and the scale backs off; the scaler is updated once
                per call, as ``scaler.step`` + ``scaler.update`` would do for a plain optimizer.

        Returns:
            What the first closure call returned (the loss at the unperturbed weights).

        Raises:
            ConfigError: no closure was given.
        """
        if closure is None:
            raise ConfigError(
                f"{type(self).__name__}.step needs a closure that zeroes the gradients, computes the loss, calls "
                "backward() and returns the loss (reglab.train.train_step builds one)"
            )
        unscale = _Unscaler(grad_scaler) if grad_scaler is not None and grad_scaler.is_enabled() else None
        try:
            return self._step(closure, unscale)
        finally:
            if unscale is not None:
                unscale.update()

    def _step(self, closure: Closure, unscale: _Unscaler | None) -> Any:
        self.last_step_skipped = True
        with torch.enable_grad():
            loss = closure()
        self.last_evaluations = 1
        every = self._flat_params()
        params = [p for p in every if p.grad is not None]
        if unscale is not None and params and not unscale(params):
            return loss
        if not params or not _finite_loss(loss):
            return loss
        point = Perturbation(closure, params, [_take_grad(p) for p in params], unscale)
        try:
            with frozen_norm_stats(self.model) if self.model is not None else contextlib.nullcontext():
                direction = self._direction(point)
        finally:
            point.move(None, force=True)
            self.last_evaluations = point.evaluations
        if direction is None or not _all_finite(direction):
            return loss
        taking_part = {id(p) for p in params}
        for p in every:
            if id(p) not in taking_part:
                p.grad = None  # a later closure call may have given it a gradient; it does not take part
        for p, d in zip(params, direction):
            p.grad = d
        self.base.step()
        self.last_step_skipped = False
        self._after_step()
        return loss

    # ---- what subclasses implement
    @abc.abstractmethod
    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        """The direction to hand to the base optimizer (one tensor per ``point.params``), or None to skip."""

    def _after_step(self) -> None:
        """Called after a successful base step (IGNITE's dual update)."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------- SAM / ASAM


class SAM(PerturbationOptimizer):
    """Sharpness-Aware Minimization (SAM); ``adaptive=True`` gives ASAM.

    Update (g(w) the minibatch gradient)::

        g     = grad L(w)
        T     = |w| + eta  (elementwise)  if adaptive  else  1
        e     = rho * T^2 g / (||T g|| + 1e-12)        # one norm over all parameters
        g_sam = grad L(w + e)
        w     <- base_step(w, g_sam)                   # e is removed first

    Two forward/backward passes per step. The ``1e-12``, the set of parameters
    (those with a gradient) and ASAM's ``T^2 g / ||T g||`` follow davda54/sam.
    SamsungLabs/ASAM adds ``eta`` (0.01 there) and applies ``T`` to weights
    only (biases use ``T = 1``); here ``T`` applies to every parameter.

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import SAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.last_evaluations
        2

    References:
        Foret, Kleiner, Mobahi, Neyshabur. "Sharpness-Aware Minimization for
        Efficiently Improving Generalization", ICLR 2021.
        Kwon, Kim, Park, Choi. "ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks", ICML 2021.

    Args:
        base: the constructed optimizer that takes the step.
        rho: radius of the perturbation; usual 0.01-0.1 for SAM (0.05 default),
            0.5-2 for ASAM.
        adaptive: ASAM's elementwise scaling ``T = |w| + eta``.
        eta: ASAM's offset inside ``T`` (0 as in davda54/sam; 0.01 in SamsungLabs/ASAM).
        model: module whose BatchNorm running statistics the perturbed pass must not update.

    Raises:
        ConfigError: ``rho < 0``, ``eta < 0``, ``adaptive`` not a bool, or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.05,
        *,
        adaptive: bool = False,
        eta: float = 0.0,
        model: nn.Module | None = None,
    ):
        hyper = {
            "rho": check_float("rho", rho, 0.0),
            "adaptive": check_bool("adaptive", adaptive),
            "eta": check_float("eta", eta, 0.0),
        }
        super().__init__(base, hyper, model=model)

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        offsets = ascent_offsets(point.params, point.grad, d["rho"], adaptive=d["adaptive"], eta=d["eta"])
        return point.grad_at(offsets)


# --------------------------------------------------------------------------- GSAM


class GSAM(PerturbationOptimizer):
    """Surrogate Gap Guided Sharpness-Aware Minimization (GSAM): SAM's gradient minus a multiple of the orthogonal part.

    Update::

        g    = grad L(w)
        e    = rho_t * T^2 g / (||T g|| + 1e-12)      # SAM's perturbation (T as in SAM)
        g_p  = grad L(w + e)
        cos  = <g, g_p> / (||g|| ||g_p|| + 1e-12)
        g_perp = g - cos ||g|| g_p / (||g_p|| + 1e-12)  # part of g orthogonal to g_p
        w    <- base_step(w, g_p - alpha * g_perp)

    Descending ``g_p`` minimizes the perturbed loss; subtracting ``alpha *
    g_perp`` ascends the surrogate gap ``L(w + e) - L(w)`` along the direction
    orthogonal to ``g_p``, so the perturbed loss is not increased to first
    order. Follows ``perturb_weights`` and ``gradient_decompose`` of
    juntang-zhuang/GSAM. ``rho_t`` is constant unless ``rho_min`` is given; then
    it follows the base learning rate as in the paper's ImageNet runs (the
    reference ``ProportionScheduler``)::

        rho_t = rho_min + (rho - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)

    with ``lr_t`` the base optimizer's first-group learning rate at the step,
    clamped to ``[rho_min, rho]`` (the reference does not clamp). When ``rho_t
    = 0`` the step is the base step on ``g`` (both gradients coincide).

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import GSAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = GSAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, alpha=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan, Liu.
        "Surrogate Gap Minimization Improves Sharpness-Aware Training"
        (GSAM: Surrogate Gap Guided Sharpness-Aware Minimization), ICLR 2022.

    Args:
        base: the constructed optimizer that takes the step.
        rho: the perturbation radius (``rho_max`` when scheduled); usual 0.02-0.6.
        alpha: weight of the surrogate-gap ascent; usual 0.01-0.5 (0.1 default, ours).
        adaptive: ASAM's scaling of the perturbation (as in the reference).
        eta: offset inside ASAM's ``T``.
        rho_min: if given, ``rho_t`` follows the learning rate from ``rho_min`` to ``rho``.
        lr_max: the learning rate at which ``rho_t = rho`` (default: the base's current lr).
        lr_min: the learning rate at which ``rho_t = rho_min``.
        model: module whose BatchNorm running statistics the perturbed pass must not update.

    Raises:
        ConfigError: a negative radius or ``alpha``, ``rho_min > rho``, ``lr_max <= lr_min``
            with a schedule, or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.05,
        alpha: float = 0.1,
        *,
        adaptive: bool = False,
        eta: float = 0.0,
        rho_min: float | None = None,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        model: nn.Module | None = None,
    ):
        rho = check_float("rho", rho, 0.0)
        hyper: dict[str, Any] = {
            "rho": rho,
            "alpha": check_float("alpha", alpha, 0.0),
            "adaptive": check_bool("adaptive", adaptive),
            "eta": check_float("eta", eta, 0.0),
            "rho_min": None,
            "lr_max": None,
            "lr_min": check_float("lr_min", lr_min, 0.0),
        }
        if rho_min is not None:
            hyper["rho_min"] = check_float("rho_min", rho_min, 0.0, rho)
            if lr_max is None and isinstance(base, Optimizer):
                lr_max = float(base.param_groups[0]["lr"])
            lr_max = check_float("lr_max", lr_max, 0.0)
            if lr_max <= hyper["lr_min"]:
                raise ConfigError(
                    f"lr_max must be > lr_min for the rho schedule, got lr_max={lr_max!r}, lr_min={lr_min!r}"
                )
            hyper["lr_max"] = lr_max
        elif lr_max is not None:
            raise ConfigError("lr_max is only used with rho_min (the rho schedule); give rho_min too or drop lr_max")
        super().__init__(base, hyper, model=model)
        self.last_rho: float | None = None

    def current_rho(self) -> float:
        """``rho_t`` for the next step (from the base optimizer's current learning rate)."""
        d = self.hyperparameters
        if d["rho_min"] is None:
            return d["rho"]
        lr = float(self.param_groups[0]["lr"])
        value = d["rho_min"] + (d["rho"] - d["rho_min"]) * (lr - d["lr_min"]) / (d["lr_max"] - d["lr_min"])
        return min(max(value, d["rho_min"]), d["rho"])

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        rho = self.current_rho()
        self.last_rho = rho
        g = point.grad
        if rho == 0.0:
            return g
        g_p = point.grad_at(ascent_offsets(point.params, g, rho, adaptive=d["adaptive"], eta=d["eta"]))
        if g_p is None:
            return None
        g_perp = _orthogonal_part(g, g_p)
        return [a - b * d["alpha"] for a, b in zip(g_p, g_perp)]


# --------------------------------------------------------------------------- AMP


class AMP(PerturbationOptimizer):
    """Adversarial Model Perturbation (AMP): a few projected gradient-ascent steps on the weights, then descend.

    Update (``steps`` = N inner iterations, ``zeta`` = ``inner_lr``)::

        delta = 0;  g = grad L(w)
        repeat N times:
            delta <- delta + zeta * g
            delta <- delta * min(1, epsilon / (||delta|| + 1e-12))   # project onto the epsilon ball
            g     <- grad L(w + delta)
        w <- base_step(w, g)                                         # delta is removed first

    N + 1 forward/backward passes per step. ``norm="tensor"`` projects each
    parameter tensor onto its own ball, as the authors' code
    (hiyouga/AMP-Regularizer ``amp.py``) does; ``norm="global"`` uses one ball
    for all parameters, as the paper's ``max_{||Delta|| <= epsilon}`` is
    written. With N = 1 and a large ``epsilon`` the step is an unnormalized SAM step.

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import AMP
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = AMP(torch.optim.SGD(model.parameters(), lr=0.1), epsilon=0.5, inner_lr=1.0, inner_steps=1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Zheng, Zhang, Mao. "Regularizing Neural Networks via Adversarial Model
        Perturbation", CVPR 2021.

    Args:
        base: the constructed optimizer that takes the step.
        epsilon: radius of the perturbation ball; the authors' default 0.5 (usual 0.1-1).
        inner_lr: step size zeta of the inner ascent; authors' default 1.
        inner_steps: number N of inner ascent steps; authors' default 1 (0 gives the base optimizer).
        norm: ``"tensor"`` (one ball per parameter tensor, the authors' code) or ``"global"``.
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: a negative ``epsilon`` or ``inner_lr``, ``inner_steps < 0``, an unknown ``norm``,
            or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        epsilon: float = 0.5,
        inner_lr: float = 1.0,
        inner_steps: int = 1,
        *,
        norm: str = "tensor",
        model: nn.Module | None = None,
    ):
        hyper = {
            "epsilon": check_float("epsilon", epsilon, 0.0),
            "inner_lr": check_float("inner_lr", inner_lr, 0.0),
            "inner_steps": check_int("inner_steps", inner_steps, 0),
            "norm": check_choice("norm", norm, ("tensor", "global")),
        }
        super().__init__(base, hyper, model=model)

    def _project(self, delta: list[Tensor]) -> list[Tensor]:
        eps = self.hyperparameters["epsilon"]
        if self.hyperparameters["norm"] == "global":
            coef = torch.clamp(eps / (_global_norm(delta) + NORM_EPS), max=1.0)
            return [t * coef for t in delta]
        return [t * torch.clamp(eps / (torch.linalg.vector_norm(t) + NORM_EPS), max=1.0) for t in delta]

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g: list[Tensor] | None = point.grad
        delta = [torch.zeros_like(p) for p in point.params]
        for _ in range(d["inner_steps"]):
            delta = self._project([t + gi * d["inner_lr"] for t, gi in zip(delta, g)])
            g = point.grad_at(delta)
            if g is None:
                return None
        return g


# --------------------------------------------------------------------------- GAM


class GAM(PerturbationOptimizer):
    """Gradient norm Aware Minimization (GAM), the accelerated first-order form of the authors' code.

    The paper penalizes the first-order flatness ``rho * max_{||d|| <= rho}
    ||grad L(w + d)||``; its gradient needs ``grad ||grad L|| = H g / ||g||``,
    which the released code approximates by a finite difference of radius
    ``rho'`` (README of xxgege/GAM). The released update, reproduced here::

        g0 = grad L(w)
        g1 = grad L(w + rho' g0/||g0||)                  # (g1 - g0)/rho' ~ grad ||grad L||(w)
        h  = g1 - g0
        w_adv = w + rho h / ||h||                         # ascent on the gradient norm
        g2 = grad L(w_adv)
        g3 = grad L(w_adv + rho' g2/||g2||)
        u  = alpha g1 + (1 - alpha) g3                    # update direction
        m  = g0 + (1 - beta) g2                           # reference direction
        m_perp = m - cos(m, u) ||m|| u/||u||              # part of m orthogonal to u
        w  <- base_step(w, u - gamma m_perp)

    (every ``/||.||`` adds 1e-12 to the norm). Four forward/backward passes per
    step. The names map to the code as ``rho`` = ``grad_norm_rho``, ``rho_prime``
    = ``grad_rho``, ``alpha`` = ``grad_beta_1``, ``beta`` = ``grad_beta_0``,
    ``gamma`` = ``grad_gamma``, with the code's ``grad_beta_3 = 1 - alpha`` and
    ``grad_beta_2 = 1 - beta``; the defaults are the code's CIFAR-100/ResNet
    values. As in the code, ``m`` weights ``g0`` by 1, not by ``beta``. When
    ``rho = rho_prime = 0`` all four gradients coincide and the step is the
    base step on ``g0``.

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import GAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = GAM(torch.optim.SGD(model.parameters(), lr=0.1))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.last_evaluations
        4

    References:
        Zhang, Xu, Yu, Zou, Cui. "Gradient Norm Aware Minimization Seeks
        First-Order Flatness and Improves Generalization", CVPR 2023; code
        github.com/xxgege/GAM (``gam/gam.py``, ``main_cifar.py``).

    Args:
        base: the constructed optimizer that takes the step.
        rho: radius of the gradient-norm ascent (code default 0.2).
        rho_prime: radius of the finite-difference / SAM steps (0.02-0.04 in the code).
        alpha: weight of ``g1`` in the update, ``1 - alpha`` on ``g3`` (0.1-0.6 in the code).
        beta: ``1 - beta`` weights ``g2`` in the reference direction (0.1-0.5 in the code).
        gamma: weight of the orthogonal correction (0.03-0.05 in the code).
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: a negative radius or ``gamma``, ``alpha`` or ``beta`` outside [0, 1],
            or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.2,
        rho_prime: float = 0.02,
        alpha: float = 0.6,
        beta: float = 0.5,
        gamma: float = 0.03,
        *,
        model: nn.Module | None = None,
    ):
        hyper = {
            "rho": check_float("rho", rho, 0.0),
            "rho_prime": check_float("rho_prime", rho_prime, 0.0),
            "alpha": check_float("alpha", alpha, 0.0, 1.0),
            "beta": check_float("beta", beta, 0.0, 1.0),
            "gamma": check_float("gamma", gamma, 0.0),
        }
        super().__init__(base, hyper, model=model)

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g0 = point.grad
        if d["rho"] == 0.0 and d["rho_prime"] == 0.0:
            return g0
        params = point.params
        g1 = point.grad_at(ascent_offsets(params, g0, d["rho_prime"]))
        if g1 is None:
            return None
        adv = ascent_offsets(params, [a - b for a, b in zip(g1, g0)], d["rho"])
        g2 = point.grad_at(adv)
        if g2 is None:
            return None
        g3 = point.grad_at([a + b for a, b in zip(adv, ascent_offsets(params, g2, d["rho_prime"]))])
        if g3 is None:
            return None
        u = [a * d["alpha"] + b * (1.0 - d["alpha"]) for a, b in zip(g1, g3)]
        m = [a + b * abs(1.0 - d["beta"]) for a, b in zip(g0, g2)]
        m_perp = _orthogonal_part(m, u)
        return [a - b * d["gamma"] for a, b in zip(u, m_perp)]


# --------------------------------------------------------------------------- finite-difference GR


class FiniteDifferenceGR(PerturbationOptimizer):
    """Gradient regularization ``L + (gamma/2) ||grad L||^2`` with the Hessian-gradient product by finite differences.

    The exact gradient of the regularized objective is ``g + gamma H g`` with
    ``g = grad L(w)``; ``H g`` is replaced by a difference of gradients along
    ``g`` (no double backprop)::

        forward:   H g ~ (grad L(w + eps g) - g) / eps
                   step direction = (1 - gamma/eps) g + (gamma/eps) grad L(w + eps g)
        backward:  H g ~ (g - grad L(w - eps g)) / eps
                   step direction = (1 + gamma/eps) g - (gamma/eps) grad L(w - eps g)
        central:   H g ~ (grad L(w + eps g) - grad L(w - eps g)) / (2 eps)

    The forward and backward forms (two passes) are the paper's two
    finite-difference schemes and are first-order accurate: their error is ``(gamma eps / 2) D^3L[g, g] +
    O(gamma eps^2)``, with opposite signs. ``central`` (three passes, our
    addition) is second-order accurate. On a quadratic loss all three are
    exact. The forward form with ``eps = gamma`` is the gradient at ``w +
    gamma g``, an unnormalized SAM step. Computed as ``g + (gamma/eps) (g_+ - g)`` (same value, and exactly ``g``
    when ``gamma = 0``).

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import FiniteDifferenceGR
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = FiniteDifferenceGR(torch.optim.SGD(model.parameters(), lr=0.1), gamma=0.01, eps=0.01)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    References:
        Karakida, Takase, Hayase, Osawa. "Understanding Gradient Regularization
        in Deep Learning: Efficient Finite-Difference Computation and Implicit
        Bias", ICML 2023.

    Args:
        base: the constructed optimizer that takes the step.
        gamma: weight of the squared gradient norm; usual 1e-3-1e-1 (0 gives the base optimizer).
        eps: finite-difference step along ``g`` (not normalized); usual comparable to ``gamma``.
        variant: ``"forward"`` (w + eps g), ``"backward"`` (w - eps g) or ``"central"``.
        model: module whose BatchNorm running statistics the perturbed passes must not update.

    Raises:
        ConfigError: ``gamma < 0``, ``eps <= 0``, an unknown ``variant``, or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        gamma: float = 0.01,
        eps: float = 0.01,
        variant: str = "forward",
        *,
        model: nn.Module | None = None,
    ):
        hyper = {
            "gamma": check_float("gamma", gamma, 0.0),
            "eps": check_float("eps", eps, 0.0, low_open=True),
            "variant": check_choice("variant", variant, ("forward", "backward", "central")),
        }
        super().__init__(base, hyper, model=model)

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g, eps = point.grad, d["eps"]
        if d["variant"] == "forward":
            g_plus = point.grad_at([gi * eps for gi in g])
            if g_plus is None:
                return None
            c = d["gamma"] / eps
            return [gi + (gp - gi) * c for gi, gp in zip(g, g_plus)]
        if d["variant"] == "backward":
            g_minus = point.grad_at([gi * -eps for gi in g])
            if g_minus is None:
                return None
            c = d["gamma"] / eps
            return [gi + (gi - gm) * c for gi, gm in zip(g, g_minus)]
        g_plus = point.grad_at([gi * eps for gi in g])
        g_minus = point.grad_at([gi * -eps for gi in g]) if g_plus is not None else None
        if g_minus is None:
            return None
        c = d["gamma"] / (2.0 * eps)
        return [gi + (gp - gm) * c for gi, gp, gm in zip(g, g_plus, g_minus)]


# --------------------------------------------------------------------------- IGNITE


class IGNITE(PerturbationOptimizer):
    """IGNITE: training under a gradient-norm (sharpness) constraint, by primal-dual steps with a multiplier.

    Problem: ``min_w L(w)  s.t.  rho ||grad G(w)|| <= epsilon``, where ``rho
    ||grad G||`` is the first-order proxy of the sharpness ``max_{||d|| <= rho}
    G(w + d) - G(w)``. In the authors' code (as the catalog quotes it) ``G`` is
    the surrogate's batch-mean output (pass ``constraint_closure`` to
    ``step``); by default ``G = L``, the loss of the closure, as the catalog's
    second description has it. One step, with multiplier ``lambda >= 0``::

        g     = grad L(w);   c = grad G(w)   (= g when G = L)
        v     = c / (||c|| + 1e-12)
        hvp   = (grad G(w + r v) - c) / r            # ~ H_G c / ||c|| = grad ||grad G||
        w     <- base_step(w, g + lambda * rho * hvp)  # gradient of L + lambda (rho ||grad G|| - epsilon)
        lambda <- max(0, lambda + lr_lambda * (rho ||c|| - epsilon))

    The primal step uses the multiplier from before the step; the dual step
    uses ``||c||`` at the weights before the primal step. While ``lambda *
    rho = 0`` the finite-difference pass is skipped (one pass per step).

    Where this comes from: the reglab catalog, which quotes the authors' code
    (github.com/cuong-dm/IGNITE, ``gradient_ascent_IGNITE/trainers.py``) for
    the finite-difference gradient and the dual step ``lambda <- lambda +
    lr_lambda (rho ||grad G|| - epsilon)``, and a second catalog row for the
    projection ``max(0, .)``. The authors' code was not available to check, so
    this form is as verified as those notes: the clamp at 0, the order of the
    primal and dual steps, and every default value here are ours.

    Example:
        >>> import torch
        >>> from reglab.optim.perturbation import IGNITE
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = IGNITE(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, epsilon=0.01, lr_lambda=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(2):
        ...     loss = opt.step(closure)
        >>> opt.lambda_ > 0
        True

    References:
        Dao, Nguyen, Truong, Hoang. "Incorporating Surrogate Gradient Norm to
        Improve Offline Optimization Techniques", NeurIPS 2024.

    Args:
        base: the constructed optimizer that takes the step.
        rho: sharpness radius in the constraint ``rho ||grad G|| <= epsilon``.
        epsilon: the sharpness budget.
        lr_lambda: step size of the dual ascent on ``lambda``.
        fd_radius: radius ``r`` of the finite-difference Hessian-vector product.
        lambda_init: initial multiplier ``lambda_0 >= 0``.
        model: module whose BatchNorm running statistics the extra passes must not update.

    Raises:
        ConfigError: a negative ``rho``, ``epsilon``, ``lr_lambda`` or ``lambda_init``,
            ``fd_radius <= 0``, or a bad base optimizer / model.
    """

    def __init__(
        self,
        base: Optimizer,
        rho: float = 0.05,
        epsilon: float = 0.01,
        lr_lambda: float = 0.01,
        fd_radius: float = 0.01,
        lambda_init: float = 0.0,
        *,
        model: nn.Module | None = None,
    ):
        hyper = {
            "rho": check_float("rho", rho, 0.0),
            "epsilon": check_float("epsilon", epsilon, 0.0),
            "lr_lambda": check_float("lr_lambda", lr_lambda, 0.0),
            "fd_radius": check_float("fd_radius", fd_radius, 0.0, low_open=True),
        }
        super().__init__(base, hyper, model=model)
        self.lambda_ = check_float("lambda_init", lambda_init, 0.0)
        self.last_violation: float | None = None
        self._constraint_closure: Closure | None = None
        self._pending_violation: float | None = None

    def step(self, closure: Closure | None = None, constraint_closure: Closure | None = None) -> Any:  # type: ignore[override]
        """One primal-dual step.

        Args:
            closure: zeroes the gradients, computes the loss ``L``, calls backward, returns it.
            constraint_closure: the same for the constrained function ``G``
                (e.g. the mean surrogate output); None means ``G = L``.

        Returns:
            The loss of the first ``closure`` call.

        Raises:
            ConfigError: no closure was given.
        """
        self._constraint_closure = constraint_closure
        self._pending_violation = None
        try:
            return super().step(closure)
        finally:
            self._constraint_closure = None

    def _direction(self, point: Perturbation) -> list[Tensor] | None:
        d = self.hyperparameters
        g = point.grad
        c = g if self._constraint_closure is None else point.grad_at(None, self._constraint_closure)
        if c is None:
            return None
        norm = _global_norm(c)
        self._pending_violation = d["rho"] * float(norm) - d["epsilon"]
        weight = self.lambda_ * d["rho"]
        if weight == 0.0:
            return g
        r = d["fd_radius"]
        v = [ci * (r / (norm + NORM_EPS)) for ci in c]
        c_plus = point.grad_at(v, self._constraint_closure)
        if c_plus is None:
            return None
        coef = weight / r
        return [gi + (cp - ci) * coef for gi, cp, ci in zip(g, c_plus, c)]

    def _after_step(self) -> None:
        if self._pending_violation is None:
            return
        self.last_violation = self._pending_violation
        self.lambda_ = max(0.0, self.lambda_ + self.hyperparameters["lr_lambda"] * self._pending_violation)

    def _extra_state(self) -> dict[str, Any]:
        return {"lambda": self.lambda_, "last_violation": self.last_violation}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.lambda_ = float(state["lambda"])
        self.last_violation = state.get("last_violation")


# --------------------------------------------------------------------------- registry factories

Base = str | Mapping[str, Any]


@REGISTRY.register("sam")
def sam(
    params: Iterable[Any],
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.0,
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> SAM:
    """Sharpness-Aware Minimization (Foret et al., 2021) around a base optimizer; adaptive=True gives ASAM."""
    return SAM(build_base(params, base), rho=rho, adaptive=adaptive, eta=eta, model=model)


@REGISTRY.register("asam")
def asam(
    params: Iterable[Any],
    rho: float = 0.5,
    eta: float = 0.01,
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> SAM:
    """Adaptive SAM (Kwon et al., 2021): SAM with T = |w| + eta; defaults rho=0.5, eta=0.01 of SamsungLabs/ASAM."""
    return SAM(build_base(params, base), rho=rho, adaptive=True, eta=eta, model=model)


@REGISTRY.register("gsam")
def gsam(
    params: Iterable[Any],
    rho: float = 0.05,
    alpha: float = 0.1,
    adaptive: bool = False,
    rho_min: float | None = None,
    lr_max: float | None = None,
    lr_min: float = 0.0,
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> GSAM:
    """Surrogate-gap guided SAM (Zhuang et al., 2022): SAM gradient minus alpha times the orthogonal part."""
    return GSAM(
        build_base(params, base),
        rho=rho,
        alpha=alpha,
        adaptive=adaptive,
        rho_min=rho_min,
        lr_max=lr_max,
        lr_min=lr_min,
        model=model,
    )


@REGISTRY.register("amp")
def amp(
    params: Iterable[Any],
    epsilon: float = 0.5,
    inner_lr: float = 1.0,
    inner_steps: int = 1,
    norm: str = "tensor",
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> AMP:
    """Adversarial model perturbation (Zheng et al., 2021): N projected ascent steps on the weights, then descend."""
    return AMP(
        build_base(params, base), epsilon=epsilon, inner_lr=inner_lr, inner_steps=inner_steps, norm=norm, model=model
    )


@REGISTRY.register("gam")
def gam(
    params: Iterable[Any],
    rho: float = 0.2,
    rho_prime: float = 0.02,
    alpha: float = 0.6,
    beta: float = 0.5,
    gamma: float = 0.03,
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> GAM:
    """Gradient norm aware minimization (Zhang et al., 2023), the accelerated form of the authors' code."""
    return GAM(build_base(params, base), rho=rho, rho_prime=rho_prime, alpha=alpha, beta=beta, gamma=gamma, model=model)


@REGISTRY.register("fd_gr")
def fd_gr(
    params: Iterable[Any],
    gamma: float = 0.01,
    eps: float = 0.01,
    variant: str = "forward",
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> FiniteDifferenceGR:
    """Gradient regularization L + (gamma/2)||grad L||^2 by finite differences (Karakida et al., 2023)."""
    return FiniteDifferenceGR(build_base(params, base), gamma=gamma, eps=eps, variant=variant, model=model)


@REGISTRY.register("ignite")
def ignite(
    params: Iterable[Any],
    rho: float = 0.05,
    epsilon: float = 0.01,
    lr_lambda: float = 0.01,
    fd_radius: float = 0.01,
    lambda_init: float = 0.0,
    base: Base = "sgd",
    model: nn.Module | None = None,
) -> IGNITE:
    """IGNITE (Dao et al., 2024): loss under the constraint rho*||grad|| <= epsilon, by primal-dual steps."""
    return IGNITE(
        build_base(params, base),
        rho=rho,
        epsilon=epsilon,
        lr_lambda=lr_lambda,
        fd_radius=fd_radius,
        lambda_init=lambda_init,
        model=model,
    )


__all__ = [
    "AMP",
    "GAM",
    "GSAM",
    "IGNITE",
    "NORM_EPS",
    "SAM",
    "FiniteDifferenceGR",
    "Perturbation",
    "PerturbationOptimizer",
    "ascent_offsets",
]
