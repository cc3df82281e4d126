"""Hardening (issue 6): every public function against bad input, numerics at the edges,
faults, determinism and the user-facing gradcheck.

The test names carry their kind, so the cases can be counted from ``pytest --collect-only``:

* ``test_bad_*``: bad input, in the spirit of scikit-learn's ``check_estimator``.  Each case
  either raises a ValueError/TypeError whose message names the fault, or gives a finite,
  correct result.  The contract the table encodes, the same for every function that takes
  the argument:

  - X is cast to the parameters' dtype: int, bool, float16, bfloat16 and float64 X all work
    and give bit for bit the result of ``X.astype(params dtype)``; a finite X that the cast
    would overflow (1e39 for float32, 7e4 for float16) is an error, as NaN/inf are.
  - Y is cast the same way after the loss's checks (labels in [0, K) and integral, one-hot
    rows summing to 1, BCE targets in [0, 1]); class labels must be integers (bool is
    rejected, as by ``mj.one_hot``).
  - params: float16, bfloat16, float32 and float64 work (results close to a float64 run of
    the same rounded inputs); all leaves must share one floating dtype; NaN/inf are errors.
  - N = 0: the row-wise functions (forward, forward_cache, predict, prepare_targets) return
    empty (0, K) results; everything that averages over rows raises "X is empty".  N = 1
    works everywhere (a one-row regression's r2 is 1 for a perfect fit, else 0, as
    scikit-learn's ``r2_score`` on targets without variance).
  - complex, string, None and ragged input: TypeError.

* ``test_edge_*``: numerics at the edges (logits ±1e4, overflow, saturation, kinks, ties,
  huge targets, divergence).
* ``test_fault_*``: interrupted writes and runs, checkpoints from the future.
* ``test_determinism_*``: bit-identical reruns, manual == autodiff where the maths is the
  same, no recompilation across epochs.
* ``test_gradcheck_*``: ``mj.check_grads`` as a user-facing gradcheck (extends
  test_autodiff.py: every output/loss pair at depths 1-3, float32 in, wrong δ detection for
  every loss, a clear verdict on NaN).

The table and the gradcheck tests run under the ``op_by_op`` fixture (``jax.disable_jit``):
hundreds of calls on a few shared shapes, where every jitted fit or check_grads would compile
programs of its own.  Tests that make a few calls on shapes of their own, and the tests about
compilation, run jitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from helpers import OUTPUT_LOSS_PAIRS, assert_trees_close, make_params, make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import mlds_jax as mj
import mlds_jax.losses as losses_module
from mlds_jax import checkpoint, cli, training

F16, F32, F64 = np.float16, np.float32, np.float64
BF16 = np.dtype(ml_dtypes.bfloat16)


# === helpers ===
def _cast(params, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), params)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in _leaves(tree))


def _bit_identical(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(la, lb, strict=True))


def _exactly_equal(a, b) -> bool:
    """Same dtypes and shapes, equal values (unlike _bit_identical, −0.0 == 0.0)."""
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _patching():
    """``pytest.MonkeyPatch.context()``, not the ``monkeypatch`` fixture: conftest clears every
    JAX cache around tests that use the fixture (so that nothing traced with patched maths
    outlives them), which would make every later test compile again.  The patches here
    trace nothing that is cached: they run op by op (a wrong dA), or patch I/O, the CLI's
    fit, or fit's per-call epoch factory (each fit jits a new function anyway)."""
    return pytest.MonkeyPatch.context()


def _run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = 0 if exc.code is None else exc.code
    return rc, out.getvalue(), err.getvalue()


# === 1. the bad-input table ===
#: The base problems: (hidden, output, loss, n_out).  X has 3 features, N = 6 rows.
BASES = {
    "ce": ("tanh", "softmax", "cross_entropy", 3),
    "bce": ("tanh", "sigmoid", "binary_cross_entropy", 1),
    "mse": ("tanh", "identity", "mse", 3),
}


def _base(kind: str, n: int = 6, dtype=F32):
    """(params, X, Y, loss): params in ``dtype``, X float64 numpy (the library casts it),
    Y raw numpy (int labels for "ce", (N, 1) probabilities for "bce", (N, 3) reals for "mse").
    The shapes are shared on purpose: op by op, every new shape costs compilations."""
    hidden, output, loss, n_out = BASES[kind]
    params, X, Y = make_problem(0, [3, 4, n_out], hidden, output, loss, n, jnp.float64)
    return _cast(params, dtype), np.asarray(X), np.asarray(Y), loss


def _step(p, X, Y, loss):
    opt = optax.sgd(0.1)
    new, _, metrics = mj.make_train_step(opt, loss)(p, opt.init(p), X, Y)
    return new, metrics["loss"]


def _fit(p, X, Y, loss):
    fitted, history = mj.fit(p, X, Y, loss=loss, optimizer=optax.sgd(0.1), epochs=1,
                             batch_size=8, key=jax.random.key(0), progress=False)
    return fitted, history.get("loss", [])


def _check_grads(p, X, Y, loss):
    report = mj.check_grads(p, X, Y, loss, max_fd_entries=1)
    assert report.ok, str(report)
    return report.loss_value


#: Every public function that takes (params, X and/or Y, loss), as f(params, X, Y, loss).
FUNCTIONS: dict[str, Callable] = {
    "forward": lambda p, X, Y, loss: mj.forward(p, X),
    "forward_cache": lambda p, X, Y, loss: tuple(mj.forward_cache(p, X)),
    "predict": lambda p, X, Y, loss: mj.predict(p, X),
    "prepare_targets": lambda p, X, Y, loss: mj.prepare_targets(p, Y, loss),
    "loss": mj.loss,
    "manual_grads": mj.manual_grads,
    "autodiff_grads": mj.autodiff_grads,
    "backward_deltas": mj.backward_deltas,
    "check_grads": _check_grads,
    "evaluate": lambda p, X, Y, loss: mj.evaluate(p, X, Y, loss),
    "train_step": _step,
    "fit": _fit,
}
X_FUNCS = ("forward", "forward_cache", "predict")
Y_FUNCS = ("prepare_targets",)
BATCH_FUNCS = tuple(f for f in FUNCTIONS if f not in X_FUNCS + Y_FUNCS)
SCOPES = {"X": X_FUNCS + BATCH_FUNCS, "Y": Y_FUNCS + BATCH_FUNCS, "loss": Y_FUNCS + BATCH_FUNCS,
          "all": tuple(FUNCTIONS)}


@dataclasses.dataclass(frozen=True)
class Raises:
    exc: type
    regex: str


@dataclasses.dataclass(frozen=True)
class Same:
    """Works, finite, and bit for bit the result for the canonical input ``to(...)``."""

    to: Callable


@dataclasses.dataclass(frozen=True)
class Close:
    """Works, finite, float results in ``dtype``, close (a few ulp of ``dtype``) to the same
    function run in float64 on the same rounded inputs."""

    dtype: object


@dataclasses.dataclass(frozen=True)
class Empty:
    """Works: a (0, ...) result for a (0, n_in) input."""


def _x(f):
    return lambda p, X, Y, loss: (p, f(X), Y, loss)


def _y(f):
    return lambda p, X, Y, loss: (p, X, f(Y), loss)


def _at(arr, idx, value, dtype=F64):
    arr = np.array(arr, dtype=dtype)
    arr[idx] = value
    return arr


def _replace_layer(i, **changes):
    def edit(p, X, Y, loss):
        p = list(p)
        p[i] = dataclasses.replace(p[i], **changes)
        return tuple(p), X, Y, loss
    return edit


