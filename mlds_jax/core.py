r"""The public core: pure, unchecked, jit-able forward and backward passes.

**Inputs must already be prepared**: params a tuple of :class:`~mlds_jax.layers.Dense`
checked by :func:`mlds_jax.validation.check_model`, ``X`` (N, n_in) and ``Y`` (N, K) in the
parameters' dtype (labels one-hot), e.g. from :func:`mlds_jax.validation.check_batch` or
:func:`mlds_jax.network.prepare_targets`.  Nothing here validates, so everything traces under
``jax.jit``, ``jax.vmap`` and ``jax.grad``; the checked public API (``mj.forward``,
``mj.manual_grads``, ...) validates once and calls these.

Notation: layers are numbered l = 1..L as in the notes, with A^(0) = X; ``params[l - 1]`` is
layer l, ``cache.Z(l)`` is Z^(l), ``cache.A(l)`` is A^(l), ``deltas[l - 1]`` is δ^(l).

Row weights w (N,) weight the per-example loss terms, L = Σ_n w_n ℓ_n (L1); ``None`` means
w_n = 1/N.  Zero-weight rows (padding) contribute nothing to the value or the gradients.

What the core offers the extensions (per-example gradients, curvature): every layer's input
A^(l−1) (``forward_cache``), every layer's δ^(l) (``backward``), the per-example loss terms
ℓ_n (``loss_terms``); the unscaled per-example output gradient δ̂_n is ``output_delta`` with
``row_weights = ones``.  :func:`backward_from_delta` is the one backward loop (B2)-(B5), run
from any output δ^(L): the loss's (``backward``), a cotangent's (``mlds_jax.mlp``'s VJP), a
square-root factor's column (the curvature extensions).
"""

from __future__ import annotations

from typing import NamedTuple, cast

import jax
from jax import Array

from mlds_jax.activations import ACTIVATIONS
from mlds_jax.layers import Dense, Params
from mlds_jax.losses import get_loss

__all__ = [
    "GRAD_METHODS",
    "Backward",
    "ForwardCache",
    "backward",
    "backward_from_delta",
    "batch_loss",
    "dense_backward",
    "dense_forward",
    "forward",
    "forward_cache",
    "loss_terms",
    "loss_value",
    "output_delta",
    "value_and_grads",
    "value_grads_output",
]

#: The two sources of gradients: the hand-derived backward or ``jax.grad``.
GRAD_METHODS = ("manual", "autodiff")


class ForwardCache(NamedTuple):
    """Every layer's pre-activation and activation, for teaching and for backprop.

    Attributes:
      Zs: (Z^(1), ..., Z^(L)), Z^(l) of shape (N, sizes[l]).
      As: (A^(0) = X, A^(1), ..., A^(L) = Ŷ), A^(l) of shape (N, sizes[l]).

    ``Z(l)`` and ``A(l)`` read them in the notes' numbering (1-based for Z, A(0) = X).
    """

    Zs: tuple[Array, ...]
    As: tuple[Array, ...]

    def Z(self, l: int) -> Array:  # noqa: N802 (the notes' symbol)
        """Z^(l), l = 1..L; (N, sizes[l])."""
        if not 1 <= l <= len(self.Zs):
            raise IndexError(f"Z^(l) exists for l = 1..{len(self.Zs)}, got l = {l}")
        return self.Zs[l - 1]

    def A(self, l: int) -> Array:  # noqa: N802 (the notes' symbol)
        """A^(l), l = 0..L (A^(0) = X, A^(L) = Ŷ); (N, sizes[l])."""
        if not 0 <= l < len(self.As):
            raise IndexError(f"A^(l) exists for l = 0..{len(self.As) - 1}, got l = {l}")
        return self.As[l]


class Backward(NamedTuple):
    """What the backward pass produces.

    Attributes:
      grads: ∂L/∂W^(l), ∂L/∂b^(l) with exactly the structure of params.
      deltas: (δ^(1), ..., δ^(L)), δ^(l) = ∂L/∂Z^(l) of shape (N, sizes[l]).
      dX: ∂L/∂X = δ^(1) W^(1)ᵀ, (N, n_in) (under ``jax.jit`` it is dead code, never
        computed, unless read).
    """

    grads: Params
    deltas: tuple[Array, ...]
    dX: Array


# --- forward (F1) ---------------------------------------------------------------------------
def dense_forward(layer: Dense, A_prev: Array) -> tuple[Array, Array]:
    r"""Z = A_prev W + b, A = f(Z), equation (F1).

    Args:
      layer: the layer, W (d_in, d_out), b (d_out,).
      A_prev: input, (N, d_in).

    Returns:
      Z, A, each (N, d_out).
    """
    # b is (d_out,): broadcast it explicitly to a row so strict rank promotion is happy.
    Z = A_prev @ layer.W + layer.b[None, :]
    return Z, ACTIVATIONS[layer.activation].fn(Z)


