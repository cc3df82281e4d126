r"""The checked backward API: ``manual_grads`` and ``backward_deltas``.

Both validate once and run the hand-derived backward pass of :mod:`mlds_jax.core`,
equations (B1)-(B5) of ``docs/derivations.md``:

.. math::
   \delta^{(L)} = \frac{\partial L}{\partial \hat Y} \odot f_L'(Z^{(L)})
   \quad\text{(or the fused } w \odot (A^{(L)} - Y)\text{)},\qquad
   \frac{\partial L}{\partial W^{(l)}} = A^{(l-1)T}\delta^{(l)},\quad
   \frac{\partial L}{\partial b^{(l)}} = \textstyle\sum_n \delta^{(l)}_n,\quad
   \delta^{(l-1)} = \big(\delta^{(l)} W^{(l)T}\big) \odot f_{l-1}'(Z^{(l-1)})

``dense_backward`` and ``output_delta`` are the core's, re-exported for teaching.
"""

from __future__ import annotations

import functools

import jax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.core import dense_backward, output_delta
from mlds_jax.layers import Params

__all__ = ["backward_deltas", "dense_backward", "manual_grads", "output_delta"]


@functools.partial(jax.jit, static_argnums=(3, 4))
def _deltas_jit(params: Params, X: Array, Y: Array, loss: str, fused: bool):
    return core.backward(params, core.forward_cache(params, X), Y, loss, fused=fused).deltas


@functools.partial(jax.jit, static_argnums=(3, 4))
def _manual_grads_jit(params: Params, X: Array, Y: Array, loss: str, fused: bool):
    grads = core.backward(params, core.forward_cache(params, X), Y, loss, fused=fused).grads
    return grads, validation.all_finite(params, X)  # the finiteness check, in the same program


def backward_deltas(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, fused: bool = True
) -> tuple[Array, ...]:
    """Every layer's δ^(l) = ∂L/∂Z^(l) (B1)-(B5), for teaching.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets (see :func:`mlds_jax.loss`).
      loss: loss name.
      fused: use the simplified output δ for matched pairs (L6).

    Returns:
      (δ^(1), ..., δ^(L)), δ^(l) of shape (N, sizes[l]).
    """
    X, Y = validation.check_batch(params, X, Y, loss)
    return _deltas_jit(params, X, Y, loss, fused)


def manual_grads(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, fused: bool = True
) -> Params:
    r"""∂L/∂W^(l) and ∂L/∂b^(l) for every layer, derived by hand (no autodiff).

    The forward pass (F1), then the backward pass (B1)-(B5) of ``docs/derivations.md``
    (section 4 lays it beside the seed notes' "Putting It All Together", steps 1-7); see
    :func:`mlds_jax.autodiff_grads` for the jax.grad cross-check.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets (see :func:`mlds_jax.loss`).
      loss: loss name.
      fused: use the simplified output δ = (A − Y)/N for matched output/loss pairs
        (``False`` runs the general dL/dŶ ⊙ f'(Z) path; both agree, see the tests).

    Returns:
      Gradients with exactly the structure of ``params``: ``grads[l].W`` (fan_in, fan_out),
      ``grads[l].b`` (fan_out,).
    """
    X0, Y0 = X, Y
    X, Y = validation.check_batch(params, X, Y, loss, deferred=True)
    grads, ok = _manual_grads_jit(params, X, Y, loss, fused)
    validation.raise_if_not_finite(ok, lambda: validation.check_batch(params, X0, Y0, loss))
    return grads