def _set_leaf(i, name, idx, value):
    def edit(p, X, Y, loss):
        leaf = getattr(p[i], name)
        return _replace_layer(i, **{name: leaf.at[idx].set(value)})(p, X, Y, loss)
    return edit


def _params_dtype(dtype):
    return lambda p, X, Y, loss: (_cast(p, dtype), X, Y, loss)


#: name -> (base problem, scope, edit(params, X, Y, loss), expected outcome or {function: ...}).
CASES: dict[str, tuple] = {
    # --- X ---------------------------------------------------------------------------------
    "X NaN": ("ce", "X", _x(lambda X: _at(X, (2, 1), np.nan)), Raises(
        ValueError, r"X contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index "
                    r"\(2, 1\)")),
    "X +inf": ("mse", "X", _x(lambda X: _at(X, (0, 2), np.inf)), Raises(
        ValueError, r"X contains 1 non-finite .*first inf at index \(0, 2\)")),
    "X -inf": ("bce", "X", _x(lambda X: _at(X, (5, 0), -np.inf)), Raises(
        ValueError, r"X contains 1 non-finite .*first -inf at index \(5, 0\)")),
    "X 1-D": ("ce", "X", _x(lambda X: X[0]), Raises(
        ValueError, r"X must be 2-D \(N, n_features\), got shape \(3,\); for one sample use "
                    r"X\.reshape\(1, -1\)")),
    "X 3-D": ("ce", "X", _x(lambda X: X[None]), Raises(
        ValueError, r"X must be 2-D \(N, n_features\), got shape \(1, 6, 3\)")),
    "X scalar": ("mse", "X", _x(lambda X: 1.5), Raises(ValueError, r"X must be 2-D.*shape \(\)")),
    "X too few features": ("ce", "X", _x(lambda X: X[:, :2]), Raises(
        ValueError, r"X has 2 features but the first layer expects fan_in = 3")),
    "X too many features": ("bce", "X", _x(lambda X: np.hstack([X, X])), Raises(
        ValueError, r"X has 6 features but the first layer expects fan_in = 3")),
    "X None": ("ce", "X", _x(lambda X: None), Raises(
        TypeError, r"X must be a numeric array, got NoneType")),
    "X strings": ("ce", "X", _x(lambda X: X.astype(str)), Raises(
        TypeError, r"X must be a numeric array, got dtype <U")),
    "X ragged list": ("ce", "X", _x(lambda X: [[1.0, 2.0, 3.0], [1.0, 2.0]]), Raises(
        TypeError, r"X must be a numeric array")),
    "X complex": ("mse", "X", _x(lambda X: X.astype(np.complex128)), Raises(
        TypeError, r"X must be real, got dtype complex128")),
    "X int32": ("ce", "X", _x(lambda X: np.round(3 * X).astype(np.int32)),
                Same(_x(lambda X: X.astype(F32)))),
    "X nested lists of ints": ("mse", "X", _x(lambda X: np.round(3 * X).astype(int).tolist()),
                               Same(_x(lambda X: np.asarray(X, F32)))),
    "X bool": ("bce", "X", _x(lambda X: X > 0), Same(_x(lambda X: X.astype(F32)))),
    "X float16": ("ce", "X", _x(lambda X: X.astype(F16)), Same(_x(lambda X: X.astype(F32)))),
    "X bfloat16 (a jax array)": ("mse", "X", _x(lambda X: jnp.asarray(X, jnp.bfloat16)),
                                 Same(_x(lambda X: np.asarray(X).astype(F32)))),
    "X float64 into float32 params": ("bce", "X", _x(lambda X: X),
                                      Same(_x(lambda X: X.astype(F32)))),
    "X overflows float32": ("mse", "X", _x(lambda X: _at(X, (3, 1), -1e39)), Raises(
        ValueError, r"X has 1 value\(s\) too large for the parameters' dtype float32 "
                    r"\(max 3\.403e\+38\); first -1e\+39 at index \(3, 1\)")),
    "X overflows float16 params": (
        "ce", "X", lambda p, X, Y, loss: (_cast(p, F16), _at(X, (1, 1), 7e4), Y, loss),
        Raises(ValueError, r"X has 1 value\(s\) too large for the parameters' dtype float16")),
    # one row of a classifier: test_gradcheck_on_one_row_and_labels
    "N = 1 regression (r2 of one row)": (
        "mse", "all", lambda p, X, Y, loss: (p, X[:1], Y[:1], loss),
        Same(lambda p, X, Y, loss: (p, X, Y, loss))),
    "N = 0": ("ce", "all", lambda p, X, Y, loss: (p, X[:0], Y[:0], loss), {
        **{f: Empty() for f in X_FUNCS + Y_FUNCS},
        **{f: Raises(ValueError, r"^X is empty \(0 rows\)") for f in BATCH_FUNCS}}),
    # --- Y ---------------------------------------------------------------------------------
    "Y NaN": ("mse", "Y", _y(lambda Y: _at(Y, (4, 1), np.nan)), Raises(
        ValueError, r"Y contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index "
                    r"\(4, 1\)")),
    "Y -inf": ("mse", "Y", _y(lambda Y: _at(Y, (0, 0), -np.inf)), Raises(
        ValueError, r"Y contains 1 non-finite .*first -inf at index \(0, 0\)")),
    "Y NaN label": ("ce", "Y", _y(lambda Y: _at(Y, 3, np.nan)), Raises(
        ValueError, r"Y contains 1 non-finite .*first nan at index \(3,\)")),
    "Y rows != X rows": ("ce", "Y", _y(lambda Y: Y[:5]), {
        **{f: Raises(ValueError, r"X has 6 rows but Y has 5; they must match")
           for f in BATCH_FUNCS},
        "prepare_targets": Same(lambda p, X, Y, loss: (p, X, Y[:5], loss))}),  # takes no X
    "label < 0": ("ce", "Y", _y(lambda Y: _at(Y, 2, -1, np.int64)), Raises(
        ValueError, r"class labels must lie in \[0, 3\) for a network with 3 outputs; "
                    r"Y\[2\] = -1 \(1 label\(s\) out of range\)")),
    "label >= K": ("ce", "Y", _y(lambda Y: _at(_at(Y, 1, 3, np.int64), 4, 7, np.int64)), Raises(
        ValueError, r"class labels must lie in \[0, 3\) .*; Y\[1\] = 3 \(2 label\(s\) out of "
                    r"range\)")),
    "label non-integer": ("ce", "Y", _y(lambda Y: _at(Y, 1, 0.5)), Raises(
        ValueError, r"Y holds class labels but Y\[1\] = 0\.5 is not an integer")),
    "labels bool": ("ce", "Y", _y(lambda Y: Y > 0), Raises(
        TypeError, r"Y as class labels must be integers, got dtype bool")),
    "labels integral float16": ("ce", "Y", _y(lambda Y: Y.astype(F16)),
                                Same(_y(lambda Y: Y.astype(np.int64)))),
    "labels as a list": ("ce", "Y", _y(lambda Y: Y.tolist()), Same(_y(np.asarray))),
    "one-hot rows": ("ce", "Y", _y(lambda Y: np.eye(3)[Y]),
                     Same(_y(lambda Y: Y.argmax(axis=1)))),
    "one-hot row sums to 2": ("ce", "Y", _y(lambda Y: _at(np.eye(3)[Y], (1, Y[1] - 1), 1.0)),
                              Raises(ValueError, r"cross_entropy needs one-hot \(or probability\) "
                                                 r"rows summing to 1; row 1 of Y sums to 2")),
    "one-hot row of zeros": ("ce", "Y", _y(lambda Y: _at(np.eye(3)[Y], 4, 0.0)), Raises(
        ValueError, r"row 4 of Y sums to 0")),
    "one-hot too narrow": ("ce", "Y", _y(lambda Y: np.eye(3)[Y][:, :2]), Raises(
        ValueError, r"Y has 2 columns but the network has 3 output\(s\) for loss "
                    r"'cross_entropy'")),
    "BCE target > 1": ("bce", "Y", _y(lambda Y: _at(Y, (1, 0), 1.5)), Raises(
        ValueError, r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[1, 0\] = 1\.5")),
    "BCE target < 0": ("bce", "Y", _y(lambda Y: _at(Y, (5, 0), -0.25)), Raises(
        ValueError, r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[5, 0\] = -0\.25")),
    "BCE targets bool": ("bce", "Y", _y(lambda Y: Y > 0.5),
                         Same(_y(lambda Y: (Y > 0.5).astype(F32)))),
    "BCE targets 1-D": ("bce", "Y", _y(lambda Y: Y[:, 0]), Same(_y(lambda Y: Y[:, None]))),
    "mse targets int": ("mse", "Y", _y(lambda Y: np.round(Y).astype(np.int32)),
                        Same(_y(lambda Y: np.round(Y).astype(F32)))),
    "mse targets float16": ("mse", "Y", _y(lambda Y: Y.astype(F16)),
                            Same(_y(lambda Y: Y.astype(F32)))),
    "Y 1-D for 3 outputs": ("mse", "Y", _y(lambda Y: Y[:, 0]), Raises(
        ValueError, r"Y has shape \(6,\) but the network has 3 outputs; pass Y of shape "
                    r"\(6, 3\)")),
    "Y 3-D": ("mse", "Y", _y(lambda Y: Y[:, :, None]), Raises(
        ValueError, r"Y must be 1-D or 2-D, got shape \(6, 3, 1\)")),
    "Y None": ("mse", "Y", _y(lambda Y: None), Raises(
        TypeError, r"Y must be a numeric array, got NoneType")),
    "Y complex": ("mse", "Y", _y(lambda Y: Y.astype(np.complex64)), Raises(
        TypeError, r"Y must be real, got dtype complex64")),
    "Y overflows float32": ("mse", "Y", _y(lambda Y: _at(Y, (2, 0), 1e39)), Raises(
        ValueError, r"Y has 1 value\(s\) too large for the parameters' dtype float32")),
    # --- params ----------------------------------------------------------------------------
    "params W NaN": ("mse", "all", _set_leaf(1, "W", (2, 0), jnp.nan), {
        **{f: Raises(ValueError, r"params\[1\]\.W has a non-finite value nan at index \(2, 0\)")
           for f in X_FUNCS + BATCH_FUNCS},
        "prepare_targets": Same(lambda *a: a)}),  # reads only the params' shapes and dtype
    "params b inf": ("ce", "all", _set_leaf(0, "b", 3, -jnp.inf), {
        **{f: Raises(ValueError, r"params\[0\]\.b has a non-finite value -inf at index \(3,\)")
           for f in X_FUNCS + BATCH_FUNCS},
        "prepare_targets": Same(lambda *a: a)}),
    "params float16": ("ce", "all", _params_dtype(F16), Close(F16)),
    "params bfloat16": ("bce", "all", _params_dtype(BF16), Close(BF16)),
    "params float64": ("mse", "all", _params_dtype(F64), Close(F64)),
    "params as a list": ("ce", "all", lambda p, X, Y, loss: (list(p), X, Y, loss),
                         Same(lambda p, X, Y, loss: (tuple(p), X, Y, loss))),
    "params mixed dtypes (b float64)": (
        "ce", "all", lambda p, X, Y, loss: _replace_layer(1, b=p[1].b.astype(F64))(p, X, Y, loss),
        Raises(TypeError, r"all parameters must share one dtype: params\[1\]\.b is float64 but "
                          r"params\[0\]\.W is float32")),
    "params mixed dtypes (layers)": (
        "mse", "all", lambda p, X, Y, loss: (p[:1] + _cast(p[1:], F64), X, Y, loss),
        Raises(TypeError, r"params\[1\]\.W is float64 but params\[0\]\.W is float32")),
    "params int W": ("ce", "all", lambda p, X, Y, loss: (_cast(p, np.int32), X, Y, loss),
                     Raises(TypeError, r"params\[0\]\.W must be floating point, got int32")),
    "params unknown activation": ("ce", "all", _replace_layer(0, activation="gelu"), Raises(
        ValueError, r"params\[0\] has unknown activation 'gelu'")),
    "params softmax hidden": ("ce", "all", _replace_layer(0, activation="softmax"), Raises(
        ValueError, r"params\[0\] is a hidden layer with activation 'softmax'")),
    "params not Dense": ("ce", "all",
                         lambda p, X, Y, loss: (((p[0].W, p[0].b),) + p[1:], X, Y, loss),
                         Raises(TypeError, r"params\[0\] must be a Dense layer, got tuple")),
    "params empty": ("ce", "all", lambda p, X, Y, loss: ((), X, Y, loss), Raises(
        TypeError, r"params must be a non-empty tuple of Dense layers")),
    "params unchained": ("mse", "all", _replace_layer(1, W=jnp.zeros((5, 3), F32)), Raises(
        ValueError, r"params\[1\]\.W has fan_in 5 but params\[0\] has fan_out 4")),
    # --- loss names --------------------------------------------------------------------------
    "unknown loss": ("mse", "loss", lambda p, X, Y, loss: (p, X, Y, "hinge"), Raises(
        ValueError, r"unknown loss 'hinge'; valid names: \['mse', 'half_squared_error', "
                    r"'binary_cross_entropy', 'cross_entropy'\]")),
    "loss not a string": ("mse", "loss", lambda p, X, Y, loss: (p, X, Y, 3), Raises(
        TypeError, r"loss must be a string, one of \[.*\]; got 3")),
    "loss for another output": ("bce", "loss", lambda p, X, Y, loss: (p, X, Y, "cross_entropy"),
                                Raises(ValueError, r"loss 'cross_entropy' needs an output "
                                                   r"activation in \['softmax'\], but the output "
                                                   r"layer uses 'sigmoid'")),
}

TABLE = [(case, fn) for case, (_, scope, _, _) in CASES.items() for fn in SCOPES[scope]]


def _expected(case: str, fn: str):
    outcome = CASES[case][3]
    return outcome[fn] if isinstance(outcome, dict) else outcome


def _float_leaves_close(out, ref, dtype) -> None:
    """|out − ref| ≤ 64 eps(dtype) · max(1, max|ref|), leaf by leaf, for floating leaves
    (evaluate's accuracy excluded: a tie can flip a label in float16)."""
    eps = float(jnp.finfo(dtype).eps)
    flat_o = jax.tree_util.tree_flatten_with_path(out)[0]
    flat_r = jax.tree_util.tree_leaves(ref)
    assert len(flat_o) == len(flat_r)
    for (path, o), r in zip(flat_o, flat_r, strict=True):
        if "accuracy" in jax.tree_util.keystr(path):
            continue
        o64, r64 = np.asarray(o, F64), np.asarray(r, F64)
        if isinstance(o, jax.Array) and jnp.issubdtype(o.dtype, jnp.floating):
            assert o.dtype == dtype, (path, o.dtype)
        if not np.issubdtype(np.asarray(o).dtype, np.floating) and not isinstance(o, float):
            continue  # predict's labels
        scale = max(1.0, float(np.max(np.abs(r64)))) if r64.size else 1.0
        np.testing.assert_allclose(o64, r64, rtol=0, atol=64 * eps * scale, err_msg=str(path))


@pytest.mark.parametrize(("case", "fn"), TABLE, ids=[f"{c}|{f}" for c, f in TABLE])
def test_bad_input_table(case, fn, op_by_op):
    base, _, edit, _ = CASES[case]
    expected = _expected(case, fn)
    problem = _base(base)
    args = edit(*problem)
    run = FUNCTIONS[fn]
    if isinstance(expected, Raises):
        with pytest.raises(expected.exc, match=expected.regex) as info:
            run(*args)
        assert "/mlds_jax/" in str(info.traceback[-1].path)  # the library's own check
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent ComplexWarning, overflow or cast warnings
        out = run(*args)
    assert _finite(out)
    if isinstance(expected, Empty):
        assert all(leaf.shape[0] == 0 for leaf in _leaves(out))
    elif isinstance(expected, Same):
        ref = run(*expected.to(*args))
        assert _bit_identical(out, ref), (out, ref)
    else:  # Close: the same rounded inputs, computed in float64
        p, X, Y, loss = args
        X_rounded = np.asarray(jnp.asarray(X).astype(expected.dtype), F64)
        ref = run(_cast(p, F64), X_rounded, Y, loss)
        _float_leaves_close(out, ref, np.dtype(expected.dtype))


def test_bad_input_table_is_complete():
    """For every function the table holds both kinds of outcome (an error that names the
    fault and a working result), and the three scopes cover every function."""
    for fn in FUNCTIONS:
        outcomes = [_expected(c, f) for c, f in TABLE if f == fn]
        assert any(isinstance(o, Raises) for o in outcomes)
        assert any(not isinstance(o, Raises) for o in outcomes)
    assert set(FUNCTIONS) == set(X_FUNCS + Y_FUNCS + BATCH_FUNCS)


# --- hypothesis: random architectures, random faults ------------------------------------------
@st.composite
def bad_batches(draw):
    """(params, X, Y, loss, exception, regex): a random MLP and one random fault."""
    fault = draw(st.sampled_from(["features", "rows", "label_neg", "label_big", "label_frac",
                                  "onehot_sum", "bce_range", "nan_X", "inf_Y", "X_1d", "huge_X"]))
    n_in = draw(st.integers(1, 6))
    hidden = draw(st.lists(st.integers(1, 5), max_size=2))
    n = draw(st.integers(1, 9))
    if fault in ("label_neg", "label_big", "label_frac", "onehot_sum"):
        output, loss, n_out = "softmax", "cross_entropy", draw(st.integers(2, 5))
    elif fault == "bce_range":
        output, loss, n_out = "sigmoid", "binary_cross_entropy", draw(st.integers(1, 3))
    else:
        output, loss, n_out = "identity", "mse", draw(st.integers(1, 3))
    dtype = F32 if fault == "huge_X" else draw(st.sampled_from([F32, F64]))
    params = _cast(make_params(draw(st.integers(0, 99)), [n_in, *hidden, n_out], "tanh",
                               output), dtype)
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    X = rng.standard_normal((n, n_in))
    if loss == "cross_entropy":
        Y = rng.integers(0, n_out, size=n)
    elif loss == "binary_cross_entropy":
        Y = rng.uniform(size=(n, n_out))
    else:
        Y = rng.standard_normal((n, n_out))
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(0, n_in - 1))
    if fault == "features":
        d = draw(st.integers(0, 8).filter(lambda d: d != n_in))
        return (params, rng.standard_normal((n, d)), Y, loss, ValueError,
                rf"X has {d} features but the first layer expects fan_in = {n_in}")
    if fault == "rows":
        m = draw(st.integers(0, 12).filter(lambda m: m != n))
        Y = rng.standard_normal((m, n_out))
        return params, X, Y, loss, ValueError, rf"X has {n} rows but Y has {m}; they must match"
    if fault == "label_neg":
        Y[i] = draw(st.integers(-(2**40), -1))
        return (params, X, Y, loss, ValueError,
                rf"class labels must lie in \[0, {n_out}\) .*; Y\[{i}\] = {Y[i]} ")
    if fault == "label_big":
        Y[i] = draw(st.integers(n_out, 2**40))
        return (params, X, Y, loss, ValueError,
                rf"class labels must lie in \[0, {n_out}\) .*; Y\[{i}\] = {Y[i]} ")
    if fault == "label_frac":
        Yf = Y.astype(F64)
        Yf[i] += draw(st.sampled_from([0.5, 0.25, 1e-3, -0.75]))
        return (params, X, Yf, loss, ValueError,
                rf"Y holds class labels but Y\[{i}\] = {re.escape(str(Yf[i]))} is not an integer")
    if fault == "onehot_sum":
        Y1 = np.eye(n_out)[Y]
        Y1[i] *= draw(st.sampled_from([0.0, 0.5]))
        return (params, X, Y1, loss, ValueError,
                rf"rows summing to 1; row {i} of Y sums to {re.escape(str(Y1[i].sum()))}")
    if fault == "bce_range":
        k = draw(st.integers(0, n_out - 1))
        Y[i, k] = draw(st.sampled_from([-1e-3, 1.0 + 1e-6, 2.0, -7.0]))
        return (params, X, Y, loss, ValueError,
                rf"binary_cross_entropy targets must lie in \[0, 1\]; Y\[{i}, {k}\] = "
                rf"{re.escape(str(Y[i, k]))}")
    if fault == "nan_X":
        X[i, j] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return (params, X, Y, loss, ValueError,
                rf"X contains 1 non-finite value\(s\) \(NaN or inf\); first {X[i, j]} at index "
                rf"\({i}, {j}\)")
    if fault == "inf_Y":
        k = draw(st.integers(0, n_out - 1))
        Y[i, k] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return (params, X, Y, loss, ValueError,
                rf"Y contains 1 non-finite .*first {Y[i, k]} at index \({i}, {k}\)")
    if fault == "huge_X":  # finite in float64, past float32's max: params are float32 here
        X[i, j] = draw(st.sampled_from([1e39, -1e300, 3.5e38]))
        return (params, X, Y, loss, ValueError,
                rf"X has 1 value\(s\) too large for the parameters' dtype float32 .*; first "
                rf"{re.escape(str(X[i, j]))} at index \({i}, {j}\)")
    return (params, X[0], Y, loss, ValueError,
            rf"X must be 2-D \(N, n_features\), got shape \({n_in},\)")


@given(case=bad_batches(), fn=st.sampled_from(BATCH_FUNCS))
def test_bad_random_batches_hypothesis(case, fn):
    """Random shapes, random faults, random positions and values: every batch function names
    the fault (all of these are found before anything is traced or compiled)."""
    params, X, Y, loss, exc, regex = case
    with pytest.raises(exc, match=regex):
        FUNCTIONS[fn](params, X, Y, loss)


# --- optimizers, optimizer state, fit's own arguments ----------------------------------------
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
    params, X, Y, loss = _base("ce")
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
    params, X, Y, loss = _base("ce")
    opt = optax.sgd(0.1, momentum=0.9)
    bad = {"None": None,
           "another optimizer's": optax.sgd(0.1).init(params),
           "other params'": opt.init(_base("ce", dtype=F32)[0][:1]),
           "a dict": {}}[state]
    step = mj.make_train_step(opt, loss)
    with pytest.raises(TypeError, match=r"opt_state does not match this step's optimizer and "
                                        r"params: pass optimizer\.init\(params\)"):
        step(params, bad, X, Y)
    step(params, opt.init(params), X, Y)  # the right state works


def test_bad_fit_callback_is_rejected_before_training(op_by_op):
    params, X, Y, loss = _base("mse")
    with pytest.raises(TypeError, match=r"on_epoch_end must be callable\(epoch, metrics\), "
                                        r"got str"):
        mj.fit(params, X, Y, optimizer=optax.sgd(0.1), on_epoch_end="print", progress=False)


def test_bad_names_for_activations_losses_and_sizes(key):
    with pytest.raises(ValueError, match=r"unknown hidden activation 'gelu'"):
        mj.init_mlp(key, [3, 2], hidden="gelu")
    with pytest.raises(ValueError, match=r"unknown output activation None"):
        mj.init_mlp(key, [3, 2], output=None)
    with pytest.raises(TypeError, match=r"sizes must be a sequence of ints like \[4, 8, 3\], "
                                        r"got '32'"):
        mj.init_mlp(key, "32")
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; valid names"):
        mj.activations.get_activation("gelu")
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'"):
        mj.evaluate(_base("mse")[0], _base("mse")[1], _base("mse")[2], "hinge")


# --- dtype table for the other families: descent, checkpoints, data helpers ---------------------
X0 = [3.0, 3.0]


@pytest.mark.parametrize(("dtype", "outcome"), [
    (np.int32, TypeError), (np.bool_, TypeError), (F16, "ok"), (BF16, "ok")])
def test_bad_descent_dtypes(dtype, outcome):
    """x0 sets the working dtype of gradient descent (it is not cast): floats of every width
    work (float32/64: test_descent), integers and bools are a TypeError.
    max_stable_step_size agrees (its eigenvalues are taken in float64: LAPACK has no
    float16/bfloat16 solver)."""
    x0 = jnp.asarray(np.asarray(X0).astype(dtype))
    if outcome is TypeError:
        with pytest.raises(TypeError, match=r"x0 must be a floating-point vector"):
            mj.gradient_descent(mj.quadratic_example, x0)
        with pytest.raises(TypeError, match=r"x must be a floating-point vector"):
            mj.max_stable_step_size(mj.quadratic_example, x0)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no "overflow encountered in cast" in float16
        res = mj.gradient_descent(mj.quadratic_example, x0, step_size=0.2, max_iter=60)
        eta = mj.max_stable_step_size(mj.quadratic_example, x0)
    eps = float(jnp.finfo(dtype).eps)
    assert res.x.dtype == dtype and np.all(np.isfinite(np.asarray(res.x, F64)))
    assert np.max(np.abs(np.asarray(res.x, F64))) < max(1e-3, 100 * eps)
    assert eta == pytest.approx(2 / (5 + math.sqrt(10)), rel=1e-12)  # the Hessian is exact


@pytest.mark.parametrize(("x0", "step", "exc", "regex"), [
    (None, 0.1, TypeError, r"x0 must be a floating-point vector, got NoneType"),
    ("ab", 0.1, TypeError, r"x0 must be a floating-point vector, got str"),
    ([[1.0, 2.0], [3.0]], 0.1, TypeError, r"x0 must be a floating-point vector, got list"),
    (X0, "0.1", TypeError, r"step_size must be a real number, got '0\.1'"),
    (X0, None, TypeError, r"step_size must be a real number, got None"),
    ([3.0, np.nan], 0.1, ValueError, r"x0 must be finite"),
])
def test_bad_descent_arguments(x0, step, exc, regex):
    with pytest.raises(exc, match=regex):
        mj.gradient_descent(mj.quadratic_example, x0, step_size=step)


def test_bad_descent_tolerance_strings():
    with pytest.raises(TypeError, match=r"tol_f must be a real number, got '1e-3'"):
        mj.gradient_descent(mj.quadratic_example, jnp.asarray(X0), tol_f="1e-3")


@pytest.mark.parametrize(("dtype", "outcome"), [
    (F16, "ok"), (F32, "ok"), (F64, "ok"),
    (BF16, r"params\[0\]\.W has dtype bfloat16; checkpoints hold \['float16', 'float32', "
           r"'float64'\]")])
def test_bad_checkpoint_dtypes(tmp_path, dtype, outcome):
    params = _base("ce", dtype=dtype)[0]
    path = tmp_path / "m.npz"
    if outcome != "ok":
        with pytest.raises(TypeError, match=outcome):
            mj.save(path, params)
        assert not path.exists()
        return
    mj.save(path, params)
    assert _bit_identical(mj.load(path), params)
    # load casts to any floating dtype on request, bfloat16 included; never to an integer
    as_bf16 = mj.load(path, dtype=jnp.bfloat16)
    assert _bit_identical(as_bf16, _cast(params, BF16))
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype, got int32"):
        mj.load(path, dtype=np.int32)


def test_bad_checkpoint_params(tmp_path):
    params = _base("ce")[0]
    path = tmp_path / "m.npz"
    with pytest.raises(TypeError, match=r"all parameters must share one dtype"):
        mj.save(path, (params[0], dataclasses.replace(params[1], b=params[1].b.astype(F64))))
    with pytest.raises(ValueError, match=r"refusing to save checkpoint .*params\[0\]\.W has 1 "
                                         r"non-finite value"):
        mj.save(path, _set_leaf(0, "W", (0, 0), jnp.nan)(params, None, None, None)[0])
    with pytest.raises(TypeError, match=r"params must be a non-empty tuple"):
        mj.save(path, "params")
    mj.save(path, list(params))  # a list of layers is saved like the tuple, loaded as a tuple
    assert _bit_identical(mj.load(path), params)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("dtype", [np.int32, BF16, F16, F32, F64])
def test_bad_dataset_dtypes(dtype):
    """The numpy-side data helpers work in numpy's floats.  As an output dtype (load_dataset,
    one_hot) only float16/32/64 are accepted; standardize takes integer data too (statistics
    in float64, float64 out) but not bfloat16, JAX's type (cast later, or let the network cast
    X to its params' dtype)."""
    X = np.arange(12.0).reshape(4, 3)
    name = np.dtype(dtype).name
    if dtype in (np.int32, BF16):
        regex = rf"dtype must be a floating dtype \(e\.g\. np\.float32\), got {name}"
        with pytest.raises(TypeError, match=regex):
            mj.load_dataset("iris", dtype=dtype)
        with pytest.raises(TypeError, match=regex):
            mj.one_hot(np.array([0, 2]), 3, dtype=dtype)
    else:
        ds = mj.load_dataset("iris", dtype=dtype)
        assert ds.X_train.dtype == dtype and np.all(np.isfinite(ds.X_train))
        assert mj.one_hot(np.array([0, 2]), 3, dtype=dtype).dtype == dtype
    if dtype == BF16:
        with pytest.raises(TypeError, match=r"X_train must be a numeric array, got dtype "
                                            r"bfloat16"):
            mj.standardize(X.astype(dtype))
        return
    Xs, _, _, _ = mj.standardize(X.astype(dtype))
    assert Xs.dtype == (F64 if dtype == np.int32 else dtype) and np.all(np.isfinite(Xs))
    np.testing.assert_allclose(Xs.astype(F64).mean(axis=0), 0, atol=1e-3)


@pytest.mark.parametrize(("call", "exc", "regex"), [
    (lambda: mj.one_hot(np.array([0, 1], np.complex64), 3), TypeError,
     r"labels must be integers, got dtype complex64"),
    (lambda: mj.one_hot(np.array([0.0, 2.5]), 3), ValueError, r"label 2\.5 at index 1 is not an "
                                                              r"integer"),
    (lambda: mj.one_hot(np.array([0, 3]), 3), ValueError, r"label 3 at index 1 is out of range"),
    (lambda: mj.one_hot(np.array([True, False]), 3), TypeError, r"labels must be integers"),
    (lambda: mj.standardize(np.ones((3, 2), np.complex128)), TypeError,
     r"X_train must be real, got dtype complex128"),
    (lambda: mj.standardize(np.ones((3, 2)), np.ones((2, 2), np.complex64)), TypeError,
     r"X_test must be real"),
    (lambda: mj.standardize(np.zeros((0, 2))), ValueError, r"X_train is empty \(0 rows\)"),
    (lambda: mj.standardize(np.ones(3)), ValueError, r"X_train must be 2-D"),
    (lambda: mj.load_dataset("mnist"), ValueError, r"unknown dataset 'mnist'; valid names"),
    (lambda: mj.load_dataset("iris", test_size="0.2"), TypeError, r"test_size must be a float"),
])
def test_bad_data_helper_input(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()


def test_bad_data_helpers_on_one_row():
    """N = 1: standardize maps the single row to 0 (std 1 for a constant column)."""
    Xs, _, mean, std = mj.standardize(np.array([[1.0, -2.0, 3.0]]))
    np.testing.assert_array_equal(Xs, 0.0)
    np.testing.assert_array_equal(std, 1.0)


@pytest.mark.parametrize(("args", "exc", "regex"), [
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), 0), ValueError, r"multiple must be >= 1"),
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), -2), ValueError, r"multiple must be >= 1"),
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), 1.5), TypeError, r"multiple must be an int"),
    ((jnp.zeros((0, 2)), jnp.zeros((0, 1)), 2), ValueError, r"X is empty \(0 rows\)"),
    ((jnp.zeros((3, 2)), jnp.zeros((3,)), 2), ValueError, r"pad_rows needs 2-D Y"),
    ((jnp.zeros(3), jnp.zeros((3, 1)), 2), ValueError, r"pad_rows needs 2-D X"),
    ((jnp.zeros((3, 2)), jnp.zeros((4, 1)), 2), ValueError, r"X has 3 rows but Y has 4"),
    ((jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 1)), 2), TypeError,
     r"pad_rows needs floating-point X, got int32"),
])
def test_bad_pad_rows(args, exc, regex):
    with pytest.raises(exc, match=regex):
        mj.pad_rows(*args)


