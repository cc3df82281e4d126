"""Tests for mlds_jax.training: the compiled train step, ``fit`` and ``evaluate``.

Every reference here is computed independently in the test: the notes' update
W ← W − α ∂L/∂W from ``mj.manual_grads`` / ``mj.autodiff_grads``, a hand-rolled minibatch loop
over the same permutations ``fit`` draws, and numpy formulas for accuracy, losses and R².

The suite runs with x64 and JAX's strict dtype promotion (see conftest.py).  optax's adam
mixes a Python float with its int32 step count in its bias correction (``1 - b1**count``),
which strict promotion rejects, so the adam tests run under
``jax.numpy_dtype_promotion("standard")``; the library's own code runs strict everywhere else.

The last sections: training's own bad arguments (optimizer objects and state, callbacks), a
diverging learning rate, and determinism (bit-identical fits, one compilation per fit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    F32,
    OUTPUT_LOSS_PAIRS,
    base_problem,
    bit_identical,
    compilations,
    grid_sizes,
    make_problem,
    tree_is_finite,
)

import mlds_jax as mj
from mlds_jax.training import shuffle_order

F64 = jnp.float64
#: Two float64 computations of the same quantity that differ only in association order
#: (a jit-fused step vs. eager grads, a permuted row sum): a few ulp; this is the suite's
#: float64 rule from helpers.py.
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


# --- small helpers ----------------------------------------------------------------------------
def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_bit_identical(a, b) -> None:
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype
        assert np.array_equal(x, y)


def assert_close(a, b, **tol) -> None:
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_close(a, b, **(tol or TIGHT))


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(x)) for x in _leaves(tree))


def sgd_by_hand(params, grads, lr: float):
    """The notes' rule W ← W − α ∂L/∂W, b ← b − α ∂L/∂b, leaf by leaf."""
    return jax.tree_util.tree_map(lambda w, g: w - lr * g, params, grads)


def np_forward(params, X) -> np.ndarray:
    """Ŷ in numpy from the definitions (independent of mlds_jax's forward)."""
    acts = {
        "identity": lambda Z: Z,
        "tanh": np.tanh,
        "relu": lambda Z: np.maximum(Z, 0.0),
        "sigmoid": lambda Z: 1.0 / (1.0 + np.exp(-Z)),
        "softmax": lambda Z: np.exp(Z - Z.max(1, keepdims=True))
        / np.exp(Z - Z.max(1, keepdims=True)).sum(1, keepdims=True),
    }
    A = np.asarray(X, np.float64)
    for layer in params:
        A = acts[layer.activation](A @ np.asarray(layer.W) + np.asarray(layer.b)[None, :])
    return A


def history_without_time(history) -> dict:
    return {k: v for k, v in history.items() if k != "time"}


def hand_rolled_fit(params, X, Y, loss, optimizer, *, epochs, batch_size, key,
                    validation_data=None, grads="manual", n_keys=None, step=None):
    """What ``fit`` documents, written as a plain Python loop over ``make_train_step``.

    The shuffles are the ones fit draws: ``mlds_jax.training.shuffle_order(key, n, e)``
    (independent of fit's epoch count; ``n_keys`` is kept for the callers' readability); the
    last partial batch is used.  Returns the params after every epoch (index 0 = initial),
    per-epoch metrics as fit records them (size-weighted means of the pre-update minibatch
    metrics) and every minibatch loss.  Runs without host checks, so it keeps going (and
    shows) where the parameters turn non-finite.
    """
    if loss == "cross_entropy" and Y.ndim == 1:
        Y = jax.nn.one_hot(Y, params[-1].W.shape[1], dtype=params[-1].W.dtype)
    if step is None:
        step = mj.make_train_step(optimizer, loss, grads, check_inputs=False)
    state = optimizer.init(params)
    n = X.shape[0]
    trajectory, history, batch_losses = [params], [], []
    for e in range(epochs):
        perm = shuffle_order(key, n, e)
        sums: dict[str, float] = {}
        losses = []
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            params, state, m = step(params, state, X[idx], Y[idx])
            losses.append(float(m["loss"]))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        metrics = {k: v / n for k, v in sums.items()}
        if validation_data is not None and all_finite(params):
            for k, v in mj.evaluate(params, *validation_data, loss).items():
                if k != "r2":
                    metrics["val_" + k] = v
        trajectory.append(params)
        history.append(metrics)
        batch_losses.append(losses)
    return trajectory, history, batch_losses


def _classification(key, n=10, sizes=(3, 5, 3), dtype=F64):
    params, X, y = make_problem(key, list(sizes), "tanh", "softmax", "cross_entropy", n, dtype)
    return params, X, y


def _linear_regression(key, n=12, scale=1.0):
    kp, kx, ky = jax.random.split(key, 3)
    params = mj.init_mlp(kp, [2, 1], output="identity", dtype=F64)
    X = jax.random.normal(kx, (n, 2), F64)
    Y = scale * jax.random.normal(ky, (n, 1), F64)
    return params, X, Y


# === make_train_step ============================================================================
@pytest.mark.parametrize(
    ("output", "loss", "grads"),
    [(o, lo, "manual") for o, lo in OUTPUT_LOSS_PAIRS]
    + [("identity", "mse", "autodiff"), ("softmax", "cross_entropy", "autodiff"),
       ("sigmoid", "binary_cross_entropy", "autodiff")],
)
def test_sgd_step_is_the_notes_update(key, output, loss, grads):
    """One optax.sgd(α) step == W − α ∂L/∂W by hand, from manual_grads and from jax.grad."""
    params, X, Y = make_problem(key, grid_sizes(2), "tanh", output, loss, n=6)
    lr = 0.37
    opt = optax.sgd(lr)
    step = mj.make_train_step(opt, loss, grads=grads)
    new, _, metrics = step(params, opt.init(params), X, Y)

    @jax.jit  # the references in one compiled call (eager op-by-op is slower here)
    def references(p, new):
        return (mj.manual_grads(p, X, Y, loss), mj.autodiff_grads(p, X, Y, loss),
                mj.loss(p, X, Y, loss), mj.loss(new, X, Y, loss))

    g_manual, g_auto, before, after = references(params, new)
    for g in (g_manual, g_auto):
        by_hand = sgd_by_hand(params, g, lr)
        chex.assert_trees_all_equal_structs(new, by_hand)  # activations kept
        # exact up to the last bit of the gradient (two compiled graphs: <= a few ulp)
        chex.assert_trees_all_close(new, by_hand, rtol=0, atol=1e-12)

    # metrics["loss"] is the loss *before* the update: the value whose gradient was applied
    np.testing.assert_allclose(float(metrics["loss"]), float(before), rtol=1e-12)
    assert not math.isclose(float(metrics["loss"]), float(after))
    if loss == "cross_entropy":  # accuracy of the pre-update network, from numpy
        A = np_forward(params, X)
        expected = np.mean(np.argmax(A, 1) == np.asarray(Y))
        np.testing.assert_allclose(float(metrics["accuracy"]), expected, rtol=1e-12)
    else:
        assert ("accuracy" in metrics) == (loss == "binary_cross_entropy")


@pytest.mark.parametrize("fused", [True, False])
def test_manual_and_autodiff_steps_agree_over_several_steps(key, fused):
    params, X, y = _classification(key, n=9, sizes=(3, 5, 4, 3))
    opt = optax.sgd(0.2, momentum=0.9)
    runs = {}
    for grads in ("manual", "autodiff"):
        step = mj.make_train_step(opt, "cross_entropy", grads, fused=fused)
        p, s = params, opt.init(params)
        losses = []
        for _ in range(4):
            p, s, m = step(p, s, X, y)
            losses.append(float(m["loss"]))
        runs[grads] = (p, s, losses)
    assert_close(runs["manual"][0], runs["autodiff"][0])
    assert_close(runs["manual"][1], runs["autodiff"][1])
    np.testing.assert_allclose(runs["manual"][2], runs["autodiff"][2], rtol=1e-12)


def test_momentum_step_matches_heavy_ball_by_hand(key):
    """optax.sgd(α, momentum=β): v ← g + β v, W ← W − α v, with g from manual_grads."""
    params, X, Y = make_problem(key, grid_sizes(3), "sigmoid", "identity", "mse", n=7)
    lr, beta = 0.1, 0.9
    opt = optax.sgd(lr, momentum=beta)
    step = mj.make_train_step(opt, "mse")
    p, s = params, opt.init(params)
    q, v = params, None
    for _ in range(3):
        p, s, _ = step(p, s, X, Y)
        g = mj.manual_grads(q, X, Y, "mse")
        v = g if v is None else jax.tree_util.tree_map(lambda gi, vi: gi + beta * vi, g, v)
        q = sgd_by_hand(q, v, lr)
    assert_close(p, q)


def test_adam_step_matches_optax_applied_to_manual_grads(key):
    params, X, Y = make_problem(key, grid_sizes(2), "tanh", "sigmoid", "binary_cross_entropy",
                                n=8)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam, see the module docstring
        opt = optax.adam(0.05)
        step = mj.make_train_step(opt, "binary_cross_entropy")

        @jax.jit  # the reference: optax's adam fed with the hand-derived gradients
        def by_hand(q, t):
            g = mj.manual_grads(q, X, Y, "binary_cross_entropy")
            updates, t = opt.update(g, t, q)
            return optax.apply_updates(q, updates), t

        p, s = params, opt.init(params)
        q, t = params, opt.init(params)
        losses = []
        for _ in range(5):
            p, s, m = step(p, s, X, Y)
            losses.append(float(m["loss"]))
            q, t = by_hand(q, t)
    assert_close(p, q)
    assert losses[-1] < losses[0]


def test_step_compiles_once_per_shape(key):
    params, X, y = _classification(key, n=10)
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, "cross_entropy")
    assert step.trace_count == 0
    p, s = params, opt.init(params)
    for _ in range(4):
        p, s, _ = step(p, s, X, y)
    assert step.trace_count == 1
    # same shapes in other host dtypes are normalised before the compiled call: no retrace
    p, s, _ = step(p, s, np.asarray(X, np.float32), np.asarray(y, np.int64))
    assert step.trace_count == 1
    # a new batch shape compiles once more, and then both shapes are cached
    for _ in range(3):
        p, s, _ = step(p, s, X[:7], y[:7])
    assert step.trace_count == 2
    p, s, _ = step(p, s, X, y)
    assert step.trace_count == 2
    # .jitted skips the checks; with the prepared (one-hot) targets it reuses the cache
    p, s, _ = step.jitted(p, s, X, jax.nn.one_hot(y, 3, dtype=F64))
    assert step.trace_count == 2


