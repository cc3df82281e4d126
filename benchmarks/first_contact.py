r"""First contact: what a user waits for when running a script once, beside later runs.

Every number is a whole ``python script.py`` (or a whole call inside one) timed from outside,
with scikit-learn's script measured in the same run, rounds alternated, medians:

* **whole script**: digits (1797 × 64, pixels / 16, float64 as loaded), the default
  ``MLPClassifier(random_state=0)``, ``fit`` then ``score``, imports included.  Ours on a
  *first run* (a fresh, empty persistent compilation cache: a new machine) and on a *later
  run* (the cache that an earlier run of the same script filled: the library's default
  policy, see :mod:`mlds_jax.compilation`), against ``sklearn.neural_network``'s script.
* **first fit in a process**: the ``fit`` call alone, the first in its process (ours
  compiles; the cache empty), against scikit-learn's first ``fit``.
* **GridSearchCV(cv=5) × 4 values of alpha** (``max_iter=40``): the first search in a
  process (cold: compiles, empty cache) and a second identical search in it (warm).

Targets (issue 22; ratios ours ÷ scikit-learn): first run ≤ 1.5×, later runs ≤ 1.25×, first
fit ≤ 1.0×, cold search ≤ 0.5×, warm search ≤ 1/3.

Usage::

    python benchmarks/first_contact.py               # 5 rounds (~3-4 min on 2 cores)
    python benchmarks/first_contact.py --rounds 1    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence

SCRIPT = """
import time
t0 = time.perf_counter()
from sklearn.datasets import load_digits
from {module} import MLPClassifier
X, y = load_digits(return_X_y=True)
X = X / 16.0
t1 = time.perf_counter()
clf = MLPClassifier(random_state=0).fit(X, y)
t2 = time.perf_counter()
score = clf.score(X, y)
print({{"fit": t2 - t1, "score": score, "epochs": clf.n_iter_}})
"""

SEARCH = """
import json, time, warnings
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from {module} import MLPClassifier
X, y = load_digits(return_X_y=True)
X = X / 16.0
warnings.simplefilter("ignore", ConvergenceWarning)
times = []
for _ in range(2):
    t0 = time.perf_counter()
    search = GridSearchCV(MLPClassifier(max_iter=40, random_state=0),
                          {{"alpha": [1e-4, 1e-3, 1e-2, 1e-1]}}, cv=5).fit(X, y)
    times.append(time.perf_counter() - t0)
print(json.dumps({{"cold": times[0], "warm": times[1], "best": search.best_score_}}))
"""

OURS, THEIRS = "mlds_jax.sklearn", "sklearn.neural_network"


def _run(code: str, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds of the whole process, its last stdout line)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1]


def _env(cache: str | None, blas_threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLDS_JAX_COMPILATION_CACHE", None)
    if cache is None:
        env["MLDS_JAX_COMPILATION_CACHE"] = "0"
    else:
        env["MLDS_JAX_CACHE_DIR"] = cache
    if blas_threads is not None:  # scikit-learn's BLAS (NumPy's OpenBLAS) limited
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(blas_threads)
    return env


def measure(rounds: int, log) -> dict[str, list[float]]:
    """Alternated rounds; each round: scikit-learn's script, ours on an empty cache, ours
    again on the cache that run filled; the same for the grid search."""
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cache = os.path.join(tmp, "cache")
            order = ["sk", "sk1", "ours"] if r % 2 == 0 else ["ours", "sk1", "sk"]
            for who in order:
                if who in ("sk", "sk1"):
                    env = _env(None, 1 if who == "sk1" else None)
                    wall, line = _run(SCRIPT.format(module=THEIRS), env)
                    add(f"{who}_script", wall)
                    add(f"{who}_fit", eval(line)["fit"])  # noqa: S307 (our own script's dict)
                else:
                    wall, line = _run(SCRIPT.format(module=OURS), _env(cache))
                    add("ours_first", wall)
                    add("ours_first_fit", eval(line)["fit"])  # noqa: S307
                    wall, line = _run(SCRIPT.format(module=OURS), _env(cache))
                    add("ours_later", wall)
            for who in order:
                if who in ("sk", "sk1"):
                    env = _env(None, 1 if who == "sk1" else None)
                    _, line = _run(SEARCH.format(module=THEIRS), env)
                    res = json.loads(line)
                    add(f"{who}_search_cold", res["cold"])
                    add(f"{who}_search_warm", res["warm"])
                else:
                    _, line = _run(SEARCH.format(module=OURS), _env(os.path.join(tmp, "c2")))
                    res = json.loads(line)
                    add("ours_search_cold", res["cold"])
                    add("ours_search_warm", res["warm"])
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in out.items()))
    return out


def render(m: dict[str, list[float]]) -> list[str]:
    """The table: each row against scikit-learn's faster configuration in this run (as
    installed, or its BLAS on one thread), both shown."""
    med = {k: statistics.median(v) for k, v in m.items()}
    rows = [
        ("whole script, first run (empty cache)", "ours_first", "sk_script", 1.5),
        ("whole script, later run (cache of an earlier run)", "ours_later", "sk_script", 1.25),
        ("first fit in a process", "ours_first_fit", "sk_fit", 1.0),
        ("GridSearchCV(cv=5) × 4, cold", "ours_search_cold", "sk_search_cold", 0.5),
        ("GridSearchCV(cv=5) × 4, warm", "ours_search_warm", "sk_search_warm", 1 / 3),
    ]
    lines = [
        "| what | ours (s) | scikit-learn as installed (s) | … 1 BLAS thread (s) | "
        "ours ÷ the faster | target | met |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, ours, sk, target in rows:
        sk1 = "sk1" + sk[2:]
        ratio = med[ours] / min(med[sk], med[sk1])
        met = "yes" if ratio <= target else "**no**"
        lines.append(f"| {label} | {med[ours]:.2f} | {med[sk]:.2f} | {med[sk1]:.2f} | "
                     f"{ratio:.2f}× | ≤ {target:.2f}× | {met} |")  # fmt: skip
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"first contact: {args.rounds} alternated rounds, medians", flush=True)
    measured = measure(args.rounds, lambda s: print(s, flush=True))
    print()
    print("\n".join(render(measured)))
    print(textwrap.fill(
        "Whole processes timed from outside (imports included); 'first run' uses a new, empty "
        "persistent compilation cache, 'later run' the one the first run filled.", 96))  # fmt: skip
    return measured


if __name__ == "__main__":
    main()
