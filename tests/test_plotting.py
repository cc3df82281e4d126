"""mj.plot_history: one panel per recorded metric, train and val curves, λ_max against 2/η."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # off screen, before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mlds_jax as mj  # noqa: E402


def test_fit_history_gives_a_panel_per_metric_with_its_curves():
    history = mj.History(loss=[1.0, 0.5, 0.25], accuracy=[0.5, 0.7, 0.9],
                         label_accuracy=[0.8, 0.9, 0.95], val_loss=[1.1, 0.6, 0.4],
                         val_accuracy=[0.4, 0.6, 0.8], time=[0.1, 0.1, 0.1])
    fig = mj.plot_history(history, title="run")
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["loss", "accuracy", "label_accuracy"]
        loss_ax = fig.axes[0]
        assert loss_ax.get_yscale() == "log"  # every train loss > 0
        curves = {line.get_label(): line for line in loss_ax.get_lines()}
        assert set(curves) == {"train", "val"}
        np.testing.assert_array_equal(curves["val"].get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(curves["val"].get_ydata(), history["val_loss"])
        assert fig._suptitle is not None and fig._suptitle.get_text() == "run"
    finally:
        plt.close(fig)


def test_command_line_names_and_sharpness_against_two_over_lr():
    history = {"train_loss": [0.0, 1.0], "val_loss": [1.0, 2.0], "train_r2": [0.1, 0.2],
               "sharpness": [3.0], "sharpness_epoch": [2]}
    fig = mj.plot_history(history, lr=0.5)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["loss", "r2", "sharpness"]
        assert fig.axes[0].get_yscale() == "linear"  # a zero loss: no log axis
        sharp = fig.axes[2]
        bound = [line for line in sharp.get_lines() if line.get_label() == "2/η"]
        assert len(bound) == 1 and set(bound[0].get_ydata()) == {4.0}  # 2 / 0.5
    finally:
        plt.close(fig)


def test_a_history_without_a_loss_is_refused():
    with pytest.raises(ValueError, match="history has no loss to plot"):
        mj.plot_history({"time": [1.0]})
    with pytest.raises(TypeError, match="history must be a dict"):
        mj.plot_history([1.0, 2.0])
