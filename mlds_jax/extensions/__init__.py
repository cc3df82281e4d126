"""Quantities the hand-derived backward gives beyond the gradient, built on the core's per-layer
A^(l−1), δ^(l) and per-example loss terms: one concept per module.

* :mod:`~mlds_jax.extensions.curvature`: Hessian- and GGN-vector products by the R-operator,
  the diagonal GGN, the top Hessian eigenvalue (Lanczos), the Hutchinson trace, step sizes.
* :mod:`~mlds_jax.extensions.kfac`: Kronecker factors of each layer's GGN block.
"""

from mlds_jax.extensions.curvature import (
    diag_ggn,
    ggn_vp,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    network_exact_step_size,
    network_max_stable_step_size,
    sharpness,
)
from mlds_jax.extensions.kfac import kfac_factors

__all__ = [
    "diag_ggn",
    "ggn_vp",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "kfac_factors",
    "network_exact_step_size",
    "network_max_stable_step_size",
    "sharpness",
]
