"""The public core (mlds_jax.core): unchecked, jit-able, row-weighted.

Each core function is compared with an independent computation: the reference formulas of
``tests/helpers.py`` (plain jnp, written from the notes) and ``jax.grad`` / ``jax.vmap`` of
the reference loss.  Row weights (L1) are exercised with a padding mask and with arbitrary
positive weights; per-example quantities (ℓ_n, δ̂_n) against ``vmap(grad)`` of one example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    OUTPUT_LOSS_PAIRS,
    REF_ACTIVATIONS,
    assert_trees_close,
    grid_sizes,
    make_problem,
    ref_forward_from,
    ref_forward_Zs,
    ref_loss_from_A,
    targets_2d,
    tolerances,
)

from mlds_jax import core

N = 5


def _problem(output: str, loss: str, depth: int = 3, n: int = N, seed: int = 0):
    params, X, Y = make_problem(seed, grid_sizes(depth), "tanh", output, loss, n)
    return params, X, targets_2d(Y, loss, grid_sizes(depth)[-1], jnp.float64)


def _ref_value(params, X, Y, loss, w):
    """Σ_n w_n ℓ_n from the reference formulas: N·mean of one row's loss, row by row."""
    A = X
    for layer in params:
        A = REF_ACTIVATIONS[layer.activation](A @ layer.W + layer.b[None, :])
    terms = jnp.stack([ref_loss_from_A(A[n:n + 1], Y[n:n + 1], loss) for n in range(len(X))])
    return jnp.sum(w * terms)


@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
def test_forward_and_cache_match_the_reference_formulas(output, loss, op_by_op):
    params, X, _ = _problem(output, loss)
    cache = core.forward_cache(params, X)
    for Z, ref in zip(cache.Zs, ref_forward_Zs(params, X), strict=True):
        assert_trees_close(Z, ref)
    assert cache.As[0] is X
    assert_trees_close(core.forward(params, X), cache.As[-1])


@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
def test_loss_terms_are_each_examples_own_loss(output, loss, op_by_op):
    params, X, Y = _problem(output, loss)
    terms = core.loss_terms(core.forward_cache(params, X), Y, loss)
    assert terms.shape == (N,)
    for n in range(N):  # example n alone, through the reference forward and loss
        assert_trees_close(terms[n], _ref_value(params, X[n:n + 1], Y[n:n + 1], loss,
                                                jnp.ones(1)))


@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
@pytest.mark.parametrize("weights", ["default", "mask", "positive"])
@pytest.mark.parametrize("method", ["manual", "autodiff"])
def test_value_and_grads_with_row_weights_match_jax_grad_of_the_reference(
        output, loss, weights, method, op_by_op):
    params, X, Y = _problem(output, loss)
    w = {"default": None,
         "mask": jnp.asarray([0.5, 0.0, 0.5, 0.0, 0.0]),  # two real rows, three padding rows
         "positive": jnp.asarray([0.1, 0.3, 0.2, 0.15, 0.25])}[weights]
    w_ref = jnp.full(N, 1.0 / N) if w is None else w
    value, grads = core.value_and_grads(params, X, Y, loss, row_weights=w, method=method)
    ref_value, ref_grads = jax.value_and_grad(_ref_value)(params, X, Y, loss, w_ref)
    assert_trees_close(value, ref_value)
    assert_trees_close(grads, ref_grads)


def test_padding_rows_change_nothing():
    """Zero-weight rows (any values) give exactly the gradient of the real rows alone: what a
    padded last minibatch relies on."""
    params, X, Y = _problem("softmax", "cross_entropy")
    w = jnp.asarray([0.5, 0.5, 0.0, 0.0, 0.0])
    padded = core.value_and_grads(params, X.at[2:].set(1e3), Y, "cross_entropy", row_weights=w)
    alone = core.value_and_grads(params, X[:2], Y[:2], "cross_entropy")
    assert_trees_close(padded, alone)


@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
@pytest.mark.parametrize("fused", [True, False])
def test_backward_deltas_are_dL_dZ(output, loss, fused, op_by_op):
    """δ^(l) = ∂L/∂Z^(l) (B1)-(B5): jax.grad of the loss as a function of Z^(l) alone."""
    params, X, Y = _problem(output, loss)
    cache = core.forward_cache(params, X)
    out = core.backward(params, cache, Y, loss, fused=fused)
    assert len(out.deltas) == len(params)
    for l in range(1, len(params) + 1):
        def loss_of_Z(Z_l, l=l):
            return ref_loss_from_A(ref_forward_from(params, l, Z_l), Y, loss)

        assert_trees_close(out.deltas[l - 1], jax.grad(loss_of_Z)(cache.Zs[l - 1]))


