"""Whole-network backprop: manual_grads == jax.grad, every layer's δ, and the notes' numbers.

Three references for the hand-derived gradients:

* ``mj.autodiff_grads``: jax.grad of the library's own loss;
* a raw ``jax.grad`` of a loss written independently here (``helpers.ref_loss_from_A``) on top
  of ``mj.forward``, so a wrong loss value in the library can't hide behind a matching
  wrong derivative;
* NumPy transcriptions of the notes' steps, and hand-computed numbers in comments.

The last sections: numerics at the edges (saturated sigmoid, relu kinks at exactly 0, softmax
ties), and determinism (every entry point repeats bit for bit; manual == jax.grad bit for bit
where the maths is the same, and within a proven bound where only the summation order differs).
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    F64,
    N_OUT,
    OUTPUT_LOSS_PAIRS,
    assert_trees_close,
    base_problem,
    bit_identical,
    grid_sizes,
    make_params,
    make_problem,
    np_leaves,
    np_rng,
    one_layer,
    record_errors,
    ref_forward_from,
    ref_forward_Zs,
    ref_loss_from_A,
    targets_2d,
    tolerances,
    tree_is_finite,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import mlds_jax as mj
from mlds_jax.network import Dense


def _seed(*parts) -> int:
    """A stable seed per parametrisation (hash() of a str is salted per process)."""
    return zlib.crc32("-".join(map(str, parts)).encode())


def _raw_grad(params, X, Y, loss: str):
    """jax.grad of an independently written loss on top of mj.forward."""
    K = params[-1].W.shape[1]
    Y2 = targets_2d(Y, loss, K, params[0].W.dtype)
    return jax.grad(lambda p: ref_loss_from_A(mj.forward(p, X), Y2, loss))(params)


# The grid: every hidden activation × every (output, loss) pair × depth 1..4 with a batch of 7.
# A depth-1 network has no hidden layer, so there the hidden activation is irrelevant: one case
# per pair.  The single-row batch (N = 1: sums over one row, no accidental squeeze) does not
# interact with the hidden activation, so it runs every pair × depth with the hidden
# activations taken in turn rather than crossed (each grid case costs ~70 ms op by op).
_HIDDEN = mj.activations.HIDDEN_ACTIVATIONS
GRID = [
    (hidden, output, loss, depth, 7)
    for output, loss in OUTPUT_LOSS_PAIRS
    for depth in (1, 2, 3, 4)
    for hidden in (_HIDDEN if depth > 1 else ("tanh",))
] + [
    (_HIDDEN[(i + depth) % len(_HIDDEN)], output, loss, depth, 1)
    for i, (output, loss) in enumerate(OUTPUT_LOSS_PAIRS)
    for depth in (1, 2, 3, 4)
]


@pytest.mark.usefixtures("op_by_op")
@pytest.mark.parametrize("hidden,output,loss,depth,N", GRID)
def test_manual_matches_autodiff_float64(hidden, output, loss, depth, N):
    params, X, Y = make_problem(
        _seed(hidden, output, loss, depth, N), grid_sizes(depth), hidden, output, loss, N
    )
    auto = mj.autodiff_grads(params, X, Y, loss)
    # The independent loss checks the library's loss ∘ forward, which does not depend on
    # depth beyond the first hidden layer or on N: once per (hidden, output, loss) is enough
    # (depth 1 and 2, N = 7), and it is the most expensive reference to run op by op.
    raw = _raw_grad(params, X, Y, loss) if depth <= 2 and N > 1 else None
    if raw is not None:
        assert_trees_close(auto, raw)
    label = f"{hidden}/{output}/{loss} depth={depth} N={N}"
    for fused in (True, False):
        manual = mj.manual_grads(params, X, Y, loss, fused=fused)
        record_errors(manual, auto, f"{label} fused={fused}")
        assert_trees_close(manual, auto)
        if raw is not None:
            assert_trees_close(manual, raw)


# float32 at depth 3, batch 7: every pair, with three of the hidden activations each (taken in
# turn, so every hidden activation meets several pairs).
FLOAT32_GRID = [
    (_HIDDEN[(3 * i + j) % len(_HIDDEN)], output, loss, 3)
    for i, (output, loss) in enumerate(OUTPUT_LOSS_PAIRS)
    for j in range(3)
]


@pytest.mark.usefixtures("op_by_op")
@pytest.mark.parametrize("hidden,output,loss,depth", FLOAT32_GRID)
def test_manual_matches_autodiff_float32(hidden, output, loss, depth):
    """Same comparison in float32, with the float32 tolerance of helpers.py (see there)."""
    params, X, Y = make_problem(
        _seed("f32", hidden, output, loss, depth), grid_sizes(depth), hidden, output, loss, 7,
        jnp.float32,
    )
    auto = mj.autodiff_grads(params, X, Y, loss)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(auto))
    label = f"{hidden}/{output}/{loss} depth={depth} N=7"
    for fused in (True, False):
        manual = mj.manual_grads(params, X, Y, loss, fused=fused)
        assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(manual))
        record_errors(manual, auto, f"{label} fused={fused}")
        assert_trees_close(manual, auto, jnp.float32)


@pytest.mark.usefixtures("op_by_op")
@pytest.mark.parametrize(
    "targets", [("binary_cross_entropy", "hard"), ("cross_entropy", "onehot"),
                ("cross_entropy", "soft")]
)
@pytest.mark.parametrize("fused", [True, False])
def test_manual_matches_autodiff_other_targets(targets, fused):
    """Hard 0/1 BCE targets, one-hot and soft (probability-row) CE targets."""
    loss, kind = targets
    output = "sigmoid" if loss == "binary_cross_entropy" else "softmax"
    params, X, Y = make_problem(
        _seed(loss, kind), grid_sizes(3), "softplus", output, loss, 7, targets=kind
    )
    manual = mj.manual_grads(params, X, Y, loss, fused=fused)
    assert_trees_close(manual, mj.autodiff_grads(params, X, Y, loss))
    assert_trees_close(manual, _raw_grad(params, X, Y, loss))


def test_labels_and_onehot_give_the_same_gradients():
    params, X, labels = make_problem(_seed("lab"), grid_sizes(2), "tanh", "softmax",
                                     "cross_entropy", 7)
    onehot = jax.nn.one_hot(labels, N_OUT, dtype=jnp.float64)
    assert_trees_close(mj.manual_grads(params, X, labels, "cross_entropy"),
                       mj.manual_grads(params, X, onehot, "cross_entropy"))


def test_one_output_accepts_1d_targets():
    params, X, Y = make_problem(_seed("1d"), grid_sizes(2, 1), "relu", "sigmoid",
                                "binary_cross_entropy", 7)
    assert Y.shape == (7, 1)
    assert_trees_close(mj.manual_grads(params, X, Y[:, 0], "binary_cross_entropy"),
                       mj.manual_grads(params, X, Y, "binary_cross_entropy"))


def test_grads_have_the_structure_of_params():
    params, X, Y = make_problem(_seed("struct"), [4, 5, 6, 3], "tanh", "softmax",
                                "cross_entropy", 7)
    grads = mj.manual_grads(params, X, Y, "cross_entropy")
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for g, p in zip(grads, params, strict=True):
        assert g.W.shape == p.W.shape and g.b.shape == p.b.shape
        assert g.activation == p.activation


# --- hypothesis: random architectures -------------------------------------------------------
@st.composite
def _problems(draw):
    depth = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 16), min_size=depth + 1, max_size=depth + 1))
    hidden = draw(st.sampled_from(mj.activations.HIDDEN_ACTIVATIONS))
    output, loss = draw(st.sampled_from(OUTPUT_LOSS_PAIRS))
    n = draw(st.integers(1, 9))
    fused = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return sizes, hidden, output, loss, n, fused, seed


def _compare(params, X, Y, loss, fused):
    # Both public functions inside one jax.jit: a single XLA compilation per example (every
    # example is a new architecture) instead of one for each function's own internal jit;
    # about half the time.  Their shape validation runs on the tracers.
    def both(p, X_, Y_):
        return (mj.manual_grads(p, X_, Y_, loss, fused=fused),
                mj.autodiff_grads(p, X_, Y_, loss))

    return jax.jit(both)(params, X, Y)


@given(_problems())
def test_hypothesis_random_architectures(problem):
    sizes, hidden, output, loss, n, fused, seed = problem
    params, X, Y = make_problem(seed, sizes, hidden, output, loss, n)
    manual, auto = _compare(params, X, Y, loss, fused)
    record_errors(manual, auto, f"hypothesis {sizes} {hidden}/{output}/{loss} n={n}")
    assert_trees_close(manual, auto)


# --- every layer's δ -------------------------------------------------------------------------
DELTA_CASES = [
    (mj.activations.HIDDEN_ACTIVATIONS[i % len(mj.activations.HIDDEN_ACTIVATIONS)], output, loss)
    for i, (output, loss) in enumerate(OUTPUT_LOSS_PAIRS)
]


@pytest.mark.usefixtures("op_by_op")
@pytest.mark.parametrize("hidden,output,loss", DELTA_CASES)
def test_backward_deltas_are_grads_wrt_Z(hidden, output, loss):
    """δ^{(l)} = ∂L/∂Z^{(l)}: jax.grad of the loss written as a function of Z^{(l)} (the
    reference forward is re-run from layer l), for the output layer and each hidden layer."""
    sizes = grid_sizes(3)  # the grid's shapes: the eager ops are already compiled
    N = 7
    params, X, Y = make_problem(_seed("deltas", hidden, output, loss), sizes, hidden, output,
                                loss, N)
    Y2 = targets_2d(Y, loss, sizes[-1], jnp.float64)
    Zs = ref_forward_Zs(params, X)
    cache = mj.forward_cache(params, X)
    expected = []
    for l in range(1, len(params) + 1):
        assert_trees_close(cache.Zs[l - 1], Zs[l - 1])
        expected.append(jax.grad(
            lambda Z, l=l: ref_loss_from_A(ref_forward_from(params, l, Z), Y2, loss)
        )(Zs[l - 1]))
    for fused in (True, False):
        deltas = mj.backward_deltas(params, X, Y, loss, fused=fused)
        assert len(deltas) == len(params)
        assert [d.shape for d in deltas] == [(N, s) for s in sizes[1:]]
        assert_trees_close(deltas, tuple(expected))


def test_output_delta_fused_equals_general():
    for output, loss in [("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy"),
                         ("identity", "half_squared_error"), ("identity", "mse")]:
        params, X, Y = make_problem(_seed("od", loss), grid_sizes(2), "tanh", output, loss, 7)
        Y2 = targets_2d(Y, loss, N_OUT, jnp.float64)
        cache = mj.forward_cache(params, X)
        fused = mj.core.output_delta(cache, Y2, loss, output, fused=True)
        general = mj.core.output_delta(cache, Y2, loss, output, fused=False)
        assert_trees_close(fused, general)


def test_dense_backward_is_the_vjp_of_the_affine_map():
    rng = np_rng(7)
    A_prev, W = jnp.asarray(rng.standard_normal((6, 4))), jnp.asarray(rng.standard_normal((4, 3)))
    b, delta = jnp.asarray(rng.standard_normal(3)), jnp.asarray(rng.standard_normal((6, 3)))
    _, vjp = jax.vjp(lambda A, W_, b_: A @ W_ + b_[None, :], A_prev, W, b)
    dA, dW, db = vjp(delta)
    got_dW, got_db, got_dA = mj.core.dense_backward(delta, A_prev, W)
    assert_trees_close((got_dW, got_db, got_dA), (dW, db, dA))


# --- jit -------------------------------------------------------------------------------------
@pytest.mark.parametrize("output,loss", [("softmax", "cross_entropy"), ("sigmoid", "mse")])
def test_grads_same_with_and_without_jit(output, loss):
    """The public functions jit their core after validating; the same results come out op by
    op (jax.disable_jit) and inside a user's jax.jit.  Equal within the float64 tolerance, not
    bitwise: XLA fuses the compiled graph and may reassociate sums (observed: up to ~6e-17
    absolute, one ulp of the entries)."""
    params, X, Y = make_problem(_seed("jit", loss), grid_sizes(3), "sigmoid", output, loss, 7)
    calls = {
        "manual fused": lambda: mj.manual_grads(params, X, Y, loss),
        "manual general": lambda: mj.manual_grads(params, X, Y, loss, fused=False),
        "autodiff": lambda: mj.autodiff_grads(params, X, Y, loss),
        "deltas": lambda: mj.backward_deltas(params, X, Y, loss),
    }
    for f in calls.values():
        default = f()
        with jax.disable_jit():
            op_by_op = f()
        inside_jit = jax.jit(f)()
        assert_trees_close(op_by_op, default)
        assert_trees_close(inside_jit, default)
    # and with the arrays as traced arguments of a user's jit (loss and fused static)
    jitted = jax.jit(mj.manual_grads, static_argnames=("loss", "fused"))
    for fused in (True, False):
        assert_trees_close(jitted(params, X, Y, loss=loss, fused=fused),
                           mj.manual_grads(params, X, Y, loss, fused=fused))
    assert_trees_close(jax.jit(mj.autodiff_grads, static_argnames="loss")(params, X, Y, loss=loss),
                       mj.autodiff_grads(params, X, Y, loss))


# --- the documents' own examples -------------------------------------------------------------
def test_mlds_two_layer_regression_by_hand():
    """MLDS notes, "Putting it all together", identity hidden layer: every number by hand.

    Forward, X = [[1, 2], [0, 1]], W1 = [[1, −1], [0, 2]], B1 = [0, 1], W2 = [[1], [−1]],
    B2 = [2], Y* = [[1], [0]]:
      1. Z1 = X W1 + B1 = [[1·1 + 2·0, 1·(−1) + 2·2], [0, 2]] + [0, 1] = [[1, 4], [0, 3]]
      2. H = f(Z1) = Z1 (identity)
      3-4. Y = H W2 + B2 = [[1 − 4 + 2], [0 − 3 + 2]] = [[−1], [−1]]
      5. L = (1/n) Σ (Y* − Y)², n = 2:  ((1 + 1)² + (0 + 1)²)/2 = 5/2
    Backward:
      1. dL/dY = (2/n)(Y − Y*) = [[−2], [−1]]
      2. dW2 = Hᵀ dL/dY = [[1·(−2) + 0·(−1)], [4·(−2) + 3·(−1)]] = [[−2], [−11]]
      3. dB2 = Σ dL/dY = [−3]
      4. dH = dL/dY W2ᵀ = [[−2·1, −2·(−1)], [−1·1, −1·(−1)]] = [[−2, 2], [−1, 1]]
      5. dZ1 = dH ⊙ f'(Z1) = dH (f' = 1)
      6. dW1 = Xᵀ dZ1 = [[1·(−2) + 0·(−1), 1·2 + 0·1], [2·(−2) + 1·(−1), 2·2 + 1·1]]
                      = [[−2, 2], [−5, 5]]
      7. dB1 = Σ dZ1 = [−3, 3]
    Update with α = 1/32 (exact in binary): W ← W − α dW:
      W1 = [[1 + 2/32, −1 − 2/32], [0 + 5/32, 2 − 5/32]] = [[1.0625, −1.0625], [0.15625, 1.84375]]
      B1 = [3/32, 1 − 3/32] = [0.09375, 0.90625];  W2 = [[1.0625], [−1 + 11/32]] =
      [[1.0625], [−0.65625]];  B2 = [2 + 3/32] = [2.09375]
    New forward: Z1 = [[1.0625 + 0.3125, −1.0625 + 3.6875], [0.15625, 1.84375]] + B1
                    = [[1.46875, 3.53125], [0.25, 2.75]]
      Y = [[1.46875·1.0625 − 3.53125·0.65625 + 2.09375], [0.25·1.0625 − 2.75·0.65625 + 2.09375]]
        = [[1.3369140625], [0.5546875]] = [[1369/1024], [71/128]]
      L = ((1 − 1369/1024)² + (71/128)²)/2 = ((345/1024)² + (71/128)²)/2 ≈ 0.2106 < 2.5
    All these numbers are dyadic rationals, exact in float64: asserted with ==.
    """
    X = jnp.asarray([[1.0, 2.0], [0.0, 1.0]])
    Y_star = jnp.asarray([[1.0], [0.0]])
    params = (
        Dense(W=jnp.asarray([[1.0, -1.0], [0.0, 2.0]]), b=jnp.asarray([0.0, 1.0]),
              activation="identity"),
        Dense(W=jnp.asarray([[1.0], [-1.0]]), b=jnp.asarray([2.0]), activation="identity"),
    )
    cache = mj.forward_cache(params, X)
    np.testing.assert_array_equal(cache.Zs[0], [[1.0, 4.0], [0.0, 3.0]])
    np.testing.assert_array_equal(cache.As[-1], [[-1.0], [-1.0]])
    assert float(mj.loss(params, X, Y_star, "mse")) == 2.5
    deltas = mj.backward_deltas(params, X, Y_star, "mse")
    np.testing.assert_array_equal(deltas[1], [[-2.0], [-1.0]])  # dL/dY (identity output)
    np.testing.assert_array_equal(deltas[0], [[-2.0, 2.0], [-1.0, 1.0]])  # dZ1
    for fused in (True, False):
        g = mj.manual_grads(params, X, Y_star, "mse", fused=fused)
        np.testing.assert_array_equal(g[1].W, [[-2.0], [-11.0]])
        np.testing.assert_array_equal(g[1].b, [-3.0])
        np.testing.assert_array_equal(g[0].W, [[-2.0, 2.0], [-5.0, 5.0]])
        np.testing.assert_array_equal(g[0].b, [-3.0, 3.0])
    g = mj.manual_grads(params, X, Y_star, "mse")
    assert_trees_close(g, mj.autodiff_grads(params, X, Y_star, "mse"))
    alpha = 1.0 / 32.0
    new = jax.tree_util.tree_map(lambda p, d: p - alpha * d, params, g)
    np.testing.assert_array_equal(new[0].W, [[1.0625, -1.0625], [0.15625, 1.84375]])
    np.testing.assert_array_equal(new[0].b, [0.09375, 0.90625])
    np.testing.assert_array_equal(new[1].W, [[1.0625], [-0.65625]])
    np.testing.assert_array_equal(new[1].b, [2.09375])
    np.testing.assert_array_equal(mj.forward(new, X), [[1369 / 1024], [71 / 128]])
    assert float(mj.loss(new, X, Y_star, "mse")) == ((345 / 1024) ** 2 + (71 / 128) ** 2) / 2


def _np_mlds_steps(X, W1, B1, W2, B2, Y_star, f, f_prime):
    """The MLDS notes' forward steps 1-5 and backward steps 1-7, transcribed in NumPy."""
    Z1 = X @ W1 + B1  # 1
    H = f(Z1)  # 2
    Y = H @ W2 + B2  # 3, 4 (identity output)
    n = Y.size
    L = np.sum((Y_star - Y) ** 2) / n  # 5
    dY = 2.0 / n * (Y - Y_star)  # backward 1
    dW2 = H.T @ dY  # 2
    dB2 = dY.sum(axis=0)  # 3
    dH = dY @ W2.T  # 4
    dZ1 = dH * f_prime(Z1)  # 5
    dW1 = X.T @ dZ1  # 6
    dB1 = dZ1.sum(axis=0)  # 7
    return L, (dW1, dB1, dW2, dB2)


