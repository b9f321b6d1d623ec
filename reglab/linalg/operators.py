"""Linear operators: matrices known only through their products with vectors.

:class:`LinearOperator` is the interface every estimator in ``reglab.linalg``
works on (``matvec``, ``shape``, ``dtype``, a product counter, ``to_dense``
for small cases). :class:`HessianOperator` is the curvature of a model's loss
over a whole dataset, in one of three flavours:

- ``"hessian"``: H = ∇²_θ L(θ), products by reverse-over-reverse
  differentiation, H v = ∇_θ (∇_θ L · v) (Pearlmutter 1994), on a kept graph of
  ∇L so that a product is one backward pass;
- ``"ggn"``: the generalized Gauss-Newton G = Σ_b (n_b/N) J_bᵀ H_out,b J_b, with
  J_b the Jacobian of the outputs and H_out,b the Hessian of the batch loss in
  the outputs (equal to the Fisher for CE and MSE; positive semi-definite for
  convex losses) — Schraudolph 2002, "Fast Curvature Matrix-Vector Products";
- ``"empirical_fisher"``: F = (1/N) Σ_i g_i g_iᵀ with g_i the per-example
  gradient, products via one ``jvp`` and one ``vjp`` of the per-example losses
  (no per-example gradient is stored).

L is the full-data loss (1/N) Σ_i ℓ_i: ``loss_fn`` must average over its batch
(``reduction="mean"``) and batch b is weighted by n_b / N, so the products are
exact for the whole of ``data`` whatever the batching or shuffling.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp

from reglab.core.errors import ConfigError, ShapeError
from reglab.core.validation import check_int
from reglab.linalg.functional import FunctionalModel, Params, batches, total_size

CURVATURES = ("hessian", "ggn", "empirical_fisher")


class LinearOperator(abc.ABC):
    """A square symmetric n×n matrix available through ``matvec``.

    Subclasses implement :meth:`_matvec`; :meth:`matvec` validates the shape
    and counts products in :attr:`n_matvec`.
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.shape = (size, size)
        self.dtype = dtype
        self.device = torch.device(device)
        self.n_matvec = 0

    @abc.abstractmethod
    def _matvec(self, v: Tensor) -> Tensor:
        """A v for a flat vector v of length n."""

    def matvec(self, v: Tensor) -> Tensor:
        """The product A v (``v`` of shape ``(n,)``); increments :attr:`n_matvec`."""
        if v.shape != (self.shape[0],):
            raise ShapeError(f"matvec expects a vector of shape ({self.shape[0]},), got {tuple(v.shape)}")
        self.n_matvec += 1
        return self._matvec(v.to(device=self.device, dtype=self.dtype))

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.ndim == 2:
            return torch.stack([self.matvec(c) for c in v.T], dim=1)
        return self.matvec(v)

    def to_dense(self, max_size: int = 20_000) -> Tensor:
        """The full matrix, column by column (n products). For small operators only.

        Raises:
            ConfigError: n exceeds ``max_size``.
        """
        n = self.shape[0]
        if n > max_size:
            raise ConfigError(f"to_dense would need {n} products for n = {n} > max_size = {max_size}")
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


