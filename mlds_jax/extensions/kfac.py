r"""Kronecker factors of each layer's GGN block (KFLR / KFAC), from the hand-derived backward.

For layer l with bias folded in, Ã^(l−1) = [A^(l−1), 1] (N, d_in + 1) and W̃ = [W; b]
(d_in + 1, d_out), Z = Ã W̃.  The GGN block of vec(W̃) (row-major: entry (i, j) at
i·d_out + j) is Σ_n ã_n ã_nᵀ ⊗ B_n B_nᵀ, B_n the propagated square-root factor of example n
(equation (H13) of ``docs/derivations.md``).  Kronecker-factored approximation (H14):

.. math:: G^{(l)} \approx A_{factor} \otimes G_{factor},\qquad
          A_{factor} = \frac{\sum_n w_n \tilde a_n \tilde a_n^T}{\sum_n w_n},\qquad
          G_{factor} = \sum_n B_n B_n^T,

KFLR's scaling: the loss's weight w_n (1/N by default) sits inside B_n (as √w_n), the input
factor is a weighted mean (1/N Σ by default), so with one example A_factor ⊗ G_factor *is* the
layer's exact GGN block, ``numpy.kron(A_factor, G_factor)`` in the row-major vec order above.

``kind``: ``"exact"`` (B from the output Hessian's square root, K columns: KFLR), ``"mc"``
(B from targets sampled from the model: KFAC) or ``"empirical"`` (G_factor = Σ_n w_n ĝ_n ĝ_nᵀ
with ĝ_n the unscaled per-example δ̂_n^(l) of the true labels: (1/N)Σ by default).  The GGN
convention (logits or Ŷ) is that of :mod:`mlds_jax.extensions.ggn_factors`.  Our W is
(fan_in, fan_out), so BackPACK's factors for torch's (out, in) weight come in the other order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import check_row_weights
from mlds_jax.extensions.diag_ggn import ggn_factors_of
from mlds_jax.layers import Params

__all__ = ["KFAC_KINDS", "kfac_factors", "kfac_factors_core"]

#: The three sources of the output-side factor.
KFAC_KINDS = ("exact", "mc", "empirical")


@functools.partial(jax.jit, static_argnames=("loss", "kind", "mc_samples"))
def kfac_factors_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array,
    kind: str = "exact",
    key: Array | None = None,
    mc_samples: int = 1,
) -> tuple[tuple[Array, Array], ...]:
    """Per layer (A_factor (d_in+1, d_in+1), G_factor (d_out, d_out)) (H13), (H14), unchecked."""
    w = row_weights.astype(X.dtype)
    cache = core.forward_cache(params, X)
    if kind == "empirical":
        ones = jnp.ones_like(w)  # unscaled per-example δ̂_n^(l) of the true labels
        Bs = [d[None] for d in core.backward(params, cache, Y, loss, row_weights=ones).deltas]
        col_w = w  # G = Σ_n w_n ĝ_n ĝ_nᵀ   (H14)
    else:
        # (H8) exact, (H9) sampled
        Bs = list(ggn_factors_of(params, cache, loss, w, key, 0 if kind == "exact" else mc_samples))
        col_w = None
    out = []
    for l in range(1, len(params) + 1):
        A_prev = cache.A(l - 1)
        A_tilde = jnp.concatenate([A_prev, jnp.ones((A_prev.shape[0], 1), A_prev.dtype)], axis=1)
        A_factor = (A_tilde * w[:, None]).T @ A_tilde / jnp.sum(w)  # (H14)
        B = Bs[l - 1]  # (C, N, d_out)
        if col_w is not None:
            G_factor = (B[0] * col_w[:, None]).T @ B[0]  # (H14)
        else:
            Bf = B.reshape(-1, B.shape[-1])
            G_factor = Bf.T @ Bf  # Σ_n Σ_c B_{c,n} B_{c,n}ᵀ   (H13)
        out.append((A_factor, G_factor))
    return tuple(out)


def kfac_factors(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    kind: str = "exact",
    key: Array | None = None,
    mc_samples: int = 1,
    row_weights: ArrayLike | None = None,
) -> tuple[tuple[Array, Array], ...]:
    r"""Kronecker factors (A_factor, G_factor) of every layer's GGN block (H13), (H14).

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets, as :func:`mlds_jax.loss` takes them (used by ``kind="empirical"`` only).
      loss: loss name.
      kind: ``"exact"`` (KFLR), ``"mc"`` (KFAC: sampled targets) or ``"empirical"``.
      key: ``jax.random`` key, required for ``kind="mc"``.
      mc_samples: sampled targets per example for ``"mc"`` (M ≥ 1).
      row_weights: optional w (N,) (default 1/N).

    Returns:
      One (A_factor (d_in + 1, d_in + 1), G_factor (d_out, d_out)) per layer; the bias is the
      last row/column of A_factor.  ``kron(A_factor, G_factor)`` approximates the mean-loss GGN
      block of [W; b] flattened row-major.
    """
    X, Y = validation.check_batch(params, X, Y, loss)
    w = check_row_weights(row_weights, X.shape[0], params[0].W.dtype)
    if kind not in KFAC_KINDS:
        raise ValueError(f"kind must be one of {list(KFAC_KINDS)}, got {kind!r}")
    m = validation.positive_int(mc_samples, "mc_samples")
    if kind == "mc":
        if key is None:
            raise ValueError('kind="mc" needs a key (jax.random.key(seed))')
        validation.check_key(key)
    elif key is not None:
        raise ValueError(f'key is only used with kind="mc", not kind={kind!r}')
    return kfac_factors_core(params, X, Y, loss, w, kind, key, m)
