"""Per-example gradients, norms, Gram matrix and moments (P1)-(P6) against ``jax.vmap(jax.grad)``.

The reference is independent of the library: the single-example loss ℓ_n is written from the
definitions in ``helpers`` (REF_ACTIVATIONS, ref_loss_from_A on a one-row batch, which for "mse"
is (1/K)Σ_k(ŷ_k − y_k)², the convention of issue 13), differentiated by ``jax.grad`` and
vmapped over the rows: the materialised N × |θ| per-example gradients.  Every quantity is then
computed from that tensor directly (flatten, norms, inner products, numpy moments).

Tolerance: the suite's float64 rule (``helpers.tolerances``: rtol 1e-10, atol 1e-12).  The
hand-derived quantities and the reference perform the same O(depth) matmuls in different orders
(few ulp each, see helpers); the norms (P3) add a sqrt of a sum of O(L) products and the
variance (P6) one subtraction E[g²] − μ² whose absolute rounding is ~eps·E[g²] ≈ 1e-15 for the
O(1) gradients here, far inside atol.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    REF_ACTIVATIONS,
    assert_trees_close,
    grid_sizes,
    make_problem,
    ref_loss_from_A,
    targets_2d,
    tolerances,
)

import mlds_jax as mj
from mlds_jax.extensions import per_example

TOL = tolerances(np.float64)
#: every output/loss pair: the four matched ones (fused δ̂, (L6)) and a general one (sigmoid +
#: mse through f'); softmax + mse (through the softmax VJP (A7)) joins at batch 1.
PAIRS = (
    ("identity", "mse"),
    ("identity", "half_squared_error"),
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "mse"),
)
#: batch > 1: every hidden activation × every pair; batch 1: every pair (tanh hidden) and every
#: hidden activation (identity + mse), which keeps the grid at 41 cases (~0.5 s each op by op).
CASES = [(h, o, lo, 5) for h in mj.activations.HIDDEN_ACTIVATIONS for o, lo in PAIRS] + [
    *[("tanh", o, lo, 1) for o, lo in (*PAIRS, ("softmax", "mse"))],
    *[(h, "identity", "mse", 1) for h in mj.activations.HIDDEN_ACTIVATIONS if h != "tanh"],
]
SIZES = grid_sizes(3)  # [4, 4, 4, 3]: two hidden layers


def ref_single_loss(params, x, y, loss):
    """ℓ_n for one example, from the definitions (no mlds_jax activation or loss code)."""
    A = x[None, :]
    for layer in params:
        A = REF_ACTIVATIONS[layer.activation](A @ layer.W + layer.b[None, :])
    return ref_loss_from_A(A, y[None, :], loss)


@functools.partial(jax.jit, static_argnums=3)
def ref_per_example_grads(params, X, Y2, loss):
    """The materialised ∇ℓ_n, (N, ...) per leaf: jax.vmap(jax.grad(ℓ_n))."""
    return jax.vmap(jax.grad(ref_single_loss), in_axes=(None, 0, 0, None))(params, X, Y2, loss)


def flat(tree, n):
    """(N, |θ|) matrix of per-example gradients, layers in order, W then b."""
    return jnp.concatenate([x.reshape(n, -1) for x in jax.tree_util.tree_leaves(tree)], axis=1)


def layer_norms(tree, n):
    """(N, L): per layer ‖(∇_W ℓ_n, ∇_b ℓ_n)‖ from the materialised gradients."""
    return jnp.stack([jnp.sqrt(jnp.sum(flat(layer, n) ** 2, axis=1)) for layer in tree], axis=1)


def weights_for(n):
    """Row weights with padding rows (w = 0) and unequal positive weights."""
    if n == 1:
        return jnp.array([2.0])
    return jnp.array([0.3, 0.0, 0.5, 0.2, 0.0])


@pytest.mark.parametrize(("hidden", "output", "loss", "n"), CASES)
def test_per_example_quantities_match_vmap_grad(hidden, output, loss, n, op_by_op):
    params, X, Y = make_problem(
        hash((hidden, output, loss, n)) % 2**31, SIZES, hidden, output, loss, n
    )
    Y2 = targets_2d(Y, loss, SIZES[-1], jnp.float64)
    ref = ref_per_example_grads(params, X, Y2, loss)
    F = flat(ref, n)

    # (P2) per-example gradients; headline identity: manual_grads == their mean
    g = mj.per_example_grads(params, X, Y, loss)
    assert_trees_close(g, ref)
    assert_trees_close(
        jax.tree_util.tree_map(lambda x: x.mean(axis=0), g), mj.manual_grads(params, X, Y, loss)
    )
    # (P3) norms, total and by layer
    np.testing.assert_allclose(
        mj.per_example_grad_norms(params, X, Y, loss), jnp.sqrt(jnp.sum(F**2, axis=1)), **TOL
    )
    np.testing.assert_allclose(
        mj.per_example_grad_norms(params, X, Y, loss, by_layer=True), layer_norms(ref, n), **TOL
    )
    # (P4) Gram matrix
    np.testing.assert_allclose(mj.gradient_gram(params, X, Y, loss), F @ F.T, **TOL)
    # (P5), (P6) moments: numpy's mean, sum of squares and population variance
    mom = mj.gradient_moments(params, X, Y, loss)
    assert_trees_close(mom.mean, jax.tree_util.tree_map(lambda x: x.mean(axis=0), ref))
    assert_trees_close(mom.sum_sq, jax.tree_util.tree_map(lambda x: (x**2).sum(axis=0), ref))
    assert_trees_close(mom.variance, jax.tree_util.tree_map(lambda x: x.var(axis=0), ref))

    # with row weights: padding rows are zero, positive weights do not rescale
    w = weights_for(n)
    m = (w > 0).astype(jnp.float64)
    ref_w = jax.tree_util.tree_map(lambda x: x * m.reshape((-1,) + (1,) * (x.ndim - 1)), ref)
    Fw = flat(ref_w, n)
    assert_trees_close(mj.per_example_grads(params, X, Y, loss, row_weights=w), ref_w)
    np.testing.assert_allclose(
        mj.per_example_grad_norms(params, X, Y, loss, row_weights=w),
        jnp.sqrt(jnp.sum(Fw**2, axis=1)),
        **TOL,
    )
    np.testing.assert_allclose(
        mj.per_example_grad_norms(params, X, Y, loss, by_layer=True, row_weights=w),
        layer_norms(ref_w, n),
        **TOL,
    )
    np.testing.assert_allclose(
        mj.gradient_gram(params, X, Y, loss, row_weights=w), Fw @ Fw.T, **TOL
    )
    mom = mj.gradient_moments(params, X, Y, loss, row_weights=w)
    p = w / w.sum()

    def wsum(c, f):
        return jax.tree_util.tree_map(lambda x: jnp.tensordot(c, f(x), axes=1), ref)

    mu = wsum(p, lambda x: x)
    assert_trees_close(mom.mean, wsum(w, lambda x: x))
    assert_trees_close(mom.sum_sq, wsum(m, lambda x: x**2))
    assert_trees_close(
        mom.variance,
        jax.tree_util.tree_map(lambda x, u: jnp.tensordot(p, (x - u[None]) ** 2, axes=1), ref, mu),
    )


def test_row_weights_mean_is_the_weighted_batch_gradient():
    """With weights, .mean is the core's gradient of L = Σ w_n ℓ_n (L1)."""
    params, X, Y = make_problem(3, SIZES, "tanh", "softmax", "cross_entropy", 5)
    Y2 = targets_2d(Y, "cross_entropy", SIZES[-1], jnp.float64)
    w = weights_for(5)
    _, expected = jax.value_and_grad(
        lambda p: jnp.sum(
            w * jax.vmap(ref_single_loss, (None, 0, 0, None))(p, X, Y2, "cross_entropy")
        )
    )(params)
    assert_trees_close(
        mj.gradient_moments(params, X, Y, "cross_entropy", row_weights=w).mean, expected
    )


