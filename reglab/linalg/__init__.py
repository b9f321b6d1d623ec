"""Pure math on tensors and ``torch.func`` (layer 0): curvature operators, estimators, polar factors, bounds.

- :mod:`~reglab.linalg.functional`: per-sample gradients, Jacobian-vector products of a model's output;
- :mod:`~reglab.linalg.operators`: ``LinearOperator``, ``HessianOperator`` (Hessian, GGN, empirical Fisher);
- :mod:`~reglab.linalg.eigen`: Lanczos and power iteration; :mod:`~reglab.linalg.trace`: Hutchinson,
  Hutch++, Frobenius norm; :mod:`~reglab.linalg.density`: stochastic Lanczos quadrature;
- :mod:`~reglab.linalg.newton_schulz`: polar factors; :mod:`~reglab.linalg.spectral_clip`: spectral clipping.
"""

from __future__ import annotations

from reglab.linalg.conv_spectrum import conv_norm_bound, conv_singular_values, conv_spectral_norm
from reglab.linalg.density import DensityResult, spectral_density
from reglab.linalg.eigen import EigResult, Lanczos, lanczos, power_iteration
from reglab.linalg.functional import (
    FunctionalModel,
    batches,
    concat,
    eval_mode,
    output_jvp,
    output_vjp,
    per_sample_gradients,
    select_params,
)
from reglab.linalg.interval import (
    JacobianInterval,
    ibp_lipschitz_bound,
    interval_bounds,
    interval_matrix_norm,
    relu_jacobian_interval,
)
from reglab.linalg.newton_schulz import (
    CUBIC,
    POLAR_EXPRESS,
    QUINTIC,
    newton_schulz,
    ns_schedule,
    polar_factor,
    singular_value_band,
)
from reglab.linalg.operators import CURVATURES, HessianOperator, LinearOperator, MatrixOperator
from reglab.linalg.singular import singular_power_iteration
from reglab.linalg.spectral_clip import soft_spectral_clip, spectral_clip
from reglab.linalg.trace import TraceResult, frobenius_norm, hutchinson, hutchpp

__all__ = [
    "CUBIC",
    "POLAR_EXPRESS",
    "QUINTIC",
    "newton_schulz",
    "ns_schedule",
    "polar_factor",
    "singular_value_band",
    "JacobianInterval",
    "conv_norm_bound",
    "conv_singular_values",
    "conv_spectral_norm",
    "ibp_lipschitz_bound",
    "interval_bounds",
    "interval_matrix_norm",
    "relu_jacobian_interval",
    "CURVATURES",
    "DensityResult",
    "EigResult",
    "FunctionalModel",
    "HessianOperator",
    "Lanczos",
    "LinearOperator",
    "MatrixOperator",
    "TraceResult",
    "batches",
    "concat",
    "eval_mode",
    "frobenius_norm",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "output_jvp",
    "output_vjp",
    "per_sample_gradients",
    "power_iteration",
    "singular_power_iteration",
    "select_params",
    "soft_spectral_clip",
    "spectral_clip",
    "spectral_density",
]
