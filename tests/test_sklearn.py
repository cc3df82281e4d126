"""mlds_jax.sklearn: scikit-learn's own estimator checks, and the same numbers as scikit-learn.

* ``parametrize_with_checks`` runs scikit-learn's acceptance suite on both estimators (the
  expected failures, with reasons, are in ``EXPECTED_FAILURES``).
* One epoch of plain SGD (no shuffle, alpha > 0, a short last minibatch) from the same weights,
  set through ``warm_start``/``coefs_``, gives scikit-learn's weights to float64 tolerance,
  for a multiclass and a binary classifier and a two-output regressor; scikit-learn's
  ``MLPClassifier``/``MLPRegressor`` are the independent implementation.
* The ecosystem: Pipeline, GridSearchCV, cross_val_score, clone, joblib pickling, save/load.
"""

from __future__ import annotations

import io
import pickle
import warnings

import jax
import joblib
import numpy as np
import pytest
from helpers import tolerances
from sklearn import neural_network as sknn
from sklearn.base import clone
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import mlds_jax as mj
from mlds_jax.sklearn import MLPClassifier, MLPRegressor, load, r2_from_loss

F64 = tolerances(np.float64)
# short fits on purpose; the test that checks the warning uses pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def _standard_dtype_promotion():
    """optax's Adam raises under the suite's strict promotion (its bias correction computes
    β ** step with an int32 step count, upstream in optax): the estimators' default solver is
    Adam, so this module runs with JAX's standard promotion, as users do."""
    with jax.numpy_dtype_promotion("standard"):
        yield


# --- scikit-learn's estimator checks -----------------------------------------------------------
#: check name -> reason, per estimator class (aim: none).
EXPECTED_FAILURES: dict[str, dict[str, str]] = {"MLPClassifier": {}, "MLPRegressor": {}}


def _expected_failed_checks(estimator) -> dict[str, str]:
    return EXPECTED_FAILURES[type(estimator).__name__]


