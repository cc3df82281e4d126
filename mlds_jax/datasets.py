"""Small, offline data sets for training MLPs: bundled sklearn tables and synthetic problems.

Everything here is either shipped inside an installed package (scikit-learn's bundled
``digits``, ``breast_cancer``, ``diabetes``, ``iris``, ``wine``) or generated with a fixed seed
(``moons``, ``blobs``, ``xor``, ``regression``).  Nothing is ever downloaded.

>>> ds = load_dataset("digits", test_size=0.2, seed=0)
>>> ds.X_train.shape, ds.y_train.shape, ds.n_outputs, ds.default_loss
((1437, 64), (1437,), 10, 'cross_entropy')

Conventions (all arrays are numpy, read-only):

* ``X_train (n_train, d)``, ``X_test (n_test, d)``: features, float32 unless ``dtype`` is given.
* classification: ``y_* (n,)`` int32 labels in ``[0, K)``; ``n_outputs`` is K for
  "multiclass" and 1 for "binary" (one sigmoid unit).
* regression: ``y_* (n, 1)`` float targets in the features' dtype.
* ``standardize=True`` maps every feature (and regression target) to zero mean and unit
  variance using the *training* split's statistics only; the statistics are kept in
  ``mean``/``std`` (and ``y_mean``/``y_std``) so ``X_raw = X * std + mean`` always holds
  (with ``mean = 0``, ``std = 1`` when ``standardize=False``).

The split is :func:`sklearn.model_selection.train_test_split` with ``random_state=seed``,
stratified on the labels for classification: the same arguments give identical arrays.
Synthetic data are generated with a fixed seed (0), so ``seed`` only changes the split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from mlds_jax import validation
from mlds_jax.losses import default_loss_for

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "TASK_OUTPUT",
    "load_dataset",
    "one_hot",
    "standardize",
]

#: The output activation of each task ("multilabel": several 0/1 labels, from a user's table).
TASK_OUTPUT = {
    "multiclass": "softmax",
    "binary": "sigmoid",
    "multilabel": "sigmoid",
    "regression": "identity",
}
#: Seed of the generators behind the synthetic data sets: the data are fixed, the split varies.
_GENERATOR_SEED = 0


# --- registry -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, before loading it.

    Attributes:
      name: registry key for :func:`load_dataset`.
      task: "multiclass", "binary" or "regression".
      n_samples: rows in total (train + test).
      n_features: columns of X.
      n_outputs: network outputs (K for multiclass, 1 for binary and regression).
      description: one line on the source.
    """

    name: str
    task: str
    n_samples: int
    n_features: int
    n_outputs: int
    description: str

    @property
    def shape(self) -> tuple[int, int]:
        """(n_samples, n_features) of the full table."""
        return (self.n_samples, self.n_features)


@dataclasses.dataclass(frozen=True)
class _Raw:
    X: np.ndarray  # (n, d) float64
    y: np.ndarray  # (n,) int64 labels, or (n,) float64 targets
    class_names: tuple[str, ...] | None
    feature_names: tuple[str, ...] | None


def _bunch(loader: Callable, **kwargs) -> _Raw:
    b = loader(**kwargs)
    target_names = getattr(b, "target_names", None)
    return _Raw(
        X=np.asarray(b.data, dtype=np.float64),
        y=np.asarray(b.target),
        class_names=None if target_names is None else tuple(str(t) for t in target_names),
        feature_names=tuple(str(f) for f in b.feature_names),
    )


def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    return _bunch(load_digits)


def _breast_cancer() -> _Raw:
    from sklearn.datasets import load_breast_cancer

    return _bunch(load_breast_cancer)


def _diabetes() -> _Raw:
    from sklearn.datasets import load_diabetes

    # scaled=False: the raw clinical values (age in years, ...), so that standardize=False
    # really means "as measured"; standardize=True rescales them with training statistics.
    return _bunch(load_diabetes, scaled=False)


def _iris() -> _Raw:
    from sklearn.datasets import load_iris

    return _bunch(load_iris)


def _wine() -> _Raw:
    from sklearn.datasets import load_wine

    return _bunch(load_wine)


def _moons() -> _Raw:
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=1000, noise=0.2, random_state=_GENERATOR_SEED)
    return _Raw(np.asarray(X, np.float64), np.asarray(y), ("0", "1"), ("x1", "x2"))


