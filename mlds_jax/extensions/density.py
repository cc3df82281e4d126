r"""The Hessian's spectral density by stochastic Lanczos quadrature (H17).

For a unit probe v, m Lanczos steps from v give the tridiagonal T_m = U diag(θ) Uᵀ; the Gauss
quadrature with nodes θ_i and weights τ_i = (U_{1i})² integrates polynomials of degree up to
2m − 1 exactly against the spectral measure of H seen from v:

.. math:: v^T g(H) v = \sum_j (u_j^T v)^2 g(\lambda_j) \approx \sum_{i=1}^m \tau_i\, g(\theta_i).

With v of independent Rademacher entries scaled to unit norm, E[vvᵀ] = I/P, so averaging over
probes estimates (1/P) Σ_j g(λ_j): the density φ(t) = (1/P) Σ_j δ(t − λ_j) (Ubaru, Chen, Saad
2017; Ghorbani, Krishnan, Xiao 2019 for network Hessians, PyHessian's ``density``).
:func:`hessian_spectral_density` returns the nodes and weights of each probe;
:func:`smoothed_density` turns them into a curve with a Gaussian kernel, as PyHessian plots it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlds_jax import validation
from mlds_jax.extensions.checks import call_checked, check_batch_deferred, row_weights_or_mean
from mlds_jax.extensions.lanczos import lanczos_tridiagonal
from mlds_jax.extensions.rop import flat_operator
from mlds_jax.extensions.trace import rademacher
from mlds_jax.layers import Params

__all__ = ["hessian_spectral_density", "hessian_spectral_density_core", "smoothed_density"]


def _nodes_and_weights(alpha: Array, beta: Array, steps: Array) -> tuple[Array, Array]:
    """Eigenvalues θ and squared first components τ of T (m × m, leading ``steps`` block); (H17).

    Entries past a breakdown (steps < m) become nodes of weight exactly 0: their diagonal is
    set to the smallest real node and their coupling to zero.
    """
    m = alpha.shape[0]
    idx = jnp.arange(m, dtype=jnp.int32)
    a = jnp.where(idx < steps, alpha, jnp.min(jnp.where(idx < steps, alpha, jnp.inf)))
    b = jnp.where(idx < steps - 1, beta, 0.0)[:-1]
    T = jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)
    theta, U = jnp.linalg.eigh(T)
    return theta, U[0] ** 2  # (H17)


@functools.partial(jax.jit, static_argnames=("loss", "num_iters", "num_probes"))
def hessian_spectral_density_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    key: Array,
    num_iters: int = 100,
    num_probes: int = 1,
    row_weights: Array | None = None,
) -> tuple[Array, Array]:
    r"""(nodes, weights), each (num_probes, m), m = min(num_iters, P), unchecked (H17).

    Probe p is Rademacher from ``jax.random.split(key, num_probes)[p]``; several probes run
    their Lanczos loops together (``jax.vmap``: every step one block of Hessian-vector
    products).
    """
    w = row_weights_or_mean(X, row_weights)
    flat, _ = ravel_pytree(params)
    m = min(num_iters, flat.shape[0])
    matvec = flat_operator(params, X, Y, loss, w)

    def one(k):
        v = rademacher(k, flat.shape, flat.dtype)
        alpha, beta, steps = lanczos_tridiagonal(matvec, v, m)
        return _nodes_and_weights(alpha, beta, steps)

    keys = jax.random.split(key, num_probes)
    if num_probes == 1:
        nodes, weights = one(keys[0])
        nodes, weights = nodes[None], weights[None]
    else:
        nodes, weights = jax.vmap(one)(keys)
    return nodes, weights


def hessian_spectral_density(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array,
    num_iters: int = 100,
    num_probes: int = 1,
    row_weights: ArrayLike | None = None,
) -> tuple[Array, Array]:
    r"""Stochastic Lanczos quadrature of the Hessian's eigenvalue density (H17).

    For each of ``num_probes`` Rademacher probes v (scaled to unit norm), ``num_iters`` Lanczos
    steps with full reorthogonalisation on :func:`mlds_jax.hvp` give T = U diag(θ) Uᵀ; the
    nodes are θ and the weights (U_{1i})², which sum to 1.  Averaged over probes,
    Σ_i τ_i g(θ_i) estimates (1/P) Σ_j g(λ_j) for every smooth g (exactly, for each probe's
    quadratic form, when g is a polynomial of degree < 2·num_iters): the moments
    Σ τ θ^k ≈ tr(H^k)/P.  PyHessian's ``density(iter, n_v)`` computes the same quantity.

    Args:
      params, X, Y, loss: as :func:`mlds_jax.hvp`.
      key: ``jax.random`` key for the probes.
      num_iters: Lanczos steps m per probe (capped at P; memory (m + 1)·P per probe).
      num_probes: independent probes.
      row_weights: optional w (N,).

    Returns:
      (nodes, weights), each (num_probes, m); each row of weights sums to 1.  Plot with
      :func:`smoothed_density`.
    """
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    validation.check_key(key)
    m = validation.positive_int(num_iters, "num_iters")
    n = validation.positive_int(num_probes, "num_probes")
    return call_checked(
        hessian_spectral_density_core,
        (params, X, Y),
        {"key": key, "row_weights": w},
        static={"loss": loss, "num_iters": m, "num_probes": n},
        recheck=lambda: validation.check_batch(params, X0, Y0, loss),
    )


def smoothed_density(nodes: ArrayLike, weights: ArrayLike, grid: ArrayLike, sigma: float) -> Array:
    r"""φ(t) = (1/R) Σ_probes Σ_i τ_i N(t; θ_i, σ²) on a grid: the density as a curve (H17).

    Args:
      nodes, weights: from :func:`hessian_spectral_density`, (R, m) each.
      grid: points t, (G,).
      sigma: kernel width σ > 0.

    Returns:
      φ on the grid, (G,); it integrates to 1 over the real line.
    """
    s = validation.positive_float(sigma, "sigma")
    th = jnp.asarray(nodes)
    tau = jnp.asarray(weights)
    t = jnp.asarray(grid, th.dtype)
    if th.ndim != 2 or th.shape != tau.shape:
        raise ValueError(
            f"nodes and weights must both be (num_probes, m); got {th.shape} and {tau.shape}"
        )
    k = jnp.exp(-0.5 * ((t[:, None, None] - th[None]) / s) ** 2) / (s * jnp.sqrt(2 * jnp.pi))
    return jnp.sum(k * tau[None], axis=(1, 2)) / th.shape[0]
