r"""The diagonal of the generalised Gauss-Newton matrix, exact or Monte Carlo (H8)-(H10).

Each example's output-Hessian square root S_n (H8) (or M sampled columns (H9)), scaled by √w_n,
is back-propagated like δ (:mod:`mlds_jax.extensions.ggn_factors`), and an entry of W^(l)
collects Σ_n (a_ni)² Σ_c (B_{c,n,j})² (H10): the column sum over c is taken first, so each layer
costs one (A⊙A)ᵀ(ΣB²) product whatever the number of columns.
"""

from __future__ import annotations

import functools
from typing import cast

import jax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import call_checked, check_batch_deferred, row_weights_or_mean
from mlds_jax.extensions.ggn_factors import (
    backprop_factor,
    column_sum_of_squares,
    output_sqrt_factor,
    sampled_output_factor,
)
from mlds_jax.layers import Dense, Params

__all__ = [
    "diag_ggn",
    "diag_ggn_core",
    "ggn_factors_of",
    "per_example_diag_ggn",
    "per_example_diag_ggn_core",
]


def ggn_factors_of(
    params: Params,
    cache: core.ForwardCache,
    loss: str,
    w: Array,
    key: Array | None = None,
    mc_samples: int = 0,
) -> tuple[Array, ...]:
    """B^(l) (C, N, sizes[l]) for l = 1..L: exact (``mc_samples = 0``, C = K) or sampled (C = M)."""
    act = params[-1].activation
    if mc_samples == 0:
        S = output_sqrt_factor(cache, loss, act, w)  # (H8)
    else:
        assert key is not None
        S = sampled_output_factor(cache, loss, act, w, key, mc_samples)  # (H9)
    return backprop_factor(params, cache, S)


@functools.partial(jax.jit, static_argnames=("loss", "mc_samples"))
def diag_ggn_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array | None = None,
    key: Array | None = None,
    mc_samples: int = 0,
) -> Params:
    r"""diag(G) like params (H10), unchecked; ``mc_samples = 0`` is exact, else Monte Carlo."""
    del Y  # the GGN does not depend on the targets
    w = row_weights_or_mean(X, row_weights)
    cache = core.forward_cache(params, X)
    B = ggn_factors_of(params, cache, loss, w, key, mc_samples)
    out = []
    for l, layer in enumerate(params, start=1):
        Bsq = column_sum_of_squares(B[l - 1])  # Σ_c (B^(l)_{c,n,j})², (N, d_l): summed first
        A_prev = cache.A(l - 1)
        dW = (A_prev * A_prev).T @ Bsq  # (H10)
        out.append(Dense(W=dW, b=Bsq.sum(axis=0), activation=layer.activation))  # (H10)
    return cast(Params, tuple(out) if isinstance(params, tuple) else out)


def diag_ggn(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    row_weights: ArrayLike | None = None,
    mc_samples: int | None = None,
    key: Array | None = None,
) -> Params:
    r"""The diagonal of the generalised Gauss-Newton matrix, like params (H8)-(H10).

    Exact (default): each example's output-Hessian square root S_n (H8), scaled by √w_n, is
    propagated like δ, column by column (K columns), and

    .. math:: \mathrm{diag}(G)_{W^{(l)}_{ij}} = \sum_n (a^{(l-1)}_{ni})^2
              \sum_c (B^{(l)}_{c,n,j})^2,\qquad
              \mathrm{diag}(G)_{b^{(l)}_j} = \sum_n\sum_c (B^{(l)}_{c,n,j})^2.

    Monte Carlo (``mc_samples=M`` and ``key``): the columns are M sampled output gradients
    (targets drawn from the model, (H9)) divided by √M: an unbiased estimate.  The GGN
    convention (logits vs Ŷ) is that of :func:`mlds_jax.ggn_vp`.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets, as :func:`mlds_jax.loss` takes them (checked, not used: G does not depend
        on them).
      loss: loss name.
      row_weights: optional w (N,).
      mc_samples: None for the exact diagonal, else the number of sampled targets M ≥ 1.
      key: a ``jax.random`` key, required with ``mc_samples``.

    Returns:
      diag(G), like params (every entry ≥ 0).
    """
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    if mc_samples is None:
        if key is not None:
            raise ValueError(
                "key is only used with mc_samples; pass mc_samples=M for the "
                "Monte Carlo estimate or drop key for the exact diagonal"
            )
        kwargs, static = {"row_weights": w}, {"loss": loss}
    else:
        m = validation.positive_int(mc_samples, "mc_samples")
        if key is None:
            raise ValueError("mc_samples needs a key (jax.random.key(seed))")
        validation.check_key(key)
        kwargs, static = {"row_weights": w, "key": key}, {"loss": loss, "mc_samples": m}
    return call_checked(
        diag_ggn_core,
        (params, X, Y),
        kwargs,
        static=static,
        recheck=lambda: validation.check_batch(params, X0, Y0, loss),
    )


@functools.partial(jax.jit, static_argnames=("loss",))
def per_example_diag_ggn_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Params:
    r"""Each example's diag(w_n J_nᵀ H_n J_n), like params with a leading axis N (H18), unchecked.

    Per layer the outer product of a_n ⊙ a_n (d_in) with s_n = Σ_c B_{c,n}² (d_out): the column
    sum is taken before anything of size N·d_in·d_out is formed, so beyond the result the
    memory is that of :func:`diag_ggn_core`.
    """
    del Y  # the GGN does not depend on the targets
    w = row_weights_or_mean(X, row_weights)
    cache = core.forward_cache(params, X)
    B = ggn_factors_of(params, cache, loss, w)
    out = []
    for l, layer in enumerate(params, start=1):
        s = column_sum_of_squares(B[l - 1])  # s_n = Σ_c B_{c,n}², (N, d_l)
        A_prev = cache.A(l - 1)
        dW = (A_prev * A_prev)[:, :, None] * s[:, None, :]  # (H18): (N, d_in, d_out)
        out.append(Dense(W=dW, b=s, activation=layer.activation))  # (H18)
    return cast(Params, tuple(out) if isinstance(params, tuple) else out)


def per_example_diag_ggn(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    row_weights: ArrayLike | None = None,
) -> Params:
    r"""Each example's own diagonal GGN, like params with a leading axis N (H18).

    .. math:: \mathrm{diag}(G_n)_{W^{(l)}_{ij}} = \big(a^{(l-1)}_{ni}\big)^2
              \sum_c \big(B^{(l)}_{c,n,j}\big)^2,\qquad
              \mathrm{diag}(G_n)_{b^{(l)}_j} = \sum_c \big(B^{(l)}_{c,n,j}\big)^2,

    G_n = w_n J_nᵀ H_n J_n, with B the propagated √w_n S_n of (H8): the terms of (H10) before
    the sum over n, so the rows sum to :func:`diag_ggn` (BackPACK's ``BatchDiagGGNExact``
    convention: with the default w_n = 1/N multiply by N for the GGN of ℓ_n itself).  Nothing
    of size N·K·|θ| is formed: the K columns are summed per example first.

    Args:
      params, X, Y, loss: as :func:`diag_ggn`.
      row_weights: optional w (N,) (default 1/N).

    Returns:
      Like params, every leaf with a leading axis N: ``W`` (N, fan_in, fan_out), ``b``
      (N, fan_out); every entry ≥ 0.
    """
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    return call_checked(
        per_example_diag_ggn_core,
        (params, X, Y),
        {"row_weights": w},
        static={"loss": loss},
        recheck=lambda: validation.check_batch(params, X0, Y0, loss),
    )
