"""The command line on a user's own table (train/predict/evaluate --data), resuming, and the
small things a careful user expects (--version, "did you mean", one epoch, | head).

In-process runs (``helpers.run_cli``) pass ``--no-compilation-cache`` (this process must not
switch JAX's persistent cache on) and use sgd/momentum: the suite's strict dtype promotion
cannot trace optax's adam (see tests/test_cli.py).  Expected predictions are computed here from
the saved parameters and the rows written, not by the command under test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line, patching, run_cli

import mlds_jax as mj
from mlds_jax.tabular import load_table

NO_CACHE = "--no-compilation-cache"
FAST = ["--optimizer", "momentum", "--no-progress", NO_CACHE]


def train(*argv) -> tuple[int, str, str]:
    return run_cli(["train", *argv, *FAST])


def _flowers(path: Path, n: int = 60, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A CSV of n rows: two numeric features and a text class that depends on them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)) * [1.0, 10.0] + [5.0, 50.0]
    names = np.where(X[:, 0] > 5.0, "tall", "short").tolist()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["height", "weight", "kind"])
        w.writerows([[repr(float(a)), repr(float(b)), k] for (a, b), k in zip(X, names,
                                                                                 strict=True)])
    return X, names


def _read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("flowers")
    X, names = _flowers(d / "flowers.csv")
    rc, out, err = train("--data", str(d / "flowers.csv"), "--target", "kind", "--epochs", "30",
                         "--seed", "3", "--out", str(d / "run"))
    return {"dir": d, "X": X, "names": names, "rc": rc, "out": out, "err": err}


def test_train_on_a_csv_keeps_the_label_names_and_the_preprocessing(flowers_run):
    assert flowers_run["rc"] == 0, flowers_run["err"]
    head = flowers_run["out"].splitlines()[0]
    assert head.startswith("mlds-jax train: flowers.csv (binary, target 'kind': 2 classes; "
                           "2 features standardised; ")
    params, meta = mj.load(flowers_run["dir"] / "run" / "model.npz", return_metadata=True)
    prep = meta["preprocessing"]
    assert (meta["task"], meta["classes"], prep["classes"]) == ("binary", ["short", "tall"],
                                                                ["short", "tall"])
    assert prep["features"] == ["height", "weight"] and prep["targets"] == ["kind"]
    # standardised with the training rows' statistics only: the split's train rows
    ds, _ = load_table(flowers_run["dir"] / "flowers.csv", ["kind"], seed=3)
    test_rows = [i for i in range(60) if not _in(flowers_run["X"][i], ds, prep)]
    train_rows = np.setdiff1d(np.arange(60), test_rows)
    assert len(train_rows) == len(ds.X_train) == 48
    np.testing.assert_allclose(prep["x_mean"], flowers_run["X"][train_rows].mean(axis=0),
                               rtol=1e-13)


def _in(x, ds, prep) -> bool:
    """Whether raw row x is one of ds's training rows."""
    z = (x - np.asarray(prep["x_mean"])) / np.asarray(prep["x_std"])
    return bool(np.any(np.all(np.abs(ds.X_train - z.astype(np.float32)) < 1e-6, axis=1)))


def test_predict_and_evaluate_apply_the_saved_preprocessing(flowers_run, tmp_path):
    model = str(flowers_run["dir"] / "run" / "model.npz")
    data = str(flowers_run["dir"] / "flowers.csv")
    params, meta = mj.load(model, return_metadata=True)
    prep = meta["preprocessing"]
    Z = (flowers_run["X"] - np.asarray(prep["x_mean"])) / np.asarray(prep["x_std"])
    expected = np.where(np.asarray(mj.forward(params, Z.astype(np.float32)))[:, 0] > 0.5,
                        "tall", "short")
    rc, out, err = run_cli(["predict", "--checkpoint", model, "--data", data])
    assert rc == 0 and err == ""
    rows = _read_csv(out)
    assert rows[0] == ["kind"] and [r[0] for r in rows[1:]] == expected.tolist()
    # --out writes the same CSV and says so
    rc, out, _ = run_cli(["predict", "--checkpoint", model, "--data", data, "--out",
                          str(tmp_path / "p.csv")])
    assert rc == 0 and out.startswith(f"wrote {tmp_path / 'p.csv'} (60 rows: kind)")
    assert _read_csv((tmp_path / "p.csv").read_text())[1:] == rows[1:]
    # evaluate scores every row of the table against its labels
    rc, out, err = run_cli(["evaluate", "--checkpoint", model, "--data", data])
    assert rc == 0, err
    accuracy = np.mean(expected == np.asarray(flowers_run["names"]))
    assert f"on {data} (60 rows): " in out and f"accuracy {accuracy:.4f}" in out


