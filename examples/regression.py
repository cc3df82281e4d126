"""The MLDS notes' two-layer regression network, trained by plain gradient descent.

"Putting it all together" (mlds-gradient-descent-and-backprop.md), on the bundled diabetes
data (10 standardised clinical variables -> disease progression one year later):

* forward:  Z1 = X W1 + B1,  H = f(Z1) (f = sigmoid by default),  Y = Z2 = H W2 + B2,
  L = (1/n) sum (Y* - Y)^2  (loss "mse");
* backward: the notes' steps 1-7, computed by hand (``grads="manual"``, no autodiff);
* update:   W <- W - alpha dL/dW for every W and B (``optax.sgd(alpha)``), full-batch by
  default (``--batch-size 0`` = all training rows), exactly the notes' rule.

Prints train/test MSE and R^2 (MSE in standardised target units; R^2 is unit-free) and saves
a figure: the loss curves, and predicted against true progression on the test set.

Usage::

    python examples/regression.py --hidden 8 --epochs 1000 --lr 0.1 --out regression.png
"""

from __future__ import annotations

import argparse
import math
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

DATASET = "diabetes"
HIDDEN = 8  # width of the notes' single hidden layer H
ACTIVATION = "sigmoid"  # the notes' f
LEARNING_RATE = 0.1  # the notes' alpha
EPOCHS = 1000  # full-batch: one update per epoch
BATCH_SIZE = 0  # 0 = all training rows (full-batch gradient descent, as in the notes)
SEED = 0
OUT = None  # the figure is written only when --out PATH is given
LOSS = "mse"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden width (%(default)s)")
    parser.add_argument("--activation", default=ACTIVATION,
                        choices=sorted(mj.activations.HIDDEN_ACTIVATIONS),
                        help="hidden activation f (%(default)s)")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="step alpha (%(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="rows per update; 0 = full batch (%(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="init key and split (%(default)s)")
    parser.add_argument("--out", default=OUT, metavar="PATH",
                        help="save the figure as this PNG (default: no figure written)")
    args = parser.parse_args(argv)
    if args.hidden < 1 or args.epochs < 1 or args.batch_size < 0 or not args.lr > 0:
        parser.error("need --hidden >= 1, --epochs >= 1, --batch-size >= 0 and --lr > 0")
    return args


def plot(history: dict, y_true: np.ndarray, y_pred: np.ndarray, r2: float, out: str) -> None:
    """Loss curves (log scale) and predicted-vs-true on the test set, in original units."""
    fig, (ax_loss, ax_pred) = plt.subplots(1, 2, figsize=(11, 4.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax_loss.semilogy(epochs, history["loss"], label="train")
    ax_loss.semilogy(epochs, history["val_loss"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="MSE (standardised units)", title="loss")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend()

    ax_pred.scatter(y_true, y_pred, s=14, alpha=0.7)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax_pred.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax_pred.set(xlabel="true progression", ylabel="predicted progression",
                title=f"test set (R² = {r2:.3f})")
    ax_pred.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, print the table, save the figure; return the metrics."""
    args = parse_args(argv)
    ds = load_dataset(DATASET, seed=args.seed)
    X_train, Y_train = ds.X_train, ds.targets("train")
    X_test, Y_test = ds.X_test, ds.targets("test")
    batch_size = args.batch_size or X_train.shape[0]

    params = mj.init_mlp(jax.random.key(args.seed), [ds.n_features, args.hidden, 1],
                         hidden=args.activation, output="identity", dtype=jnp.float32)
    params, history = mj.fit(
        params, X_train, Y_train, loss=LOSS, optimizer=optax.sgd(args.lr), epochs=args.epochs,
        batch_size=batch_size, key=jax.random.key(args.seed),
        validation_data=(X_test, Y_test), grads="manual", progress=False,
    )
    train = mj.evaluate(params, X_train, Y_train, LOSS)
    test = mj.evaluate(params, X_test, Y_test, LOSS)

    print(f"diabetes: {X_train.shape[0]} train / {X_test.shape[0]} test rows, network "
          f"{mj.layer_sizes(params)}, f = {args.activation}, alpha = {args.lr}, "
          f"batch = {batch_size}, {len(history['loss'])} epochs ({history.stop_reason})")
    print(f"{'split':<6} {'MSE':>8} {'R2':>8}")
    print(f"{'train':<6} {train['loss']:>8.4f} {train['r2']:>8.4f}")
    print(f"{'test':<6} {test['loss']:>8.4f} {test['r2']:>8.4f}")

    y_pred = ds.inverse_transform_y(np.asarray(mj.forward(params, X_test)))[:, 0]
    y_true = ds.inverse_transform_y(Y_test)[:, 0]
    if args.out is not None:
        plot(history, y_true, y_pred, test["r2"], args.out)
        print(f"figure saved to {args.out}")
    metrics = {
        "train_mse": train["loss"],
        "test_mse": test["loss"],
        "train_r2": train["r2"],
        "test_r2": test["r2"],
        "test_rmse_original_units": math.sqrt(float(np.mean((y_pred - y_true) ** 2))),
        "epochs": len(history["loss"]),
        "final_train_loss": history["loss"][-1],
    }
    return metrics


if __name__ == "__main__":
    main()
