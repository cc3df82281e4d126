"""Tests for a user's table: reading it (mlds_jax.io.table) and making a data set of it with
the preprocessing a saved model applies (mlds_jax.tabular).

Pure numpy (and scikit-learn's split): written to pass with or without the suite's strict JAX
flags.  The expected values are computed here from the rows written, never by the code under
test: the task of each kind of target column, the class names and labels, the standardisation
with the training rows' statistics only, and one message per bad table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_reported_once

from mlds_jax.io.table import read_table
from mlds_jax.tabular import Preprocessing, load_table


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(n=40, seed=0):
    """n rows (x1, x2) with x1 = row index, x2 = its square root."""
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=float), np.sqrt(np.arange(n)), rng


# --- the task, the classes, the labels ----------------------------------------------------
@pytest.mark.parametrize(
    ("targets", "expected_task", "expected_classes"),
    [
        (["a", "b"] * 20, "binary", ("a", "b")),
        (["red", "green", "blue", "green"] * 10, "multiclass", ("blue", "green", "red")),
        ([2, 10, 1, 2] * 10, "multiclass", (1, 2, 10)),  # numeric order, not "1" < "10" < "2"
        ([0, 1] * 20, "binary", (0, 1)),
        ([0.5, 1.25, 3.0, 2.0] * 10, "regression", None),
        ([1.0, 2.0] * 20, "regression", None),  # written with a point: a number, not a label
    ],
)
def test_the_task_and_classes_come_from_the_target_column(tmp_path, targets, expected_task,
                                                          expected_classes):
    x1, x2, _ = _rows()
    path = write_csv(tmp_path / "t.csv", ["x1", "x2", "y"], zip(x1, x2, targets, strict=True))
    ds, prep = load_table(path, test_size=0.25, seed=0)
    assert (ds.task, prep.task, prep.classes) == (expected_task, expected_task, expected_classes)
    assert prep.features == ("x1", "x2") and prep.targets == ("y",)
    assert ds.name == "t.csv" and ds.n_features == 2
    if expected_classes is None:
        assert ds.y_train.shape == (30, 1)
        return
    assert ds.class_names == tuple(str(c) for c in expected_classes)
    index = {str(c): i for i, c in enumerate(expected_classes)}
    # the labels are the positions of the class names, row by row (train and test together)
    table = read_table(path)
    assert prep.encode_targets(table).tolist() == [index[str(v)] for v in targets]
    assert sorted(ds.y_train.tolist() + ds.y_test.tolist()) == sorted(index[str(v)]
                                                                      for v in targets)


def test_several_targets_multilabel_or_regression_and_task_overrides(tmp_path):
    x1, _, rng = _rows()
    bits = rng.integers(0, 2, size=(40, 2))
    g = [1.5, 0.5] * 20
    path = write_csv(tmp_path / "m.csv", ["x1", "g", "p", "q"],
                     zip(x1, g, bits[:, 0], bits[:, 1], strict=True))
    ds, prep = load_table(path, ["p", "q"])
    assert (ds.task, ds.n_outputs, ds.default_loss) == ("multilabel", 2, "binary_cross_entropy")
    assert prep.features == ("x1", "g")
    assert ds.targets("train").shape == (32, 2) and ds.targets("train").dtype == np.float32
    np.testing.assert_array_equal(prep.encode_targets(read_table(path)), bits)
    ds, prep = load_table(path, ["p", "q"], task="regression")
    assert (ds.task, ds.n_outputs) == ("regression", 2)
    ds, prep = load_table(path, ["g"], task="classification")  # numbers as class names
    assert (ds.task, prep.classes, ds.class_names) == ("binary", (0.5, 1.5), ("0.5", "1.5"))


def test_standardisation_uses_the_training_rows_only_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(5.0, 3.0, size=(50, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 10.0
    rows = [[*(repr(float(v)) for v in row), repr(float(t))] for row, t in zip(X, y, strict=True)]
    path = write_csv(tmp_path / "r.csv", ["a", "b", "c", "y"], rows)
    ds, prep = load_table(path, dtype=np.float64)
    train_rows = np.setdiff1d(np.arange(50), _test_rows(X, ds.X_test, prep))
    np.testing.assert_allclose(prep.x_mean, X[train_rows].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(prep.x_std, X[train_rows].std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(prep.y_mean, [y[train_rows].mean()], rtol=1e-12)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-12)  # train: exactly 0
    assert abs(ds.X_test.mean(axis=0)).max() > 1e-6  # test rows: the train statistics
    # the record is JSON, exact, and rebuilds the same preprocessing
    record = json.loads(json.dumps(prep.to_metadata()))
    again = Preprocessing.from_metadata(record)
    assert again.features == prep.features and again.targets == prep.targets
    for a, b in ((again.x_mean, prep.x_mean), (again.x_std, prep.x_std),
                 (again.y_mean, prep.y_mean), (again.y_std, prep.y_std)):
        np.testing.assert_array_equal(a, b)
    # decode maps standardised outputs back to the target's units
    standardised = (y[:4, None] - prep.y_mean) / prep.y_std
    np.testing.assert_allclose(prep.decode(standardised)[0], y[:4], rtol=1e-12)


def _test_rows(X, X_test_s, prep):
    raw = X_test_s * prep.x_std + prep.x_mean
    return [int(np.argmin(np.abs(X - r).sum(axis=1))) for r in raw]


def test_npz_tables_and_features_by_position(tmp_path):
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(30, 4)), np.array(["no", "yes", "maybe"] * 10)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds, prep = load_table(tmp_path / "d.npz")
    assert ds.task == "multiclass" and prep.classes == ("maybe", "no", "yes")
    assert prep.features == ("x0", "x1", "x2", "x3")
    # a CSV model applied to an .npz's X: by position when the width matches
    csv_prep = Preprocessing("multiclass", ("a", "b", "c", "d"), ("y",), ("maybe", "no", "yes"),
                             np.zeros(4), np.ones(4))
    np.testing.assert_array_equal(csv_prep.raw_features(read_table(tmp_path / "d.npz")), X)


# --- bad tables: one message, naming the file, column and line --------------------------------
BAD_TABLES = {
    "empty": ("t.csv", b"", r"t\.csv is empty"),
    "blank": ("t.csv", b"\n  \n", r"is empty"),
    "header only": ("t.csv", b"a,b,y\n", r"has a header but no rows"),
    "ragged": ("t.csv", b"a,b,y\n1,2,0\n3,4\n", r"line 3 has 2 field\(s\), but the header names 3"),
    "unnamed column": ("t.csv", b"a,,y\n1,2,0\n", r"leaves column 2 without a name"),
    "column twice": ("t.csv", b"a,a,y\n1,2,0\n", r"names the column 'a' twice"),
    "not utf-8": ("t.csv", b"a,y\n\xff\xfe1,0\n", r"is not UTF-8 text"),
    "text feature": ("t.csv", b"colour,y\nred,0\nblue,1\n",
                     r"feature column 'colour' of .*t\.csv is not numeric: line 2 holds 'red'; "
                     r"only numeric features are read"),
    "missing feature": ("t.csv", b"a,y\n1,0\n,1\n3,0\n4,1\n",
                        r"feature column 'a' .* has a missing value \(''\) at line 3"),
    "NaN feature": ("t.csv", b"a,y\n1,0\nNaN,1\n3,0\n4,1\n", r"'a' .* missing value \('NaN'\)"),
    "inf feature": ("t.csv", b"a,y\n1,0\ninf,1\n3,0\n4,1\n", r"'a' .*the value inf at line 3"),
    "missing target": ("t.csv", b"a,y\n1,0\n2,\n3,0\n4,1\n",
                       r"target column 'y' .* missing value \(''\) at line 3"),
    "one class": ("t.csv", b"a,y\n1,cat\n2,cat\n3,cat\n",
                  r"target column 'y' .* holds one class \('cat'\) in all 3 rows"),
    "npz without X": ("t.npz", "no X", r"has no array 'X'"),
    "npz ragged y": ("t.npz", "ragged", r"has X of shape \(4, 2\) but y of shape \(3,\)"),
    "npz pickled": ("t.npz", "object", r"cannot be read without pickle"),
    "not an npz": ("t.npz", b"hello", r"is not a NumPy \.npz archive"),
}


def _write_bad(path, content):
    if content == "no X":
        np.savez(path, y=np.arange(4))
    elif content == "ragged":
        np.savez(path, X=np.ones((4, 2)), y=np.arange(3))
    elif content == "object":
        np.savez(path, X=np.array([{"a": 1}, None], dtype=object), y=np.arange(2))
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_are_refused_with_one_clear_message(tmp_path, case):
    name, content, regex = BAD_TABLES[case]
    path = tmp_path / name
    _write_bad(path, content)
    with pytest.raises(ValueError, match=regex) as info:
        load_table(path)
    assert str(path) in str(info.value)
    assert_reported_once(info.value)


def test_missing_target_column_says_did_you_mean(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["width", "species"], [[1, "a"], [2, "b"]])
    with pytest.raises(ValueError, match=r"has no column 'specie'; did you mean 'species'\?"):
        load_table(path, ["specie"])
    with pytest.raises(ValueError, match="every column is a target"):
        load_table(path, ["width", "species"])


def test_unseen_class_and_missing_feature_at_prediction_time(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["w", "y"], [[i, "ab"[i % 2]] for i in range(20)])
    _, prep = load_table(path)
    new = write_csv(tmp_path / "new.csv", ["w", "y"], [[1, "a"], [2, "c"]])
    with pytest.raises(ValueError, match=r"holds 'c' at line 3, a class the model was not "
                                         r"trained on \(its classes: \['a', 'b'\]\)"):
        prep.encode_targets(read_table(new))
    other = write_csv(tmp_path / "other.csv", ["W", "y"], [[1, "a"]])
    with pytest.raises(ValueError, match=r"has no column 'w'; did you mean 'W'\?"):
        prep.raw_features(read_table(other))


def test_a_missing_file_and_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file .*nope.csv does not exist"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="is a directory, not a regular file"):
        read_table(tmp_path)