@pytest.mark.parametrize("dtype", [F16, BF16, F32, F64])
def test_bad_pad_rows_dtypes_work(dtype):
    X = jnp.arange(6.0, dtype=dtype).reshape(3, 2)
    Xp, Yp, w = mj.pad_rows(X, jnp.ones((3, 1), dtype), 2)
    assert Xp.shape == (4, 2) and Yp.shape == (4, 1) and w.dtype == dtype
    np.testing.assert_allclose(np.asarray(w, F64), [1 / 3] * 3 + [0],
                               rtol=4 * float(jnp.finfo(dtype).eps))


def test_bad_mesh_arguments():
    with pytest.raises(ValueError, match=r"needs at least one device, got none"):
        mj.data_parallel_mesh([])
    with pytest.raises(TypeError, match=r"devices must be jax\.Device objects .*got str 'c'"):
        mj.data_parallel_mesh("cpu")
    params, X, Y, _ = _base("mse")
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        mj.fit(params, X, Y, optimizer=optax.sgd(0.1), mesh="cpu", progress=False)
    assert mj.data_parallel_mesh().axis_names == ("batch",)


# --- the CLI: one line, exit 2 -----------------------------------------------------------------
@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--lr", "inf"], "--lr: must be a finite number > 0, got 'inf'"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--seed", "-1"], "--seed: must lie in [0, 2**32), got '-1'"),
    (["train", "--seed", "1.5"], "--seed: expected an int"),
    (["gradcheck", "--seed", "-1"], "--seed: must lie in [0, 2**32)"),
    (["evaluate", "--checkpoint", "m.npz", "--seed", "4294967296"], "--seed"),
    (["gradcheck", "--batch", "inf"], "--batch"),
    (["gradcheck", "--sizes", "3,0,2"], "--sizes"),
    (["gradcheck", "--activation", "softmax"], "--activation"),
    (["gradcheck", "--output", "identity", "--loss", "cross_entropy"], "softmax"),
    (["train", "--loss", "hinge"], "--loss"),
])
def test_bad_cli_values_exit_2_with_one_line(argv, needle):
    rc, out, err = _run_cli(argv)
    assert rc == 2
    line = _one_error_line(err)
    assert "error" in line and needle in line
    assert out == ""


