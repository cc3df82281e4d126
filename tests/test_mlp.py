"""``mj.mlp``: the forward pass as a ``jax.custom_vjp`` whose VJP is the hand-derived one (P7).

Reference: ``jax.grad`` through the forward pass written from the definitions
(``helpers.REF_ACTIVATIONS``), so the comparison is with autodiff of independent code.  The
downstream function is an arbitrary scalar (Σ c ⊙ sin(Ŷ)), not a library loss, so the cotangent
Ȳ entering the hand-derived backward is a general matrix.  Tolerance: the suite's float64 rule.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REF_ACTIVATIONS, assert_trees_close, grid_sizes, make_problem, tolerances
from jax.test_util import check_grads

import mlds_jax as mj
from mlds_jax import activations

SIZES = grid_sizes(3)  # [4, 4, 4, 3]


def ref_forward(params, X):
    A = X
    for layer in params:
        A = REF_ACTIVATIONS[layer.activation](A @ layer.W + layer.b[None, :])
    return A


def downstream(Y_hat):
    c = jnp.arange(1.0, Y_hat.shape[1] + 1, dtype=Y_hat.dtype)
    return jnp.sum(c[None, :] * jnp.sin(Y_hat))


@pytest.mark.parametrize("output", ["identity", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("hidden", mj.activations.HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 5])
def test_grad_through_mlp_matches_autodiff(hidden, output, n, op_by_op):
    params, X, _ = make_problem(7, SIZES, hidden, output, "mse", n)
    np.testing.assert_allclose(mj.mlp(params, X), ref_forward(params, X), **tolerances(np.float64))
    gp, gx = jax.grad(lambda p, x: downstream(mj.mlp(p, x)), argnums=(0, 1))(params, X)
    rp, rx = jax.grad(lambda p, x: downstream(ref_forward(p, x)), argnums=(0, 1))(params, X)
    assert_trees_close(gp, rp)
    np.testing.assert_allclose(gx, rx, **tolerances(np.float64))


def test_grad_of_a_library_loss_through_mlp_is_manual_grads():
    params, X, Y = make_problem(8, SIZES, "tanh", "softmax", "cross_entropy", 6)
    Y1 = jax.nn.one_hot(Y, 3, dtype=jnp.float64)
    g = jax.grad(lambda p: -jnp.mean(jnp.sum(Y1 * jnp.log(mj.mlp(p, X)), axis=1)))(params)
    assert_trees_close(g, mj.manual_grads(params, X, Y, "cross_entropy"))


def test_check_grads_reverse_mode():
    """Finite differences (central, eps = 1e-6 in float64) of the custom VJP, orders 1 and 2
    (order 2: reverse over the hand-derived backward, itself made of jnp operations)."""
    params, X, _ = make_problem(9, grid_sizes(2), "softplus", "softmax", "mse", 2)
    check_grads(jax.jit(mj.mlp), (params, X), order=2, modes=["rev"], eps=1e-6)


def test_grad_through_mlp_runs_the_hand_derived_rules(monkeypatch):
    """Patch tanh's backward in the registry (a deliberate factor 2): jax.grad through mj.mlp
    changes by exactly that, jax.grad through mj.forward (plain JAX ops) does not."""
    params, X, _ = make_problem(10, grid_sizes(2), "tanh", "identity", "mse", 4)
    before = jax.grad(lambda p: downstream(mj.mlp(p, X)))(params)
    tanh = activations.ACTIVATIONS["tanh"]
    monkeypatch.setitem(
        activations.ACTIVATIONS,
        "tanh",
        dataclasses.replace(tanh, backward=lambda dA, Z: 2 * tanh.backward(dA, Z)),
    )
    after = jax.grad(lambda p: downstream(mj.mlp(p, X)))(params)
    plain = jax.grad(lambda p: downstream(mj.forward(p, X)))(params)
    # layer 1 sits below the tanh: its gradient doubles; the output layer's does not
    assert_trees_close(after[0], jax.tree_util.tree_map(lambda g: 2 * g, before[0]))
    assert_trees_close(after[1], before[1])
    assert_trees_close(plain, before)


def test_forward_mode_raises_and_names_the_alternative():
    """jax.jvp / jax.jacfwd raise JAX's custom_vjp error (the docstring names mj.forward);
    jax.hessian, forward over the hand-derived backward, works and matches mj.forward's."""
    params, X, _ = make_problem(11, SIZES, "tanh", "softmax", "mse", 2)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: mj.mlp(params, x), (X,), (jnp.ones_like(X),))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jacfwd(lambda x: mj.mlp(params, x))(X)
    assert "mlds_jax.forward" in mj.mlp.__doc__
    # jitted: op by op, forward-over-reverse compiles hundreds of small kernels
    H = jax.jit(jax.hessian(lambda x: downstream(mj.mlp(params, x))))(X)
    H_ref = jax.jit(jax.hessian(lambda x: downstream(ref_forward(params, x))))(X)
    np.testing.assert_allclose(H, H_ref, **tolerances(np.float64))
    J = jax.jacrev(lambda x: mj.mlp(params, x))(X)  # reverse-mode Jacobians work
    np.testing.assert_allclose(
        J, jax.jacrev(lambda x: ref_forward(params, x))(X), **tolerances(np.float64)
    )


def test_jit_vmap_and_float32():
    params, X, _ = make_problem(12, SIZES, "relu", "sigmoid", "mse", 5)
    f = jax.jit(jax.grad(lambda p, x: downstream(mj.mlp(p, x))))
    assert_trees_close(f(params, X), jax.grad(lambda p: downstream(ref_forward(p, X)))(params))
    per_row = jax.vmap(lambda x: mj.mlp(params, x[None, :])[0])(X)
    np.testing.assert_allclose(per_row, mj.forward(params, X), **tolerances(np.float64))
    p32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    g32 = jax.grad(lambda p: downstream(mj.mlp(p, X.astype(jnp.float32))))(p32)
    assert g32[0].W.dtype == jnp.float32


def test_bad_input():
    params, X, _ = make_problem(13, SIZES, "tanh", "identity", "mse", 2)
    with pytest.raises(ValueError, match="features"):
        mj.mlp(params, X[:, :2])
    with pytest.raises(ValueError, match="must be 2-D"):
        mj.mlp(params, X[0])
    with pytest.raises(TypeError, match="params must be a non-empty tuple"):
        mj.mlp([], X)
    with pytest.raises(ValueError, match="non-finite"):
        mj.mlp(params, X.at[0, 0].set(jnp.inf))
