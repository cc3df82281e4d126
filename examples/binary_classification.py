"""Binary classification with a sigmoid output and binary cross-entropy (the BCE notes).

On the bundled breast-cancer data (30 standardised features, 0 = malignant, 1 = benign), a
network ``[30, hidden, 1]`` with sigmoid hidden units and one sigmoid output unit minimises

    L = (1/M) sum_i -( y_i ln(y_hat_i) + (1 - y_i) ln(1 - y_hat_i) )

with the hand-derived gradients (``grads="manual"``): at the output the notes' simplification
dL/dz = (1/M)(y_hat - y) (binary-cross-entropy-gradient.md), then the chain rule backwards.
Minibatch gradient descent (``optax.sgd``).

Prints train/test loss, accuracy and ROC AUC, and saves a figure: loss and accuracy curves and
the test ROC curve.

Usage::

    python examples/binary_classification.py --hidden 16 --epochs 50 --out binary.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.metrics import roc_auc_score, roc_curve

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

import mlds_jax as mj  # noqa: E402
from mlds_jax.datasets import load_dataset  # noqa: E402

DATASET = "breast_cancer"
HIDDEN = 16
ACTIVATION = "sigmoid"
LEARNING_RATE = 0.5
EPOCHS = 50
BATCH_SIZE = 32
SEED = 0
OUT = None  # the figure is written only when --out PATH is given
LOSS = "binary_cross_entropy"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden width (%(default)s)")
    parser.add_argument("--activation", default=ACTIVATION,
                        choices=sorted(mj.activations.HIDDEN_ACTIVATIONS),
                        help="hidden activation (%(default)s)")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="SGD step (%(default)s)")
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


def plot(history: dict, y_test: np.ndarray, p_test: np.ndarray, auc: float, out: str) -> None:
    """Loss curves, accuracy curves and the test ROC curve."""
    fig, (ax_loss, ax_acc, ax_roc) = plt.subplots(1, 3, figsize=(15, 4.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key, title in ((ax_loss, "loss", "binary cross-entropy"),
                           (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history["val_" + key], label="test")
        ax.set(xlabel="epoch", title=title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_loss.set_yscale("log")

    fpr, tpr, _ = roc_curve(y_test, p_test)
    ax_roc.plot(fpr, tpr, label=f"network (AUC = {auc:.3f})")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate",
               title="test ROC (positive = benign)", aspect="equal")
    ax_roc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, print the table, save the figure; return the metrics."""
    args = parse_args(argv)
    ds = load_dataset(DATASET, seed=args.seed)
    X_train, Y_train = ds.X_train, ds.targets("train")  # Y: (n, 1) 0/1 floats
    X_test, Y_test = ds.X_test, ds.targets("test")
    batch_size = args.batch_size or X_train.shape[0]

    params = mj.init_mlp(jax.random.key(args.seed), [ds.n_features, args.hidden, 1],
                         hidden=args.activation, output="sigmoid", dtype=jnp.float32)
    params, history = mj.fit(
        params, X_train, Y_train, loss=LOSS, optimizer=optax.sgd(args.lr), epochs=args.epochs,
        batch_size=batch_size, key=jax.random.key(args.seed),
        validation_data=(X_test, Y_test), grads="manual", progress=False,
    )
    train = mj.evaluate(params, X_train, Y_train, LOSS)
    test = mj.evaluate(params, X_test, Y_test, LOSS)
    p_train = np.asarray(mj.forward(params, X_train))[:, 0]
    p_test = np.asarray(mj.forward(params, X_test))[:, 0]
    auc_train = float(roc_auc_score(ds.y_train, p_train))
    auc_test = float(roc_auc_score(ds.y_test, p_test))

    print(f"breast_cancer: {X_train.shape[0]} train / {X_test.shape[0]} test rows, network "
          f"{mj.layer_sizes(params)}, hidden {args.activation}, sigmoid output, "
          f"alpha = {args.lr}, batch = {batch_size}, {len(history['loss'])} epochs")
    print(f"{'split':<6} {'BCE':>8} {'accuracy':>9} {'ROC AUC':>8}")
    print(f"{'train':<6} {train['loss']:>8.4f} {train['accuracy']:>9.4f} {auc_train:>8.4f}")
    print(f"{'test':<6} {test['loss']:>8.4f} {test['accuracy']:>9.4f} {auc_test:>8.4f}")

    if args.out is not None:
        plot(history, ds.y_test, p_test, auc_test, args.out)
        print(f"figure saved to {args.out}")
    return {
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "train_auc": auc_train,
        "test_auc": auc_test,
        "epochs": len(history["loss"]),
    }


if __name__ == "__main__":
    main()
