"""Continual-learning penalties: elastic weight consolidation (EWC) and online EWC.

A continual-learning penalty has state that is set at task boundaries: after
training on a task, call ``penalty.consolidate(model, loss_fn, data)`` (or
:func:`consolidate_all` on a sum of penalties) with that task's data, then
train the next task with the penalty in the objective::

    ewc = EWC(100.0)
    train(model, task_a, penalty=ewc)          # the penalty is exactly 0 here
    ewc.consolidate(model, loss_fn, task_a_data)
    train(model, task_b, penalty=ewc)          # now (lambda/2) sum F (theta - theta*)^2

:func:`fisher_diagonal` computes the diagonal Fisher information on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from reglab.core import ConfigError, Penalty, ReglabError, ShapeError, StepContext
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.linalg.functional import on_model_device
from reglab.penalties.norms import IdentityCache, elastic_distance, selected_parameters, selected_tensors
from reglab.penalties.registry import REGISTRY

FISHER_KINDS = ("exact", "sample", "empirical")

# elements of per-example gradients held at once on the vectorized path
_CHUNK_ELEMENTS = 1 << 22


def _is_batch(obj: object) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and all(isinstance(t, Tensor) for t in obj[:2])


def _gather(data: Any, n_samples: int | None) -> tuple[Tensor, Tensor]:
    """The first ``n_samples`` examples of ``data`` (a batch ``(x, y[, idx])`` or an iterable of them)."""
    if _is_batch(data):
        batches: Iterable[Any] = [data]
    elif isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise ConfigError(
            f"data must be an (inputs, targets) pair of tensors or an iterable of such batches (a DataLoader), "
            f"got {type(data).__name__}"
        )
    else:
        batches = data
    xs, ys, count = [], [], 0
    for batch in batches:
        if not _is_batch(batch):
            raise ConfigError(
                f"each batch of data must be (inputs, targets) or (inputs, targets, indices), got {batch!r:.80}"
            )
        xs.append(batch[0])
        ys.append(batch[1])
        count += batch[0].shape[0]
        if n_samples is not None and count >= n_samples:
            break
    if not xs or count == 0:
        raise ConfigError("data holds no examples; pass the previous task's (inputs, targets)")
    x, y = torch.cat(xs), torch.cat(ys)
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"data has {x.shape[0]} inputs but {y.shape[0]} targets")
    if n_samples is not None:
        x, y = x[:n_samples], y[:n_samples]
    return x, y


def _logits(model: nn.Module, x: Tensor, fisher: str) -> Tensor:
    with torch.no_grad():
        out = model(x)
    if out.ndim != 2:
        raise ShapeError(
            f"fisher={fisher!r} needs class logits of shape (N, K) from the model, got {tuple(out.shape)}; "
            "for regression or other likelihoods use fisher='empirical' with the task's loss_fn"
        )
    return out


def _vectorized(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    fisher: str,
    loss_fn: Callable[..., Tensor] | None,
    probs: Tensor | None,
) -> dict[str, Tensor]:
    """Sum over examples of the squared per-example gradients (weighted by probs for "exact"), by torch.func."""

    def out1(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),))

    def nll(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(out1(p, xi), yi.unsqueeze(0))  # -log p(yi | xi); indexing by yi cannot be vmapped

    def emp(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(out1(p, xi), yi.unsqueeze(0))

    def logp(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return F.log_softmax(out1(p, xi), dim=-1)[0]

    n_params = sum(p.numel() for p in params.values())
    k = probs.shape[1] if fisher == "exact" else 1
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_params * k))
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    per_example = vmap(grad(emp if fisher == "empirical" else nll), in_dims=(None, 0, 0))
    jac = vmap(jacrev(logp), in_dims=(None, 0))
    for start in range(0, x.shape[0], chunk):
        xc, yc = x[start : start + chunk], y[start : start + chunk]
        if fisher == "exact":
            w = probs[start : start + chunk]
            for n, j in jac(params, xc).items():  # j: (n, K, *shape)
                acc[n] += (w.reshape(*w.shape, *([1] * (j.ndim - 2))) * j.pow(2)).sum(dim=(0, 1))
        else:
            for n, g in per_example(params, xc, yc).items():
                acc[n] += g.pow(2).sum(dim=0)
    return acc


def _looped(
    model: nn.Module,
    named: list[tuple[str, Tensor]],
    x: Tensor,
    y: Tensor,
    fisher: str,
    loss_fn: Callable[..., Tensor] | None,
    probs: Tensor | None,
) -> dict[str, Tensor]:
    """The same sum as :func:`_vectorized`, one example (and one label) at a time with autograd."""
    params = [p for _, p in named]
    acc = [torch.zeros_like(p) for p in params]

    def add(value: Tensor, scale: float | Tensor = 1.0, retain: bool = False) -> None:
        grads = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
        for a, g in zip(acc, grads):
            if g is not None:
                a.add_(scale * g.pow(2))

    for i in range(x.shape[0]):
        out = model(x[i : i + 1])
        if fisher == "empirical":
            add(loss_fn(out, y[i : i + 1]))
        else:
            lp = F.log_softmax(out, dim=-1)[0]
            if fisher == "sample":
                add(-lp[y[i]])
            else:
                for c in range(lp.shape[0]):
                    add(-lp[c], probs[i, c], retain=c + 1 < lp.shape[0])
    return {n: a for (n, _), a in zip(named, acc)}


def fisher_diagonal(
    model: nn.Module,
    data: Any,
    *,
    fisher: str = "exact",
    loss_fn: Callable[..., Tensor] | None = None,
    n_samples: int | None = None,
    params: str = "all",
    generator: torch.Generator | None = None,
    vectorize: bool = True,
) -> dict[str, Tensor]:
    """Diagonal Fisher information F_i = mean_n E_y[(d log p(y | x_n) / d theta_i)^2] of the model on ``data``.

    Three ways of choosing y, as named in "On the Computation of the Fisher
    Information in Continual Learning" (van de Ven, 2025):

    - ``"exact"``: the expectation over the model's predictive distribution,
      sum_c p(c | x_n) (d log p(c | x_n) / d theta)^2: the true Fisher, exactly
      (K gradients per example). Needs class logits.
    - ``"sample"``: one label y_n ~ p(. | x_n) per example (a one-sample Monte
      Carlo estimate of the true Fisher; ``generator`` makes it reproducible).
      Needs class logits.
    - ``"empirical"``: the data's own label, (d loss_fn(f(x_n), y_n) / d theta)^2,
      the "empirical Fisher"; works for any ``loss_fn`` that is a negative
      log-likelihood averaged over the batch (cross-entropy, MSE, ...).

    Gradients are per example (never of a batch mean), squared, then averaged
    over the n examples used. The model is put in ``eval()`` mode for the
    computation (dropout off, batch-norm running statistics) and every
    module's mode is restored afterwards; ``.grad`` fields are not touched.
    Per-example gradients come from ``torch.func`` (``vmap`` of ``grad`` or
    ``jacrev`` over ``functional_call``); when the model or loss cannot be
    vmapped (data-dependent Python control flow, e.g. a loss that validates
    its targets with ``int(targets.max())``, as reglab's losses do), a loop
    over examples with ``torch.autograd.grad`` gives the same numbers, slower.

    Example:
        >>> fisher = fisher_diagonal(model, (x_a, y_a), fisher="empirical", loss_fn=CrossEntropy())

    Args:
        model: the network; for "exact" and "sample", ``model(x)`` are logits (N, K).
        data: ``(inputs, targets)`` (or ``(inputs, targets, indices)``), or an iterable of such batches.
        fisher: "exact", "sample" or "empirical".
        loss_fn: the per-batch mean loss ``loss_fn(outputs, targets)``, used by "empirical" only.
        n_samples: use the first n examples of ``data`` (all when None or when data has fewer).
        params: "all" or "weights" (tensors with ndim >= 2), as in :class:`~reglab.penalties.L2`.
        generator: random generator for the sampled labels of "sample".
        vectorize: try ``torch.func.vmap`` first (else loop over examples).

    Returns:
        ``{parameter name: F}`` with each F shaped like its parameter.

    Raises:
        ConfigError: a bad argument, no examples, "empirical" without ``loss_fn``, no trainable parameter.
        ShapeError: "exact"/"sample" on outputs that are not (N, K) logits; inputs and targets of different lengths.
    """
    fisher = check_choice("fisher", fisher, FISHER_KINDS)
    params = check_choice("params", params, ("all", "weights"))
    if n_samples is not None:
        n_samples = check_int("n_samples", n_samples, minimum=1)
    if fisher == "empirical" and not callable(loss_fn):
        raise ConfigError("fisher='empirical' needs loss_fn (the data loss, loss_fn(outputs, targets))")
    named = list(selected_parameters(model, params))
    if not named:
        raise ConfigError(f"the model has no trainable parameters in the set params={params!r}")
    x, y = on_model_device(model, *_gather(data, n_samples))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        probs = None
        if fisher in ("exact", "sample"):
            probs = F.softmax(_logits(model, x, fisher), dim=-1)
            if fisher == "sample":
                # drawn where the generator lives (a CPU generator with a CUDA model), then moved to the model
                draw_on = generator.device if generator is not None else probs.device
                y = torch.multinomial(probs.to(draw_on), 1, generator=generator).squeeze(1).to(probs.device)
        acc = None
        if vectorize:
            try:
                detached = {n: p.detach() for n, p in named}
                acc = _vectorized(model, detached, x, y, fisher, loss_fn, probs)
            except ReglabError:
                raise
            except Exception:  # vmap cannot handle every model or loss: loop instead
                acc = None
        if acc is None:
            acc = _looped(model, named, x, y, fisher, loss_fn, probs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return {n: a.detach() / x.shape[0] for n, a in acc.items()}


def _key(kind: str, task: int, param_name: str) -> str:
    return f"{kind}{task}__{param_name.replace('.', '__')}"


_STATE_KEY = re.compile(r"^(theta|fisher)\d+__")


@REGISTRY.register("ewc")
class EWC(Penalty):
    """Elastic weight consolidation: (lambda/2) sum_t sum_i F_{t,i} (theta_i - theta*_{t,i})^2.

    .. math::
        R(\\theta) = \\frac{\\lambda}{2} \\sum_{t} \\sum_i F_{t,i} (\\theta_i - \\theta^*_{t,i})^2

    theta*_t are the parameters when task t ended and F_t the diagonal Fisher
    information on that task's data, both taken by :meth:`consolidate`
    ("Overcoming catastrophic forgetting in neural networks", Kirkpatrick et
    al., PNAS 2017: one quadratic term per past task). Before the first
    ``consolidate`` the penalty is exactly 0.

    Online EWC (``online=True``; "Progress & Compress: A scalable framework for
    continual learning", Schwarz et al., ICML 2018) keeps one running term:
    at each consolidation F* <- gamma * F* + F_t and theta* <- theta, and the
    penalty is (lambda/2) sum_i gamma * F*_i (theta_i - theta*_i)^2 (P&C's
    ||theta - theta*||^2 weighted by gamma F*; with gamma = 1 the Fishers
    simply add). The placement of gamma was checked against van de Ven's
    reference implementation (GMvandeVen/continual-learning,
    ``models/cl/continual_learner.py``, ``estimate_fisher``/``ewc_loss``).

    Which Fisher (``fisher``, see :func:`fisher_diagonal`): the EWC paper
    defines F as the Fisher information of the model's predictive
    distribution but gives no code; "On the Computation of the Fisher
    Information in Continual Learning" (van de Ven, 2025) compares the
    variants and finds the exact expectation over labels ("exact", our
    default) best, the one-label Monte Carlo estimate ("sample") and the
    empirical Fisher with the true labels ("empirical", the common
    implementation) worse. "exact" costs K backward passes per example; use
    "sample" or "empirical" (with ``n_samples``) when K is large, and
    "empirical" for non-classification losses. The Fisher is averaged over
    examples, as in that comparison.

    Usual ranges: lambda is large because F of a fitted model is small, often
    1 to 1e4 (tune on a log grid); gamma 0.9 to 1. State lives in buffers
    ``theta<t>__<param>``, ``fisher<t>__<param>`` and ``num_tasks``, so
    ``state_dict()`` round-trips, also into a fresh instance.

    Example:
        >>> ewc = EWC(100.0, online=True, gamma=0.95)
        >>> ewc.consolidate(model, CrossEntropy(), (x_task_a, y_task_a), n_samples=500)

    Args:
        weight: lambda, >= 0.
        online: one running term (online EWC) instead of one term per task.
        gamma: the online decay, in (0, 1] (ignored when ``online=False``).
        fisher: "exact", "sample" or "empirical".
        params: "all" or "weights" (tensors with ndim >= 2).

    Raises:
        ConfigError: a bad argument; the model's parameters do not match the consolidated ones.
    """

    def __init__(
        self,
        weight: float,
        *,
        online: bool = False,
        gamma: float = 1.0,
        fisher: str = "exact",
        params: str = "all",
        name: str | None = None,
    ):
        super().__init__(weight, name=name)
        check_bool("online", online)
        self.online = online
        self.gamma = check_float("gamma", gamma, 0.0, 1.0, low_open=True)
        self.fisher = check_choice("fisher", fisher, FISHER_KINDS)
        self.params = check_choice("params", params, ("all", "weights"))
        self.register_buffer("num_tasks", torch.zeros((), dtype=torch.long))
        self._state = IdentityCache()

    @property
    def consolidated(self) -> bool:
        """Whether :meth:`consolidate` has been called (the penalty is 0 until then)."""
        return int(self.num_tasks) > 0

    @torch.no_grad()
    def consolidate(
        self,
        model: nn.Module,
        loss_fn: Callable[..., Tensor] | None,
        data: Any,
        n_samples: int | None = None,
        *,
        generator: torch.Generator | None = None,
        vectorize: bool = True,
    ) -> dict[str, Tensor]:
        """End a task: store theta* = the current parameters and the Fisher on ``data``.

        Args:
            model: the model, after training on the task that ends.
            loss_fn: the task's loss, used by ``fisher="empirical"`` (may be None otherwise).
            data: the task's ``(inputs, targets)`` or an iterable of batches.
            n_samples: use the first n examples (all when None).
            generator: random generator for ``fisher="sample"``.
            vectorize: compute per-example gradients with ``torch.func.vmap`` when possible.

        Returns:
            This task's Fisher ``{parameter name: F_t}``.
        """
        with torch.enable_grad():
            fisher = fisher_diagonal(
                model,
                data,
                fisher=self.fisher,
                loss_fn=loss_fn,
                n_samples=n_samples,
                params=self.params,
                generator=generator,
                vectorize=vectorize,
            )
        task = 0 if self.online else int(self.num_tasks)
        for pname, p in selected_parameters(model, self.params):
            f_new = fisher[pname]
            fkey = _key("fisher", task, pname)
            old = getattr(self, fkey, None) if self.online and self.consolidated else None
            if old is not None:
                if old.shape != f_new.shape:
                    raise ConfigError(
                        f"{self.name}: parameter {pname!r} has shape {tuple(f_new.shape)} but its stored Fisher "
                        f"{tuple(old.shape)}; online EWC needs the same model across tasks"
                    )
                f_new = self.gamma * old.to(f_new) + f_new
            self.register_buffer(fkey, f_new.clone())
            self.register_buffer(_key("theta", task, pname), p.detach().clone())
        self.num_tasks += 1
        return fisher

    def compute(self, ctx: StepContext) -> Tensor:
        params = selected_tensors(ctx.model, self.params)
        # rebuilt when consolidate, reset or loading registers buffers, or the parameters change
        tasks = self._state.get([*params, *self._buffers.values()], lambda: self._match(ctx.model))
        if not tasks or not params:
            return params[0].new_zeros(()) if params else torch.zeros(())
        if any(t.shape != p.shape for thetas, _ in tasks for t, p in zip(thetas, params)):
            self._match(ctx.model)  # a parameter changed shape in place: raises, naming it
        total = None
        for thetas, fishers in tasks:
            thetas = [t if t.dtype == p.dtype and t.device == p.device else t.to(p) for t, p in zip(thetas, params)]
            fishers = [f if f.dtype == p.dtype and f.device == p.device else f.to(p) for f, p in zip(fishers, params)]
            term = elastic_distance(params, l2=self.gamma if self.online else 1.0, anchors=thetas, weights=fishers)
            total = term if total is None else total + term
        return total

    def _match(self, model: nn.Module) -> list[tuple[list[Tensor], list[Tensor]]]:
        """``(theta*, F)`` of each task for the selected parameters, in order (none before the first consolidate);
        ConfigError naming a parameter that has none."""
        if not self.consolidated:
            return []
        named = list(selected_parameters(model, self.params))
        tasks = []
        for task in [0] if self.online else range(int(self.num_tasks)):
            thetas, fishers = [], []
            for pname, p in named:
                theta = self._buffers.get(_key("theta", task, pname))
                fisher = self._buffers.get(_key("fisher", task, pname))
                if theta is None or fisher is None or theta.shape != p.shape:
                    raise ConfigError(
                        f"{self.name}: parameter {pname!r} {tuple(p.shape)} was not consolidated with this shape "
                        f"(task {task}); call consolidate(model, ...) on the model being trained"
                    )
                thetas.append(theta)
                fishers.append(fisher)
            tasks.append((thetas, fishers))
        return tasks

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # create the per-task buffers a fresh instance does not have yet, so that loading round-trips
        for key, value in state_dict.items():
            if key.startswith(prefix):
                local = key[len(prefix) :]
                if "." not in local and _STATE_KEY.match(local) and not hasattr(self, local):
                    self.register_buffer(local, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        mode = f"online, gamma={self.gamma:g}" if self.online else "offline"
        return f"weight={self.weight:g}, {mode}, fisher={self.fisher}, tasks={int(self.num_tasks)}"


def consolidate_all(
    penalty: Penalty | None, model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any, **kwargs: Any
) -> int:
    """Call ``consolidate(model, loss_fn, data, **kwargs)`` on every term of ``penalty`` that has it.

    A term that occurs twice in a sum (``ewc + ewc``) is consolidated once.
    Terms without ``consolidate`` (L2, ...) are left alone.

    Example:
        >>> penalty = EWC(100.0) + L2(1e-4)
        >>> consolidate_all(penalty, model, CrossEntropy(), (x_task_a, y_task_a))   # -> 1

    Returns:
        The number of terms consolidated.
    """
    if penalty is None:
        return 0
    if not isinstance(penalty, Penalty):
        raise ConfigError(f"penalty must be a reglab Penalty (or None), got {type(penalty).__name__}")
    done: set[int] = set()
    for term in penalty.terms():
        hook = getattr(term, "consolidate", None)
        if id(term) in done or not callable(hook):
            continue
        hook(model, loss_fn, data, **kwargs)
        done.add(id(term))
    return len(done)