@pytest.mark.parametrize("n_out", [1, 2])
def test_mlds_two_layer_sigmoid_hidden_against_numpy(n_out):
    """The same seven steps with a sigmoid hidden layer (n = N·K entries in the mean)."""
    rng = np_rng(11)
    X = rng.standard_normal((5, 3))
    W1, B1 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    W2, B2 = rng.standard_normal((4, n_out)), rng.standard_normal(n_out)
    Y_star = rng.standard_normal((5, n_out))
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    L, (dW1, dB1, dW2, dB2) = _np_mlds_steps(
        X, W1, B1, W2, B2, Y_star, sig, lambda z: sig(z) * (1 - sig(z)))
    params = (Dense(W=jnp.asarray(W1), b=jnp.asarray(B1), activation="sigmoid"),
              Dense(W=jnp.asarray(W2), b=jnp.asarray(B2), activation="identity"))
    assert float(mj.loss(params, X, Y_star, "mse")) == pytest.approx(L, rel=1e-13)
    expected = (Dense(W=jnp.asarray(dW1), b=jnp.asarray(dB1), activation="sigmoid"),
                Dense(W=jnp.asarray(dW2), b=jnp.asarray(dB2), activation="identity"))
    for fused in (True, False):
        assert_trees_close(mj.manual_grads(params, X, Y_star, "mse", fused=fused), expected)


