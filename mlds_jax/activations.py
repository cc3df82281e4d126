r"""Activation functions f(Z) and their hand-derived derivatives f'(Z) and f''(Z).

Every activation acts on a pre-activation ``Z`` of shape ``(batch, width)``
and returns an array of the same shape.  Element-wise activations pair the
function with its derivative ``f'(Z)``; the backward rule through them is equation (B5)
of ``docs/derivations.md``

.. math:: \frac{\partial L}{\partial Z} = \frac{\partial L}{\partial A} \odot f'(Z).

Softmax is not element-wise: its derivative is a Jacobian per row, so it is
given as a Jacobian-vector product (``softmax_backward``) instead.

Registry: ``ACTIVATIONS[name]`` is an :class:`Activation` with ``fn``,
``prime`` and ``prime2`` (``None`` for softmax), ``backward(dA, Z) -> dZ`` and the two
second-order rules the curvature extensions run on tangents: ``jvp(Z, A, Zdot) -> Adot``
(the tangent, (H1)) and ``curvature(Z, A, Zdot, dA)`` (the f'' term of the tangent backward,
(H3), (H4)), with ``zero_curvature`` set where f'' = 0.
The derivatives are equations (A1)-(A7) of ``docs/derivations.md``; the second derivatives
f'' (A8) are what curvature (Hessian-vector products) needs beyond the gradient.
This module imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import Array

__all__ = [
    "ACTIVATIONS",
    "HIDDEN_ACTIVATIONS",
    "OUTPUT_ACTIVATIONS",
    "Activation",
    "get_activation",
    "identity",
    "identity_prime",
    "identity_prime2",
    "leaky_relu",
    "leaky_relu_prime",
    "leaky_relu_prime2",
    "relu",
    "relu_backward",
    "relu_prime",
    "relu_prime2",
    "sigmoid",
    "sigmoid_prime",
    "sigmoid_prime2",
    "softmax",
    "softmax_backward",
    "softmax_curvature",
    "softmax_jvp",
    "softplus",
    "softplus_prime",
    "softplus_prime2",
    "tanh",
    "tanh_prime",
    "tanh_prime2",
]

LEAKY_RELU_SLOPE = 0.01


# --- identity -------------------------------------------------------------------------------
def identity(Z: Array) -> Array:
    """id(Z) = Z, the regression output activation."""
    return Z


def identity_prime(Z: Array) -> Array:
    """id'(Z) = 1, equation (A1)."""
    return jnp.ones_like(Z)


def identity_prime2(Z: Array) -> Array:
    """id''(Z) = 0, equation (A8)."""
    return jnp.zeros_like(Z)


# --- sigmoid --------------------------------------------------------------------------------
def sigmoid(Z: Array) -> Array:
    r"""σ(Z) = 1 / (1 + e^{-Z}), element-wise."""
    return jax.nn.sigmoid(Z)


def sigmoid_prime(Z: Array) -> Array:
    r"""σ'(Z) = σ(Z)(1 − σ(Z)), equation (A2).

    σ = (1 + e^{-z})^{-1}  ⇒  σ' = e^{-z} / (1 + e^{-z})^2 = σ · (1 − σ), because
    1 − σ = e^{-z}/(1 + e^{-z}).
    """
    s = jax.nn.sigmoid(Z)
    return s * (1 - s)


def sigmoid_prime2(Z: Array) -> Array:
    r"""σ''(Z) = σ'(Z)(1 − 2σ(Z)), equation (A8): the product rule on σ(1 − σ)."""
    s = jax.nn.sigmoid(Z)
    return s * (1 - s) * (1 - 2 * s)


# --- tanh -----------------------------------------------------------------------------------
def tanh(Z: Array) -> Array:
    """tanh(Z), element-wise."""
    return jnp.tanh(Z)


def tanh_prime(Z: Array) -> Array:
    r"""tanh'(Z) = 1 − tanh(Z)², equation (A3)."""
    t = jnp.tanh(Z)
    return 1 - t * t


def tanh_prime2(Z: Array) -> Array:
    r"""tanh''(Z) = −2 tanh(Z)(1 − tanh(Z)²), equation (A8)."""
    t = jnp.tanh(Z)
    return -2 * t * (1 - t * t)


# --- relu -----------------------------------------------------------------------------------
def relu(Z: Array) -> Array:
    """relu(Z) = max(Z, 0), element-wise (as ``jax.nn.relu``)."""
    return jax.nn.relu(Z)


