r"""The Hessian's trace: Hutchinson with block probes, and Hutch++ (H12), (H16).

Both run inside one compiled program on :func:`mlds_jax.extensions.rop.flat_operator` (the
forward pass and primal δ computed once), drawing their probes on the device a block at a time
and applying the Hessian to a whole block of probes at once (``jax.vmap`` over the tangent
passes: one set of wider matrix products per block instead of one per probe).

When each wins: Hutchinson's error falls as 1/√S in the number of products S, with variance
2(‖H‖_F² − Σ_i H_ii²)/S; Hutch++ spends a third of its products finding the top of the
spectrum exactly (a sketch Q of H's range) and Hutchinson on the rest, so its error falls as
1/S when a few large eigenvalues carry most of ‖H‖_F (network Hessians' outliers: then it
wins), and it is no better than Hutchinson for a flat spectrum, at the price of a QR of a
P × S/3 matrix.
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
from mlds_jax.extensions.rop import flat_operator
from mlds_jax.layers import Params

__all__ = [
    "TRACE_METHODS",
    "hessian_trace",
    "hessian_trace_core",
    "hutch_plus_plus_core",
    "rademacher",
]

#: The estimators :func:`hessian_trace` offers.
TRACE_METHODS = ("hutchinson", "hutch++")


def rademacher(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Independent ±1 entries with probability ½ each, 32 of them from each random 32-bit word.

    The probes of (H12), (H16), (H17): one bit per entry, so a probe of P entries costs P/32
    draws of the counter-based generator instead of P (``jax.random.rademacher`` spends a
    uniform float on every entry: 60 ms against 2.7 ms for ten 535,818-entry probes here).
    """
    n = shape[-1]
    words = -(-n // 32)
    bits = jax.random.bits(key, (*shape[:-1], words), jnp.uint32)
    shifts = jnp.arange(32, dtype=jnp.uint32).reshape((1,) * bits.ndim + (32,))
    b = (bits[..., None] >> shifts) & 1  # bit j of each word
    return (2 * b.reshape(*shape[:-1], words * 32)[..., :n].astype(dtype) - 1).astype(dtype)


def _blocked(matvec, V: Array, block: int) -> Array:
    """H V for V (S, P), ``block`` rows per vmapped application; (S, P)."""
    S, P = V.shape
    nb = -(-S // block)
    Vp = jnp.zeros((nb * block, P), V.dtype).at[:S].set(V)
    HV = jax.lax.map(jax.vmap(matvec), Vp.reshape(nb, block, P))
    return HV.reshape(nb * block, P)[:S]


@functools.partial(jax.jit, static_argnames=("loss", "samples", "block"))
def hessian_trace_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    key: Array,
    samples: int,
    row_weights: Array | None = None,
    block: int = 10,
) -> tuple[Array, Array]:
    r"""Hutchinson's estimate (H12), unchecked: (mean of vᵀHv, each probe's vᵀHv (samples,)).

    Probe s is Rademacher from ``jax.random.split(key, samples)[s]``; ``block`` probes share
    one vmapped application of the tangent passes.
    """
    w = row_weights_or_mean(X, row_weights)
    flat, _ = ravel_pytree(params)
    matvec = flat_operator(params, X, Y, loss, w)
    keys = jax.random.split(key, samples)
    nb = -(-samples // block)
    keys = jnp.concatenate([keys, keys[: nb * block - samples]]) if nb * block > samples else keys

    def one_block(kb):
        V = jax.vmap(lambda k: rademacher(k, flat.shape, flat.dtype))(kb)  # (block, P)
        HV = jax.vmap(matvec)(V)
        return jnp.sum(V * HV, axis=1)  # vᵀ H v   (H12)

    per_probe = jax.lax.map(one_block, keys.reshape(nb, block))
    per_probe = per_probe.reshape(-1)[:samples]
    return jnp.mean(per_probe), per_probe


@functools.partial(jax.jit, static_argnames=("loss", "samples", "block"))
def hutch_plus_plus_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    key: Array,
    samples: int,
    row_weights: Array | None = None,
    block: int = 10,
) -> Array:
    r"""Hutch++ (H16), unchecked: tr(QᵀHQ) + Hutchinson on (I − QQᵀ)H(I − QQᵀ); a scalar.

    ``samples`` Hessian-vector products in all: k = samples // 3 for the sketch H S
    (S Rademacher, P × k), Q = an orthonormal basis of H S (reduced QR), k for H Q, and the
    remaining samples − 2k probes G for the deflated Hutchinson term.
    """
    w = row_weights_or_mean(X, row_weights)
    flat, _ = ravel_pytree(params)
    matvec = flat_operator(params, X, Y, loss, w)
    k = samples // 3
    g = samples - 2 * k
    k1, k2 = jax.random.split(key)
    est = jnp.zeros((), flat.dtype)
    if k > 0:
        S = rademacher(k1, (k, flat.shape[0]), flat.dtype)
        Q, _ = jnp.linalg.qr(_blocked(matvec, S, block).T)  # (P, k), orthonormal columns
        HQ = _blocked(matvec, Q.T, block)  # (k, P)
        est = est + jnp.sum(Q.T * HQ)  # tr(Qᵀ H Q)   (H16)
    G = rademacher(k2, (g, flat.shape[0]), flat.dtype)
    G_perp = G - (G @ Q) @ Q.T if k > 0 else G  # (I − QQᵀ) g
    HG = _blocked(matvec, G_perp, block)
    return est + jnp.sum(G_perp * HG) / g  # (H16)


def hessian_trace(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array,
    samples: int = 100,
    row_weights: ArrayLike | None = None,
    method: str = "hutchinson",
    block: int = 10,
) -> Array:
    r"""A stochastic estimate of tr(H) from ``samples`` Hessian-vector products (H12), (H16).

    ``method="hutchinson"``: tr(H) ≈ (1/S) Σ_s v_sᵀ H v_s with Rademacher probes (E[v vᵀ] = I,
    each term unbiased), variance 2(‖H‖_F² − Σ_i H_ii²)/S.  ``method="hutch++"``: a third of
    the products sketch the top of the spectrum, which is then traced exactly, and the rest
    run Hutchinson on the deflated remainder: unbiased, error O(1/S) instead of O(1/√S) when a
    few large eigenvalues dominate (see the module docstring).

    Args:
      params, X, Y, loss: as :func:`mlds_jax.hvp`.
      key: ``jax.random`` key.
      samples: number of Hessian-vector products S ≥ 1 (≥ 3 for Hutch++ to sketch at all).
      row_weights: optional w (N,).
      method: ``"hutchinson"`` or ``"hutch++"``.
      block: probes applied together in one vmapped pass (memory block·P and block·N·Σ widths;
        the numbers do not depend on it).

    Returns:
      The estimate, a scalar array.
    """
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    validation.check_key(key)
    s = validation.positive_int(samples, "samples")
    b = validation.positive_int(block, "block")
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {list(TRACE_METHODS)}, got {method!r}")
    core_fn = hessian_trace_core if method == "hutchinson" else hutch_plus_plus_core
    out = call_checked(
        core_fn,
        (params, X, Y),
        {"key": key, "row_weights": w},
        static={"loss": loss, "samples": s, "block": min(b, s)},
        recheck=lambda: validation.check_batch(params, X0, Y0, loss),
    )
    return out[0] if method == "hutchinson" else out
