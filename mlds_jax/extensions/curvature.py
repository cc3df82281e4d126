r"""Curvature by hand, one namespace over the modules that compute it (H1)-(H17).

Each quantity lives in its own module; this one re-exports them for code written against
earlier versions (``from mlds_jax.extensions import curvature``):

* :mod:`~mlds_jax.extensions.rop`: Hessian- and GGN-vector products by the R-operator;
* :mod:`~mlds_jax.extensions.ggn_factors`: the output Hessian's square roots, propagated;
* :mod:`~mlds_jax.extensions.diag_ggn`: the diagonal GGN (exact and Monte Carlo);
* :mod:`~mlds_jax.extensions.lanczos`: Lanczos on any flat operator; the top Hessian eigenpair;
* :mod:`~mlds_jax.extensions.trace`: Hutchinson (block probes) and Hutch++;
* :mod:`~mlds_jax.extensions.density`: the spectral density by stochastic Lanczos quadrature;
* :mod:`~mlds_jax.extensions.step_size`: 2/λ_max and the exact step along −g.
"""

from __future__ import annotations

from mlds_jax.extensions.checks import check_direction, check_row_weights
from mlds_jax.extensions.density import (
    hessian_spectral_density,
    hessian_spectral_density_core,
    smoothed_density,
)
from mlds_jax.extensions.diag_ggn import (
    diag_ggn,
    diag_ggn_core,
    per_example_diag_ggn,
    per_example_diag_ggn_core,
)
from mlds_jax.extensions.ggn_factors import (
    backprop_factor,
    output_sqrt_factor,
    sampled_output_factor,
)
from mlds_jax.extensions.lanczos import (
    hessian_top_eigenvalue,
    lanczos_core,
    lanczos_step_core,
    lanczos_steps_core,
    sharpness,
    sharpness_core,
    top_eigenpair_core,
)
from mlds_jax.extensions.rop import ggn_vp, ggn_vp_core, hvp, hvp_core
from mlds_jax.extensions.step_size import (
    network_exact_step_size,
    network_exact_step_size_core,
    network_max_stable_step_size,
)
from mlds_jax.extensions.trace import hessian_trace, hessian_trace_core, hutch_plus_plus_core

__all__ = [
    "backprop_factor",
    "check_direction",
    "check_row_weights",
    "diag_ggn",
    "diag_ggn_core",
    "ggn_vp",
    "ggn_vp_core",
    "hessian_spectral_density",
    "hessian_spectral_density_core",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hessian_trace_core",
    "hutch_plus_plus_core",
    "hvp",
    "hvp_core",
    "lanczos_core",
    "lanczos_step_core",
    "lanczos_steps_core",
    "network_exact_step_size",
    "network_exact_step_size_core",
    "network_max_stable_step_size",
    "output_sqrt_factor",
    "per_example_diag_ggn",
    "per_example_diag_ggn_core",
    "sampled_output_factor",
    "sharpness",
    "sharpness_core",
    "smoothed_density",
    "top_eigenpair_core",
]