# === 2. numerics at the edges ===
def _one_layer(W, output, dtype):
    W = jnp.asarray(W, dtype)
    return (mj.Dense(W=W, b=jnp.zeros((W.shape[1],), dtype), activation=output),)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("z", [1e4, -1e4])
def test_edge_bce_logits_1e4(dtype, z):
    """Z = ±1e4 (X = 1, W = z): ℓ = y softplus(−z) + (1 − y) softplus(z), from the logits, so
    finite and exact: 0 for the right label, |z| for the wrong one.  The fused δ = σ(z) − y
    and jax.grad are exact (0 or ±1); the general path's dL/dŶ = −y/ŷ + (1−y)/(1−ŷ) divides
    by ŷ = 0 or 1 − ŷ = 0: NaN, the documented limit of the unfused path."""
    params, X = _one_layer([[z]], "sigmoid", dtype), np.ones((1, 1))
    for y in (0.0, 1.0):
        Y = np.array([[y]])
        wrong = (z > 0) != (y == 1.0)
        value = mj.loss(params, X, Y, "binary_cross_entropy")
        assert value.dtype == dtype and float(value) == (abs(z) if wrong else 0.0)
        fused = mj.manual_grads(params, X, Y, "binary_cross_entropy")
        expected = (1.0 if z > 0 else 0.0) - y
        assert float(fused[0].W[0, 0]) == expected and float(fused[0].b[0]) == expected
        assert _exactly_equal(fused, mj.autodiff_grads(params, X, Y, "binary_cross_entropy"))
        general = mj.manual_grads(params, X, Y, "binary_cross_entropy", fused=False)
        assert np.isnan(np.asarray(general[0].W)).all()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_edge_cross_entropy_logits_1e4(dtype):
    """Z = (1e4, −1e4, 0): log-softmax = Z − 1e4, so ℓ = 0, 2e4, 1e4 for labels 0, 1, 2,
    exactly; fused δ = softmax(Z) − y = (1, 0, 0) − y, equal to jax.grad; general path NaN."""
    params, X = _one_layer([[1e4, -1e4, 0.0]], "softmax", dtype), np.ones((1, 1))
    for label, expected in [(0, 0.0), (1, 2e4), (2, 1e4)]:
        y = np.array([label])
        value = mj.loss(params, X, y, "cross_entropy")
        assert value.dtype == dtype and float(value) == expected
        fused = mj.manual_grads(params, X, y, "cross_entropy")
        np.testing.assert_array_equal(fused[0].W[0], np.array([1.0, 0, 0]) - np.eye(3)[label])
        assert _exactly_equal(fused, mj.autodiff_grads(params, X, y, "cross_entropy"))
        general = mj.manual_grads(params, X, y, "cross_entropy", fused=False)
        assert np.isnan(np.asarray(general[0].W)).any()
    # the whole batch at once: the mean of the three
    assert float(mj.loss(params, np.ones((3, 1)), np.arange(3), "cross_entropy")) == \
        pytest.approx(1e4, rel=float(jnp.finfo(dtype).eps))


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
    params = _one_layer([[1e10]], "sigmoid", F32)
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
    assert history.stop_reason == "diverged" and _bit_identical(fitted, params)
    # softmax: [inf, -inf] logits; the wrongly classified row of the identity output: inf
    softmax = _one_layer([[1e10, -1e10]], "softmax", F32)
    with pytest.raises(ValueError, match=r"the loss is nan .*overflowed float32"):
        mj.loss(softmax, X, np.array([0, 1]), "cross_entropy")
    identity = _one_layer([[1e10]], "identity", F32)
    with pytest.raises(ValueError, match=r"the loss is inf .*overflowed float32"):
        mj.loss(identity, X, np.zeros((2, 1)), "mse")


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
        params = _one_layer([[z]], "sigmoid", dtype)
    A = np.asarray(mj.forward(params, X), F64)
    assert np.any(A == 1.0) and np.all((A == 1.0) | (A < 1e-8))  # saturated
    fused = mj.manual_grads(params, X, Y, "binary_cross_entropy")
    auto = mj.autodiff_grads(params, X, Y, "binary_cross_entropy")
    assert _finite(fused) and _finite(auto)
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
    assert float(act_grad) == float(mj.ACTIVATIONS[hidden].prime(jnp.zeros(()))) == \
        (0.0 if hidden == "relu" else 1.0)
    deltas = mj.backward_deltas(params, X, Y, "mse")
    upstream = np.asarray(deltas[1]) @ np.asarray(params[1].W).T
    np.testing.assert_array_equal(np.asarray(deltas[0])[Z == 0], float(act_grad) *
                                  upstream[Z == 0])
    manual = mj.manual_grads(params, X, Y, "mse")
    auto = mj.autodiff_grads(params, X, Y, "mse")
    for m, a in zip(_leaves(manual), _leaves(auto), strict=True):
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


