"""Tests for mlds_jax.datasets: shapes, determinism, train-only standardisation, offline.

Pure numpy apart from one smoke test that feeds every data set to ``mlds_jax.loss``; written
to pass with or without the suite's strict JAX flags (x64, rank and dtype promotion).  The last
section checks the helpers' dtypes and bad input.
"""

from __future__ import annotations

import inspect
import math
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F16, F32, F64

import mlds_jax as mj
from mlds_jax import datasets
from mlds_jax.datasets import DATASETS, Dataset, load_dataset, one_hot, standardize

NAMES = sorted(DATASETS)
CLASSIFICATION = [n for n in NAMES if DATASETS[n].task != "regression"]
EXPECTED = {  # name: (task, rows, features, outputs), from the sources' documentation
    "digits": ("multiclass", 1797, 64, 10),
    "breast_cancer": ("binary", 569, 30, 1),
    "diabetes": ("regression", 442, 10, 1),
    "iris": ("multiclass", 150, 4, 3),
    "wine": ("multiclass", 178, 13, 3),
    "moons": ("binary", 1000, 2, 1),
    "blobs": ("multiclass", 1000, 2, 3),
    "xor": ("binary", 1000, 2, 1),
    "regression": ("regression", 1000, 1, 1),
}
ARRAYS = ("X_train", "X_test", "y_train", "y_test", "mean", "std")


def test_registry_lists_the_promised_datasets():
    assert set(EXPECTED) == set(DATASETS)
    for name, (task, n, d, k) in EXPECTED.items():
        info = DATASETS[name]
        assert (info.name, info.task, info.n_samples, info.n_features, info.n_outputs) == (
            name, task, n, d, k)
        assert info.shape == (n, d)
        assert info.description


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_labels(name):
    ds = load_dataset(name)
    task, n, d, k = EXPECTED[name]
    n_test = math.ceil(0.2 * n)  # sklearn rounds the test share up
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.task, ds.n_features, ds.n_outputs) == (name, task, d, k)
    assert ds.X_train.shape == (n - n_test, d) and ds.X_test.shape == (n_test, d)
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.mean.shape == (d,) and ds.std.shape == (d,)
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    assert ds.feature_names is not None and len(ds.feature_names) == d
    for field in ARRAYS:
        assert not getattr(ds, field).flags.writeable, field
    expected_loss = {"multiclass": ("cross_entropy", "softmax"),
                     "binary": ("binary_cross_entropy", "sigmoid"),
                     "regression": ("mse", "identity")}[task]
    assert (ds.default_loss, ds.default_output) == expected_loss
    if task == "regression":
        assert ds.y_train.shape == (n - n_test, 1) and ds.y_test.shape == (n_test, 1)
        assert ds.y_train.dtype == np.float32
        assert ds.class_names is None and ds.n_classes is None
        assert ds.y_mean.shape == (1,) and ds.y_std.shape == (1,)
        np.testing.assert_array_equal(ds.targets("test"), ds.y_test)
    else:
        n_classes = k if task == "multiclass" else 2
        assert ds.n_classes == n_classes and len(ds.class_names) == n_classes
        assert ds.y_train.shape == (n - n_test,) and ds.y_test.shape == (n_test,)
        assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
        for y in (ds.y_train, ds.y_test):  # every class on both sides of the split
            np.testing.assert_array_equal(np.unique(y), np.arange(n_classes))
        assert ds.y_mean is None and ds.y_std is None
        t = ds.targets("train")
        if task == "binary":
            assert t.shape == (n - n_test, 1) and t.dtype == np.float32
            np.testing.assert_array_equal(t[:, 0], ds.y_train.astype(np.float32))
        else:
            assert t.dtype == np.int32
            np.testing.assert_array_equal(t, ds.y_train)


