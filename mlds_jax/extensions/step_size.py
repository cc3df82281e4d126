r"""Step sizes of full-batch gradient descent from the Hessian: 2/λ_max and gᵀg/gᵀHg (S1), (S2)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import call_checked, check_batch_deferred, row_weights_or_mean
from mlds_jax.extensions.lanczos import sharpness
from mlds_jax.extensions.rop import curvature_vp
from mlds_jax.layers import Params

__all__ = [
    "network_exact_step_size",
    "network_exact_step_size_core",
    "network_max_stable_step_size",
]


def network_max_stable_step_size(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array | None = None,
    num_iters: int = 100,
    tol: float = 1e-7,
    row_weights: ArrayLike | None = None,
) -> float:
    r"""2 / λ_max of the Hessian: the largest stable fixed step of full-batch gradient descent.

    Near params the loss is locally quadratic; one step multiplies the error along an
    eigenvector of H by 1 − ηλ, so a fixed step is stable iff η < 2/λ_max (S2) (the network form
    of :func:`mlds_jax.max_stable_step_size`).  λ_max by :func:`mlds_jax.hessian_top_eigenvalue`.

    Args:
      params, X, Y, loss: as :func:`mlds_jax.hvp`.
      key: start vector key (default ``jax.random.key(0)``: deterministic).
      num_iters, tol: as :func:`mlds_jax.hessian_top_eigenvalue`.
      row_weights: optional w (N,).

    Returns:
      2/λ_max as a Python float.

    Raises:
      ValueError: λ_max ≤ 0 (no fixed step is stable: the loss is not locally convex in any
        direction).
    """
    if key is None:
        key = jax.random.key(0)
    lam = sharpness(
        params, X, Y, loss, key=key, num_iters=num_iters, tol=tol, row_weights=row_weights
    )
    if not lam > 0.0:
        raise ValueError(
            f"largest Hessian eigenvalue is {lam} <= 0: no fixed step size is stable there"
        )
    return 2.0 / lam


@functools.partial(jax.jit, static_argnames=("loss",))
def network_exact_step_size_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Array:
    r"""η = gᵀg / gᵀHg along −g (S1), unchecked; g by the hand-derived backward, one forward."""
    w = row_weights_or_mean(X, row_weights)
    cache = core.forward_cache(params, X)
    g = core.backward(params, cache, Y, loss, row_weights=w).grads
    Hg = curvature_vp(params, cache, Y, loss, g, w, ggn=False)
    leaves_g, leaves_Hg = jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(Hg)
    gg = jnp.sum(jnp.stack([jnp.vdot(a, a) for a in leaves_g]))
    gHg = jnp.sum(jnp.stack([jnp.vdot(a, b) for a, b in zip(leaves_g, leaves_Hg, strict=True)]))
    return gg / gHg  # (S1)


def network_exact_step_size(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, row_weights: ArrayLike | None = None
) -> float:
    r"""The exact line-search step along −g for the local quadratic model: η = gᵀg / gᵀHg (S1).

    Minimises L(θ − η g) ≈ L − η gᵀg + ½η² gᵀHg over η; g by the manual backward, Hg by
    :func:`mlds_jax.hvp`.  The network form of ``gradient_descent(..., line_search="exact")``.

    Returns:
      η as a Python float.

    Raises:
      ValueError: gᵀHg ≤ 0 (negative curvature along −g: the quadratic model has no minimum)
        or g = 0.
    """
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    eta = float(
        call_checked(
            network_exact_step_size_core,
            (params, X, Y),
            {"row_weights": w},
            static={"loss": loss},
            recheck=lambda: validation.check_batch(params, X0, Y0, loss),
        )
    )
    if not (math.isfinite(eta) and eta > 0.0):
        raise ValueError(
            f"the exact step gᵀg/gᵀHg is {eta}: the curvature along the "
            f"gradient is not positive (or the gradient is zero)"
        )
    return eta
