r"""Hand-derived backpropagation: the notes' chain rule, layer by layer.

Notation (batch-major; the lecture's single-sample formulas stacked row-wise):

.. math::
   \delta^{(L)} = \frac{\partial L}{\partial Z^{(L)}}
       = \frac{\partial L}{\partial \hat Y} \odot f_L'(Z^{(L)})
   \qquad\text{(or its fused form } \tfrac1N(A^{(L)}-Y)\text{)}

   \frac{\partial L}{\partial W^{(l)}} = A^{(l-1)\,T}\,\delta^{(l)},\qquad
   \frac{\partial L}{\partial b^{(l)}} = \textstyle\sum_{\text{rows}} \delta^{(l)},\qquad
   \frac{\partial L}{\partial A^{(l-1)}} = \delta^{(l)}\,W^{(l)\,T}

   \delta^{(l-1)} = \big(\delta^{(l)} W^{(l)\,T}\big) \odot f_{l-1}'(Z^{(l-1)})

Sources: MLDS notes ("Fully connected layer": dL/dW = Xᵀ dL/dY, dL/dX = dL/dY Wᵀ,
dL/dB = dL/dY summed over the batch; "Putting it all together", steps 1-7); sigmoid notes
(steps 1-4: ∂C/∂z^L, ∂C/∂z^l = [(w^{l+1})ᵀ ∂C/∂z^{l+1}] ⊙ σ'(z^l), ∂z/∂w = a^{l-1},
∂z/∂b = 1); lecture ("Backward propagation, MLP"; ∂L/∂W^{(l)} = ∂L/∂Z^{(l)T} · A^{(l-1)},
the transpose of ours because its W is (out, in); ∂L/∂b = ∂L/∂Z^T · 1^N); BCE notes
(∂L/∂W = (1/m) Σ (A − y) A_prevᵀ, ∂L/∂b = (1/m) Σ (A − y)).

Every function here is pure and jit-able.  The 1/N of the average loss enters once, in the
output δ; nothing downstream averages again (the classic bias-gradient bug).
"""

from __future__ import annotations

import functools

import jax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import _checks
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.losses import get_loss
from mlds_jax.network import Dense, ForwardCache, Params, _forward_cache, _loss_from_cache

#: dense_backward materialises A_prevᵀ when it has at most this many entries (see there).
_MATERIALISE_TRANSPOSE_MAX_ELEMENTS = 65536

__all__ = [
    "backward_deltas",
    "dense_backward",
    "manual_grads",
    "output_delta",
]


def output_delta(
    cache: ForwardCache,
    Y: Array,
    loss: str,
    output_activation: str,
    *,
    fused: bool = True,
    row_weights: Array | None = None,
) -> Array:
    r"""δ^{(L)} = ∂L/∂Z^{(L)} at the output layer.

    General path (MLDS notes, "Activation function": dL/dX = dL/dY ⊙ f'(X); sigmoid notes
    step 1: ∂C/∂z^L = ∂C/∂a^L ∘ σ'(z^L); softmax through its Jacobian-vector product):

    .. math:: \delta^{(L)} = \frac{\partial L}{\partial \hat Y} \odot f'(Z^{(L)})

    Fused path, when ``fused`` and the pair is matched (sigmoid + BCE, softmax + CE,
    identity + half squared error, identity + MSE): the simplified δ from
    :func:`mlds_jax.losses.matched_delta`, which never divides by ŷ.

    Args:
      cache: the forward cache; uses Z^{(L)} = ``cache.Zs[-1]`` and Ŷ = ``cache.As[-1]``, (N, K).
      Y: targets, (N, K), already prepared (one-hot for cross-entropy).
      loss: loss name.
      output_activation: the output layer's activation name.
      fused: use the simplified δ where the notes derive one.
      row_weights: optional (N,) weights summing to 1 (default 1/N each).

    Returns:
      δ^{(L)}, (N, K).
    """
    spec = get_loss(loss)
    Z, A = cache.Zs[-1], cache.As[-1]
    if fused and output_activation in spec.fused:
        return spec.fused[output_activation](A, Y, row_weights)
    dA = spec.dA(A, Y, row_weights)  # dL/dŶ
    return ACTIVATIONS[output_activation].backward(dA, Z)  # ⊙ f'(Z), or softmax's JVP


