"""Hand-derived backprop against ``jax.grad``: same training, same numbers, step times.

Trains the same network (same key, same data, same minibatch order) twice with ``mj.fit``, once
with ``grads="manual"`` (the notes' chain rule, written out) and once with ``grads="autodiff"``
(``jax.grad``), then reports

* the largest absolute difference of every parameter leaf (W1, b1, W2, ...) after training,
  and of the per-epoch loss / accuracy histories.  The mathematics is identical; only the
  floating-point association of the sums differs, so the results agree to rounding error (in
  float32 about 1e-6 or less after a few epochs) rather than bit for bit;
* the time of one compiled train step (``mj.make_train_step(...).jitted``, warmed up first,
  each call blocked with ``jax.block_until_ready``; median over repeats) for a minibatch and for
  the full training set.

Prints the tables and saves bar charts of the step times next to the two loss histories.

Usage::

    python examples/manual_vs_autodiff.py --hidden 128,64 --epochs 5 --out manual_vs_autodiff.png
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

import mlds_jax as mj  # noqa: E402
from mlds_jax.datasets import load_dataset  # noqa: E402

DATASET = "digits"
HIDDEN = "128,64"  # comma-separated hidden widths
ACTIVATION = "sigmoid"
LEARNING_RATE = 0.5
EPOCHS = 5
BATCH_SIZE = 32
STEPS_PER_REPEAT = 50  # timed steps per repeat
REPEATS = 7  # the median of these is reported
SEED = 0
OUT = None  # the figure is written only when --out PATH is given
LOSS = "cross_entropy"
GRADS = ("manual", "autodiff")


def _widths(text: str) -> list[int]:
    """Parse comma-separated hidden widths, e.g. "128,64"."""
    try:
        widths = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        widths = []
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"expected widths >= 1 like 64 or 128,64, got {text!r}")
    return widths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=_widths, default=_widths(HIDDEN),
                        help=f"comma-separated hidden widths ({HIDDEN})")
    parser.add_argument("--activation", default=ACTIVATION,
                        choices=sorted(mj.activations.HIDDEN_ACTIVATIONS),
                        help="hidden activation (%(default)s)")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="SGD step (%(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="rows per update, also the timed minibatch (%(default)s)")
    parser.add_argument("--steps", type=int, default=STEPS_PER_REPEAT,
                        help="timed steps per repeat (%(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help="timing repeats, median reported (%(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="init key and split (%(default)s)")
    parser.add_argument("--out", default=OUT, metavar="PATH",
                        help="save the figure as this PNG (default: no figure written)")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.steps, args.repeats) < 1 or not args.lr > 0:
        parser.error("need --epochs, --batch-size, --steps, --repeats >= 1 and --lr > 0")
    return args


def leaf_differences(a: mj.Params, b: mj.Params) -> dict[str, float]:
    """max |a - b| for every leaf, named W1, b1, W2, b2, ... (layer numbers from 1)."""
    diffs = {}
    for i, (la, lb) in enumerate(zip(a, b, strict=True), start=1):
        diffs[f"W{i}"] = float(jnp.max(jnp.abs(la.W - lb.W)))
        diffs[f"b{i}"] = float(jnp.max(jnp.abs(la.b - lb.b)))
    return diffs


def time_steps(steps: dict, params, opt_state, X, Y, n_steps: int, repeats: int) -> dict:
    """Median seconds per call of each ``step.jitted``, every call blocked until ready.

    ``steps`` maps a name to a :class:`mlds_jax.TrainStep`.  The parameters are threaded
    through the calls as in a training loop.  Each step is first called once through its
    checked ``__call__`` (compilation, not timed); then the repeats alternate between the steps,
    so a change in machine load affects all of them alike.
    """
    state = {}
    for name, step in steps.items():
        state[name] = jax.block_until_ready(step(params, opt_state, X, Y)[:2])  # warm-up
    per_step = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            p, s = state[name]
            t0 = time.perf_counter()
            for _ in range(n_steps):
                p, s, metrics = step.jitted(p, s, X, Y)
                jax.block_until_ready((p, s, metrics))
            per_step[name].append((time.perf_counter() - t0) / n_steps)
            state[name] = (p, s)
    return {name: statistics.median(ts) for name, ts in per_step.items()}


def plot(times: dict, batches: Sequence[int], histories: dict, out: str) -> None:
    """One bar panel of step times per batch size (linear scale), then the loss histories."""
    fig, axes = plt.subplots(1, len(batches) + 1, figsize=(5 * (len(batches) + 1), 4.5))
    for ax, b in zip(axes[:-1], batches, strict=True):
        us = [times[(g, b)] * 1e6 for g in GRADS]
        bars = ax.bar(GRADS, us, color=["tab:blue", "tab:orange"])
        ax.bar_label(bars, fmt="%.0f")
        ax.set(ylabel="µs per compiled train step (median)", title=f"step time, batch {b}")
        ax.margins(y=0.15)

    ax_h = axes[-1]
    for grads, style in zip(GRADS, ("-", "--"), strict=True):
        hist = histories[grads]["loss"]
        ax_h.plot(np.arange(1, len(hist) + 1), hist, style, marker="o", label=grads)
    ax_h.set(xlabel="epoch", ylabel="mean training loss", title="loss histories (overlap)")
    ax_h.xaxis.get_major_locator().set_params(integer=True)
    ax_h.grid(True, alpha=0.3)
    ax_h.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train twice, compare, time the steps; print the tables, save the figure, return metrics."""
    args = parse_args(argv)
    ds = load_dataset(DATASET, seed=args.seed)
    X_train, y_train = ds.X_train, ds.targets("train")
    sizes = [ds.n_features, *args.hidden, ds.n_outputs]
    params0 = mj.init_mlp(jax.random.key(args.seed), sizes, hidden=args.activation,
                          output="softmax", dtype=jnp.float32)

    trained, histories = {}, {}
    for grads in GRADS:
        trained[grads], histories[grads] = mj.fit(
            params0, X_train, y_train, loss=LOSS, optimizer=optax.sgd(args.lr),
            epochs=args.epochs, batch_size=args.batch_size, key=jax.random.key(args.seed),
            validation_data=(ds.X_test, ds.targets("test")), grads=grads, progress=False,
        )
    leaf_diff = leaf_differences(trained["manual"], trained["autodiff"])
    hist_diff = {
        k: float(np.max(np.abs(np.subtract(histories["manual"][k], histories["autodiff"][k]))))
        for k in ("loss", "accuracy", "val_loss", "val_accuracy")
    }
    max_param_diff = max(leaf_diff.values())
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(
        trained["manual"]))

    print(f"digits, network {sizes} ({args.activation} hidden, softmax output), "
          f"float32, sgd alpha = {args.lr}, batch {args.batch_size}, {args.epochs} epochs, "
          f"same key for both runs")
    print(f"{'leaf':<6} {'shape':>10} {'max |manual - autodiff|':>24}")
    for i, layer in enumerate(trained["manual"], start=1):
        for name, leaf in ((f"W{i}", layer.W), (f"b{i}", layer.b)):
            print(f"{name:<6} {str(tuple(leaf.shape)):>10} {leaf_diff[name]:>24.3e}")
    print(f"largest parameter magnitude {scale:.3g}; float32 eps = {np.finfo(np.float32).eps:.3g}")
    print(f"{'history':<13} {'manual (last)':>14} {'autodiff (last)':>16} {'max |diff|':>11}")
    for k, d in hist_diff.items():
        print(f"{k:<13} {histories['manual'][k][-1]:>14.6f} "
              f"{histories['autodiff'][k][-1]:>16.6f} {d:>11.3e}")

    # Step timing, on a minibatch and on the whole training set.
    Y_onehot = ds.Y_train_onehot  # step.jitted skips the label -> one-hot preparation
    batches = sorted({min(args.batch_size, X_train.shape[0]), X_train.shape[0]})
    times = {}
    optimizer = optax.sgd(args.lr)
    steps = {g: mj.make_train_step(optimizer, LOSS, grads=g) for g in GRADS}
    for b in batches:
        X, Y = jnp.asarray(X_train[:b]), jnp.asarray(Y_onehot[:b])
        medians = time_steps(steps, params0, optimizer.init(params0), X, Y, args.steps,
                             args.repeats)
        times.update({(g, b): t for g, t in medians.items()})
    print(f"{'batch':>6} {'manual µs':>10} {'autodiff µs':>12} {'autodiff/manual':>16}")
    for b in batches:
        m, a = times[("manual", b)], times[("autodiff", b)]
        print(f"{b:>6} {m * 1e6:>10.1f} {a * 1e6:>12.1f} {a / m:>16.2f}")
    print(f"(median of {args.repeats} x {args.steps} jitted steps on {jax.devices()[0].platform})")

    if args.out is not None:
        plot(times, batches, histories, args.out)
        print(f"figure saved to {args.out}")
    return {
        "max_param_diff": max_param_diff,
        "param_diff": leaf_diff,
        "history_diff": hist_diff,
        "max_history_diff": max(hist_diff.values()),
        "param_scale": scale,
        "final_loss": {g: histories[g]["loss"][-1] for g in GRADS},
        "val_accuracy": {g: histories[g]["val_accuracy"][-1] for g in GRADS},
        "step_time_s": {f"{g}_batch{b}": t for (g, b), t in times.items()},
        "speedup_autodiff_over_manual": {
            b: times[("autodiff", b)] / times[("manual", b)] for b in batches
        },
    }


if __name__ == "__main__":
    main()
