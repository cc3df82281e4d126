"""``plot_history``: a training history's curves as a matplotlib figure (the ``plot`` extra).

>>> params, history = mj.fit(params, X, y, validation_split=0.1)
>>> fig = mj.plot_history(history)
>>> fig.savefig("curves.png")

matplotlib is imported when the function is called, so ``import mlds_jax`` never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["METRICS", "plot_history"]

#: The per-epoch metrics drawn, one panel each, in this order (those the history holds).
METRICS = ("loss", "accuracy", "label_accuracy", "r2")


def _series(history: Mapping, metric: str) -> dict[str, list]:
    """{"train": [...], "val": [...]} for ``metric``: fit's names ("loss", "val_loss") or the
    command line's ("train_loss", "val_loss")."""
    out = {}
    train = history.get(metric, history.get(f"train_{metric}"))
    if train:
        out["train"] = list(train)
    if history.get(f"val_{metric}"):
        out["val"] = list(history[f"val_{metric}"])
    return out


def plot_history(
    history: Mapping,
    *,
    title: str | None = None,
    lr: float | None = None,
    optimizer: str = "sgd",
) -> Any:
    """One panel per recorded metric (loss, accuracy, label_accuracy, r2), train and val
    curves against the epoch, and λ_max when sharpness was tracked.

    Args:
      history: :func:`mlds_jax.fit`'s :class:`~mlds_jax.History` (or any dict of per-epoch
        lists: "loss"/"train_loss", "val_loss", "accuracy", ...; "sharpness" with
        "sharpness_epoch").  The loss axis is logarithmic when every train loss is > 0.
      title: the figure's title.
      lr: the learning rate η; with sharpness, the line 2/η is drawn (the stability bound of
        plain gradient descent).
      optimizer: its name, for the sharpness panel's caption.

    Returns:
      The ``matplotlib.figure.Figure`` (made with pyplot, so it shows in a notebook; assign
      it, ``fig = mj.plot_history(h)``, to show it once, and ``plt.close(fig)`` when done
      in a loop).

    Raises:
      ImportError: matplotlib is not installed (``pip install 'mlds-jax[plot]'``).
      ValueError: the history has no loss to plot.
    """
    try:
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ModuleNotFoundError:
        raise ImportError("plot_history needs matplotlib: pip install 'mlds-jax[plot]'") from None
    if not isinstance(history, Mapping):
        raise TypeError(f"history must be a dict of per-epoch lists, got {type(history).__name__}")
    panels = [(m, s) for m in METRICS if (s := _series(history, m))]
    if not panels or panels[0][0] != "loss":
        raise ValueError(f"history has no loss to plot (its keys: {sorted(history)})")
    sharp = bool(history.get("sharpness")) and bool(history.get("sharpness_epoch"))
    n = len(panels) + sharp
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    for ax, (metric, series) in zip(axes[0], panels, strict=False):
        for split, values in series.items():
            ax.plot(range(1, len(values) + 1), values, label=split)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        if metric == "loss" and min(series.get("train", [1.0])) > 0:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    if sharp:
        ax = axes[0][-1]
        ax.plot(history["sharpness_epoch"], history["sharpness"], "o-", label="λ_max")
        if lr is not None:
            ax.axhline(2 / lr, color="k", linestyle="--", label="2/η")
        bound = "" if optimizer == "sgd" else f" ({optimizer}: 2/η is the plain-GD bound)"
        ax.set(xlabel="epoch", ylabel="λ_max of the Hessian", title="sharpness" + bound)
        if min(history["sharpness"]) > 0:  # λ_max and 2/η can be orders of magnitude apart
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
