r"""Losses: each value, its hand-derived dL/dŶ, and the fused δ for matched output/loss pairs.

Symbols (batch-major, as the MLDS notes):
  N  rows of the batch, K outputs per row,
  Z  output pre-activation (N, K),  A = Ŷ = f(Z) the output (N, K),  Y targets (N, K),
  r  row weights (N, 1): r_p = 1/N by default, so every loss is an average over rows,
     L = Σ_p r_p ℓ_p  (lecture: "LOSS = 1/N Σ_p div(ŷ_p, y_p)").  A padding mask m gives
     r_p = m_p / Σ m (data-parallel batches); nothing else changes.

Per-row losses ℓ_p, as the issue fixes the names:
  ``"mse"``                 ℓ_p = (1/K) Σ_k (ŷ_pk − y_pk)²     → L = mean over all N·K entries
  ``"half_squared_error"``  ℓ_p = ½ ‖ŷ_p − y_p‖²
  ``"binary_cross_entropy"`` ℓ_p = Σ_k −[y ln ŷ + (1 − y) ln(1 − ŷ)],  ŷ = σ(z)
  ``"cross_entropy"``       ℓ_p = −Σ_k y_pk ln softmax(z_p)_k

Values are computed from the pre-activation Z where a log is involved
(ln σ(z) = −softplus(−z), ln(1 − σ(z)) = −softplus(z), log-softmax via logsumexp), so logits
of ±1000 give finite losses; probabilities-then-log would give inf/NaN there.

This module imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "LOSSES",
    "Loss",
    "bce_dA",
    "bce_value",
    "cross_entropy_dA",
    "cross_entropy_value",
    "get_loss",
    "half_squared_error_dA",
    "half_squared_error_value",
    "matched_delta",
    "mse_dA",
    "mse_value",
]

RowWeights = Array | float


def _rw(row_weights: Array | None, Y: Array) -> RowWeights:
    """Row weights as an (N, 1) column, or the scalar 1/N when no mask is given."""
    if row_weights is None:
        return 1.0 / Y.shape[0]
    return row_weights.reshape(-1, 1).astype(Y.dtype)


# --- mean squared error (MLDS notes) --------------------------------------------------------
def mse_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""L = (1/n) Σ_i (y_i* − y_i)², the mean over all N·K entries (MLDS notes, "Loss function")."""
    del Z
    per_row = jnp.mean((A - Y) ** 2, axis=-1, keepdims=True)
    return jnp.sum(_rw(row_weights, Y) * per_row)


def mse_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""dL/dŶ = (2/n)(Ŷ − Y*), n = N·K (MLDS notes, "Loss function", and "Backward Pass" step 1)."""
    return 2.0 * _rw(row_weights, Y) * (A - Y) / Y.shape[-1]


# --- half squared error (sigmoid notes, lecture) --------------------------------------------
def half_squared_error_value(
    Z: Array, A: Array, Y: Array, row_weights: Array | None = None
) -> Array:
    r"""L = (1/N) Σ_p ½‖ŷ_p − y_p‖² (lecture "MSE loss + id"; sigmoid notes "C = ½(y − ŷ)²")."""
    del Z
    per_row = 0.5 * jnp.sum((A - Y) ** 2, axis=-1, keepdims=True)
    return jnp.sum(_rw(row_weights, Y) * per_row)


def half_squared_error_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""dL/dŶ = (1/N)(Ŷ − Y).

    Lecture, "MSE loss + id": ∂L_1/∂a^{(3)} = a^{(3)T} − y^T per row; the matrix case divides
    by N.  Sigmoid notes step 1: ∂C/∂a^L = −(y − ŷ).
    """
    return _rw(row_weights, Y) * (A - Y)


