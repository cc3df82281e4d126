"""Curvature by hand (mlds_jax.extensions: rop, diag_ggn, lanczos, trace, density) against
autodiff, in float64.

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

import functools

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
from mlds_jax.extensions import trace
from mlds_jax.extensions.density import hessian_spectral_density_core
from mlds_jax.extensions.diag_ggn import diag_ggn_core
from mlds_jax.extensions.lanczos import (
    lanczos_core,
    lanczos_step_core,
    lanczos_steps_core,
    sharpness_core,
    top_eigenpair_core,
)
from mlds_jax.extensions.rop import ggn_vp_core, hvp_core
from mlds_jax.extensions.trace import hessian_trace_core, hutch_plus_plus_core

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
# every pair once with tanh hidden layers (N = 5), batch 1 for a fused and a non-fused pair,
# every other hidden activation once under a non-fused pair (sigmoid + mse: both f'' terms)
CASES = [("tanh", out, loss, 5) for (out, loss) in OUTPUT_LOSS_PAIRS]
CASES += [("tanh", "softmax", "cross_entropy", 1), ("tanh", "sigmoid", "mse", 1)]
CASES += [(h, "sigmoid", "mse", 5) for h in mj.activations.HIDDEN_ACTIVATIONS if h != "tanh"]


@pytest.mark.parametrize("hidden,output,loss,n", CASES)
def test_hvp_ggn_diag_against_autodiff(hidden, output, loss, n):
    params, X, Y, w = problem(hidden, output, loss, n)
    H_ref = full_hessian(params, X, Y, loss, w)
    H = matrix_of(lambda v: hvp_core(params, X, Y, loss, v, w), params)
    np.testing.assert_allclose(H, H_ref, **TOL)
    G_ref = ref_ggn(params, X, Y, loss, w)
    G = matrix_of(lambda v: ggn_vp_core(params, X, Y, loss, v, w), params)
    np.testing.assert_allclose(G, G_ref, **TOL)
    d = ravel_pytree(diag_ggn_core(params, X, Y, loss, w))[0]
    np.testing.assert_allclose(d, jnp.diag(G_ref), **TOL)


# --- the public API: validation, then the same numbers ------------------------------------
@pytest.fixture(scope="module")
def net():
    """A softmax classifier with integer labels and its autodiff loss on flat parameters."""
    params, X, Y = make_problem(1, SIZES, "tanh", "softmax", "cross_entropy", 6)
    Y2 = targets_2d(Y, "cross_entropy", SIZES[-1], jnp.float64)
    w = jnp.full((6,), 1 / 6, jnp.float64)
    flat, unravel = ravel_pytree(params)

    def f(p):
        return ref_loss(unravel(p), X, Y2, "cross_entropy", w)

    return params, X, Y, f, flat, unravel


def test_hvp_matches_jvp_of_grad(net):
    params, X, Y, f, flat, unravel = net
    v = unravel(jnp.asarray(np.random.default_rng(2).standard_normal(flat.shape)))
    _, Hv_ref = jax.jvp(jax.grad(f), (flat,), (ravel_pytree(v)[0],))
    Hv = mj.hvp(params, X, Y, "cross_entropy", v)
    np.testing.assert_allclose(ravel_pytree(Hv)[0], Hv_ref, **TOL)
    assert jax.tree_util.tree_structure(Hv) == jax.tree_util.tree_structure(params)


def test_row_weights_and_mean_default(net):
    params, X, Y, f, flat, unravel = net
    v = unravel(jnp.asarray(np.random.default_rng(3).standard_normal(flat.shape)))
    ones = mj.hvp(params, X, Y, "cross_entropy", v, row_weights=np.full(6, 1 / 6))
    default = mj.hvp(params, X, Y, "cross_entropy", v)
    np.testing.assert_allclose(ravel_pytree(ones)[0], ravel_pytree(default)[0], **TOL)
    # a zero weight removes the row: same as dropping it (with the others' weights kept)
    w = np.array([0.0, 0.2, 0.2, 0.2, 0.2, 0.2])
    a = mj.ggn_vp(params, X, Y, "cross_entropy", v, row_weights=w)
    b = mj.ggn_vp(params, X[1:], Y[1:], "cross_entropy", v)
    np.testing.assert_allclose(ravel_pytree(a)[0], ravel_pytree(b)[0], **TOL)


def test_top_eigenvalue_matches_eigh_and_is_algebraic():
    # tanh layers, mse far from the targets: an indefinite Hessian whose most negative
    # eigenvalue (−2.76) is larger in magnitude than the largest (2.00); Lanczos must return
    # the largest (algebraic) one, which power iteration on |λ| would miss
    params, X, Y = make_problem(0, SIZES, "tanh", "tanh", "mse", 6)
    Y = 3.0 * Y
    w = jnp.full((6,), 1 / 6, jnp.float64)
    flat, unravel = ravel_pytree(params)
    H = np.asarray(jax.hessian(lambda p: ref_loss(unravel(p), X, Y, "mse", w))(flat))
    evals, evecs = np.linalg.eigh(H)
    assert evals[0] < 0 < evals[-1] < -evals[0]
    lam, vec = mj.hessian_top_eigenvalue(params, X, Y, "mse", key=jax.random.key(1))
    assert abs(float(lam) - evals[-1]) <= 1e-6 * abs(evals[-1])
    y = ravel_pytree(vec)[0]
    assert abs(abs(float(jnp.dot(y, evecs[:, -1]))) - 1) < 1e-6
    eta = mj.extensions.network_max_stable_step_size(params, X, Y, "mse", key=jax.random.key(1))
    assert eta == pytest.approx(2 / evals[-1], rel=1e-6)
    assert mj.sharpness(params, X, Y, "mse", key=jax.random.key(1)) == pytest.approx(float(lam))
    plain, _ = mj.hessian_top_eigenvalue(
        params, X, Y, "mse", key=jax.random.key(1), reorthogonalize=False
    )
    assert abs(float(plain) - evals[-1]) <= 1e-6 * abs(evals[-1])


def test_hessian_trace_unbiased(net):
    params, X, Y, f, flat, unravel = net
    tr_ref = float(jnp.trace(jax.hessian(f)(flat)))
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    est, per_probe = hessian_trace_core(
        params, Xp, Yp, "cross_entropy", jax.random.key(5), 2000
    )
    se = float(np.std(per_probe)) / np.sqrt(2000)
    assert abs(float(est) - tr_ref) <= 5 * se
    small = mj.hessian_trace(params, X, Y, "cross_entropy", key=jax.random.key(5), samples=3)
    assert np.isfinite(float(small))


@pytest.mark.parametrize(
    "output,loss",
    [
        ("softmax", "cross_entropy"),
        ("sigmoid", "binary_cross_entropy"),
        ("tanh", "half_squared_error"),
    ],
)
def test_mc_diag_ggn_unbiased(output, loss):
    params, X, Y, w = problem("tanh", output, loss, 4, seed=7)
    exact = ravel_pytree(diag_ggn_core(params, X, Y, loss, w))[0]
    R = 4000
    keys = jax.random.split(jax.random.key(3), R)
    draws = jax.vmap(
        lambda k: ravel_pytree(diag_ggn_core(params, X, Y, loss, w, k, 1))[0]
    )(keys)
    mean, se = jnp.mean(draws, axis=0), jnp.std(draws, axis=0) / np.sqrt(R)
    assert bool(jnp.all(jnp.abs(mean - exact) <= 5 * se + 1e-12))
    one = mj.diag_ggn(params, X, Y, loss, row_weights=w, mc_samples=2, key=jax.random.key(0))
    assert all(bool(jnp.all(x >= 0)) for x in jax.tree_util.tree_leaves(one))


def test_network_max_stable_step_size_closed_form():
    """One identity layer, half squared error: L = (1/N) Σ ½‖x_n W + b − y_n‖².  In (W, b) the
    Hessian is I_K ⊗ M with M = (1/N) Σ [x_n, 1]ᵀ[x_n, 1], so λ_max = λ_max(M), η = 2/λ_max (S2)."""
    rng = np.random.default_rng(11)
    N, d, K = 7, 3, 2
    X = rng.standard_normal((N, d)) + 0.5
    Y = rng.standard_normal((N, K))
    params = (
        mj.Dense(
            W=jnp.asarray(rng.standard_normal((d, K))),
            b=jnp.asarray(rng.standard_normal(K)),
            activation="identity",
        ),
    )
    Xt = np.hstack([X, np.ones((N, 1))])
    M = Xt.T @ Xt / N
    eta = 2 / np.linalg.eigvalsh(M)[-1]
    got = mj.extensions.network_max_stable_step_size(params, X, Y, "half_squared_error")
    assert got == pytest.approx(eta, rel=1e-9)


def test_network_exact_step_size_is_gtg_over_gthg(net):
    params, X, Y, f, flat, unravel = net
    g = jax.grad(f)(flat)
    gHg = jnp.dot(g, jax.jvp(jax.grad(f), (flat,), (g,))[1])
    eta = mj.extensions.network_exact_step_size(params, X, Y, "cross_entropy")
    assert eta == pytest.approx(float(jnp.dot(g, g) / gHg), rel=1e-10)


# --- bad input ----------------------------------------------------------------------------
def test_bad_direction_and_arguments(net):
    params, X, Y, f, flat, unravel = net
    v = unravel(jnp.zeros_like(flat))
    with pytest.raises(TypeError, match="v must be a tuple of 3 Dense"):
        mj.hvp(params, X, Y, "cross_entropy", v[:2])
    bad = (v[0], mj.Dense(W=v[1].W[:, :2], b=v[1].b, activation=v[1].activation), v[2])
    with pytest.raises(ValueError, match=r"v\[1\]\.W has shape \(4, 2\)"):
        mj.ggn_vp(params, X, Y, "cross_entropy", bad)
    bad = (v[0], v[1], mj.Dense(W=v[2].W.astype(jnp.float32), b=v[2].b, activation="softmax"))
    with pytest.raises(TypeError, match="dtype"):
        mj.hvp(params, X, Y, "cross_entropy", bad)
    nan = (v[0], mj.Dense(W=v[1].W.at[0, 0].set(jnp.nan), b=v[1].b, activation="tanh"), v[2])
    with pytest.raises(ValueError, match="non-finite"):
        mj.hvp(params, X, Y, "cross_entropy", nan)
    with pytest.raises(ValueError, match=r"row_weights must have shape \(6,\)"):
        mj.hvp(params, X, Y, "cross_entropy", v, row_weights=np.ones(5))
    with pytest.raises(ValueError, match=">= 0"):
        mj.diag_ggn(params, X, Y, "cross_entropy", row_weights=-np.ones(6))
    with pytest.raises(ValueError, match="needs a key"):
        mj.diag_ggn(params, X, Y, "cross_entropy", mc_samples=3)
    with pytest.raises(ValueError, match="mc_samples must be >= 1"):
        mj.diag_ggn(params, X, Y, "cross_entropy", mc_samples=0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        mj.hessian_trace(params, X, Y, "cross_entropy", key=0)
    with pytest.raises(ValueError, match="num_iters must be >= 1"):
        mj.hessian_top_eigenvalue(params, X, Y, "cross_entropy", key=jax.random.key(0), num_iters=0)
    with pytest.raises(ValueError, match="class labels must lie"):
        mj.hvp(params, X, np.full(6, 7), "cross_entropy", v)


# --- Lanczos: the compiled chunks against a step-by-step reference ---------------------------
def ref_lanczos(H, q0, m, tol, reorthogonalize):
    """Lanczos (H11) written from its definition in float64 NumPy, one step at a time, with the
    stopping rule of ``lanczos_core``'s docstring.  Returns (θ, y, steps, residual/(tol·|θ|) per
    step)."""
    eps = np.finfo(np.float64).eps
    P = H.shape[0]
    Q = np.zeros((m + 1, P))
    Q[0] = q0 / np.linalg.norm(q0)
    alpha, beta, ratios = [], [], []
    for k in range(m):
        z = H @ Q[k]
        if k > 0:
            z = z - beta[-1] * Q[k - 1]
        a = Q[k] @ z
        z = z - a * Q[k]
        if reorthogonalize:
            before = np.linalg.norm(z)
            z = z - Q[: k + 1].T @ (Q[: k + 1] @ z)
            if np.linalg.norm(z) < 0.7071 * before:
                z = z - Q[: k + 1].T @ (Q[: k + 1] @ z)
        b = np.linalg.norm(z)
        Q[k + 1] = z / b if b > 0 else 0.0
        alpha.append(a)
        beta.append(b)
        T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
        vals, vecs = np.linalg.eigh(T)
        theta, s = vals[-1], vecs[:, -1]
        ratios.append(b * abs(s[-1]) / (tol * abs(theta)))
        scale = max(abs(theta), max(abs(x) for x in alpha))
        if ratios[-1] <= 1.0 or b <= 1e3 * eps * scale:
            break
    y = Q[: len(alpha)].T @ s
    return theta, y / np.linalg.norm(y), len(alpha), ratios


@pytest.mark.parametrize("reorthogonalize", [True, False])
@pytest.mark.parametrize("tol,num_iters", [(1e-2, 100), (1e-5, 100), (1e-9, 100), (1e-9, 3)])
def test_lanczos_core_stops_where_a_stepwise_loop_stops(net, reorthogonalize, tol, num_iters):
    """``lanczos_core`` runs its steps in compiled chunks and checks them afterwards: θ, y and the
    step count are those of the reference loop that checks after every step (so steps a chunk
    ran past the stop are discarded), and it never runs more than min(num_iters, P) steps."""
    params, X, Y, f, flat, unravel = net
    H = np.asarray(jax.hessian(f)(flat))
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    key = jax.random.key(4)
    q0 = np.asarray(jax.random.normal(key, flat.shape, dtype=jnp.float64))
    m = min(num_iters, flat.shape[0])
    theta_ref, y_ref, steps_ref, ratios = ref_lanczos(H, q0, m, tol, reorthogonalize)
    # the premise: no stopping decision of the reference is within rounding of the threshold
    assert all(abs(r - 1.0) > 1e-6 for r in ratios)
    theta, y, steps = lanczos_core(
        params, Xp, Yp, "cross_entropy", key, None, num_iters, tol, reorthogonalize
    )
    assert steps == steps_ref <= m
    if num_iters == 3:
        assert steps == 3  # the cap, not convergence
    np.testing.assert_allclose(theta, theta_ref, rtol=TOL["rtol"], atol=TOL["atol"])
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=TOL["rtol"], atol=TOL["atol"])


def test_lanczos_core_grows_q_past_its_first_block(net):
    """A run longer than the 32 rows Q starts with (tol = 0: no early stop; 40 steps) grows Q
    once and matches the reference loop step for step (θ, y, the step count)."""
    params, X, Y, f, flat, unravel = net
    assert flat.shape[0] > 40  # P: so the 40 steps are not capped by P
    H = np.asarray(jax.hessian(f)(flat))
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    key = jax.random.key(4)
    q0 = np.asarray(jax.random.normal(key, flat.shape, dtype=jnp.float64))
    with np.errstate(divide="ignore", invalid="ignore"):  # its residual ratios divide by tol = 0
        theta_ref, y_ref, steps_ref, _ = ref_lanczos(H, q0, 40, 0.0, True)
    theta, y, steps = lanczos_core(params, Xp, Yp, "cross_entropy", key, None, 40, 0.0)
    assert steps == steps_ref == 40
    np.testing.assert_allclose(theta, theta_ref, rtol=TOL["rtol"], atol=TOL["atol"])
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=TOL["rtol"], atol=TOL["atol"])


def test_lanczos_steps_core_chunks_equal_single_steps(net):
    """One ``lanczos_steps_core`` call over steps 0..6, two calls split at 3, and seven
    ``lanczos_step_core`` calls give the same Q, α and β."""
    params, X, Y, f, flat, unravel = net
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    w = jnp.full((6,), 1 / 6, jnp.float64)
    P, n = flat.shape[0], 7
    q0 = jax.random.normal(jax.random.key(5), (P,), jnp.float64)
    Q0 = jnp.zeros((n + 1, P), jnp.float64).at[0].set(q0 / jnp.linalg.norm(q0))
    zeros = jnp.zeros((n,), jnp.float64)
    i32 = functools.partial(jnp.asarray, dtype=jnp.int32)
    args = (params, Xp, Yp, "cross_entropy", w)
    Q1, a1, b1 = lanczos_steps_core(*args, Q0.copy(), zeros, zeros, i32(0), i32(n))
    Q2, a2, b2 = lanczos_steps_core(*args, Q0.copy(), zeros, zeros, i32(0), i32(3))
    Q2, a2, b2 = lanczos_steps_core(*args, Q2, a2, b2, i32(3), i32(n))
    Q3, a3, b3 = Q0.copy(), [], []
    b_prev = jnp.zeros((), jnp.float64)
    for k in range(n):
        Q3, a, b_prev = lanczos_step_core(*args, Q3, i32(k), b_prev)
        a3.append(a)
        b3.append(b_prev)
    for Q, a, b in ((Q2, a2, b2), (Q3, jnp.stack(a3), jnp.stack(b3))):
        np.testing.assert_allclose(Q, Q1, rtol=TOL["rtol"], atol=TOL["atol"])
        np.testing.assert_allclose(a, a1, rtol=TOL["rtol"], atol=TOL["atol"])
        np.testing.assert_allclose(b, b1, rtol=TOL["rtol"], atol=TOL["atol"])
    # the rows are orthonormal (full reorthogonalisation)
    np.testing.assert_allclose(Q1 @ Q1.T, np.eye(n + 1), atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 5, 9])
def test_lanczos_step_reorthogonalises_against_filled_rows_only(net, k):
    """Step k projects z against rows 0..k of Q only: rows beyond k + 1 (here garbage, not
    zeros) neither enter the result nor change, for k from the first row to the last but one."""
    params, X, Y, f, flat, unravel = net
    H = np.asarray(jax.hessian(f)(flat))
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    w = jnp.full((6,), 1 / 6, jnp.float64)
    P, R = flat.shape[0], 11
    rng = np.random.default_rng(k)
    basis = np.linalg.qr(rng.standard_normal((P, k + 1)))[0].T  # rows 0..k orthonormal
    garbage = rng.standard_normal((R - k - 1, P))
    Q = jnp.asarray(np.concatenate([basis, garbage]))
    beta_prev = 0.3
    z = H @ basis[k] - (beta_prev * basis[k - 1] if k > 0 else 0.0)
    a_ref = basis[k] @ z
    z = z - a_ref * basis[k]
    before = np.linalg.norm(z)
    z = z - basis.T @ (basis @ z)
    if np.linalg.norm(z) < 0.7071 * before:
        z = z - basis.T @ (basis @ z)
    b_ref = np.linalg.norm(z)
    Q_new, a, b = lanczos_step_core(
        params, Xp, Yp, "cross_entropy", w, Q, jnp.asarray(k, jnp.int32), jnp.float64(beta_prev)
    )
    np.testing.assert_allclose(a, a_ref, rtol=TOL["rtol"], atol=TOL["atol"])
    np.testing.assert_allclose(b, b_ref, rtol=TOL["rtol"], atol=TOL["atol"])
    expected = np.concatenate([basis, (z / b_ref)[None], garbage[1:]])
    np.testing.assert_allclose(np.asarray(Q_new), expected, rtol=TOL["rtol"], atol=TOL["atol"])


# --- the eigenvalue's stopping rule, block probes, Hutch++, the spectral density -----------
def test_eigenvalue_rule_gives_the_digits_asked_in_fewer_steps(net):
    """stop="eigenvalue" (H15) returns λ_max within tol·|λ| of eigh's for tol = 1e-3 and 1e-6,
    and stops no later than the residual rule (H11) at the same tol."""
    params, X, Y, f, flat, unravel = net
    lam_ref = np.linalg.eigvalsh(np.asarray(jax.hessian(f)(flat)))[-1]
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    for tol in (1e-3, 1e-6):
        lam, _ = mj.hessian_top_eigenvalue(
            params, X, Y, "cross_entropy", key=jax.random.key(2), tol=tol
        )
        assert abs(float(lam) - lam_ref) <= tol * abs(lam_ref)
        steps = {
            rule: int(
                top_eigenpair_core(
                    params, Xp, Yp, "cross_entropy", jax.random.key(2), None, 100, tol, True, rule
                ).steps
            )
            for rule in ("eigenvalue", "residual")
        }
        assert steps["eigenvalue"] <= steps["residual"]


def test_sharpness_core_is_lanczos_core_under_jit(net):
    params, X, Y, f, flat, unravel = net
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    key = jax.random.key(6)
    theta, _, _ = lanczos_core(params, Xp, Yp, "cross_entropy", key)
    jitted = jax.jit(sharpness_core, static_argnames="loss")
    np.testing.assert_allclose(jitted(params, Xp, Yp, loss="cross_entropy", key=key), theta, **TOL)


def test_block_probes_are_the_single_probes(net):
    """The estimate does not depend on how many probes share a vmapped pass."""
    params, X, Y, f, flat, unravel = net
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    key = jax.random.key(8)
    _, one = hessian_trace_core(params, Xp, Yp, "cross_entropy", key, 7, None, 1)
    _, blocks = hessian_trace_core(params, Xp, Yp, "cross_entropy", key, 7, None, 3)
    np.testing.assert_allclose(blocks, one, **TOL)


def test_hutch_plus_plus_is_exact_with_a_full_sketch_and_unbiased(net):
    """With samples/3 ≥ P the sketch Q spans everything: tr(QᵀHQ) = tr H exactly (H16).  With
    9 products it is unbiased: the mean of 400 independent estimates lies within 5 standard
    errors of tr H."""
    params, X, Y, f, flat, unravel = net
    tr_ref = float(jnp.trace(jax.hessian(f)(flat)))
    P = flat.shape[0]
    full = mj.hessian_trace(
        params, X, Y, "cross_entropy", key=jax.random.key(0), samples=3 * P + 1, method="hutch++"
    )
    np.testing.assert_allclose(float(full), tr_ref, rtol=1e-9)
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    draws = jax.vmap(
        lambda k: hutch_plus_plus_core(params, Xp, Yp, "cross_entropy", k, 9)
    )(jax.random.split(jax.random.key(1), 400))
    se = float(jnp.std(draws)) / np.sqrt(400)
    assert abs(float(jnp.mean(draws)) - tr_ref) <= 5 * se


def test_spectral_density_quadrature_against_eigh(net):
    """(H17): each probe's weights sum to 1 and reproduce its quadratic forms vᵀH^k v/‖v‖²
    exactly for k < 2m (here m = 6, k ≤ 5); averaged over 300 probes the moments Σ τ θ^k
    estimate tr(H^k)/P (within 5 standard errors); run to the end, the nodes are eigenvalues."""
    params, X, Y, f, flat, unravel = net
    H = np.asarray(jax.hessian(f)(flat))
    evals = np.linalg.eigvalsh(H)
    P = flat.shape[0]
    Xp, Yp = mj.validation.check_batch(params, X, Y, "cross_entropy")
    key = jax.random.key(3)
    nodes, weights = mj.hessian_spectral_density(
        params, X, Y, "cross_entropy", key=key, num_iters=6, num_probes=2
    )
    assert nodes.shape == weights.shape == (2, 6)
    np.testing.assert_allclose(jnp.sum(weights, axis=1), 1.0, **TOL)
    for p, k in enumerate(jax.random.split(key, 2)):
        v = np.asarray(trace.rademacher(k, flat.shape, jnp.float64))
        assert set(np.unique(v)) == {-1.0, 1.0}
        for power in range(6):
            ref = v @ np.linalg.matrix_power(H, power) @ v / (v @ v)
            got = float(jnp.sum(weights[p] * nodes[p] ** power))
            np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)
    nodes, weights = hessian_spectral_density_core(
        params, Xp, Yp, "cross_entropy", jax.random.key(4), 6, 300
    )
    for power in (1, 2, 3):
        per_probe = np.asarray(jnp.sum(weights * nodes**power, axis=1))
        se = per_probe.std() / np.sqrt(300)
        assert abs(per_probe.mean() - np.sum(evals**power) / P) <= 5 * se
    # run to P steps (or to an invariant Krylov space): every node that carries weight is an
    # eigenvalue of H, and together they carry all of it
    full, w_full = hessian_spectral_density_core(
        params, Xp, Yp, "cross_entropy", jax.random.key(5), P, 1
    )
    carried = np.asarray(w_full[0]) > 1e-12
    distance = np.abs(np.asarray(full[0])[carried][:, None] - evals[None]).min(axis=1)
    assert distance.max() < 1e-8
    np.testing.assert_allclose(np.asarray(w_full[0])[carried].sum(), 1.0, **TOL)


@pytest.mark.parametrize(
    "output,loss", [("softmax", "cross_entropy"), ("sigmoid", "mse"), ("identity", "mse")]
)
def test_per_example_diag_ggn_is_each_examples_ggn_diagonal(output, loss):
    """(H18): row n is diag(w_n J_nᵀ H_n J_n) of ref_ggn on example n alone (jax.jacrev and
    jax.hessian); the rows sum to diag_ggn."""
    params, X, Y, w = problem("tanh", output, loss, 4, seed=9)
    per = mj.per_example_diag_ggn(params, X, Y, loss, row_weights=w)
    assert per[0].W.shape == (4, *params[0].W.shape)
    for n in range(4):
        row = ravel_pytree(jax.tree_util.tree_map(lambda x, n=n: x[n], per))[0]
        ref = jnp.diag(ref_ggn(params, X[n : n + 1], Y[n : n + 1], loss, w[n : n + 1]))
        np.testing.assert_allclose(row, ref, **TOL)
    total = jax.tree_util.tree_map(lambda x: x.sum(axis=0), per)
    d = diag_ggn_core(params, X, Y, loss, w)
    np.testing.assert_allclose(ravel_pytree(total)[0], ravel_pytree(d)[0], **TOL)