@pytest.mark.parametrize("dtype", [F32, F64])
def test_edge_mse_with_huge_targets(dtype):
    """Targets ~1e6: L ~ 1e12, finite in float32 (max 3.4e38); manual and jax.grad agree
    relative to the gradient's scale (the suite's rtol for the dtype)."""
    params, X, Y = make_problem(5, [3, 4, 3], "tanh", "identity", "mse", 6, jnp.float64)
    params = _cast(params, dtype)
    Y = 1e6 * np.asarray(Y)
    value = float(mj.loss(params, X, Y, "mse"))
    assert math.isfinite(value) and value == pytest.approx(np.mean(
        (np.asarray(mj.forward(params, X), F64) - Y) ** 2), rel=1e-5 if dtype == F32 else 1e-12)
    manual, auto = mj.manual_grads(params, X, Y, "mse"), mj.autodiff_grads(params, X, Y, "mse")
    assert _finite(manual) and _finite(auto)
    rtol = 1e-5 if dtype == F32 else 1e-12
    for m, a in zip(_leaves(manual), _leaves(auto), strict=True):
        scale = float(np.max(np.abs(a.astype(F64))))
        assert scale > 1e3  # huge gradients, as they should be
        assert np.max(np.abs(m.astype(F64) - a.astype(F64))) <= rtol * scale


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
    assert _finite(fitted) and fitted[0].W.dtype == F32


