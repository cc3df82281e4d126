"""Defaults that work: every bundled data set, trained by the command line with its defaults
(adam) and with ``--optimizer sgd``, scores on its test split at least what a linear model
(scikit-learn's LogisticRegression / LinearRegression, default settings) scores on the same
split, trained on the same training rows (the network holds 10% of them out for early
stopping; the linear model uses them all).

Accuracy is compared in rows right out of the test split (the network's float32 score and the
linear model's float64 one are counts over the same rows); R² as numbers.  The runs are
in-process, at the defaults (up to 200 epochs, early stopping with patience 50): 1-2 s each on
2 cores.  The CLI's own adam needs JAX's standard dtype promotion (the suite's is strict, see
tests/test_cli.py).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import run_cli

import mlds_jax as mj


def _linear_score(ds) -> float:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if ds.task == "regression":
        return LinearRegression().fit(ds.X_train, ds.y_train).score(ds.X_test, ds.y_test)
    model = LogisticRegression(max_iter=5000).fit(ds.X_train, ds.y_train)
    return model.score(ds.X_test, ds.y_test)


@pytest.mark.slow  # 18 runs at the defaults, ~60 s on 2 cores (each compiles its program)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("name", sorted(mj.datasets.DATASETS))
def test_cli_defaults_reach_a_linear_models_test_score(name, optimizer, tmp_path):
    ds = mj.load_dataset(name)  # the CLI's split: seed 0, test size 0.2
    with jax.numpy_dtype_promotion("standard"):
        rc, out, err = run_cli(["train", "--dataset", name, "--optimizer", optimizer,
                                "--no-progress", "--no-compilation-cache", "--out",
                                str(tmp_path / "run")])
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "history.json").read_text())["summary"]
    linear = _linear_score(ds)
    if ds.task == "regression":
        assert summary["test_r2"] >= linear, (summary["test_r2"], linear)
    else:
        n = len(ds.y_test)
        right, right_linear = round(summary["test_accuracy"] * n), round(linear * n)
        assert right >= right_linear, (right, right_linear, n)
    assert summary["epochs_run"] <= 200 and summary["patience"] == 50
    assert np.isfinite(summary["test_loss"])