def relu_prime(Z: Array) -> Array:
    """relu'(Z) = 1 where Z > 0, else 0, equation (A4).

    Convention at the kink: relu'(0) = 0, the same sub-gradient ``jax.nn.relu``
    uses (``jnp.maximum(Z, 0)`` would give 0.5 there; jax-ml/jax#37821).
    """
    return jnp.where(Z > 0, jnp.ones_like(Z), jnp.zeros_like(Z))


def relu_prime2(Z: Array) -> Array:
    """relu''(Z) = 0 away from the kink, equation (A8) (taken as 0 at Z = 0 too)."""
    return jnp.zeros_like(Z)


# --- leaky relu -----------------------------------------------------------------------------
def leaky_relu(Z: Array) -> Array:
    """leaky_relu(Z) = Z where Z ≥ 0, else 0.01·Z (as ``jax.nn.leaky_relu``)."""
    return jax.nn.leaky_relu(Z, negative_slope=LEAKY_RELU_SLOPE)


def leaky_relu_prime(Z: Array) -> Array:
    """leaky_relu'(Z) = 1 where Z ≥ 0, else 0.01, equation (A5).

    Convention at the kink: the derivative at 0 is 1, matching
    ``jax.grad(jax.nn.leaky_relu)(0.0)`` (its ``where(x >= 0, x, slope*x)`` form).
    """
    return jnp.where(Z >= 0, jnp.ones_like(Z), jnp.full_like(Z, LEAKY_RELU_SLOPE))


def leaky_relu_prime2(Z: Array) -> Array:
    """leaky_relu''(Z) = 0 away from the kink, equation (A8) (taken as 0 at Z = 0 too)."""
    return jnp.zeros_like(Z)


# --- softplus -------------------------------------------------------------------------------
def softplus(Z: Array) -> Array:
    """softplus(Z) = ln(1 + e^Z), computed stably (``jax.nn.softplus``)."""
    return jax.nn.softplus(Z)


def softplus_prime(Z: Array) -> Array:
    r"""softplus'(Z) = e^Z / (1 + e^Z) = σ(Z), equation (A6)."""
    return jax.nn.sigmoid(Z)


def softplus_prime2(Z: Array) -> Array:
    r"""softplus''(Z) = σ'(Z) = σ(Z)(1 − σ(Z)), equation (A8)."""
    s = jax.nn.sigmoid(Z)
    return s * (1 - s)


# --- softmax (output layer only) ------------------------------------------------------------
def softmax(Z: Array) -> Array:
    r"""Row-wise softmax: A_pk = e^{Z_pk} / Σ_j e^{Z_pj}.

    Shifted by the row max inside ``jax.nn.softmax``, so large logits do not overflow.
    """
    return jax.nn.softmax(Z, axis=-1)


def softmax_backward(dA: Array, Z: Array) -> Array:
    r"""Vector-Jacobian product through the row-wise softmax, equation (A7).

    For one row, ∂a_k/∂z_j = a_k(δ_kj − a_j), so

    .. math:: \frac{\partial L}{\partial z_j} = \sum_k \frac{\partial L}{\partial a_k} a_k
              (\delta_{kj} - a_j) = a_j\Big(g_j - \sum_k g_k a_k\Big)

    with g = dL/dA.  Paired with cross-entropy it collapses to δ = A − Y (equation (L6)).

    Args:
      dA: upstream gradient dL/dA, shape (batch, K).
      Z: softmax input, shape (batch, K).

    Returns:
      dL/dZ, shape (batch, K).
    """
    A = softmax(Z)
    return A * (dA - jnp.sum(dA * A, axis=-1, keepdims=True))


def softmax_jvp(Z: Array, A: Array, Zdot: Array) -> Array:
    r"""Ȧ = J_softmax Ż, row by row ȧ = a ⊙ (ż − ⟨ż, a⟩) (A7), (H1); (batch, K).

    ``Z`` is unused (A = softmax(Z) is given); the signature is every activation's.
    """
    del Z
    return A * (Zdot - jnp.sum(Zdot * A, axis=-1, keepdims=True))  # (H1)


def softmax_curvature(Z: Array, A: Array, Zdot: Array, dA: Array) -> Array:
    r"""The tangent of δ = a ⊙ (g − ⟨g, a⟩) with g = dA held fixed and a moving along ȧ (H4).

    ȧ ⊙ (g − ⟨g, a⟩) − a ⟨g, ȧ⟩ per row; (batch, K).
    """
    Adot = softmax_jvp(Z, A, Zdot)
    inner = jnp.sum(dA * A, axis=-1, keepdims=True)
    return Adot * (dA - inner) - A * jnp.sum(dA * Adot, axis=-1, keepdims=True)  # (H4)


