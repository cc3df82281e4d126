"""DP-SGD by ghost clipping (D1)-(D3) and its privacy accounting.

References are independent of the code under test: per-example gradients materialised by
``jax.vmap(jax.grad(ℓ_n))`` of the definitions (``test_per_example.ref_per_example_grads``),
clipped by the formula written out here, and the exact ε of the Gaussian mechanism from its
privacy profile (Balle & Wang, 2018, Theorem 8) solved with scipy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, grid_sizes, make_problem, targets_2d
from test_per_example import flat, ref_per_example_grads

import mlds_jax as mj

SIZES = grid_sizes(2)  # [4, 4, 3]: |θ| = 20 + 15 = 35
dp_jit = jax.jit(mj.extensions.dp_value_and_grads, static_argnums=(3, 4))
plain_jit = jax.jit(mj.core.value_and_grads, static_argnums=3, static_argnames="loss")
CASES = [
    ("tanh", "softmax", "cross_entropy"),
    ("relu", "identity", "mse"),
    ("sigmoid", "sigmoid", "binary_cross_entropy"),
    ("softplus", "sigmoid", "mse"),
]
MASK = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])  # one padding row; B = 4


def problem(hidden, output, loss, n=5, seed=0):
    params, X, Y = make_problem(seed, SIZES, hidden, output, loss, n)
    return params, X, targets_2d(Y, loss, SIZES[-1], jnp.float64)


def ref_clipped_mean(params, X, Y2, loss, C, mask=None):
    """(1/B) Σ_n m_n min(1, C/(‖∇ℓ_n‖ + 1e-6)) ∇ℓ_n from the materialised gradients."""
    ref = ref_per_example_grads(params, X, Y2, loss)
    norms = jnp.sqrt(jnp.sum(flat(ref, X.shape[0]) ** 2, axis=1))
    m = jnp.ones(X.shape[0]) if mask is None else mask
    c = m * jnp.minimum(1.0, C / (norms + 1e-6)) / jnp.sum(m)
    return jax.tree_util.tree_map(lambda g: jnp.tensordot(c, g, axes=1), ref), norms


@pytest.mark.parametrize(("hidden", "output", "loss"), CASES)
@pytest.mark.parametrize("mask", [None, MASK], ids=["all-rows", "padded"])
def test_noise_free_dp_gradient_is_the_clipped_mean(hidden, output, loss, mask):
    params, X, Y2 = problem(hidden, output, loss)
    expected, norms = ref_clipped_mean(params, X, Y2, loss, 0.05, mask)
    # C = 0.05 is below every norm here, so every row is clipped (the test would be weak
    # otherwise); C = 1e9 clips none
    assert float(jnp.min(norms)) > 0.05
    _, g = dp_jit(params, X, Y2, loss, mj.DPSGD(0.05, 0.0), jax.random.key(0), mask)
    assert_trees_close(g, expected)
    expected_none, _ = ref_clipped_mean(params, X, Y2, loss, 1e9, mask)
    _, g = dp_jit(params, X, Y2, loss, mj.DPSGD(1e9, 0.0), jax.random.key(0), mask)
    assert_trees_close(g, expected_none)


@pytest.mark.parametrize(("hidden", "output", "loss"), CASES[:2])
def test_every_clipped_contribution_has_norm_at_most_C(hidden, output, loss):
    params, X, Y2 = problem(hidden, output, loss, n=6, seed=1)
    ref = ref_per_example_grads(params, X, Y2, loss)
    F = flat(ref, 6)
    norms = jnp.sqrt(jnp.sum(F**2, axis=1))
    C = float(jnp.median(norms))  # half the rows clipped, half not
    kappa = mj.extensions.clip_factors(norms, C)
    clipped_norms = jnp.sqrt(jnp.sum((kappa[:, None] * F) ** 2, axis=1))
    assert bool(jnp.all(clipped_norms <= C))
    assert bool(jnp.any(norms > C)) and bool(jnp.any(norms < C))
    # one row at a time (B = 1, σ = 0), dp_value_and_grads returns that row's κ_n ∇ℓ_n
    for n in range(6):
        _, g = dp_jit(
            params, X[n : n + 1], Y2[n : n + 1], loss, mj.DPSGD(C, 0.0), jax.random.key(0)
        )
        gn = float(jnp.sqrt(jnp.sum(flat(g, 1) ** 2)))
        assert gn <= C
        np.testing.assert_allclose(
            gn, min(float(norms[n]), C * float(norms[n]) / (float(norms[n]) + 1e-6)), rtol=1e-10
        )


@pytest.mark.parametrize(("hidden", "output", "loss"), CASES)
def test_no_noise_no_clipping_is_exactly_the_plain_gradient(hidden, output, loss):
    params, X, Y2 = problem(hidden, output, loss)
    dp = mj.DPSGD(l2_clip=math.inf, noise_multiplier=0.0)
    value, g = dp_jit(params, X, Y2, loss, dp, jax.random.key(0))
    value0, g0 = plain_jit(params, X, Y2, loss)
    # bit for bit: κ = 1 and the same backward with row weights 1/N (see dp.py)
    assert float(value) == float(value0)
    chex_equal = [
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g0), strict=True)
    ]
    assert all(chex_equal)
    # padded: equal to the core's mean over the real rows (weights m / Σm)
    value, g = dp_jit(params, X, Y2, loss, dp, jax.random.key(0), MASK)
    value0, g0 = plain_jit(params, X, Y2, loss, row_weights=MASK / MASK.sum())
    assert float(value) == float(value0)
    assert all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g0), strict=True)
    )


def test_dp_train_step_without_noise_or_clipping_is_the_plain_sgd_step():
    params, X, Y = make_problem(2, SIZES, "tanh", "softmax", "cross_entropy", 5)
    opt = optax.sgd(0.3)
    step = mj.make_train_step(opt, "cross_entropy", dp=mj.DPSGD(math.inf, 0.0))
    new, _, metrics = step(params, opt.init(params), X, Y, key=jax.random.key(1))
    Y2 = targets_2d(Y, "cross_entropy", SIZES[-1], jnp.float64)
    value, g = plain_jit(params, X, Y2, "cross_entropy")
    assert float(metrics["loss"]) == float(value)
    assert_trees_close(new, jax.tree_util.tree_map(lambda p, d: p - 0.3 * d, params, g))


def test_noise_statistics():
    """g̃ − clipped mean = σC ξ / B: mean 0, std σC/B per coordinate, over 2000 keys.

    Pooled over 2000 keys × 35 coordinates = 70,000 draws, the sample std has relative
    standard error 1/√(2·70000) = 0.27%: tolerance 1.5% (5.6 s.e.); the sample mean has
    standard error s/√70000: tolerance 5 s.e.  Each coordinate's own std (2000 draws, s.e.
    1.6%) must lie within 8% (5 s.e.; 35 coordinates).
    """
    params, X, Y2 = problem("tanh", "softmax", "cross_entropy")
    C, sigma, B = 0.7, 1.3, 4.0
    clean, _ = ref_clipped_mean(params, X, Y2, "cross_entropy", C, MASK)
    keys = jax.random.split(jax.random.key(42), 2000)
    noisy = jax.vmap(
        lambda k: dp_jit(params, X, Y2, "cross_entropy", mj.DPSGD(C, sigma), k, MASK)[1]
    )(keys)
    noise = flat(jax.tree_util.tree_map(lambda a, b: a - b[None], noisy, clean), 2000)
    target = sigma * C / B
    assert noise.shape == (2000, 35)
    assert abs(float(jnp.mean(noise))) < 5 * target / math.sqrt(noise.size)
    np.testing.assert_allclose(float(jnp.std(noise)), target, rtol=0.015)
    np.testing.assert_allclose(np.asarray(jnp.std(noise, axis=0)), target, rtol=0.08)
    # coordinates are uncorrelated: every off-diagonal correlation within 5/√2000
    corr = np.corrcoef(np.asarray(noise).T)
    assert np.max(np.abs(corr - np.eye(35))) < 5 / math.sqrt(2000)


def test_same_key_same_step_different_key_different_step():
    params, X, Y = make_problem(3, SIZES, "relu", "identity", "mse", 5)
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, "mse", dp=mj.DPSGD(1.0, 1.0))
    state = opt.init(params)
    a, _, _ = step(params, state, X, Y, key=jax.random.key(7))
    b, _, _ = step(params, state, X, Y, key=jax.random.key(7))
    c, _, _ = step(params, state, X, Y, key=jax.random.key(8))
    assert_trees_close(a, b, dtype=np.float64)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert bool(jnp.array_equal(x, y))
    assert not all(
        bool(jnp.array_equal(x, y))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(c), strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"l2_clip": -1.0, "noise_multiplier": 1.0}, ValueError, "l2_clip must be > 0"),
        ({"l2_clip": 0.0, "noise_multiplier": 1.0}, ValueError, "l2_clip must be > 0"),
        ({"l2_clip": math.nan, "noise_multiplier": 1.0}, ValueError, "l2_clip must be > 0"),
        ({"l2_clip": 1.0, "noise_multiplier": math.nan}, ValueError, "finite and >= 0"),
        ({"l2_clip": 1.0, "noise_multiplier": -0.1}, ValueError, "finite and >= 0"),
        ({"l2_clip": 1.0, "noise_multiplier": math.inf}, ValueError, "finite and >= 0"),
        ({"l2_clip": math.inf, "noise_multiplier": 1.0}, ValueError, "finite l2_clip"),
        ({"l2_clip": "1", "noise_multiplier": 1.0}, TypeError, "must be a real number"),
        ({"l2_clip": True, "noise_multiplier": 1.0}, TypeError, "must be a real number"),
    ],
)
def test_dpsgd_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        mj.DPSGD(**kwargs)


def test_dp_train_step_rejects_bad_input():
    params, X, Y = make_problem(3, SIZES, "relu", "softmax", "cross_entropy", 5)
    opt = optax.sgd(0.1)
    dp = mj.DPSGD(1.0, 1.0)
    with pytest.raises(TypeError, match="dp must be None or an mlds_jax.DPSGD"):
        mj.make_train_step(opt, "cross_entropy", dp=(1.0, 1.0))
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        mj.make_train_step("sgd", "cross_entropy", dp=dp)
    with pytest.raises(ValueError, match="unknown loss"):
        mj.make_train_step(opt, "hinge", dp=dp)
    step = mj.make_train_step(opt, "cross_entropy", dp=dp)
    state = opt.init(params)
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        step(params, state, X, Y, key=0)
    with pytest.raises(ValueError, match="pass its noise key"):
        step(params, state, X, Y)  # the key is required and keyword-only
    with pytest.raises(ValueError, match="class labels must lie in"):
        step(params, state, X, Y + 10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="no positive entry"):
        step(params, state, X, Y, key=jax.random.key(0), row_weights=jnp.zeros(5))


# --- privacy accounting -------------------------------------------------------------------
@pytest.fixture
def accounting():
    """Skip where the optional ``dp`` extra (dp-accounting) is not installed."""
    return pytest.importorskip("dp_accounting")


def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """ε of one Gaussian mechanism (sensitivity 1, noise σ) at δ, from its exact privacy
    profile δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ) (Balle & Wang, 2018, Thm 8)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def f(eps):
        return (
            norm.cdf(1 / (2 * sigma) - eps * sigma)
            - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)
            - delta
        )

    return brentq(f, 0.0, 50.0, xtol=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_dp_epsilon_one_full_batch_step_matches_the_exact_gaussian(sigma, accounting):
    exact = exact_gaussian_epsilon(sigma, 1e-5)
    # PLD is exact up to its discretisation (pessimistic, 1e-4 grid): within 1e-3 relative
    pld = mj.extensions.dp_epsilon(sigma, 1.0, 1, 1e-5, accountant="pld")
    assert exact <= pld * (1 + 1e-9)
    np.testing.assert_allclose(pld, exact, rtol=1e-3)
    # RDP is an upper bound, looser
    assert mj.extensions.dp_epsilon(sigma, 1.0, 1, 1e-5) >= exact


def test_dp_epsilon_behaves(accounting):
    base = mj.extensions.dp_epsilon(1.1, 0.01, 1000, 1e-5)
    assert 0 < base < math.inf
    assert mj.extensions.dp_epsilon(2.0, 0.01, 1000, 1e-5) < base  # more noise, less privacy spent
    assert mj.extensions.dp_epsilon(1.1, 0.01, 4000, 1e-5) > base  # more steps, more spent
    assert mj.extensions.dp_epsilon(1.1, 0.02, 1000, 1e-5) > base  # bigger batches, more spent
    # PLD is tighter
    assert mj.extensions.dp_epsilon(1.1, 0.01, 1000, 1e-5, accountant="pld") <= base


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0.0, 0.01, 10, 1e-5), {}, ValueError, "noise_multiplier"),
        ((1.0, 1.5, 10, 1e-5), {}, ValueError, "sample_rate must lie in"),
        ((1.0, 0.0, 10, 1e-5), {}, ValueError, "sample_rate"),
        ((1.0, 0.1, 0, 1e-5), {}, ValueError, "steps must be >= 1"),
        ((1.0, 0.1, 2.0, 1e-5), {}, TypeError, "steps must be an int"),
        ((1.0, 0.1, 10, 1.0), {}, ValueError, "delta must lie in"),
        ((1.0, 0.1, 10, math.nan), {}, ValueError, "delta"),
        ((1.0, 0.1, 10, 1e-5), {"accountant": "moments"}, ValueError, "accountant must be"),
    ],
)
def test_dp_epsilon_rejects_bad_input(args, kwargs, error, match, accounting):
    with pytest.raises(error, match=match):
        mj.extensions.dp_epsilon(*args, **kwargs)


def test_dp_epsilon_names_the_extra_when_dp_accounting_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install dp-accounting"):
        mj.extensions.dp_epsilon(1.0, 0.1, 10, 1e-5)


def test_dp_train_step_compiles_once_for_new_keys_and_data():
    """The step is traced once: new keys and new data of the same shape reuse it (the
    optimizer's update runs in Python only while tracing, so it counts the traces)."""
    params, X, Y = make_problem(3, SIZES, "relu", "softmax", "cross_entropy", 5)
    sgd = optax.sgd(0.1)
    traces = []

    def update(grads, state, params=None):
        traces.append(1)
        return sgd.update(grads, state, params)

    opt = optax.GradientTransformation(sgd.init, update)
    step = mj.make_train_step(opt, "cross_entropy", dp=mj.DPSGD(1.0, 1.0))
    state = opt.init(params)
    for seed in range(3):
        params, state, _ = step(params, state, X + seed, Y, key=jax.random.key(seed))
    assert len(traces) == 1