@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
def test_output_delta_with_unit_weights_is_the_per_example_gradient(output, loss, op_by_op):
    """output_delta(row_weights=1) is δ̂_n = ∂ℓ_n/∂z_n (L6): vmap(grad) of one example's loss
    as a function of its own output pre-activation."""
    params, X, Y = _problem(output, loss)
    cache = core.forward_cache(params, X)
    got = core.output_delta(cache, Y, loss, output, row_weights=jnp.ones(N))
    act = REF_ACTIVATIONS[output]

    def one(z, y):
        return ref_loss_from_A(act(z[None, :]), y[None, :], loss)  # N = 1: no 1/N

    assert_trees_close(got, jax.vmap(jax.grad(one))(cache.Zs[-1], Y))


def test_dense_backward_by_hand_numbers():
    """A worked example: A_prev = [[1, 2], [3, 4]], W = [[1, 0, -1], [2, 1, 0]],
    δ = [[1, 0, 2], [0, 1, -1]].
    dW = A_prevᵀ δ = [[1·1 + 3·0, 1·0 + 3·1, 1·2 + 3·(−1)], [2·1 + 4·0, 2·0 + 4·1, 2·2 + 4·(−1)]]
       = [[1, 3, −1], [2, 4, 0]];  db = column sums of δ = [1, 1, 1];
    dA_prev = δ Wᵀ = [[1·1 + 0·0 + 2·(−1), 1·2 + 0·1 + 2·0], [0·1 + 1·0 − 1·(−1), 0·2 + 1·1 + 0]]
            = [[−1, 2], [1, 1]]."""
    A_prev = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    W = jnp.asarray([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])
    delta = jnp.asarray([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    dW, db, dA = core.dense_backward(delta, A_prev, W)
    np.testing.assert_array_equal(dW, [[1, 3, -1], [2, 4, 0]])
    np.testing.assert_array_equal(db, [1, 1, 1])
    np.testing.assert_array_equal(dA, [[-1, 2], [1, 1]])


def test_unknown_method_is_a_clear_error():
    params, X, Y = _problem("identity", "mse")
    with pytest.raises(ValueError, match="method must be one of"):
        core.value_and_grads(params, X, Y, "mse", method="numeric")


def test_grads_mirror_a_list_of_params():
    params, X, Y = _problem("identity", "mse")
    _, grads = core.value_and_grads(list(params), X, Y, "mse")
    assert isinstance(grads, list) and len(grads) == len(params)


def test_forward_cache_reads_in_the_notes_numbering():
    params, X, _ = make_problem(0, [3, 4, 2], "tanh", "softmax", "cross_entropy", 5)
    cache = core.forward_cache(params, X)
    assert cache.A(0) is cache.As[0] and cache.A(2) is cache.As[2]
    assert cache.Z(1) is cache.Zs[0] and cache.Z(2) is cache.Zs[1]
    with pytest.raises(IndexError, match=r"Z\^\(l\) exists for l = 1..2, got l = 0"):
        cache.Z(0)
    with pytest.raises(IndexError, match=r"A\^\(l\) exists for l = 0..2, got l = 3"):
        cache.A(3)


def test_backward_from_delta_gives_dX_of_the_linear_functional():
    """backward_from_delta from an arbitrary δ^(L) = C gives the gradients of Σ C ⊙ Z^(L)
    (jax.grad of that functional, in params and in X): the one loop every backward runs."""
    params, X, _ = make_problem(1, [3, 4, 4, 2], "tanh", "identity", "mse", 5)
    C = jnp.asarray(np.random.default_rng(0).standard_normal((5, 2)))

    def functional(p, x):
        return jnp.sum(C * core.forward_cache(p, x).Z(len(p)))

    gp, gx = jax.grad(functional, argnums=(0, 1))(params, X)
    out = core.backward_from_delta(params, core.forward_cache(params, X), C)
    assert_trees_close(out.grads, gp)
    np.testing.assert_allclose(out.dX, gx, **tolerances(np.float64))
