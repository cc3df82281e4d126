"""The input contract of ``mlds_jax.validation``, checked through every public function.

The bad-input table runs each public function that takes (params, X and/or Y, loss) on a few
shared base problems (``helpers.BASES``) with one fault at a time, in the spirit of
scikit-learn's ``check_estimator``.  Each case either raises a ValueError/TypeError whose
message names the fault (raised by the library's own check), or gives a finite, correct
result.  The contract the table encodes, the same for every function that takes the argument:

- X is cast to the parameters' dtype: int, bool, float16, bfloat16 and float64 X all work
  and give bit for bit the result of ``X.astype(params dtype)``; a finite X that the cast
  would overflow (1e39 for float32, 7e4 for float16) is an error, as NaN/inf are.
- Y is cast the same way after the loss's checks (labels in [0, K) and integral, one-hot
  rows summing to 1, BCE targets in [0, 1]); class labels must be integers (bool is
  rejected, as by ``mj.datasets.one_hot``).
- params: float16, bfloat16, float32 and float64 work (results close to a float64 run of
  the same rounded inputs); all leaves must share one floating dtype; NaN/inf are errors.
- N = 0: the row-wise functions (forward, forward_cache, predict, prepare_targets) return
  empty (0, K) results; everything that averages over rows raises "X is empty".  N = 1
  works everywhere (a one-row regression's r2 is 1 for a perfect fit, else 0, as
  scikit-learn's ``r2_score`` on targets without variance).
- complex, string, None and ragged input: TypeError.

A hypothesis test adds random architectures with one random fault each, and a last test the
bad names of activations, losses and layer sizes.  The argument checks of the other families
live with their modules (test_training: optimizers and fit's arguments; test_descent,
test_io_checkpoint, test_datasets, test_parallel, test_cli).

The table runs under the ``op_by_op`` fixture (``jax.disable_jit``): hundreds of calls on a
few shared shapes, where every jitted fit or check_grads would compile programs of its own.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    BF16,
    F16,
    F32,
    F64,
    assert_reported_once,
    base_problem,
    bit_identical,
    cast_params,
    make_params,
    np_leaves,
    replace_layer,
    set_leaf,
    tree_is_finite,
)
from hypothesis import given
from hypothesis import strategies as st

import mlds_jax as mj


# --- the bad-input table ------------------------------------------------------------------------
def _step(p, X, Y, loss):
    opt = optax.sgd(0.1)
    new, _, metrics = mj.make_train_step(opt, loss)(p, opt.init(p), X, Y)
    return new, metrics["loss"]


def _fit(p, X, Y, loss):
    fitted, history = mj.fit(
        p,
        X,
        Y,
        loss=loss,
        optimizer=optax.sgd(0.1),
        epochs=1,
        batch_size=8,
        key=jax.random.key(0),
        progress=False,
    )
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
    "prepare_targets": lambda p, X, Y, loss: mj.network.prepare_targets(p, Y, loss),
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
SCOPES = {
    "X": X_FUNCS + BATCH_FUNCS,
    "Y": Y_FUNCS + BATCH_FUNCS,
    "loss": Y_FUNCS + BATCH_FUNCS,
    "all": tuple(FUNCTIONS),
}


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


def _params_dtype(dtype):
    return lambda p, X, Y, loss: (cast_params(p, dtype), X, Y, loss)


#: name -> (base problem, scope, edit(params, X, Y, loss), expected outcome or {function: ...}).
CASES: dict[str, tuple] = {
    # --- X ---------------------------------------------------------------------------------
    "X NaN": (
        "ce",
        "X",
        _x(lambda X: _at(X, (2, 1), np.nan)),
        Raises(
            ValueError,
            r"X contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index "
            r"\(2, 1\)",
        ),
    ),
    "X +inf": (
        "mse",
        "X",
        _x(lambda X: _at(X, (0, 2), np.inf)),
        Raises(ValueError, r"X contains 1 non-finite .*first inf at index \(0, 2\)"),
    ),
    "X -inf": (
        "bce",
        "X",
        _x(lambda X: _at(X, (5, 0), -np.inf)),
        Raises(ValueError, r"X contains 1 non-finite .*first -inf at index \(5, 0\)"),
    ),
    "X 1-D": (
        "ce",
        "X",
        _x(lambda X: X[0]),
        Raises(
            ValueError,
            r"X must be 2-D \(N, n_features\), got shape \(3,\); for one sample use "
            r"X\.reshape\(1, -1\)",
        ),
    ),
    "X 3-D": (
        "ce",
        "X",
        _x(lambda X: X[None]),
        Raises(ValueError, r"X must be 2-D \(N, n_features\), got shape \(1, 6, 3\)"),
    ),
    "X scalar": ("mse", "X", _x(lambda X: 1.5), Raises(ValueError, r"X must be 2-D.*shape \(\)")),
    "X too few features": (
        "ce",
        "X",
        _x(lambda X: X[:, :2]),
        Raises(ValueError, r"X has 2 features but the first layer expects fan_in = 3"),
    ),
    "X too many features": (
        "bce",
        "X",
        _x(lambda X: np.hstack([X, X])),
        Raises(ValueError, r"X has 6 features but the first layer expects fan_in = 3"),
    ),
    "X None": (
        "ce",
        "X",
        _x(lambda X: None),
        Raises(TypeError, r"X must be a numeric array, got NoneType"),
    ),
    "X strings": (
        "ce",
        "X",
        _x(lambda X: X.astype(str)),
        Raises(TypeError, r"X must be a numeric array, got dtype <U"),
    ),
    "X ragged list": (
        "ce",
        "X",
        _x(lambda X: [[1.0, 2.0, 3.0], [1.0, 2.0]]),
        Raises(TypeError, r"X must be a numeric array"),
    ),
    "X complex": (
        "mse",
        "X",
        _x(lambda X: X.astype(np.complex128)),
        Raises(TypeError, r"X must be real, got dtype complex128"),
    ),
    "X int32": (
        "ce",
        "X",
        _x(lambda X: np.round(3 * X).astype(np.int32)),
        Same(_x(lambda X: X.astype(F32))),
    ),
    "X nested lists of ints": (
        "mse",
        "X",
        _x(lambda X: np.round(3 * X).astype(int).tolist()),
        Same(_x(lambda X: np.asarray(X, F32))),
    ),
    "X bool": ("bce", "X", _x(lambda X: X > 0), Same(_x(lambda X: X.astype(F32)))),
    "X float16": ("ce", "X", _x(lambda X: X.astype(F16)), Same(_x(lambda X: X.astype(F32)))),
    "X bfloat16 (a jax array)": (
        "mse",
        "X",
        _x(lambda X: jnp.asarray(X, jnp.bfloat16)),
        Same(_x(lambda X: np.asarray(X).astype(F32))),
    ),
    "X float64 into float32 params": (
        "bce",
        "X",
        _x(lambda X: X),
        Same(_x(lambda X: X.astype(F32))),
    ),
    "X overflows float32": (
        "mse",
        "X",
        _x(lambda X: _at(X, (3, 1), -1e39)),
        Raises(
            ValueError,
            r"X has 1 value\(s\) too large for the parameters' dtype float32 "
            r"\(max 3\.403e\+38\); first -1e\+39 at index \(3, 1\)",
        ),
    ),
    "X overflows float16 params": (
        "ce",
        "X",
        lambda p, X, Y, loss: (cast_params(p, F16), _at(X, (1, 1), 7e4), Y, loss),
        Raises(ValueError, r"X has 1 value\(s\) too large for the parameters' dtype float16"),
    ),
    # one row of a classifier: test_autodiff.py::test_gradcheck_on_one_row_and_labels
    "N = 1 regression (r2 of one row)": (
        "mse",
        "all",
        lambda p, X, Y, loss: (p, X[:1], Y[:1], loss),
        Same(lambda p, X, Y, loss: (p, X, Y, loss)),
    ),
    "N = 0": (
        "ce",
        "all",
        lambda p, X, Y, loss: (p, X[:0], Y[:0], loss),
        {
            **{f: Empty() for f in X_FUNCS + Y_FUNCS},
            **{f: Raises(ValueError, r"^X is empty \(0 rows\)") for f in BATCH_FUNCS},
        },
    ),
    # --- Y ---------------------------------------------------------------------------------
    "Y NaN": (
        "mse",
        "Y",
        _y(lambda Y: _at(Y, (4, 1), np.nan)),
        Raises(
            ValueError,
            r"Y contains 1 non-finite value\(s\) \(NaN or inf\); first nan at index "
            r"\(4, 1\)",
        ),
    ),
    "Y -inf": (
        "mse",
        "Y",
        _y(lambda Y: _at(Y, (0, 0), -np.inf)),
        Raises(ValueError, r"Y contains 1 non-finite .*first -inf at index \(0, 0\)"),
    ),
    "Y NaN label": (
        "ce",
        "Y",
        _y(lambda Y: _at(Y, 3, np.nan)),
        Raises(ValueError, r"Y contains 1 non-finite .*first nan at index \(3,\)"),
    ),
    "Y rows != X rows": (
        "ce",
        "Y",
        _y(lambda Y: Y[:5]),
        {
            **{
                f: Raises(ValueError, r"X has 6 rows but Y has 5; they must match")
                for f in BATCH_FUNCS
            },
            "prepare_targets": Same(lambda p, X, Y, loss: (p, X, Y[:5], loss)),
        },
    ),  # takes no X
    "label < 0": (
        "ce",
        "Y",
        _y(lambda Y: _at(Y, 2, -1, np.int64)),
        Raises(
            ValueError,
            r"class labels must lie in \[0, 3\) for a network with 3 outputs; "
            r"Y\[2\] = -1 \(1 label\(s\) out of range\)",
        ),
    ),
    "label >= K": (
        "ce",
        "Y",
        _y(lambda Y: _at(_at(Y, 1, 3, np.int64), 4, 7, np.int64)),
        Raises(
            ValueError,
            r"class labels must lie in \[0, 3\) .*; Y\[1\] = 3 \(2 label\(s\) out of "
            r"range\)",
        ),
    ),
    "label non-integer": (
        "ce",
        "Y",
        _y(lambda Y: _at(Y, 1, 0.5)),
        Raises(ValueError, r"Y holds class labels but Y\[1\] = 0\.5 is not an integer"),
    ),
    "labels bool": (
        "ce",
        "Y",
        _y(lambda Y: Y > 0),
        Raises(TypeError, r"Y as class labels must be integers, got dtype bool"),
    ),
    "labels integral float16": (
        "ce",
        "Y",
        _y(lambda Y: Y.astype(F16)),
        Same(_y(lambda Y: Y.astype(np.int64))),
    ),
    "labels as a list": ("ce", "Y", _y(lambda Y: Y.tolist()), Same(_y(np.asarray))),
    "one-hot rows": ("ce", "Y", _y(lambda Y: np.eye(3)[Y]), Same(_y(lambda Y: Y.argmax(axis=1)))),
    "one-hot row sums to 2": (
        "ce",
        "Y",
        _y(lambda Y: _at(np.eye(3)[Y], (1, Y[1] - 1), 1.0)),
        Raises(
            ValueError,
            r"cross_entropy needs one-hot \(or probability\) "
            r"rows summing to 1; row 1 of Y sums to 2",
        ),
    ),
    "one-hot row of zeros": (
        "ce",
        "Y",
        _y(lambda Y: _at(np.eye(3)[Y], 4, 0.0)),
        Raises(ValueError, r"row 4 of Y sums to 0"),
    ),
    "one-hot too narrow": (
        "ce",
        "Y",
        _y(lambda Y: np.eye(3)[Y][:, :2]),
        Raises(
            ValueError,
            r"Y has 2 columns but the network has 3 output\(s\) for loss "
            r"'cross_entropy'",
        ),
    ),
    "BCE target > 1": (
        "bce",
        "Y",
        _y(lambda Y: _at(Y, (1, 0), 1.5)),
        Raises(ValueError, r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[1, 0\] = 1\.5"),
    ),
    "BCE target < 0": (
        "bce",
        "Y",
        _y(lambda Y: _at(Y, (5, 0), -0.25)),
        Raises(
            ValueError, r"binary_cross_entropy targets must lie in \[0, 1\]; Y\[5, 0\] = -0\.25"
        ),
    ),
    "BCE targets bool": (
        "bce",
        "Y",
        _y(lambda Y: Y > 0.5),
        Same(_y(lambda Y: (Y > 0.5).astype(F32))),
    ),
    "BCE targets 1-D": ("bce", "Y", _y(lambda Y: Y[:, 0]), Same(_y(lambda Y: Y[:, None]))),
    "mse targets int": (
        "mse",
        "Y",
        _y(lambda Y: np.round(Y).astype(np.int32)),
        Same(_y(lambda Y: np.round(Y).astype(F32))),
    ),
    "mse targets float16": (
        "mse",
        "Y",
        _y(lambda Y: Y.astype(F16)),
        Same(_y(lambda Y: Y.astype(F32))),
    ),
    "Y 1-D for 3 outputs": (
        "mse",
        "Y",
        _y(lambda Y: Y[:, 0]),
        Raises(
            ValueError,
            r"Y has shape \(6,\) but the network has 3 outputs; pass Y of shape "
            r"\(6, 3\)",
        ),
    ),
    "Y 3-D": (
        "mse",
        "Y",
        _y(lambda Y: Y[:, :, None]),
        Raises(ValueError, r"Y must be 1-D or 2-D, got shape \(6, 3, 1\)"),
    ),
    "Y None": (
        "mse",
        "Y",
        _y(lambda Y: None),
        Raises(TypeError, r"Y must be a numeric array, got NoneType"),
    ),
    "Y complex": (
        "mse",
        "Y",
        _y(lambda Y: Y.astype(np.complex64)),
        Raises(TypeError, r"Y must be real, got dtype complex64"),
    ),
    "Y overflows float32": (
        "mse",
        "Y",
        _y(lambda Y: _at(Y, (2, 0), 1e39)),
        Raises(ValueError, r"Y has 1 value\(s\) too large for the parameters' dtype float32"),
    ),
    # --- params ----------------------------------------------------------------------------
    "params W NaN": (
        "mse",
        "all",
        set_leaf(1, "W", (2, 0), jnp.nan),
        {
            **{
                f: Raises(
                    ValueError, r"params\[1\]\.W has a non-finite value nan at index \(2, 0\)"
                )
                for f in X_FUNCS + BATCH_FUNCS
            },
            "prepare_targets": Same(lambda *a: a),
        },
    ),  # reads only the params' shapes and dtype
    "params b inf": (
        "ce",
        "all",
        set_leaf(0, "b", 3, -jnp.inf),
        {
            **{
                f: Raises(ValueError, r"params\[0\]\.b has a non-finite value -inf at index \(3,\)")
                for f in X_FUNCS + BATCH_FUNCS
            },
            "prepare_targets": Same(lambda *a: a),
        },
    ),
    "params float16": ("ce", "all", _params_dtype(F16), Close(F16)),
    "params bfloat16": ("bce", "all", _params_dtype(BF16), Close(BF16)),
    "params float64": ("mse", "all", _params_dtype(F64), Close(F64)),
    "params as a list": (
        "ce",
        "all",
        lambda p, X, Y, loss: (list(p), X, Y, loss),
        Same(lambda p, X, Y, loss: (tuple(p), X, Y, loss)),
    ),
    "params mixed dtypes (b float64)": (
        "ce",
        "all",
        lambda p, X, Y, loss: replace_layer(1, b=p[1].b.astype(F64))(p, X, Y, loss),
        Raises(
            TypeError,
            r"all parameters must share one dtype: params\[1\]\.b is float64 but "
            r"params\[0\]\.W is float32",
        ),
    ),
    "params mixed dtypes (layers)": (
        "mse",
        "all",
        lambda p, X, Y, loss: (p[:1] + cast_params(p[1:], F64), X, Y, loss),
        Raises(TypeError, r"params\[1\]\.W is float64 but params\[0\]\.W is float32"),
    ),
    "params int W": (
        "ce",
        "all",
        lambda p, X, Y, loss: (cast_params(p, np.int32), X, Y, loss),
        Raises(TypeError, r"params\[0\]\.W must be floating point, got int32"),
    ),
    "params unknown activation": (
        "ce",
        "all",
        replace_layer(0, activation="gelu"),
        Raises(ValueError, r"unknown hidden activation 'gelu' for params\[0\]"),
    ),
    "params softmax hidden": (
        "ce",
        "all",
        replace_layer(0, activation="softmax"),
        Raises(ValueError, r"activation 'softmax' of params\[0\] can only be used on the output"),
    ),
    "params not Dense": (
        "ce",
        "all",
        lambda p, X, Y, loss: (((p[0].W, p[0].b),) + p[1:], X, Y, loss),
        Raises(TypeError, r"params\[0\] must be a Dense layer, got tuple"),
    ),
    "params empty": (
        "ce",
        "all",
        lambda p, X, Y, loss: ((), X, Y, loss),
        Raises(TypeError, r"params must be a non-empty tuple of Dense layers"),
    ),
    "params unchained": (
        "mse",
        "all",
        replace_layer(1, W=jnp.zeros((5, 3), F32)),
        Raises(ValueError, r"params\[1\]\.W has fan_in 5 but params\[0\] has fan_out 4"),
    ),
    # --- loss names --------------------------------------------------------------------------
    "unknown loss": (
        "mse",
        "loss",
        lambda p, X, Y, loss: (p, X, Y, "hinge"),
        Raises(
            ValueError,
            r"unknown loss 'hinge'; valid names: \['mse', 'half_squared_error', "
            r"'binary_cross_entropy', 'cross_entropy'\]",
        ),
    ),
    "loss not a string": (
        "mse",
        "loss",
        lambda p, X, Y, loss: (p, X, Y, 3),
        Raises(TypeError, r"loss must be a string, one of \[.*\]; got 3"),
    ),
    "loss for another output": (
        "bce",
        "loss",
        lambda p, X, Y, loss: (p, X, Y, "cross_entropy"),
        Raises(
            ValueError,
            r"loss 'cross_entropy' needs an output "
            r"activation in \['softmax'\], but the output "
            r"layer uses 'sigmoid'",
        ),
    ),
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
    problem = base_problem(base)
    args = edit(*problem)
    run = FUNCTIONS[fn]
    if isinstance(expected, Raises):
        with pytest.raises(expected.exc, match=expected.regex) as info:
            run(*args)
        assert "/mlds_jax/" in str(info.traceback[-1].path)  # the library's own check
        assert_reported_once(info.value)  # the message once, no chained repeat
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent ComplexWarning, overflow or cast warnings
        out = run(*args)
    assert tree_is_finite(out)
    if isinstance(expected, Empty):
        assert all(leaf.shape[0] == 0 for leaf in np_leaves(out))
    elif isinstance(expected, Same):
        ref = run(*expected.to(*args))
        assert bit_identical(out, ref), (out, ref)
    else:  # Close: the same rounded inputs, computed in float64
        p, X, Y, loss = args
        X_rounded = np.asarray(jnp.asarray(X).astype(expected.dtype), F64)
        ref = run(cast_params(p, F64), X_rounded, Y, loss)
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
    fault = draw(
        st.sampled_from(
            [
                "features",
                "rows",
                "label_neg",
                "label_big",
                "label_frac",
                "onehot_sum",
                "bce_range",
                "nan_X",
                "inf_Y",
                "X_1d",
                "huge_X",
            ]
        )
    )
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
    params = cast_params(
        make_params(draw(st.integers(0, 99)), [n_in, *hidden, n_out], "tanh", output), dtype
    )
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
        return (
            params,
            rng.standard_normal((n, d)),
            Y,
            loss,
            ValueError,
            rf"X has {d} features but the first layer expects fan_in = {n_in}",
        )
    if fault == "rows":
        m = draw(st.integers(0, 12).filter(lambda m: m != n))
        Y = rng.standard_normal((m, n_out))
        return params, X, Y, loss, ValueError, rf"X has {n} rows but Y has {m}; they must match"
    if fault == "label_neg":
        Y[i] = draw(st.integers(-(2**40), -1))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"class labels must lie in \[0, {n_out}\) .*; Y\[{i}\] = {Y[i]} ",
        )
    if fault == "label_big":
        Y[i] = draw(st.integers(n_out, 2**40))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"class labels must lie in \[0, {n_out}\) .*; Y\[{i}\] = {Y[i]} ",
        )
    if fault == "label_frac":
        Yf = Y.astype(F64)
        Yf[i] += draw(st.sampled_from([0.5, 0.25, 1e-3, -0.75]))
        return (
            params,
            X,
            Yf,
            loss,
            ValueError,
            rf"Y holds class labels but Y\[{i}\] = {re.escape(str(Yf[i]))} is not an integer",
        )
    if fault == "onehot_sum":
        Y1 = np.eye(n_out)[Y]
        Y1[i] *= draw(st.sampled_from([0.0, 0.5]))
        return (
            params,
            X,
            Y1,
            loss,
            ValueError,
            rf"rows summing to 1; row {i} of Y sums to {re.escape(str(Y1[i].sum()))}",
        )
    if fault == "bce_range":
        k = draw(st.integers(0, n_out - 1))
        Y[i, k] = draw(st.sampled_from([-1e-3, 1.0 + 1e-6, 2.0, -7.0]))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"binary_cross_entropy targets must lie in \[0, 1\]; Y\[{i}, {k}\] = "
            rf"{re.escape(str(Y[i, k]))}",
        )
    if fault == "nan_X":
        X[i, j] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"X contains 1 non-finite value\(s\) \(NaN or inf\); first {X[i, j]} at index "
            rf"\({i}, {j}\)",
        )
    if fault == "inf_Y":
        k = draw(st.integers(0, n_out - 1))
        Y[i, k] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"Y contains 1 non-finite .*first {Y[i, k]} at index \({i}, {k}\)",
        )
    if fault == "huge_X":  # finite in float64, past float32's max: params are float32 here
        X[i, j] = draw(st.sampled_from([1e39, -1e300, 3.5e38]))
        return (
            params,
            X,
            Y,
            loss,
            ValueError,
            rf"X has 1 value\(s\) too large for the parameters' dtype float32 .*; first "
            rf"{re.escape(str(X[i, j]))} at index \({i}, {j}\)",
        )
    return (
        params,
        X[0],
        Y,
        loss,
        ValueError,
        rf"X must be 2-D \(N, n_features\), got shape \({n_in},\)",
    )


@given(case=bad_batches(), fn=st.sampled_from(BATCH_FUNCS))
def test_bad_random_batches_hypothesis(case, fn):
    """Random shapes, random faults, random positions and values: every batch function names
    the fault (all of these are found before anything is traced or compiled)."""
    params, X, Y, loss, exc, regex = case
    with pytest.raises(exc, match=regex):
        FUNCTIONS[fn](params, X, Y, loss)


# --- bad names: activations, losses, layer sizes ------------------------------------------------
def test_bad_names_for_activations_losses_and_sizes(key):
    with pytest.raises(ValueError, match=r"unknown hidden activation 'gelu'"):
        mj.init_mlp(key, [3, 2], hidden="gelu")
    with pytest.raises(ValueError, match=r"unknown output activation None"):
        mj.init_mlp(key, [3, 2], output=None)
    with pytest.raises(TypeError, match=r"hidden must be a str, the activation of every hidden "
                       r"layer; got list \['relu', 'softmax'\]"):
        mj.init_mlp(key, [3, 4, 2], hidden=["relu", "softmax"])
    with pytest.raises(
        TypeError,
        match=r"sizes must be a sequence of ints like \[4, 8, 3\], "
        r"got '32'",
    ):
        mj.init_mlp(key, "32")
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'; valid names"):
        mj.activations.get_activation("gelu")
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'"):
        mj.evaluate(base_problem("mse")[0], base_problem("mse")[1], base_problem("mse")[2], "hinge")


# --- the one set of number validators, and the one schema check --------------------------------
@pytest.mark.parametrize("value", [True, False, np.bool_(True), "1", None, [1.0], np.ones(2)])
def test_number_validators_refuse_what_is_not_a_number(value):
    """Bools are never numbers (``True`` is not a step size of 1.0); one wording per fault."""
    v = mj.validation
    for check in (v.real_number, v.positive_float, v.non_negative_float):
        with pytest.raises(TypeError, match=r"^x must be a real number, got "):
            check(value, "x")
    with pytest.raises(TypeError, match=r"^x must be a real number, got "):
        v.number_in_interval(value, "x", 0, 1)
    with pytest.raises(TypeError, match=r"^n must be an int, got "):
        v.positive_int(value, "n")
    with pytest.raises(TypeError, match=r"^n must be an int, got "):
        v.int_in_range(value, "n", 0, 10)


def test_number_validators_accept_numbers_and_name_the_range():
    v = mj.validation
    assert v.real_number(np.float32(0.5), "x") == 0.5
    assert v.real_number(jnp.asarray(2, jnp.int32), "x") == 2.0  # a concrete 0-d array
    assert v.positive_int(np.int64(3), "n") == 3
    assert v.non_negative_float(float("inf"), "tol") == float("inf")
    for value in (0.0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"^x must be a finite number > 0, got {value!r}"):
            v.positive_float(value, "x")
    with pytest.raises(ValueError, match=r"^tol must be >= 0, got nan"):
        v.non_negative_float(float("nan"), "tol")
    with pytest.raises(ValueError, match=r"^tol must be a finite number >= 0, got inf"):
        v.non_negative_float(float("inf"), "tol", finite=True)
    for value, closed, text in ((0, "neither", r"\(0, 1\)"), (1, "left", r"\[0, 1\)"),
                                (-0.5, "both", r"\[0, 1\]"), (float("nan"), "right", r"\(0, 1\]")):
        with pytest.raises(ValueError, match=rf"^p must lie in {text}, got {value!r}"):
            v.number_in_interval(value, "p", 0, 1, closed=closed)
    assert v.number_in_interval(1, "p", 0, 1, closed="right") == 1.0
    with pytest.raises(ValueError, match=r"^seed must lie in \[0, 2\*\*32\), got -1"):
        v.int_in_range(-1, "seed", 0, 2**32, high_text="2**32")
    with pytest.raises(ValueError, match=r"^n must be >= 1, got 0"):
        v.positive_int(0, "n")


def test_require_x64_is_the_one_float64_guard():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"^loading m: float64 parameters need JAX's x64 "
                                             r"mode, which is off"):
            mj.validation.require_x64(np.float64, "loading m")
        mj.validation.require_x64(np.float32, "loading m")
    mj.validation.require_x64(np.float64, "loading m")  # conftest: x64 on


def test_check_schema_names_leaves_as_the_caller_does():
    """The rules of check_params, for shapes and names read from a file."""
    names = lambda i, leaf: f"layer {i}" if leaf is None else f"layer{i}/{leaf}"  # noqa: E731
    check = mj.validation.check_schema
    assert check(["tanh", "softmax"], [(5, 7), (7, 3)], [(7,), (3,)], names=names) == [5, 7, 3]
    with pytest.raises(ValueError, match=r"^layer1/W has fan_in 6 but layer 0 has fan_out 7"):
        check(["tanh", "softmax"], [(5, 7), (6, 3)], [(7,), (3,)], names=names)
    with pytest.raises(ValueError, match=r"^activation 'softmax' of layer 0 can only be used on "
                                         r"the output layer"):
        check(["softmax", "softmax"], [(5, 7), (7, 3)], [(7,), (3,)], names=names)
    with pytest.raises(TypeError, match=r"^all parameters must share one dtype: layer1/b is "
                                        r"float64 but layer0/W is float32 \(mixed dtypes\)"):
        check(["tanh", "identity"], [(5, 7), (7, 3)], [(7,), (3,)],
              ["float32", "float32", "float32", "float64"], names=names)


def test_all_finite_flags_nan_and_inf_inside_jit():
    """The in-program finiteness check (the checked API's one flag): NaN, +inf and -inf anywhere
    in a large leaf make it false (XLA:CPU's max-reduction would let a NaN through; this must
    not), empty and integer leaves are ignored."""
    check = jax.jit(lambda *trees: mj.validation.all_finite(*trees))
    clean = np.ones((300, 200), np.float32)
    assert bool(check(clean, np.zeros((0, 3), np.float32), np.arange(3)))
    for bad in (np.nan, np.inf, -np.inf):
        x = clean.copy()
        x[150, 100] = bad
        assert not bool(check(np.ones(3, np.float32), x))