def test_step_traces_once_per_shape_chex(key):
    """The optimizer's update only runs while tracing: chex.assert_max_traces counts traces."""
    chex.clear_trace_counter()
    base = optax.sgd(0.1)

    def update(updates, state, params=None):
        return base.update(updates, state, params)

    opt = optax.GradientTransformation(base.init, chex.assert_max_traces(update, n=1))
    params, X, y = _classification(key, n=10)
    step = mj.make_train_step(opt, "cross_entropy")
    p, s = params, opt.init(params)
    for _ in range(5):
        p, s, _ = step(p, s, X, y)
    with pytest.raises(AssertionError, match="traced > 1 times"):
        step(p, s, X[:4], y[:4])  # a second shape is a second trace
    chex.clear_trace_counter()


def test_make_train_step_rejects_bad_arguments():
    with pytest.raises(TypeError, match="optax"):
        mj.make_train_step("sgd", "mse")
    with pytest.raises(TypeError, match="optax"):
        mj.make_train_step(optax.sgd, "mse")  # the factory, not an optimizer
    with pytest.raises(TypeError, match="optax"):
        mj.make_train_step(None, "mse")
    with pytest.raises(ValueError, match="grads"):
        mj.make_train_step(optax.sgd(0.1), "mse", grads="numeric")
    with pytest.raises(ValueError, match="unknown loss"):
        mj.make_train_step(optax.sgd(0.1), "hinge")


def test_step_check_inputs(key):
    params, X, y = _classification(key, n=6)
    opt = optax.sgd(0.1)
    state = opt.init(params)
    step = mj.make_train_step(opt, "cross_entropy")
    bad = np.asarray(y).copy()
    bad[4] = 3  # the network has 3 outputs
    with pytest.raises(ValueError, match=r"\[0, 3\).*Y\[4\] = 3"):
        step(params, state, X, bad)
    with pytest.raises(ValueError, match="not an integer"):
        step(params, state, X, np.asarray(y, np.float64) + 0.5)
    X_nan = np.asarray(X).copy()
    X_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains .*index \(2, 1\)"):
        step(params, state, X_nan, y)
    with pytest.raises(ValueError, match="features"):
        step(params, state, X[:, :2], y)
    with pytest.raises(ValueError, match="rows"):
        step(params, state, X, y[:5])
    mse_step = mj.make_train_step(opt, "binary_cross_entropy")  # softmax output: wrong pair
    with pytest.raises(ValueError, match="output activation"):
        mse_step(params, state, X, jnp.ones((6, 3), F64) / 2)
    assert step.trace_count == 0  # nothing reached the compiler

    # check_inputs=False: no host checks, a NaN goes straight through
    fast = mj.make_train_step(opt, "cross_entropy", check_inputs=False)
    _, _, m = fast(params, state, jnp.asarray(X_nan), jax.nn.one_hot(y, 3, dtype=F64))
    assert np.isnan(float(m["loss"]))


# === fit ========================================================================================
# One reference run shared by several tests (every fit call compiles its epoch function):
# classification with validation data, N = 10 rows in batches of 4 (4, 4, then a partial 2),
# sgd with momentum (so the optimizer state threads through the scan and the partial batch),
# progress=True with stderr a non-terminal, an on_epoch_end recorder and numpy-int arguments.
REF_EPOCHS, REF_BATCH = 3, 4


@pytest.fixture(scope="module")
def ref_run():
    params, X, y = _classification(jax.random.key(0), n=10)
    val = (X[:5] + 0.1, y[:5])
    opt = optax.sgd(0.2, momentum=0.9)
    key = jax.random.key(3)
    before = [x.copy() for x in _leaves(params)]
    calls = []
    out, err = io.StringIO(), io.StringIO()  # not terminals, like pytest's capture
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fitted, history = mj.fit(
            params, np.asarray(X), np.asarray(y), optimizer=opt, epochs=np.int64(REF_EPOCHS),
            batch_size=np.int32(REF_BATCH), key=key, validation_data=val, progress=True,
            on_epoch_end=lambda e, m: calls.append((e, m)))
    return {"params": params, "X": X, "y": y, "val": val, "opt": opt, "key": key,
            "fitted": fitted, "history": history, "calls": calls, "before": before,
            "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_fit_history_keys_classification_with_validation(ref_run):
    history = ref_run["history"]
    assert isinstance(history, mj.History) and isinstance(history, dict)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "time"}
    for k, values in history.items():
        assert isinstance(values, list) and len(values) == REF_EPOCHS, k
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), k
    assert all(t >= 0 for t in history["time"])
    assert all(0 <= a <= 1 for a in history["accuracy"] + history["val_accuracy"])
    assert history.stop_reason == "completed"
    assert history.best_epoch is None


def test_fit_history_keys_binary_without_validation(key):
    params, X, Y = make_problem(key, [3, 4, 2], "tanh", "sigmoid", "binary_cross_entropy",
                                n=7, targets="hard")
    _, history = mj.fit(params, X, Y, optimizer=optax.sgd(0.1), epochs=2, batch_size=3,
                        progress=False)
    # two labels: exact-match "accuracy" and the fraction of right labels
    assert set(history) == {"loss", "accuracy", "label_accuracy", "time"}
    assert all(len(v) == 2 for v in history.values())
    assert all(a <= b for a, b in zip(history["accuracy"], history["label_accuracy"], strict=True))


def test_fit_progress_in_non_tty_prints_nothing(ref_run):
    assert ref_run["stderr"] == ""
    assert ref_run["stdout"] == ""


def test_fit_on_epoch_end_called_once_per_epoch_with_metrics(ref_run):
    calls, history = ref_run["calls"], ref_run["history"]
    assert [e for e, _ in calls] == list(range(REF_EPOCHS))
    for e, metrics in calls:
        assert metrics == {k: v[e] for k, v in history.items()}
        assert all(isinstance(v, float) for v in metrics.values())


def test_fit_does_not_touch_its_inputs(ref_run):
    for a, b in zip(ref_run["before"], _leaves(ref_run["params"]), strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(_leaves(ref_run["fitted"])[0], ref_run["before"][0])


def test_fit_uses_last_partial_batch_like_a_hand_rolled_loop(ref_run):
    """fit == a Python loop over make_train_step on the same permutations, batches 4, 4, 2."""
    r = ref_run
    params, X, y, opt, k = r["params"], r["X"], r["y"], r["opt"], r["key"]
    step = mj.make_train_step(opt, "cross_entropy", check_inputs=False)
    trajectory, ref, _ = hand_rolled_fit(params, X, y, "cross_entropy", opt,
                                         epochs=REF_EPOCHS, batch_size=REF_BATCH, key=k,
                                         validation_data=r["val"], step=step)
    assert_close(r["fitted"], trajectory[-1])
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(r["history"][name], [m[name] for m in ref], rtol=1e-10,
                                   err_msg=name)

    # epoch 1 spelled out: batches perm[0:4], perm[4:8], then the partial perm[8:10]
    perm = shuffle_order(k, 10, 0)
    Y = jax.nn.one_hot(y, 3, dtype=F64)
    p, s = params, opt.init(params)
    for idx in (perm[:4], perm[4:8]):
        p, s, _ = step(p, s, X[idx], Y[idx])
    assert not np.allclose(np.asarray(p[0].W), np.asarray(trajectory[1][0].W))  # not yet
    p, s, _ = step(p, s, X[perm[8:]], Y[perm[8:]])
    assert_close(p, trajectory[1])


def test_fit_same_key_is_bit_identical_different_key_differs(ref_run):
    r = ref_run

    def run(k):
        return mj.fit(r["params"], r["X"], r["y"], optimizer=r["opt"], epochs=REF_EPOCHS,
                      batch_size=REF_BATCH, key=k, validation_data=r["val"], progress=False)

    p2, h2 = run(jax.random.key(3))  # the reference run's key
    assert_bit_identical(r["fitted"], p2)
    assert history_without_time(r["history"]) == history_without_time(h2)  # every float ==

    p3, h3 = run(jax.random.key(4))
    assert any(not np.array_equal(a, b)
               for a, b in zip(_leaves(r["fitted"]), _leaves(p3), strict=True))
    assert r["history"]["loss"] != h3["loss"]


def test_fit_manual_and_autodiff_agree(ref_run):
    r = ref_run
    fitted, history = mj.fit(r["params"], r["X"], r["y"], optimizer=r["opt"], epochs=REF_EPOCHS,
                             batch_size=REF_BATCH, key=r["key"], validation_data=r["val"],
                             grads="autodiff", progress=False)
    assert_close(r["fitted"], fitted)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(r["history"][name], history[name], rtol=1e-10)


def test_fit_batch_larger_than_data_is_one_full_gradient_step(key):
    params, X, Y = make_problem(key, [3, 4, 2], "tanh", "identity", "mse", n=5)
    lr = 0.3
    fitted, history = mj.fit(params, X, Y, optimizer=optax.sgd(lr), epochs=1, batch_size=32,
                             key=jax.random.key(1), progress=False)
    by_hand = sgd_by_hand(params, mj.manual_grads(params, X, Y, "mse"), lr)
    assert_close(fitted, by_hand)  # only the row order of the sums differs
    np.testing.assert_allclose(history["loss"][0], float(mj.loss(params, X, Y, "mse")),
                               rtol=1e-12)
    assert set(history) == {"loss", "r2", "time"}  # regression: r2, no accuracy


def _overshooting_problem():
    """Linear regression whose validation targets are half the training ones.

    Gradient descent moves W from ~0 to w*; the validation loss is smallest near w*/2 and
    rises again afterwards, so early stopping has a real best epoch in the middle.
    """
    params = mj.init_mlp(jax.random.key(0), [3, 1], output="identity", init="normal",
                         dtype=F64)
    w = jnp.array([[1.0], [-2.0], [0.5]], F64)
    X = jax.random.normal(jax.random.key(1), (32, 3), F64)
    Xv = jax.random.normal(jax.random.key(2), (16, 3), F64)
    return params, X, X @ w, Xv, 0.5 * (Xv @ w)


def test_early_stopping_restores_best_params():
    params, X, Y, Xv, Yv = _overshooting_problem()
    calls = []

    def run(early_stopping, **kw):
        return mj.fit(params, X, Y, optimizer=optax.sgd(0.02), epochs=100, batch_size=8,
                      key=jax.random.key(3), validation_data=(Xv, Yv),
                      early_stopping=early_stopping, progress=False, **kw)

    fitted, history = run(3, on_epoch_end=lambda e, m: calls.append(e))
    assert set(history) == {"loss", "r2", "val_loss", "val_r2", "time"}  # regression
    val = history["val_loss"]
    assert history.stop_reason == "early_stopping"
    best = history.best_epoch
    assert best == int(np.argmin(val)) and best > 0
    assert len(val) == best + 3 + 1 < 100  # stopped after 3 epochs without improvement
    assert all(v >= val[best] for v in val[best + 1:])
    assert calls == list(range(len(val)))
    # the returned params are the best epoch's, not the last ones
    score = mj.evaluate(fitted, Xv, Yv)["loss"]
    np.testing.assert_allclose(score, val[best], rtol=1e-10)
    assert score < val[-1]

    # the same as an EarlyStopping object; restore_best=False returns the last params
    last, history2 = run(mj.EarlyStopping(patience=3, restore_best=False))
    assert history_without_time(history2) == history_without_time(history)
    assert (history2.stop_reason, history2.best_epoch) == ("early_stopping", best)
    np.testing.assert_allclose(mj.evaluate(last, Xv, Yv)["loss"], val[-1], rtol=1e-10)


def test_early_stopping_arguments(key):
    params, X, Y = _linear_regression(key)
    with pytest.raises(ValueError, match="validation_data"):
        mj.fit(params, X, Y, early_stopping=2, progress=False)
    with pytest.raises(ValueError, match="validation_data"):
        mj.fit(params, X, Y, early_stopping=mj.EarlyStopping(), progress=False)
    with pytest.raises(TypeError, match="early_stopping"):
        mj.fit(params, X, Y, early_stopping=True, progress=False)
    with pytest.raises(TypeError, match="early_stopping"):
        mj.fit(params, X, Y, early_stopping="val_loss", progress=False)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="patience"):
            mj.EarlyStopping(patience=bad)
    with pytest.raises(ValueError, match="min_delta"):
        mj.EarlyStopping(min_delta=-1.0)
    with pytest.raises(ValueError, match="monitor"):
        mj.EarlyStopping(monitor="precision")
    with pytest.raises(ValueError, match="reference"):
        mj.EarlyStopping(reference="first")
    # a metric this loss does not record (regression: no accuracy)
    with pytest.raises(ValueError, match=r"monitors accuracy, which a mse run does not record"):
        mj.fit(params, X, Y, early_stopping=mj.EarlyStopping(monitor="accuracy"), progress=False)