def test_bce_notes_logistic_regression_simplification():
    """BCE notes: for one sigmoid layer with BCE, dL/dW = (1/m) Σ_i (A_i − y_i) A_prev,iᵀ and
    dL/db = (1/m) Σ_i (A_i − y_i); as matrices (our W is (n_in, 1)): Xᵀ(A − y)/m.  The general
    path [−y/ŷ + (1−y)/(1−ŷ)] ŷ(1−ŷ) Xᵀ/m (fused=False) and jax.grad must agree with it."""
    rng = np_rng(5)
    m, n_in = 8, 3
    X = rng.standard_normal((m, n_in))
    W, b = rng.standard_normal((n_in, 1)), rng.standard_normal(1)
    y = rng.integers(0, 2, size=m).astype(np.float64)
    A = 1.0 / (1.0 + np.exp(-(X @ W + b)))  # (m, 1)
    dW = sum((A[i, 0] - y[i]) * X[i][:, None] for i in range(m)) / m  # Σ (A − y) A_prevᵀ
    db = np.array([np.sum(A[:, 0] - y) / m])
    params = (Dense(W=jnp.asarray(W), b=jnp.asarray(b), activation="sigmoid"),)
    expected = (Dense(W=jnp.asarray(dW), b=jnp.asarray(db), activation="sigmoid"),)
    for fused in (True, False):
        assert_trees_close(mj.manual_grads(params, X, y, "binary_cross_entropy", fused=fused),
                           expected)
    assert_trees_close(mj.autodiff_grads(params, X, y, "binary_cross_entropy"), expected)
    by_grad = jax.grad(mj.loss)(params, jnp.asarray(X), jnp.asarray(y), "binary_cross_entropy")
    assert_trees_close(by_grad, expected)


