"""Kronecker factors (mlds_jax.extensions.kfac) against the exact GGN blocks, in float64.

With one example, A_factor ⊗ G_factor is exactly the layer's GGN block of [W; b] flattened
row-major (which is ravel_pytree's order for the leaves W, b), so it is compared with the block
of Σ_n w_n J_nᵀ H_n J_n built by jax.jacrev and jax.hessian (test_curvature.ref_ggn), with
the suite's float64 tolerance.  Monte Carlo factors: 5 standard errors per entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ref_forward_from, tolerances
from test_curvature import problem, ref_ggn

import mlds_jax as mj
from mlds_jax.extensions import kfac

TOL = tolerances(np.float64)


def layer_blocks(params):
    """[(start, stop)) of each layer's [W; b] in ravel_pytree order."""
    out, s = [], 0
    for layer in params:
        e = s + layer.W.size + layer.b.size
        out.append((s, e))
        s = e
    return out


@pytest.mark.parametrize(
    "hidden,output,loss",
    [
        ("tanh", "softmax", "cross_entropy"),
        ("sigmoid", "sigmoid", "binary_cross_entropy"),
        ("softplus", "sigmoid", "mse"),
        ("relu", "softmax", "mse"),
        ("leaky_relu", "identity", "half_squared_error"),
    ],
)
def test_one_example_kron_is_the_exact_ggn_block(hidden, output, loss):
    params, X, Y, w = problem(hidden, output, loss, 1, seed=3)
    G = np.asarray(ref_ggn(params, X, Y, loss, w))
    factors = mj.kfac_factors(params, X, Y, loss, kind="exact", row_weights=w)
    for (s, e), (A_f, G_f), layer in zip(layer_blocks(params), factors, params, strict=True):
        assert A_f.shape == (layer.W.shape[0] + 1,) * 2 and G_f.shape == (layer.W.shape[1],) * 2
        np.testing.assert_allclose(np.kron(A_f, G_f), G[s:e, s:e], **TOL)


def test_factors_with_many_examples():
    """N = 5: A_factor is the weighted mean of [a, 1][a, 1]ᵀ; the output layer's G_factor is
    Σ_n w_n H_n, H_n the Hessian of ℓ_n in the logits (jax.hessian)."""
    params, X, Y, w = problem("tanh", "softmax", "cross_entropy", 5, seed=4)
    factors = mj.kfac_factors(params, X, Y, "cross_entropy", row_weights=w)
    cache = mj.forward_cache(params, X)
    for l, (A_f, _) in enumerate(factors):
        At = np.hstack([np.asarray(cache.As[l]), np.ones((5, 1))])
        ref = (At * np.asarray(w)[:, None]).T @ At / np.sum(w)
        np.testing.assert_allclose(A_f, ref, **TOL)

    def term(z, y):
        return -jnp.sum(y * (z - jnp.log(jnp.sum(jnp.exp(z)))))

    H = jax.vmap(jax.hessian(term))(cache.Zs[-1], Y)
    np.testing.assert_allclose(factors[-1][1], jnp.einsum("n,nkl->kl", w, H), **TOL)


def test_empirical_factor_is_mean_outer_product_of_per_example_gradients():
    params, X, Y, w = problem("tanh", "sigmoid", "binary_cross_entropy", 5, seed=5)
    factors = mj.kfac_factors(params, X, Y, "binary_cross_entropy", kind="empirical")
    cache = mj.forward_cache(params, X)
    for l in range(1, len(params) + 1):

        def ell(z, y, l=l):  # ℓ_n as a function of z_n^(l), from the reference formulas
            a = ref_forward_from(params, l, z[None])[0]  # ŷ_n; BCE written from ŷ
            return -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log(1 - a))

        g = jax.vmap(jax.grad(ell))(cache.Zs[l - 1], Y)  # unscaled per-example gradients
        np.testing.assert_allclose(factors[l - 1][1], g.T @ g / 5, **TOL)


@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("tanh", "mse")])
def test_mc_factors_unbiased(output, loss):
    params, X, Y, w = problem("tanh", output, loss, 3, seed=6)
    exact = kfac.kfac_factors_core(params, X, Y, loss, w, "exact")
    R = 3000
    draws = jax.vmap(lambda k: kfac.kfac_factors_core(params, X, Y, loss, w, "mc", k, 1))(
        jax.random.split(jax.random.key(2), R)
    )
    for (_, G_e), (A_d, G_d), (A_e, _) in zip(exact, draws, exact, strict=True):
        np.testing.assert_allclose(A_d[0], A_e, **TOL)  # the input factor is not sampled
        mean, se = jnp.mean(G_d, axis=0), jnp.std(G_d, axis=0) / np.sqrt(R)
        assert bool(jnp.all(jnp.abs(mean - G_e) <= 5 * se + 1e-12))


def test_bad_arguments():
    params, X, Y, w = problem("tanh", "softmax", "cross_entropy", 2)
    with pytest.raises(ValueError, match="kind must be one of"):
        mj.kfac_factors(params, X, Y, "cross_entropy", kind="kflr")
    with pytest.raises(ValueError, match="needs a key"):
        mj.kfac_factors(params, X, Y, "cross_entropy", kind="mc")
    with pytest.raises(ValueError, match="only used with"):
        mj.kfac_factors(params, X, Y, "cross_entropy", key=jax.random.key(0))
    with pytest.raises(ValueError, match="mc_samples must be >= 1"):
        mj.kfac_factors(
            params, X, Y, "cross_entropy", kind="mc", key=jax.random.key(0), mc_samples=0
        )
