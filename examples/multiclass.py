"""Multiclass classification: softmax output + cross-entropy on the bundled 8x8 digits.

A network ``[64, *hidden, 10]`` (relu hidden layers by default) with a softmax output is
trained on the cross-entropy L = -(1/N) sum_p sum_k y_pk ln(y_hat_pk) with hand-derived
gradients (``grads="manual"``; the output delta is the simplified (1/N)(Y_hat - Y)) and
minibatch SGD.

Prints the test loss and accuracy, per-class recall and the 10 x 10 confusion matrix (rows =
true digit, columns = predicted), and saves a figure: the loss/accuracy curves and the
confusion matrix.

Usage::

    python examples/multiclass.py --hidden 64 --epochs 30 --out multiclass.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.metrics import confusion_matrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

import mlds_jax as mj  # noqa: E402
from mlds_jax.datasets import load_dataset  # noqa: E402

DATASET = "digits"
HIDDEN = "64"  # comma-separated hidden widths, e.g. "128,64"
ACTIVATION = "relu"
LEARNING_RATE = 0.1
EPOCHS = 30
BATCH_SIZE = 32
SEED = 0
OUT = None  # the figure is written only when --out PATH is given
LOSS = "cross_entropy"


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
                        help="rows per update; 0 = full batch (%(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="init key and split (%(default)s)")
    parser.add_argument("--out", default=OUT, metavar="PATH",
                        help="save the figure as this PNG (default: no figure written)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 0 or not args.lr > 0:
        parser.error("need --epochs >= 1, --batch-size >= 0 and --lr > 0")
    return args


def format_confusion(cm: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix as text: rows = true class, columns = predicted class."""
    width = max(4, len(str(int(cm.max()))) + 1, *(len(n) + 1 for n in names))
    lines = ["true\\pred" + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:>9}" + "".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)


def plot(history: dict, cm: np.ndarray, names: Sequence[str], accuracy: float, out: str) -> None:
    """Loss and accuracy curves, and the confusion matrix as an annotated heat map."""
    fig, (ax_loss, ax_acc, ax_cm) = plt.subplots(1, 3, figsize=(16, 4.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key, title in ((ax_loss, "loss", "cross-entropy"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history["val_" + key], label="test")
        ax.set(xlabel="epoch", title=title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_loss.set_yscale("log")

    im = ax_cm.imshow(cm, cmap="Blues")
    k = len(names)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax_cm.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                           color=color)
    ax_cm.set(xticks=range(k), yticks=range(k), xticklabels=names, yticklabels=names,
              xlabel="predicted", ylabel="true",
              title=f"test confusion matrix (accuracy {accuracy:.3f})")
    fig.colorbar(im, ax=ax_cm, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train, print the tables, save the figure; return the metrics."""
    args = parse_args(argv)
    ds = load_dataset(DATASET, seed=args.seed)
    X_train, y_train = ds.X_train, ds.targets("train")  # int32 labels (n,)
    X_test, y_test = ds.X_test, ds.targets("test")
    batch_size = args.batch_size or X_train.shape[0]
    names = list(ds.class_names)
    k = ds.n_outputs

    params = mj.init_mlp(jax.random.key(args.seed), [ds.n_features, *args.hidden, k],
                         hidden=args.activation, output="softmax", dtype=jnp.float32)
    params, history = mj.fit(
        params, X_train, y_train, loss=LOSS, optimizer=optax.sgd(args.lr), epochs=args.epochs,
        batch_size=batch_size, key=jax.random.key(args.seed),
        validation_data=(X_test, y_test), grads="manual", progress=False,
    )
    train = mj.evaluate(params, X_train, y_train, LOSS)
    test = mj.evaluate(params, X_test, y_test, LOSS)
    pred = np.asarray(jnp.argmax(mj.forward(params, X_test), axis=-1))
    cm = confusion_matrix(y_test, pred, labels=np.arange(k))
    recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)

    print(f"digits: {X_train.shape[0]} train / {X_test.shape[0]} test rows, network "
          f"{mj.layer_sizes(params)}, hidden {args.activation}, softmax output, "
          f"alpha = {args.lr}, batch = {batch_size}, {len(history['loss'])} epochs")
    print(f"{'split':<6} {'CE':>8} {'accuracy':>9}")
    print(f"{'train':<6} {train['loss']:>8.4f} {train['accuracy']:>9.4f}")
    print(f"{'test':<6} {test['loss']:>8.4f} {test['accuracy']:>9.4f}")
    print("test recall per class: "
          + "  ".join(f"{n}:{r:.2f}" for n, r in zip(names, recall, strict=True)))
    print("test confusion matrix (rows = true, columns = predicted):")
    print(format_confusion(cm, names))

    if args.out is not None:
        plot(history, cm, names, test["accuracy"], args.out)
        print(f"figure saved to {args.out}")
    return {
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "confusion_matrix": cm,
        "per_class_recall": recall,
        "n_classes": k,
        "epochs": len(history["loss"]),
    }


if __name__ == "__main__":
    main()