@pytest.mark.parametrize("name", NAMES)
def test_default_loss_accepts_the_data(name):
    """The contract with the network: default_output + default_loss + targets() just work."""
    ds = load_dataset(name)
    # numpy-built weights and one jitted call: cheap to compile for each new input width
    rng = np.random.default_rng(0)
    sizes = [ds.n_features, 5, ds.n_outputs]
    params = tuple(
        mj.Dense(W=jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype=jnp.float32),
                 b=jnp.zeros((n,), jnp.float32), activation=act)
        for m, n, act in zip(sizes[:-1], sizes[1:], ["tanh", ds.default_output], strict=True)
    )
    loss = jax.jit(mj.loss, static_argnums=3)
    value = loss(params, ds.X_train[:16], ds.targets("train")[:16], ds.default_loss)
    assert value.dtype == jnp.float32 and bool(jnp.isfinite(value))


def test_onehot_views():
    ds = load_dataset("iris")
    Y = ds.Y_train_onehot
    assert Y.shape == (ds.X_train.shape[0], 3) and Y.dtype == np.float32
    np.testing.assert_array_equal(Y.argmax(axis=1), ds.y_train)
    np.testing.assert_array_equal(Y.sum(axis=1), np.ones(Y.shape[0], np.float32))
    assert ds.Y_test_onehot.shape == (ds.X_test.shape[0], 3)
    assert load_dataset("moons").Y_test_onehot.shape == (200, 2)
    with pytest.raises(ValueError, match="regression"):
        _ = load_dataset("diabetes").Y_train_onehot
    with pytest.raises(ValueError, match="split must be"):
        ds.targets("validation")


@pytest.mark.parametrize("name", ["digits", "diabetes", "moons"])
def test_same_seed_same_arrays_different_seed_different_split(name):
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    for field in ARRAYS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = load_dataset(name, seed=4)
    assert a.X_train.shape == c.X_train.shape
    assert not np.array_equal(a.X_train, c.X_train)
    raw_a = load_dataset(name, seed=3, standardize=False)
    raw_c = load_dataset(name, seed=4, standardize=False)
    # same rows overall (only the split moved): compare the sorted union of both halves
    rows = lambda ds: np.sort(np.concatenate([ds.X_train, ds.X_test]), axis=0)  # noqa: E731
    np.testing.assert_array_equal(rows(raw_a), rows(raw_c))


