"""Weight-perturbation optimizers: SAM/ASAM, GSAM, AMP, GAM, finite-difference GR and IGNITE.

Every method here takes the gradient at the current weights ``theta``, moves
the weights to one or more nearby points ``theta + delta``, takes the gradient
there, puts the weights back and hands a combination of those gradients to a
base optimizer. That loop is written once, in
:class:`~reglab.optim.perturbation.engine.PerturbationOptimizer` (its
docstring states the shared contract: closures, BatchNorm statistics, fp16,
skipped steps, cost); each method, in the module named after it, only says
where to go and how to combine what it found.

Modules: ``engine`` (the loop), ``vectors`` (tensor lists as one vector: norms,
the SAM ascent, GSAM's orthogonal part), ``scaling`` (fp16 gradient
unscaling), and one per method: ``sam``, ``gsam``, ``amp``, ``gam``,
``fd_gr``, ``ignite``.
"""

from reglab.optim.perturbation.amp import AMP
from reglab.optim.perturbation.engine import Perturbation, PerturbationOptimizer
from reglab.optim.perturbation.fd_gr import FiniteDifferenceGR
from reglab.optim.perturbation.gam import GAM
from reglab.optim.perturbation.gsam import GSAM
from reglab.optim.perturbation.ignite import IGNITE
from reglab.optim.perturbation.sam import ASAM, SAM
from reglab.optim.perturbation.vectors import NORM_EPS, ascent_offsets

__all__ = [
    "AMP",
    "ASAM",
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