# === 3. faults ===
class _InterruptedFile:
    """A file object whose write puts half the bytes on disk, then raises KeyboardInterrupt
    (Ctrl-C in the middle of the write)."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data[: len(data) // 2]))
        self.real.flush()
        raise KeyboardInterrupt

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_fault_keyboard_interrupt_midway_through_the_bytes(tmp_path):
    """test_checkpoint interrupts while the archive is built in memory, or at fsync or the
    rename; here half of the archive is already in the temporary file when Ctrl-C arrives."""
    path = tmp_path / "model.npz"
    old = _base("ce")[0]
    mj.save(path, old)
    raw = path.read_bytes()
    real_fdopen = checkpoint.os.fdopen
    written = []

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)
        written.append(f)
        return _InterruptedFile(f)

    with _patching() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(checkpoint.os, "fdopen", fdopen)
        mj.save(path, _cast(old, F64))
    assert len(written) == 1 and written[0].closed
    assert path.read_bytes() == raw  # the previous checkpoint, byte for byte
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # the half-written temp file is gone
    assert _bit_identical(mj.load(path), old)


def _future_checkpoint(path, version):
    """A checkpoint whose header says ``format_version = version``, checksums recomputed."""
    params = _base("ce")[0]
    leaves, _ = checkpoint._params_to_numpy(params, False, str(path))
    header = {"format": checkpoint.FORMAT_NAME, "format_version": version,
              "library_version": "9.0.0", "n_layers": len(params),
              "layer_sizes": mj.layer_sizes(params),
              "activations": [p.activation for p in params], "dtype": "float32",
              "byteorder": "little", "leaves": [{"key": k, "shape": list(a.shape)}
                                                for k, a in leaves],
              "metadata": {"dataset": "iris"}}
    header["sha256"] = checkpoint._content_digest(header, leaves)
    head = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path.write_bytes(checkpoint._archive_bytes([("__header__", head), *leaves]))
    return path


def test_fault_checkpoint_from_a_future_version(tmp_path):
    """load: a clear ValueError; the CLI: exit 2 and that message on one line."""
    assert mj.load(_future_checkpoint(tmp_path / "v1.npz", 1))  # the forger is faithful
    path = _future_checkpoint(tmp_path / "v7.npz", 7)
    regex = (r"checkpoint .*v7\.npz has format version 7, newer than this mlds_jax reads "
             r"\(1\); upgrade mlds_jax")
    with pytest.raises(ValueError, match=regex):
        mj.load(path)
    rc, out, err = _run_cli(["evaluate", "--checkpoint", str(path)])
    assert rc == 2 and out == ""
    assert re.search(regex, _one_error_line(err))


def test_fault_cli_interrupted_training_writes_nothing(tmp_path):
    """Ctrl-C during training: exit status 130, one line, and no model.npz/history in --out
    (nothing half-written: outputs are only written after training)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out_dir = tmp_path / "run"
    with _patching() as mp:
        mp.setattr(mj, "fit", interrupted)
        rc, out, err = _run_cli(["train", "--dataset", "iris", "--epochs", "1", "--optimizer",
                                 "sgd", "--no-progress", "--out", str(out_dir)])
    assert rc == 130
    assert _one_error_line(err) == "mlds-jax train: interrupted"
    assert os.listdir(out_dir) == []


