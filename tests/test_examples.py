"""Smoke tests for examples/*.py: each ``main(argv)`` runs tiny, returns sane metrics, saves a PNG.

The examples are scripts, not a package, so they are imported by path.  They run here under
the suite's conftest (x64 enabled, strict dtype and rank promotion); the examples build float32
networks explicitly, so this also checks they are clean under those modes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    """Import examples/<name>.py as a module (without running its ``__main__`` block)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mlds_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and friends look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def run_example(name: str, args: list[str], out: Path) -> dict:
    metrics = load_example(name).main([*args, "--out", str(out)])
    assert isinstance(metrics, dict)
    assert out.is_file(), f"{name} did not write its figure to {out}"
    assert out.read_bytes()[:8] == PNG_MAGIC, f"{out} is not a PNG"
    return metrics


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.parametrize("name", ["regression", "binary_classification", "multiclass",
                                  "manual_vs_autodiff", "gradient_descent"])
def test_import_has_no_side_effects(name, capsys):
    """Importing an example parses no flags and prints nothing: all work is inside main()."""
    module = load_example(name)
    assert callable(module.main)
    assert capsys.readouterr().out == ""


def test_regression(tmp_path, capsys):
    m = run_example("regression", ["--hidden", "4", "--epochs", "30", "--seed", "1"],
                    tmp_path / "regression.png")
    for key in ("train_mse", "test_mse", "train_r2", "test_r2", "test_rmse_original_units"):
        assert _finite(m[key]), (key, m[key])
    assert m["epochs"] == 30
    assert m["train_mse"] > 0 and m["test_mse"] > 0
    # Standardised targets: predicting 0 gives MSE 1; 30 full-batch steps already beat it.
    assert m["train_mse"] < 1.0 and m["train_r2"] > 0.0
    out = capsys.readouterr().out
    assert "R2" in out and "test" in out


def test_binary_classification(tmp_path, capsys):
    m = run_example("binary_classification", ["--hidden", "4", "--epochs", "2"],
                    tmp_path / "binary.png")
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "test_auc"):
        assert _finite(m[key]), (key, m[key])
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["test_auc"] <= 1.0
    # The classes are 37% / 63%; two epochs on well-separated data do far better than that.
    assert m["test_accuracy"] > 0.8 and m["test_auc"] > 0.9
    assert m["test_loss"] < math.log(2)  # better than predicting 0.5 everywhere
    assert "accuracy" in capsys.readouterr().out


def test_multiclass(tmp_path, capsys):
    m = run_example("multiclass", ["--hidden", "8", "--epochs", "2"], tmp_path / "mc.png")
    assert _finite(m["test_loss"]) and _finite(m["test_accuracy"])
    assert m["test_accuracy"] > 0.3  # chance is 0.1 for ten balanced classes
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (10, 10)
    assert cm.sum() == 360  # every test row counted once (20% of 1797, stratified)
    assert math.isclose(np.trace(cm) / cm.sum(), m["test_accuracy"], abs_tol=1e-6)
    out = capsys.readouterr().out
    assert "confusion matrix" in out and "true\\pred" in out


def test_manual_vs_autodiff(tmp_path, capsys):
    m = run_example(
        "manual_vs_autodiff",
        ["--hidden", "8", "--epochs", "2", "--steps", "3", "--repeats", "2"],
        tmp_path / "mva.png",
    )
    # float32 (eps 1.2e-7), parameters of order 1 after 2 x 45 SGD steps: the two gradients
    # differ only in rounding (a few ulp per step), and the measured parameter difference is
    # ~2e-7 (~4e-7 at the default size).  1e-4 is >100x above that yet far below any real
    # bug (a missing 1/N or factor 2 changes the parameters by ~1e-1).
    assert set(m["param_diff"]) == {"W1", "b1", "W2", "b2"}
    assert all(_finite(v) for v in m["param_diff"].values())
    assert m["max_param_diff"] < 1e-4
    assert m["max_history_diff"] < 1e-4
    assert all(_finite(t) and t > 0 for t in m["step_time_s"].values())
    assert len(m["step_time_s"]) == 4  # {manual, autodiff} x {minibatch, full batch}
    assert "autodiff/manual" in capsys.readouterr().out


def test_gradient_descent(tmp_path, capsys):
    m = run_example("gradient_descent", ["--etas", "0.1,0.2,0.26", "--max-iter", "300"],
                    tmp_path / "gd.png")
    runs = m["runs"]
    # The lecture's two step sizes converge to the minimum at 0; 0.26 > 2/lambda_max diverges.
    for eta in (0.1, 0.2):
        assert runs[eta]["converged"], runs[eta]
        assert max(abs(v) for v in runs[eta]["x"]) < 1e-3
    assert runs[0.26]["reason"] == "diverged"
    assert math.isclose(m["eta_max"], 2 / (5 + math.sqrt(10)), rel_tol=1e-5)
    assert "2/lambda_max" in capsys.readouterr().out


def test_sklearn_pipeline(capsys):
    import jax

    # optax's Adam (the estimator's default) raises under the suite's strict promotion
    with jax.numpy_dtype_promotion("standard"):
        m = load_example("sklearn_pipeline").main(
            ["--hidden", "8", "--max-iter", "5", "--folds", "2", "--rows", "200"]
        )
    assert 0.0 <= m["cv_accuracy"] <= 1.0 and m["best_alpha"] in (1e-4, 1e-2)
    assert _finite(m["test_accuracy"]) and _finite(m["evaluate_accuracy"])
    # the estimator's score and mj.evaluate on its params_ agree (same network, same rows)
    assert math.isclose(m["test_accuracy"], m["evaluate_accuracy"], rel_tol=1e-9)
    assert "GridSearchCV" in capsys.readouterr().out
