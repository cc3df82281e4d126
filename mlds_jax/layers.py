r"""The MLP's parameters as a pytree: one :class:`Dense` per layer, ``Params`` a tuple of them.

Convention (batch-major, rows are examples): for layer l, equation (F1) of
``docs/derivations.md``,

.. math:: Z^{(l)} = A^{(l-1)} W^{(l)} + b^{(l)},\qquad A^{(l)} = f_l(Z^{(l)}),\qquad A^{(0)} = X

with ``X (N, n_in)``, ``W (fan_in, fan_out)``, ``b (fan_out,)``.  The lecture notes
(``lecture-forward-backward-training.md``) write ``Z = X W^T + b`` with their W of shape
(out, in): our ``W`` is the lecture's ``W^T``.

Each :class:`Dense` holds the leaves ``W`` and ``b`` and, as static metadata, its activation
name, so ``forward(params, X)`` needs nothing else.  Leaves flatten in the order W1, b1, W2,
b2, ...; ``jax.grad``, optax, ``jax.tree_util`` and chex work on it unchanged.

This module imports nothing from the package.
"""

from __future__ import annotations

import dataclasses

import jax
from jax import Array

__all__ = ["Dense", "Params", "layer_sizes"]


@dataclasses.dataclass(frozen=True)
class Dense:
    """One fully connected layer: Z = X W + b, A = f(Z).

    Attributes:
      W: weights, shape (fan_in, fan_out) (the lecture's W^T).
      b: bias, shape (fan_out,).
      activation: name of f in ``mlds_jax.activations.ACTIVATIONS`` (static, not a leaf).
    """

    W: Array
    b: Array
    activation: str = "identity"

    def __repr__(self) -> str:
        shape = getattr(self.W, "shape", "?")
        dtype = getattr(self.W, "dtype", "?")
        return f"Dense(W={tuple(shape)}, activation={self.activation!r}, dtype={dtype})"


jax.tree_util.register_dataclass(Dense, data_fields=["W", "b"], meta_fields=["activation"])

#: The parameters of an L-layer MLP: ``params[l - 1]`` is layer l of the notes.
Params = tuple[Dense, ...]


def layer_sizes(params: Params) -> list[int]:
    """``[n_in, h_1, ..., n_out]`` of a params tuple."""
    return [int(params[0].W.shape[0])] + [int(layer.W.shape[1]) for layer in params]
