r"""Whole-call benchmarks: what a user feels, compilation and set-up included.

Three measurements on the real digits data (64-128-64-10, relu/softmax, float32, plain SGD
lr 0.01, batch 32, shuffled epochs), each against baselines measured in the same process:

* **warm whole call**: one complete ``mj.fit(..., epochs=E)`` call with a *fresh*
  ``optax.sgd(0.01)`` and fresh initial parameters, after one earlier call in the process
  (as a user's second call), against a whole ``MLPClassifier(max_iter=E).fit`` and a whole
  PyTorch eager loop of E epochs (model and optimizer built inside the timed region too).
  Interleaved rounds, the median per contender.
* **5-fold cross-validation**: ``StratifiedKFold(5, shuffle=True)``; per fold one ``mj.fit``
  with the held-out fold as ``validation_data`` (its last ``val_accuracy`` is the score)
  against ``MLPClassifier`` with equal settings (``.fit`` then ``.score``).  Wall time of the
  first cross-validation in this process for the JAX side (it may compile; earlier sections
  compiled the no-validation epoch only) and of a repeat, and the mean accuracies.
* **``mlds-jax train``** with its defaults in two fresh processes sharing a new, empty
  persistent compilation cache: the first run fills it, the second reads it.

Run ``benchmarks/run.py`` (these rows are part of its table) or this file alone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from mlds_jax.cli import DEFAULT_EPOCHS

LR = 0.01
TORCH_THREADS: int | None = None  # None: one per core (run.py sets it from --torch-threads)
SIZES = [64, 128, 64, 10]
BATCH = 32


def _params(seed: int):
    import jax
    import jax.numpy as jnp

    import mlds_jax as mj

    return mj.init_mlp(
        jax.random.key(seed), SIZES, hidden="relu", output="softmax", dtype=jnp.float32
    )


def _fit(X, y, epochs: int, seed: int, validation_data=None):
    import jax
    import optax

    import mlds_jax as mj

    params, history = mj.fit(
        _params(seed),
        X,
        y,
        loss="cross_entropy",
        optimizer=optax.sgd(LR),
        epochs=epochs,
        batch_size=BATCH,
        key=jax.random.key(seed),
        validation_data=validation_data,
        progress=False,
    )
    jax.block_until_ready(params)
    return history


def _sklearn(epochs: int, seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=tuple(SIZES[1:-1]),
        activation="relu",
        solver="sgd",
        learning_rate_init=LR,
        momentum=0.0,
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=BATCH,
        max_iter=epochs,
        shuffle=True,
        tol=0.0,
        n_iter_no_change=10**9,
        random_state=seed,
    )


def _sklearn_fit(X, y, epochs: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _sklearn(epochs, seed).fit(X, y)


def _torch_fit(X, y, epochs: int, seed: int) -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS or len(os.sched_getaffinity(0)))
    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    n = Xt.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, BATCH):
            idx = perm[start : start + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[idx]), yt[idx]).backward()
            opt.step()


def warm_whole_call(X, y, epochs: int, rounds: int, with_torch: bool, log) -> dict[str, Any]:
    """Median wall time of a whole call per contender, interleaved; round 0 is the warm-up
    (the call that compiles, for fit)."""
    contenders = {
        "fit": lambda s: _fit(X, y, epochs, s),
        "sklearn": lambda s: _sklearn_fit(X, y, epochs, s),
    }
    if with_torch:
        contenders["torch"] = lambda s: _torch_fit(X, y, epochs, s)
    names = list(contenders)
    times: dict[str, list[float]] = {c: [] for c in names}
    first: dict[str, float] = {}
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for c in order:
            time.sleep(0.02)
            t0 = time.perf_counter()
            contenders[c](r)
            dt = time.perf_counter() - t0
            if r == 0:
                first[c] = dt
            else:
                times[c].append(dt)
        log(
            f"  whole call round {r}: "
            + ", ".join(f"{c} {1e3 * (times[c][-1] if r else first[c]):.0f} ms" for c in names)
        )
    out = {
        c: {"median_s": statistics.median(v), "min_s": min(v), "first_s": first[c], "samples_s": v}
        for c, v in times.items()
    }
    return {"epochs": epochs, "rounds": rounds, "contenders": out}


def cross_validation(X, y, epochs: int, folds: int = 5) -> dict[str, Any]:
    """k-fold CV wall time and mean accuracy: mj.fit (first run in the process, then a
    repeat) and MLPClassifier with equal settings."""
    from sklearn.model_selection import StratifiedKFold

    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y))

    def jax_cv() -> tuple[float, float]:
        t0 = time.perf_counter()
        accs = [
            _fit(X[tr], y[tr], epochs, i, validation_data=(X[te], y[te]))["val_accuracy"][-1]
            for i, (tr, te) in enumerate(splits)
        ]
        return time.perf_counter() - t0, float(np.mean(accs))

    def sk_cv() -> tuple[float, float]:
        t0 = time.perf_counter()
        accs = [
            _sklearn_fit(X[tr], y[tr], epochs, i).score(X[te], y[te])
            for i, (tr, te) in enumerate(splits)
        ]
        return time.perf_counter() - t0, float(np.mean(accs))

    fit_first, acc = jax_cv()
    sk_s, sk_acc = sk_cv()
    fit_repeat, _ = jax_cv()
    return {
        "folds": folds,
        "epochs": epochs,
        "fit_first_s": fit_first,
        "fit_repeat_s": fit_repeat,
        "fit_accuracy": acc,
        "sklearn_s": sk_s,
        "sklearn_accuracy": sk_acc,
        "train_rows": sorted({len(tr) for tr, _ in splits}),
        "test_rows": sorted({len(te) for _, te in splits}),
    }


def cli_runs(epochs: int | None = None) -> dict[str, Any]:
    """``mlds-jax train`` (defaults, --no-progress) twice in fresh processes with a new cache
    directory: wall times and the JAX compile time the process reports."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MLDS_JAX_CACHE_DIR=cache)
        argv = [sys.executable, "-m", "mlds_jax.cli", "train", "--no-progress"]
        if epochs is not None:
            argv += ["--epochs", str(epochs)]
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
            walls.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise RuntimeError(f"mlds-jax train failed: {res.stderr[-2000:]}")
        entries = len(os.listdir(cache))
    return {
        "first_s": walls[0],
        "second_s": walls[1],
        "ratio": walls[1] / walls[0],
        "cache_entries": entries,
        "epochs": epochs if epochs is not None else f"default (up to {DEFAULT_EPOCHS})",
    }


