"""Tests for mlds_jax.descent (fixed-step gradient descent, lecture "Gradient descent").

Written to pass with or without ``jax_enable_x64``: tolerances follow the working dtype and
exact expected values come from numpy or from hand computation.  The last section checks
the working dtypes (float16, bfloat16; int and bool rejected) and bad arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F16, F64
from hypothesis import given, settings
from hypothesis import strategies as st

import mlds_jax as mj
from mlds_jax.descent import (
    GradientDescentResult,
    gradient_descent,
    max_stable_step_size,
    quadratic_example,
    sign_gradient_descent,
)

X0 = (3.0, 3.0)  # the lecture's x_initial

# Hessian of f(x1, x2) = x1^2 + x1*x2 + 4*x2^2, written by hand:
#   d2f/dx1^2 = 2, d2f/dx1dx2 = 1, d2f/dx2^2 = 8.
# Eigenvalues: det([[2 - l, 1], [1, 8 - l]]) = l^2 - 10 l + 15 = 0  =>  l = 5 -/+ sqrt(10),
# i.e. l_min ~= 1.8377 and l_max ~= 8.1623, so 2 / l_max ~= 0.24503.
HESSIAN = np.array([[2.0, 1.0], [1.0, 8.0]])
LAM_MIN, LAM_MAX = 5.0 - math.sqrt(10.0), 5.0 + math.sqrt(10.0)


def _x0(values=X0) -> jax.Array:
    return jnp.asarray(values, dtype=jnp.float32)


def _atol(x: jax.Array) -> float:
    return 1e-5 if x.dtype == jnp.float32 else 1e-10


def rosenbrock(x: jax.Array) -> jax.Array:
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


# ---------------------------------------------------------------------------------------------
# "How big must the steps be?"
# ---------------------------------------------------------------------------------------------


def test_hand_derived_eigenvalues_match_numpy() -> None:
    np.testing.assert_allclose(np.linalg.eigvalsh(HESSIAN), [LAM_MIN, LAM_MAX], rtol=1e-12)
    assert abs(2.0 / LAM_MAX - 0.24503) < 1e-5


@pytest.mark.parametrize("point", [X0, (0.0, 0.0), (-1.5, 7.0)])
def test_max_stable_step_size_lecture_quadratic(point) -> None:
    expected = 2.0 / np.linalg.eigvalsh(HESSIAN)[-1]
    got = max_stable_step_size(quadratic_example, _x0(point))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-5)


def test_max_stable_step_size_rejects_non_convex_point_naming_eigenvalue() -> None:
    # f = x1^2 - x2^2 at 0 has Hessian diag(2, -2): lambda_max = 2 > 0, so a bound exists (it only
    # concerns the positive-curvature direction of this saddle) ...
    assert max_stable_step_size(lambda x: x[0] ** 2 - x[1] ** 2, _x0((0.0, 0.0))) == 1.0
    # ... but f = -|x|^2 has lambda_max = -2.
    with pytest.raises(ValueError, match=r"-2\.0.*not locally convex"):
        max_stable_step_size(lambda x: -jnp.sum(x**2), _x0((1.0, 2.0)))


def test_max_stable_step_size_validates_inputs() -> None:
    with pytest.raises(TypeError, match="callable"):
        max_stable_step_size("f", _x0())
    with pytest.raises(ValueError, match=re.escape("(2, 2)")):
        max_stable_step_size(quadratic_example, jnp.ones((2, 2), jnp.float32))


# ---------------------------------------------------------------------------------------------
# The lecture's study: f = x1^2 + x1 x2 + 4 x2^2 from [3, 3] with eta = 0.1 and eta = 0.2
# ---------------------------------------------------------------------------------------------


def test_one_step_by_hand() -> None:
    # grad f = [2 x1 + x2, x1 + 8 x2] = [9, 27] at [3, 3]; x1 = [3, 3] - 0.1 * [9, 27] = [2.1, 0.3]
    res = gradient_descent(quadratic_example, _x0(), step_size=0.1, max_iter=1)
    assert res.n_iter == 1 and res.reason == "max_iter" and not res.converged
    np.testing.assert_allclose(res.path[0], [3.0, 3.0])
    np.testing.assert_allclose(res.path[1], [2.1, 0.3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(res.x), [2.1, 0.3], rtol=1e-6)
    # f(2.1, 0.3) = 4.41 + 0.63 + 0.36 = 5.4, down from f(3, 3) = 9 + 9 + 36 = 54
    np.testing.assert_allclose(res.f_path, [54.0, 5.4], rtol=1e-6)


@pytest.mark.parametrize("eta", [0.1, 0.2])
def test_lecture_step_sizes_converge_to_origin(eta: float) -> None:
    res = gradient_descent(quadratic_example, _x0(), step_size=eta)
    assert res.converged and res.reason in ("tol_f", "tol_grad")
    np.testing.assert_allclose(np.asarray(res.x), [0.0, 0.0], atol=1e-4)
    assert res.f == pytest.approx(0.0, abs=1e-8)
    assert np.all(np.diff(res.f_path) <= 0)  # stable steps decrease f monotonically here


def test_eta_02_needs_fewer_iterations_than_eta_01() -> None:
    # Along each eigenvector of H the error is multiplied by (1 - eta * lambda) per step, so the
    # slowest direction contracts by max_lambda |1 - eta * lambda| with lambda in {5 -/+ sqrt 10}:
    #   eta = 0.1: max(|1 - 0.18377|, |1 - 0.81623|) = 0.81623
    #   eta = 0.2: max(|1 - 0.36754|, |1 - 1.63246|) = max(0.63246, 0.63246) = 0.63246
    # (at 0.2 both directions contract equally: 0.2 = 2 / (l_min + l_max), the optimal step).
    lams = np.array([LAM_MIN, LAM_MAX])
    rate = {eta: float(np.max(np.abs(1.0 - eta * lams))) for eta in (0.1, 0.2)}
    assert rate[0.1] == pytest.approx(0.81623, abs=1e-5)
    assert rate[0.2] == pytest.approx(0.63246, abs=1e-5)
    slow = gradient_descent(quadratic_example, _x0(), step_size=0.1)
    fast = gradient_descent(quadratic_example, _x0(), step_size=0.2)
    assert fast.converged and slow.converged
    assert fast.n_iter < slow.n_iter
    # the iteration counts roughly follow log(rate): log(0.6325) / log(0.8162) ~= 2.25
    assert 1.5 < slow.n_iter / fast.n_iter < 3.0


def test_step_past_stability_bound_does_not_converge() -> None:
    eta = 0.26  # > 2 / lambda_max ~= 0.245: |1 - 0.26 * 8.1623| ~= 1.122 > 1
    assert eta > 2.0 / LAM_MAX
    res = gradient_descent(quadratic_example, _x0(), step_size=eta)
    assert not res.converged
    assert res.reason in ("diverged", "max_iter")
    assert bool(jnp.all(jnp.isfinite(res.x))) and math.isfinite(res.f)
    assert np.all(np.isfinite(res.path)) and np.all(np.isfinite(res.f_path))
    assert res.f > res.f_path[0]  # it went up, not down


# ---------------------------------------------------------------------------------------------
# Stop rules
# ---------------------------------------------------------------------------------------------


def test_tol_grad_at_minimum_gives_zero_iterations() -> None:
    res = gradient_descent(quadratic_example, _x0((0.0, 0.0)))
    assert (res.n_iter, res.converged, res.reason) == (0, True, "tol_grad")
    assert res.path.shape == (1, 2) and res.f_path.shape == (1,)
    assert res.grad_norm == 0.0 and res.f == 0.0


def test_tol_grad_after_steps() -> None:
    # 1-D quadratic f = (x - 1)^2 with eta = 0.5 = 1 / f'': one Newton-like step lands exactly.
    res = gradient_descent(lambda x: (x[0] - 1.0) ** 2, _x0((5.0,)), step_size=0.5, tol_f=0.0)
    assert (res.n_iter, res.reason, res.converged) == (1, "tol_grad", True)
    np.testing.assert_array_equal(res.path[:, 0], [5.0, 1.0])


def test_tol_f_rule() -> None:
    tol_f = 1e-6
    res = gradient_descent(quadratic_example, _x0(), step_size=0.1, tol_f=tol_f, tol_grad=0.0)
    assert res.reason == "tol_f" and res.converged
    diffs = np.abs(np.diff(res.f_path.astype(np.float64)))
    assert diffs[-1] < tol_f * (1 + 1e-3)
    assert np.all(diffs[:-1] >= tol_f * (1 - 1e-3))  # it stopped at the first small change


def test_max_iter_rule() -> None:
    res = gradient_descent(quadratic_example, _x0(), step_size=0.1, max_iter=3)
    assert (res.n_iter, res.converged, res.reason) == (3, False, "max_iter")
    assert res.path.shape == (4, 2)


def test_zero_tolerances_run_to_max_iter() -> None:
    res = gradient_descent(
        quadratic_example, _x0(), step_size=0.1, tol_f=0.0, tol_grad=0.0, max_iter=5
    )
    assert (res.n_iter, res.reason) == (5, "max_iter")


def test_diverged_on_nan_keeps_last_finite_iterate() -> None:
    # f = sqrt(x): x0 = 1, eta = 1: x1 = 1 - 0.5 = 0.5; x2 = 0.5 - 1/(2 sqrt 0.5) < 0 -> f = NaN.
    res = gradient_descent(lambda x: jnp.sqrt(x[0]), _x0((1.0,)), step_size=1.0)
    assert (res.reason, res.converged, res.n_iter) == ("diverged", False, 1)
    np.testing.assert_allclose(np.asarray(res.x), [0.5])
    assert res.path.shape == (2, 1) and np.all(np.isfinite(res.path))
    assert math.isfinite(res.f) and math.isfinite(res.grad_norm)


def test_diverged_on_unbounded_growth() -> None:
    res = gradient_descent(lambda x: jnp.sum(x**2), _x0((1.0, -1.0)), step_size=1.5)
    # x_{k+1} = x_k - 3 x_k = -2 x_k: f is multiplied by 4 each step, so |f| passes 1e12 * 3.
    assert res.reason == "diverged" and not res.converged
    assert res.f <= 1e12 * (1 + 2.0)
    assert np.all(np.isfinite(res.path))
    assert res.n_iter == 20  # 2 * 4^20 ~= 2.2e12 <= 3e12 < 2 * 4^21


# ---------------------------------------------------------------------------------------------
# Result contract
# ---------------------------------------------------------------------------------------------


def test_result_shapes_and_consistency() -> None:
    x0 = _x0()
    res = gradient_descent(quadratic_example, x0, step_size=0.1)
    assert isinstance(res, GradientDescentResult)
    n = x0.shape[0]
    assert res.path.shape == (res.n_iter + 1, n) and res.f_path.shape == (res.n_iter + 1,)
    assert res.x.shape == (n,) and res.x.dtype == x0.dtype
    assert isinstance(res.f, float) and isinstance(res.n_iter, int)
    assert isinstance(res.converged, bool) and isinstance(res.grad_norm, float)
    np.testing.assert_array_equal(res.path[0], np.asarray(x0))
    np.testing.assert_array_equal(res.path[-1], np.asarray(res.x))
    atol = _atol(x0)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(quadratic_example)(jnp.asarray(res.path))), res.f_path, atol=atol
    )
    assert res.f == pytest.approx(float(res.f_path[-1]))
    grad_norm = float(jnp.linalg.norm(jax.grad(quadratic_example)(res.x)))
    assert res.grad_norm == pytest.approx(grad_norm, rel=1e-5, abs=atol)
    # each row follows the update rule x_{k+1} = x_k - eta * grad f(x_k)
    grads = np.asarray(jax.vmap(jax.grad(quadratic_example))(jnp.asarray(res.path[:-1])))
    np.testing.assert_allclose(res.path[1:], res.path[:-1] - 0.1 * grads, atol=atol)


def test_result_is_frozen() -> None:
    res = gradient_descent(quadratic_example, _x0(), max_iter=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n_iter = 5  # type: ignore[misc]


def test_float64_is_respected_when_enabled() -> None:
    with jax.enable_x64(True):
        x0 = jnp.asarray(X0, dtype=jnp.float64)
        res = gradient_descent(quadratic_example, x0, step_size=0.2, tol_f=0.0, tol_grad=1e-12)
        assert res.x.dtype == jnp.float64 and res.path.dtype == np.float64
        assert res.reason == "tol_grad"
        np.testing.assert_allclose(np.asarray(res.x), [0.0, 0.0], atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    x0=st.tuples(*[st.floats(-10.0, 10.0, allow_nan=False)] * 2),
    eta=st.floats(0.02, 0.23),
)
def test_any_stable_step_converges(x0, eta) -> None:
    res = gradient_descent(quadratic_example, _x0(x0), step_size=eta, max_iter=2_000)
    assert res.converged
    assert res.f <= 1e-6 * (1.0 + quadratic_example(np.asarray(x0)))


# ---------------------------------------------------------------------------------------------
# Sign variant ("trivial algorithm")
# ---------------------------------------------------------------------------------------------


def test_sign_variant_exact_1d() -> None:
    # f = (x - 3)^2 from 0 with step 0.5: 0, 0.5, ..., 3.0 (exact in binary), then f'(3) = 0.
    res = sign_gradient_descent(lambda x: (x[0] - 3.0) ** 2, _x0((0.0,)), step_size=0.5)
    assert (res.n_iter, res.reason, res.converged) == (6, "tol_grad", True)
    np.testing.assert_array_equal(res.path[:, 0], np.arange(7) * 0.5)


def test_sign_variant_ends_within_one_step_of_minimum() -> None:
    step = 0.1
    res = gradient_descent(
        lambda x: (x[0] - 1.25) ** 2, _x0((0.0,)), step_size=step, max_iter=200, method="sign"
    )
    assert abs(float(res.x[0]) - 1.25) <= step / 2 + 1e-5
    steps = np.abs(np.diff(res.path[:, 0]))
    np.testing.assert_allclose(steps, step, rtol=1e-4)  # every move has length exactly `step`
    same = sign_gradient_descent(lambda x: (x[0] - 1.25) ** 2, _x0((0.0,)), step, max_iter=200)
    assert same.n_iter == res.n_iter


# ---------------------------------------------------------------------------------------------
# Non-quadratic function
# ---------------------------------------------------------------------------------------------


def test_rosenbrock_reaches_known_minimum() -> None:
    # minimum at (1, 1), f = 0; lambda_max of the Hessian is ~1002 at (1, 1) and ~1460 at the
    # start (-1.2, 1), so eta = 1e-3 < 2 / 1460 is stable along the whole path.
    x0 = _x0((-1.2, 1.0))
    assert max_stable_step_size(rosenbrock, x0) > 1e-3
    res = gradient_descent(
        rosenbrock, x0, step_size=1e-3, tol_f=0.0, tol_grad=1e-4, max_iter=50_000
    )
    assert res.converged and res.reason == "tol_grad"
    np.testing.assert_allclose(np.asarray(res.x), [1.0, 1.0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Efficiency: f is traced a bounded number of times, not once per iteration
# ---------------------------------------------------------------------------------------------


def test_no_retracing_per_iteration_or_per_step_size() -> None:
    calls = {"n": 0}

    def counted(x: jax.Array) -> jax.Array:
        calls["n"] += 1  # runs once per Python call: eager call or trace
        return quadratic_example(x)

    res = gradient_descent(counted, _x0(), step_size=0.1, max_iter=500)
    first = calls["n"]
    assert res.n_iter > 20
    assert first <= 4  # eager validation call + traces of the loop's init and body
    # new step size / tolerances: same compiled program, only the eager validation call of f(x0)
    res2 = gradient_descent(counted, _x0((1.0, -2.0)), step_size=0.05, tol_f=1e-9, max_iter=500)
    assert res2.n_iter > 20
    assert calls["n"] - first == 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x0", "error", "pattern"),
    [
        (jnp.array([3, 3]), TypeError, r"int32|int64"),
        ([3, 3], TypeError, r"pass floats"),
        (np.array([True, False]), TypeError, r"bool"),
        (jnp.ones((2, 2), jnp.float32), ValueError, re.escape("(2, 2)")),
        (jnp.array(1.0, jnp.float32), ValueError, re.escape("shape ()")),
        (jnp.zeros((0,), jnp.float32), ValueError, r"non-empty.*\(0,\)"),
        (jnp.array([np.nan, 1.0], jnp.float32), ValueError, r"finite.*nan"),
        (jnp.array([np.inf, 1.0], jnp.float32), ValueError, r"finite.*inf"),
    ],
)
def test_bad_x0(x0, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        gradient_descent(quadratic_example, x0)


@pytest.mark.parametrize("step_size", [0.0, -0.1, math.inf, math.nan])
def test_bad_step_size(step_size) -> None:
    with pytest.raises(ValueError, match=r"step_size.*" + re.escape(repr(step_size))):
        gradient_descent(quadratic_example, _x0(), step_size=step_size)


@pytest.mark.parametrize("name", ["tol_f", "tol_grad"])
@pytest.mark.parametrize("value", [-1e-3, math.nan])
def test_bad_tolerances(name, value) -> None:
    with pytest.raises(ValueError, match=name + r".*" + re.escape(repr(value))):
        gradient_descent(quadratic_example, _x0(), **{name: value})


def test_bad_max_iter() -> None:
    with pytest.raises(ValueError, match=r"max_iter.*0"):
        gradient_descent(quadratic_example, _x0(), max_iter=0)
    with pytest.raises(ValueError, match=r"max_iter.*-5"):
        gradient_descent(quadratic_example, _x0(), max_iter=-5)
    with pytest.raises(TypeError, match=r"max_iter.*2\.5"):
        gradient_descent(quadratic_example, _x0(), max_iter=2.5)


def test_f_not_callable() -> None:
    with pytest.raises(TypeError, match=r"callable.*not a function"):
        gradient_descent("not a function", _x0())


def test_f_not_scalar() -> None:
    with pytest.raises(ValueError, match=r"scalar.*" + re.escape("(2,)")):
        gradient_descent(lambda x: x**2, _x0())


def test_f_of_x0_not_finite() -> None:
    with pytest.raises(ValueError, match=r"f\(x0\).*nan"):
        gradient_descent(lambda x: jnp.sqrt(x[0]), _x0((-1.0,)))


def test_bad_method() -> None:
    with pytest.raises(ValueError, match=r"method.*'newton'"):
        gradient_descent(quadratic_example, _x0(), method="newton")


# --- dtypes and bad arguments through the public API (the bad-input contract) ------------------
# x0's dtype is the working dtype (never cast): every float width works, int/bool do not.
X0_LIST = [3.0, 3.0]  # X0 as a list (the bad-argument cases below pass it as given)


@pytest.mark.parametrize(
    ("dtype", "outcome"), [(np.int32, TypeError), (np.bool_, TypeError), (F16, "ok"), (BF16, "ok")]
)
def test_bad_descent_dtypes(dtype, outcome):
    """x0 sets the working dtype of gradient descent (it is not cast): floats of every width
    work (float32/64: the tests above), integers and bools are a TypeError.
    max_stable_step_size agrees (its eigenvalues are taken in float64: LAPACK has no
    float16/bfloat16 solver)."""
    x0 = jnp.asarray(np.asarray(X0_LIST).astype(dtype))
    if outcome is TypeError:
        with pytest.raises(TypeError, match=r"x0 must be a floating-point vector"):
            mj.gradient_descent(mj.descent.quadratic_example, x0)
        with pytest.raises(TypeError, match=r"x must be a floating-point vector"):
            mj.max_stable_step_size(mj.descent.quadratic_example, x0)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no "overflow encountered in cast" in float16
        res = mj.gradient_descent(mj.descent.quadratic_example, x0, step_size=0.2, max_iter=60)
        eta = mj.max_stable_step_size(mj.descent.quadratic_example, x0)
    eps = float(jnp.finfo(dtype).eps)
    assert res.x.dtype == dtype and np.all(np.isfinite(np.asarray(res.x, F64)))
    assert np.max(np.abs(np.asarray(res.x, F64))) < max(1e-3, 100 * eps)
    assert eta == pytest.approx(2 / (5 + math.sqrt(10)), rel=1e-12)  # the Hessian is exact


@pytest.mark.parametrize(
    ("x0", "step", "exc", "regex"),
    [
        (None, 0.1, TypeError, r"x0 must be a floating-point vector, got NoneType"),
        ("ab", 0.1, TypeError, r"x0 must be a floating-point vector, got str"),
        ([[1.0, 2.0], [3.0]], 0.1, TypeError, r"x0 must be a floating-point vector, got list"),
        (X0_LIST, "0.1", TypeError, r"step_size must be a real number, got '0\.1'"),
        (X0_LIST, None, TypeError, r"step_size must be a real number, got None"),
        (X0_LIST, True, TypeError, r"step_size must be a real number, got True"),  # no bools
        ([3.0, np.nan], 0.1, ValueError, r"x0 must be finite"),
    ],
)
def test_bad_descent_arguments(x0, step, exc, regex):
    with pytest.raises(exc, match=regex):
        mj.gradient_descent(mj.descent.quadratic_example, x0, step_size=step)


def test_bad_descent_tolerance_strings():
    with pytest.raises(TypeError, match=r"tol_f must be a real number, got '1e-3'"):
        mj.gradient_descent(mj.descent.quadratic_example, jnp.asarray(X0_LIST), tol_f="1e-3")
    with pytest.raises(TypeError, match=r"tol_grad must be a real number, got False"):
        mj.gradient_descent(mj.descent.quadratic_example, jnp.asarray(X0_LIST), tol_grad=False)
    with pytest.raises(TypeError, match=r"max_iter must be an int, got True"):
        mj.gradient_descent(mj.descent.quadratic_example, jnp.asarray(X0_LIST), max_iter=True)
# ---------------------------------------------------------------------------------------------
# Step-size rules: schedules, exact line search (S1), Armijo (S3), the optimal fixed step (S4)
# ---------------------------------------------------------------------------------------------


def test_exact_line_search_step_is_gtg_over_gthg() -> None:
    with jax.enable_x64(True):
        x0 = jnp.asarray(X0, jnp.float64)
        res = gradient_descent(quadratic_example, x0, line_search="exact", tol_f=0.0,
                               tol_grad=1e-10)
        assert res.converged and res.reason == "tol_grad"
        # each step by hand: g = H x, eta = g.g / g.H g with the hand-written HESSIAN
        for k in range(res.n_iter):
            g = HESSIAN @ res.path[k]
            assert res.step_sizes[k] == pytest.approx(g @ g / (g @ HESSIAN @ g), rel=1e-12)
            np.testing.assert_allclose(res.path[k + 1], res.path[k] - res.step_sizes[k] * g,
                                       rtol=1e-12, atol=1e-14)
        # steepest descent with exact steps on a quadratic: successive gradients orthogonal
        g0, g1 = HESSIAN @ res.path[0], HESSIAN @ res.path[1]
        assert abs(g0 @ g1) < 1e-10 * (g0 @ g0)


def test_exact_and_optimal_fixed_step_beat_the_lecture_steps() -> None:
    """Iterations to ||g|| < 1e-8 on the lecture's quadratic.  Fixed eta contracts the error
    by max|1 − eta λ| per step: 0.816 for eta = 0.1, and (κ−1)/(κ+1) = √10/5 = 0.632 for
    eta* = 2/(λ_min + λ_max) = 2/10 (S4): the lecture's 0.2 *is* the optimal fixed step (up to
    the rounding of 2/(λ_min + λ_max) in floating point)."""
    with jax.enable_x64(True):
        x0 = jnp.asarray(X0, jnp.float64)
        run = {name: gradient_descent(quadratic_example, x0, tol_f=0.0, tol_grad=1e-8, **kw)
               for name, kw in {"0.1": {"step_size": 0.1}, "0.2": {"step_size": 0.2},
                                "optimal": {"step_size": 2 / (LAM_MIN + LAM_MAX)},
                                "exact": {"line_search": "exact"}}.items()}
        n = {k: r.n_iter for k, r in run.items()}
        assert all(r.converged for r in run.values())
        assert n["exact"] < n["optimal"] <= n["0.2"] < n["0.1"]
        # the contraction factors predict the ratio of iteration counts
        assert n["0.1"] / n["optimal"] == pytest.approx(
            math.log(0.632) / math.log(1 - 0.1 * LAM_MIN), rel=0.1)


def test_armijo_backtracks_from_an_unstable_step() -> None:
    """From eta0 = 1 (> 2/λ_max = 0.245, divergent when fixed) Armijo halves until the
    sufficient-decrease condition holds (S3): every accepted step satisfies it."""
    with jax.enable_x64(True):
        x0 = jnp.asarray(X0, jnp.float64)
        res = gradient_descent(quadratic_example, x0, step_size=1.0, line_search="armijo",
                               armijo_c=0.5, armijo_shrink=0.5, tol_f=0.0, tol_grad=1e-8)
        assert res.converged
        for k in range(res.n_iter):
            g = HESSIAN @ res.path[k]
            eta = res.step_sizes[k]
            assert math.log2(1.0 / eta) == pytest.approx(round(math.log2(1.0 / eta)))
            assert res.f_path[k + 1] <= res.f_path[k] - 0.5 * eta * (g @ g) + 1e-15
            # and the previous (twice longer) step would have failed the test
            if eta < 1.0:
                x_long = res.path[k] - 2 * eta * g
                f_long = float(quadratic_example(jnp.asarray(x_long)))
                assert f_long > res.f_path[k] - 0.5 * 2 * eta * (g @ g)
    fixed = gradient_descent(quadratic_example, _x0(), step_size=1.0, max_iter=200)
    assert not fixed.converged


def test_schedule_callable_and_optax() -> None:
    optax = pytest.importorskip("optax")
    sched = optax.exponential_decay(0.2, transition_steps=5, decay_rate=0.5)
    res = gradient_descent(quadratic_example, _x0(), step_size=sched, max_iter=30, tol_f=0.0,
                           tol_grad=0.0)
    expected = np.array([float(sched(k)) for k in range(30)])
    np.testing.assert_allclose(res.step_sizes, expected, rtol=1e-6)
    res2 = gradient_descent(quadratic_example, _x0(),
                            step_size=lambda k: 0.2 / (1.0 + k.astype(jnp.float32)),
                            max_iter=4, tol_f=0.0, tol_grad=0.0)
    np.testing.assert_allclose(res2.step_sizes, 0.2 / (1.0 + np.arange(4)), rtol=1e-6)
    g = np.asarray(jax.grad(quadratic_example)(jnp.asarray(res2.path[0])))
    np.testing.assert_allclose(res2.path[1], res2.path[0] - 0.2 * g, rtol=1e-6)


def test_fixed_step_records_its_step_sizes() -> None:
    res = gradient_descent(quadratic_example, _x0(), step_size=0.1, max_iter=5, tol_f=0.0,
                           tol_grad=0.0)
    np.testing.assert_allclose(res.step_sizes, np.full(5, 0.1), rtol=1e-6)


def test_bad_step_size_rules() -> None:
    with pytest.raises(ValueError, match="line_search must be one of"):
        gradient_descent(quadratic_example, _x0(), line_search="wolfe")
    with pytest.raises(ValueError, match='needs method="gradient"'):
        gradient_descent(quadratic_example, _x0(), line_search="exact", method="sign")
    with pytest.raises(ValueError, match=r"armijo_c must lie in \(0, 1\)"):
        gradient_descent(quadratic_example, _x0(), line_search="armijo", armijo_c=1.5)
    # the same fault, the same words: outside (0, 1), below or above
    with pytest.raises(ValueError, match=r"armijo_shrink must lie in \(0, 1\), got 0\.0"):
        gradient_descent(quadratic_example, _x0(), line_search="armijo", armijo_shrink=0.0)
    with pytest.raises(ValueError, match=r"step_size\(0\) must be a finite number > 0"):
        gradient_descent(quadratic_example, _x0(), step_size=lambda k: jnp.asarray(-0.1))
    with pytest.raises(ValueError, match="must return a scalar"):
        gradient_descent(quadratic_example, _x0(), step_size=lambda k: jnp.ones(2))