@pytest.mark.parametrize("N", [1, 4])
def test_sigmoid_notes_three_layer_network(N):
    """Sigmoid notes: a¹ = σ(z¹), a² = σ(z²), a³ = σ(z³) = ŷ, C = ½(y − ŷ)².

    1. ∂C/∂z^L = −(y − a^L) a^L (1 − a^L)
    2. ∂C/∂z^l = [(w^{l+1})ᵀ ∂C/∂z^{l+1}] ⊙ σ'(z^l)   (our row convention: δ^{l+1} W^{l+1 T})
    3/4. ∂C/∂w^l = a^{l−1} ∂C/∂z^l,  ∂C/∂b^l = ∂C/∂z^l
    With N samples our L = (1/N) Σ_p C_p (half_squared_error), so each row's δ carries 1/N.
    """
    rng = np_rng(3)
    sizes = [2, 3, 2, 1]
    params = make_params(rng.integers(2**31), sizes, "sigmoid", "sigmoid")
    X = rng.standard_normal((N, 2))
    y = rng.uniform(size=(N, 1))
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    Ws = [np.asarray(p.W) for p in params]
    bs = [np.asarray(p.b) for p in params]
    a = [X]
    for W, b in zip(Ws, bs, strict=True):
        a.append(sig(a[-1] @ W + b))
    d3 = -(y - a[3]) * a[3] * (1 - a[3]) / N  # step 1 (÷N: the batch mean)
    d2 = (d3 @ Ws[2].T) * a[2] * (1 - a[2])  # step 2
    d1 = (d2 @ Ws[1].T) * a[1] * (1 - a[1])  # step 2 again
    deltas = mj.backward_deltas(params, X, y, "half_squared_error")
    for got, want in zip(deltas, (d1, d2, d3), strict=True):
        np.testing.assert_allclose(got, want, **tolerances(np.float64))
    grads = mj.manual_grads(params, X, y, "half_squared_error")
    for l, d in enumerate((d1, d2, d3)):
        np.testing.assert_allclose(grads[l].W, a[l].T @ d, **tolerances(np.float64))  # 3
        np.testing.assert_allclose(grads[l].b, d.sum(axis=0), **tolerances(np.float64))  # 4
    if N == 1:  # a single sample: L is exactly the notes' C
        C = 0.5 * float((y - a[3])[0, 0] ** 2)
        assert float(mj.loss(params, X, y, "half_squared_error")) == pytest.approx(C, rel=1e-14)