# === 4. determinism ===
@pytest.mark.parametrize(("grads", "dtype"), [("manual", F32), ("autodiff", F64)])
def test_determinism_fit_same_key_bit_identical(grads, dtype):
    """Same key: bit-identical params and history (every float, "time" aside), for both
    gradient sources (test_training checks the float64 manual case; this adds float32 manual
    and float64 autodiff)."""
    params, X, y, _ = _base("ce", n=10, dtype=dtype)

    def run():
        fitted, history = mj.fit(params, X, y, optimizer=optax.sgd(0.1, momentum=0.9),
                                 epochs=3, batch_size=4, key=jax.random.key(11), grads=grads,
                                 validation_data=(X[:4], y[:4]), progress=False)
        return fitted, {k: v for k, v in history.items() if k != "time"}

    (p1, h1), (p2, h2) = run(), run()
    assert _bit_identical(p1, p2)
    assert h1 == h2 and set(h1) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_determinism_every_entry_point_repeats_bit_for_bit():
    params, X, y, loss = _base("ce")
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, loss)
    for fn in (lambda: mj.manual_grads(params, X, y, loss),
               lambda: mj.manual_grads(params, X, y, loss, fused=False),
               lambda: mj.autodiff_grads(params, X, y, loss),
               lambda: mj.backward_deltas(params, X, y, loss),
               lambda: step(params, opt.init(params), X, y)[:2],
               lambda: mj.init_mlp(jax.random.key(3), [3, 5, 2])):
        assert _bit_identical(fn(), fn())


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
    assert _bit_identical(manual[0].b, auto[0].b)
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
        for m, a in zip(_leaves(manual), _leaves(auto), strict=True):
            differed |= not np.array_equal(m, a)
            assert np.max(np.abs(m - a)) <= 1e-15 * np.max(np.abs(a))
    assert differed


