r"""Losses as per-example terms ℓ_n plus one weighted reduction, with hand-derived derivatives.

Symbols (batch-major):
  N  rows of the batch, K outputs per row,
  Z  output pre-activation (N, K),  A = Ŷ = f(Z) the output (N, K),  Y targets (N, K),
  w  row weights (N,): w_n = 1/N by default.

Every loss is a sum of per-example terms with one reduction, equation (L1):

.. math:: L = \sum_n w_n\,\ell_n,\qquad w_n = 1/N \text{ by default}

A padding mask m gives w_n = m_n / Σ m (the zero-weight rows of a padded minibatch), sample
weights give any other w; nothing else changes.  Each loss provides, per example and
*unscaled* (without w):

  ``terms(Z, A, Y)``   ℓ_n, shape (N,)
  ``term_dA(A, Y)``    dℓ_n/dŷ_n, shape (N, K)              (L2)-(L5)
  ``term_fused[f](A, Y)``  dℓ_n/dz_n for a matched output f   (L6)

and the batch forms scale row n by w_n, equation (L7): ``value``, ``dA`` and ``fused``.

Second-order facts, read by the curvature extensions (``docs/derivations.md`` section 7):
``logit_outputs`` names the output activations at whose *logits* the generalised Gauss-Newton
matrix is taken (the two log-losses, whose Hessian in z is the output activation's Jacobian,
(H5)), with ``logit_hessian_sqrt`` its square root S_n (H8) and ``sample_logit_grad`` random
ĝ_n with E[ĝ ĝᵀ] = that Hessian (H9); ``output_hessian_scale(K)`` is the constant c of a loss
quadratic in ŷ (Hessian c·I, (H6)), whose GGN is taken at Ŷ.  The
1/N of the average therefore enters once, in the output δ; per-example gradients use the
unscaled forms.

  ``"mse"``                  ℓ_n = (1/K) Σ_k (ŷ_nk − y_nk)²      → L = mean over all N·K entries
  ``"half_squared_error"``   ℓ_n = ½ ‖ŷ_n − y_n‖²
  ``"binary_cross_entropy"`` ℓ_n = Σ_k −[y ln ŷ + (1 − y) ln(1 − ŷ)],  ŷ = σ(z)
  ``"cross_entropy"``        ℓ_n = −Σ_k y_nk ln softmax(z_n)_k

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
    "DEFAULT_LOSS",
    "LOSSES",
    "Loss",
    "bce_dA",
    "bce_logit_hessian_sqrt",
    "bce_sample_logit_grad",
    "bce_term_dA",
    "bce_terms",
    "bce_value",
    "cross_entropy_dA",
    "cross_entropy_logit_hessian_sqrt",
    "cross_entropy_sample_logit_grad",
    "cross_entropy_term_dA",
    "cross_entropy_terms",
    "cross_entropy_value",
    "DEFAULT_REGRESSION_LOSS",
    "default_loss_for",
    "get_loss",
    "half_squared_error_dA",
    "half_squared_error_hessian_scale",
    "half_squared_error_term_dA",
    "half_squared_error_terms",
    "half_squared_error_value",
    "matched_delta",
    "matched_term_delta",
    "mse_dA",
    "mse_hessian_scale",
    "mse_term_dA",
    "mse_terms",
    "mse_value",
    "reduce_terms",
    "scale_rows",
]


# --- the one reduction (L1) and the row scaling (L7) ----------------------------------------
def reduce_terms(terms: Array, row_weights: Array | None = None) -> Array:
    r"""L = Σ_n w_n ℓ_n, equation (L1); w_n = 1/N when ``row_weights`` is None.

    Args:
      terms: ℓ_n, shape (N,).
      row_weights: optional w, shape (N,).

    Returns:
      A scalar in the terms' dtype.
    """
    if row_weights is None:
        return jnp.sum(terms * (1.0 / terms.shape[0]))
    return jnp.sum(row_weights.astype(terms.dtype) * terms)


def scale_rows(G: Array, row_weights: Array | None = None) -> Array:
    r"""Row n of G times w_n, equation (L7): batch derivative from per-example ones.

    Args:
      G: per-example derivatives, shape (N, K).
      row_weights: optional w, shape (N,); default 1/N.

    Returns:
      w ⊙ G with w broadcast along the rows, shape (N, K).
    """
    if row_weights is None:
        return (1.0 / G.shape[0]) * G
    return row_weights.reshape(-1, 1).astype(G.dtype) * G


# --- mean squared error ---------------------------------------------------------------------
def mse_terms(Z: Array, A: Array, Y: Array) -> Array:
    r"""ℓ_n = (1/K) Σ_k (ŷ_nk − y_nk)², equation (L2); (N,)."""
    del Z  # the value needs only Ŷ; the signature is shared by every loss
    return jnp.mean((A - Y) ** 2, axis=-1)


def mse_term_dA(A: Array, Y: Array) -> Array:
    r"""dℓ_n/dŷ_n = (2/K)(ŷ_n − y_n), equation (L2); (N, K)."""
    return 2.0 * (A - Y) / Y.shape[-1]


# --- half squared error ---------------------------------------------------------------------
def half_squared_error_terms(Z: Array, A: Array, Y: Array) -> Array:
    r"""ℓ_n = ½ ‖ŷ_n − y_n‖², equation (L3); (N,)."""
    del Z
    return 0.5 * jnp.sum((A - Y) ** 2, axis=-1)


def half_squared_error_term_dA(A: Array, Y: Array) -> Array:
    r"""dℓ_n/dŷ_n = ŷ_n − y_n, equation (L3); (N, K)."""
    return A - Y


# --- binary cross-entropy -------------------------------------------------------------------
def bce_terms(Z: Array, A: Array, Y: Array) -> Array:
    r"""ℓ_n = Σ_k −[y ln ŷ + (1 − y) ln(1 − ŷ)], ŷ = σ(z), equation (L4); (N,).

    Computed from Z: −[y ln σ(z) + (1 − y) ln σ(−z)] = y·softplus(−z) + (1 − y)·softplus(z),
    finite for any finite z (optax ``sigmoid_binary_cross_entropy`` does the same).
    """
    del A
    return jnp.sum(Y * jax.nn.softplus(-Z) + (1 - Y) * jax.nn.softplus(Z), axis=-1)


def bce_term_dA(A: Array, Y: Array) -> Array:
    r"""dℓ_n/dŷ_n = −y/ŷ + (1 − y)/(1 − ŷ), equation (L4); (N, K).

    The general chain-rule path: it divides by ŷ and 1 − ŷ, so it is exact only away from
    saturation; training uses the fused δ̂ = ŷ − y instead (equation (L6)).
    """
    return -Y / A + (1 - Y) / (1 - A)


# --- softmax cross-entropy ------------------------------------------------------------------
def cross_entropy_terms(Z: Array, A: Array, Y: Array) -> Array:
    r"""ℓ_n = −Σ_k y_nk ln softmax(z_n)_k via log-softmax (logsumexp), equation (L5); (N,)."""
    del A
    return -jnp.sum(Y * jax.nn.log_softmax(Z, axis=-1), axis=-1)


def cross_entropy_term_dA(A: Array, Y: Array) -> Array:
    r"""dℓ_n/dŷ_n = −y_n / ŷ_n, equation (L5); (N, K).  Exact away from ŷ = 0."""
    return -Y / A


# --- fused output deltas (L6) ---------------------------------------------------------------
def matched_term_delta(A: Array, Y: Array) -> Array:
    r"""δ̂_n = dℓ_n/dz_n = ŷ_n − y_n for the matched output/loss pairs, equation (L6).

    * sigmoid + BCE: [−y/ŷ + (1−y)/(1−ŷ)] · ŷ(1−ŷ) = ŷ − y.
    * softmax + CE: Σ_k (−y_k/a_k) a_k(δ_kj − a_j) = a_j Σ_k y_k − y_j = a_j − y_j, because
      each row of Y sums to 1 (one-hot or a distribution: validated at the API).
    * identity + half squared error: dℓ/dŷ · 1.

    The shortcut never forms 1/ŷ, so it stays exact when the output saturates.
    """
    return A - Y


def matched_delta(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    r"""The batch δ = w ⊙ (A − Y) of the matched pairs, equations (L6) and (L7); (N, K)."""
    return scale_rows(matched_term_delta(A, Y), row_weights)


# --- batch forms (L1, L7) of each loss, kept as functions for direct use --------------------
def mse_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """L = Σ_n w_n ℓ_n for "mse": the mean over all N·K entries by default."""
    return reduce_terms(mse_terms(Z, A, Y), row_weights)


def mse_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """dL/dŶ = w ⊙ (2/K)(Ŷ − Y): 2/(N·K)·(Ŷ − Y) by default."""
    return scale_rows(mse_term_dA(A, Y), row_weights)


def half_squared_error_value(
    Z: Array, A: Array, Y: Array, row_weights: Array | None = None
) -> Array:
    """L = Σ_n w_n ½‖ŷ_n − y_n‖²."""
    return reduce_terms(half_squared_error_terms(Z, A, Y), row_weights)


def half_squared_error_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """dL/dŶ = w ⊙ (Ŷ − Y)."""
    return scale_rows(half_squared_error_term_dA(A, Y), row_weights)


def bce_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """L = Σ_n w_n ℓ_n for binary cross-entropy (from Z, stable)."""
    return reduce_terms(bce_terms(Z, A, Y), row_weights)


def bce_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """dL/dŶ = w ⊙ (−Y/Ŷ + (1 − Y)/(1 − Ŷ))."""
    return scale_rows(bce_term_dA(A, Y), row_weights)


def cross_entropy_value(Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """L = Σ_n w_n ℓ_n for softmax cross-entropy (log-softmax, stable)."""
    return reduce_terms(cross_entropy_terms(Z, A, Y), row_weights)


def cross_entropy_dA(A: Array, Y: Array, row_weights: Array | None = None) -> Array:
    """dL/dŶ = −w ⊙ Y / Ŷ."""
    return scale_rows(cross_entropy_term_dA(A, Y), row_weights)


# --- second-order facts (H5), (H6), (H8), (H9) ---------------------------------------------
def mse_hessian_scale(K: int) -> float:
    """ℓ_n = (1/K)‖ŷ − y‖² has the constant Hessian (2/K)·I in ŷ_n (H6)."""
    return 2.0 / K


def half_squared_error_hessian_scale(K: int) -> float:
    """ℓ_n = ½‖ŷ − y‖² has the Hessian I in ŷ_n (H6)."""
    del K
    return 1.0


def cross_entropy_logit_hessian_sqrt(A: Array) -> Array:
    r"""S_n = diag(√p) − p √pᵀ with S_n S_nᵀ = diag(p) − p pᵀ, the Hessian of softmax-CE in z (H8).

    Args:
      A: p = softmax(Z), (N, K).

    Returns:
      S, (N, K, K), unscaled (no row weight).
    """
    sq = jnp.sqrt(A)
    eye = jnp.eye(A.shape[1], dtype=A.dtype)
    return sq[:, :, None] * eye[None] - A[:, :, None] * sq[:, None, :]  # (H8)


def bce_logit_hessian_sqrt(A: Array) -> Array:
    r"""S_n = diag(√(σ(1 − σ))), the root of the Hessian of sigmoid-BCE in z (H8); (N, K, K)."""
    eye = jnp.eye(A.shape[1], dtype=A.dtype)
    return jnp.sqrt(A * (1 - A))[:, :, None] * eye[None]  # (H8)


def cross_entropy_sample_logit_grad(key: Array, A: Array, samples: int) -> Array:
    r"""ĝ = p − e_y with y ~ Cat(p): mean 0, covariance diag(p) − ppᵀ (H9); (M, N, K)."""
    N, K = A.shape
    labels = jax.random.categorical(key, jnp.log(A)[None], axis=-1, shape=(samples, N))
    return A[None] - jax.nn.one_hot(labels, K, dtype=A.dtype)  # (H9)


def bce_sample_logit_grad(key: Array, A: Array, samples: int) -> Array:
    r"""ĝ = σ − y with y ~ Bernoulli(σ): variance σ(1 − σ) per entry (H9); (M, N, K)."""
    y = jax.random.bernoulli(key, A[None], shape=(samples, *A.shape)).astype(A.dtype)
    return A[None] - y  # (H9)


@dataclass(frozen=True)
class Loss:
    """A loss as per-example terms with their hand-derived derivatives.

    Attributes:
      name: registry key.
      terms: (Z, A, Y) -> ℓ, shape (N,): each example's own loss.
      term_dA: (A, Y) -> dℓ_n/dŷ_n, shape (N, K), unscaled: the general chain-rule path.
      term_fused: output activation name -> (A, Y) -> dℓ_n/dz_n, unscaled: the simplified δ̂.
      outputs: output activations this loss may follow (None: any).
      targets: "real", "probability" (each entry in [0, 1]) or "class" (labels or one-hot rows).
      logit_outputs: output activations at whose logits the GGN is taken: there the Hessian
        of ℓ_n in z_n equals the activation's Jacobian, so H_z ż = ȧ (H5).
      logit_hessian_sqrt: A -> S (N, K, K), S_n S_nᵀ = that Hessian (H8); with logit_outputs.
      sample_logit_grad: (key, A, M) -> ĝ (M, N, K), E[ĝ ĝᵀ] = that Hessian (H9).
      output_hessian_scale: K -> c for a loss quadratic in ŷ (Hessian c·I, (H6)); ``None``
        for the log-losses.

    The batch forms ``value``, ``dA`` and ``fused`` apply the row weights (L1), (L7).
    """

    name: str
    terms: Callable[[Array, Array, Array], Array]
    term_dA: Callable[[Array, Array], Array]
    term_fused: dict[str, Callable[[Array, Array], Array]] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    targets: str = "real"
    logit_outputs: tuple[str, ...] = ()
    logit_hessian_sqrt: Callable[[Array], Array] | None = None
    sample_logit_grad: Callable[[Array, Array, int], Array] | None = None
    output_hessian_scale: Callable[[int], float] | None = None

    def ggn_at_logits(self, output_activation: str) -> bool:
        """Whether the GGN of this loss after ``output_activation`` is taken at the logits (H5)."""
        return output_activation in self.logit_outputs

    @property
    def is_classification(self) -> bool:
        return self.targets in ("probability", "class")

    def value(self, Z: Array, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
        """L = Σ_n w_n ℓ_n (L1); scalar."""
        return reduce_terms(self.terms(Z, A, Y), row_weights)

    def dA(self, A: Array, Y: Array, row_weights: Array | None = None) -> Array:
        """dL/dŶ = w ⊙ dℓ/dŶ (L7); (N, K)."""
        return scale_rows(self.term_dA(A, Y), row_weights)

    @property
    def fused(self) -> dict[str, Callable[..., Array]]:
        """Output activation name -> (A, Y, row_weights=None) -> the batch δ = w ⊙ δ̂ (L7)."""

        def batch(fn):
            return lambda A, Y, row_weights=None: scale_rows(fn(A, Y), row_weights)

        return {act: batch(fn) for act, fn in self.term_fused.items()}


LOSSES: dict[str, Loss] = {
    # identity output: dℓ/dz = dℓ/dŷ · 1, so the fused δ̂ is the general one (L6)
    "mse": Loss(
        "mse",
        mse_terms,
        mse_term_dA,
        {"identity": mse_term_dA},
        output_hessian_scale=mse_hessian_scale,
    ),
    "half_squared_error": Loss(
        "half_squared_error",
        half_squared_error_terms,
        half_squared_error_term_dA,
        {"identity": matched_term_delta},
        output_hessian_scale=half_squared_error_hessian_scale,
    ),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy",
        bce_terms,
        bce_term_dA,
        {"sigmoid": matched_term_delta},
        outputs=("sigmoid",),
        targets="probability",
        logit_outputs=("sigmoid",),
        logit_hessian_sqrt=bce_logit_hessian_sqrt,
        sample_logit_grad=bce_sample_logit_grad,
    ),
    "cross_entropy": Loss(
        "cross_entropy",
        cross_entropy_terms,
        cross_entropy_term_dA,
        {"softmax": matched_term_delta},
        outputs=("softmax",),
        targets="class",
        logit_outputs=("softmax",),
        logit_hessian_sqrt=cross_entropy_logit_hessian_sqrt,
        sample_logit_grad=cross_entropy_sample_logit_grad,
    ),
}

#: The loss each output activation is trained with unless told otherwise: the one place this
#: knowledge lives (``fit``, ``evaluate``, the datasets and the CLI all read it).
DEFAULT_LOSS: dict[str, str] = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}
#: The loss for any other output activation (identity, tanh, ...).
DEFAULT_REGRESSION_LOSS = "mse"


def default_loss_for(output_activation: str) -> str:
    """softmax → "cross_entropy", sigmoid → "binary_cross_entropy", anything else → "mse"."""
    return DEFAULT_LOSS.get(output_activation, DEFAULT_REGRESSION_LOSS)


def get_loss(name: str) -> Loss:
    """Look up a loss by name, with an error that lists the valid names."""
    if not isinstance(name, str):
        raise TypeError(f"loss must be a string, one of {list(LOSSES)}; got {name!r}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {list(LOSSES)}")
    return LOSSES[name]