def forward(params: Params, X: Array) -> Array:
    """Ŷ = A^(L), equation (F1) layer after layer, keeping nothing else; (N, n_out)."""
    A = X
    for layer in params:
        _, A = dense_forward(layer, A)
    return A


def forward_cache(params: Params, X: Array) -> ForwardCache:
    """The forward pass keeping every Z^(l) and A^(l) (F1): what the backward pass reads."""
    A = X
    Zs, As = [], [A]
    for layer in params:
        Z, A = dense_forward(layer, A)
        Zs.append(Z)
        As.append(A)
    return ForwardCache(tuple(Zs), tuple(As))


# --- loss (L1) ------------------------------------------------------------------------------
def loss_terms(cache: ForwardCache, Y: Array, loss: str) -> Array:
    """ℓ_n, each example's own loss, from the cache's Z^(L) and Ŷ; (N,).  (L2)-(L5)."""
    return get_loss(loss).terms(cache.Zs[-1], cache.As[-1], Y)


def loss_value(cache: ForwardCache, Y: Array, loss: str, row_weights: Array | None = None) -> Array:
    """L = Σ_n w_n ℓ_n (L1) from a forward cache; scalar."""
    return get_loss(loss).value(cache.Zs[-1], cache.As[-1], Y, row_weights)


