"""mj.levenberg_marquardt (mlds_jax.extensions.levenberg_marquardt): known minima, the damping
and stopping rules, row weights, bad input.  float64.

Independent references: the least-squares (and ridge) solution of a one-layer network by
``numpy.linalg.solve`` of its normal equations; the exact minimum of a realizable problem
(targets made by a teacher network: loss 0 for squared error; for cross-entropy on the teacher's
own probabilities, the mean entropy of the targets, computed with NumPy).

Shapes are shared between tests on purpose: each new (architecture, N, loss, solver) costs one
compilation of the iteration (~1-4 s on a loaded 2-core machine).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_params

import mlds_jax as mj

N = 40


@pytest.fixture(scope="module")
def teacher_problem():
    """A 2-3-1 tanh teacher, 40 inputs, targets its outputs: the minimum is loss 0."""
    teacher = make_params(1, [2, 3, 1], "tanh", "identity", bias_scale=0.5)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, 2))
    Y = np.asarray(mj.forward(teacher, X))
    start = jax.tree_util.tree_map(lambda a: a + 0.1 * rng.standard_normal(a.shape), teacher)
    return teacher, X, Y, start


def test_reaches_the_exact_minimum_of_a_realizable_target(teacher_problem):
    """Zero residual at the teacher: Gauss-Newton converges quadratically; the loss falls from
    ~1e-2 to rounding level (< 1e-25, eps² scale for squared errors of O(1) outputs)."""
    _, X, Y, start = teacher_problem
    params, result = mj.levenberg_marquardt(start, X, Y, "mse", max_iter=200, tol=0.0)
    assert result.loss_history[0] > 1e-3
    assert result.loss_history[-1] < 1e-25
    assert float(mj.loss(params, X, Y, "mse")) == pytest.approx(result.loss_history[-1], abs=1e-25)
    assert result.stop_reason == "max_damping" and result.converged  # nothing lower to find
    assert result.iterations < 200 and result.solves >= result.iterations
    # every accepted step lowers the loss, and μ follows the rule (M4): after an accepted step
    # μ·0.1, then ×10 per rejected trial
    assert np.all(np.diff(result.loss_history) < 0)
    mus = np.concatenate([[1e-2], result.damping_history])  # 1e-2: μ₀ = 1e-3 before its ·0.1
    ratios = np.log10(mus[1:] / mus[:-1])
    assert np.all(np.abs(ratios - np.round(ratios)) < 1e-9) and np.all(ratios >= -1 - 1e-9)
    # the default min_grad rule stops earlier, at ‖∇L‖ ≤ 1e-7 (checked on an independent grad)
    params, result = mj.levenberg_marquardt(start, X, Y, "mse", max_iter=200)
    g = jax.grad(lambda p: mj.loss(p, X, Y, "mse"))(params)
    gnorm = float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g))))
    assert result.stop_reason == "min_grad" and gnorm <= 1e-7
    assert result.grad_norm == pytest.approx(gnorm, rel=1e-6, abs=1e-20)


def test_cross_entropy_reaches_the_entropy_of_realizable_soft_targets():
    """Soft targets = a softmax teacher's probabilities: the minimum of the mean cross-entropy is
    their mean entropy, reached through the GGN at the logits; also with Marquardt scaling."""
    teacher = make_params(2, [2, 3, 3], "tanh", "softmax", bias_scale=0.5)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((N, 2))
    P = np.asarray(mj.forward(teacher, X))
    H = float(np.mean(-np.sum(P * np.log(P), axis=1)))
    start = jax.tree_util.tree_map(lambda a: a + 0.1 * rng.standard_normal(a.shape), teacher)
    for scaling in (False, True):
        _, result = mj.levenberg_marquardt(
            start, X, P, "cross_entropy", max_iter=100, tol=0.0, scaling=scaling
        )
        assert result.loss_history[0] - H > 1e-3
        assert abs(result.loss_history[-1] - H) < 1e-13  # a few ulp of H ≈ 0.9


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_one_layer_ridge_regression_against_its_normal_equations(solver):
    """One identity layer, half squared error and the l2 penalty (M5): L = (1/N)Σ½‖x̃W̃ − y‖² +
    (λ/2)‖W‖², minimised by (X̃ᵀX̃/N + λM)W̃ = X̃ᵀY/N, M = diag(1, 1, 1, 0) (no bias penalty).
    The Hessian is constant, so LM converges to it to the precision of the solve (cond ≈ 10:
    rtol 1e-9)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N, 3)) + 0.3
    Y = rng.standard_normal((N, 2))
    lam = 0.1
    Xt = np.hstack([X, np.ones((N, 1))])
    A = Xt.T @ Xt / N + lam * np.diag([1.0, 1.0, 1.0, 0.0])
    W_ref = np.linalg.solve(A, Xt.T @ Y / N)
    start = make_params(4, [3, 2], "tanh", "identity")
    params, result = mj.levenberg_marquardt(
        start, X, Y, "half_squared_error", l2=lam, tol=0.0, max_iter=50, solver=solver,
        cg_tol=1e-14,
    )  # fmt: skip
    W = np.vstack([np.asarray(params[0].W), np.asarray(params[0].b)[None, :]])
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    assert result.iterations <= 20


