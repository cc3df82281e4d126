"""Tests for the ``mlds-jax`` command line (mlds_jax.cli).

Most tests call ``mlds_jax.cli.main`` in-process (argparse exits become ``SystemExit``);
one test runs the installed console script and ``python -m mlds_jax.cli`` in subprocesses,
with JAX's default configuration (float32, standard promotion).

In-process runs share this suite's strict dtype promotion (conftest.py), under which optax's
adam cannot trace (its bias correction mixes a Python float with an int32 step count), so the
in-process ``train`` runs use ``--optimizer momentum``/``sgd``; the default adam path runs in the
subprocess test.

The last sections: bad numeric and name option values (one error line, exit 2), and Ctrl-C
during training (exit 130, nothing written to --out).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import one_error_line, patching, run_cli

import mlds_jax as mj
from mlds_jax import cli, compilation
from mlds_jax.training import validation_split_indices

REAL_ENABLE = compilation.enable_compilation_cache
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _no_persistent_cache_in_process(tmp_path_factory):
    """In-process runs must not switch on JAX's persistent cache for the whole test process,
    nor write into the user's home: ``enable_compilation_cache`` is recorded, not run."""
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compilation, "enable_compilation_cache", lambda path=None: calls.append(path))
        mp.setenv("MLDS_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("jax-cache")))
        yield calls


def run_main(argv: list[str]) -> int:
    """``cli.main(argv)`` as an exit status, whether it returns or argparse exits."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code


def assert_one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One in-process ``train`` on iris (2 epochs), without --no-progress: stdout is not a
    terminal here, so the epoch log goes to stdout instead of a bar."""
    out = tmp_path_factory.mktemp("train") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = run_main(["train", "--dataset", "iris", "--epochs", "2", "--optimizer", "momentum",
                       "--hidden-sizes", "16,8", "--seed", "1", "--out", str(out)])
    return {"rc": rc, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_train_writes_model_history_and_curves(trained):
    assert trained["rc"] == 0, trained["stderr"]
    assert trained["stderr"] == ""
    out: Path = trained["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "history.csv", "history.json", "model.npz", "train_state.npz"]
    assert os.listdir(out.parent) == ["run"]  # the work directory went with the publication

    payload = json.loads((out / "history.json").read_text())
    assert set(payload) == {"history", "summary"}
    history, summary = payload["history"], payload["summary"]
    assert set(history) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "time"}
    assert all(len(v) == 2 for v in history.values())
    # float32 results are written as their shortest float32 repr, not float64 noise
    assert all(str(np.float32(v)) == repr(v) for v in history["train_loss"])
    assert summary["dataset"] == "iris"
    assert summary["sizes"] == [4, 16, 8, 3]
    assert summary["epochs_run"] == 2
    assert summary["stop_reason"] == "completed"
    assert summary["optimizer"] == "momentum" and summary["grads"] == "manual"
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["validation_fraction"] == 0.1
    # the rows the header printed, and every float32 result as the user saw it
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (108, 12, 30)
    for key in ("test_loss", "test_accuracy"):
        assert str(np.float32(summary[key])) == repr(summary[key])
    # the val metrics come from held-out training rows, not from the test split
    ds = mj.load_dataset("iris", seed=1)
    _, val_idx = validation_split_indices(
        jax.random.split(jax.random.key(1))[1], ds.y_train, 0.1, stratify=True)
    X_val, y_val = ds.X_train[val_idx], ds.y_train[val_idx]
    params = mj.load(out / "model.npz")
    val = mj.evaluate(params, X_val, y_val)
    np.testing.assert_allclose(history["val_loss"][-1], val["loss"], rtol=1e-5)
    test = mj.evaluate(params, ds.X_test, ds.y_test)
    np.testing.assert_allclose(summary["test_loss"], test["loss"], rtol=1e-6)

    with open(out / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", *history]
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], history[rows[0][1]])

    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)

    params, meta = mj.load(out / "model.npz", return_metadata=True)
    assert mj.layer_sizes(params) == [4, 16, 8, 3]
    assert [layer.activation for layer in params] == ["tanh", "tanh", "softmax"]  # the default
    # the summary, plus the preprocessing predict/evaluate --data apply to raw rows
    preprocessing = meta.pop("preprocessing")
    assert meta == summary
    assert preprocessing["features"] == list(ds.feature_names)
    assert preprocessing["classes"] == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(preprocessing["x_mean"], ds.mean)


