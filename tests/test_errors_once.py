"""Errors once: a bad input to a public function raises one exception whose message appears
once in the traceback Python prints, with no chained exception ("During handling of the above
exception, another exception occurred", "The above exception was the direct cause ...")
repeating it; the command line prints one line and no traceback.

The bad-input table of tests/test_validation.py checks the same of every function that takes
(params, X, Y, loss); this table covers the other families: keys and sizes, files, data sets,
tables, early stopping, the estimators, resuming, descent, and the command line.
"""

from __future__ import annotations

import traceback

import jax
import numpy as np
import optax
import pytest
from helpers import assert_reported_once, one_error_line, run_cli

import mlds_jax as mj
from mlds_jax.tabular import load_table


def _X_nan():
    X = np.ones((6, 3))
    X[1, 1] = np.nan
    return X


def _fit(X, y, **kw):
    params = mj.init_mlp(0, [3, 4, 2], output="softmax")
    return mj.fit(params, X, y, optimizer=optax.sgd(0.1), epochs=1, progress=False, **kw)


def _estimator(X, y):
    from mlds_jax.sklearn import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X, y)


def _resume_other_architecture(tmp_path):
    X, y = np.ones((8, 3)), np.arange(8) % 2
    mj.fit(mj.init_mlp(0, [3, 4, 2], output="softmax"), X, y, epochs=1, progress=False,
           optimizer=optax.sgd(0.1), checkpoint_dir=tmp_path)
    mj.fit(mj.init_mlp(0, [3, 5, 2], output="softmax"), X, y, epochs=2, progress=False,
           optimizer=optax.sgd(0.1), checkpoint_dir=tmp_path, resume=True)


def _table(tmp_path, text):
    (tmp_path / "t.csv").write_text(text)
    return load_table(tmp_path / "t.csv")


#: name: (call(tmp_path), exception type, a piece of the message)
CASES = {
    "fit NaN in X": (lambda t: _fit(_X_nan(), np.arange(6) % 2), ValueError,
                     "X contains 1 non-finite value(s)"),
    "fit wrong rows": (lambda t: _fit(np.ones((6, 3)), np.arange(5) % 2), ValueError, "rows"),
    "fit bad label": (lambda t: _fit(np.ones((6, 3)), np.array([0, 1, 2, 0, 1, 0])), ValueError,
                      "label"),
    "fit bad key": (lambda t: _fit(np.ones((6, 3)), np.arange(6) % 2, key="seven"), TypeError,
                    "key must be a jax.random key"),
    "init bad sizes": (lambda t: mj.init_mlp(0, [3, 0, 2]), ValueError,
                       "every layer size must be >= 1"),
    "init one-class softmax": (lambda t: mj.init_mlp(0, [3, 1], output="softmax"), ValueError,
                               "a softmax over 1 output"),
    "init negative seed": (lambda t: mj.init_mlp(-1, [3, 2]), ValueError, "key must lie in"),
    "load missing file": (lambda t: mj.load(t / "nope.npz"), FileNotFoundError, "does not exist"),
    "load garbage": (lambda t: (t / "g.npz").write_bytes(b"PK\x03\x04junk") and
                     mj.load(t / "g.npz"), ValueError, "checkpoint"),
    "save into a missing directory": (
        lambda t: mj.save(t / "no" / "m.npz", mj.init_mlp(0, [2, 2])), FileNotFoundError,
        "m.npz"),
    "save NaN params": (
        lambda t: mj.save(t / "m.npz", (mj.Dense(W=jax.numpy.full((2, 2), np.nan),
                                                 b=jax.numpy.zeros(2)),)),
        ValueError, "refusing to save checkpoint"),
    "misspelt data set": (lambda t: mj.load_dataset("digit"), ValueError, "did you mean 'digits'"),
    "one_hot bad label": (lambda t: mj.datasets.one_hot([0, 5], 3), ValueError, "out of range"),
    "standardize NaN": (lambda t: mj.datasets.standardize(_X_nan()), ValueError, "non-finite"),
    "early stopping patience": (lambda t: mj.EarlyStopping(patience=0), ValueError, "patience"),
    "evaluate wrong width": (
        lambda t: mj.evaluate(mj.init_mlp(0, [3, 2]), np.ones((4, 5)), np.ones((4, 2))),
        ValueError, "features"),
    "trainer unknown loss": (lambda t: mj.Trainer("hinge"), ValueError, "unknown loss 'hinge'"),
    "estimator NaN": (lambda t: _estimator(_X_nan(), np.arange(6) % 2), ValueError, "NaN"),
    "estimator one class": (lambda t: _estimator(np.ones((6, 3)), np.zeros(6)), ValueError,
                            "class"),
    "resume other architecture": (_resume_other_architecture, ValueError,
                                  "the state is for a 3-4-2 relu/softmax network"),
    "table text feature": (lambda t: _table(t, "c,y\nred,0\nblue,1\n"), ValueError,
                           "is not numeric"),
    "table ragged": (lambda t: _table(t, "a,y\n1,0\n2\n"), ValueError, "ragged rows"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_public_errors_are_reported_once(case, tmp_path):
    call, exc, piece = CASES[case]
    with pytest.raises(exc) as info:
        call(tmp_path)
    assert piece in str(info.value)
    assert_reported_once(info.value)


def test_a_failing_schedule_is_the_cause_and_is_not_repeated():
    """descent's one deliberate chain: the user's own schedule failed, so its traceback (into
    the user's code) is shown once, as the cause; our message does not repeat it."""
    def schedule(k):
        raise RuntimeError("my schedule is broken")

    with pytest.raises(TypeError, match="failed for k = 0") as info:
        mj.gradient_descent(lambda x: (x**2).sum(), np.ones(2), step_size=schedule)
    text = "".join(traceback.format_exception(info.value))
    assert text.count("RuntimeError: my schedule is broken") == 1
    assert "During handling of the above exception" not in text


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "digit"],
    ["train", "--lr", "-1"],
    ["evaluate", "--checkpoint", "/nonexistent/m.npz"],
    ["train", "--data", "/nonexistent/t.csv"],
    ["gradcheck", "--sizes", "3,1", "--output", "softmax"],
])
def test_the_command_line_reports_once_in_one_line(argv):
    rc, out, err = run_cli([*argv, "--no-compilation-cache"] if argv[0] != "gradcheck" else argv)
    assert rc == 2
    line = one_error_line(err)
    assert "During handling" not in err and "Traceback" not in err
    assert line.count("error:") == 1