def test_gradient_step_decreases_loss():
    """W ← W − α dL/dW with a small α decreases L (first-order descent direction)."""
    params, X, Y = make_problem(_seed("step"), grid_sizes(3), "tanh", "softmax",
                                "cross_entropy", 7)
    L0 = float(mj.loss(params, X, Y, "cross_entropy"))
    g = mj.manual_grads(params, X, Y, "cross_entropy")
    new = jax.tree_util.tree_map(lambda p, d: p - 1e-2 * d, params, g)
    assert float(mj.loss(new, X, Y, "cross_entropy")) < L0


# --- numerics at the edges: saturated sigmoid, relu kinks at exactly 0, softmax ties -----------
@pytest.mark.parametrize(("dtype", "z", "hidden_saturated"), [
    (F64, 40.0, False), (F64, 40.0, True), (F32, 20.0, False)])
def test_edge_saturated_sigmoid(dtype, z, hidden_saturated):
    """σ(z) rounds to exactly 1 (1 − σ(40) = 4e-18 < eps64/2, 1 − σ(20) = 2e-9 < eps32/2;
    σ(−z) stays a tiny positive number).  The fused path never forms 1/ŷ: finite and equal to
    jax.grad within the suite's tolerance (they differ by σ(−z) ~ 1e-18 where jax.grad keeps
    y·σ(−z) and the fused δ = σ(z) − y rounds it away).  The general path divides by
    1 − ŷ = 0: NaN."""
    X = np.array([[1.0], [-1.0], [1.0], [-1.0]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])  # half of the rows saturated on the wrong side
    if hidden_saturated:  # a saturated sigmoid hidden layer in front: σ'(±z) underflows to 0
        params = (mj.Dense(jnp.asarray([[z, -z]], dtype), jnp.zeros(2, dtype), "sigmoid"),
                  mj.Dense(jnp.asarray([[z], [-z]], dtype), jnp.zeros(1, dtype), "sigmoid"))
        X = np.abs(X)
    else:
        params = one_layer([[z]], "sigmoid", dtype)
    A = np.asarray(mj.forward(params, X), F64)
    assert np.any(A == 1.0) and np.all((A == 1.0) | (A < 1e-8))  # saturated
    fused = mj.manual_grads(params, X, Y, "binary_cross_entropy")
    auto = mj.autodiff_grads(params, X, Y, "binary_cross_entropy")
    assert tree_is_finite(fused) and tree_is_finite(auto)
    assert_trees_close(fused, auto)
    general = mj.manual_grads(params, X, Y, "binary_cross_entropy", fused=False)
    assert np.isnan(np.asarray(general[-1].W)).any()


