"""Curvature by hand (mlds_jax.extensions.curvature) against autodiff, in float64.

References are built independently of the code under test: the loss is written from the
reference formulas of ``helpers`` (REF_ACTIVATIONS and the per-example terms below) and
differentiated by ``jax.hessian`` / ``jax.jvp(jax.grad)`` / ``jax.jacrev`` on the flattened
parameters (``jax.flatten_util.ravel_pytree``).  Networks are tiny (P ≤ 50 parameters), so the
full Hessian is a 50 × 50 matrix.

Tolerances: the R-operator and jax.hessian do the same O(depth) products in a different
order, as the gradients do (tests/helpers.py); entries of H are O(1e-2..1), so the suite's
float64 rule (rtol 1e-10, atol 1e-12) applies unchanged.  Monte Carlo checks use 5 standard
errors of the mean per entry (two-sided false-alarm probability 6e-7 per entry).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    HIDDEN_WIDTH,
    N_IN,
    OUTPUT_LOSS_PAIRS,
    REF_ACTIVATIONS,
    make_problem,
    targets_2d,
    tolerances,
)
from jax.flatten_util import ravel_pytree

import mlds_jax as mj
from mlds_jax.extensions import curvature

TOL = tolerances(np.float64)
SIZES = [N_IN, HIDDEN_WIDTH, HIDDEN_WIDTH, 2]  # two hidden layers: the δVᵀ and f'' terms
LOGIT = {("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy")}


def ref_terms_from_Z(Z, Y, output, loss):
    """ℓ_n written from the definitions, as a function of the output pre-activation Z."""
    A = REF_ACTIVATIONS[output](Z)
    return ref_terms_from_A(A, Y, loss, Z)


def ref_terms_from_A(A, Y, loss, Z=None):
    if loss == "mse":
        return jnp.mean((A - Y) ** 2, axis=1)
    if loss == "half_squared_error":
        return 0.5 * jnp.sum((A - Y) ** 2, axis=1)
    if loss == "binary_cross_entropy":  # from the logit, as a function of z
        return jnp.sum(Y * jnp.log1p(jnp.exp(-Z)) + (1 - Y) * jnp.log1p(jnp.exp(Z)), axis=1)
    if loss == "cross_entropy":
        return -jnp.sum(Y * (Z - jnp.log(jnp.sum(jnp.exp(Z), axis=1, keepdims=True))), axis=1)
    raise ValueError(loss)


def ref_output(params, X, upto_logits):
    A = X
    for i, layer in enumerate(params):
        Z = A @ layer.W + layer.b[None, :]
        if upto_logits and i == len(params) - 1:
            return Z
        A = REF_ACTIVATIONS[layer.activation](Z)
    return A


def ref_loss(params, X, Y, loss, w):
    Z = ref_output(params, X, upto_logits=True)
    return jnp.sum(w * ref_terms_from_Z(Z, Y, params[-1].activation, loss))


def problem(hidden, output, loss, n, seed=0):
    params, X, Y = make_problem(seed, SIZES, hidden, output, loss, n)
    Y2 = targets_2d(Y, loss, SIZES[-1], jnp.float64)
    w = jnp.asarray(np.random.default_rng(seed).uniform(0.5, 1.5, n), jnp.float64) / n
    return params, X, Y2, w


def full_hessian(params, X, Y, loss, w):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda p: ref_loss(unravel(p), X, Y, loss, w))(flat)


def matrix_of(fn, params):
    """The matrix of a linear map on params-shaped vectors, column by column."""
    flat, unravel = ravel_pytree(params)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    return jax.vmap(lambda e: ravel_pytree(fn(unravel(e)))[0])(eye).T


def ref_ggn(params, X, Y, loss, w):
    """Σ_n w_n J_nᵀ H_n J_n with J from jax.jacrev and H_n from jax.hessian (per example)."""
    output, K = params[-1].activation, SIZES[-1]
    flat, unravel = ravel_pytree(params)
    at_logits = (output, loss) in LOGIT
    J = jax.jacrev(lambda p: ref_output(unravel(p), X, at_logits))(flat)  # (N, K, P)

    def term(o, y):
        if at_logits:
            return ref_terms_from_Z(o[None], y[None], output, loss)[0]
        return ref_terms_from_A(o[None], y[None], loss)[0]

    out = ref_output(params, X, at_logits)
    H = jax.vmap(jax.hessian(term))(out, Y)  # (N, K, K)
    assert J.shape[1] == K
    return jnp.einsum("n,nkp,nkl,nlq->pq", w, J, H, J)


# --- the whole grid: every output/loss pair, then every hidden activation ----------------
CASES = [("tanh", out, loss, n) for (out, loss) in OUTPUT_LOSS_PAIRS for n in (1, 5)]
CASES += [(h, "sigmoid", "mse", 5) for h in mj.HIDDEN_ACTIVATIONS if h != "tanh"]
CASES += [("softplus", "softmax", "cross_entropy", 5)]


@pytest.mark.parametrize("hidden,output,loss,n", CASES)
def test_hvp_ggn_diag_against_autodiff(hidden, output, loss, n):
    params, X, Y, w = problem(hidden, output, loss, n)
    H_ref = full_hessian(params, X, Y, loss, w)
    H = matrix_of(lambda v: curvature.hvp_core(params, X, Y, loss, v, w), params)
    np.testing.assert_allclose(H, H_ref, **TOL)
    G_ref = ref_ggn(params, X, Y, loss, w)
    G = matrix_of(lambda v: curvature.ggn_vp_core(params, X, Y, loss, v, w), params)
    np.testing.assert_allclose(G, G_ref, **TOL)
    d = ravel_pytree(curvature.diag_ggn_core(params, X, Y, loss, w))[0]
    np.testing.assert_allclose(d, jnp.diag(G_ref), **TOL)
