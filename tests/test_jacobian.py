"""mj.extensions.output_jacobian (mlds_jax.extensions.jacobian) against jax.jacrev, in float64.

The reference differentiates a forward pass written from the notes' formulas with the
independent activations of ``helpers.REF_ACTIVATIONS`` (not the library's), by ``jax.jacrev``.
Both sides do the same O(depth) products in a different order, as the gradients do, so the
suite's float64 rule (tests/helpers.py: rtol 1e-10, atol 1e-12) applies unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, make_params, make_problem, ref_network_output
from jax.flatten_util import ravel_pytree

import mlds_jax as mj
from mlds_jax.extensions import jacobian

SIZES = [3, 4, 4, 2]  # two hidden layers, K = 2 outputs (W^(L) not square)


# every hidden activation (sigmoid output, at Ŷ: its f' enters), every output activation
# (tanh hidden) at Ŷ and at the logits
CASES = [(h, "sigmoid", "outputs") for h in mj.activations.HIDDEN_ACTIVATIONS]
CASES += [
    ("tanh", o, at) for o in mj.activations.OUTPUT_ACTIVATIONS for at in ("outputs", "logits")
]


@pytest.mark.parametrize("hidden,output,at", CASES)
def test_output_jacobian_matches_jacrev(hidden, output, at, op_by_op):
    params = make_params(1, SIZES, hidden, output)
    X = jnp.asarray(np.random.default_rng(2).standard_normal((5, SIZES[0])))
    J = mj.extensions.output_jacobian(params, X, at=at)
    J_ref = jax.jacrev(lambda p: ref_network_output(p, X, at == "logits"))(params)
    assert J[0].W.shape == (5, 2, 3, 4) and J[-1].b.shape == (5, 2, 2)
    assert_trees_close(J, J_ref)


def test_auto_follows_the_ggn_convention_and_the_flat_form(op_by_op):
    params, X, _ = make_problem(3, SIZES, "tanh", "softmax", "cross_entropy", 4)
    at_logits = jax.jacrev(lambda p: ref_network_output(p, X, True))(params)
    at_outputs = jax.jacrev(lambda p: ref_network_output(p, X, False))(params)
    assert_trees_close(mj.extensions.output_jacobian(params, X), at_logits)  # softmax: logits
    assert_trees_close(mj.extensions.output_jacobian(params, X, loss="cross_entropy"), at_logits)
    assert_trees_close(mj.extensions.output_jacobian(params, X, loss="mse"), at_outputs)  # GGN at Ŷ
    ident = make_params(3, SIZES, "tanh", "identity")
    assert_trees_close(
        mj.extensions.output_jacobian(ident, X),
        jax.jacrev(lambda p: ref_network_output(p, X, False))(ident),
    )
    # the flat (N·K, P) matrix: the same numbers in ravel_pytree's column order
    flat, unravel = ravel_pytree(params)
    J_flat = jax.jacrev(lambda f: ref_network_output(unravel(f), X, True))(flat)
    J_flat = J_flat.reshape(-1, flat.size)
    cache = mj.core.forward_cache(params, X)
    S = jacobian.output_directions(cache, "softmax", logits=True)
    np.testing.assert_allclose(
        jacobian.flat_factor_jacobian(params, cache, S), J_flat, rtol=1e-10, atol=1e-12
    )


def test_bad_input():
    params = make_params(0, SIZES, "tanh", "sigmoid")
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="at must be one of"):
        mj.extensions.output_jacobian(params, X, at="inputs")
    with pytest.raises(ValueError, match="X has 2 features but the first layer expects"):
        mj.extensions.output_jacobian(params, X[:, :2])
    with pytest.raises(ValueError, match="needs an output activation"):
        mj.extensions.output_jacobian(params, X, loss="cross_entropy")
    with pytest.raises(TypeError, match="params must be a non-empty tuple"):
        mj.extensions.output_jacobian([], X)
