"""Activations: every hand-derived f'(Z) against jax.grad, every f(Z) against NumPy.

Inputs are kept off the kinks of relu / leaky_relu (a 30-point grid symmetric about 0 with
an even number of intervals skipped: no entry is exactly 0); the kinks have their own test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, np_rng

import mlds_jax as mj
from mlds_jax.activations import ACTIVATIONS, LEAKY_RELU_SLOPE, get_activation

ELEMENTWISE = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softplus")

# Independent NumPy formulas (float64), written from the definitions.
NP_FN = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": lambda z: (np.exp(z) - np.exp(-z)) / (np.exp(z) + np.exp(-z)),
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "softplus": lambda z: np.log(1.0 + np.exp(z)),
}
NP_PRIME = {
    "identity": lambda z: np.ones_like(z),
    # σ' = e^{-z} / (1 + e^{-z})² (sigmoid notes, before simplifying to σ(1 − σ))
    "sigmoid": lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2,
    "tanh": lambda z: 1.0 / np.cosh(z) ** 2,
    "relu": lambda z: np.where(z > 0, 1.0, 0.0),
    "leaky_relu": lambda z: np.where(z >= 0, 1.0, 0.01),
    "softplus": lambda z: np.exp(z) / (1.0 + np.exp(z)),
}


def _Z(dtype=np.float64) -> jax.Array:
    """(6, 5) pre-activations in [-4.9, 4.9], none exactly 0 (29 intervals: 0 is a midpoint)."""
    z = np.linspace(-4.9, 4.9, 30)
    assert not np.any(z == 0.0)
    return jnp.asarray(z.reshape(6, 5), dtype)


def test_registry():
    assert set(ACTIVATIONS) == {*ELEMENTWISE, "softmax"}
    assert set(mj.activations.HIDDEN_ACTIVATIONS) == set(ELEMENTWISE)
    assert set(mj.activations.OUTPUT_ACTIVATIONS) == set(ACTIVATIONS)
    for name, act in ACTIVATIONS.items():
        assert act.name == name
        assert act.elementwise == (name != "softmax")
        assert (act.prime is None) == (name == "softmax")


def test_get_activation_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; valid names: \[") as e:
        get_activation("gelu")
    for name in ACTIVATIONS:
        assert repr(name) in str(e.value)
    with pytest.raises(TypeError, match="activation must be a string"):
        get_activation(3)
    with pytest.raises(ValueError, match="unknown activation 'softmax'"):
        get_activation("softmax", allowed=mj.activations.HIDDEN_ACTIVATIONS)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_value_matches_numpy(name):
    Z = _Z()
    np.testing.assert_allclose(ACTIVATIONS[name].fn(Z), NP_FN[name](np.asarray(Z)), rtol=1e-13)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_prime_matches_jax_grad(name):
    """f'(Z) == jax.vmap(jax.grad(f)) entry by entry, float64."""
    Z = _Z()
    act = ACTIVATIONS[name]
    scalar_f = lambda z: act.fn(z)  # noqa: E731  (each f also works on 0-d arrays)
    expected = jax.vmap(jax.vmap(jax.grad(scalar_f)))(Z)
    assert_trees_close(act.prime(Z), expected)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_prime2_matches_grad_of_grad(name):
    """f''(Z) == jax.grad(jax.grad(f)) entry by entry, float64, equation (A8).  _Z() keeps the
    entries off the relu/leaky_relu kink, where f'' is 0 on both sides."""
    Z = _Z()
    assert not bool(jnp.any(Z == 0))
    act = ACTIVATIONS[name]
    scalar_f = lambda z: act.fn(z)  # noqa: E731
    expected = jax.vmap(jax.vmap(jax.grad(jax.grad(scalar_f))))(Z)
    assert_trees_close(act.prime2(Z), expected)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_prime_matches_numpy_formula(name):
    Z = _Z()
    np.testing.assert_allclose(
        ACTIVATIONS[name].prime(Z), NP_PRIME[name](np.asarray(Z)), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_named_functions_are_the_registry(name):
    assert ACTIVATIONS[name].fn is getattr(mj.activations, name)
    assert ACTIVATIONS[name].prime is getattr(mj.activations, f"{name}_prime")


@pytest.mark.parametrize("name", [*ELEMENTWISE, "softmax"])
def test_backward_is_the_vjp(name, key):
    """Activation.backward(dA, Z) == the VJP of f at Z applied to dA (dA ⊙ f'(Z) or softmax's)."""
    Z = _Z()
    dA = jnp.asarray(np_rng(key).standard_normal(Z.shape))
    act = ACTIVATIONS[name]
    _, vjp = jax.vjp(act.fn, Z)
    (expected,) = vjp(dA)
    assert_trees_close(act.backward(dA, Z), expected)


def test_softmax_backward_matches_vjp_and_explicit_jacobian(key):
    rng = np_rng(key)
    Z = jnp.asarray(3.0 * rng.standard_normal((5, 4)))
    dA = jnp.asarray(rng.standard_normal((5, 4)))
    _, vjp = jax.vjp(mj.activations.softmax, Z)
    assert_trees_close(mj.activations.softmax_backward(dA, Z), vjp(dA)[0])
    # Row by row with the explicit Jacobian J_kj = a_k (δ_kj − a_j): dz = Jᵀ da.
    A = np.asarray(mj.activations.softmax(Z))
    expected = np.stack(
        [(np.diag(a) - np.outer(a, a)).T @ g for a, g in zip(A, np.asarray(dA), strict=True)]
    )
    np.testing.assert_allclose(
        mj.activations.softmax_backward(dA, Z), expected, rtol=1e-12, atol=1e-15
    )


def test_softmax_values():
    Z = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(mj.activations.softmax(Z)[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(mj.activations.softmax(Z)[1], [1 / 3] * 3, rtol=1e-14)
    # shift invariance, row-wise
    assert_trees_close(mj.activations.softmax(Z + 100.0), mj.activations.softmax(Z))


def test_kinks_match_jax_conventions():
    """At 0: relu'(0) = 0 as jax.grad(jax.nn.relu)(0.); leaky_relu'(0) = 1 as jax.nn's."""
    zero = jnp.zeros((1, 1))
    assert float(mj.activations.relu_prime(zero)[0, 0]) == 0.0
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0
    assert float(jax.grad(lambda z: mj.activations.relu(z))(0.0)) == 0.0
    jax_leaky = lambda z: jax.nn.leaky_relu(z, negative_slope=LEAKY_RELU_SLOPE)  # noqa: E731
    assert float(mj.activations.leaky_relu_prime(zero)[0, 0]) == 1.0
    assert float(jax.grad(jax_leaky)(0.0)) == 1.0
    assert float(jax.grad(lambda z: mj.activations.leaky_relu(z))(0.0)) == 1.0
    # and just either side of the kink
    eps = jnp.asarray([[-1e-300, 1e-300]])
    np.testing.assert_array_equal(mj.activations.relu_prime(eps), [[0.0, 1.0]])
    np.testing.assert_array_equal(mj.activations.leaky_relu_prime(eps), [[0.01, 1.0]])


@pytest.mark.parametrize("name", [*ELEMENTWISE, "softmax"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_and_shape_preserved(name, dtype):
    """float32 in, float32 out (strict promotion would reject any float64 constant mixed in)."""
    Z = _Z(dtype)
    act = ACTIVATIONS[name]
    out = act.fn(Z)
    assert out.shape == Z.shape and out.dtype == Z.dtype
    dZ = act.backward(jnp.ones_like(Z), Z)
    assert dZ.shape == Z.shape and dZ.dtype == Z.dtype
    if act.prime is not None:
        p = act.prime(Z)
        assert p.shape == Z.shape and p.dtype == Z.dtype


@pytest.mark.parametrize("name", [*ELEMENTWISE, "softmax"])
def test_large_inputs_stay_finite(name):
    Z = jnp.asarray([[-1000.0, -50.0, 0.5, 50.0, 1000.0]])
    act = ACTIVATIONS[name]
    assert np.all(np.isfinite(act.fn(Z)))
    assert np.all(np.isfinite(act.backward(jnp.ones_like(Z), Z)))
    if act.prime is not None:
        assert np.all(np.isfinite(act.prime(Z)))


def test_saturated_values():
    Z = jnp.asarray([[-1000.0, 1000.0]])
    np.testing.assert_array_equal(mj.activations.sigmoid(Z), [[0.0, 1.0]])
    np.testing.assert_array_equal(mj.activations.sigmoid_prime(Z), [[0.0, 0.0]])
    np.testing.assert_array_equal(mj.activations.softplus(Z), [[0.0, 1000.0]])
    np.testing.assert_array_equal(mj.activations.softmax(Z), [[0.0, 1.0]])
    np.testing.assert_array_equal(mj.activations.tanh_prime(Z), [[0.0, 0.0]])
