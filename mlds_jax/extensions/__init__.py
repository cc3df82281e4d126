"""Quantities the hand-derived backward gives beyond the gradient, built on the core's per-layer
A^(l−1), δ^(l) and per-example loss terms: one concept per module.

* :mod:`~mlds_jax.extensions.per_example`: per-example gradients, norms, Gram matrix, moments;
* :mod:`~mlds_jax.extensions.dp`: DP-SGD by ghost clipping and its privacy accounting;
* :mod:`~mlds_jax.extensions.mlp`: ``mlp`` as a ``jax.custom_vjp`` with the hand-derived VJP;
* curvature, one quantity per module:
  :mod:`~mlds_jax.extensions.rop` (Hessian- and GGN-vector products by the R-operator),
  :mod:`~mlds_jax.extensions.ggn_factors` (output-Hessian square roots, propagated),
  :mod:`~mlds_jax.extensions.diag_ggn`, :mod:`~mlds_jax.extensions.lanczos` (Lanczos on any
  flat operator; the top Hessian eigenpair), :mod:`~mlds_jax.extensions.trace` (Hutchinson
  with block probes, Hutch++), :mod:`~mlds_jax.extensions.density` (stochastic Lanczos
  quadrature), :mod:`~mlds_jax.extensions.step_size`;
* :mod:`~mlds_jax.extensions.kfac`: Kronecker factors of each layer's GGN block;
* :mod:`~mlds_jax.extensions.sharpness_tracker`: λ_max during training, as a callback;
* :mod:`~mlds_jax.extensions.jacobian`: the exact output Jacobian by back-propagating the K
  output directions;
* :mod:`~mlds_jax.extensions.gauss_newton`: the damped Gauss-Newton direction (dense Cholesky
  or conjugate gradients);
* :mod:`~mlds_jax.extensions.levenberg_marquardt`: Levenberg–Marquardt training (``trainlm``).
"""

from mlds_jax.extensions.density import hessian_spectral_density, smoothed_density
from mlds_jax.extensions.diag_ggn import diag_ggn, per_example_diag_ggn
from mlds_jax.extensions.dp import (
    DPSGD,
    PrivacyAccountant,
    clip_factors,
    dp_epsilon,
    dp_value_and_grads,
)
from mlds_jax.extensions.gauss_newton import gauss_newton_direction
from mlds_jax.extensions.jacobian import output_jacobian
from mlds_jax.extensions.kfac import kfac_factors
from mlds_jax.extensions.lanczos import hessian_top_eigenvalue, sharpness, sharpness_core
from mlds_jax.extensions.levenberg_marquardt import (
    LevenbergMarquardtResult,
    levenberg_marquardt,
)
from mlds_jax.extensions.mlp import mlp, mlp_backward, mlp_core
from mlds_jax.extensions.per_example import (
    GradientMoments,
    gradient_cross_gram,
    gradient_gram,
    gradient_gram_core,
    gradient_moments,
    gradient_moments_core,
    per_example_grad_norms,
    per_example_grad_norms_core,
    per_example_grads,
    per_example_grads_core,
)
from mlds_jax.extensions.rop import ggn_vp, hvp
from mlds_jax.extensions.sharpness_tracker import SharpnessTracker
from mlds_jax.extensions.step_size import (
    network_exact_step_size,
    network_max_stable_step_size,
)
from mlds_jax.extensions.trace import hessian_trace

__all__ = [
    "DPSGD",
    "GradientMoments",
    "PrivacyAccountant",
    "SharpnessTracker",
    "LevenbergMarquardtResult",
    "clip_factors",
    "diag_ggn",
    "dp_epsilon",
    "dp_value_and_grads",
    "gauss_newton_direction",
    "ggn_vp",
    "gradient_cross_gram",
    "gradient_gram",
    "gradient_gram_core",
    "gradient_moments",
    "gradient_moments_core",
    "hessian_spectral_density",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "kfac_factors",
    "levenberg_marquardt",
    "mlp",
    "mlp_backward",
    "mlp_core",
    "network_exact_step_size",
    "network_max_stable_step_size",
    "output_jacobian",
    "per_example_diag_ggn",
    "per_example_grad_norms",
    "per_example_grad_norms_core",
    "per_example_grads",
    "per_example_grads_core",
    "sharpness",
    "sharpness_core",
    "smoothed_density",
]