@parametrize_with_checks(
    [
        MLPClassifier(
            hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=0.02, random_state=0
        ),
        MLPRegressor(
            hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=0.02, random_state=0
        ),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    """scikit-learn's checks under JAX's defaults (x64 off, as users have it: this suite turns
    it on, so each check runs with it switched off): the estimators choose their precision
    from the input (float64 checks run in float64, float32 ones in float32)."""
    with warnings.catch_warnings(), jax.enable_x64(False):
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_precision_follows_the_input_whatever_the_x64_setting(tmp_path):
    """float32 input fits and predicts in float32; float64 input in float64 even with x64
    off; a float32 network given float64 input predicts in float64 (scikit-learn's rule)."""
    X, y = make_regression(40, 4, random_state=0)
    y = y / y.std()
    with jax.enable_x64(False):
        for dtype in (np.float32, np.float64):
            reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
            reg.fit(X.astype(dtype), y.astype(dtype))
            assert reg.coefs_[0].dtype == dtype and reg.params_[0].W.dtype == dtype
            assert reg.predict(X.astype(dtype)).dtype == dtype
        assert reg.predict(X.astype(np.float32)).dtype == np.float64  # the wider precision
        reg32 = MLPRegressor(hidden_layer_sizes=(5,), max_iter=3, random_state=0)
        reg32.fit(X.astype(np.float32), y)
        assert reg32.predict(X).dtype == np.float64
        np.testing.assert_allclose(reg32.predict(X), reg32.predict(X.astype(np.float32)),
                                   rtol=1e-5)  # fmt: skip
        reg.save(tmp_path / "reg.npz")  # a float64 network saved and loaded with x64 off
        again = load(tmp_path / "reg.npz")
        assert again.coefs_[0].dtype == np.float64
        np.testing.assert_array_equal(again.predict(X), reg.predict(X))


# --- the same numbers as scikit-learn ---------------------------------------------------------
def _one_epoch_both(ours, theirs, X, y, sample_weight=None):
    """Initialise both with a 1-epoch fit, set the same weights, run one more epoch."""
    rng = np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
        coefs = [rng.normal(0, 0.5, W.shape) for W in theirs.coefs_]
        intercepts = [rng.normal(0, 0.5, b.shape) for b in theirs.intercepts_]
        for est in (ours, theirs):
            est.coefs_ = [W.copy() for W in coefs]
            est.intercepts_ = [b.copy() for b in intercepts]
        ours.fit(X, y, sample_weight=sample_weight)
        theirs.fit(X, y, sample_weight=sample_weight)
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, **F64)
    if sample_weight is None:
        # the loss before each update, penalty included, averaged over the minibatches by
        # their row counts as scikit-learn does (with sample weights fit averages by the
        # batches' total weights instead: a documented difference in loss_curve_ only)
        np.testing.assert_allclose(ours.loss_, theirs.loss_, **F64)


SGD = dict(
    solver="sgd",
    momentum=0.0,
    learning_rate_init=0.1,
    alpha=0.05,
    batch_size=16,  # 50 rows: 16, 16, 16 and a short batch of 2
    shuffle=False,
    max_iter=1,
    warm_start=True,
    activation="tanh",
    hidden_layer_sizes=(7, 5),
)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_sgd_epoch_matches_sklearn_classifier(n_classes, weighted):
    X, y = make_classification(
        50, 6, n_informative=4, n_classes=n_classes, n_clusters_per_class=1, random_state=0
    )
    sw = np.random.default_rng(1).uniform(0.5, 2.0, 50) if weighted else None
    _one_epoch_both(MLPClassifier(**SGD), sknn.MLPClassifier(**SGD), X, y, sw)


@pytest.mark.parametrize("weighted", [False, True])
def test_one_sgd_epoch_matches_sklearn_regressor(weighted):
    X, y = make_regression(50, 6, n_targets=1, noise=0.1, random_state=0)
    y = y / y.std()
    sw = np.random.default_rng(1).uniform(0.5, 2.0, 50) if weighted else None
    settings = {**SGD, "activation": "logistic", "momentum": 0.9}  # Nesterov momentum too
    _one_epoch_both(MLPRegressor(**settings), sknn.MLPRegressor(**settings), X, y, sw)


def test_same_initial_weights_and_partial_fit_as_sklearn():
    """Same random_state → scikit-learn's initial weights; two partial_fit epochs of SGD with
    Nesterov momentum (the velocity carried between calls) give scikit-learn's weights."""
    X, y = make_classification(40, 5, n_informative=3, n_classes=3, random_state=2)
    kw = dict(
        solver="sgd",
        momentum=0.9,
        learning_rate_init=0.05,
        alpha=1e-3,
        batch_size=10,
        shuffle=False,
        hidden_layer_sizes=(6,),
        random_state=4,
    )
    ours, theirs = MLPClassifier(**kw), sknn.MLPClassifier(**kw)
    for _ in range(2):
        ours.partial_fit(X, y, classes=np.arange(3))
        theirs.partial_fit(X, y, classes=np.arange(3))
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, **F64)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, **F64)
    assert ours.t_ == theirs.t_ == 80 and ours.n_iter_ == theirs.n_iter_ == 1