def test_early_stopping_on_a_score_and_with_the_running_best_reference(key):
    """monitor="val_accuracy" stops when the score stops rising (higher is better); the
    "best" reference (scikit-learn's rule) compares with the best value so far, so it never
    runs longer than the "last_improvement" one (Keras's), and on a steadily, slowly
    improving loss it stops where a hand count of scikit-learn's rule says."""
    params, X, y = _classification(key, n=30)
    kw = dict(optimizer=optax.sgd(0.05), epochs=60, batch_size=30, key=jax.random.key(1),
              progress=False)
    _, h = mj.fit(params, X, y, **kw)  # full batch: a deterministic, steady descent
    losses = h["loss"]
    for tol in (1e-3, 3e-3):
        # scikit-learn's rule by hand: count epochs whose loss is not below best − tol,
        # best = the running minimum; stop when the count reaches the patience (3)
        best, count, stop_at = math.inf, 0, None
        for e, v in enumerate(losses):
            count = count + 1 if v > best - tol else 0
            best = min(best, v)
            if count >= 3:
                stop_at = e
                break
        es = mj.EarlyStopping(patience=3, min_delta=tol, monitor="loss", reference="best",
                              restore_best=False)
        _, hb = mj.fit(params, X, y, early_stopping=es, **kw)
        _, hk = mj.fit(params, X, y, early_stopping=dataclasses.replace(
            es, reference="last_improvement"), **kw)
        assert len(hb["loss"]) == (60 if stop_at is None else stop_at + 1)
        assert len(hb["loss"]) <= len(hk["loss"])
    # a score: higher is better, and the best epoch's params come back
    es = mj.EarlyStopping(patience=2, monitor="val_accuracy")
    fitted, h = mj.fit(params, X, y, early_stopping=es, validation_data=(X[:10], y[:10]), **kw)
    best = int(np.argmax(h["val_accuracy"]))  # the first epoch reaching the maximum
    assert h.best_epoch == best
    again, _ = mj.fit(params, X, y, **{**kw, "epochs": best + 1})
    assert_bit_identical(fitted, again)


def test_divergence_stops_with_warning_and_last_finite_params(key):
    """sgd(1e6) on big mse targets overflows after some epochs: stop, warn, keep the last
    finite parameters (those after the last epoch whose loss and parameters were finite)."""
    params, X, Y = _linear_regression(key, n=8, scale=1e3)
    opt, k, epochs = optax.sgd(1e6), jax.random.key(3), 40
    with pytest.warns(mj.TrainingDivergedWarning, match="diverged in epoch"):
        fitted, history = mj.fit(params, X, Y, optimizer=opt, epochs=epochs, batch_size=4,
                                 key=k, progress=False)
    assert history.stop_reason == "diverged"
    finite_epochs = len(history["loss"])
    assert 1 <= finite_epochs < epochs
    assert all(math.isfinite(v) for v in history["loss"])
    assert all_finite(fitted)

    # replay with fit's own shuffles (shuffle_order) one epoch past the last one
    after, _, losses = hand_rolled_fit(params, X, Y, "mse", opt, epochs=finite_epochs + 1,
                                       batch_size=4, key=k, n_keys=epochs)
    assert_close(fitted, after[finite_epochs])  # the params after the last finite epoch
    assert all(map(math.isfinite, losses[finite_epochs - 1]))
    # ... and the next epoch really is the non-finite one
    assert not (all(map(math.isfinite, losses[finite_epochs])) and all_finite(after[-1]))


def test_divergence_in_first_epoch_returns_initial_params(key):
    params, X, Y = _linear_regression(key, n=8, scale=1e3)
    # batch 2: the first step throws W to ~1e203, the second one's update overflows
    with pytest.warns(mj.TrainingDivergedWarning, match="epoch 1"):
        fitted, history = mj.fit(params, X, Y, optimizer=optax.sgd(1e200), epochs=3,
                                 batch_size=2, progress=False)
    assert history.stop_reason == "diverged"
    assert history.get("loss", []) == []
    assert_bit_identical(fitted, params)


@pytest.mark.slow
def test_fit_digits_reaches_95_percent():
    """The README's default: digits, 64-128-64-10 relu/softmax, adam 1e-3, manual gradients."""
    ds = mj.load_dataset("digits")
    k_init, k_fit = jax.random.split(jax.random.key(0))
    params = mj.init_mlp(k_init, [64, 128, 64, 10], hidden="relu", output="softmax",
                         dtype=jnp.float32)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam, see the module docstring
        fitted, history = mj.fit(params, ds.X_train, ds.y_train, optimizer=optax.adam(1e-3),
                                 epochs=20, batch_size=32, key=k_fit, grads="manual",
                                 progress=False)
    scores = mj.evaluate(fitted, ds.X_test, ds.y_test)
    assert scores["accuracy"] >= 0.95, scores
    assert history["loss"][-1] < history["loss"][0]
    assert fitted[0].W.dtype == jnp.float32


# === bad input to fit / evaluate ================================================================
def _regression_problem(key):
    return make_problem(key, [3, 4, 2], "tanh", "identity", "mse", n=6)


def test_nonfinite_data_names_the_array_and_index(key):
    params, X, Y = _regression_problem(key)
    X_bad = np.asarray(X).copy()
    X_bad[3, 1] = np.nan
    Y_bad = np.asarray(Y).copy()
    Y_bad[2, 0] = np.inf
    for run in (lambda X, Y: mj.fit(params, X, Y, progress=False),
                lambda X, Y: mj.evaluate(params, X, Y)):
        with pytest.raises(ValueError, match=r"^X contains 1 non-finite.*index \(3, 1\)"):
            run(X_bad, Y)
        with pytest.raises(ValueError, match=r"^Y contains 1 non-finite.*inf.*index \(2, 0\)"):
            run(X, Y_bad)
    with pytest.raises(ValueError, match=r"^validation X contains .*index \(3, 1\)"):
        mj.fit(params, X, Y, validation_data=(X_bad, Y), progress=False)
    with pytest.raises(ValueError, match=r"^validation Y contains .*index \(2, 0\)"):
        mj.fit(params, X, Y, validation_data=(X, Y_bad), progress=False)


def test_empty_data_is_rejected(key):
    params, X, Y = _regression_problem(key)
    with pytest.raises(ValueError, match="empty"):
        mj.fit(params, X[:0], Y[:0], progress=False)
    with pytest.raises(ValueError, match="empty"):
        mj.evaluate(params, X[:0], Y[:0])
    with pytest.raises(ValueError, match="validation X is empty"):
        mj.fit(params, X, Y, validation_data=(X[:0], Y[:0]), progress=False)


def test_an_int_seed_is_the_key_of_that_seed(key):
    """key=7 is jax.random.key(7) (built on the host, bit-equal) and key=None is seed 0."""
    params, X, y = _classification(key, n=10)
    kw = dict(optimizer=optax.sgd(0.1), epochs=2, batch_size=4, progress=False)
    for seed in (0, 7, 2**32 - 1):
        by_seed, _ = mj.fit(params, X, y, key=seed, **kw)
        by_key, _ = mj.fit(params, X, y, key=jax.random.key(seed), **kw)
        assert_bit_identical(by_seed, by_key)
    default, _ = mj.fit(params, X, y, **kw)
    assert_bit_identical(default, mj.fit(params, X, y, key=0, **kw)[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"batch_size": -3}, ValueError, "batch_size must be >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"batch_size": "4"}, TypeError, "batch_size must be an int"),
        ({"batch_size": True}, TypeError, "batch_size must be an int"),
        ({"epochs": 0}, ValueError, "epochs must be >= 1"),
        ({"epochs": 1.0}, TypeError, "epochs must be an int"),
        ({"key": True}, TypeError, "key must be a jax.random key"),
        ({"key": "seed"}, TypeError, "key must be a jax.random key"),
        ({"grads": "numeric"}, ValueError, "grads"),
        ({"optimizer": "adam"}, TypeError, "optax"),
        ({"loss": "hinge"}, ValueError, "unknown loss"),
        ({"loss": "cross_entropy"}, ValueError, "output activation"),
        ({"validation_data": [1, 2, 3]}, TypeError, "validation_data"),
    ],
)
def test_fit_rejects_bad_arguments(key, kwargs, error, match):
    params, X, Y = _regression_problem(key)
    with pytest.raises(error, match=match):
        mj.fit(params, X, Y, progress=False, **{"epochs": 1, **kwargs})


