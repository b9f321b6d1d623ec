"""Orthogonalized updates for matrix parameters: Muon, NorMuon, AuON and ROOT.

Each optimizer here updates every matrix parameter (``>= 2``-D; a convolution
kernel ``(out, in, *k)`` is read as the ``(out, in * prod(k))`` matrix) with
its own orthogonalized step, and every other parameter with an auxiliary AdamW.
The four share that machinery (:class:`OrthogonalOptimizer`): parameter
routing, the AdamW step, decoupled weight decay, the momentum buffer, the
shape-dependent learning-rate ratio and argument validation. Each subclass
writes only its matrix direction.

**Routing.** ``params`` may be

- a module: :func:`split_params` sends hidden matrices to the matrix update and
  embeddings, the output head, norms and biases to AdamW;
- a plain list of tensors (``model.parameters()``): ``>= 2``-D tensors to the
  matrix update, the rest to AdamW (embeddings and the head included in the
  matrix update; pass the module, or groups, to route those to AdamW);
- parameter groups (dicts): ``use_muon=True`` groups get the matrix update
  (every parameter must be ``>= 2``-D), ``use_muon=False`` groups get AdamW, and
  a group without the flag is split by dimension. The optimizer's hyperparameters
  (``lr``, ``weight_decay``, ``momentum``, ...) fill ``use_muon=True`` groups;
  ``use_muon=False`` groups take ``lr``, ``betas``, ``eps`` and ``weight_decay``
  from ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and ``adamw_weight_decay``
  unless the group sets them. The keys of a group without the flag apply to its
  matrix half only; its other half gets the AdamW settings, except a
  ``weight_decay`` of 0 (the excluded group of ``weight_decay_groups``), which
  holds on both halves.

Every group keeps its own ``lr``, so learning-rate schedulers scale both kinds.
The AdamW step is ``torch.optim.AdamW``'s own functional kernel (same bits).

Modules: ``routing`` (which parameters get which update), ``base`` (the
shared optimizer, argument rules, AdamW side, momentum, learning-rate ratio),
``muon`` (Muon, NorMuon), ``auon``, ``root``.
"""

from reglab.optim.orthogonal.auon import AuON
from reglab.optim.orthogonal.base import OrthogonalOptimizer, lr_ratio
from reglab.optim.orthogonal.muon import Muon, NorMuon
from reglab.optim.orthogonal.root import ROOT, ROOT_COEFFICIENTS
from reglab.optim.orthogonal.routing import DEFAULT_HEAD_NAMES, split_params

__all__ = [
    "AuON",
    "DEFAULT_HEAD_NAMES",
    "Muon",
    "NorMuon",
    "OrthogonalOptimizer",
    "ROOT",
    "ROOT_COEFFICIENTS",
    "lr_ratio",
    "split_params",
]