@dataclass(frozen=True)
class Activation:
    """An activation with its hand-derived backward rule.

    Attributes:
      name: registry key.
      fn: f(Z), shape-preserving.
      prime: f'(Z) for element-wise activations, ``None`` for softmax.
      prime2: f''(Z) for element-wise activations, ``None`` for softmax.
      backward: (dA, Z) -> dZ; ``dA ⊙ f'(Z)`` for element-wise ones.
      jvp: (Z, A, Ż) -> Ȧ = J_f(Z) Ż, the forward tangent (H1); A = f(Z) is passed so
        softmax need not recompute it.
      curvature: (Z, A, Ż, dA) -> the f'' term of the tangent backward, (d/dt J_f(Z(t))ᵀ) dA
        along Ż: dA ⊙ f''(Z) ⊙ Ż element-wise (H3), (H4) for softmax.
      zero_curvature: f'' = 0 (identity, relu, leaky relu away from the kink): the curvature
        term is zero and the extensions skip it.
      elementwise: whether f acts entry by entry.
    """

    name: str
    fn: Callable[[Array], Array]
    prime: Callable[[Array], Array] | None
    prime2: Callable[[Array], Array] | None
    backward: Callable[[Array, Array], Array]
    jvp: Callable[[Array, Array, Array], Array]
    curvature: Callable[[Array, Array, Array, Array], Array]
    zero_curvature: bool = False
    elementwise: bool = True


def _elementwise(
    name: str,
    fn: Callable,
    prime: Callable,
    prime2: Callable,
    backward: Callable | None = None,
    *,
    zero_curvature: bool = False,
) -> Activation:
    # dL/dZ = dL/dA ⊙ f'(Z), equation (B5)
    def times_prime(dA: Array, Z: Array) -> Array:
        return dA * prime(Z)

    def jvp(Z: Array, A: Array, Zdot: Array) -> Array:
        del A
        return prime(Z) * Zdot  # (H1)

    def curvature(Z: Array, A: Array, Zdot: Array, dA: Array) -> Array:
        del A
        return dA * prime2(Z) * Zdot  # (H3)

    return Activation(
        name,
        fn,
        prime,
        prime2,
        times_prime if backward is None else backward,
        jvp,
        curvature,
        zero_curvature,
        True,
    )


def relu_backward(dA: Array, Z: Array) -> Array:
    """dA ⊙ relu'(Z) written as a select: dA where Z > 0, else 0 (relu'(0) = 0).

    The same numbers as ``dA * relu_prime(Z)`` without the multiply by the 0/1 mask (one
    element-wise op less per hidden layer in the compiled step).
    """
    return jnp.where(Z > 0, dA, jnp.zeros_like(dA))


ACTIVATIONS: dict[str, Activation] = {
    "identity": _elementwise(
        "identity", identity, identity_prime, identity_prime2, zero_curvature=True
    ),
    "sigmoid": _elementwise("sigmoid", sigmoid, sigmoid_prime, sigmoid_prime2),
    "tanh": _elementwise("tanh", tanh, tanh_prime, tanh_prime2),
    "relu": _elementwise("relu", relu, relu_prime, relu_prime2, relu_backward, zero_curvature=True),
    "leaky_relu": _elementwise(
        "leaky_relu", leaky_relu, leaky_relu_prime, leaky_relu_prime2, zero_curvature=True
    ),
    "softplus": _elementwise("softplus", softplus, softplus_prime, softplus_prime2),
    "softmax": Activation(
        "softmax",
        softmax,
        None,
        None,
        softmax_backward,
        softmax_jvp,
        softmax_curvature,
        elementwise=False,
    ),
}

#: Activations allowed on hidden layers (softmax couples units, so output only).
HIDDEN_ACTIVATIONS: tuple[str, ...] = tuple(n for n, a in ACTIVATIONS.items() if a.elementwise)
#: Activations allowed on the output layer.
OUTPUT_ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATIONS)


def get_activation(name: str, *, allowed: tuple[str, ...] | None = None) -> Activation:
    """Look up an activation by name, with an error that lists the valid names."""
    valid = tuple(ACTIVATIONS) if allowed is None else allowed
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, one of {list(valid)}; got {name!r}")
    if name not in valid:
        raise ValueError(f"unknown activation {name!r}; valid names: {list(valid)}")
    return ACTIVATIONS[name]
