"""mj.extensions.gauss_newton_direction (mlds_jax.extensions.gauss_newton) against the explicit
formula.

Reference: d = −(G + μD)⁻¹ g solved by ``numpy.linalg.solve``, with G = Σ_n w_n J_nᵀ H_n J_n
built from ``jax.jacrev`` of an independent forward pass (``helpers.REF_ACTIVATIONS``, to the
logits for the log-losses, to Ŷ otherwise) and H_n from ``jax.hessian`` of each example's loss
written from its definition, and g = ``jax.grad`` of the same reference loss.  float64.

Tolerances: the dense solve does the same arithmetic as the reference in a different order;
its error is ~cond(G + μD)·eps.  The problems below have cond ≤ 1e3 (asserted), so
1e3 · 2.2e-16 ≈ 2e-13 relative: rtol 1e-10 (the suite's rule) holds with orders to spare.
CG stops at relative residual 1e-13, so its error is at most cond · 1e-13 ≈ 1e-10 relative
to ‖d‖: it is compared with rtol 1e-8 on entries and an atol of 1e-8·max|d|.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params, make_problem, ref_network_output, targets_2d
from jax.flatten_util import ravel_pytree

import mlds_jax as mj
from mlds_jax.extensions import gauss_newton

SIZES = [3, 4, 2]  # P = 26
LOGIT = {("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy")}


def ref_term(o, y, output, loss, logits):
    """ℓ for one example as a function of the output o (logits or ŷ), from its definition."""
    if loss == "mse":
        return jnp.mean((o - y) ** 2)
    if loss == "half_squared_error":
        return 0.5 * jnp.sum((o - y) ** 2)
    assert logits
    if loss == "binary_cross_entropy":
        return jnp.sum(y * jnp.log1p(jnp.exp(-o)) + (1 - y) * jnp.log1p(jnp.exp(o)))
    return -jnp.sum(y * (o - jnp.log(jnp.sum(jnp.exp(o)))))  # cross_entropy


@functools.partial(jax.jit, static_argnames="loss")  # one compile, not hundreds of eager ops
def reference(params, X, Y2, loss, w):
    """(G, g) on the flat parameters, from jax.jacrev, jax.hessian and jax.grad."""
    output = params[-1].activation
    logits = (output, loss) in LOGIT
    flat, unravel = ravel_pytree(params)
    J = jax.jacrev(lambda p: ref_network_output(unravel(p), X, logits))(flat)  # (N, K, P)
    out = ref_network_output(params, X, logits)
    H = jax.vmap(jax.hessian(lambda o, y: ref_term(o, y, output, loss, logits)))(out, Y2)
    G = jnp.einsum("n,nkp,nkl,nlq->pq", w, J, H, J)

    def L(p):
        o = ref_network_output(unravel(p), X, logits)
        return jnp.sum(w * jax.vmap(lambda a, y: ref_term(a, y, output, loss, logits))(o, Y2))

    return G, jax.grad(L)(flat)


def problem(output, loss, n=20, seed=0):
    params, X, Y = make_problem(seed, SIZES, "tanh", output, loss, n)
    w = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    w = w / w.sum()
    return params, X, Y, targets_2d(Y, loss, SIZES[-1], jnp.float64), w


CASES = [
    ("identity", "mse"),
    ("sigmoid", "mse"),  # GGN at Ŷ: J includes σ'
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
]


@pytest.mark.parametrize("output,loss", CASES)
def test_direction_matches_explicit_formula_both_solvers(output, loss):
    params, X, Y, Y2, w = problem(output, loss)
    G, g = map(np.asarray, reference(params, X, Y2, loss, w))
    scaled = (output, loss) == ("softmax", "cross_entropy")  # Marquardt's D = diag(G) once
    mu = 1.0 if scaled else 0.05  # μD with D = diag(G) ≤ 0.3: a comparable damping
    D = np.diag(G).copy() if scaled else np.ones_like(g)
    d_ref = -np.linalg.solve(G + mu * np.diag(D), g)
    assert np.linalg.cond(G + mu * np.diag(D)) < 1e3  # the premise of the tolerances
    for solver, tol in (("dense", dict(rtol=1e-10, atol=1e-12)), ("cg", None)):
        d = mj.extensions.gauss_newton_direction(
            params, X, Y, loss, damping=mu, row_weights=w, solver=solver, scaling=scaled,
            cg_tol=1e-13, cg_maxiter=500,
        )  # fmt: skip
        d = np.asarray(ravel_pytree(d)[0])
        if tol is None:
            tol = dict(rtol=1e-8, atol=1e-8 * np.abs(d_ref).max())
        np.testing.assert_allclose(d, d_ref, **tol)


def test_damping_limits():
    """μ → ∞: d → −∇L/μ (a gradient step of length 1/μ); μ → 0: d → −G⁻¹∇L (Gauss-Newton).

    (G + μI)⁻¹ = μ⁻¹(I − G/μ + ...), so ‖μd + g‖ ≤ ‖G‖‖g‖/μ + O(μ⁻²): with μ = 1e8·‖G‖ the
    relative error is ≤ 1e-8.  (G + μI)⁻¹g − G⁻¹g = −μ G⁻¹(G + μI)⁻¹ g: relative error
    ≤ μ/λ_min(G); with μ = 1e-10·λ_min it is ≤ 1e-10, plus both solves' cond(G)·eps: a
    network's GGN is ill-conditioned (here cond ≈ 3e7, asserted < 1e8: ≤ 2.2e-8), so the
    comparison uses 1e-6 relative to the largest entry (45× that bound).
    """
    params, X, Y, Y2, w = problem("identity", "mse", n=30)  # N·K = 60 > P = 26: G invertible
    G, g = map(np.asarray, reference(params, X, Y2, "mse", w))
    evals = np.linalg.eigvalsh(G)
    assert evals[0] > 0 and evals[-1] / evals[0] < 1e8
    big = 1e8 * evals[-1]
    d = mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping=big, row_weights=w)
    d = ravel_pytree(d)[0]
    np.testing.assert_allclose(big * np.asarray(d), -g, rtol=1e-7, atol=1e-7 * np.abs(g).max())
    small = 1e-10 * evals[0]
    d = ravel_pytree(
        mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping=small, row_weights=w)
    )[0]
    d_gn = -np.linalg.solve(G, g)
    np.testing.assert_allclose(np.asarray(d), d_gn, rtol=1e-6, atol=1e-6 * np.abs(d_gn).max())


def test_auto_picks_dense_below_the_switch_and_cg_above():
    assert gauss_newton.check_gn_solver("auto", 26, 20, 2) == "dense"
    above = gauss_newton.DENSE_AUTO_MAX_PARAMS + 1
    assert gauss_newton.check_gn_solver("auto", above, 20, 2) == "cg"
    rows = gauss_newton.DENSE_MAX_JACOBIAN_ENTRIES // 26 + 1  # a Jacobian too large to store
    assert gauss_newton.check_gn_solver("auto", 26, rows, 1) == "cg"


def test_float32_cg_on_digits_is_finite_and_matches_the_float64_dense_solve():
    """The CG solve in float32 on real data (digits, 64-32-10 tanh/softmax: 2410 parameters,
    where "auto" picks CG), where ``jax.scipy.sparse.linalg.cg`` returned an all-NaN
    direction: finite, and the float64 dense Cholesky solve's direction to 1e-4 relative
    (float32 CG and float32 dense both land ~1e-5 from it; the bound leaves 10x for BLAS
    and thread-count differences, and is 1e4 below what a wrong direction would give)."""
    ds = mj.load_dataset("digits", test_size=0.2, seed=0)
    params = mj.init_mlp(0, [64, 32, 10], hidden="tanh", output="softmax", dtype=jnp.float32)
    X, y = ds.X_train.astype(np.float32), ds.y_train
    d32 = mj.extensions.gauss_newton_direction(params, X, y, "cross_entropy", damping=1e-3,
                                               solver="cg")  # fmt: skip
    d32 = np.asarray(ravel_pytree(d32)[0], np.float64)
    assert np.isfinite(d32).all()
    p64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    d64 = mj.extensions.gauss_newton_direction(p64, X.astype(np.float64), y, "cross_entropy",
                                               damping=1e-3, solver="dense")  # fmt: skip
    d64 = np.asarray(ravel_pytree(d64)[0])
    assert np.linalg.norm(d32 - d64) <= 1e-4 * np.linalg.norm(d64)


def test_bad_input():
    params, X, Y, _, w = problem("identity", "mse")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="damping must be a finite number > 0"):
            mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping=bad)
    with pytest.raises(TypeError, match="damping must be a real number"):
        mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping="1e-3")
    with pytest.raises(ValueError, match="solver must be one of"):
        mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping=1.0, solver="qr")
    with pytest.raises(ValueError, match=r"row_weights must have shape \(20,\)"):
        mj.extensions.gauss_newton_direction(params, X, Y, "mse", damping=1.0, row_weights=w[:3])
    with pytest.raises(ValueError, match="X has 20 rows but Y has 19"):
        mj.extensions.gauss_newton_direction(params, X, Y[:19], "mse", damping=1.0)
    # a network with P = 10201 parameters: too large for the forced dense solve, refused
    # before anything is traced (and "auto" would pick CG)
    big = make_params(0, [100, 100, 1], "tanh", "identity")
    Xb, Yb = np.zeros((3, 100)), np.zeros((3, 1))
    with pytest.raises(ValueError, match=r'solver="dense" needs the 10201 x 10201 matrix G'):
        mj.extensions.gauss_newton_direction(big, Xb, Yb, "mse", damping=1.0, solver="dense")