def test_cores_are_jittable_and_public():
    params, X, Y = make_problem(4, SIZES, "relu", "identity", "mse", 6)
    norms = jax.jit(per_example.per_example_grad_norms_core, static_argnames="loss")(
        params, X, Y, loss="mse"
    )
    assert norms.shape == (6,)
    np.testing.assert_allclose(norms, mj.per_example_grad_norms(params, X, Y, "mse"), **TOL)
    G = per_example.gradient_gram_core(params, X, Y, "mse")
    np.testing.assert_allclose(jnp.sqrt(jnp.diag(G)), norms, **TOL)


def test_float32_norms_close_to_float64():
    params, X, Y = make_problem(5, SIZES, "tanh", "softmax", "cross_entropy", 5)
    n64 = mj.per_example_grad_norms(params, X, Y, "cross_entropy")
    p32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    n32 = mj.per_example_grad_norms(p32, X.astype(jnp.float32), Y, "cross_entropy")
    assert n32.dtype == jnp.float32
    np.testing.assert_allclose(n32, n64, **tolerances(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"row_weights": jnp.ones(4)}, ValueError, r"row_weights must have shape \(5,\)"),
        ({"row_weights": -jnp.ones(5)}, ValueError, "row_weights must be >= 0"),
        ({"row_weights": jnp.zeros(5)}, ValueError, "no positive entry"),
        ({"row_weights": jnp.array([1.0, jnp.nan, 1, 1, 1])}, ValueError, "non-finite"),
        ({"row_weights": "abc"}, TypeError, "row_weights must be a numeric array"),
        ({"by_layer": 1}, TypeError, "by_layer must be a bool"),
    ],
)
def test_bad_input(kwargs, error, match):
    params, X, Y = make_problem(6, SIZES, "tanh", "softmax", "cross_entropy", 5)
    with pytest.raises(error, match=match):
        mj.per_example_grad_norms(params, X, Y, "cross_entropy", **kwargs)