@contextlib.contextmanager
def _compilations():
    """Names of the XLA backend compilations (jax.monitoring events) inside the block."""
    names: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _counting_epochs(mp) -> list[int]:
    """Count traces of fit's epoch function (a Python side effect runs only while tracing)."""
    traces: list[int] = []
    real = training._make_epoch

    def make_epoch(*args, **kwargs):
        inner = real(*args, **kwargs)

        @functools.wraps(inner)
        def epoch(*a):
            traces.append(1)
            return inner(*a)

        return epoch

    mp.setattr(training, "_make_epoch", make_epoch)
    return traces


@pytest.mark.parametrize("grads", ["manual", "autodiff"])
def test_determinism_no_recompilation_across_epochs(grads):
    """One fit of 8 epochs traces its epoch function once and compiles exactly one XLA
    program, the epoch (each fit jits a new one; the small helpers were compiled by the
    warm-up run with the same shapes)."""
    params, X, y, _ = _base("ce", n=10)
    kwargs = dict(optimizer=optax.sgd(0.1), epochs=8, batch_size=4, grads=grads,
                  validation_data=(X[:3], y[:3]), progress=False)
    mj.fit(params, X, y, **kwargs)  # warm-up: the helpers' compilations
    with _patching() as mp, _compilations() as compiled:
        traces = _counting_epochs(mp)
        _, history = mj.fit(params, X, y, **kwargs)
    assert len(history["loss"]) == 8
    assert len(traces) == 1
    assert compiled == ["jit(epoch)"]


def test_determinism_the_recompile_counters_do_detect_recompiles():
    """Negative controls for the two instruments above: a train step fed a new batch shape
    each "epoch" recompiles every time, and both the monitoring listener and a trace counter
    see it; fit on a second data size traces its epoch again."""
    params, X, y, loss = _base("ce", n=10)
    opt = optax.sgd(0.1)
    step = mj.make_train_step(opt, loss)
    state = opt.init(params)
    with _compilations() as compiled:
        for n in (9, 8, 7):
            params, state, _ = step(params, state, X[:n], y[:n])
    assert step.trace_count == 3
    assert compiled.count("jit(traced)") == 3, compiled
    with _patching() as mp, _compilations() as compiled:
        traces = _counting_epochs(mp)
        for n in (10, 9):
            mj.fit(params, X[:n], y[:n], optimizer=opt, epochs=2, progress=False)
    assert len(traces) == 2 and compiled.count("jit(epoch)") == 2


# === 5. the gradcheck ===


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
def test_gradcheck_every_output_loss_pair_and_depth(output, loss, depth, op_by_op):
    """float32 params in, a float64 report out, for every (output, loss) pair the library
    supports, depths 1-3, fused and general paths (one path where the pair has no fused δ):
    per-leaf max |abs| and relative errors,
    central differences on 4 entries of every leaf, a PASS verdict."""
    sizes = [3] + [4] * (depth - 1) + [3]
    params, X, Y = make_problem(depth, sizes, "tanh", output, loss, 6, jnp.float32)
    X_rounded = np.asarray(X, F64)  # X as the float32 network sees it
    L64 = float(mj.loss(_cast(params, F64), X_rounded, Y, loss))
    has_fused_form = output in mj.LOSSES[loss].fused
    for fused in (True, False) if has_fused_form else (True,):
        report = mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=4)
        assert report.ok, str(report)
        assert report.dtype == "float64" and report.loss == loss
        assert report.loss_value == pytest.approx(L64, rel=1e-14)  # the float64 loss
        assert len(report.leaves) == 2 * depth
        for leaf, p in zip(report.leaves, _leaves(params), strict=True):
            assert leaf.shape == p.shape and leaf.n_fd == min(p.size, 4)
            assert leaf.ok and leaf.max_abs_autodiff <= 1e-15 and leaf.max_abs_fd <= 1e-9
            assert leaf.max_rel_autodiff <= 1e-12 or leaf.max_abs_autodiff == 0
        assert str(report).splitlines()[-1].startswith("PASS")


LOSS_OUTPUT = {"mse": "identity", "half_squared_error": "sigmoid",
               "binary_cross_entropy": "sigmoid", "cross_entropy": "softmax"}


def _off_by(mp, loss: str, factor: float) -> None:
    """Replace a loss's hand-derived dL/dŶ (general path) and its fused δ by factor × them;
    the loss value (so jax.grad and finite differences) stays right."""
    spec = losses_module.LOSSES[loss]

    def scaled(f):
        return lambda A, Y: factor * f(A, Y)

    mp.setitem(losses_module.LOSSES, loss, dataclasses.replace(
        spec, term_dA=scaled(spec.term_dA),
        term_fused={k: scaled(f) for k, f in spec.term_fused.items()}))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUT))
def test_gradcheck_detects_a_dA_off_by_one_percent(loss, fused, op_by_op):
    """test_autodiff catches mse's missing factor 2; a 1% error in any loss's derivative, on
    either path, fails every leaf (it scales every gradient), with max rel error 0.01."""
    output = LOSS_OUTPUT[loss]
    params, X, Y = make_problem(4, [3, 4, 3], "tanh", output, loss, 6)
    assert mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=3).ok
    with _patching() as mp:
        _off_by(mp, loss, 1.01)
        report = mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=3)
    assert not report.ok and not any(leaf.ok for leaf in report.leaves)
    assert report.max_rel_autodiff == pytest.approx(0.01, rel=1e-6)
    for leaf in report.leaves:
        assert leaf.max_rel_fd == pytest.approx(0.01, rel=1e-3)
    rows = str(report).splitlines()
    assert [row.split()[-1] for row in rows[2:-1]] == ["NO"] * 4
    assert rows[-1].startswith("FAIL")


def test_gradcheck_clear_verdict_when_the_general_path_is_nan(op_by_op):
    """Saturated sigmoid + BCE: the general path's δ is NaN; the report does not crash or
    pass, it fails exactly the leaves that depend on the NaN δ (NaN abs error, marked NO)."""
    params = _one_layer([[40.0]], "sigmoid", F64)
    X, Y = np.array([[1.0], [-1.0]]), np.array([[0.0], [1.0]])
    assert mj.check_grads(params, X, Y, "binary_cross_entropy").ok
    report = mj.check_grads(params, X, Y, "binary_cross_entropy", fused=False)
    assert not report.ok
    assert all(math.isnan(leaf.max_abs_autodiff) and not leaf.ok for leaf in report.leaves)
    assert "FAIL" in str(report) and report.to_dict()["ok"] is False


@pytest.mark.parametrize("dtype", [F16, BF16])  # float32: the pairs test above
def test_gradcheck_low_precision_params_are_reported_in_float64(dtype, op_by_op):
    """Any params dtype the library supports goes in; the check runs on their float64 values
    (a float16 network's gradient is checked as mathematics, not as float16 arithmetic)."""
    params, X, Y = make_problem(7, [3, 4, 3], "tanh", "softmax", "cross_entropy", 6)
    params = _cast(params, dtype)
    report = mj.check_grads(params, X, Y, "cross_entropy")
    assert report.ok and report.dtype == "float64"
    X_rounded = np.asarray(jnp.asarray(X).astype(dtype), F64)
    assert report.loss_value == pytest.approx(
        float(mj.loss(_cast(params, F64), X_rounded, Y, "cross_entropy")), rel=1e-14)


def test_gradcheck_on_one_row_and_labels(op_by_op):
    params, X, Y = make_problem(8, [2, 3, 4], "relu", "softmax", "cross_entropy", 1)
    report = mj.check_grads(params, X, Y, "cross_entropy")
    assert report.ok and [leaf.n_fd for leaf in report.leaves] == [6, 3, 12, 4]