def test_targets_that_do_not_fit_the_loss(key):
    params, X, Y = make_problem(key, [3, 4, 1], "tanh", "sigmoid", "binary_cross_entropy", n=6)
    Y3 = jnp.concatenate([Y, Y, Y], axis=1)  # 3 columns for 1 sigmoid output
    with pytest.raises(ValueError, match="3 columns"):
        mj.fit(params, X, Y3, progress=False)
    with pytest.raises(ValueError, match="3 columns"):
        mj.evaluate(params, X, Y3)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        mj.fit(params, X, 2 * Y + 1, progress=False)
    with pytest.raises(ValueError, match="rows"):
        mj.fit(params, X, Y[:4], progress=False)


def test_validation_data_with_other_feature_count(key):
    params, X, Y = _regression_problem(key)
    with pytest.raises(ValueError, match="validation X has 2 features"):
        mj.fit(params, X, Y, validation_data=(X[:, :2], Y), progress=False)
    with pytest.raises(ValueError, match="validation Y"):
        mj.fit(params, X, Y, validation_data=(X, Y[:, :1]), progress=False)


# === evaluate ===================================================================================
def test_evaluate_classification_against_numpy(key):
    params, X, y = make_problem(key, [3, 6, 4], "tanh", "softmax", "cross_entropy", n=40)
    scores = mj.evaluate(params, X, y)  # default loss from the softmax output
    assert set(scores) == {"loss", "accuracy"}
    assert all(isinstance(v, float) for v in scores.values())
    A, labels = np_forward(params, X), np.asarray(y)
    np.testing.assert_allclose(scores["accuracy"], np.mean(np.argmax(A, 1) == labels),
                               rtol=1e-12)
    np.testing.assert_allclose(scores["loss"], -np.mean(np.log(A[np.arange(40), labels])),
                               rtol=1e-10)
    # one-hot rows give the same scores as integer labels
    onehot = np.eye(4)[labels]
    assert mj.evaluate(params, X, onehot, "cross_entropy") == pytest.approx(scores, rel=1e-12)


