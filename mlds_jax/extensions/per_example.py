r"""Per-example gradients, their norms, Gram matrix and moments, from one backward pass.

The hand-derived backward holds, for every layer l and every row n, the layer input
a_n = A^(l−1)_n and the output gradient δ^(l)_n.  Run with unit row weights it gives the
*unscaled* per-example δ̂^(l)_n = ∂ℓ_n/∂z^(l)_n (the core's ``output_delta`` with
``row_weights = ones``, pushed down by (B4)-(B5)), and every per-example quantity follows from
a_n and δ̂_n without ``jax.vmap(jax.grad(...))`` materialising N copies of the parameters.

Convention: ∇ℓ_n is the gradient of example n's own loss term ℓ_n, unscaled, so the
batch gradient of the mean loss is the mean of the ∇ℓ_n (``manual_grads`` == mean over axis 0 of
``per_example_grads``).  For "mse", ℓ_n = (1/K) Σ_k (ŷ_nk − y_nk)².

Equations (``docs/derivations.md``, section "Per-example quantities"):

* (P1) per-example δ̂: δ̂^(l)_n is the core's δ^(l) with w_n = 1;
* (P2) ∇_{W^(l)} ℓ_n = a_nᵀ δ̂_n (an outer product), ∇_{b^(l)} ℓ_n = δ̂_n;
* (P3) ‖∇_{W^(l)} ℓ_n‖² + ‖∇_{b^(l)} ℓ_n‖² = (‖a_n‖² + 1)‖δ̂_n‖² (Goodfellow, 2015);
* (P4) ⟨∇ℓ_n, ∇ℓ_m⟩ = Σ_l (a_n·a_m + 1)(δ̂_n·δ̂_m), also between two sets (the cross Gram
  matrix, TracIn-style influence of training examples on test examples (P8));
* (P5) Σ_n c_n (∇_{W^(l)} ℓ_n)² = (A⊙A)ᵀ(c ⊙ δ̂⊙δ̂), Σ_n c_n (∇_b ℓ_n)² = Σ_n c_n δ̂_n⊙δ̂_n;
* (P6) the moments: mean, sum of squares and (population) variance, elementwise.

Row weights.  ``row_weights`` w (N,) marks padding: rows with w_n = 0 are padding and every
per-example quantity of theirs is zero (gradient, norm, Gram row and column) and they take no
part in the moments.  A positive w_n does **not** rescale ∇ℓ_n (it stays the example's own,
unscaled gradient); it enters only :func:`gradient_moments`, whose ``.mean`` is Σ_n w_n ∇ℓ_n,
the batch gradient of L = Σ_n w_n ℓ_n (the core's (L1)).  ``None`` means every row is real and
w_n = 1/N.

Each public function validates its inputs once (:func:`mlds_jax.validation.check_batch`) and
calls a jitted pure ``*_core`` function; the cores are public (unchecked) for DP-SGD and the
training code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import call_checked
from mlds_jax.layers import Dense, Params

__all__ = [
    "GradientMoments",
    "check_row_weights",
    "gradient_cross_gram",
    "gradient_cross_gram_core",
    "gradient_gram",
    "gradient_gram_core",
    "gradient_moments",
    "gradient_moments_core",
    "ghost_sq_norms",
    "per_example_deltas",
    "per_example_grad_norms",
    "per_example_grad_norms_core",
    "per_example_grads",
    "per_example_grads_core",
    "row_mask",
]


class GradientMoments(NamedTuple):
    """Elementwise moments of the per-example gradients, each a pytree like params.

    Attributes:
      mean: Σ_n w_n ∇ℓ_n (w_n = 1/N by default): the batch gradient (P6).
      sum_sq: Σ_n (∇ℓ_n)² over the real rows (P5).
      variance: Σ_n p_n (∇ℓ_n − μ)², p_n = w_n / Σ_m w_m, μ = Σ_n p_n ∇ℓ_n; by default
        (1/N) Σ_n (∇ℓ_n − mean)² (P6).
    """

    mean: Params
    sum_sq: Params
    variance: Params


# --- the shared pieces ------------------------------------------------------------------------
def row_mask(row_weights: Array | None, n: int, dtype) -> Array:
    """m_n = 1 for real rows (w_n > 0, or every row when ``row_weights`` is None), else 0; (N,)."""
    if row_weights is None:
        return jnp.ones((n,), dtype)
    return (row_weights > 0).astype(dtype)


def per_example_deltas(
    params: Params, cache: core.ForwardCache, Y: Array, loss: str, mask: Array
) -> tuple[Array, ...]:
    r"""The unscaled per-example δ̂^(l) of every layer, padding rows zero, equation (P1).

    The core's backward with row weights m (1 for real rows, 0 for padding): δ^(L) = m ⊙ δ̂^(L)
    (L6)/(L7), and (B4)-(B5) act row by row, so δ^(l) = m ⊙ δ̂^(l) at every layer.  Under
    ``jax.jit`` the unused ∂L/∂W matmuls of that backward are dead code and are removed.

    Args:
      params: L layers.  cache: ``core.forward_cache(params, X)``.  Y: prepared targets (N, K).
      loss: loss name.  mask: m, (N,).

    Returns:
      (δ̂^(1), ..., δ̂^(L)), δ̂^(l) of shape (N, sizes[l]).
    """
    return core.backward(params, cache, Y, loss, row_weights=mask).deltas  # (P1)


def ghost_sq_norms(As: Sequence[Array], deltas: Sequence[Array]) -> Array:
    r"""Each example's squared gradient norm per layer, (‖a_n‖² + 1)‖δ̂_n‖², equation (P3).

    The ghost-norm identity, the one place it is written: ∇_{W^(l)}ℓ_n = a_nᵀ δ̂_n is an outer
    product, so its squared Frobenius norm is ‖a_n‖²‖δ̂_n‖², and the bias adds ‖δ̂_n‖².

    Args:
      As: the layer inputs (A^(0), ..., A^(L−1)), A^(l−1) of shape (N, sizes[l−1]).
      deltas: the per-example (δ̂^(1), ..., δ̂^(L)), δ̂^(l) of shape (N, sizes[l]).

    Returns:
      (N, L): column l − 1 is layer l's ‖∇_{W^(l)}ℓ_n‖² + ‖∇_{b^(l)}ℓ_n‖².
    """
    return jnp.stack(
        [
            (jnp.sum(A * A, axis=1) + 1) * jnp.sum(d * d, axis=1)  # (P3)
            for A, d in zip(As, deltas, strict=True)
        ],
        axis=1,
    )


def _inputs_and_deltas(params, X, Y, loss, row_weights):
    cache = core.forward_cache(params, X)
    mask = row_mask(row_weights, X.shape[0], X.dtype)
    deltas = per_example_deltas(params, cache, Y, loss, mask)
    return cache.As[:-1], deltas, mask  # A^(l−1) and δ̂^(l), l = 1..L


# --- pure cores ---------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("loss",))
def per_example_grads_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Params:
    r"""∇ℓ_n for every row, materialised: like params with a leading axis N, equation (P2).

    Unchecked (inputs prepared as for :mod:`mlds_jax.core`); see :func:`per_example_grads`.
    """
    As, deltas, _ = _inputs_and_deltas(params, X, Y, loss, row_weights)
    grads = [
        Dense(W=jnp.einsum("ni,nj->nij", A, d), b=d, activation=layer.activation)  # (P2)
        for layer, A, d in zip(params, As, deltas, strict=True)
    ]
    return cast(Params, grads if isinstance(params, list) else tuple(grads))


@functools.partial(jax.jit, static_argnames=("loss", "by_layer"))
def per_example_grad_norms_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array | None = None,
    by_layer: bool = False,
) -> Array:
    r"""‖∇ℓ_n‖₂ over all W and b of every layer (or per layer), nothing materialised (P3).

    .. math:: \|\nabla_{W^{(l)}}\ell_n\|^2 + \|\nabla_{b^{(l)}}\ell_n\|^2
              = (\|a_n\|^2 + 1)\,\|\hat\delta_n\|^2

    Unchecked; see :func:`per_example_grad_norms`.

    Returns:
      (N,), or (N, L) with ``by_layer``; zero for padding rows.
    """
    As, deltas, _ = _inputs_and_deltas(params, X, Y, loss, row_weights)
    sq = ghost_sq_norms(As, deltas)  # (P3): (N, L)
    return jnp.sqrt(sq) if by_layer else jnp.sqrt(jnp.sum(sq, axis=1))


@functools.partial(jax.jit, static_argnames=("loss",))
def gradient_gram_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Array:
    r"""G_nm = ⟨∇ℓ_n, ∇ℓ_m⟩ = Σ_l (a_n·a_m + 1)(δ̂_n·δ̂_m), equation (P4); (N, N).

    Unchecked; see :func:`gradient_gram`.
    """
    As, deltas, _ = _inputs_and_deltas(params, X, Y, loss, row_weights)
    G = jnp.zeros((X.shape[0], X.shape[0]), X.dtype)
    for A, d in zip(As, deltas, strict=True):
        G = G + (A @ A.T + 1) * (d @ d.T)  # (P4)
    return G


@functools.partial(jax.jit, static_argnames=("loss",))
def gradient_cross_gram_core(
    params: Params,
    X1: Array,
    Y1: Array,
    X2: Array,
    Y2: Array,
    loss: str,
) -> Array:
    r"""C_ij = ⟨∇ℓ(x1_i), ∇ℓ(x2_j)⟩ = Σ_l (a_i·a_j + 1)(δ̂_i·δ̂_j), equations (P4), (P8); (N1, N2).

    Unchecked (prepared inputs).  One forward and one δ pass per set, then per layer the two
    products A1 A2ᵀ and Δ1 Δ2ᵀ: memory O(N1·N2 + (N1 + N2)·Σ widths), no per-example gradient.
    """
    ones1 = jnp.ones((X1.shape[0],), X1.dtype)
    ones2 = jnp.ones((X2.shape[0],), X2.dtype)
    c1, c2 = core.forward_cache(params, X1), core.forward_cache(params, X2)
    d1 = per_example_deltas(params, c1, Y1, loss, ones1)  # (P1)
    d2 = per_example_deltas(params, c2, Y2, loss, ones2)
    C = jnp.zeros((X1.shape[0], X2.shape[0]), X1.dtype)
    for l in range(1, len(params) + 1):
        C = C + (c1.A(l - 1) @ c2.A(l - 1).T + 1) * (d1[l - 1] @ d2[l - 1].T)  # (P4)
    return C


@functools.partial(jax.jit, static_argnames=("loss",))
def gradient_moments_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> GradientMoments:
    r"""Mean, sum of squares and variance of the ∇ℓ_n, elementwise, equations (P5), (P6).

    .. math:: \mu = \sum_n p_n \nabla\ell_n,\quad
              S = \sum_n m_n (\nabla\ell_n)^{\odot 2},\quad
              V = \sum_n p_n (\nabla\ell_n)^{\odot 2} - \mu^{\odot 2}

    with m the real-row mask, p_n = w_n / Σ w (1/N by default); every Σ_n over rows is a
    matmul of A⊙A with the weighted δ̂⊙δ̂ (P5).  ``.mean`` is Σ_n w_n ∇ℓ_n, which equals μ when
    the weights sum to 1 (the default and any padding mask m / Σ m).  V is clipped at 0 (the
    subtraction can round a zero variance to −ulp).  Unchecked; see :func:`gradient_moments`.
    """
    As, deltas, mask = _inputs_and_deltas(params, X, Y, loss, row_weights)
    n = X.shape[0]
    w = jnp.full((n,), 1.0 / n, X.dtype) if row_weights is None else row_weights.astype(X.dtype)
    p = w / jnp.sum(w)
    mean, sum_sq, var = [], [], []
    for layer, A, d in zip(params, As, deltas, strict=True):
        act = layer.activation
        dW, db, _ = core.dense_backward(w[:, None] * d, A, layer.W)  # (B2), (B3): Σ w ∇ℓ_n
        mean.append(Dense(W=dW, b=db, activation=act))
        d2 = d * d
        sW, sb = (A * A).T @ (mask[:, None] * d2), jnp.sum(mask[:, None] * d2, axis=0)  # (P5)
        sum_sq.append(Dense(W=sW, b=sb, activation=act))
        muW, mub, _ = core.dense_backward(p[:, None] * d, A, layer.W)
        qW, qb = (A * A).T @ (p[:, None] * d2), jnp.sum(p[:, None] * d2, axis=0)  # (P5)
        var.append(
            Dense(
                W=jnp.maximum(qW - muW * muW, 0), b=jnp.maximum(qb - mub * mub, 0), activation=act
            )
        )  # (P6)
    as_params = (lambda x: x) if isinstance(params, list) else tuple
    return GradientMoments(as_params(mean), as_params(sum_sq), as_params(var))


# --- checked public API ---------------------------------------------------------------------------
def check_row_weights(row_weights, n_rows: int, dtype) -> Array | None:
    """``None``, or validated row weights (N,): :func:`mlds_jax.validation.check_row_weights`."""
    return validation.check_row_weights(row_weights, n_rows, dtype)


def _call_checked(core_fn, params, X, Y, loss, row_weights, **static):
    """Host checks of shapes, dtypes and labels; the core; finiteness from inside it."""
    X2, Y2 = validation.check_batch(params, X, Y, loss, deferred=True)
    w = check_row_weights(row_weights, X2.shape[0], X2.dtype)
    return call_checked(
        core_fn,
        (params, X2, Y2),
        {"row_weights": w},
        static={"loss": loss, **static},
        recheck=lambda: validation.check_batch(params, X, Y, loss),
    )


def per_example_grads(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, row_weights: ArrayLike | None = None
) -> Params:
    r"""Every example's own gradient ∇ℓ_n, materialised, equations (P1), (P2).

    ∇_{W^(l)} ℓ_n = a_nᵀ δ̂_n (outer product of the layer's input row and its unscaled output
    gradient), ∇_{b^(l)} ℓ_n = δ̂_n.  Unscaled: the mean over axis 0 is ``manual_grads`` (mean
    loss).  Costs N·|θ| memory, as ``jax.vmap(jax.grad(...))``; the norms, Gram matrix and
    moments below never build it.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets as for :func:`mlds_jax.loss` (labels (N,) for cross-entropy).
      loss: loss name.
      row_weights: optional w, (N,), ≥ 0: rows with w_n = 0 are padding and get a zero gradient;
        positive weights do not rescale.

    Returns:
      Like params, every leaf with a leading axis N: ``W`` (N, fan_in, fan_out), ``b`` (N, fan_out).
    """
    return _call_checked(per_example_grads_core, params, X, Y, loss, row_weights)


def per_example_grad_norms(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    by_layer: bool = False,
    row_weights: ArrayLike | None = None,
) -> Array:
    r"""‖∇ℓ_n‖₂ over all W and b, from (‖a_n‖² + 1)‖δ̂_n‖² per layer, equation (P3).

    Nothing of size N·|θ| is formed: memory O(N·Σ widths), the cost of one backward pass.

    Args:
      params, X, Y, loss: as for :func:`per_example_grads`.
      by_layer: return each layer's ‖(∇_{W^(l)}ℓ_n, ∇_{b^(l)}ℓ_n)‖₂ separately.
      row_weights: optional w, (N,); padding rows (w_n = 0) get norm 0.

    Returns:
      (N,), or (N, L) with ``by_layer`` (the root of the row's sum of squares is the total).
    """
    if not isinstance(by_layer, bool):
        raise TypeError(f"by_layer must be a bool, got {by_layer!r}")
    return _call_checked(
        per_example_grad_norms_core, params, X, Y, loss, row_weights, by_layer=by_layer
    )


def gradient_gram(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, row_weights: ArrayLike | None = None
) -> Array:
    r"""The Gram matrix of the per-example gradients, G_nm = ⟨∇ℓ_n, ∇ℓ_m⟩, equation (P4).

    Σ_l (A^(l−1) A^(l−1)ᵀ + 1) ⊙ (δ̂^(l) δ̂^(l)ᵀ): memory O(N² + N·Σ widths).

    Args:
      params, X, Y, loss, row_weights: as for :func:`per_example_grads`.

    Returns:
      (N, N), symmetric positive semi-definite; zero rows and columns for padding.
    """
    return _call_checked(gradient_gram_core, params, X, Y, loss, row_weights)


def gradient_cross_gram(
    params: Params, X1: ArrayLike, Y1: ArrayLike, X2: ArrayLike, Y2: ArrayLike, loss: str
) -> Array:
    r"""⟨∇ℓ_i, ∇ℓ_j⟩ between every example of one set and every example of another, (P4), (P8).

    .. math:: C_{ij} = \sum_l \big(a^{(l-1)}_i \cdot a^{(l-1)}_j + 1\big)
              \big(\hat\delta^{(l)}_i \cdot \hat\delta^{(l)}_j\big)

    with a, δ̂ of x1_i on the left and of x2_j on the right (unscaled per-example gradients),
    by the ghost identity: no per-example gradient is formed.  With training examples as set
    1 and test examples as set 2, C_ij is TracIn's influence (Pruthi et al. 2020) at these
    parameters: one SGD step of size η on example i changes the loss of test example j by
    −η C_ij to first order (P8), so large positive entries are helpful training examples
    (the step lowers the test loss), large negative ones harmful.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X1: first set's inputs, (N1, n_in).  Y1: its targets as for :func:`mlds_jax.loss`.
      X2: second set's inputs, (N2, n_in).  Y2: its targets.
      loss: loss name.

    Returns:
      C, (N1, N2); ``gradient_cross_gram(p, X, Y, X, Y, loss)`` is :func:`gradient_gram`.
    """
    X1p, Y1p = validation.check_batch(params, X1, Y1, loss, x_name="X1", y_name="Y1", deferred=True)
    X2p, Y2p = validation.check_data(params, X2, Y2, loss, x_name="X2", y_name="Y2", deferred=True)

    def recheck():
        validation.check_batch(params, X1, Y1, loss, x_name="X1", y_name="Y1")
        validation.check_data(params, X2, Y2, loss, x_name="X2", y_name="Y2")

    return call_checked(
        gradient_cross_gram_core,
        (params, X1p, Y1p),
        {"X2": X2p, "Y2": Y2p},
        static={"loss": loss},
        also_finite=("X2",),
        recheck=recheck,
    )


def gradient_moments(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, row_weights: ArrayLike | None = None
) -> GradientMoments:
    r"""Elementwise moments of the per-example gradients, equations (P5), (P6).

    ``.mean`` = Σ_n w_n ∇ℓ_n (= ``manual_grads`` for the default w_n = 1/N), ``.sum_sq`` =
    Σ_n (∇ℓ_n)², ``.variance`` = (1/N) Σ_n (∇ℓ_n − mean)² (population variance; with weights,
    weighted by p_n = w_n / Σ w), all elementwise, via Σ_n (∇_W ℓ_n)² = (A⊙A)ᵀ(δ̂⊙δ̂).

    Args:
      params, X, Y, loss: as for :func:`per_example_grads`.
      row_weights: optional w, (N,), ≥ 0: zero rows are padding and take no part.

    Returns:
      :class:`GradientMoments` of three pytrees like params.
    """
    return _call_checked(gradient_moments_core, params, X, Y, loss, row_weights)
