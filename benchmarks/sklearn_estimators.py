r"""mlds_jax.sklearn.MLPClassifier against scikit-learn's MLPClassifier, equal settings.

Digits (1797 × 64, 10 classes, pixels / 16), the same float32 arrays for both sides, the
same parameters (Adam, batch "auto" = 200, shuffle, tol 1e-4, n_iter_no_change 10):

* **single fit**: the default classifier (hidden (100,), max_iter 200), whole ``fit`` calls.
  Ours cold (the first fit in this process, compilation included) and warm (a fresh
  estimator after that: what a user's later fits cost); medians over ``--repeats``.
* **GridSearchCV(cv=5)** over 4 values of ``alpha`` (hidden (64,), max_iter 50): 20 fits and
  their scoring, ``n_jobs=1``, wall time of one search each (ours: the first search of this
  architecture in the process), and the best mean cross-validated accuracy of each.

Prints a table of medians and ratios (scikit-learn time / ours).

Usage::

    python benchmarks/sklearn_estimators.py            # full size (several minutes)
    python benchmarks/sklearn_estimators.py --size tiny
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier as SkMLP

from mlds_jax.sklearn import MLPClassifier

SIZES = {
    # rows, single-fit hidden/max_iter, grid hidden/max_iter, alphas, folds
    "tiny": dict(rows=300, hidden=(16,), max_iter=5, grid_hidden=(8,), grid_iter=3, cv=5),
    "full": dict(rows=0, hidden=(100,), max_iter=200, grid_hidden=(64,), grid_iter=50, cv=5),
}
ALPHAS = [1e-4, 1e-3, 1e-2, 1e-1]


def _data(rows: int):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return (X[:rows], y[:rows]) if rows else (X, y)


def _timed_fit(make, X, y):
    est = make()
    t0 = time.perf_counter()
    est.fit(X, y)
    return time.perf_counter() - t0, est


def _grid(make, X, y, cv):
    search = GridSearchCV(make(), {"alpha": ALPHAS}, cv=cv, n_jobs=1)
    t0 = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - t0, search


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per contender")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    X, y = _data(cfg["rows"])
    single = dict(hidden_layer_sizes=cfg["hidden"], max_iter=cfg["max_iter"])
    grid = dict(hidden_layer_sizes=cfg["grid_hidden"], max_iter=cfg["grid_iter"])
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold, _ = _timed_fit(lambda: MLPClassifier(**single, random_state=0), X, y)
        ours, sk = [], []
        for r in range(args.repeats):  # interleaved rounds
            t, est = _timed_fit(lambda r=r: MLPClassifier(**single, random_state=r + 1), X, y)
            ours.append((t, est.n_iter_, est.score(X, y)))
            t, est = _timed_fit(lambda r=r: SkMLP(**single, random_state=r + 1), X, y)
            sk.append((t, est.n_iter_, est.score(X, y)))
        t_ours = statistics.median(t for t, _, _ in ours)
        t_sk = statistics.median(t for t, _, _ in sk)
        rows.append(("single fit, ours cold (compiles)", cold, t_sk / cold, ""))
        rows.append(
            (
                "single fit, ours warm",
                t_ours,
                t_sk / t_ours,
                f"epochs {[n for _, n, _ in ours]}, train acc "
                f"{statistics.median(a for _, _, a in ours):.4f}",
            )
        )
        rows.append(
            (
                "single fit, scikit-learn",
                t_sk,
                1.0,
                f"epochs {[n for _, n, _ in sk]}, train acc "
                f"{statistics.median(a for _, _, a in sk):.4f}",
            )
        )
        t_g_ours, g_ours = _grid(lambda: MLPClassifier(**grid, random_state=0), X, y, cfg["cv"])
        t_g_sk, g_sk = _grid(lambda: SkMLP(**grid, random_state=0), X, y, cfg["cv"])
    rows.append(
        (
            f"GridSearchCV(cv={cfg['cv']}) x {len(ALPHAS)}, ours",
            t_g_ours,
            t_g_sk / t_g_ours,
            f"best cv acc {g_ours.best_score_:.4f} (alpha {g_ours.best_params_['alpha']:g})",
        )
    )
    rows.append(
        (
            f"GridSearchCV(cv={cfg['cv']}) x {len(ALPHAS)}, scikit-learn",
            t_g_sk,
            1.0,
            f"best cv acc {g_sk.best_score_:.4f} (alpha {g_sk.best_params_['alpha']:g})",
        )
    )
    print(f"digits {X.shape}, size {args.size!r}, {args.repeats} repeat(s)")
    print(f"{'measurement':42s} {'seconds':>9s} {'speed-up':>9s}  notes")
    for name, sec, ratio, note in rows:
        print(f"{name:42s} {sec:9.3f} {ratio:8.2f}x  {note}")
    return {
        "single_speedup_warm": t_sk / t_ours,
        "single_speedup_cold": t_sk / cold,
        "grid_speedup": t_g_sk / t_g_ours,
        "grid_accuracy_ours": float(g_ours.best_score_),
        "grid_accuracy_sklearn": float(g_sk.best_score_),
    }


if __name__ == "__main__":
    main()