def test_evaluate_binary_against_numpy(key):
    params, X, Y = make_problem(key, [3, 5, 2], "relu", "sigmoid", "binary_cross_entropy",
                                n=30, targets="hard")
    scores = mj.evaluate(params, X, Y)
    assert set(scores) == {"loss", "accuracy", "label_accuracy"}
    A, Yn = np_forward(params, X), np.asarray(Y)
    right = (A > 0.5) == (Yn > 0.5)
    # "accuracy" is exact match over the labels of a row (scikit-learn's score)
    np.testing.assert_allclose(scores["accuracy"], np.mean(right.all(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(scores["label_accuracy"], np.mean(right), rtol=1e-12)
    bce = -np.sum(Yn * np.log(A) + (1 - Yn) * np.log(1 - A)) / 30
    np.testing.assert_allclose(scores["loss"], bce, rtol=1e-10)


def test_evaluate_regression_r2_against_numpy(key):
    params, X, _ = make_problem(key, [3, 5, 1], "tanh", "identity", "mse", n=50)
    A = np_forward(params, X)
    noise = np.asarray(jax.random.normal(jax.random.key(5), (50, 1), F64))
    Y = 2.0 * A + 0.3 * noise  # correlated, so R² is neither 0 nor 1
    scores = mj.evaluate(params, X, Y)
    assert set(scores) == {"loss", "r2"}
    ss_res = np.sum((A - Y) ** 2)
    ss_tot = np.sum((Y - Y.mean()) ** 2)
    np.testing.assert_allclose(scores["r2"], 1 - ss_res / ss_tot, rtol=1e-10)
    np.testing.assert_allclose(scores["loss"], np.mean((A - Y) ** 2), rtol=1e-10)
    # a perfect fit has R² = 1; predicting the mean has R² = 0
    np.testing.assert_allclose(mj.evaluate(params, X, A)["r2"], 1.0, rtol=1e-12)
    bias_only = (params[0], mj.Dense(W=jnp.zeros_like(params[1].W),
                                     b=jnp.asarray([float(A.mean())], F64),
                                     activation="identity"))
    np.testing.assert_allclose(mj.evaluate(bias_only, X, A)["r2"], 0.0, atol=1e-12)


def test_evaluate_loss_override_and_1d_regression_targets(key):
    params, X, _ = make_problem(key, [3, 5, 1], "tanh", "identity", "mse", n=12)
    y = np.linspace(-1, 1, 12)
    a = mj.evaluate(params, X, y)  # (N,) targets for one output
    b = mj.evaluate(params, X, y.reshape(-1, 1), "mse")
    assert a == b
    half = mj.evaluate(params, X, y, "half_squared_error")
    np.testing.assert_allclose(half["loss"], a["loss"] / 2, rtol=1e-12)  # K = 1
    np.testing.assert_allclose(half["r2"], a["r2"], rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mj.evaluate(params, X, y)  # quiet


# === reuse of compiled code across fit calls ====================================================

# --- optimizers, optimizer state, fit's own arguments: rejected before training ------------------
# (the bad-input contract of test_validation.py, for the arguments only training takes)
WRONG_OPTIMIZERS = {
    "None": None,
    "a string": "sgd",
    "optax.sgd not called": optax.sgd,
    "optax.adam not called": optax.adam,
    "the init function": optax.sgd(0.1).init,
    "a learning rate": 0.1,
    "an object": object(),
}


@pytest.mark.parametrize("name", list(WRONG_OPTIMIZERS))
@pytest.mark.parametrize("entry", ["make_train_step", "fit"])
def test_bad_optimizer_objects(name, entry):
    params, X, Y, loss = base_problem("ce")
    optimizer = WRONG_OPTIMIZERS[name]
    regex = r"optimizer must be an optax\.GradientTransformation \(e\.g\. optax\.sgd\(0\.1\)\)"
    if entry == "make_train_step":
        with pytest.raises(TypeError, match=regex):
            mj.make_train_step(optimizer, loss)
    elif optimizer is None:  # fit's documented default: optax.adam(1e-3)
        pytest.skip("optimizer=None means the default adam in fit")
    else:
        with pytest.raises(TypeError, match=regex):
            mj.fit(params, X, Y, optimizer=optimizer, epochs=1, progress=False)


@pytest.mark.parametrize("state", ["None", "another optimizer's", "other params'", "a dict"])
def test_bad_optimizer_state(state, op_by_op):
    params, X, Y, loss = base_problem("ce")
    opt = optax.sgd(0.1, momentum=0.9)
    bad = {"None": None,
           "another optimizer's": optax.sgd(0.1).init(params),
           "other params'": opt.init(base_problem("ce", dtype=F32)[0][:1]),
           "a dict": {}}[state]
    step = mj.make_train_step(opt, loss)
    with pytest.raises(TypeError, match=r"opt_state does not match this step's optimizer and "
                                        r"params: pass optimizer\.init\(params\)"):
        step(params, bad, X, Y)
    step(params, opt.init(params), X, Y)  # the right state works


def test_bad_fit_callback_is_rejected_before_training(op_by_op):
    params, X, Y, loss = base_problem("mse")
    with pytest.raises(TypeError, match=r"on_epoch_end must be callable\(epoch, metrics\), "
                                        r"got str"):
        mj.fit(params, X, Y, optimizer=optax.sgd(0.1), on_epoch_end="print", progress=False)


# --- a diverging learning rate: fit stops with a warning and finite params ----------------------
@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_edge_diverging_learning_rate(grads):
    """sgd(1e6) on a float32 relu/softmax classifier: relu does not saturate, so the hidden
    pre-activations overflow in the second epoch (a tanh network only saturates: its logits
    stay finite and cross-entropy from logits stays finite).  fit stops, warns
    TrainingDivergedWarning, records stop_reason == "diverged", keeps only the finite epochs
    in its history and returns finite params (those of the last finite epoch)."""
    params, X, y = make_problem(0, [3, 4, 3], "relu", "softmax", "cross_entropy", 12,
                                jnp.float32)
    epochs = 6
    seen = []
    with pytest.warns(mj.TrainingDivergedWarning, match="training diverged in epoch 2"):
        fitted, history = mj.fit(params, X, y, optimizer=optax.sgd(1e6), epochs=epochs,
                                 batch_size=4, grads=grads, progress=False,
                                 on_epoch_end=lambda e, m: seen.append(e))
    assert history.stop_reason == "diverged"
    n_ok = len(history.get("loss", []))
    assert n_ok == 1 and seen == [0]
    assert all(math.isfinite(v) for k, vs in history.items() if k != "time" for v in vs)
    assert tree_is_finite(fitted) and fitted[0].W.dtype == F32


# --- determinism: bit-identical reruns of fit, no recompilation across epochs -------------------
@pytest.mark.parametrize(("grads", "dtype"), [("manual", F32), ("autodiff", np.float64)])
def test_determinism_fit_same_key_bit_identical(grads, dtype):
    """Same key: bit-identical params and history (every float, "time" aside), for both
    gradient sources (test_fit_same_key_is_bit_identical_different_key_differs checks the
    float64 manual case; this adds float32 manual and float64 autodiff)."""
    params, X, y, _ = base_problem("ce", n=10, dtype=dtype)

    def run():
        fitted, history = mj.fit(params, X, y, optimizer=optax.sgd(0.1, momentum=0.9),
                                 epochs=3, batch_size=4, key=jax.random.key(11), grads=grads,
                                 validation_data=(X[:4], y[:4]), progress=False)
        return fitted, {k: v for k, v in history.items() if k != "time"}

    (p1, h1), (p2, h2) = run(), run()
    assert bit_identical(p1, p2)
    assert h1 == h2 and set(h1) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_fit_compiles_its_epoch_once_across_calls(key):
    """A second fit of the same computation, with a fresh optimizer of the same kind, a new
    key, another epoch count and a data set of a few rows fewer (same row bucket, same number
    of minibatches), compiles nothing; another learning rate of a plain optax.sgd is another
    program, but an inject_hyperparams optimizer serves every learning rate with one compile
    (the sgd(0.2) call is the negative control: the counter does see compiles)."""
    params, X, y = _classification(key, n=40)
    Xv, yv = X[:12], y[:12]

    def run(opt, n=40, n_val=12, batch_size=8, epochs=2, k=0):
        return mj.fit(params, X[:n], y[:n], optimizer=opt, epochs=epochs, batch_size=batch_size,
                      key=jax.random.key(k), validation_data=(Xv[:n_val], yv[:n_val]),
                      progress=False)

    run(optax.sgd(0.1))  # warm-up: the epoch and the input checks' helpers
    run(optax.sgd(0.1), n=39, n_val=11)  # the other row counts' input-check helpers
    with compilations() as compiled:
        _, h = run(optax.sgd(0.1), epochs=3, k=5)
        run(optax.sgd(0.1), n=39, n_val=11)  # 5 batches of 8 either way; buckets 40 and 12
    assert len(h["loss"]) == 3
    assert compiled == []
    with compilations() as compiled:
        run(optax.sgd(0.2))  # the learning rate is a constant of optax.sgd's update
    assert compiled == ["jit(epochs)"]

    def injected(lr):
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9)

    run(injected(0.1))
    with compilations() as compiled:
        _, h1 = run(injected(0.05))
        _, h2 = run(injected(0.01))
    assert compiled == []
    assert h1["loss"][-1] != h2["loss"][-1]  # the learning rate did reach the compiled epoch


def test_fit_with_cached_epoch_matches_the_hand_rolled_loop(key):
    """The reused epoch computes what a fresh one would: a second call (cache hit) on a row
    count inside the same bucket (padding rows present) gives the hand-rolled loop's params
    and metrics, with the validation mean over the real rows only."""
    params, X, y = _classification(key, n=40)
    opt = optax.sgd(0.3)
    mj.fit(params, X, y, optimizer=opt, epochs=1, batch_size=8, validation_data=(X[:12], y[:12]),
           progress=False)
    k = jax.random.key(7)
    n, n_val = 37, 11  # buckets 40 and 12: three training and one validation padding row
    fitted, history = mj.fit(params, X[:n], y[:n], optimizer=optax.sgd(0.3), epochs=2,
                             batch_size=8, key=k, validation_data=(X[:n_val], y[:n_val]),
                             progress=False)
    trajectory, by_hand, _ = hand_rolled_fit(params, X[:n], y[:n], "cross_entropy",
                                             optax.sgd(0.3), epochs=2, batch_size=8, key=k,
                                             validation_data=(X[:n_val], y[:n_val]))
    assert_close(fitted, trajectory[-1])
    for e, metrics in enumerate(by_hand):
        for name, value in metrics.items():
            assert math.isclose(history[name][e], value, rel_tol=1e-12), (name, e)


def test_fit_setup_does_not_grow_with_epochs(key):
    """Nothing is built per epoch up front: a huge epoch count that early stopping ends after
    a few epochs returns at once (it used to allocate one seed per epoch)."""
    params, X, y = _classification(key, n=10)
    _, history = mj.fit(params, X, y, optimizer=optax.sgd(0.0), epochs=10**12, batch_size=5,
                        validation_data=(X, y), early_stopping=1, progress=False)
    assert history.stop_reason == "early_stopping"
    assert len(history["loss"]) == 2


def test_shuffle_order_is_a_permutation_and_reproducible(key):
    a = shuffle_order(key, 50, 3)
    assert sorted(a.tolist()) == list(range(50))
    assert np.array_equal(a, shuffle_order(key, 50, 3))
    assert not np.array_equal(a, shuffle_order(key, 50, 4))
    assert not np.array_equal(a, shuffle_order(jax.random.key(1), 50, 3))
    assert np.array_equal(shuffle_order(jax.random.PRNGKey(0), 50, 3), a)  # legacy key, same bits
    with pytest.raises(ValueError, match="epoch"):
        shuffle_order(key, 50, -1)

@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_determinism_no_recompilation_across_epochs(grads):
    """One fit of 8 epochs compiles exactly one XLA program, the epoch, once (not once per
    epoch).  The optimizer's learning rate is one no other test uses, so the epoch is not
    already in fit's cache; the small helpers were compiled by the warm-up with other
    params."""
    params, X, y, _ = base_problem("ce", n=10)
    kwargs = dict(epochs=8, batch_size=4, grads=grads, validation_data=(X[:3], y[:3]),
                  progress=False)
    mj.fit(params, X, y, optimizer=optax.sgd(0.1), **kwargs)  # warm-up: the helpers
    lr = 0.1 + (0.001 if grads == "manual" else 0.002)
    with compilations() as compiled:
        _, history = mj.fit(params, X, y, optimizer=optax.sgd(lr), **kwargs)
    assert len(history["loss"]) == 8
    assert compiled == ["jit(epochs)"]


def test_determinism_the_recompile_counters_do_detect_recompiles():
    """Negative controls for the instruments above: a train step fed a new batch shape
    each "epoch" recompiles every time, and both the monitoring listener and the step's trace
    counter see it; fit on a second data size (another row bucket) compiles its epoch
    again."""
    params, X, y, loss = base_problem("ce", n=10)
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, loss)
    state = opt.init(params)
    with compilations() as compiled:
        for n in (9, 8, 7):
            params, state, _ = step(params, state, X[:n], y[:n])
    assert step.trace_count == 3
    assert compiled.count("jit(traced)") == 3, compiled
    with compilations() as compiled:
        for n in (10, 9):
            mj.fit(params, X[:n], y[:n], optimizer=optax.sgd(0.1003), epochs=2, progress=False)
    assert compiled.count("jit(epochs)") == 2



# === weight penalty (R1), sample weights, shuffle=False =======================================
def _jnp_ce(params, X, Y1h, s, lam):
    """The penalised, sample-weighted cross-entropy of a tanh/softmax MLP, written from the
    definitions: (1/S) Σ s_n ℓ_n + λ/(2S) Σ_l ‖W^(l)‖², S = Σ s_n; biases not penalised."""
    A = X
    for layer in params[:-1]:
        A = jnp.tanh(A @ layer.W + layer.b[None, :])
    A = jax.nn.softmax(A @ params[-1].W + params[-1].b[None, :], axis=-1)
    terms = -jnp.sum(Y1h * jnp.log(A), axis=1)
    S = jnp.sum(s)
    return (s @ terms) / S + 0.5 * lam * sum(jnp.sum(layer.W**2) for layer in params) / S


def test_l2_manual_step_equals_jax_grad_of_penalised_loss(key):
    """(R1): one sgd step with l2 is W ← W − α ∇(L + λ/(2N) Σ‖W‖²) with the gradient from
    jax.grad of the loss written out here; the reported loss includes the penalty."""
    params, X, y = _classification(key, n=10)
    Y1h = jax.nn.one_hot(y, 3, dtype=F64)
    lr, lam = 0.3, 0.7
    ones = jnp.ones(10, F64)
    loss_fn = jax.jit(_jnp_ce)
    for grads in ("manual", "autodiff"):
        step = mj.make_train_step(optax.sgd(lr), "cross_entropy", grads, l2=lam)
        new, _, m = step(params, optax.sgd(lr).init(params), X, y)
        g = jax.jit(jax.grad(_jnp_ce))(params, X, Y1h, ones, lam)
        assert_close(new, sgd_by_hand(params, g, lr))
        assert math.isclose(float(m["loss"]), float(loss_fn(params, X, Y1h, ones, lam)),
                            rel_tol=1e-12)
    _, g_pen = mj.training.l2_penalty(params, lam, 10.0)
    auto = jax.jit(jax.grad(lambda p: _jnp_ce(p, X, Y1h, ones, lam)
                            - _jnp_ce(p, X, Y1h, ones, 0.0)))
    assert_close(g_pen, auto(params))
    assert all(np.all(np.asarray(layer.b) == 0) for layer in g_pen)


def test_l2_zero_step_is_bit_identical_to_the_plain_step(key):
    params, X, y = _classification(key, n=10)
    opt = optax.sgd(0.3)
    a = mj.make_train_step(opt, "cross_entropy")(params, opt.init(params), X, y)
    b = mj.make_train_step(opt, "cross_entropy", l2=0.0)(params, opt.init(params), X, y)
    assert_bit_identical(a, b)


def _weighted_loop(params, X, y, s, *, lam, lr, epochs, batch_size, key, shuffle=True):
    """fit's documented weighted semantics as a plain loop: per batch the gradient of
    _jnp_ce with the batch's weights (skipped when they sum to 0), pre-update metrics, epoch
    metrics weighted by each batch's total weight S_b."""
    Y1h = jax.nn.one_hot(y, 3, dtype=F64)
    value_grad = jax.jit(jax.value_and_grad(_jnp_ce))
    n = X.shape[0]
    history = {"loss": [], "accuracy": []}
    for e in range(epochs):
        order = shuffle_order(key, n, e) if shuffle else np.arange(n)
        tot = sums_l = sums_a = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            sb = jnp.asarray(s[idx], F64)
            S = float(jnp.sum(sb))
            if S == 0:
                continue
            value, g = value_grad(params, X[idx], Y1h[idx], sb, lam)
            pred = np.argmax(np_forward(params, np.asarray(X[idx])), axis=1)
            acc = float(np.sum(np.asarray(sb) * (pred == np.asarray(y)[idx])) / S)
            sums_l, sums_a, tot = sums_l + S * float(value), sums_a + S * acc, tot + S
            params = sgd_by_hand(params, g, lr)
        history["loss"].append(sums_l / tot)
        history["accuracy"].append(sums_a / tot)
    return params, history


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_sample_weight_and_l2_match_a_hand_rolled_loop(key, shuffle):
    """Sample-weighted minibatch means, (R1) with S = the batch's total weight, a last partial
    batch, and a batch whose rows all weigh 0 (rows 4..7 with shuffle=False: skipped)."""
    params, X, y = _classification(key, n=10)
    s = np.array([0.5, 2.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 1.5, 0.25])
    k = jax.random.key(3)
    fitted, history = mj.fit(params, X, y, optimizer=optax.sgd(0.2), epochs=3, batch_size=4,
                             key=k, sample_weight=s, l2=0.3, shuffle=shuffle, progress=False)
    ref, ref_history = _weighted_loop(params, X, y, s, lam=0.3, lr=0.2, epochs=3, batch_size=4,
                                      key=k, shuffle=shuffle)
    assert_close(fitted, ref)
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(history[name], ref_history[name], rtol=1e-12)


def test_fit_unit_sample_weights_and_zero_l2_are_the_plain_fit(key):
    """sample_weight of ones (or any constant) and l2=0 leave the plain fit bit-identical."""
    params, X, y = _classification(key, n=10)
    kw = dict(optimizer=optax.sgd(0.2), epochs=2, batch_size=4, progress=False)
    plain, h0 = mj.fit(params, X, y, **kw)
    for extra in ({"sample_weight": np.ones(10)}, {"l2": 0.0}, {"sample_weight": [2.0] * 10}):
        fitted, h = mj.fit(params, X, y, **kw, **extra)
        assert_bit_identical(plain, fitted)
        assert history_without_time(h) == history_without_time(h0)


def test_fit_shuffle_false_is_the_given_row_order(key):
    """shuffle=False: batch i is rows i*B .. in every epoch (a plain loop over make_train_step)."""
    params, X, y = _classification(key, n=10)
    opt = optax.sgd(0.2)
    fitted, _ = mj.fit(params, X, y, optimizer=opt, epochs=2, batch_size=4, shuffle=False,
                       progress=False)
    step = mj.make_train_step(opt, "cross_entropy")
    p, state = params, opt.init(params)
    for _ in range(2):
        for start in range(0, 10, 4):
            p, state, _ = step(p, state, X[start:start + 4], y[start:start + 4])
    assert_close(fitted, p)


def test_fit_l2_and_sample_weight_do_not_recompile(key):
    """λ and the sample weights are data of the compiled epoch: new values compile nothing
    (and do change the result).  Whether there are weights at all is part of the program
    (unweighted minibatches are never empty, so that program skips no update)."""
    params, X, y = _classification(key, n=10)
    kw = dict(optimizer=optax.sgd(0.1234), epochs=1, batch_size=4, progress=False)
    rng = np.random.default_rng(0)
    mj.fit(params, X, y, **kw)  # warm-up, unweighted and weighted
    mj.fit(params, X, y, sample_weight=rng.uniform(size=10), **kw)
    with compilations() as compiled:
        a, _ = mj.fit(params, X, y, l2=0.5, **kw)
        b, _ = mj.fit(params, X, y, l2=1e-3, sample_weight=rng.uniform(size=10), **kw)
        c, _ = mj.fit(params, X, y, shuffle=False, **kw)
    assert compiled == []
    assert not bit_identical(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"l2": -1.0}, ValueError, "l2 must be a finite number >= 0"),
        ({"l2": math.nan}, ValueError, "l2"),
        ({"l2": "0.1"}, TypeError, "l2 must be a real number"),
        ({"sample_weight": np.ones(5)}, ValueError, r"shape \(6,\)"),
        ({"sample_weight": np.ones((6, 1))}, ValueError, r"shape \(6,\)"),
        ({"sample_weight": np.r_[np.ones(5), np.inf]}, ValueError, "non-finite value at index 5"),
        ({"sample_weight": np.r_[np.ones(3), -1.0, np.ones(2)]}, ValueError, "index 3"),
        ({"sample_weight": np.zeros(6)}, ValueError, "all zero"),
        ({"sample_weight": ["a"] * 6}, TypeError, "sample_weight"),
        ({"shuffle": 0}, TypeError, "shuffle must be a bool"),
    ],
)
def test_fit_rejects_bad_weights(key, kwargs, error, match):
    params, X, Y = _regression_problem(key)
    with pytest.raises(error, match=match):
        mj.fit(params, X, Y, progress=False, epochs=1, **kwargs)