def dense_backward(delta: Array, A_prev: Array, W: Array) -> tuple[Array, Array, Array]:
    r"""Backprop through Z = A_prev W + b (MLDS notes, "Fully connected layer").

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
    A_prev_T = A_prev.T
    if A_prev.size <= _MATERIALISE_TRANSPOSE_MAX_ELEMENTS:
        # Layout, not maths: XLA:CPU otherwise folds the transpose into the dot as a
        # contraction over rows, which it runs with Eigen; a materialised Aᵀ makes it a plain
        # (d_in, N) @ (N, d_out) product that its YNNPACK kernels take.  Measured on 2 cores
        # (whole epochs, interleaved): −4% (digits, batch 32), −7% (batch 256); for larger
        # activations (MNIST-size) the copy costs about what it saves, so they keep Eigen.
        A_prev_T = jax.lax.optimization_barrier(A_prev_T)
    dW = A_prev_T @ delta  # ∂L/∂w_ij = Σ_p x_pi ∂L/∂y_pj  →  Xᵀ dL/dY
    db = delta.sum(axis=0)  # ∂L/∂b_j = Σ_p ∂L/∂y_pj (∂z/∂b = 1, summed over the batch: 1ᵀ δ)
    dA_prev = delta @ W.T  # ∂L/∂x_i = Σ_j ∂L/∂y_j w_ij  →  dL/dY Wᵀ
    return dW, db, dA_prev


def _backward(
    params: Params,
    cache: ForwardCache,
    Y: Array,
    loss: str,
    *,
    fused: bool = True,
    row_weights: Array | None = None,
) -> tuple[Params, tuple[Array, ...]]:
    """The backward pass: returns (grads, deltas); no validation (jit-internal)."""
    delta = output_delta(cache, Y, loss, params[-1].activation, fused=fused,
                         row_weights=row_weights)
    grads: list[Dense] = []
    deltas: list[Array] = []
    for l in range(len(params) - 1, -1, -1):
        layer = params[l]
        deltas.append(delta)
        dW, db, dA_prev = dense_backward(delta, cache.As[l], layer.W)
        grads.append(Dense(W=dW, b=db, activation=layer.activation))
        if l > 0:
            # δ^{(l-1)} = (δ^{(l)} W^{(l)T}) ⊙ f'(Z^{(l-1)})  (sigmoid notes step 2;
            # MLDS "Backward Pass" steps 4-5; lecture ∂L/∂z^{(2)} = ∂L/∂a^{(2)} ⊗ ∂g_2/∂z^{(2)})
            prev = params[l - 1]
            delta = ACTIVATIONS[prev.activation].backward(dA_prev, cache.Zs[l - 1])
    grads_out = tuple(reversed(grads))
    if isinstance(params, list):  # grads mirror the params' structure (as jax.grad's do)
        grads_out = list(grads_out)
    return grads_out, tuple(reversed(deltas))


def _manual_value_and_grads(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    *,
    fused: bool = True,
    row_weights: Array | None = None,
) -> tuple[Array, Params]:
    """One forward pass, the loss value from its cache, then the hand-derived backward."""
    value, _, grads = _manual_value_and_grads_aux(params, X, Y, loss, row_weights, fused)
    return value, grads


def _manual_value_and_grads_aux(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None,
    fused: bool = True,
) -> tuple[Array, Array, Params]:
    """(L, Ŷ, grads) from one forward pass: what a train step needs for its metrics."""
    cache = _forward_cache(params, X)
    value = _loss_from_cache(cache, Y, loss, row_weights)
    grads, _ = _backward(params, cache, Y, loss, fused=fused, row_weights=row_weights)
    return value, cache.As[-1], grads


@functools.partial(jax.jit, static_argnums=(3, 4))
def _deltas_jit(params: Params, X: Array, Y: Array, loss: str, fused: bool):
    return _backward(params, _forward_cache(params, X), Y, loss, fused=fused)[1]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _manual_grads_jit(params: Params, X: Array, Y: Array, loss: str, fused: bool):
    return _manual_value_and_grads(params, X, Y, loss, fused=fused)[1]


def backward_deltas(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, fused: bool = True
) -> tuple[Array, ...]:
    """Every layer's δ^{(l)} = ∂L/∂Z^{(l)}, for teaching (the lecture prints them layer by layer).

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in).
      Y: targets (see :func:`mlds_jax.loss`).
      loss: loss name.
      fused: use the simplified output δ for matched pairs.

    Returns:
      (δ^{(1)}, ..., δ^{(L)}), δ^{(l)} of shape (N, sizes[l]).
    """
    X, Y = _checks.check_batch(params, X, Y, loss)
    return _deltas_jit(params, X, Y, loss, fused)


def manual_grads(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, fused: bool = True
) -> Params:
    r"""∂L/∂W^{(l)} and ∂L/∂b^{(l)} for every layer, derived by hand (no autodiff).

    Implements the MLDS notes' "Putting it all together" (forward pass, then backward steps
    1-7) generalised to any depth by the sigmoid notes' recursion (step 2); see the module
    docstring for the equations and :func:`mlds_jax.autodiff_grads` for the jax.grad
    cross-check.

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in).
      Y: targets (see :func:`mlds_jax.loss`).
      loss: loss name.
      fused: use the simplified output δ = (A − Y)/N for matched output/loss pairs
        (``False`` runs the general dL/dŶ ⊙ f'(Z) path; both agree, see the tests).

    Returns:
      Gradients with exactly the structure of ``params``: ``grads[l].W`` (fan_in, fan_out),
      ``grads[l].b`` (fan_out,).
    """
    X, Y = _checks.check_batch(params, X, Y, loss)
    return _manual_grads_jit(params, X, Y, loss, fused)