class MatrixOperator(LinearOperator):
    """A dense symmetric matrix as a :class:`LinearOperator` (tests, small problems)."""

    def __init__(self, matrix: Tensor):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ShapeError(f"matrix must be square, got {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v


class HessianOperator(LinearOperator):
    """Curvature of ``loss_fn`` of ``model`` over ``data`` as a linear operator on flat parameter vectors.

    Args:
        model: any ``nn.Module``; evaluated through ``functional_call`` in eval
            mode on copies of its parameters and buffers, so it is not changed.
        loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
        data: an ``(inputs, targets)`` pair or an iterable of batches (a
            ``DataLoader``); products are exact over all of it, batches
            weighted by size.
        params: the parameters the curvature is taken over: ``None`` (all
            trainable), a regex on names, a list of names, a module or modules
            (per-layer curvature: ``params=model.fc2`` or ``params=r"^fc2\\."``).
        curvature: ``"hessian"``, ``"ggn"`` or ``"empirical_fisher"``.
        cache_graphs: keep each batch's autograd graph of the gradient (Hessian),
            of the output (GGN) or of the per-example losses (Fisher) between
            products, so a product costs one backward pass instead of a forward
            and two backward passes. Memory grows with the data (activations of
            every batch); turn it off for data that does not fit twice in memory.

    Vectors are in the model's dtype (float64 models give float64 products)
    and ordered as ``named_parameters``; :meth:`unflatten` maps one back to
    ``{name: tensor}``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
        >>> H = HessianOperator(net, torch.nn.functional.cross_entropy, (x, y))
        >>> H.shape
        (26, 26)
        >>> dense = H.to_dense()
        >>> bool(torch.allclose(dense, dense.T))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: Any,
        params: Any = None,
        curvature: str = "hessian",
        cache_graphs: bool = True,
    ):
        if curvature not in CURVATURES:
            raise ConfigError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        if not callable(loss_fn):
            raise ConfigError(f"loss_fn must be callable (outputs, targets) -> scalar, got {type(loss_fn).__name__}")
        self.fn = FunctionalModel(model, loss_fn, params)
        super().__init__(self.fn.numel, self.fn.dtype, self.fn.device)
        self.curvature = curvature
        self.batches = [(self.fn.inputs(x), y.to(self.fn.device)) for x, y in batches(data)]
        self.num_examples = total_size(self.batches)
        self.n_grad = 0
        self._variables = {n: p.detach().clone().requires_grad_() for n, p in self.fn.params.items()}
        self._graphs: dict[int, Any] | None = {} if cache_graphs else None
        self._product = {
            "hessian": self._hessian_product,
            "ggn": self._ggn_product,
            "empirical_fisher": self._fisher_product,
        }[curvature]

    @property
    def names(self) -> list[str]:
        """The parameter names the operator acts on, in vector order."""
        return self.fn.names

    def unflatten(self, vector: Tensor) -> Params:
        """A flat vector as ``{parameter name: tensor}``."""
        return self.fn.unflatten(vector)

    def point(self) -> Tensor:
        """The parameters θ at which the curvature is taken, flat."""
        return self.fn.point()

    def subsample(self, n_examples: int, generator: torch.Generator) -> HessianOperator:
        """The same curvature over ``n_examples`` of the examples drawn without replacement, as one batch.

        A cheaper operator whose eigenvectors approximate this one's (a warm start for :func:`lanczos`):
        same model, loss, parameters and curvature kind, products costing about n_examples / N of this
        one's. ``generator`` draws the examples (a CPU generator; the global RNG is not used).
        """
        check_int("n_examples", n_examples, 1, self.num_examples)
        chosen = torch.randperm(self.num_examples, generator=generator)[:n_examples].sort().values
        xs, ys, offset = [], [], 0
        for x, y in self.batches:
            local = chosen[(chosen >= offset) & (chosen < offset + len(x))] - offset
            xs.append(x[local.to(x.device)])
            ys.append(y[local.to(y.device)])
            offset += len(x)
        return HessianOperator(
            self.fn.model,
            self.fn.loss_fn,
            (torch.cat(xs), torch.cat(ys)),
            params=self.names,
            curvature=self.curvature,
            cache_graphs=self._graphs is not None,
        )

    def _weights(self) -> list[float]:
        return [len(x) / self.num_examples for x, _ in self.batches]

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """The full-data loss L(θ) and its gradient ∇L (flat), one gradient per batch (counted in ``n_grad``)."""
        total, g = 0.0, torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for w, (x, y) in zip(self._weights(), self.batches, strict=True):
            loss, gb = self.fn.gradient(x, y)
            total += w * float(loss)
            g += w * gb
        self.n_grad += 1
        return total, g

    def _matvec(self, v: Tensor) -> Tensor:
        tangent = self.fn.unflatten(v)
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for i, (w, (x, y)) in enumerate(zip(self._weights(), self.batches, strict=True)):
                out += w * self._product(i, tangent, x, y)
        return out

    def _graph(self, i: int, build: Callable[[Tensor, Tensor], Any]) -> Any:
        """The autograd graph of batch ``i`` (kept between products when ``cache_graphs``)."""
        if self._graphs is not None and i in self._graphs:
            return self._graphs[i]
        graph = build(*self.batches[i])
        if self._graphs is not None:
            self._graphs[i] = graph
        return graph

    def _leaves(self) -> list[Tensor]:
        return list(self._variables.values())

    def _pull(self, outputs: Any, cotangents: Any) -> Tensor:
        """Σ cotangent · ∂outputs/∂θ as a flat vector, zeros for parameters the outputs do not depend on."""
        grads = torch.autograd.grad(outputs, self._leaves(), cotangents, retain_graph=True, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(self._leaves(), grads, strict=True)]
        )

    def _hessian_product(self, i: int, tangent: Params, x: Tensor, y: Tensor) -> Tensor:
        # reverse-over-reverse: H v = ∂(∇L · v)/∂θ on the kept graph of ∇L
        def build(x: Tensor, y: Tensor) -> list[Tensor]:
            loss = self.fn.loss(self._variables, x, y)
            gradient = torch.autograd.grad(loss, self._leaves(), create_graph=True, allow_unused=True)
            # parameters the loss does not use (None) or uses linearly (no graph) have zero curvature rows
            return [
                (g, name) for g, name in zip(gradient, self.fn.names, strict=True) if g is not None and g.requires_grad
            ]

        live = self._graph(i, build)
        if not live:  # the loss is linear in every selected parameter
            return torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        return self._pull([g for g, _ in live], [tangent[name] for _, name in live])

    def _ggn_product(self, i: int, tangent: Params, x: Tensor, y: Tensor) -> Tensor:
        def build(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            out = self.fn.output(self._variables, x)
            z = out.detach().requires_grad_()
            dz = torch.autograd.grad(self.fn.loss_fn(z, y), z, create_graph=True)[0]
            return out, z, dz

        out, z, dz = self._graph(i, build)
        j_v = jvp(lambda p: self.fn.output(p, x), (self.fn.params,), (tangent,))[1]
        h_j_v = torch.autograd.grad(dz, z, j_v, retain_graph=True, allow_unused=True)[0]
        if h_j_v is None:  # a loss linear in the outputs has no curvature
            return torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        return self._pull(out, h_j_v)

    def _fisher_product(self, i: int, tangent: Params, x: Tensor, y: Tensor) -> Tensor:
        # F_b v = (1/n_b) Σ_i g_i (g_iᵀ v): a jvp gives s_i = g_iᵀ v, the pullback Σ_i s_i g_i.
        losses = self._graph(i, lambda x, y: self.fn.sample_losses(self._variables, x, y))
        s = jvp(lambda p: self.fn.sample_losses(p, x, y), (self.fn.params,), (tangent,))[1]
        return self._pull(losses, s / len(x))