# === DP-SGD in training =======================================================================
def test_dp_train_step_needs_its_key_and_is_dp_value_and_grads_then_the_update(key):
    """make_train_step(dp=...) is THE DP-SGD step: the gradient source's (L, g̃) of (D1)-(D3),
    then the optimizer's update; its key is required and only DP steps take one."""
    params, X, y = _classification(key, n=10)
    opt, dp = optax.sgd(0.2), mj.DPSGD(1.0, 0.8)
    step = mj.make_train_step(opt, "cross_entropy", dp=dp)
    state = opt.init(params)
    with pytest.raises(ValueError, match="pass its noise key"):
        step(params, state, X, y)
    with pytest.raises(ValueError, match="key is only used by a DP-SGD step"):
        mj.make_train_step(opt, "cross_entropy")(params, state, X, y, key=key)
    with pytest.raises(TypeError, match="dp must be None or an mlds_jax.DPSGD"):
        mj.make_train_step(opt, "cross_entropy", dp=(1.0, 1.0))
    k = jax.random.key(11)
    new, _, m = step(params, state, X, y, key=k)
    Y = mj.network.prepare_targets(params, y, "cross_entropy")
    value, g = mj.extensions.dp_value_and_grads(params, jnp.asarray(X), Y, "cross_entropy", dp, k)
    updates, _ = opt.update(g, state, params)
    assert_close(new, optax.apply_updates(params, updates))
    assert math.isclose(float(m["loss"]), float(value), rel_tol=1e-12)
    assert "accuracy" in m


def test_fit_dp_without_noise_or_clipping_is_the_plain_fit(key):
    """σ = 0 and C = ∞: κ_n = 1 and no noise, so DP-SGD's update is the plain mean gradient."""
    params, X, y = _classification(key, n=10)
    kw = dict(optimizer=optax.sgd(0.2), epochs=2, batch_size=4, key=jax.random.key(5),
              validation_data=(X[:4], y[:4]), progress=False)
    plain, h0 = mj.fit(params, X, y, **kw)
    dp, h1 = mj.fit(params, X, y, dp=mj.DPSGD(math.inf, 0.0), **kw)
    assert_bit_identical(plain, dp)  # the same products in the same order on this backend
    assert "epsilon" not in h1
    for name in h0:
        if name != "time":
            np.testing.assert_allclose(h1[name], h0[name], rtol=1e-12)


def test_fit_dp_matches_a_loop_of_dp_steps_with_documented_keys(key):
    """fit(dp=...) is a loop of make_dp_train_step steps, step i of epoch e with noise key
    fold_in(fold_in(k, e), i), k = jax.random.split(key)[0], over fit's row orders; ε after
    every epoch is dp_epsilon(σ, B/N, steps so far, 1/N) (DPSGD.delta overrides δ)."""
    pytest.importorskip("dp_accounting")
    params, X, y = _classification(key, n=10)
    opt, dp, k = optax.sgd(0.2), mj.DPSGD(0.5, 1.1), jax.random.key(8)
    fitted, history = mj.fit(params, X, y, optimizer=opt, epochs=2, batch_size=4, key=k, dp=dp,
                             progress=False)
    step = mj.make_train_step(opt, "cross_entropy", dp=dp)
    noise = jax.random.split(k)[0]
    p, state = params, opt.init(params)
    for e in range(2):
        order = shuffle_order(k, 10, e)
        for i, start in enumerate(range(0, 10, 4)):
            idx = order[start:start + 4]
            step_key = jax.random.fold_in(jax.random.fold_in(noise, e), i)
            p, state, _ = step(p, state, X[idx], y[idx], key=step_key)
    assert_close(fitted, p)
    expected = [mj.extensions.dp_epsilon(1.1, 0.4, 3 * (e + 1), 0.1) for e in range(2)]
    np.testing.assert_allclose(history["epsilon"], expected, rtol=1e-12)
    assert history["epsilon"][1] > history["epsilon"][0]
    _, h = mj.fit(params, X, y, optimizer=opt, epochs=1, batch_size=4, key=k,
                  dp=mj.DPSGD(0.5, 1.1, delta=1e-5), progress=False)
    assert math.isclose(h["epsilon"][0], mj.extensions.dp_epsilon(1.1, 0.4, 3, 1e-5), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dp": "dp"}, TypeError, "dp must be None or an mlds_jax.DPSGD"),
        ({"dp": mj.DPSGD(1.0, 1.0), "sample_weight": np.ones(6)}, ValueError, "counts each row"),
    ],
)
def test_fit_rejects_bad_dp_arguments(key, kwargs, error, match):
    params, X, Y = _regression_problem(key)
    with pytest.raises(error, match=match):
        mj.fit(params, X, Y, progress=False, epochs=1, **kwargs)


@pytest.mark.parametrize("delta", [1.5, 0.0, -1e-5])
def test_dpsgd_delta_is_checked(delta):
    with pytest.raises(ValueError, match="DPSGD.delta must"):
        mj.DPSGD(1.0, 1.0, delta=delta)
    assert mj.DPSGD(1.0, 1.0, delta=1e-5) == mj.DPSGD(1.0, 1.0)  # not part of the program


# === sharpness tracking =======================================================================
def test_fit_track_sharpness_equals_hessian_top_eigenvalue(key):
    """history["sharpness"] after epochs 1 and 2 is λ_max of the Hessian at those params, as
    mj.hessian_top_eigenvalue computes it (Lanczos to tol 1e-7 from another start vector:
    agreement to 1e-6 relative, its documented accuracy on small networks)."""
    params, X, y = _classification(key, n=10)
    kw = dict(optimizer=optax.sgd(0.3), batch_size=4, key=jax.random.key(2), progress=False)
    Xs, ys = X[:6], y[:6]
    fitted, history = mj.fit(params, X, y, epochs=2,
                             callbacks=[mj.SharpnessTracker(1, data=(Xs, ys))], **kw)
    after_one, _ = mj.fit(params, X, y, epochs=1, **kw)
    assert history["sharpness_epoch"] == [1, 2]
    for p, value in zip((after_one, fitted), history["sharpness"], strict=True):
        lam, _ = mj.hessian_top_eigenvalue(p, Xs, ys, "cross_entropy", key=jax.random.key(9))
        assert math.isclose(value, float(lam), rel_tol=1e-6)
    # default data: the training rows; every 2nd epoch
    fitted, history = mj.fit(params, X, y, epochs=3, callbacks=[mj.SharpnessTracker(2)], **kw)
    assert history["sharpness_epoch"] == [2]
    assert len(history["loss"]) == 3
    after_two, _ = mj.fit(params, X, y, epochs=2, **kw)
    lam, _ = mj.hessian_top_eigenvalue(after_two, X, y, "cross_entropy", key=jax.random.key(9))
    assert math.isclose(history["sharpness"][0], float(lam), rel_tol=1e-6)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((0,), ValueError, "every must be >= 1"),
        ((1.5,), TypeError, "every must be an int"),
        ((1, [1]), TypeError, "data must be a tuple"),
    ],
)
def test_sharpness_tracker_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        mj.SharpnessTracker(*args)


def test_sharpness_tracker_checks_its_data_before_training(key):
    params, X, Y = _regression_problem(key)
    tracker = mj.SharpnessTracker(1, data=(np.ones((2, 5)), np.ones((2, 2))))
    with pytest.raises(ValueError, match="sharpness X"):
        mj.fit(params, X, Y, progress=False, epochs=1, callbacks=[tracker])


