r"""mlds_jax.sklearn.MLPClassifier against scikit-learn's MLPClassifier, equal settings.

Digits (1797 × 64, 10 classes, pixels / 16), the same float32 arrays for both sides, the
same parameters (the defaults: hidden (100,), Adam 1e-3, batch "auto" = 200, shuffle,
max_iter 200, tol 1e-4, n_iter_no_change 10):

* **single fit**: whole ``fit`` calls of the default classifier.  Ours cold (the first fit
  in this process, compilation included) and warm (a fresh estimator after that: a user's
  later fits); medians over ``--repeats`` interleaved rounds.
* **GridSearchCV(cv=5)** over 4 values of ``alpha``: 20 fits, their scoring and the refit,
  ``n_jobs=1``; ours is the first search in the process for its fold shapes (it compiles).

scikit-learn runs twice: as installed (its BLAS with the default thread count) and with its
BLAS limited to one thread (``threadpoolctl``), which on a small shared machine is often its
faster configuration: the speed-ups are given against both.  Prints a table.

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
from threadpoolctl import threadpool_limits

from mlds_jax.sklearn import MLPClassifier

SIZES = {
    "tiny": dict(rows=300, hidden=(16,), max_iter=5, cv=5),
    "full": dict(rows=0, hidden=(100,), max_iter=200, cv=5),
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
    settings = dict(hidden_layer_sizes=cfg["hidden"], max_iter=cfg["max_iter"])
    contenders = {
        "ours": (MLPClassifier, None),
        "scikit-learn": (SkMLP, None),
        "scikit-learn, 1 BLAS thread": (SkMLP, 1),
    }
    fits: dict[str, list] = {name: [] for name in contenders}
    grids: dict[str, tuple] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold, _ = _timed_fit(lambda: MLPClassifier(**settings, random_state=0), X, y)
        for r in range(args.repeats):  # interleaved rounds
            for name, (cls, threads) in contenders.items():
                with threadpool_limits(threads):
                    t, est = _timed_fit(lambda c=cls, r=r: c(**settings, random_state=r + 1), X, y)
                fits[name].append((t, est.n_iter_, est.score(X, y)))
        for name, (cls, threads) in contenders.items():
            with threadpool_limits(threads):
                grids[name] = _grid(lambda c=cls: c(**settings, random_state=0), X, y, cfg["cv"])
    t_fit = {name: statistics.median(t for t, _, _ in v) for name, v in fits.items()}
    sk, sk1 = "scikit-learn", "scikit-learn, 1 BLAS thread"
    rows = [("single fit, ours cold (compiles)", cold, t_fit[sk] / cold, t_fit[sk1] / cold, "")]
    for name, v in fits.items():
        note = f"epochs {[n for _, n, _ in v]}, train acc {statistics.median(a for *_, a in v):.4f}"
        ratio = (t_fit[sk] / t_fit[name], t_fit[sk1] / t_fit[name])
        rows.append(
            (f"single fit, {name}" + (" warm" if name == "ours" else ""), t_fit[name], *ratio, note)
        )
    for name, (t, search) in grids.items():
        note = f"best cv acc {search.best_score_:.4f} (alpha {search.best_params_['alpha']:g})"
        rows.append(
            (
                f"GridSearchCV(cv={cfg['cv']}) x {len(ALPHAS)}, {name}",
                t,
                grids[sk][0] / t,
                grids[sk1][0] / t,
                note,
            )
        )
    print(
        f"digits {X.shape}, size {args.size!r}, {args.repeats} repeat(s); speed-up = "
        "scikit-learn's time / this row's (vs as installed | vs 1 BLAS thread)"
    )
    print(f"{'measurement':48s} {'seconds':>8s} {'vs sk':>7s} {'vs sk1':>7s}  notes")
    for name, sec, r_sk, r_sk1, note in rows:
        print(f"{name:48s} {sec:8.3f} {r_sk:6.2f}x {r_sk1:6.2f}x  {note}")
    return {
        "single_speedup_warm": t_fit[sk] / t_fit["ours"],
        "single_speedup_warm_1thread": t_fit[sk1] / t_fit["ours"],
        "single_speedup_cold": t_fit[sk] / cold,
        "grid_speedup": grids[sk][0] / grids["ours"][0],
        "grid_speedup_1thread": grids[sk1][0] / grids["ours"][0],
        "grid_accuracy_ours": float(grids["ours"][1].best_score_),
        "grid_accuracy_sklearn": float(grids[sk][1].best_score_),
    }


if __name__ == "__main__":
    main()
