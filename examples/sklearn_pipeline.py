"""scikit-learn users: our MLPClassifier in a Pipeline, cross-validated and grid-searched.

``mlds_jax.sklearn.MLPClassifier`` takes scikit-learn's parameters and gives its fitted
attributes; the gradients are the hand-derived ones and each fit is one compiled
``mlds_jax.fit`` call, so the folds and candidates of a grid search share compiled code.

* ``Pipeline(StandardScaler(), MLPClassifier())`` on the bundled digits data;
* ``cross_val_score`` (5 folds) and ``GridSearchCV`` over ``alpha``;
* the fitted network as our pytree (``clf.params_``), usable with every ``mj.*`` function.

Usage::

    python examples/sklearn_pipeline.py --max-iter 50 --hidden 64
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import mlds_jax as mj
from mlds_jax.sklearn import MLPClassifier

HIDDEN = 64
MAX_ITER = 50
ALPHAS = (1e-4, 1e-2)
FOLDS = 5
SEED = 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden layer width")
    parser.add_argument("--max-iter", type=int, default=MAX_ITER, help="epochs per fit")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds")
    parser.add_argument("--rows", type=int, default=0, help="use the first N rows (0: all)")
    parser.add_argument("--seed", type=int, default=SEED)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    X, y = load_digits(return_X_y=True)
    if args.rows:
        X, y = X[: args.rows], y[: args.rows]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed
    )
    pipe = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(args.hidden,), max_iter=args.max_iter, random_state=args.seed
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # short runs on purpose
        t0 = time.perf_counter()
        cv = cross_val_score(pipe, X_train, y_train, cv=args.folds)
        t_cv = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = GridSearchCV(pipe, {"mlpclassifier__alpha": list(ALPHAS)}, cv=args.folds)
        grid.fit(X_train, y_train)
        t_grid = time.perf_counter() - t0
    test_accuracy = float(grid.score(X_test, y_test))
    clf = grid.best_estimator_[-1]
    scaled = grid.best_estimator_[0].transform(X_test)
    # the fitted network is our pytree: every mj.* function takes it
    eval_metrics = mj.evaluate(clf.params_, scaled, y_test)
    print(f"cross_val_score ({args.folds} folds): {cv.mean():.4f} ± {cv.std():.4f} [{t_cv:.2f} s]")
    print(f"GridSearchCV over alpha {ALPHAS}: best {grid.best_params_} [{t_grid:.2f} s]")
    print(f"test accuracy {test_accuracy:.4f}; mj.evaluate on params_: {eval_metrics}")
    return {
        "cv_accuracy": float(cv.mean()),
        "best_alpha": float(grid.best_params_["mlpclassifier__alpha"]),
        "test_accuracy": test_accuracy,
        "evaluate_accuracy": float(eval_metrics["accuracy"]),
    }


if __name__ == "__main__":
    main()