# --- issue 12: a validation split that never touches other rows; divergence causes -------------
def _tiny_classification(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = np.arange(n) % 4
    return X, y, mj.init_mlp(jax.random.key(seed), [3, 5, 4], output="softmax")


def test_validation_split_is_stratified_deterministic_and_equals_explicit_data():
    from mlds_jax.training import validation_split_indices

    X, y, params = _tiny_classification()
    key = jax.random.key(3)
    train, val = validation_split_indices(key, y, 0.25, stratify=True)
    assert np.bincount(y[val]).tolist() == [2, 2, 2, 2]  # round(0.25 * 10) of each class
    assert sorted([*train, *val]) == list(range(40))
    again = validation_split_indices(key, y, 0.25, stratify=True)
    assert np.array_equal(again[1], val)
    opt = optax.sgd(0.1)
    p1, h1 = mj.fit(params, X, y, optimizer=opt, epochs=2, key=key, validation_split=0.25,
                    progress=False)
    p2, h2 = mj.fit(params, X[train], y[train], optimizer=opt, epochs=2, key=key,
                    validation_data=(X[val], y[val]), progress=False)
    assert_bit_identical(p1, p2)
    assert {k: v for k, v in h1.items() if k != "time"} == {
        k: v for k, v in h2.items() if k != "time"}


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, "0.1"])
def test_validation_split_bad_values(bad):
    X, y, params = _tiny_classification()
    with pytest.raises((ValueError, TypeError), match="validation_split"):
        mj.fit(params, X, y, epochs=1, validation_split=bad, progress=False)


def test_validation_split_with_validation_data_is_refused():
    X, y, params = _tiny_classification()
    with pytest.raises(ValueError, match="not both"):
        mj.fit(params, X, y, epochs=1, validation_split=0.2, validation_data=(X, y),
               progress=False)


@pytest.mark.parametrize(("scale", "cause"), [(1.0, "learning rate"), (1e3, "input scale")])
def test_divergence_warning_names_the_likely_cause(scale, cause):
    X, y, params = _tiny_classification()
    with pytest.warns(mj.TrainingDivergedWarning, match=cause):
        mj.fit(params, X * scale, y, optimizer=optax.sgd(1e300), epochs=2, progress=False)


def test_fit_refuses_tracers():
    X, y, params = _tiny_classification()
    with pytest.raises(TypeError, match="fit .*cannot be traced"):
        jax.jit(lambda p: mj.fit(p, X, y, epochs=1, progress=False)[0])(params)


# --- issue 12: resumable training, bit-identical ------------------------------------------------
def _stop_after(k):
    def callback(e, metrics):
        if e + 1 == k:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("patience", [None, 2])
def test_interrupted_and_resumed_fit_is_bit_identical(tmp_path, opt_name, patience):
    X, y, params = _tiny_classification(n=24)
    Xv, yv, _ = _tiny_classification(n=8, seed=1)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam, see the module docstring
        opt = optax.sgd(0.5) if opt_name == "sgd" else optax.adam(0.3)
        kw = dict(optimizer=opt, epochs=6, batch_size=10, key=jax.random.key(2),
                  validation_data=(Xv, yv), early_stopping=patience, progress=False)
        p_ref, h_ref = mj.fit(params, X, y, **kw)
        k = len(h_ref["loss"]) - 1  # interrupted one epoch before the end
        assert k >= 2
        with pytest.raises(KeyboardInterrupt):
            mj.fit(params, X, y, checkpoint_dir=tmp_path, checkpoint_every=2,
                   on_epoch_end=_stop_after(k), **kw)
        state = np.load(tmp_path / "train_state.npz")  # the last completed epoch was saved
        assert json.loads(state["__header__"].tobytes())["state"]["epoch"] == k
        p_res, h_res = mj.fit(params, X, y, checkpoint_dir=tmp_path, resume=True, **kw)
    assert_bit_identical(p_res, p_ref)
    strip = lambda h: {k: v for k, v in h.items() if k != "time"}  # noqa: E731
    assert strip(h_res) == strip(h_ref)
    assert len(h_res["time"]) == len(h_ref["time"])
    assert (h_res.stop_reason, h_res.best_epoch) == (h_ref.stop_reason, h_ref.best_epoch)
    if patience is not None:  # the early-stopping state crossed the interruption
        assert h_ref.best_epoch is not None


def test_resume_refuses_another_optimizer_state_naming_the_mismatch(tmp_path):
    X, y, params = _tiny_classification(n=24)
    mj.fit(params, X, y, optimizer=optax.sgd(0.1, momentum=0.9), epochs=1,
           checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="opt_state does not match .*structure"):
        mj.fit(params, X, y, optimizer=optax.sgd(0.1), epochs=2, checkpoint_dir=tmp_path,
               resume=True, progress=False)
    wider = mj.init_mlp(jax.random.key(0), [3, 6, 4], output="softmax")
    with pytest.raises(ValueError, match=r"the state is for a 3-5-4 relu/softmax network; this "
                                         r"run has a 3-6-4 relu/softmax network"):
        mj.fit(wider, X, y, optimizer=optax.sgd(0.1, momentum=0.9), epochs=2,
               checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="another run"):
        mj.fit(params, X, y, optimizer=optax.sgd(0.1, momentum=0.9), epochs=2,
               key=jax.random.key(9), checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resume_of_a_finished_run_continues_with_more_epochs_and_says_so(tmp_path, capsys):
    """A run that ended (all its epochs, or early stopping) continues from its last epoch
    when more epochs are asked for: the same params and history as one longer run; fewer
    epochs than it has done are refused; verbose says where it resumes."""
    X, y, params = _tiny_classification(n=24)
    kw = dict(optimizer=optax.sgd(0.1), batch_size=10, key=3, progress=False)
    p_ref, h_ref = mj.fit(params, X, y, epochs=5, **kw)
    mj.fit(params, X, y, epochs=3, checkpoint_dir=tmp_path, **kw)
    capsys.readouterr()
    p_res, h_res = mj.fit(params, X, y, epochs=5, checkpoint_dir=tmp_path, resume=True,
                          verbose=1, **kw)
    assert_bit_identical(p_res, p_ref)
    assert h_res["loss"] == h_ref["loss"] and h_res.stop_reason == "completed"
    out = capsys.readouterr().out
    assert out.startswith(f"resuming from epoch 3 of 5 ({tmp_path / 'train_state.npz'})\n")
    with pytest.raises(ValueError, match=r"has done 5 epochs; epochs=4 asks for fewer"):
        mj.fit(params, X, y, epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    # an early-stopped run: the stop is lifted, the count goes on where it stood
    Xv, yv, _ = _tiny_classification(n=8, seed=1)
    stop = mj.EarlyStopping(patience=1, restore_best=False)
    _, h1 = mj.fit(params, X, y, epochs=30, validation_data=(Xv, yv), early_stopping=stop,
                   checkpoint_dir=tmp_path / "es", **kw)
    assert h1.stop_reason == "early_stopping" and len(h1["loss"]) < 30
    ckpt = mj.training.Checkpoint(tmp_path / "es", resume=True)
    patient = mj.EarlyStopping(patience=1000, restore_best=False)
    _, h2 = mj.fit(params, X, y, epochs=len(h1["loss"]) + 2, validation_data=(Xv, yv),
                   early_stopping=patient, callbacks=[ckpt], **kw)
    assert (ckpt.resumed_from, ckpt.resumed_stop_reason) == (len(h1["loss"]), "early_stopping")
    assert len(h2["loss"]) == len(h1["loss"]) + 2 and h2["loss"][:-2] == h1["loss"]


def test_resume_refuses_changed_settings_naming_them(tmp_path):
    X, y, params = _tiny_classification(n=24)
    kw = dict(optimizer=optax.sgd(0.1), batch_size=10, key=3, progress=False)
    settings = {"lr": 0.1, "l2": 0.0, "sizes": [3, 5, 4]}
    mj.fit(params, X, y, epochs=2, callbacks=[mj.training.Checkpoint(tmp_path, settings=settings)],
           **kw)
    changed = mj.training.Checkpoint(tmp_path, resume=True, settings={**settings, "lr": 0.01})
    with pytest.raises(ValueError, match=r"was saved with other settings \(lr: saved 0\.1, now "
                                         r"0\.01\): resume with the settings it was started with"):
        mj.fit(params, X, y, epochs=3, callbacks=[changed], **kw)
    same = mj.training.Checkpoint(tmp_path, resume=True, settings=dict(settings))
    _, h = mj.fit(params, X, y, epochs=3, callbacks=[same], **kw)
    assert len(h["loss"]) == 3 and same.resumed_from == 2


def test_resume_without_a_state_and_a_corrupt_state(tmp_path):
    X, y, params = _tiny_classification(n=24)
    with pytest.raises(FileNotFoundError, match="train_state.npz"):
        mj.fit(params, X, y, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)
    (tmp_path / "train_state.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="corrupt"):
        mj.fit(params, X, y, epochs=1, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_on_epoch_end_returning_true_stops_training():
    X, y, params = _tiny_classification(n=24)
    _, h = mj.fit(params, X, y, optimizer=optax.sgd(0.1), epochs=5, progress=False,
                  on_epoch_end=lambda e, m: e == 1)
    assert len(h["loss"]) == 2 and h.stop_reason == "callback"


# === the task's metric per epoch: r2 for regression losses =======================================
@pytest.mark.parametrize("loss", ["mse", "half_squared_error"])
def test_fit_records_r2_of_end_of_epoch_params_as_evaluate(loss):
    """history["r2"][e] / ["val_r2"][e] equal evaluate's r2 of the params after epoch e + 1,
    on all training / validation rows; N = 37 and N_val = 19 are padded to row buckets (40,
    20) and sample weights are given: neither changes the (unweighted) r2."""
    kp, kx, kv = jax.random.split(jax.random.key(7), 3)
    params = mj.init_mlp(kp, [3, 4, 2], hidden="tanh", output="identity", dtype=F64)
    W = jnp.array([[1.0, 0.5], [-2.0, 0.0], [0.3, 1.0]], F64)
    X = jax.random.normal(kx, (37, 3), F64)
    Xv = jax.random.normal(kv, (19, 3), F64)
    Y, Yv = jnp.tanh(X @ W), jnp.tanh(Xv @ W)
    sw = np.linspace(0.5, 2.0, 37)

    def run(epochs):
        return mj.fit(params, X, Y, loss=loss, optimizer=optax.sgd(0.1), epochs=epochs,
                      batch_size=8, key=jax.random.key(1), validation_data=(Xv, Yv),
                      sample_weight=sw, progress=False)

    for epochs in (1, 3):
        fitted, history = run(epochs)
        assert set(history) == {"loss", "r2", "val_loss", "val_r2", "time"}
        np.testing.assert_allclose(history["r2"][-1], mj.evaluate(fitted, X, Y, loss)["r2"],
                                   rtol=1e-12)
        np.testing.assert_allclose(history["val_r2"][-1],
                                   mj.evaluate(fitted, Xv, Yv, loss)["r2"], rtol=1e-12)
    assert history["r2"][-1] > history["r2"][0]  # training improves the fit


def test_fit_r2_of_constant_targets_follows_evaluate():
    """Targets without variance: r2 is 1 for a perfect fit and 0 otherwise (as evaluate)."""
    params = mj.init_mlp(jax.random.key(0), [2, 1], output="identity", dtype=F64)
    X = jax.random.normal(jax.random.key(1), (6, 2), F64)
    fitted, history = mj.fit(params, X, jnp.full((6, 1), 2.0, F64), optimizer=optax.sgd(0.1),
                             epochs=1, batch_size=3, progress=False)
    assert history["r2"] == [0.0]
    assert mj.evaluate(fitted, X, jnp.full((6, 1), 2.0, F64))["r2"] == 0.0


# === progress where people look: verbose, the Jupyter bar and its fallback ======================
def _tiny_regression_fit(**kw):
    params, X, Y = _linear_regression(jax.random.key(0), n=8)
    return mj.fit(params, X, Y, optimizer=optax.sgd(0.1), batch_size=4, **kw)


@pytest.mark.parametrize(("verbose", "epochs", "shown"), [
    (0, 20, []),
    (1, 20, list(range(2, 21, 2))),  # every ⌈20/10⌉ = 2nd epoch
    (1, 25, [3, 6, 9, 12, 15, 18, 21, 24, 25]),  # every 3rd and the last
    (2, 5, [1, 2, 3, 4, 5]),
])
def test_fit_verbose_prints_one_line_per_shown_epoch(capsys, verbose, epochs, shown):
    _, history = _tiny_regression_fit(epochs=epochs, verbose=verbose, progress=False)
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in lines] == shown
    assert all(line.split()[1].endswith(f"/{epochs}") for line in lines)
    for line in lines:
        e = int(line.split()[1].split("/")[0]) - 1
        assert f"loss {history['loss'][e]:.4g}" in line and "r2 " in line


def test_fit_verbose_shows_the_last_epoch_of_a_stopped_run(capsys):
    _tiny_regression_fit(epochs=20, verbose=1, progress=False,
                         on_epoch_end=lambda e, m: e == 4)  # stops after epoch 5
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == [
        "2/20", "4/20", "5/20"]


def test_fit_verbose_rejects_bad_values():
    for bad, err in ((3, ValueError), (-1, ValueError), (True, TypeError), ("1", TypeError)):
        with pytest.raises(err, match="verbose"):
            _tiny_regression_fit(epochs=1, verbose=bad)


class _FakeShell:
    def __init__(self, kernel):
        self.kernel = kernel


def _fake_ipython(shell):
    return type("FakeIPython", (), {"get_ipython": staticmethod(lambda: shell)})


def test_in_jupyter_kernel_detection(monkeypatch):
    from mlds_jax.training import in_jupyter_kernel

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_jupyter_kernel()  # IPython not imported: not a kernel, and no import
    assert "IPython" not in sys.modules
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(None))
    assert not in_jupyter_kernel()  # imported, but not running
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(_FakeShell(kernel=None)))
    assert not in_jupyter_kernel()  # a terminal IPython shell has no kernel
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(_FakeShell(kernel=object())))
    assert in_jupyter_kernel()


