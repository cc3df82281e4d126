r"""Square-root factors of the GGN: the output Hessian's root S_n, exact or sampled, propagated
like δ through the hand-derived backward, equations (H8), (H9).

G = Σ_n w_n J_nᵀ H_n J_n with H_n = S_n S_nᵀ gives G = Σ_n B_n B_nᵀ, B_n = J_nᵀ √w_n S_n: each
of the C columns of √w_n S_n is back-propagated by the core's backward loop
(:func:`mlds_jax.core.backward_from_delta`).  The diagonal GGN, its per-example form and the
KFLR/KFAC factors read the propagated B^(l).  Where the GGN is taken (logits or Ŷ) and the
output Hessian's root are facts of the loss (:class:`mlds_jax.losses.Loss`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from mlds_jax import core
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.layers import Params
from mlds_jax.losses import get_loss

__all__ = [
    "backprop_factor",
    "column_sum_of_squares",
    "output_sqrt_factor",
    "sampled_output_factor",
]


def _to_logits(act: str, cols: Array, Z: Array) -> Array:
    """J_fᵀ applied to each of the columns (C, N, K) at Z (N, K): the output activation's VJP."""
    return jax.vmap(lambda col: ACTIVATIONS[act].backward(col, Z))(cols)


def output_sqrt_factor(cache: core.ForwardCache, loss: str, act: str, w: Array) -> Array:
    r"""√w_n S_n at the logits Z^(L), S_n S_nᵀ = the output Hessian in z_n; (C = K, N, K) (H8).

    The loss's own root at the logits (softmax-CE: diag(√p) − p √pᵀ; sigmoid-BCE:
    diag(√(σ(1 − σ)))), or, for a loss quadratic in ŷ (Hessian c·I), J_fᵀ √c I.  Columns
    first: column c of example n is ``out[c, n]``.
    """
    spec = get_loss(loss)
    Z, A = cache.Zs[-1], cache.As[-1]
    N, K = A.shape
    if spec.ggn_at_logits(act) and spec.logit_hessian_sqrt is not None:
        S = jnp.moveaxis(spec.logit_hessian_sqrt(A), 2, 0)  # (H8)
    else:
        if spec.output_hessian_scale is None:
            raise ValueError(f"loss {loss!r} after {act!r} has no output Hessian")
        c = spec.output_hessian_scale(K)
        eye = jnp.broadcast_to(math.sqrt(c) * jnp.eye(K, dtype=A.dtype)[:, None, :], (K, N, K))
        S = _to_logits(act, eye, Z)  # J_fᵀ √c e_j, column j   (H8)
    return jnp.sqrt(w)[None, :, None] * S


def sampled_output_factor(
    cache: core.ForwardCache, loss: str, act: str, w: Array, key: Array, mc_samples: int
) -> Array:
    r"""Monte Carlo √w_n S̃_n, (M, N, K): columns ĝ_m/√M with E[ĝ ĝᵀ] = H_n (H9).

    Targets are sampled from the model by the loss's ``sample_logit_grad`` at the logits
    (softmax-CE: p − e_y, y ~ Cat(p); sigmoid-BCE: σ − y, y ~ Bernoulli(σ)); for a loss
    quadratic in ŷ, ĝ_ŷ = √c ε, ε ~ N(0, I) (the Gaussian whose negative log-likelihood the
    loss is), mapped to the logits by J_fᵀ.
    """
    spec = get_loss(loss)
    Z, A = cache.Zs[-1], cache.As[-1]
    N, K = A.shape
    if spec.ggn_at_logits(act) and spec.sample_logit_grad is not None:
        G = spec.sample_logit_grad(key, A, mc_samples)  # (H9)
    else:
        if spec.output_hessian_scale is None:
            raise ValueError(f"loss {loss!r} after {act!r} has no output Hessian")
        c = spec.output_hessian_scale(K)
        eps = jax.random.normal(key, (mc_samples, N, K), dtype=A.dtype)
        G = _to_logits(act, math.sqrt(c) * eps, Z)  # (H9)
    return jnp.sqrt(w)[None, :, None] * G / math.sqrt(mc_samples)


def backprop_factor(params: Params, cache: core.ForwardCache, S: Array) -> tuple[Array, ...]:
    r"""Propagate the factor columns like δ (H8): B^(L) = S, B^(l−1) = (B^(l) W^(l)ᵀ) ⊙ f'(Z^(l−1)).

    The core's backward loop (:func:`mlds_jax.core.backward_from_delta`) vmapped over the C
    columns; only its δs are read (the ∂/∂W products and ∂/∂X are dead code under ``jit``).

    Args:
      params: L layers.  cache: ``core.forward_cache(params, X)``.
      S: (C, N, K), the output factor, columns first.

    Returns:
      (B^(1), ..., B^(L)), B^(l) of shape (C, N, sizes[l]).
    """
    return jax.vmap(lambda col: core.backward_from_delta(params, cache, col).deltas)(S)  # (H8)


def column_sum_of_squares(B: Array) -> Array:
    r"""s_{n,j} = Σ_c B_{c,n,j}², the factor's columns summed first (H10), (H18); (N, d).

    Written as C element-wise additions (a ``fori_loop`` past 64 columns) rather than a
    reduction over the leading axis, which XLA:CPU runs ~70× slower on (10, 1024, 512) (measured
    in ``benchmarks/extensions_curvature.py``'s diag-ggn row): layout, not maths.
    """
    C = B.shape[0]
    if C <= 64:
        s = B[0] * B[0]
        for c in range(1, C):
            s = s + B[c] * B[c]
        return s
    return jax.lax.fori_loop(1, C, lambda c, s: s + B[c] * B[c], B[0] * B[0])