def test_bad_data_is_caught_before_tracing():
    params, X, Y = make_problem(6, SIZES, "tanh", "softmax", "cross_entropy", 5)
    with pytest.raises(ValueError, match="features"):
        mj.per_example_grads(params, X[:, :3], Y, "cross_entropy")
    with pytest.raises(ValueError, match="class labels must lie in"):
        mj.gradient_gram(params, X, Y + 10, "cross_entropy")
    with pytest.raises(ValueError, match="unknown loss"):
        mj.gradient_moments(params, X, Y, "hinge")
    with pytest.raises(ValueError, match="non-finite"):
        mj.per_example_grad_norms(params, X.at[0, 0].set(jnp.nan), Y, "cross_entropy")


@pytest.mark.parametrize(("output", "loss"), [("softmax", "cross_entropy"), ("sigmoid", "mse")])
def test_gradient_cross_gram_is_inner_products_of_vmap_grad(output, loss):
    """(P4), (P8) between two sets: C = G₁ G₂ᵀ with the materialised jax.vmap(jax.grad)
    per-example gradients of each set (labels (N,) on the left, one-hot rows on the right)."""
    params, X, Y = make_problem(3, SIZES, "tanh", output, loss, 7)
    Y2 = targets_2d(Y, loss, SIZES[-1], jnp.float64)
    G1 = flat(ref_per_example_grads(params, X[:4], Y2[:4], loss), 4)
    G2 = flat(ref_per_example_grads(params, X[4:], Y2[4:], loss), 3)
    C = mj.extensions.gradient_cross_gram(params, X[:4], Y[:4], X[4:], Y2[4:], loss)
    assert C.shape == (4, 3)
    np.testing.assert_allclose(C, G1 @ G2.T, **TOL)
    same = mj.extensions.gradient_cross_gram(params, X, Y, X, Y, loss)
    np.testing.assert_allclose(same, mj.gradient_gram(params, X, Y, loss), **TOL)
    with pytest.raises(ValueError, match="X2 has 5 features"):
        mj.extensions.gradient_cross_gram(params, X, Y, np.ones((2, 5)), Y[:2], loss)
    bad = np.asarray(X[:2]) * np.array([np.nan, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="X2 contains 2 non-finite"):
        mj.extensions.gradient_cross_gram(params, X, Y, bad, Y[:2], loss)