def test_train_prints_header_epoch_log_and_summary(trained):
    lines = trained["stdout"].splitlines()
    assert lines[0].startswith("mlds-jax train: iris (multiclass; 108 train / 12 val / 30 test")
    assert lines[0].endswith("on CPU")
    assert lines[1] == ("up to 2 epochs, keeping the best val_loss epoch (early stopping: "
                        "patience 50)")
    assert "train_loss" in lines[2] and "val_loss" in lines[2]
    assert any(line.startswith("epoch    1/2") for line in lines)
    assert any(line.startswith("epoch    2/2") for line in lines)
    assert any(line.startswith("trained 2 epochs") and "test accuracy" in line for line in lines)
    assert lines[-1].startswith("wrote ")


def test_evaluate_checkpoint(trained, capsys):
    rc = run_main(["evaluate", "--checkpoint", str(trained["out"] / "model.npz")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    summary = json.loads((trained["out"] / "history.json").read_text())["summary"]
    # the data set, split seed and loss come from the checkpoint's metadata
    assert "on iris test split (30 rows)" in out
    assert f"accuracy {summary['test_accuracy']:.4f}" in out
    assert f"loss {summary['test_loss']:.4f}" in out


def test_gradcheck_default_passes(capsys):
    rc = run_main(["gradcheck"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "PASS" in out and "FAIL" not in out
    assert "cross_entropy" in out


def test_gradcheck_identity_mse_general(capsys):
    rc = run_main(["gradcheck", "--output", "identity", "--loss", "mse", "--general",
                   "--sizes", "3,4,2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True and report["loss"] == "mse"
    assert len(report["leaves"]) == 4  # W and b of two layers


@pytest.mark.parametrize("argv", [[], ["train"], ["gradcheck"], ["evaluate"]])
def test_help_exits_zero(argv, capsys):
    assert run_main([*argv, "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: mlds-jax")
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--optimizer", "foo"], "--optimizer"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--epochs", "two"], "--epochs"),
        (["train", "--epochs", "2.5"], "expected a whole number"),
        (["train", "--epochs", "0"], "must be a whole number >= 1"),
        (["train", "--hidden-sizes", ""], "--hidden-sizes"),
        (["train", "--validation-fraction", "1"], "--validation-fraction"),
        (["train", "--dataset", "diabetes", "--loss", "cross_entropy"], "regression"),
        (["train", "--hidden-sizes", "a,b"], "--hidden-sizes"),
        (["train", "--lr", "-0.1"], "--lr"),
        (["train", "--dataset", "mnist"], "--dataset"),
        (["train", "--test-size", "1.5"], "--test-size"),
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
        (["evaluate"], "--checkpoint"),
        (["gradcheck", "--sizes", "5"], "--sizes"),
        (["gradcheck", "--batch", "0"], "--batch"),
        (["gradcheck", "--output", "softmax", "--loss", "binary_cross_entropy"], "sigmoid"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, needle, capsys):
    assert run_main(argv) == 2
    out, err = capsys.readouterr()
    line = assert_one_error_line(err)
    assert needle in line
    assert out == ""


def test_unwritable_out_exits_2_before_training(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file")
    rc = run_main(["train", "--dataset", "iris", "--epochs", "1", "--no-progress",
                   "--out", str(blocker / "sub")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "--out" in assert_one_error_line(err)
    assert out == ""  # failed before loading data or training
    assert blocker.read_text() == "a regular file"


def test_evaluate_missing_checkpoint_exits_2(tmp_path, capsys):
    rc = run_main(["evaluate", "--checkpoint", str(tmp_path / "nope.npz")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "does not exist" in assert_one_error_line(err)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"PK\x03\x04garbage"])
def test_evaluate_corrupt_checkpoint_exits_2(tmp_path, capsys, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    rc = run_main(["evaluate", "--checkpoint", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    line = assert_one_error_line(err)
    assert str(path) in line


def test_evaluate_truncated_checkpoint_exits_2(trained, tmp_path, capsys):
    raw = (trained["out"] / "model.npz").read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(raw[: len(raw) // 2])
    assert run_main(["evaluate", "--checkpoint", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "corrupt" in assert_one_error_line(err)


def test_train_diverging_exits_3_with_one_line_and_writes_nothing(tmp_path, capsys):
    """Divergence is a failure: exit 3, one line naming the likely cause (no raw warning),
    and --out keeps its previous contents (no model that looks like a success)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.npz").write_bytes(b"previous")
    rc = run_main(["train", "--dataset", "iris", "--epochs", "2", "--optimizer", "sgd",
                   "--lr", "1e300", "--hidden-sizes", "8", "--no-progress",
                   "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == cli.EXIT_DIVERGED == 3
    line = assert_one_error_line(err)
    assert "diverged" in line and "learning rate" in line
    assert "trained" not in stdout
    assert os.listdir(out) == ["model.npz"]
    assert (out / "model.npz").read_bytes() == b"previous"


def _console_script() -> str:
    script = Path(sys.executable).with_name("mlds-jax")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    return str(script)


def test_console_script_and_module_in_subprocesses(tmp_path):
    """The installed ``mlds-jax`` with its defaults (adam, manual gradients) and plain JAX
    configuration, then ``python -m mlds_jax.cli evaluate`` on what it wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["JAX_PLATFORMS"] = "cpu"
    env["MLDS_JAX_CACHE_DIR"] = str(tmp_path / "cache")  # on by default: never the real home
    out = tmp_path / "run"
    train = subprocess.run(
        [_console_script(), "train", "--dataset", "iris", "--epochs", "2", "--no-progress",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "adam(lr=0.001)" in train.stdout and "manual gradients" in train.stdout
    assert not re.search(r"^epoch ", train.stdout, re.M)  # --no-progress: no epoch log
    assert "Traceback" not in train.stderr
    summary = json.loads((out / "history.json").read_text())["summary"]
    assert summary["epochs_run"] == 2 and summary["optimizer"] == "adam"
    assert any((tmp_path / "cache").iterdir())  # the compiled programs were cached

    evaluate = subprocess.run(
        [sys.executable, "-m", "mlds_jax.cli", "evaluate", "--checkpoint",
         str(out / "model.npz")],
        capture_output=True, text=True, env=env, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    assert f"accuracy {summary['test_accuracy']:.4f}" in evaluate.stdout

    # an error found by the library (not argparse): main returns 2, the script exits with it
    bad = subprocess.run(
        [_console_script(), "evaluate", "--checkpoint", str(tmp_path / "missing.npz")],
        capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "does not exist" in assert_one_error_line(bad.stderr)
    assert bad.stdout == ""


def test_train_enables_the_compilation_cache_unless_told_not_to(_no_persistent_cache_in_process,
                                                                 capsys):
    calls = _no_persistent_cache_in_process
    before = len(calls)
    assert run_main(["gradcheck", "--sizes", "3,2"]) == 0  # gradcheck compiles little: no cache
    assert len(calls) == before
    argv = ["train", "--dataset", "iris", "--epochs", "1", "--optimizer", "sgd",
            "--hidden-sizes", "4", "--no-progress"]
    assert run_main([*argv, "--no-compilation-cache"]) == 0
    assert len(calls) == before
    assert run_main(argv) == 0
    assert calls[before:] == [None]  # the default directory (MLDS_JAX_CACHE_DIR, XDG rules)


def test_unusable_compilation_cache_does_not_stop_train(tmp_path, monkeypatch, capsys):
    """A cache path under a regular file cannot be a directory: one warning, then training
    (the real enable_compilation_cache, which changes nothing when it cannot be used)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(compilation, "enable_compilation_cache", REAL_ENABLE)
    monkeypatch.setenv("MLDS_JAX_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(compilation.CompilationCacheWarning, match="not usable"):
        rc = run_main(["train", "--dataset", "iris", "--epochs", "1", "--optimizer", "sgd",
                       "--hidden-sizes", "4", "--no-progress"])
    assert rc == 0
    assert "trained 1 epoch in" in capsys.readouterr().out  # one epoch, singular

# --- bad values of the numeric and name options: one line, exit 2 (the bad-input contract) ------
@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--lr", "inf"], "--lr: must be a finite number > 0, got 'inf'"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--seed", "-1"], "--seed: must lie in [0, 2**32), got '-1'"),
    (["train", "--seed", "1.5"], "--seed: expected an int"),
    (["gradcheck", "--seed", "-1"], "--seed: must lie in [0, 2**32)"),
    (["evaluate", "--checkpoint", "m.npz", "--seed", "4294967296"], "--seed"),
    (["gradcheck", "--batch", "inf"], "--batch"),
    (["gradcheck", "--sizes", "3,0,2"], "--sizes"),
    (["gradcheck", "--activation", "softmax"], "--activation"),
    (["gradcheck", "--output", "identity", "--loss", "cross_entropy"], "softmax"),
    (["train", "--loss", "hinge"], "--loss"),
])
def test_bad_cli_values_exit_2_with_one_line(argv, needle):
    rc, out, err = run_cli(argv)
    assert rc == 2
    line = one_error_line(err)
    assert "error" in line and needle in line
    assert out == ""


# --- fault: Ctrl-C during training leaves --out empty ------------------------------------------
def test_fault_cli_interrupted_training_writes_nothing(tmp_path):
    """Ctrl-C during training: exit status 130, one line, and no model.npz/history in --out
    (nothing half-written: outputs are only published as a set after training)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out_dir = tmp_path / "run"
    with patching() as mp:
        mp.setattr(mj, "fit", interrupted)
        rc, out, err = run_cli(["train", "--dataset", "iris", "--epochs", "1", "--optimizer",
                                 "sgd", "--no-progress", "--out", str(out_dir)])
    assert rc == 130
    assert one_error_line(err) == "mlds-jax train: interrupted"
    assert os.listdir(tmp_path) == []  # no DIR, and no DIR.partial: no epoch was saved



# --- DP-SGD and sharpness tracking ------------------------------------------------------------
def test_train_dp_and_sharpness_write_epsilon_and_sharpness(tmp_path, capsys):
    """--dp-clip/--dp-noise train with DP-SGD and print ε; --track-sharpness K records λ_max
    every K epochs (history.json, the CSV rows of those epochs, a third panel in curves.png)."""
    pytest.importorskip("dp_accounting")
    out = tmp_path / "run"
    rc = run_main(["train", "--dataset", "iris", "--epochs", "2", "--optimizer", "sgd",
                   "--hidden-sizes", "8", "--no-progress", "--dp-clip", "1.0", "--dp-noise",
                   "1.1", "--track-sharpness", "2", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    line = next(x for x in stdout.splitlines() if x.startswith("DP-SGD"))
    payload = json.loads((out / "history.json").read_text())
    history, summary = payload["history"], payload["summary"]
    assert len(history["epsilon"]) == 2 and history["epsilon"][1] > history["epsilon"][0] > 0
    assert f"epsilon = {history['epsilon'][-1]:.4g}" in line
    assert summary["epsilon"] == history["epsilon"][-1]
    assert summary["dp_clip"] == 1.0 and summary["dp_noise"] == 1.1
    assert history["sharpness_epoch"] == [2] and history["sharpness"][0] > 0
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["sharpness"] for r in rows[:1]] == [""]
    assert float(rows[1]["sharpness"]) == history["sharpness"][0]
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--dp-clip", "1.0"], "--dp-clip C and --dp-noise SIGMA go together"),
        (["--dp-noise", "1.0"], "--dp-clip C and --dp-noise SIGMA go together"),
        (["--dp-clip", "1.0", "--dp-noise", "-1"], "--dp-noise"),
        (["--dp-clip", "0", "--dp-noise", "1"], "--dp-clip"),
        (["--track-sharpness", "0"], "--track-sharpness"),
    ],
)
def test_train_bad_dp_and_sharpness_options_exit_2(argv, needle, capsys):
    assert run_main(["train", "--dataset", "iris", "--epochs", "1", *argv]) == 2
    out, err = capsys.readouterr()
    assert needle in assert_one_error_line(err)
    assert out == ""


# --- issue 12: splits named, targets for any loss, memory, --out as a set ----------------------
def test_evaluate_warns_when_the_split_overlaps_the_training_rows(trained, capsys):
    rc = run_main(["evaluate", "--checkpoint", str(trained["out"] / "model.npz"), "--seed", "2"])
    _, err = capsys.readouterr()
    assert rc == 0
    assert "warning" in err and "trained on" in err and len(err.strip().splitlines()) == 1


def test_train_prepares_targets_for_a_regression_loss_on_labels(tmp_path, capsys):
    rc = run_main(["train", "--dataset", "iris", "--epochs", "1", "--optimizer", "sgd",
                   "--loss", "mse", "--hidden-sizes", "none", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "MLP 4-3 softmax, loss mse" in out


def test_train_model_too_large_exits_2_naming_the_sizes(capsys):
    rc = run_main(["train", "--dataset", "iris", "--hidden-sizes", "4000000,4000000",
                   "--no-progress"])
    _, err = capsys.readouterr()
    assert rc == 2
    line = assert_one_error_line(err)
    assert "model too large" in line and "4-4000000-4000000-3" in line and "GiB" in line


def test_train_sigterm_saves_the_last_epoch_and_resume_finishes_the_run(tmp_path, capsys):
    """SIGTERM (raised from the handler as in a real signal) after epoch 2 of 3: exit 143,
    one line, the state of epoch 2 saved in DIR.partial/; --resume completes the run to the
    same model as an uninterrupted one, published in DIR."""
    args = ["train", "--dataset", "iris", "--epochs", "3", "--optimizer", "sgd",
            "--hidden-sizes", "8", "--no-progress"]
    ref = tmp_path / "ref"
    assert run_main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    real_fit = mj.fit

    def fit_terminated_after_epoch_2(*a, on_epoch_end=None, **kw):
        def end(e, metrics):  # a real SIGTERM to this process, handled by the CLI's handler
            stop = on_epoch_end(e, metrics) if on_epoch_end is not None else None
            if e == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return stop
        return real_fit(*a, on_epoch_end=end, **kw)

    capsys.readouterr()
    with patching() as mp:
        mp.setattr(mj, "fit", fit_terminated_after_epoch_2)
        rc = run_main([*args, "--out", str(out)])
    _, err = capsys.readouterr()
    assert rc == cli.EXIT_TERMINATED == 143
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mlds-jax train: terminated; the last completed epoch is saved in "
                          f"{out}.partial/train_state.npz")
    assert not out.exists()  # nothing published: the state waits in the work directory
    assert os.listdir(f"{out}.partial") == ["train_state.npz"]
    assert mj.fit is real_fit
    assert run_main([*args, "--out", str(out), "--resume"]) == 0
    a, b = mj.load(ref / "model.npz"), mj.load(out / "model.npz")
    for la, lb in zip(a, b, strict=True):
        assert np.array_equal(la.W, lb.W) and np.array_equal(la.b, lb.b)
    ha = json.loads((ref / "history.json").read_text())["history"]
    hb = json.loads((out / "history.json").read_text())["history"]
    assert {k: v for k, v in ha.items() if k != "time"} == {
        k: v for k, v in hb.items() if k != "time"}



# --- issue 26: --optimizer lm (Levenberg-Marquardt) ----------------------------------------------
def _iris_val_rows(seed: int):
    """iris's held-out val rows of ``train --seed seed``, by fit's documented split."""
    ds = mj.load_dataset("iris", seed=seed)
    _, val_idx = validation_split_indices(
        jax.random.split(jax.random.key(seed))[1], ds.y_train, 0.1, stratify=True)
    return ds, ds.X_train[val_idx], ds.y_train[val_idx]


@pytest.fixture(scope="module")
def lm_trained(tmp_path_factory):
    """One in-process ``train --optimizer lm`` on iris (default early stopping: 6 checks)."""
    out = tmp_path_factory.mktemp("lm") / "run"
    rc, stdout, stderr = run_cli(["train", "--dataset", "iris", "--optimizer", "lm", "--epochs",
                                  "30", "--hidden-sizes", "8", "--out", str(out)])
    return {"rc": rc, "out": out, "stdout": stdout, "stderr": stderr}


def test_train_lm_writes_the_files_and_evaluate_gives_its_scores(lm_trained, capsys):
    assert lm_trained["rc"] == 0, lm_trained["stderr"]
    assert lm_trained["stderr"] == ""
    out: Path = lm_trained["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "history.csv", "history.json", "model.npz"]  # no state: nothing to resume
    lines = lm_trained["stdout"].splitlines()
    assert "MLP 4-8-3 tanh/softmax, loss cross_entropy, lm(mu=0.001, dense solve), full batch" \
        in lines[0]
    assert "lr=" not in lines[0] and "batch 32" not in lines[0]
    assert lines[1] == ("up to 30 iterations, keeping the best val_loss iteration (early "
                        "stopping: 6 validation checks, trainlm's max_fail)")
    assert lines[2].startswith("iteration    1/30  train_loss")
    payload = json.loads((out / "history.json").read_text())
    history, summary = payload["history"], payload["summary"]
    n = summary["iterations"]
    assert summary["optimizer"] == "lm" and summary["lr"] is None and summary["batch_size"] is None
    assert summary["epochs_run"] == n >= 1 and summary["patience"] == 6
    assert set(history) == {"train_loss", "val_loss", "damping"}
    assert all(len(v) == n for v in history.values())
    assert np.all(np.diff(history["train_loss"]) < 0)  # LM accepts only steps that lower it
    trained = next(x for x in lines if x.startswith("trained "))
    assert trained.startswith(f"trained {n} iteration")

    # better than always answering the majority class of the training rows
    ds, X_val, y_val = _iris_val_rows(0)
    majority = np.bincount(ds.y_train).argmax()
    assert summary["test_accuracy"] > np.mean(ds.y_test == majority) + 0.3
    params = mj.load(out / "model.npz")
    test = mj.evaluate(params, ds.X_test, ds.y_test)
    np.testing.assert_allclose(summary["test_loss"], test["loss"], rtol=1e-6)
    assert f"test accuracy {test['accuracy']:.4f}" in trained

    rc = run_main(["evaluate", "--checkpoint", str(out / "model.npz")])
    printed, err = capsys.readouterr()
    assert rc == 0, err
    assert f"accuracy {summary['test_accuracy']:.4f}  loss {summary['test_loss']:.4f}" in printed
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", *history] and len(rows) == n + 1
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("patience", [None, "3", "0"])
def test_train_lm_early_stopping_keeps_the_best_val_iteration(lm_trained, tmp_path, patience):
    """Early stopping is trainlm's: the run ends `patience` (default 6) iterations after the
    lowest val_loss, on fit's val rows, and that iteration's model is kept; --patience 0 runs
    every iteration (or until LM's own rules stop it) and keeps the last."""
    if patience is None:
        out = lm_trained["out"]
    else:
        out = tmp_path / "run"
        rc, _, err = run_cli(["train", "--dataset", "iris", "--optimizer", "lm", "--epochs",
                              "30", "--hidden-sizes", "8", "--no-progress", "--patience",
                              patience, "--out", str(out)])
        assert rc == 0, err
    payload = json.loads((out / "history.json").read_text())
    history, summary = payload["history"], payload["summary"]
    params = mj.load(out / "model.npz")
    ds, X_val, y_val = _iris_val_rows(0)
    val_loss = mj.evaluate(params, X_val, y_val)["loss"]
    if patience == "0":
        assert "best_epoch" not in summary and "val_loss" not in history
        assert summary["n_val"] == len(y_val)  # held out all the same: fit's training rows
        return
    fails = int(patience or 6)
    best = int(np.argmin(history["val_loss"])) + 1
    assert summary["stop_reason"] == "early_stopping"
    assert summary["best_epoch"] == best == summary["iterations"] - fails
    np.testing.assert_allclose(history["val_loss"][best - 1], val_loss, rtol=1e-5)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--lr", "0.1"], "--lr does not apply to --optimizer lm"),
    (["--batch-size", "16"], "--batch-size does not apply to --optimizer lm"),
    (["--dp-clip", "1", "--dp-noise", "1"], "--dp-clip/--dp-noise"),
    (["--data-parallel"], "--data-parallel"),
    (["--track-sharpness", "2"], "--track-sharpness"),
    (["--grads", "autodiff"], "--grads autodiff"),
    (["--resume", "--out", "DIR"], "--resume"),
])
def test_train_lm_refuses_the_options_it_does_not_take(argv, needle, tmp_path):
    argv = [str(tmp_path / "run") if a == "DIR" else a for a in argv]
    rc, out, err = run_cli(["train", "--dataset", "iris", "--optimizer", "lm", *argv])
    assert rc == 2
    line = one_error_line(err)
    assert needle in line and "--optimizer lm" in line
    assert out == ""  # before loading data or training
    assert os.listdir(tmp_path) == []


def test_train_lm_non_finite_result_exits_3_and_writes_nothing(tmp_path):
    def nan_lm(params, X, Y, loss, **kwargs):
        params, result = REAL_LM(params, X, Y, loss, **kwargs)
        return jax.tree_util.tree_map(lambda a: a * np.nan, params), result

    out = tmp_path / "run"
    with patching() as mp:
        mp.setattr(mj, "levenberg_marquardt", nan_lm)
        rc, stdout, err = run_cli(["train", "--dataset", "iris", "--optimizer", "lm",
                                   "--epochs", "1", "--hidden-sizes", "4", "--no-progress",
                                   "--out", str(out)])
    assert rc == cli.EXIT_DIVERGED
    assert "non-finite" in one_error_line(err) and "Nothing written" in err
    assert "trained" not in stdout
    assert os.listdir(tmp_path) == []


REAL_LM = mj.levenberg_marquardt
