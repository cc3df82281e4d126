"""The network: the lecture's forward numbers, the params pytree, init, jit, and input checks.

The last section: finite input whose pre-activations overflow float32 (a clear error from the
loss, IEEE limits elsewhere, divergence for fit).
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    REF_ACTIVATIONS,
    assert_trees_close,
    bit_identical,
    make_params,
    make_problem,
    np_rng,
    one_layer,
    ref_forward_Zs,
)

import mlds_jax as mj
from mlds_jax.network import Dense

# --- the lecture's PyTorch demo -------------------------------------------------------------
# torch.rand printed W = [0.7576, 0.2793, 0.4031, 0.7347, 0.0293] (shape (1, 5)), b = 0.7999;
# z = x W^T + b.  Our W is the lecture's W^T: shape (5, 1).
LECTURE_W = [0.7576, 0.2793, 0.4031, 0.7347, 0.0293]
LECTURE_B = 0.7999
LECTURE_X = [[-8.0, 1.0, -3.0, 5.0, 2.0], [-2.0, 2.0, -1.0, 5.0, 2.0], [7.0, 1.0, 9.0, -5.0, -2.0]]
# What torch printed (from the unrounded weights):
LECTURE_Z = [-2.4591, 3.1721, 6.2782]
LECTURE_A = [0.0788, 0.9598, 0.9981]
# By hand, from the printed (rounded) weights:
#   row 1: −8·0.7576 + 0.2793 − 3·0.4031 + 5·0.7347 + 2·0.0293 + 0.7999
#        = −6.0608 + 0.2793 − 1.2093 + 3.6735 + 0.0586 + 0.7999 = −2.4588
#   row 2: −2·0.7576 + 2·0.2793 − 0.4031 + 5·0.7347 + 2·0.0293 + 0.7999
#        = −1.5152 + 0.5586 − 0.4031 + 3.6735 + 0.0586 + 0.7999 = 3.1723
#   row 3: 7·0.7576 + 0.2793 + 9·0.4031 − 5·0.7347 − 2·0.0293 + 0.7999
#        = 5.3032 + 0.2793 + 3.6279 − 3.6735 − 0.0586 + 0.7999 = 6.2782
HAND_Z = [-2.4588, 3.1723, 6.2782]


def _lecture_tolerances(x_row):
    """Why the printed numbers can't be matched exactly, and by how much they may differ.

    Each printed weight (and b) is the true torch.rand draw rounded to 4 decimals, so it is off
    by at most 5e-5; z = Σ x_i w_i + b is then off by at most 5e-5·(Σ|x_i| + 1), and the
    printed z is itself rounded (another 5e-5).  σ' ≤ 1/4, so σ(z) is off by at most a quarter
    of that, plus its own print rounding.  For row 1 (Σ|x| = 19): 1.05e-3 on z, 3.1e-4 on σ.
    (Observed: 3e-4 on z, 2e-5 on σ.)
    """
    tol_z = 5e-5 * (sum(abs(v) for v in x_row) + 1) + 5e-5
    return tol_z, tol_z / 4 + 5e-5


def _lecture_params():
    W = jnp.asarray(LECTURE_W)[:, None]  # (5, 1)
    return (Dense(W=W, b=jnp.asarray([LECTURE_B]), activation="sigmoid"),)


def test_lecture_single_sample():
    """x^T = [−8, 1, −3, 5, 2] (a (1, 5) row): z = x^T W^T + b = −2.4591, a = σ(z) = 0.0788."""
    params = _lecture_params()
    xT = jnp.asarray([LECTURE_X[0]])
    assert xT.shape == (1, 5)
    cache = mj.forward_cache(params, xT)
    assert cache.Zs[0].shape == (1, 1) and cache.As[1].shape == (1, 1)
    z, a = float(cache.Zs[0][0, 0]), float(cache.As[1][0, 0])
    assert z == pytest.approx(HAND_Z[0], abs=1e-12)
    tol_z, tol_a = _lecture_tolerances(LECTURE_X[0])
    assert z == pytest.approx(LECTURE_Z[0], abs=tol_z)
    assert a == pytest.approx(LECTURE_A[0], abs=tol_a)
    assert float(mj.forward(params, xT)[0, 0]) == a


def test_lecture_batch():
    """X (3, 5): z = X W^T ⊕ b ∈ R^{3×1} = [−2.4591, 3.1721, 6.2782],
    a = σ(z) = [0.0788, 0.9598, 0.9981]."""
    params = _lecture_params()
    X = jnp.asarray(LECTURE_X)
    cache = mj.forward_cache(params, X)
    assert cache.Zs[0].shape == (3, 1)
    np.testing.assert_allclose(cache.Zs[0][:, 0], HAND_Z, atol=1e-12)
    for i, row in enumerate(LECTURE_X):
        tol_z, tol_a = _lecture_tolerances(row)
        assert float(cache.Zs[0][i, 0]) == pytest.approx(LECTURE_Z[i], abs=tol_z)
        assert float(cache.As[1][i, 0]) == pytest.approx(LECTURE_A[i], abs=tol_a)
    # the batch rows are the single-sample computation, row by row
    for i, row in enumerate(LECTURE_X):
        single = mj.forward(params, jnp.asarray([row]))
        assert float(single[0, 0]) == pytest.approx(float(cache.As[1][i, 0]), rel=1e-15)


# --- forward -------------------------------------------------------------------------------
@pytest.mark.usefixtures("op_by_op")
@pytest.mark.parametrize("hidden", mj.activations.HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("output", mj.activations.OUTPUT_ACTIVATIONS)
def test_forward_matches_reference(hidden, output):
    params = make_params(3, [4, 5, 3], hidden, output)
    X = jnp.asarray(np_rng(4).standard_normal((6, 4)))
    Zs = ref_forward_Zs(params, X)
    cache = mj.forward_cache(params, X)
    assert len(cache.Zs) == 2 and len(cache.As) == 3
    assert_trees_close(cache.Zs, tuple(Zs))
    np.testing.assert_array_equal(cache.As[0], X)
    assert_trees_close(cache.As[1], REF_ACTIVATIONS[hidden](Zs[0]))
    assert_trees_close(mj.forward(params, X), REF_ACTIVATIONS[output](Zs[1]))


def test_forward_casts_X_to_params_dtype():
    params = make_params(0, [3, 2], "tanh", "identity", dtype=jnp.float32)
    X64 = jnp.ones((4, 3), jnp.float64)
    assert mj.forward(params, X64).dtype == jnp.float32
    assert mj.forward(params, np.ones((4, 3))).dtype == jnp.float32  # NumPy input works too
    assert mj.forward(params, [[1.0, 2.0, 3.0]]).shape == (1, 2)  # nested lists too
    assert mj.forward(params, np.ones((4, 3), np.int64)).dtype == jnp.float32  # and integers


def test_loss_value_is_the_mean_over_rows():
    params, X, Y = make_problem(1, [3, 4, 2], "tanh", "identity", "half_squared_error", 6)
    A = np.asarray(mj.forward(params, X))
    expected = np.mean(0.5 * np.sum((A - np.asarray(Y)) ** 2, axis=1))
    assert float(mj.loss(params, X, Y, "half_squared_error")) == pytest.approx(expected, 1e-14)


# --- init and the pytree -------------------------------------------------------------------
def test_init_shapes_and_zero_biases(key):
    params = mj.init_mlp(key, [5, 7, 4, 3], hidden="sigmoid", output="softmax")
    assert [p.W.shape for p in params] == [(5, 7), (7, 4), (4, 3)]
    assert [p.b.shape for p in params] == [(7,), (4,), (3,)]
    assert [p.activation for p in params] == ["sigmoid", "sigmoid", "softmax"]
    for p in params:
        np.testing.assert_array_equal(p.b, 0.0)
    assert mj.layer_sizes(params) == [5, 7, 4, 3]


def test_init_dtypes(key):
    default = mj.init_mlp(key, [3, 4, 2])
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(default))  # x64 on
    f32 = mj.init_mlp(key, [3, 4, 2], dtype=jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(f32))
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int32"):
        mj.init_mlp(key, [3, 2], dtype=jnp.int32)


def test_same_key_same_params_other_key_other_params(key):
    a = mj.init_mlp(key, [3, 4, 2], hidden="tanh")
    b = mj.init_mlp(key, [3, 4, 2], hidden="tanh")
    chex.assert_trees_all_equal(a, b)
    c = mj.init_mlp(jax.random.key(1), [3, 4, 2], hidden="tanh")
    assert not np.array_equal(a[0].W, c[0].W)


def test_leaves_flatten_in_order_W1_b1_W2_b2(key):
    params = mj.init_mlp(key, [2, 3, 4])
    leaves = jax.tree_util.tree_leaves(params)
    assert [x.shape for x in leaves] == [(2, 3), (3,), (3, 4), (4,)]
    assert leaves[0] is params[0].W and leaves[1] is params[0].b
    assert leaves[2] is params[1].W and leaves[3] is params[1].b
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert paths == ["[0].W", "[0].b", "[1].W", "[1].b"]


def test_activation_is_static_metadata(key):
    params = mj.init_mlp(key, [2, 3, 1], hidden="tanh", output="sigmoid")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    assert not any(isinstance(x, str) for x in leaves)
    other = mj.init_mlp(key, [2, 3, 1], hidden="relu", output="sigmoid")
    assert jax.tree_util.tree_structure(other) != treedef  # the name is part of the structure
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
    assert [p.activation for p in doubled] == ["tanh", "sigmoid"]
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert [p.activation for p in rebuilt] == ["tanh", "sigmoid"]
    # jit treats it as static: a str leaf would be rejected as an argument
    assert jax.jit(mj.forward)(params, jnp.ones((1, 2))).shape == (1, 1)


def test_grads_pytree_works_with_chex_and_optax():
    params, X, Y = make_problem(2, [3, 4, 2], "tanh", "sigmoid", "binary_cross_entropy", 5)
    grads = mj.manual_grads(params, X, Y, "binary_cross_entropy")
    chex.assert_trees_all_equal_structs(grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    opt = optax.sgd(0.1)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    chex.assert_trees_all_equal_structs(new, params)
    assert_trees_close(new, expected)
    assert float(mj.loss(new, X, Y, "binary_cross_entropy")) < float(
        mj.loss(params, X, Y, "binary_cross_entropy"))


# Expected standard deviation of W for fan_in = 300, fan_out = 100:
#   he: sqrt(2/fan_in) = 0.0816;  xavier (Glorot uniform): sqrt(2/(fan_in + fan_out)) = 0.0707;
#   lecun: sqrt(1/fan_in) = 0.0577;  normal: 0.01.
INIT_STD = {"he": math.sqrt(2 / 300), "xavier": math.sqrt(2 / 400),
            "lecun": math.sqrt(1 / 300), "normal": 0.01}


@pytest.mark.parametrize("init", sorted(INIT_STD))
def test_init_scales(init, key):
    """A statistical property, not exact draws: with 30,000 weights the sample std has a
    relative standard error of ~1/sqrt(2·30000) = 0.4%, so 3% is > 7 standard errors, while
    the closest pair of schemes (he vs xavier) differ by 15%."""
    W = np.asarray(mj.init_mlp(key, [300, 100], init=init)[0].W)
    assert abs(W.mean()) < 5 * INIT_STD[init] / math.sqrt(W.size)
    assert W.std() == pytest.approx(INIT_STD[init], rel=0.03)
    if init == "xavier":  # uniform on ±sqrt(6/(fan_in + fan_out))
        assert np.abs(W).max() <= math.sqrt(6 / 400)


def test_init_auto_picks_he_for_relu_and_xavier_otherwise(key):
    for hidden, expected in [("relu", "he"), ("leaky_relu", "he"), ("tanh", "xavier"),
                             ("sigmoid", "xavier")]:
        auto = mj.init_mlp(key, [6, 5, 2], hidden=hidden, init="auto")
        explicit = mj.init_mlp(key, [6, 5, 2], hidden=hidden, init=expected)
        chex.assert_trees_all_equal(auto, explicit)


def test_dense_repr():
    layer = Dense(W=jnp.zeros((3, 2)), b=jnp.zeros(2), activation="relu")
    assert repr(layer) == "Dense(W=(3, 2), activation='relu', dtype=float64)"


# --- jit -----------------------------------------------------------------------------------
def test_forward_and_loss_same_with_and_without_jit():
    """Default (the library's own jit), op by op (jax.disable_jit) and inside a user's jit:
    equal within the float64 tolerance.  forward is bitwise equal op by op on CPU in practice
    and the loss differs by at most an ulp, but bitwise equality is not part of the contract."""
    params, X, Y = make_problem(8, [4, 5, 3], "softplus", "softmax", "cross_entropy", 7)
    for f in (lambda: mj.forward(params, X), lambda: mj.loss(params, X, Y, "cross_entropy"),
              lambda: mj.forward_cache(params, X)):
        default = f()
        with jax.disable_jit():
            assert_trees_close(f(), default)
        assert_trees_close(jax.jit(f)(), default)
    assert_trees_close(jax.jit(mj.forward)(params, X), mj.forward(params, X))
    jit_loss = jax.jit(mj.loss, static_argnames="loss")
    assert_trees_close(jit_loss(params, X, Y, loss="cross_entropy"),
                       mj.loss(params, X, Y, "cross_entropy"))


# --- bad input: clear errors before any tracing ---------------------------------------------
def _raised_by_mlds(excinfo) -> bool:
    """The innermost frame is mlds_jax's own validation, not JAX or XLA."""
    path = str(excinfo.traceback[-1].path)
    return "/mlds_jax/" in path and "/jax/_src/" not in path


ENTRY_POINTS = {
    "loss": mj.loss,
    "manual_grads": mj.manual_grads,
    "autodiff_grads": mj.autodiff_grads,
    "backward_deltas": mj.backward_deltas,
    "check_grads": mj.check_grads,
}


def _net(output="identity", n_out=2):
    return make_params(0, [3, 4, n_out], "tanh", output)


def _X(n=5, d=3):
    return np.asarray(np_rng(1).standard_normal((n, d)))


def _with(arr, idx, value):
    arr = np.array(arr, dtype=np.float64)
    arr[idx] = value
    return arr


BAD_BATCHES = {
    # name: (params, X, Y, loss, exception, regex)
    "X features != fan_in": (
        _net(), _X(5, 4), np.zeros((5, 2)), "mse", ValueError,
        r"X has 4 features but the first layer expects fan_in = 3"),
    "X 1-D": (
        _net(), _X(5)[0], np.zeros((1, 2)), "mse", ValueError,
        r"X must be 2-D \(N, n_features\), got shape \(3,\); "
        r"for one sample use X\.reshape\(1, -1\)"),
    "X 3-D": (
        _net(), np.zeros((2, 5, 3)), np.zeros((2, 2)), "mse", ValueError,
        r"X must be 2-D \(N, n_features\), got shape \(2, 5, 3\)"),
    "X/Y rows": (
        _net(), _X(5), np.zeros((4, 2)), "mse", ValueError,
        r"X has 5 rows but Y has 4; they must match"),
    "Y columns": (
        _net(), _X(5), np.zeros((5, 3)), "mse", ValueError,
        r"Y has 3 columns but the network has 2 output\(s\)"),
    "Y 1-D for 2 outputs": (
        _net(), _X(5), np.zeros(5), "mse", ValueError,
        r"Y has shape \(5,\) but the network has 2 outputs; pass Y of shape \(5, 2\)"),
    "label negative": (
        _net("softmax", 3), _X(5), np.array([0, -1, 2, 1, 0]), "cross_entropy", ValueError,
        r"class labels must lie in \[0, 3\) for a network with 3 outputs; Y\[1\] = -1"),
    "label >= K": (
        _net("softmax", 3), _X(5), np.array([0, 1, 3, 1, 0]), "cross_entropy", ValueError,
        r"class labels must lie in \[0, 3\) .*; Y\[2\] = 3 \(1 label\(s\) out of range\)"),
    "label not integer": (
        _net("softmax", 3), _X(5), np.array([0.0, 1.5, 2.0, 1.0, 0.0]), "cross_entropy",
        ValueError, r"Y holds class labels but Y\[1\] = 1\.5 is not an integer"),
    "one-hot row sums to 2": (
        _net("softmax", 3), _X(5), _with(np.eye(3)[[0, 1, 2, 0, 1]], (1, 0), 1.0),
        "cross_entropy", ValueError,
        r"cross_entropy needs one-hot \(or probability\) rows summing to 1; "
        r"row 1 of Y sums to 2"),
    "one-hot row of zeros": (
        _net("softmax", 3), _X(5), _with(np.eye(3)[[0, 1, 2, 0, 1]], (3, 0), 0.0),
        "cross_entropy", ValueError, r"row 3 of Y sums to 0"),
    "one-hot entry outside [0, 1]": (
        _net("softmax", 3), _X(5), _with(np.eye(3)[[0, 1, 2, 0, 1]], (0, 1), -1.0),
        "cross_entropy", ValueError, r"cross_entropy targets must lie in \[0, 1\]; Y\[0, 1\]"),
    "BCE target > 1": (
        _net("sigmoid"), _X(5), _with(np.full((5, 2), 0.5), (1, 0), 1.5),
        "binary_cross_entropy", ValueError,
        r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[1, 0\] = 1\.5"),
    "BCE target < 0": (
        _net("sigmoid"), _X(5), _with(np.full((5, 2), 0.5), (4, 1), -0.25),
        "binary_cross_entropy", ValueError,
        r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[4, 1\] = -0\.25"),
    "unknown loss": (
        _net(), _X(5), np.zeros((5, 2)), "hinge", ValueError,
        r"unknown loss 'hinge'; valid names: \['mse', 'half_squared_error', "
        r"'binary_cross_entropy', 'cross_entropy'\]"),
    "BCE after softmax": (
        _net("softmax"), _X(5), np.full((5, 2), 0.5), "binary_cross_entropy", ValueError,
        r"loss 'binary_cross_entropy' needs an output activation in \['sigmoid'\], "
        r"but the output layer uses 'softmax'"),
    "CE after sigmoid": (
        _net("sigmoid"), _X(5), np.array([0, 1, 1, 0, 1]), "cross_entropy", ValueError,
        r"loss 'cross_entropy' needs an output activation in \['softmax'\], "
        r"but the output layer uses 'sigmoid'"),
    "NaN in X": (
        _net(), _with(_X(5), (1, 2), np.nan), np.zeros((5, 2)), "mse", ValueError,
        r"X contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index \(1, 2\)"),
    "inf in X": (
        _net(), _with(_X(5), (4, 0), -np.inf), np.zeros((5, 2)), "mse", ValueError,
        r"X contains 1 non-finite value\(s\) \(NaN or inf\); first -inf at index \(4, 0\)"),
    "NaN in Y": (
        _net(), _X(5), _with(np.zeros((5, 2)), (2, 1), np.nan), "mse", ValueError,
        r"Y contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index \(2, 1\)"),
    "NaN in params W": (
        tuple(_net()[:1]) + (Dense(W=_net()[1].W.at[2, 1].set(jnp.nan), b=_net()[1].b,
                                   activation="identity"),),
        _X(5), np.zeros((5, 2)), "mse", ValueError,
        r"params\[1\]\.W has a non-finite value nan at index \(2, 1\)"),
    "NaN in params b": (
        (Dense(W=_net()[0].W, b=_net()[0].b.at[3].set(jnp.nan), activation="tanh"),)
        + tuple(_net()[1:]),
        _X(5), np.zeros((5, 2)), "mse", ValueError,
        r"params\[0\]\.b has a non-finite value nan at index \(3,\)"),
    "X with no rows": (
        _net(), np.zeros((0, 3)), np.zeros((0, 2)), "mse", ValueError, r"X is empty \(0 rows\)"),
    "string X": (
        _net(), "not an array", np.zeros((5, 2)), "mse", TypeError,
        r"X must be a numeric array, got str"),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_rejected_with_clear_message(case, entry):
    params, X, Y, loss, exc, regex = BAD_BATCHES[case]
    with pytest.raises(exc, match=regex) as excinfo:
        ENTRY_POINTS[entry](params, X, Y, loss)
    assert _raised_by_mlds(excinfo)


@pytest.mark.parametrize("case", ["X features != fan_in", "X 1-D", "X 3-D", "NaN in X",
                                  "inf in X", "string X"])
def test_forward_rejects_bad_X(case):
    params, X, _, _, exc, regex = BAD_BATCHES[case]
    with pytest.raises(exc, match=regex) as excinfo:
        mj.forward(params, X)
    assert _raised_by_mlds(excinfo)


def test_shape_errors_fire_while_tracing_too():
    """Shapes are static, so the same message comes out of a jit trace (before any XLA
    compilation); value checks (NaN, label ranges) need concrete data and skip tracers."""
    params = _net()
    with pytest.raises(ValueError, match=r"X has 4 features but the first layer expects "
                                         r"fan_in = 3"):
        jax.jit(mj.forward)(params, jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"X has 5 rows but Y has 4"):
        jax.jit(mj.manual_grads, static_argnames="loss")(
            params, jnp.zeros((5, 3)), jnp.zeros((4, 2)), loss="mse")
    out = jax.jit(mj.forward)(params, jnp.full((2, 3), jnp.nan))  # no concrete value check
    assert np.all(np.isnan(out))


INIT_ERRORS = {
    "one size": (dict(sizes=[3]), ValueError,
                 r"sizes needs at least two layer sizes \[n_in, \.\.\., n_out\], got \[3\]"),
    "no sizes": (dict(sizes=[]), ValueError, r"at least two layer sizes"),
    "zero width": (dict(sizes=[3, 0, 2]), ValueError,
                   r"every layer size must be >= 1; sizes\[1\] = 0"),
    "negative width": (dict(sizes=[3, -2]), ValueError,
                       r"every layer size must be >= 1; sizes\[1\] = -2"),
    "float width": (dict(sizes=[3, 2.5]), TypeError, r"sizes\[1\] must be an int, got 2\.5"),
    "unknown hidden": (
        dict(sizes=[3, 2], hidden="gelu"), ValueError,
        r"unknown hidden activation 'gelu'; valid: \['identity', 'sigmoid', 'tanh', 'relu', "
        r"'leaky_relu', 'softplus'\]"),
    "softmax hidden": (dict(sizes=[3, 2], hidden="softmax"), ValueError,
                       r"activation 'softmax' can only be used on the output layer"),
    "unknown output": (
        dict(sizes=[3, 2], output="gelu"), ValueError,
        r"unknown output activation 'gelu'; valid: \[.*'softplus', 'softmax'\]"),
    "one-class softmax": (dict(sizes=[3, 4, 1], output="softmax"), ValueError,
                          r"a softmax over 1 output is the constant 1 and cannot learn \(sizes "
                          r"\[3, 4, 1\]\): use output='sigmoid'"),
    "unknown init": (dict(sizes=[3, 2], init="glorot"), ValueError,
                     r"unknown init 'glorot'; valid: \['auto', 'he', 'xavier', 'lecun', "
                     r"'normal'\]"),
}


@pytest.mark.parametrize("case", list(INIT_ERRORS))
def test_init_rejects_bad_arguments(case, key):
    kwargs, exc, regex = INIT_ERRORS[case]
    with pytest.raises(exc, match=regex) as excinfo:
        mj.init_mlp(key, **kwargs)
    assert _raised_by_mlds(excinfo)


def test_init_takes_an_int_seed():
    """``init_mlp(7, ...)`` is ``init_mlp(jax.random.key(7), ...)``; other non-keys are refused."""
    a, b = mj.init_mlp(7, [3, 4, 2]), mj.init_mlp(jax.random.key(7), [3, 4, 2])
    for la, lb in zip(a, b, strict=True):
        assert np.array_equal(la.W, lb.W) and np.array_equal(la.b, lb.b)
    with pytest.raises(ValueError, match=re.escape("key must lie in [0, 2**32), got -1")):
        mj.init_mlp(-1, [3, 2])
    with pytest.raises(TypeError, match=re.escape("key must be a jax.random key")):
        mj.init_mlp("0", [3, 2])


def test_malformed_params_rejected():
    good = _net()
    X = _X(5)
    with pytest.raises(TypeError, match="params must be a non-empty tuple of Dense layers"):
        mj.forward([], X)
    with pytest.raises(TypeError, match=r"params\[0\] must be a Dense layer, got dict"):
        mj.forward(({"W": good[0].W, "b": good[0].b},), X)
    hidden_softmax = (Dense(W=good[0].W, b=good[0].b, activation="softmax"), good[1])
    with pytest.raises(ValueError, match=r"activation 'softmax' of params\[0\] can only be used "
                                         r"on the output layer"):
        mj.forward(hidden_softmax, X)
    unchained = (good[0], Dense(W=jnp.zeros((5, 2)), b=jnp.zeros(2), activation="identity"))
    with pytest.raises(ValueError, match=r"params\[1\]\.W has fan_in 5 but params\[0\] has "
                                         r"fan_out 4"):
        mj.forward(unchained, X)
    bad_b = (Dense(W=good[0].W, b=jnp.zeros(3), activation="tanh"), good[1])
    with pytest.raises(ValueError, match=r"params\[0\]\.b must have shape \(4,\), got \(3,\)"):
        mj.forward(bad_b, X)
    unknown = (Dense(W=good[0].W, b=good[0].b, activation="gelu"), good[1])
    with pytest.raises(ValueError, match=r"unknown hidden activation 'gelu' for params\[0\]"):
        mj.forward(unknown, X)


# --- numerics at the edges: finite input whose pre-activations overflow float32 ----------------
def test_edge_preactivation_overflow_is_a_clear_error(op_by_op):
    """Finite inputs can still overflow: X = ±1e30, W = 1e10 gives Z = ±inf in float32.

    Decision: the loss (and evaluate) raise a ValueError that names the overflow, instead of
    returning NaN (inf − inf in the log-softmax, 0 · inf in BCE).  The other functions follow
    IEEE arithmetic and are documented here: forward gives σ(±inf) = 1/0 exactly; the fused
    manual gradients and jax.grad give the limit δ = σ(±inf) − y = 0, finite; the general path
    NaN; fit stops at once with a TrainingDivergedWarning (a non-finite loss is divergence to
    it) and returns the initial params.  (check_grads works in float64, where Z = ±1e40 does
    not overflow.)"""
    X = np.array([[1e30], [-1e30]], F32)
    Y = np.array([[1.0], [0.0]])
    params = one_layer([[1e10]], "sigmoid", F32)
    assert np.isinf(np.asarray(mj.forward_cache(params, X).Zs[0])).all()
    overflow = r"the loss is nan although params, X and Y are finite: the computation " \
               r"overflowed float32 \(max \|Z\| per layer: inf\); rescale X or use float64"
    with pytest.raises(ValueError, match=overflow):
        mj.loss(params, X, Y, "binary_cross_entropy")
    with pytest.raises(ValueError, match=overflow):
        mj.evaluate(params, X, Y)
    np.testing.assert_array_equal(mj.forward(params, X), [[1.0], [0.0]])
    for grads in (mj.manual_grads(params, X, Y, "binary_cross_entropy"),
                  mj.autodiff_grads(params, X, Y, "binary_cross_entropy")):
        np.testing.assert_array_equal(grads[0].W, [[0.0]])
    assert np.isnan(mj.manual_grads(params, X, Y, "binary_cross_entropy", fused=False)[0].W).all()
    with pytest.warns(mj.TrainingDivergedWarning, match="diverged in epoch 1"):
        fitted, history = mj.fit(params, X, Y, optimizer=optax.sgd(0.1), epochs=3,
                                 progress=False)
    assert history.stop_reason == "diverged" and bit_identical(fitted, params)
    # softmax: [inf, -inf] logits; the wrongly classified row of the identity output: inf
    softmax = one_layer([[1e10, -1e10]], "softmax", F32)
    with pytest.raises(ValueError, match=r"the loss is nan .*overflowed float32"):
        mj.loss(softmax, X, np.array([0, 1]), "cross_entropy")
    identity = one_layer([[1e10]], "identity", F32)
    with pytest.raises(ValueError, match=r"the loss is inf .*overflowed float32"):
        mj.loss(identity, X, np.zeros((2, 1)), "mse")