@pytest.mark.parametrize("name", NAMES)
def test_standardisation_uses_training_statistics_only(name):
    ds = load_dataset(name, seed=1, dtype=np.float64)
    raw = load_dataset(name, seed=1, standardize=False, dtype=np.float64)
    assert ds.standardized and not raw.standardized
    # the split is the same; the statistics are the raw training split's
    mean = raw.X_train.mean(axis=0)
    std = raw.X_train.std(axis=0)
    const = np.ptp(raw.X_train, axis=0) == 0
    np.testing.assert_allclose(ds.mean[~const], mean[~const], rtol=1e-12)
    np.testing.assert_allclose(ds.std[~const], std[~const], rtol=1e-12)
    np.testing.assert_array_equal(ds.std[const], 1.0)
    # train: mean 0, std 1 (constant columns exactly 0)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(ds.X_train.std(axis=0)[~const], 1.0, rtol=1e-10)
    np.testing.assert_array_equal(ds.X_train[:, const], 0.0)
    # test: transformed with the TRAIN statistics, not its own
    expected = (raw.X_test - ds.mean[None, :]) / ds.std[None, :]
    np.testing.assert_allclose(ds.X_test, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.inverse_transform_X(ds.X_test), raw.X_test, rtol=1e-12,
                               atol=1e-9)
    if ds.task == "regression":
        y_mean, y_std = raw.y_train.mean(), raw.y_train.std()
        np.testing.assert_allclose(ds.y_mean, [y_mean], rtol=1e-12)
        np.testing.assert_allclose(ds.y_std, [y_std], rtol=1e-12)
        np.testing.assert_allclose(ds.y_test, (raw.y_test - y_mean) / y_std, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(ds.inverse_transform_y(ds.y_test), raw.y_test, rtol=1e-12)
        np.testing.assert_allclose(ds.inverse_transform_y(ds.y_test[:, 0]), raw.y_test[:, 0],
                                   rtol=1e-12)
        np.testing.assert_array_equal(raw.y_mean, [0.0])
        np.testing.assert_array_equal(raw.y_std, [1.0])
    else:
        np.testing.assert_array_equal(ds.y_test, raw.y_test)
    np.testing.assert_array_equal(raw.mean, np.zeros(ds.n_features))
    np.testing.assert_array_equal(raw.std, np.ones(ds.n_features))


def test_float32_standardisation_is_computed_in_float64():
    ds32 = load_dataset("diabetes", seed=2)
    ds64 = load_dataset("diabetes", seed=2, dtype=np.float64)
    assert ds32.y_train.dtype == np.float32 and ds32.mean.dtype == np.float32
    np.testing.assert_array_equal(ds32.X_train, ds64.X_train.astype(np.float32))
    np.testing.assert_array_equal(ds32.y_test, ds64.y_test.astype(np.float32))


def test_digits_constant_columns_stay_finite():
    raw = load_dataset("digits", standardize=False)
    assert (np.ptp(raw.X_train, axis=0) == 0).any()  # e.g. the corner pixel is always 0
    ds = load_dataset("digits")
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_split_is_stratified(name):
    ds = load_dataset(name, test_size=0.3, seed=5)
    y_all = np.concatenate([ds.y_train, ds.y_test])
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=ds.n_classes)
        ideal = np.bincount(y_all, minlength=ds.n_classes) * (y.size / y_all.size)
        assert np.all(np.abs(counts - ideal) <= 1.0), (counts, ideal)


def test_test_size_changes_the_split_sizes():
    ds = load_dataset("wine", test_size=0.5)
    assert ds.X_test.shape[0] == 89 and ds.X_train.shape[0] == 89


# --- standardize / one_hot helpers ------------------------------------------------------------
def test_standardize_helper():
    rng = np.random.default_rng(0)
    X_train = np.column_stack([rng.normal(3.0, 2.0, 50), np.full(50, 7.25), rng.normal(size=50)])
    X_test = np.column_stack([rng.normal(3.0, 2.0, 10), np.full(10, 9.0), rng.normal(size=10)])
    Xtr, Xte, mean, std = standardize(X_train, X_test)
    assert Xtr.shape == (50, 3) and Xte.shape == (10, 3) and mean.shape == std.shape == (3,)
    assert np.isfinite(Xtr).all() and np.isfinite(Xte).all()
    np.testing.assert_array_equal(Xtr[:, 1], 0.0)  # constant column: exactly 0
    assert std[1] == 1.0 and mean[1] == 7.25
    np.testing.assert_allclose(Xte[:, 1], 9.0 - 7.25)
    np.testing.assert_allclose(Xte[:, 0], (X_test[:, 0] - X_train[:, 0].mean())
                               / X_train[:, 0].std())
    # float32 in, float32 out; ints in, float64 out; X_test optional
    Xtr32, none, m32, s32 = standardize(X_train.astype(np.float32))
    assert none is None and Xtr32.dtype == m32.dtype == s32.dtype == np.float32
    assert standardize(np.arange(6).reshape(3, 2))[0].dtype == np.float64