def run_all(X, y, *, tiny: bool, with_torch: bool, log) -> dict[str, Any]:
    epochs = 2 if tiny else 10
    out: dict[str, Any] = {}
    log("whole calls (digits, batch 32, fresh optax.sgd each call) ...")
    out["warm_call"] = warm_whole_call(X, y, epochs, 2 if tiny else 7, with_torch, log)
    log("5-fold cross-validation ...")
    out["cv"] = cross_validation(X, y, 2 if tiny else 20)
    log("mlds-jax train, two fresh processes ...")
    out["cli"] = cli_runs(2 if tiny else None)
    return out


def render(wc: dict[str, Any]) -> list[str]:
    lines = ["", "## Whole calls (what a user feels: compilation and set-up included)", ""]
    w = wc["warm_call"]
    c = w["contenders"]
    fit = c["fit"]["median_s"]
    lines += [
        f"A warm whole call: digits 64-128-64-10, {w['epochs']} epochs, batch 32, float32, "
        f"fresh `optax.sgd(0.01)` / model each call; median of {w['rounds']} "
        "interleaved rounds after one warm-up call each.",
        "",
        "| contender | whole call (ms) | min (ms) | first call (ms) | fit's speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "fit": "`mj.fit`",
        "sklearn": "scikit-learn `MLPClassifier.fit`",
        "torch": "PyTorch eager loop",
    }
    for name, v in c.items():
        lines.append(
            f"| {labels[name]} | {1e3 * v['median_s']:.1f} | {1e3 * v['min_s']:.1f} "
            f"| {1e3 * v['first_s']:.0f} | {v['median_s'] / fit:.2f}× |"
        )
    cv = wc["cv"]
    lines += [
        "",
        f"{cv['folds']}-fold cross-validation on digits ({cv['epochs']} epochs per "
        f"fold, batch 32, sgd 0.01; train folds of {cv['train_rows']} rows):",
        "",
        "| contender | wall (s) | mean accuracy |",
        "|---|---:|---:|",
        f"| `mj.fit`, first CV in the process | {cv['fit_first_s']:.2f} | "
        f"{cv['fit_accuracy']:.4f} |",
        f"| `mj.fit`, repeat | {cv['fit_repeat_s']:.2f} | {cv['fit_accuracy']:.4f} |",
        f"| scikit-learn `MLPClassifier` | {cv['sklearn_s']:.2f} | {cv['sklearn_accuracy']:.4f} |",
    ]
    cli = wc["cli"]
    lines += [
        "",
        f"`mlds-jax train` (defaults, {cli['epochs']} epochs, `--no-progress`) in fresh "
        f"processes, new persistent cache: first run {cli['first_s']:.2f} s, second "
        f"{cli['second_s']:.2f} s ({cli['ratio']:.2f}× the first; "
        f"{cli['cache_entries']} cache entries).",
    ]
    return lines


def targets(wc: dict[str, Any]) -> list[tuple[str, float | None, bool | None, str]]:
    """(target, value, met, formatted value) for the whole-call targets of issue 11."""
    out = []
    c = wc["warm_call"]["contenders"]
    for other in ("sklearn", "torch"):
        v = c[other]["median_s"] / c["fit"]["median_s"] if other in c else None
        out.append(
            (
                f"warm whole fit call (10 digits epochs, batch 32) ≥ 4× faster than {other}",
                v,
                None if v is None else v >= 4,
                "–" if v is None else f"{v:.2f}×",
            )
        )
    cv = wc["cv"]
    v = cv["sklearn_s"] / cv["fit_first_s"]
    dacc = abs(cv["fit_accuracy"] - cv["sklearn_accuracy"])
    out.append(
        (
            "5-fold CV on digits ≥ 3× faster than MLPClassifier (first CV in the process)",
            v,
            v >= 3,
            f"{v:.2f}×",
        )
    )
    out.append(
        (
            "5-fold CV accuracy equal to MLPClassifier's ±1 point",
            dacc,
            dacc <= 0.01,
            f"{100 * dacc:.2f} points",
        )
    )
    r = wc["cli"]["ratio"]
    out.append(
        ("second `mlds-jax train` run ≤ 0.6× the first's wall time", r, r <= 0.6, f"{r:.2f}×")
    )
    return out


if __name__ == "__main__":
    from run import digits_data, torch_available

    if "--torch-threads" in sys.argv:
        TORCH_THREADS = int(sys.argv[sys.argv.index("--torch-threads") + 1])
    Xd, yd = digits_data()
    res = run_all(
        Xd,
        yd,
        tiny="--tiny" in sys.argv,
        with_torch=torch_available(),
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print("\n".join(render(res)))
    for t in targets(res):
        print(f"| {t[0]} | {t[3]} | {t[2]} |")