# --- binary cross-entropy (BCE notes) -------------------------------------------------------
def bce_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""L = (1/M) Σ −[y ln ŷ + (1 − y) ln(1 − ŷ)], ŷ = σ(z) (BCE notes, "the loss function").

    Computed from Z: −[y ln σ(z) + (1−y) ln σ(−z)] = y·softplus(−z) + (1 − y)·softplus(z),
    finite for any finite z (optax ``sigmoid_binary_cross_entropy`` does the same).
    """
    del A
    per_entry = Y * jax.nn.softplus(-Z) + (1 - Y) * jax.nn.softplus(Z)
    return jnp.sum(_rw(row_weights, Y) * jnp.sum(per_entry, axis=-1, keepdims=True))


def bce_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""dL/dŶ = −y/ŷ + (1 − y)/(1 − ŷ), times 1/N (BCE notes, "∂L/∂ŷ", steps 1-5).

    The general chain-rule path: it divides by ŷ and 1 − ŷ, so it is exact only away from
    saturation; training uses the fused δ = (A − Y)/N instead (see :func:`matched_delta`).
    """
    return _rw(row_weights, Y) * (-Y / A + (1 - Y) / (1 - A))


# --- softmax cross-entropy (lecture) --------------------------------------------------------
def cross_entropy_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""L = (1/N) Σ_p −Σ_k y_pk ln softmax(z_p)_k, via log-softmax (logsumexp) for stability."""
    del A
    per_row = -jnp.sum(Y * jax.nn.log_softmax(Z, axis=-1), axis=-1, keepdims=True)
    return jnp.sum(_rw(row_weights, Y) * per_row)


def cross_entropy_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""dL/dŶ = −(1/N) Y / Ŷ (derivative of −Σ_k y_k ln ŷ_k with respect to ŷ_k).

    General path, exact away from ŷ = 0; training uses the fused δ = (A − Y)/N.
    """
    return -_rw(row_weights, Y) * Y / A


# --- fused output deltas ---------------------------------------------------------------------
def matched_delta(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""δ = dL/dZ = (1/N)(A − Y) for the matched output/loss pairs.

    * sigmoid + binary cross-entropy (BCE notes, last step: ∂L/∂W = (1/m) Σ (A^i − y)(A^{i−1})^T):
      [−y/ŷ + (1−y)/(1−ŷ)] · ŷ(1−ŷ) = ŷ − y.
    * softmax + cross-entropy (lecture): Σ_k (−y_k/a_k) a_k(δ_kj − a_j) = a_j Σ_k y_k − y_j
      = a_j − y_j because each row of Y sums to 1 (one-hot or a distribution: validated).
    * identity + half squared error (lecture, "Matrix case": ∂L/∂Z^{(3)} = (1/N)(A^{(3)} − Y)).

    The shortcut never forms 1/ŷ, so it stays exact when the output saturates.
    """
    return _rw(row_weights, Y) * (A - Y)


def _identity_mse_delta(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    # identity output: dL/dZ = dL/dŶ · 1 (MLDS "Putting it all together", Y = Z^{(2)}).
    return mse_dA(A, Y, row_weights)


@dataclass(frozen=True)
class Loss:
    """A loss with its hand-derived derivative.

    Attributes:
      name: registry key.
      value: (Z, A, Y, row_weights) -> scalar L.
      dA: (A, Y, row_weights) -> dL/dŶ, shape (N, K): the general chain-rule path.
      fused: output activation name -> (A, Y, row_weights) -> dL/dZ, the simplified δ.
      outputs: output activations this loss may follow (None: any).
      targets: "real", "probability" (each entry in [0, 1]) or "class" (labels or one-hot rows).
    """

    name: str
    value: Callable[..., Array]
    dA: Callable[..., Array]
    fused: dict[str, Callable[..., Array]] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    targets: str = "real"

    @property
    def is_classification(self) -> bool:
        return self.targets in ("probability", "class")


LOSSES: dict[str, Loss] = {
    "mse": Loss("mse", mse_value, mse_dA, {"identity": _identity_mse_delta}),
    "half_squared_error": Loss(
        "half_squared_error",
        half_squared_error_value,
        half_squared_error_dA,
        {"identity": matched_delta},
    ),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy",
        bce_value,
        bce_dA,
        {"sigmoid": matched_delta},
        outputs=("sigmoid",),
        targets="probability",
    ),
    "cross_entropy": Loss(
        "cross_entropy",
        cross_entropy_value,
        cross_entropy_dA,
        {"softmax": matched_delta},
        outputs=("softmax",),
        targets="class",
    ),
}


def get_loss(name: str) -> Loss:
    """Look up a loss by name, with an error that lists the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"loss must be a string, one of {list(LOSSES)}; got {name!r}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {list(LOSSES)}")
    return LOSSES[name]