def test_row_weights_equal_repeated_rows(teacher_problem):
    """w_n = count_n / Σ count is the loss of the data with row n repeated count_n times: the
    same objective, so the same iterates (up to rounding in the sums)."""
    _, X, Y, start = teacher_problem
    counts = np.random.default_rng(5).integers(1, 4, N)
    Xr, Yr = np.repeat(X, counts, axis=0), np.repeat(Y + 0.05, counts, axis=0)
    a, ra = mj.levenberg_marquardt(
        start, X, Y + 0.05, "mse", max_iter=5, row_weights=counts / counts.sum()
    )
    b, rb = mj.levenberg_marquardt(start, Xr, Yr, "mse", max_iter=5)
    np.testing.assert_allclose(ra.loss_history, rb.loss_history, rtol=1e-10)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-9)


def test_validation_and_patience_rules(teacher_problem):
    """Validation targets that disagree with the training targets: the validation loss rises
    as training fits, max_fail consecutive failures stop the run and the best validation
    parameters come back; the patience rule stops a run whose loss stalls."""
    _, X, Y, start = teacher_problem
    rng = np.random.default_rng(7)
    Xv, Yv = X[:20], Y[:20] + 0.5 * rng.standard_normal((20, 1))
    Ynoisy = Y + 0.3 * rng.standard_normal(Y.shape)
    params, result = mj.levenberg_marquardt(
        start, X, Ynoisy, "mse", max_iter=200, validation_data=(Xv, Yv), max_fail=3
    )
    vals = result.val_loss_history
    assert vals is not None and len(vals) == result.iterations + 1
    best = int(np.argmin(vals))
    assert result.stop_reason == "validation" and result.iterations == best + 3
    assert result.best_iteration == best
    assert float(mj.loss(params, Xv, Yv, "mse")) == pytest.approx(vals[best], rel=1e-12)
    _, result = mj.levenberg_marquardt(
        start, X, Ynoisy, "mse", max_iter=200, patience=2, min_delta=1e-3
    )
    assert result.stop_reason == "no_improvement"
    gains = -np.diff(result.loss_history)
    assert np.all(gains[-2:] <= 1e-3 + 1e-15)
    _, result = mj.levenberg_marquardt(start, X, Ynoisy, "mse", max_iter=3)
    assert result.stop_reason == "max_iter" and not result.converged and result.iterations == 3
    _, result = mj.levenberg_marquardt(start, X, Ynoisy, "mse", max_iter=3, goal=1e3)
    assert result.stop_reason == "goal" and result.iterations == 0


def test_bad_input(teacher_problem):
    _, X, Y, start = teacher_problem

    def lm(**kwargs):
        args = dict(params=start, X=X, Y=Y, loss="mse") | kwargs
        return mj.levenberg_marquardt(**args)

    for bad, match in (
        (dict(damping=0.0), "damping must be a finite number > 0"),
        (dict(damping=-1e-3), "damping must be a finite number > 0"),
        (dict(damping_decrease=1.0), "damping_decrease must be < 1"),
        (dict(damping_increase=1.0), "damping_increase must be > 1"),
        (dict(max_damping=1e-4), r"max_damping \(0.0001\) must be >= damping"),
        (dict(max_iter=0), "max_iter must be >= 1"),
        (dict(tol=-1.0), "tol must be a finite number >= 0"),
        (dict(l2=float("nan")), "l2 must be a finite number >= 0"),
        (dict(max_fail=0), "max_fail must be >= 1"),
        (dict(solver="svd"), "solver must be one of"),
        (dict(Y=Y[:5]), "X has 40 rows but Y has 5"),
        (dict(X=X[:, :1]), "X has 1 features but the first layer expects"),
        (dict(row_weights=np.ones(3)), r"row_weights must have shape \(40,\)"),
        (dict(validation_data=(X[:, :1], Y)), "X_val has 1 features"),
        (dict(validation_data=(X[:4], Y[:3])), "X has 4 rows but Y_val has 3"),
    ):
        with pytest.raises(ValueError, match=match):
            lm(**bad)
    with pytest.raises(TypeError, match="validation_data must be a pair"):
        lm(validation_data=X)
    with pytest.raises(TypeError, match="scaling must be a bool"):
        lm(scaling=1)
    with pytest.raises(TypeError, match="cannot be traced"):
        jax.jit(lambda X: mj.levenberg_marquardt(start, X, Y, "mse")[1].iterations)(X)
    big = make_params(0, [100, 100, 1], "tanh", "identity")  # P = 10201
    with pytest.raises(ValueError, match=r'solver="dense" needs the 10201 x 10201 matrix G'):
        mj.levenberg_marquardt(big, np.zeros((3, 100)), np.zeros((3, 1)), "mse", solver="dense")