@pytest.mark.parametrize("hidden", ["relu", "leaky_relu"])
def test_edge_relu_kinks_exactly_at_zero(hidden):
    """Z^(1) = X W1 with exact zeros (rows of X orthogonal to columns of W1, b1 = 0).  At the
    kink relu'(0) = 0 (so those δ^(1) entries are exactly 0) and leaky_relu'(0) = 1, the
    sub-gradients jax.grad of jax.nn.relu / leaky_relu use: manual == jax.grad."""
    W1 = jnp.asarray([[1.0, 1.0, 0.5], [1.0, -1.0, 0.5]])
    X = np.array([[1.0, -1.0], [0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    Z = np.asarray(X @ np.asarray(W1))
    assert (Z == 0).sum() == 7
    params = (mj.Dense(W1, jnp.zeros(3), hidden),
              mj.Dense(jnp.asarray([[0.3, -0.2], [0.7, 0.1], [-0.4, 0.9]]),
                       jnp.asarray([0.1, -0.1]), "identity"))
    Y = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [-1.0, 1.0]])
    act_grad = jax.grad(getattr(jax.nn, hidden))(0.0)
    assert float(act_grad) == float(mj.activations.ACTIVATIONS[hidden].prime(jnp.zeros(()))) == \
        (0.0 if hidden == "relu" else 1.0)
    deltas = mj.backward_deltas(params, X, Y, "mse")
    upstream = np.asarray(deltas[1]) @ np.asarray(params[1].W).T
    np.testing.assert_array_equal(np.asarray(deltas[0])[Z == 0], float(act_grad) *
                                  upstream[Z == 0])
    manual = mj.manual_grads(params, X, Y, "mse")
    auto = mj.autodiff_grads(params, X, Y, "mse")
    for m, a in zip(np_leaves(manual), np_leaves(auto), strict=True):
        np.testing.assert_allclose(m, a, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("K", [3, 10])
def test_edge_softmax_with_equal_logits(K):
    """W = 0, b = c: every logit equal, softmax = 1/K per entry, L = ln K, δ = (1/K − Y)/N,
    dW = Xᵀ δ, db = Σ δ: closed forms, manual and jax.grad agree."""
    rng = np.random.default_rng(K)
    N = 6
    params = (mj.Dense(jnp.zeros((3, K)), jnp.full((K,), 2.5), "softmax"),)
    X, y = rng.standard_normal((N, 3)), rng.integers(0, K, size=N)
    np.testing.assert_allclose(mj.forward(params, X), 1.0 / K, rtol=1e-15)
    assert float(mj.loss(params, X, y, "cross_entropy")) == pytest.approx(math.log(K),
                                                                          rel=1e-15)
    delta = (1.0 / K - np.eye(K)[y]) / N
    for fused in (True, False):
        grads = mj.manual_grads(params, X, y, "cross_entropy", fused=fused)
        np.testing.assert_allclose(grads[0].W, X.T @ delta, rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(grads[0].b, delta.sum(axis=0), atol=1e-16)
    auto = mj.autodiff_grads(params, X, y, "cross_entropy")
    np.testing.assert_allclose(auto[0].W, X.T @ delta, rtol=1e-12, atol=1e-16)
    assert np.all(np.asarray(mj.predict(params, X)) == 0)  # argmax of a tie: the first class



# --- determinism: every entry point repeats bit for bit; manual vs jax.grad where the maths is ---
# --- the same (depth 1, identity, half_squared_error), and mse, where it is only close ----------
def test_determinism_every_entry_point_repeats_bit_for_bit():
    params, X, y, loss = base_problem("ce")
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, loss)
    for fn in (lambda: mj.manual_grads(params, X, y, loss),
               lambda: mj.manual_grads(params, X, y, loss, fused=False),
               lambda: mj.autodiff_grads(params, X, y, loss),
               lambda: mj.backward_deltas(params, X, y, loss),
               lambda: step(params, opt.init(params), X, y)[:2],
               lambda: mj.init_mlp(jax.random.key(3), [3, 5, 2])):
        assert bit_identical(fn(), fn())



def _depth1_identity(rng, n, d, k, dtype):
    params = (mj.Dense(jnp.asarray(rng.standard_normal((d, k)), dtype),
                       jnp.asarray(rng.standard_normal(k), dtype), "identity"),)
    return params, rng.standard_normal((n, d)), rng.standard_normal((n, k))


def _assert_dW_within_summation_bound(params, X, Y, manual, auto) -> None:
    """δ and db bit for bit; dW within N eps Σ_p |x_pi δ_pj|, the bound for one dot product
    summed in two orders (with or without fused multiply-adds)."""
    dtype = params[0].W.dtype
    eps, n = float(jnp.finfo(dtype).eps), X.shape[0]
    deltas = np.asarray(mj.backward_deltas(params, X, Y, "half_squared_error")[0], F64)
    terms = np.abs(np.asarray(jnp.asarray(X).astype(dtype), F64)).T @ np.abs(deltas)
    assert bit_identical(manual[0].b, auto[0].b)
    dW = np.abs(np.asarray(manual[0].W, F64) - np.asarray(auto[0].W, F64))
    assert np.all(dW <= n * eps * terms)


@settings(max_examples=6)  # each example compiles two small programs
@given(n=st.integers(1, 12), d=st.integers(1, 8), k=st.integers(1, 8),
       dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 2**16))
def test_determinism_manual_vs_autodiff_where_the_maths_is_identical(n, d, k, dtype, seed):
    """Depth 1, identity output, half_squared_error, through the public (compiled) functions.

    The maths is the same: manual δ = (1/N)(A − Y); jax.grad forms (0.5 · 1/N) · (2 (A − Y)),
    the same number (scalings by powers of two are exact), and db = Σ_rows δ is the same
    reduction: db is bit for bit.  dW = Xᵀ δ is one dot product per entry, but the two sides
    hand XLA different layouts (dense_backward materialises Aᵀ behind an
    optimization_barrier, jax.grad contracts over rows), so the N products are summed in
    another order.  Measured (150 random shapes each, float32 and float64): at most
    1.6 eps Σ|x δ|, i.e. up to 0.5 N ulp of the leaf's largest entry and a few ulp of an entry
    that is small through cancellation.  (Before that layout change the compiled dots were
    the same and dW was bit for bit too; it is the dot's summation order, not the maths.)
    Strongest statement that holds: db identical, dW within N eps Σ|x δ|.  (Op by op, without
    jit, the same holds: measured, not repeated here for time.)"""
    params, X, Y = _depth1_identity(np.random.default_rng(seed), n, d, k, dtype)
    manual = mj.manual_grads(params, X, Y, "half_squared_error")
    auto = mj.autodiff_grads(params, X, Y, "half_squared_error")
    _assert_dW_within_summation_bound(params, X, Y, manual, auto)


def test_determinism_mse_is_only_close():
    """The contrast: "mse" puts its 2/K elsewhere than jax.grad (2·r/K · (A − Y) vs
    (r · 1/K) · 2(A − Y)), with a rounding of its own: not bit-identical (δ differs), but
    within 1e-15 of the leaf's largest entry."""
    rng = np.random.default_rng(1)
    differed = False
    for n, d, k in [(11, 11, 14), (6, 8, 11)]:
        params, X, Y = _depth1_identity(rng, n, d, k, F64)
        manual, auto = mj.manual_grads(params, X, Y, "mse"), mj.autodiff_grads(params, X, Y, "mse")
        for m, a in zip(np_leaves(manual), np_leaves(auto), strict=True):
            differed |= not np.array_equal(m, a)
            assert np.max(np.abs(m - a)) <= 1e-15 * np.max(np.abs(a))
    assert differed