def test_fit_in_a_kernel_without_tqdm_updates_one_line(monkeypatch, capsys):
    """In a kernel without tqdm (the progress extra) fit falls back to one line on stdout,
    rewritten in place after every epoch ("\r"), ended by one newline; no error.  With
    progress=False nothing is shown."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(_FakeShell(kernel=object())))
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tqdm" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # importing tqdm would fail
    _tiny_regression_fit(epochs=3)
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert [part.split()[2] for part in out.strip().split("\r") if part] == ["1/3", "2/3", "3/3"]
    assert err == ""
    _tiny_regression_fit(epochs=3, progress=False)
    assert capsys.readouterr().out == ""


def test_fit_in_a_kernel_with_tqdm_uses_the_notebook_bar(monkeypatch, capsys):
    """In a kernel with tqdm and ipywidgets, fit drives tqdm.auto's bar (here a recorder)."""
    import importlib.util
    import types

    calls = []

    class Recorder:
        def __init__(self, **kw):
            calls.append(("init", kw["total"]))

        def set_postfix(self, d):
            calls.append(("postfix", sorted(d)))

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "IPython", _fake_ipython(_FakeShell(kernel=object())))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        object() if name in ("tqdm", "ipywidgets") else real_find_spec(name, *a)))
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=Recorder))
    _tiny_regression_fit(epochs=2)
    assert calls == [("init", 2), ("postfix", ["loss", "r2"]), ("update", 1),
                     ("postfix", ["loss", "r2"]), ("update", 1), ("close",)]
    assert capsys.readouterr().out == ""


# === memory does not grow with the number of epochs =============================================
def test_fit_live_device_arrays_do_not_grow_with_epochs():
    """After fit returns, the live jax arrays it leaves behind (the returned params) are the
    same in number for 3 and 60 epochs: no per-epoch array is kept (history holds floats)."""
    import gc

    def live_after(epochs):
        gc.collect()
        before = len(jax.live_arrays())
        fitted, history = _tiny_regression_fit(epochs=epochs, progress=False)
        assert len(history["loss"]) == epochs
        assert all(type(v) is float for vs in history.values() for v in vs)
        gc.collect()
        grown = len(jax.live_arrays()) - before
        del fitted, history
        return grown

    live_after(2)  # compile and the module-level caches first
    few, many = live_after(3), live_after(60)
    assert few == many
    assert few <= len(jax.tree_util.tree_leaves(_tiny_regression_fit(epochs=1,
                                                                     progress=False)[0]))


# --- several epochs per compiled call --------------------------------------------------------
def _per_epoch(e, metrics):
    """An on_epoch_end that changes nothing: it makes fit run one epoch per compiled call."""
    return None


def _same_run(a, b):
    (pa, ha), (pb, hb) = a, b
    chex.assert_trees_all_equal(pa, pb)  # the same compiled program: bit-identical
    assert set(ha) == set(hb)
    for k in ha:
        if k != "time":
            assert ha[k] == hb[k], k
    assert (ha.stop_reason, ha.best_epoch) == (hb.stop_reason, hb.best_epoch)


@pytest.mark.parametrize(
    "stopping",
    [
        None,
        # loss stops improving by 0.05 a few epochs in: the stop falls inside the first chunk
        mj.EarlyStopping(patience=2, min_delta=0.05, monitor="loss", restore_best=False),
        mj.EarlyStopping(patience=3, min_delta=0.01, monitor="val_loss", restore_best=True),
    ],
)
def test_fit_in_chunks_matches_one_epoch_per_call(key, stopping):
    """Without per-epoch host work, fit runs up to 32 epochs in one compiled call with early
    stopping decided on the device; a callback forces one epoch per call (the host decides
    after each).  Params, every history entry but "time", the stop reason and the best
    epoch agree exactly, also when early stopping ends training inside a chunk."""
    params, X, y = _classification(key, n=30)
    kwargs = dict(optimizer=optax.sgd(0.5), epochs=45, batch_size=7, key=jax.random.key(3),
                  validation_data=(X[:9], y[:9]), early_stopping=stopping, progress=False)
    chunked = mj.fit(params, X, y, **kwargs)
    one_by_one = mj.fit(params, X, y, on_epoch_end=_per_epoch, **kwargs)
    _same_run(chunked, one_by_one)
    if stopping is None:
        assert len(chunked[1]["loss"]) == 45 and chunked[1].stop_reason == "completed"
    else:
        assert chunked[1].stop_reason == "early_stopping"
        assert 1 < len(chunked[1]["loss"]) < 32  # stopped inside the first chunk
        # the documented rule applied to the recorded values gives the same best and stop
        best_value, best, since = math.inf, None, 0
        for e, value in enumerate(chunked[1][stopping.monitor]):
            if value < best_value - stopping.min_delta:
                best_value, best, since = value, e, 0
            else:
                since += 1
        assert chunked[1].best_epoch == best
        assert since == stopping.patience  # it stopped on the epoch patience ran out
        if stopping.restore_best:  # the params after the best epoch, as a plain shorter run
            shorter, _ = mj.fit(params, X, y, **{**kwargs, "epochs": best + 1,
                                                 "early_stopping": None})
            chex.assert_trees_all_equal(chunked[0], shorter)


def test_fit_in_chunks_diverging_inside_a_chunk_returns_the_last_finite_params(key):
    """Gradient descent far above 2/λ_max on a linear least-squares problem grows the loss
    geometrically until it overflows float64 tens of epochs in: chunked and one-epoch-per-
    call runs stop at the same epoch with the same warning and the same (finite) params,
    which are those of an uninterrupted run of that many epochs."""
    params, X, Y = _linear_regression(key, n=12)
    kwargs = dict(optimizer=optax.sgd(60.0), epochs=500, batch_size=12, progress=False)
    with pytest.warns(mj.TrainingDivergedWarning) as w_chunked:
        chunked = mj.fit(params, X, Y, **kwargs)
    with pytest.warns(mj.TrainingDivergedWarning) as w_single:
        one_by_one = mj.fit(params, X, Y, on_epoch_end=_per_epoch, **kwargs)
    _same_run(chunked, one_by_one)
    assert str(w_chunked[0].message) == str(w_single[0].message)
    ran = len(chunked[1]["loss"])
    assert 32 < ran < 500 and ran % 32 != 0  # the divergence is inside a later chunk
    assert chunked[1].stop_reason == "diverged"
    assert f"diverged in epoch {ran + 1}" in str(w_chunked[0].message)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(chunked[0]))
    again, history = mj.fit(params, X, Y, **{**kwargs, "epochs": ran})
    assert history.stop_reason == "completed"
    chex.assert_trees_all_equal(again, chunked[0])