def test_standardize_errors():
    with pytest.raises(ValueError, match="2-D"):
        standardize(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        standardize(np.ones((0, 3)))
    with pytest.raises(ValueError, match="features"):
        standardize(np.ones((4, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        standardize(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(TypeError, match="numeric"):
        standardize(np.array([["a", "b"]]))


def test_one_hot():
    out = one_hot(np.array([2, 0, 1, 2]), 3)
    np.testing.assert_array_equal(out, np.eye(3, dtype=np.float32)[[2, 0, 1, 2]])
    assert out.dtype == np.float32
    assert one_hot([1.0, 0.0], 2, dtype=np.float64).dtype == np.float64
    assert one_hot(np.array([], dtype=np.int32), 4).shape == (0, 4)


@pytest.mark.parametrize(
    ("labels", "k", "match"),
    [
        ([0, 1, 10, 2], 10, r"label 10 at index 2 is out of range \[0, 10\)"),
        ([0, -1], 3, r"label -1 at index 1 is out of range"),
        ([0.0, 1.5], 3, r"label 1\.5 at index 1 is not an integer"),
        ([0.0, np.nan], 3, r"not an integer"),
        ([[0, 1]], 3, "1-D"),
        ([0, 1], 0, "num_classes must be >= 1"),
    ],
)
def test_one_hot_errors_name_the_bad_label(labels, k, match):
    with pytest.raises(ValueError, match=match):
        one_hot(np.array(labels), k)


def test_one_hot_type_errors():
    with pytest.raises(TypeError):
        one_hot(np.array([True, False]), 2)
    with pytest.raises(TypeError):
        one_hot(np.array([0, 1]), 2.0)
    with pytest.raises(TypeError):
        one_hot(np.array([0, 1]), 2, dtype=np.int32)


# --- argument validation ----------------------------------------------------------------------
def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as info:
        load_dataset("mnist")
    for name in NAMES:
        assert repr(name) in str(info.value)
    with pytest.raises(TypeError, match="string"):
        load_dataset(None)


def test_name_is_case_and_dash_insensitive():
    ds = load_dataset("Breast-Cancer")
    assert ds.name == "breast_cancer"


@pytest.mark.parametrize("test_size", [0, 0.0, 1, 1.0, -0.2, 1.5, float("nan")])
def test_bad_test_size(test_size):
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("iris", test_size=test_size)


@pytest.mark.parametrize("test_size", [True, "0.2", None])
def test_test_size_type(test_size):
    with pytest.raises(TypeError, match="test_size"):
        load_dataset("iris", test_size=test_size)


def test_test_size_too_small_for_stratification():
    with pytest.raises(ValueError, match="cannot split 'iris'"):
        load_dataset("iris", test_size=0.01)


@pytest.mark.parametrize("seed", [1.5, "0", True, None, np.float64(1.0)])
def test_non_int_seed(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        load_dataset("iris", seed=seed)


def test_seed_range_and_numpy_ints():
    with pytest.raises(ValueError, match="seed"):
        load_dataset("iris", seed=-1)
    a, b = load_dataset("iris", seed=np.int64(7)), load_dataset("iris", seed=7)
    np.testing.assert_array_equal(a.X_train, b.X_train)


def test_dtype_argument():
    ds = load_dataset("regression", dtype=np.float64)
    assert ds.X_train.dtype == ds.y_train.dtype == ds.mean.dtype == ds.y_std.dtype == np.float64
    assert ds.targets().dtype == np.float64
    assert load_dataset("moons", dtype=np.float64).targets().dtype == np.float64
    assert load_dataset("iris", dtype=np.float64).y_train.dtype == np.int32  # labels stay int
    with pytest.raises(TypeError, match="floating"):
        load_dataset("iris", dtype=np.int32)
    with pytest.raises(TypeError, match="standardize"):
        load_dataset("iris", standardize="yes")


def test_dataset_is_frozen_and_repr_is_short():
    ds = load_dataset("iris")
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ds.X_train[0, 0] = 1.0
    text = repr(ds)
    assert "iris" in text and "(120, 4)" in text and len(text) < 200


# --- offline ----------------------------------------------------------------------------------
def test_no_network_access(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("mlds_jax.datasets tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in NAMES:
        ds = load_dataset(name, seed=11)
        assert ds.X_train.shape[1] == DATASETS[name].n_features


def test_source_never_fetches():
    source = inspect.getsource(datasets)
    assert "fetch_" not in source and "urllib" not in source and "requests" not in source


# --- dtypes and bad input to the data helpers (the bad-input contract), N = 1 -------------------
@pytest.mark.parametrize("dtype", [np.int32, BF16, F16, F32, F64])
def test_bad_dataset_dtypes(dtype):
    """The numpy-side data helpers work in numpy's floats.  As an output dtype (load_dataset,
    one_hot) only float16/32/64 are accepted; standardize takes integer data too (statistics
    in float64, float64 out) but not bfloat16, JAX's type (cast later, or let the network cast
    X to its params' dtype)."""
    X = np.arange(12.0).reshape(4, 3)
    name = np.dtype(dtype).name
    if dtype in (np.int32, BF16):
        regex = rf"dtype must be a floating dtype \(e\.g\. np\.float32\), got {name}"
        with pytest.raises(TypeError, match=regex):
            mj.load_dataset("iris", dtype=dtype)
        with pytest.raises(TypeError, match=regex):
            mj.datasets.one_hot(np.array([0, 2]), 3, dtype=dtype)
    else:
        ds = mj.load_dataset("iris", dtype=dtype)
        assert ds.X_train.dtype == dtype and np.all(np.isfinite(ds.X_train))
        assert mj.datasets.one_hot(np.array([0, 2]), 3, dtype=dtype).dtype == dtype
    if dtype == BF16:
        with pytest.raises(TypeError, match=r"X_train must be a numeric array, got dtype "
                                            r"bfloat16"):
            mj.datasets.standardize(X.astype(dtype))
        return
    Xs, _, _, _ = mj.datasets.standardize(X.astype(dtype))
    assert Xs.dtype == (F64 if dtype == np.int32 else dtype) and np.all(np.isfinite(Xs))
    np.testing.assert_allclose(Xs.astype(F64).mean(axis=0), 0, atol=1e-3)


@pytest.mark.parametrize(("call", "exc", "regex"), [
    (lambda: mj.datasets.one_hot(np.array([0, 1], np.complex64), 3), TypeError,
     r"labels must be integers, got dtype complex64"),
    (lambda: mj.datasets.one_hot(np.array([0.0, 2.5]), 3), ValueError,
     r"label 2\.5 at index 1 is not an integer"),
    (lambda: mj.datasets.one_hot(np.array([0, 3]), 3), ValueError,
     r"label 3 at index 1 is out of range"),
    (lambda: mj.datasets.one_hot(np.array([True, False]), 3), TypeError,
     r"labels must be integers"),
    (lambda: mj.datasets.standardize(np.ones((3, 2), np.complex128)), TypeError,
     r"X_train must be real, got dtype complex128"),
    (lambda: mj.datasets.standardize(np.ones((3, 2)), np.ones((2, 2), np.complex64)), TypeError,
     r"X_test must be real"),
    (lambda: mj.datasets.standardize(np.zeros((0, 2))), ValueError, r"X_train is empty \(0 rows\)"),
    (lambda: mj.datasets.standardize(np.ones(3)), ValueError, r"X_train must be 2-D"),
    (lambda: mj.load_dataset("cifar"), ValueError, r"unknown dataset 'cifar'; valid names"),
    (lambda: mj.load_dataset("breast-cancr"), ValueError,
     r"unknown dataset 'breast-cancr'; did you mean 'breast_cancer'\?; valid names"),
    (lambda: mj.load_dataset("iris", test_size="0.2"), TypeError,
     r"test_size must be a real number, got '0.2'"),
])
def test_bad_data_helper_input(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()


def test_bad_data_helpers_on_one_row():
    """N = 1: standardize maps the single row to 0 (std 1 for a constant column)."""
    Xs, _, mean, std = mj.datasets.standardize(np.array([[1.0, -2.0, 3.0]]))
    np.testing.assert_array_equal(Xs, 0.0)
    np.testing.assert_array_equal(std, 1.0)

