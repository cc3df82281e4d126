"""The estimators' ``solver="lm"`` (mlds_jax.sklearn over mj.levenberg_marquardt): it fits,
predicts, scores, clones and pickles like the other solvers, trains scikit-learn's objective
(loss + alpha/(2S)·Σ‖W‖², checked from the fitted coefs_ with NumPy), and honours max_iter,
early_stopping, sample_weight and partial_fit (one LM iteration per call).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning

from mlds_jax.sklearn import MLPClassifier, MLPRegressor

# short fits on purpose; the test that checks the warning uses pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def wave():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, (120, 1))
    return X, np.sin(2 * X[:, 0]) + 0.01 * rng.standard_normal(120)


def numpy_objective(est, X, y, alpha):
    """½·mean‖ŷ − y‖² + alpha/(2N)·Σ‖W‖² from coefs_ with NumPy (tanh hidden, identity out)."""
    A = X
    for W, b in zip(est.coefs_[:-1], est.intercepts_[:-1], strict=True):
        A = np.tanh(A @ W + b)
    out = (A @ est.coefs_[-1] + est.intercepts_[-1]).ravel()
    penalty = sum(np.sum(W * W) for W in est.coefs_)
    return 0.5 * np.mean((out - y) ** 2) + alpha * penalty / (2 * len(y))


def test_regressor_fits_predicts_clones_pickles(wave):
    X, y = wave
    est = MLPRegressor(
        hidden_layer_sizes=(8,), activation="tanh", solver="lm", max_iter=200, alpha=1e-3,
        random_state=0,
    )  # fmt: skip
    assert est.fit(X, y) is est
    assert est.score(X, y) > 0.999  # a smooth 1-D fit: what LM is for
    assert est.loss_ == pytest.approx(numpy_objective(est, X, y, 1e-3), rel=1e-10)
    assert len(est.loss_curve_) == est.n_iter_ <= 200
    assert np.all(np.diff(est.loss_curve_) < 0)  # every accepted LM step lowers the loss
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    twin = clone(est).fit(X, y)
    np.testing.assert_array_equal(twin.predict(X), est.predict(X))  # deterministic
    assert clone(est).get_params()["solver"] == "lm"


def test_classifier_fits_and_early_stopping(wave):
    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    clf = MLPClassifier(hidden_layer_sizes=(4,), solver="lm", max_iter=30, random_state=0)
    clf.fit(X, y)
    assert clf.score(X, y) > 0.95
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0, rtol=1e-12)
    clf = MLPClassifier(
        hidden_layer_sizes=(4,), solver="lm", max_iter=30, random_state=0, early_stopping=True
    ).fit(X, y)
    assert clf.validation_scores_ is None and 0.8 <= clf.best_validation_score_ <= 1.0
    Xw, yw = wave
    reg = MLPRegressor(
        hidden_layer_sizes=(8,), activation="tanh", solver="lm", max_iter=200, random_state=0,
        early_stopping=True, n_iter_no_change=3, tol=0.0,
    ).fit(Xw, yw)  # fmt: skip
    scores = reg.validation_scores_  # tol = 0: the best is the highest (any gain counts)
    assert len(scores) == reg.n_iter_ and reg.best_validation_score_ == pytest.approx(max(scores))


def test_max_iter_sample_weight_and_partial_fit(wave):
    X, y = wave
    kw = dict(hidden_layer_sizes=(8,), activation="tanh", solver="lm", random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(2\\)"):
        MLPRegressor(max_iter=2, **kw).fit(X, y)
    # integer sample weights are repeated rows: the same objective, the same fit
    counts = np.random.default_rng(1).integers(1, 3, len(y))
    a = MLPRegressor(max_iter=5, **kw).fit(X, y, sample_weight=counts)
    b = MLPRegressor(max_iter=5, **kw).fit(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    for u, v in zip(a.coefs_, b.coefs_, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-7, atol=1e-9)
    # partial_fit: one LM iteration per call, each lowering the loss
    est = MLPRegressor(**kw)
    for _ in range(3):
        est.partial_fit(X, y)
        assert est.n_iter_ == 1
    assert len(est.loss_curve_) == 3 and np.all(np.diff(est.loss_curve_) < 0)