def _blobs() -> _Raw:
    from sklearn.datasets import make_blobs

    blobs = make_blobs(
        n_samples=1000, centers=3, n_features=2, cluster_std=1.5, random_state=_GENERATOR_SEED
    )
    return _Raw(
        np.asarray(blobs[0], np.float64), np.asarray(blobs[1]), ("0", "1", "2"), ("x1", "x2")
    )


def _xor() -> _Raw:
    rng = np.random.default_rng(_GENERATOR_SEED)
    X = rng.uniform(-1.0, 1.0, size=(1000, 2))
    y = ((X[:, 0] > 0) != (X[:, 1] > 0)).astype(np.int64)  # 1 where the signs differ
    return _Raw(X, y, ("same sign", "opposite sign"), ("x1", "x2"))


def _regression() -> _Raw:
    rng = np.random.default_rng(_GENERATOR_SEED)
    x = rng.uniform(-1.5, 1.5, size=(1000, 1))
    y = np.sin(3.0 * x[:, 0]) + 0.1 * rng.standard_normal(1000)
    return _Raw(x, y, None, ("x",))


_LOADERS: dict[str, tuple[Callable[[], _Raw], DatasetInfo]] = {
    "digits": (
        _digits,
        DatasetInfo(
            "digits",
            "multiclass",
            1797,
            64,
            10,
            "8x8 images of handwritten digits 0-9, pixel values 0-16 (sklearn load_digits)",
        ),
    ),
    "breast_cancer": (
        _breast_cancer,
        DatasetInfo(
            "breast_cancer",
            "binary",
            569,
            30,
            1,
            "Wisconsin diagnostic breast cancer, 0 = malignant, 1 = benign "
            "(sklearn load_breast_cancer)",
        ),
    ),
    "diabetes": (
        _diabetes,
        DatasetInfo(
            "diabetes",
            "regression",
            442,
            10,
            1,
            "disease progression after one year from 10 baseline variables, unscaled "
            "(sklearn load_diabetes(scaled=False))",
        ),
    ),
    "iris": (
        _iris,
        DatasetInfo(
            "iris",
            "multiclass",
            150,
            4,
            3,
            "Fisher's iris flowers, 3 species from 4 measurements (sklearn load_iris)",
        ),
    ),
    "wine": (
        _wine,
        DatasetInfo(
            "wine",
            "multiclass",
            178,
            13,
            3,
            "wine cultivars from 13 chemical measurements (sklearn load_wine)",
        ),
    ),
    "moons": (
        _moons,
        DatasetInfo(
            "moons",
            "binary",
            1000,
            2,
            1,
            "two interleaving half circles, noise=0.2 (sklearn make_moons, random_state=0)",
        ),
    ),
    "blobs": (
        _blobs,
        DatasetInfo(
            "blobs",
            "multiclass",
            1000,
            2,
            3,
            "three isotropic Gaussian clusters in 2-D, cluster_std=1.5 "
            "(sklearn make_blobs, random_state=0)",
        ),
    ),
    "xor": (
        _xor,
        DatasetInfo(
            "xor",
            "binary",
            1000,
            2,
            1,
            "uniform points in [-1, 1]^2, label 1 where x1 and x2 have opposite signs "
            "(not linearly separable)",
        ),
    ),
    "regression": (
        _regression,
        DatasetInfo(
            "regression",
            "regression",
            1000,
            1,
            1,
            "y = sin(3x) + 0.1*N(0, 1), x ~ U(-1.5, 1.5): a noisy 1-D nonlinear curve",
        ),
    ),
}

#: Registry of the available data sets: name -> :class:`DatasetInfo` (task, shape, source).
DATASETS: dict[str, DatasetInfo] = {name: info for name, (_, info) in _LOADERS.items()}


# --- helpers --------------------------------------------------------------------------------
def _float_dtype(dtype) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be a floating dtype (e.g. np.float32), got {dtype!r}"
        ) from None
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype (e.g. np.float32), got {dt}")
    return dt


def _as_2d_float(X, name: str) -> np.ndarray:
    arr = np.asarray(X)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    bad = ~np.isfinite(arr.astype(np.float64, copy=False))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s); first {arr[idx]} at index {idx}"
        )
    return arr