def test_regression_and_multilabel_tables(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(80, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) * 100.0 + 1000.0  # far from unit scale
    bits = (X[:, :2] > 0).astype(int)
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "price", "p", "q"])
        w.writerows([[*map(float, x), float(t), *map(int, s)] for x, t, s in zip(X, y, bits,
                                                                                 strict=True)])
    table = ["--data", str(tmp_path / "t.csv")]
    rc, out, err = train(*table, "--target", "price", "--epochs", "20", "--out",
                         str(tmp_path / "reg"))
    assert rc == 0, err
    assert "(regression, target 'price'" in out and ", l2 3, " in out  # the regression default
    model = str(tmp_path / "reg" / "model.npz")
    params, meta = mj.load(model, return_metadata=True)
    prep = meta["preprocessing"]
    assert prep["features"] == ["a", "b", "c", "p", "q"]  # every column but the target
    raw = np.concatenate([X, bits], axis=1)
    Z = ((raw - np.asarray(prep["x_mean"])) / np.asarray(prep["x_std"])).astype(np.float32)
    expected = np.asarray(mj.forward(params, Z), np.float64)[:, 0] * prep["y_std"][0] + \
        prep["y_mean"][0]  # in the target's units
    rc, out, _ = run_cli(["predict", "--checkpoint", model, *table])
    got = np.array([float(r[0]) for r in _read_csv(out)[1:]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # two 0/1 columns: multi-label, exact-match accuracy named as such
    rc, out, err = train(*table, "--target", "p", "--target", "q", "--epochs", "5", "--out",
                         str(tmp_path / "ml"))
    assert rc == 0, err
    assert "accuracy = exact match (every label of a row right)" in out
    assert "test accuracy (exact match) " in out and "test label_accuracy " in out
    history = json.loads((tmp_path / "ml" / "history.json").read_text())
    assert {"train_label_accuracy", "val_label_accuracy"} <= set(history["history"])
    assert {"test_accuracy", "test_label_accuracy"} <= set(history["summary"])
    rc, out, _ = run_cli(["predict", "--checkpoint", str(tmp_path / "ml" / "model.npz"), *table])
    rows = _read_csv(out)
    assert rows[0] == ["p", "q"] and {v for r in rows[1:] for v in r} <= {"0", "1"}


def test_npz_data_and_a_bundled_models_predictions_on_raw_rows(tmp_path):
    ds = mj.load_dataset("iris", seed=0)
    raw = ds.inverse_transform_X(ds.X_test)
    np.savez(tmp_path / "iris_test.npz", X=raw, y=ds.y_test)
    rc, _, err = train("--dataset", "iris", "--epochs", "3", "--out", str(tmp_path / "run"))
    assert rc == 0, err
    model = str(tmp_path / "run" / "model.npz")
    rc, out, err = run_cli(["predict", "--checkpoint", model, "--data",
                            str(tmp_path / "iris_test.npz")])
    assert rc == 0, err
    params = mj.load(model)
    expected = np.asarray(ds.class_names)[np.asarray(mj.predict(params, ds.X_test))]
    assert [r[0] for r in _read_csv(out)[1:]] == expected.tolist()
    # the bundled data set's own evaluate and the table's agree on the same rows
    rc, split_out, _ = run_cli(["evaluate", "--checkpoint", model])
    rc, table_out, err = run_cli(["evaluate", "--checkpoint", model, "--data",
                                  str(tmp_path / "iris_test.npz")])
    assert rc == 0, err
    accuracy = float(np.mean(np.asarray(mj.predict(params, ds.X_test)) == ds.y_test))
    assert f"accuracy {accuracy:.4f}" in split_out and f"accuracy {accuracy:.4f}" in table_out


# --- bad tables and options: one line, exit 2 -------------------------------------------------
BAD = {
    "missing target": (b"a,b,y\n1,2,0\n3,4,1\n", ["--target", "z"], r"has no column 'z'"),
    "misspelt target": (b"a,b,label\n1,2,0\n3,4,1\n", ["--target", "lable"],
                        r"has no column 'lable'; did you mean 'label'\?"),
    "text feature": (b"a,colour,y\n1,red,0\n3,blue,1\n", [], r"feature column 'colour' .* is not "
                     r"numeric: line 2 holds 'red'"),
    "NaN": (b"a,y\n1,0\nnan,1\n3,0\n", [], r"feature column 'a' .* missing value \('nan'\) at "
            r"line 3"),
    "one class": (b"a,y\n1,x\n2,x\n3,x\n", [], r"holds one class \('x'\) in all 3 rows"),
    "empty": (b"", [], r"is empty"),
    "ragged": (b"a,y\n1,0\n2\n", [], r"line 3 has 1 field\(s\), but the header names 2 columns"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tables_exit_2_with_one_line(tmp_path, case):
    content, extra, regex = BAD[case]
    (tmp_path / "t.csv").write_bytes(content)
    rc, out, err = train("--data", str(tmp_path / "t.csv"), *extra, "--epochs", "1")
    assert rc == 2
    line = one_error_line(err)
    assert line.startswith("mlds-jax train: error: ")
    assert re.search(regex, line), line
    assert out == ""


@pytest.mark.parametrize(("argv", "needle"), [
    (["train", "--data", "x.csv", "--dataset", "iris"], "--dataset and --data name the data twice"),
    (["train", "--target", "y"], "--target and --task describe a table: use them with --data"),
    (["train", "--validation-fraction", "0", "--patience", "5"],
     "--patience needs validation rows"),
    (["predict", "--checkpoint", "m.npz"], "the following arguments are required: --data"),
    (["evaluate", "--checkpoint", "m.npz", "--data", "x.csv", "--seed", "1"],
     "--data scores every row of the table"),
])
def test_bad_data_options_exit_2(argv, needle):
    rc, out, err = run_cli(argv)
    assert rc == 2 and needle in one_error_line(err) and out == ""


def test_a_missing_extra_is_one_line(tmp_path):
    """Without scikit-learn (the data extra) a table cannot be split: one line naming the
    extra, no traceback."""
    (tmp_path / "t.csv").write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
    with patching() as mp:
        mp.setitem(sys.modules, "sklearn.model_selection", None)  # import fails
        rc, _, err = train("--data", str(tmp_path / "t.csv"), "--epochs", "1")
    assert rc == 2
    assert "splitting a table needs scikit-learn: pip install 'mlds-jax[data]'" in \
        one_error_line(err)


def test_predict_needs_a_model_that_records_its_preprocessing(tmp_path):
    mj.save(tmp_path / "bare.npz", mj.init_mlp(0, [2, 3, 1], output="sigmoid"))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    rc, _, err = run_cli(["predict", "--checkpoint", str(tmp_path / "bare.npz"), "--data",
                          str(tmp_path / "t.csv")])
    assert rc == 2
    assert "records how to prepare raw rows (models saved by mj.save do not)" in \
        one_error_line(err)


# --- training on every row; resuming ------------------------------------------------------------
def test_validation_fraction_zero_trains_on_every_row_without_early_stopping(tmp_path):
    rc, out, err = train("--dataset", "iris", "--epochs", "3", "--validation-fraction", "0",
                         "--out", str(tmp_path / "run"))
    assert rc == 0, err
    assert "(multiclass; 120 train / 0 val / 30 test rows)" in out
    assert "3 epochs on every training row (--validation-fraction 0)" in out
    summary = json.loads((tmp_path / "run" / "history.json").read_text())["summary"]
    assert (summary["n_train"], summary["n_val"], summary["patience"]) == (120, 0, 0)
    assert summary["epochs_run"] == 3 and "best_epoch" not in summary


def test_resume_continues_a_finished_run_and_refuses_changes(tmp_path):
    run = ["--dataset", "iris", "--hidden-sizes", "8", "--patience", "0", "--seed", "2"]
    out_dir = str(tmp_path / "run")
    assert train(*run, "--epochs", "5", "--out", str(tmp_path / "ref"))[0] == 0
    assert train(*run, "--epochs", "3", "--out", out_dir)[0] == 0
    rc, out, err = train(*run, "--epochs", "5", "--out", out_dir, "--resume")
    assert rc == 0, err
    assert "resuming from epoch 3 of 5\n" in out
    assert "trained 2 more epochs (5 in all, resumed at 3) in " in out
    for a, b in zip(mj.load(tmp_path / "ref" / "model.npz"), mj.load(Path(out_dir) / "model.npz"),
                    strict=True):
        np.testing.assert_array_equal(a.W, b.W)
    # fewer epochs than done: refused, nothing rewritten
    before = (Path(out_dir) / "model.npz").read_bytes()
    rc, _, err = train(*run, "--epochs", "4", "--out", out_dir, "--resume")
    assert rc == 2 and "has done 5 epochs; epochs=4 asks for fewer" in one_error_line(err)
    assert (Path(out_dir) / "model.npz").read_bytes() == before
    # changed hyperparameters and architecture: refused, named
    rc, _, err = train(*run, "--epochs", "6", "--lr", "0.5", "--out", out_dir, "--resume")
    assert rc == 2 and "(lr: saved 0.01, now 0.5)" in one_error_line(err)
    rc, _, err = train(*run[:-4], "--hidden-sizes", "16", "--patience", "0", "--seed", "2",
                       "--epochs", "6", "--out", out_dir, "--resume")
    assert rc == 2 and ("the state is for a 4-8-3 tanh/softmax network; this run has a "
                        "4-16-3 tanh/softmax network") in one_error_line(err)


# --- the small things -----------------------------------------------------------------------------
def test_version_and_did_you_mean():
    rc, out, _ = run_cli(["--version"])
    assert rc == 0 and out.strip() == f"mlds-jax {mj.__version__}"
    for argv, hint in [(["trian"], "did you mean 'train'?"),
                       (["train", "--dataset", "digit"], "did you mean 'digits'?"),
                       (["train", "--optimizer", "sdg"], "did you mean 'sgd'?"),
                       (["train", "--optimiser", "sgd"], "did you mean '--optimizer'?")]:
        rc, _, err = run_cli(argv)
        assert rc == 2 and hint in one_error_line(err), err
    with pytest.raises(ValueError, match="unknown dataset 'Digit'; did you mean 'digits'"):
        mj.load_dataset("Digit")


def test_one_epoch_is_singular(capsys):
    rc, out, err = train("--dataset", "iris", "--epochs", "1", "--hidden-sizes", "4")
    assert rc == 0, err
    assert "trained 1 epoch in " in out


def test_piped_to_head_exits_quietly(tmp_path):
    """``mlds-jax train | head -2``: once the reader has gone, the next line written ends the
    run with status 141 (as SIGPIPE would), no traceback and no "Broken pipe"; with --out it
    says where the last epoch was saved."""
    script = Path(sys.executable).with_name("mlds-jax")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen(
        [str(script), "train", "--dataset", "iris", "--epochs", "400", "--patience", "0",
         NO_CACHE, "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    while not proc.stdout.readline().startswith(b"epoch    1/400"):
        pass  # an epoch is done (and saved) before the reader goes away
    proc.stdout.close()  # the reader goes away, as head does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert first.startswith(b"mlds-jax train: iris")
    assert "Traceback" not in err and "Broken pipe" not in err
    assert err.startswith("mlds-jax train: stdout closed; the last completed epoch is saved in")