def test_invscaling_schedule_matches_sklearn():
    """The "invscaling" schedule over three epochs (η changes at epoch ends, t = samples seen)."""
    X, y = make_regression(30, 4, random_state=1)
    y = y / y.std()
    kw = dict(
        solver="sgd",
        learning_rate="invscaling",
        power_t=0.3,
        momentum=0.5,
        learning_rate_init=0.05,
        alpha=0.01,
        batch_size=8,
        shuffle=False,
        hidden_layer_sizes=(5,),
        random_state=0,
        max_iter=3,
        tol=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = MLPRegressor(**kw).fit(X, y), sknn.MLPRegressor(**kw).fit(X, y)
    for a, b in zip(
        ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True
    ):
        np.testing.assert_allclose(a, b, **F64)


def test_adaptive_schedule_epochs_match_sklearn():
    """learning_rate="adaptive" on a plateau that never ends (tol larger than any decrease):
    η is divided by 5 at every stall until it is <= 1e-6, after the same epochs as
    scikit-learn (3 epochs, then 2 per reduction: 1e-3, 2e-4, ..., 3.2e-7)."""
    X, y = make_classification(40, 5, random_state=0)
    kw = dict(
        solver="sgd",
        learning_rate="adaptive",
        tol=10.0,
        n_iter_no_change=1,
        max_iter=100,
        hidden_layer_sizes=(4,),
        random_state=0,
    )
    ours, theirs = MLPClassifier(**kw).fit(X, y), sknn.MLPClassifier(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ == 13


def test_r2_from_loss_K1():
    """(K1) against scikit-learn's r2_score (variance-weighted for several outputs)."""
    rng = np.random.default_rng(0)
    Y, Y_hat = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    L = np.mean(0.5 * np.sum((Y_hat - Y) ** 2, axis=1))
    ss_tot = float(np.sum((Y - Y.mean(axis=0)) ** 2))
    expected = r2_score(Y, Y_hat, multioutput="variance_weighted")
    np.testing.assert_allclose(r2_from_loss(L, 20, ss_tot), expected, **F64)
    assert r2_from_loss(0.0, 5, 0.0) == 1.0 and r2_from_loss(0.1, 5, 0.0) == 0.0


# --- labels, outputs, attributes --------------------------------------------------------------
@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def test_string_and_noncontiguous_labels(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = MLPClassifier(
        hidden_layer_sizes=(8,), max_iter=60, random_state=0, learning_rate_init=0.05
    )
    clf.fit(X, names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.predict(X).dtype == names.dtype and clf.score(X, names) > 0.8
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, **F64)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, **F64)
    assert clf.out_activation_ == "softmax" and clf.n_outputs_ == 3 and clf.n_layers_ == 3
    sparse_labels = np.array([-7, 10, 42])[y]
    clf2 = clone(clf).fit(X, sparse_labels)
    assert set(clf2.predict(X)) <= {-7, 10, 42}


def test_binary_multilabel_and_multioutput(iris):
    X, y = iris
    binary = MLPClassifier(hidden_layer_sizes=(6,), max_iter=40, random_state=0)
    binary.fit(X, y == 0)
    assert binary.out_activation_ == "logistic" and binary.n_outputs_ == 1
    assert binary.predict_proba(X).shape == (150, 2)
    Y = np.stack([y == 0, y == 1, y == 2, y > 0], axis=1).astype(int)
    multi = MLPClassifier(hidden_layer_sizes=(6,), max_iter=40, random_state=0).fit(X, Y)
    assert multi.out_activation_ == "logistic" and multi.predict(X).shape == (150, 4)
    assert set(np.unique(multi.predict(X))) <= {0, 1}
    reg = MLPRegressor(hidden_layer_sizes=(6,), max_iter=40, random_state=0)
    reg.fit(X, np.stack([X[:, 0] + X[:, 1], X[:, 2]], axis=1))
    assert reg.predict(X).shape == (150, 2) and reg.out_activation_ == "identity"


def test_fitted_attributes_and_params_pytree(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(5, 4), max_iter=15, random_state=0, tol=0.0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(4, 5), (5, 4), (4, 3)]
    assert clf.n_iter_ == 15 == len(clf.loss_curve_) and clf.t_ == 15 * 150
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    params = clf.params_
    assert [p.activation for p in params] == ["relu", "relu", "softmax"]
    np.testing.assert_allclose(np.asarray(mj.forward(params, X)), clf.predict_proba(X), **F64)


def test_early_stopping_records_scores(iris):
    X, y = iris
    kw = dict(
        hidden_layer_sizes=(8,),
        max_iter=300,
        early_stopping=True,
        n_iter_no_change=3,
        random_state=0,
        learning_rate_init=0.05,
    )
    clf = MLPClassifier(**kw)
    clf.fit(X, y)
    assert clf.n_iter_ < 300 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ in clf.validation_scores_ and clf.best_loss_ is None
    reg = MLPRegressor(**kw)
    reg.fit(X[:, :3], X[:, 3])
    assert max(reg.validation_scores_) > 0.5


@pytest.mark.parametrize(
    ("name", "early_stopping"),
    [("digits", False), ("breast_cancer", False), ("diabetes", False), ("digits", True)],
)
def test_estimators_stop_where_sklearn_stops(name, early_stopping):
    """Default settings on standardised data: scikit-learn's tol/n_iter_no_change rule (the
    best value so far, moved by every better epoch; the training loss, or with early
    stopping the validation score) gives epoch counts within 25% of scikit-learn's, and a
    ConvergenceWarning exactly where scikit-learn warns."""
    from sklearn import datasets

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours, theirs = (MLPRegressor, sknn.MLPRegressor) if name == "diabetes" else (
        MLPClassifier, sknn.MLPClassifier)  # fmt: skip
    if name == "diabetes":
        y = (y - y.mean()) / y.std()
    counts, warned = [], []
    for cls in (ours, theirs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = cls(random_state=0, early_stopping=early_stopping).fit(X, y)
        counts.append(est.n_iter_)
        warned.append(any(issubclass(w.category, ConvergenceWarning) for w in caught))
    assert abs(counts[0] - counts[1]) <= 0.25 * counts[1], counts
    assert warned[0] == warned[1]


def test_bad_input_messages(iris):
    X, y = iris
    clf = MLPClassifier(max_iter=5)
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="solver"):
        MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(TypeError, match="optax"):
        MLPClassifier(optimizer="adam").fit(X, y)
    # mlds_jax.validation's words, as ValueError (scikit-learn's way): bools are not numbers
    for kwargs, match in (({"max_iter": True}, r"max_iter must be an int, got True"),
                          ({"alpha": True}, r"alpha must be a real number, got True"),
                          ({"momentum": 1.5}, r"momentum must lie in \[0, 1\], got 1\.5"),
                          ({"batch_size": 0}, r"batch_size must be >= 1, got 0")):
        with pytest.raises(ValueError, match=match):
            MLPClassifier(**kwargs).fit(X, y)


def test_custom_optax_optimizer_and_autodiff_agree(iris):
    """optimizer= takes any optax transformation; grads="autodiff" gives the same fit."""
    import optax

    X, y = iris
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0, tol=0.0, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(optimizer=optax.sgd(0.1), **kw).fit(X, y)
        b = MLPClassifier(optimizer=optax.sgd(0.1), grads="autodiff", **kw).fit(X, y)
    for u, v in zip(a.coefs_, b.coefs_, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_builtin_solvers_run_flat_with_the_per_leaf_updates(iris, solver):
    """The built-in solvers update one flat vector (``optax.flatten``); element-wise, that is
    the same arithmetic as the per-leaf transformation passed through ``optimizer=``."""
    import optax

    X, y = iris
    kw = dict(hidden_layer_sizes=(6, 4), max_iter=8, random_state=0, tol=0.0, alpha=1e-3)
    if solver == "adam":
        leafwise = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8)
    else:  # scikit-learn's sgd with Nesterov momentum 0.9: v <- mu v - eta g, w <- w + mu v - eta g
        leafwise = optax.chain(
            optax.scale_by_learning_rate(1e-3), optax.trace(decay=0.9, nesterov=True)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        flat = MLPClassifier(solver=solver, **kw).fit(X, y)
        tree = MLPClassifier(optimizer=leafwise, **kw).fit(X, y)
    state = flat._make_optimizer(1, 1, 1e-3, 0).init(flat.params_)
    assert all(np.ndim(leaf) <= 1 for leaf in jax.tree_util.tree_leaves(state))  # one vector
    for u, v in zip(flat.coefs_ + flat.intercepts_, tree.coefs_ + tree.intercepts_, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)  # float64: rounding only
    np.testing.assert_allclose(flat.loss_curve_, tree.loss_curve_, rtol=1e-12)


# --- the ecosystem ------------------------------------------------------------------------------
def test_pipeline_gridsearch_cross_val_clone(iris):
    X, y = iris
    pipe = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(8,), max_iter=80, random_state=0, learning_rate_init=0.01
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert cross_val_score(pipe, X, y, cv=3).mean() > 0.8
        grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=3).fit(X, y)
    assert grid.best_score_ > 0.8
    assert clone(pipe).get_params()["mlpclassifier__hidden_layer_sizes"] == (8,)


def test_pickle_joblib_and_checkpoint_roundtrip(iris, tmp_path):
    X, y = iris
    names = np.array(["a", "b", "c"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=10, random_state=0).fit(X, names)
    buf = io.BytesIO()
    joblib.dump(clf, buf)
    buf.seek(0)
    for other in (joblib.load(buf), pickle.loads(pickle.dumps(clf))):
        np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
    path = tmp_path / "clf.npz"
    clf.save(path)
    restored = load(path)
    assert isinstance(restored, MLPClassifier) and list(restored.classes_) == ["a", "b", "c"]
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    assert restored.get_params() == {**clf.get_params(), "random_state": None}


def test_package_import_does_not_import_sklearn():
    import subprocess
    import sys

    code = "import sys, mlds_jax; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert jax.config.jax_enable_x64  # the suite's float64 (the equivalence tolerances)