def standardize(X_train, X_test=None):
    """Standardise features with the statistics of the training set only.

    ``X_s = (X - mean) / std`` column by column, with ``mean`` and ``std`` (population std,
    ``ddof=0``) computed on ``X_train``.  A constant training column gets ``std = 1`` and a
    ``mean`` equal to its value, so it maps to exactly 0 instead of dividing by zero.
    Statistics are computed in float64; outputs keep ``X_train``'s floating dtype (float64
    for integer input).

    Args:
      X_train: (n_train, d), n_train >= 1, finite.
      X_test: (n_test, d) or None.

    Returns:
      ``(X_train_s, X_test_s, mean, std)``: (n_train, d), (n_test, d) or None, (d,), (d,).
    """
    Xtr = _as_2d_float(X_train, "X_train")
    if Xtr.shape[0] == 0:
        raise ValueError("X_train is empty (0 rows): no statistics to standardise with")
    out = Xtr.dtype if np.issubdtype(Xtr.dtype, np.floating) else np.dtype(np.float64)
    Xtr64 = Xtr.astype(np.float64)
    mean = Xtr64.mean(axis=0)
    std = Xtr64.std(axis=0)
    const = np.all(Xtr64 == Xtr64[:1, :], axis=0)
    mean = np.where(const, Xtr64[0, :], mean)
    std = np.where(const | (std == 0.0), 1.0, std)
    Xtr_s = ((Xtr64 - mean[None, :]) / std[None, :]).astype(out)
    Xte_s = None
    if X_test is not None:
        Xte = _as_2d_float(X_test, "X_test")
        if Xte.shape[1] != Xtr.shape[1]:
            raise ValueError(f"X_test has {Xte.shape[1]} features but X_train has {Xtr.shape[1]}")
        Xte_s = ((Xte.astype(np.float64) - mean[None, :]) / std[None, :]).astype(out)
    return Xtr_s, Xte_s, mean.astype(out), std.astype(out)


def _standardize_split(train: np.ndarray, test: np.ndarray):
    """:func:`standardize` of a train/test pair (``load_dataset``'s ``standardize`` argument
    shadows the function inside it)."""
    train_s, test_s, mean, std = standardize(train, test)
    assert test_s is not None  # a test split was passed, so one comes back
    return train_s, test_s, mean, std


