r"""``mlp(params, X)``: the forward pass as a ``jax.custom_vjp`` whose VJP is the hand-derived one.

Any JAX program that differentiates through :func:`mlp` in reverse mode (``jax.grad``,
``jax.vjp``, ``jax.value_and_grad``, optax training loops, a loss the core does not know) gets
∂L/∂W, ∂L/∂b and ∂L/∂X from the notes' rules, equation (P7) of ``docs/derivations.md``:

* the cotangent Ȳ = ∂L/∂Ŷ enters as ∂L/∂A^(L);
* δ^(L) = the output activation's backward of Ȳ (Ȳ ⊙ f'(Z^(L)) (B5), or softmax's VJP (A7));
* for l = L, ..., 1: ∂L/∂W^(l), ∂L/∂b^(l), ∂L/∂A^(l−1) = ``core.dense_backward`` (B2)-(B4),
  then δ^(l−1) = f_{l−1}'s backward (B5); ∂L/∂X = ∂L/∂A^(0).

Pure forward mode is not available: ``jax.jvp`` and ``jax.jacfwd`` through :func:`mlp` raise
JAX's ``TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function.``
(jax-ml/jax#16049); differentiate :func:`mlds_jax.forward` (plain JAX operations) for those, or
use ``jax.jacrev``.  ``jax.hessian`` (forward over reverse) *does* work: its forward pass
differentiates the hand-derived backward, which is itself made of JAX operations (checked
against the Hessian through :func:`mlds_jax.forward` in ``tests/test_mlp.py``).
"""

from __future__ import annotations

import jax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.layers import Params

__all__ = ["mlp", "mlp_backward", "mlp_core"]


def mlp_backward(params: Params, cache: core.ForwardCache, Y_bar: Array) -> tuple[Params, Array]:
    r"""The hand-derived VJP of Ŷ = mlp(params, X), equation (P7).

    Args:
      params: L layers.
      cache: ``core.forward_cache(params, X)``.
      Y_bar: the cotangent ∂L/∂Ŷ, (N, n_out).

    Returns:
      (∂L/∂params like params, ∂L/∂X of shape (N, n_in)).
    """
    out = params[-1].activation
    delta_L = ACTIVATIONS[out].backward(Y_bar, cache.Z(len(params)))  # (B5) or (A7)
    result = core.backward_from_delta(params, cache, delta_L)  # (B2)-(B5)
    return result.grads, result.dX  # (P7)


@jax.custom_vjp
def mlp_core(params: Params, X: Array) -> Array:
    """Ŷ = A^(L) (F1), with the hand-derived VJP (P7).  Unchecked: X in the params' dtype."""
    return core.forward(params, X)


def _mlp_fwd(params, X):
    cache = core.forward_cache(params, X)
    return cache.As[-1], (params, cache)


def _mlp_bwd(residuals, Y_bar):
    params, cache = residuals
    return mlp_backward(params, cache, Y_bar)


mlp_core.defvjp(_mlp_fwd, _mlp_bwd)


def mlp(params: Params, X: ArrayLike) -> Array:
    r"""Ŷ = A^(L), differentiable in reverse mode by the hand-derived backward (P7).

    Shapes are checked (also under a user's ``jit``/``grad``); parameter and data values are
    checked when concrete.  Pure forward mode (``jax.jvp``, ``jax.jacfwd``) raises JAX's
    "can't apply forward-mode autodiff (jvp) to a custom_vjp function": use
    :func:`mlds_jax.forward` or ``jax.jacrev`` there.  ``jax.hessian`` works (forward mode over
    the hand-derived backward).

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in); cast to the params' dtype.

    Returns:
      Ŷ, (N, n_out).

    Example:
      >>> g = jax.grad(lambda p: jnp.sum(mj.mlp(p, X) ** 2))(params)  # hand-derived backward
    """
    validation.check_params(params)
    validation.check_params_finite(params)
    X = validation.check_X(params, X)
    return mlp_core(params, X)