def batch_loss(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Array:
    """L(params) = Σ_n w_n ℓ_n: the function ``jax.grad`` differentiates; scalar."""
    return loss_value(forward_cache(params, X), Y, loss, row_weights)


# --- backward (B1)-(B5) ---------------------------------------------------------------------
def output_delta(
    cache: ForwardCache,
    Y: Array,
    loss: str,
    output_activation: str,
    *,
    fused: bool = True,
    row_weights: Array | None = None,
) -> Array:
    r"""δ^(L) = ∂L/∂Z^(L) at the output layer.

    General path, equation (B1): δ^(L) = ∂L/∂Ŷ ⊙ f'(Z^(L)) (softmax through its
    vector-Jacobian product (A7)), with ∂L/∂Ŷ = w ⊙ dℓ/dŶ (L7).

    Fused path, when ``fused`` and the pair is matched (sigmoid + BCE, softmax + CE,
    identity + half squared error, identity + MSE): δ^(L) = w ⊙ δ̂ with the simplified
    δ̂ of equation (L6), which never divides by ŷ.

    With ``row_weights = jnp.ones(N)`` the result is the unscaled per-example δ̂_n = dℓ_n/dz_n.

    Args:
      cache: the forward cache; uses Z^(L) = ``cache.Zs[-1]`` and Ŷ = ``cache.As[-1]``, (N, K).
      Y: targets, (N, K), already prepared (one-hot for cross-entropy).
      loss: loss name.
      output_activation: the output layer's activation name.
      fused: use the simplified δ where the notes derive one.
      row_weights: optional w, (N,) (default 1/N each).

    Returns:
      δ^(L), (N, K).
    """
    spec = get_loss(loss)
    Z, A = cache.Zs[-1], cache.As[-1]
    if fused and output_activation in spec.term_fused:
        return spec.fused[output_activation](A, Y, row_weights)  # (L6), (L7)
    dA = spec.dA(A, Y, row_weights)  # ∂L/∂Ŷ, (L7)
    return ACTIVATIONS[output_activation].backward(dA, Z)  # (B1)


def dense_backward(delta: Array, A_prev: Array, W: Array) -> tuple[Array, Array, Array]:
    r"""Backprop through Z = A_prev W + b: equations (B2), (B3), (B4).

    .. math:: \frac{\partial L}{\partial W} = A_{prev}^T\,\delta,\quad
              \frac{\partial L}{\partial b} = \textstyle\sum_{rows}\delta,\quad
              \frac{\partial L}{\partial A_{prev}} = \delta\,W^T

    Args:
      delta: dL/dZ, (N, d_out).
      A_prev: the layer's input, (N, d_in).
      W: weights, (d_in, d_out).

    Returns:
      dW (d_in, d_out), db (d_out,), dA_prev (N, d_in).
    """
    dW = A_prev.T @ delta  # (B2): ∂L/∂w_ij = Σ_n a_ni δ_nj
    db = delta.sum(axis=0)  # (B3): ∂z/∂b = 1, summed over the rows
    dA_prev = delta @ W.T  # (B4): ∂L/∂a_ni = Σ_j δ_nj w_ij
    return dW, db, dA_prev


def backward_from_delta(params: Params, cache: ForwardCache, delta_L: Array) -> Backward:
    r"""The backward loop (B2)-(B5) from a given output δ^(L), in the notes' numbering.

    .. math::
       \partial L/\partial W^{(l)} = A^{(l-1)T}\delta^{(l)}, \quad
       \partial L/\partial b^{(l)} = \textstyle\sum_n \delta^{(l)}_n \quad\text{(B2), (B3)},\qquad
       \delta^{(l-1)} = \big(\delta^{(l)} W^{(l)T}\big) \odot f_{l-1}'(Z^{(l-1)})
       \quad\text{(B4), (B5)}

    for l = L, ..., 1; ∂L/∂X = δ^(1) W^(1)ᵀ.  Every backward of the package runs this loop:
    :func:`backward` from the loss's δ^(L), ``mlds_jax.mlp``'s VJP from a cotangent, the
    curvature extensions from tangents and square-root factor columns.

    Args:
      params: L layers.
      cache: ``forward_cache(params, X)``; uses A^(0..L−1) and Z^(1..L−1).
      delta_L: δ^(L) = ∂L/∂Z^(L), (N, sizes[L]).

    Returns:
      :class:`Backward` (grads like params, deltas (δ^(1), ..., δ^(L)), dX).
    """
    L = len(params)

    def layer(l: int) -> Dense:  # W^(l), b^(l), f_l
        return params[l - 1]

    delta: dict[int, Array] = {L: delta_L}
    dW: dict[int, Array] = {}
    db: dict[int, Array] = {}
    dA_prev = delta_L
    for l in range(L, 0, -1):
        dW[l], db[l], dA_prev = dense_backward(delta[l], cache.A(l - 1), layer(l).W)  # (B2)-(B4)
        if l > 1:
            f = ACTIVATIONS[layer(l - 1).activation]
            delta[l - 1] = f.backward(dA_prev, cache.Z(l - 1))  # (B5)
    grads = [Dense(W=dW[l], b=db[l], activation=layer(l).activation) for l in range(1, L + 1)]
    # grads mirror the params' container (as jax.grad's do)
    deltas = tuple(delta[l] for l in range(1, L + 1))
    grads_out = cast(Params, grads if isinstance(params, list) else tuple(grads))
    return Backward(grads_out, deltas, dA_prev)  # dA_prev = ∂L/∂A^(0) = ∂L/∂X


def backward(
    params: Params,
    cache: ForwardCache,
    Y: Array,
    loss: str,
    *,
    fused: bool = True,
    row_weights: Array | None = None,
) -> Backward:
    r"""The backward pass in the notes' numbering: every gradient and every δ.

    .. math::
       \delta^{(L)} &= \text{output\_delta}   &&\text{(B1) or (L6), scaled by } w \text{ (L7)}\\
       \partial L/\partial W^{(l)} &= A^{(l-1)T}\delta^{(l)}, \quad
       \partial L/\partial b^{(l)} = \textstyle\sum_n \delta^{(l)}_n &&\text{(B2), (B3)}\\
       \delta^{(l-1)} &= \big(\delta^{(l)} W^{(l)T}\big) \odot f_{l-1}'(Z^{(l-1)})
       &&\text{(B4), (B5)}

    for l = L, ..., 1 (:func:`backward_from_delta`).  The 1/N (or w) enters once, in δ^(L);
    nothing downstream averages again.

    Args:
      params: L layers.
      cache: ``forward_cache(params, X)``.
      Y: prepared targets, (N, K).
      loss: loss name.
      fused: simplified output δ for matched pairs (L6).
      row_weights: optional w, (N,).

    Returns:
      :class:`Backward` (grads like params, deltas (δ^(1), ..., δ^(L)), dX).
    """
    delta_L = output_delta(
        cache, Y, loss, params[-1].activation, fused=fused, row_weights=row_weights
    )
    return backward_from_delta(params, cache, delta_L)


# --- value and gradients --------------------------------------------------------------------
def value_grads_output(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    *,
    row_weights: Array | None = None,
    method: str = "manual",
    fused: bool = True,
) -> tuple[Array, Params, Array]:
    """(L, ∂L/∂params, Ŷ) from one forward pass: what a training step needs.

    ``method="manual"`` runs :func:`backward`; ``"autodiff"`` runs ``jax.value_and_grad``
    of :func:`batch_loss` (``fused`` then does not apply).
    """
    if method == "manual":
        cache = forward_cache(params, X)
        value = loss_value(cache, Y, loss, row_weights)
        grads = backward(params, cache, Y, loss, fused=fused, row_weights=row_weights).grads
        return value, grads, cache.As[-1]
    if method == "autodiff":

        def value_and_output(p):
            cache = forward_cache(p, X)
            return loss_value(cache, Y, loss, row_weights), cache.As[-1]

        (value, Y_hat), grads = jax.value_and_grad(value_and_output, has_aux=True)(params)
        return value, grads, Y_hat
    raise ValueError(f"method must be one of {list(GRAD_METHODS)}, got {method!r}")


def value_and_grads(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    *,
    row_weights: Array | None = None,
    method: str = "manual",
    fused: bool = True,
) -> tuple[Array, Params]:
    """(L, ∂L/∂params) by the hand-derived backward (``"manual"``) or ``jax.grad``."""
    value, grads, _ = value_grads_output(
        params, X, Y, loss, row_weights=row_weights, method=method, fused=fused
    )
    return value, grads