def one_hot(labels, num_classes: int, dtype: DTypeLike = np.float32) -> np.ndarray:
    """One-hot rows for integer class labels, with range checking.

    Unlike ``jax.nn.one_hot`` (which silently gives an all-zero row for a label outside
    ``[0, num_classes)``), a bad label raises.

    Args:
      labels: (n,) integer labels (integral floats are accepted) in ``[0, num_classes)``.
      num_classes: K >= 1.
      dtype: floating dtype of the result.

    Returns:
      (n, K) array with ``out[i, labels[i]] = 1`` and zeros elsewhere.

    Raises:
      ValueError: a label out of range or not an integer (the message names it and its index).
    """
    num_classes = validation.positive_int(num_classes, "num_classes")
    dt = _float_dtype(dtype)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (n,), got shape {y.shape}")
    if (
        np.issubdtype(y.dtype, np.bool_)
        or not np.issubdtype(y.dtype, np.number)
        or np.issubdtype(y.dtype, np.complexfloating)
    ):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        with np.errstate(invalid="ignore"):
            frac = np.nonzero(~np.isfinite(y) | (y != np.round(y)))[0]
        if frac.size:
            raise ValueError(
                f"label {y[frac[0]].item()!r} at index {int(frac[0])} is not an integer"
            )
    bad = np.nonzero((y < 0) | (y >= num_classes))[0]
    if bad.size:
        raise ValueError(
            f"label {y[bad[0]].item()!r} at index {int(bad[0])} is out of range "
            f"[0, {num_classes}) ({bad.size} bad label(s))"
        )
    out = np.zeros((y.shape[0], num_classes), dtype=dt)
    out[np.arange(y.shape[0]), y.astype(np.intp)] = 1
    return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --- the Dataset ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for an MLP (all arrays numpy and read-only).

    Attributes:
      name, task: registry name (a file's base name for :func:`mlds_jax.tabular.load_table`);
        "multiclass", "binary", "regression" or (a user's table only) "multilabel".
      X_train, X_test: (n_train, d), (n_test, d) features in ``dtype``.
      y_train, y_test: int32 labels (n,) for classification; int32 0/1 (n, k) for
        multilabel; float targets (n, 1) for regression ((n, k) from a table; standardised
        when ``standardized``).
      n_features: d.
      n_outputs: network output width: K (multiclass), k (multilabel, a table's regression)
        or 1 (binary, regression).
      class_names: K class names (2 for binary), or None for regression and multilabel.
      feature_names: d feature names, or None.
      default_loss: "cross_entropy", "binary_cross_entropy" or "mse".
      default_output: the matching output activation: "softmax", "sigmoid" or "identity".
      mean, std: (d,) training statistics: ``X_raw = X * std + mean`` (0 and 1 when not
        standardised).
      y_mean, y_std: (1,) the same for regression targets; None for classification.
      standardized: whether ``standardize=True`` was used.
      seed, test_size: the split's arguments.
    """

    name: str
    task: str
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    n_features: int
    n_outputs: int
    class_names: tuple[str, ...] | None
    feature_names: tuple[str, ...] | None
    default_loss: str
    default_output: str
    mean: np.ndarray
    std: np.ndarray
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    standardized: bool = True
    seed: int = 0
    test_size: float = 0.2

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, task={self.task!r}, train={self.X_train.shape}, "
            f"test={self.X_test.shape}, n_outputs={self.n_outputs}, "
            f"dtype={self.X_train.dtype}, standardized={self.standardized})"
        )

    @property
    def dtype(self) -> np.dtype:
        """The features' floating dtype."""
        return self.X_train.dtype

    @property
    def n_classes(self) -> int | None:
        """K (2 for binary), or None for regression."""
        return None if self.class_names is None else len(self.class_names)

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self.X_train, self.y_train
        if split == "test":
            return self.X_test, self.y_test
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def _onehot(self, split: str) -> np.ndarray:
        if self.task in ("regression", "multilabel"):
            raise ValueError(f"data set {self.name!r} is a {self.task} task: no one-hot labels")
        return one_hot(
            self._split(split)[1],
            self.n_outputs if self.task == "multiclass" else 2,
            dtype=self.dtype,
        )

    @property
    def Y_train_onehot(self) -> np.ndarray:
        """(n_train, K) one-hot training labels in ``dtype`` (K = 2 for binary)."""
        return self._onehot("train")

    @property
    def Y_test_onehot(self) -> np.ndarray:
        """(n_test, K) one-hot test labels in ``dtype`` (K = 2 for binary)."""
        return self._onehot("test")

    def targets(self, split: str = "train") -> np.ndarray:
        """Targets in the form ``default_loss`` expects.

        Returns:
          multiclass: int32 labels (n,) for "cross_entropy";
          binary: (n, 1) 0/1 floats in ``dtype`` for "binary_cross_entropy";
          multilabel: (n, k) 0/1 floats in ``dtype`` for "binary_cross_entropy";
          regression: (n, 1) floats in ``dtype`` for "mse".
        """
        _, y = self._split(split)
        if self.task == "binary":
            return y.astype(self.dtype).reshape(-1, 1)
        if self.task == "multilabel":
            return y.astype(self.dtype)
        return y

    def inverse_transform_X(self, X) -> np.ndarray:
        """Undo the feature standardisation: ``X * std + mean`` for (n, d) ``X``."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (n, {self.n_features}), got {X.shape}")
        return X * self.std[None, :] + self.mean[None, :]

    def inverse_transform_y(self, y) -> np.ndarray:
        """Regression targets or predictions back in original units: ``y * y_std + y_mean``.

        Args:
          y: (n, 1) or (n,).

        Returns:
          The same shape as ``y``.
        """
        if self.task != "regression" or self.y_std is None or self.y_mean is None:
            raise ValueError(
                f"data set {self.name!r} is a {self.task} task: its labels are not standardised"
            )
        y = np.asarray(y)
        if y.ndim == 1:
            return y * self.y_std[0] + self.y_mean[0]
        if y.ndim != 2 or y.shape[1] != 1:
            raise ValueError(f"y must have shape (n, 1) or (n,), got {y.shape}")
        return y * self.y_std[None, :] + self.y_mean[None, :]


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, one of {sorted(DATASETS)}; got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key not in _LOADERS:
        raise ValueError(
            f"unknown dataset {name!r}{validation.did_you_mean(key, DATASETS)}; valid names: "
            f"{sorted(DATASETS)}"
        )
    return key


def _check_test_size(test_size) -> float:
    return validation.number_in_interval(test_size, "test_size", 0, 1)


def _check_seed(seed) -> int:
    return validation.int_in_range(seed, "seed", 0, 2**32, high_text="2**32")  # numpy's seeds


def load_dataset(
    name: str,
    test_size: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    dtype=None,
) -> Dataset:
    """Load a bundled or synthetic data set, split and (optionally) standardised.

    Args:
      name: a key of :data:`DATASETS`: "digits", "breast_cancer", "diabetes", "iris",
        "wine", "moons", "blobs", "xor" or "regression" (case-insensitive, '-' = '_').
      test_size: fraction of rows held out, strictly between 0 and 1.
      seed: int ``random_state`` of the split (stratified on the labels for
        classification).  Synthetic data themselves are fixed (generated with seed 0).
      standardize: standardise X (and regression y) with training statistics only.
      dtype: floating dtype of the features (and of regression targets); default float32.

    Returns:
      A :class:`Dataset`; ``X_* (n, d)``, labels ``(n,)`` int32 or targets ``(n, 1)``.

    Raises:
      ValueError: unknown name (the message lists the valid ones), test_size outside
        (0, 1) or too small/large to keep every class on both sides of a stratified split.
      TypeError: non-int seed, non-floating dtype.
    """
    key = _check_name(name)
    ts = _check_test_size(test_size)
    seed = _check_seed(seed)
    if not isinstance(standardize, (bool, np.bool_)):
        raise TypeError(f"standardize must be a bool, got {standardize!r}")
    dt = _float_dtype(dtype)
    loader, info = _LOADERS[key]
    try:
        import sklearn  # noqa: F401  (the loaders and the split come from scikit-learn)
    except ModuleNotFoundError:
        raise ImportError(
            "load_dataset needs scikit-learn, whose wheel ships the data sets: "
            "pip install scikit-learn (from a clone of mlds_jax: pip install -e '.[data]')"
        ) from None
    raw = loader()
    task = info.task

    from sklearn.model_selection import train_test_split

    classification = task != "regression"
    idx = np.arange(raw.X.shape[0])
    try:
        tr, te = train_test_split(
            idx,
            test_size=ts,
            random_state=seed,
            shuffle=True,
            stratify=raw.y if classification else None,
        )
    except ValueError as exc:
        raise ValueError(
            f"cannot split {key!r} ({raw.X.shape[0]} rows) with test_size={test_size!r}: {exc}"
        ) from None

    Xtr, Xte = raw.X[tr], raw.X[te]
    d = raw.X.shape[1]
    if standardize:
        Xtr, Xte, mean, std = _standardize_split(Xtr, Xte)
    else:
        mean, std = np.zeros(d), np.ones(d)

    y_mean = y_std = None
    if classification:
        ytr = raw.y[tr].astype(np.int32)
        yte = raw.y[te].astype(np.int32)
    else:
        ytr = raw.y[tr].astype(np.float64).reshape(-1, 1)
        yte = raw.y[te].astype(np.float64).reshape(-1, 1)
        if standardize:
            ytr, yte, y_mean, y_std = _standardize_split(ytr, yte)
        else:
            y_mean, y_std = np.zeros(1), np.ones(1)
        ytr, yte = ytr.astype(dt), yte.astype(dt)
        y_mean, y_std = y_mean.astype(dt), y_std.astype(dt)

    return Dataset(
        name=key,
        task=task,
        X_train=_readonly(np.ascontiguousarray(Xtr, dtype=dt)),
        X_test=_readonly(np.ascontiguousarray(Xte, dtype=dt)),
        y_train=_readonly(ytr),
        y_test=_readonly(yte),
        n_features=d,
        n_outputs=info.n_outputs,
        class_names=raw.class_names if classification else None,
        feature_names=raw.feature_names,
        default_loss=default_loss_for(TASK_OUTPUT[task]),
        default_output=TASK_OUTPUT[task],
        mean=_readonly(mean.astype(dt)),
        std=_readonly(std.astype(dt)),
        y_mean=None if y_mean is None else _readonly(y_mean),
        y_std=None if y_std is None else _readonly(y_std),
        standardized=bool(standardize),
        seed=seed,
        test_size=ts,
    )
