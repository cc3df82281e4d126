"""Your own table as a data set, and the preprocessing a saved model applies to new rows.

>>> ds, prep = load_table("flowers.csv", targets=["species"])
>>> ds.task, ds.class_names, prep.features
('multiclass', ('setosa', 'versicolor', 'virginica'), ('sepal_length', ...))

:func:`load_table` reads a CSV or ``.npz`` file (:mod:`mlds_jax.io.table`), takes the target
column(s) (CSV: ``targets``, default the last column; NPZ: ``y``) and every other column as a
numeric feature, infers the task, splits off a test set and standardises, returning a
:class:`mlds_jax.datasets.Dataset` (as :func:`mlds_jax.load_dataset` does for the bundled data)
and the :class:`Preprocessing` that produced it.  ``Preprocessing.to_metadata()`` is what the
command line stores in the model file, so that ``predict``/``evaluate`` apply the same steps to
new raw rows.

The task, unless ``task`` says "classification" or "regression":

* one target column of integers (CSV: every value an integer like ``3``; NPZ: an integer or
  bool array) or of text: classification, "binary" for two classes, "multiclass" for more;
  the class names are the distinct values, sorted (numbers numerically), and label i is the
  i-th name;
* one column of other numbers (``2.5``, ``1e3``, ``3.0``; NPZ: floats): "regression";
* several target columns: "multilabel" when every value is 0 or 1 (one sigmoid output per
  column), "regression" when they are all numbers.

Preprocessing, fitted on the training rows only (the rows outside the test split):

* every feature is standardised, ``(x − mean) / std`` with the training rows' mean and
  population standard deviation in float64 (a constant column maps to 0:
  :func:`mlds_jax.datasets.standardize`);
* regression targets are standardised the same way; predictions are mapped back to the
  target's units;
* features must be numbers: a text column is refused, naming it (one-hot encoding of text
  features is not done here: encode such columns as numbers, or drop them, first); so is a
  missing value (an empty field, ``NA``, ``nan``) or an infinite one, naming the line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlds_jax import validation
from mlds_jax.datasets import TASK_OUTPUT, Dataset, standardize
from mlds_jax.io.table import Table, read_table
from mlds_jax.losses import default_loss_for

__all__ = ["MISSING", "TASKS", "Preprocessing", "load_table", "numeric_column"]

#: The ``task`` values :func:`load_table` takes (``None``: inferred).
TASKS = ("classification", "regression")
#: Field texts read as a missing value (compared in lower case).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
_INT = re.compile(r"^[+-]?\d+$")
_FORMAT = "mlds_jax.preprocessing"
_VERSION = 1


# --- columns ----------------------------------------------------------------------------------
def _is_text(col: np.ndarray) -> bool:
    return col.dtype.kind in "US"


def _missing(col: np.ndarray) -> np.ndarray:
    """(n,) bool: the fields of a text column that are missing values."""
    return np.isin(np.char.lower(col.astype(str)), list(MISSING))


def _refuse_missing(table: Table, col: np.ndarray, head: str, advice: str) -> None:
    """A ValueError naming the first missing value of the text column ``col``, if any."""
    missing = np.flatnonzero(_missing(col))
    if missing.size:
        i = int(missing[0])
        raise ValueError(
            f"{head} has a missing value ({str(col[i])!r}) at {table.where(i)} "
            f"({missing.size} missing in all): {advice}"
        )


def numeric_column(table: Table, name: str, role: str = "feature") -> np.ndarray:
    """Column ``name`` as (n,) float64, or a ValueError naming the column and the first bad
    line: a missing value, text, or an infinite number."""
    col = table.column(name)
    head = f"{role} column {name!r} of {table.path}"
    if _is_text(col):
        _refuse_missing(table, col, head, "fill it in or drop the row")
        try:
            values = col.astype(np.float64)
        except ValueError:
            i = next(i for i, v in enumerate(col) if not _parses(v))
            hint = (
                "; only numeric features are read: encode text as numbers (one-hot) or drop "
                "the column"
                if role == "feature"
                else ""
            )
            raise ValueError(
                f"{head} is not numeric: {table.where(i)} holds {str(col[i])!r}{hint}"
            ) from None
    elif col.dtype.kind in "biuf":
        values = col.astype(np.float64)
    else:
        raise ValueError(f"{head} is not numeric: its dtype is {col.dtype}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        what = "a missing value (NaN)" if np.isnan(values[i]) else f"the value {values[i]}"
        raise ValueError(f"{head} has {what} at {table.where(i)}: values must be finite numbers")
    return values


def _parses(text) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_kind(table: Table, name: str) -> str:
    """ "int", "float" or "text": what a target column holds (missing values refused)."""
    col = table.column(name)
    if _is_text(col):
        _refuse_missing(table, col, f"target column {name!r} of {table.path}",
                        "every row needs a target")  # fmt: skip
        if all(_INT.match(v) for v in col):
            return "int"
        return "float" if all(_parses(v) for v in col) else "text"
    if col.dtype.kind in "biu":
        return "int"
    if col.dtype.kind == "f":
        numeric_column(table, name, "target")  # NaN/inf named
        return "float"
    raise ValueError(f"target column {name!r} of {table.path} has dtype {col.dtype}")


def _label_values(table: Table, name: str, kind: str) -> list:
    """The target column as Python values: ints, floats or strings."""
    col = table.column(name)
    if kind == "int":
        return [int(v) for v in col.tolist()]
    if kind == "float":
        return [float(v) for v in col.tolist()]
    return [str(v) for v in col.tolist()]


# --- the preprocessing ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What turns raw rows into network inputs and network outputs back into predictions.

    Attributes:
      task: "multiclass", "binary", "multilabel" or "regression".
      features: the d feature column names, in input order.
      targets: the target column names (one for multiclass/binary).
      classes: multiclass/binary: the K class names (ints, floats or strings), label i being
        ``classes[i]``; None otherwise.
      x_mean, x_std: (d,) the training rows' feature statistics (float64).
      y_mean, y_std: (k,) regression targets' statistics; None otherwise.
    """

    task: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    classes: tuple | None
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None

    # --- records ---
    def to_metadata(self) -> dict[str, Any]:
        """A JSON-ready record (floats written exactly: JSON keeps float64's shortest repr)."""

        def floats(a):
            return None if a is None else [float(v) for v in np.asarray(a, np.float64)]

        return {
            "format": _FORMAT,
            "version": _VERSION,
            "task": self.task,
            "features": list(self.features),
            "targets": list(self.targets),
            "classes": None if self.classes is None else list(self.classes),
            "x_mean": floats(self.x_mean),
            "x_std": floats(self.x_std),
            "y_mean": floats(self.y_mean),
            "y_std": floats(self.y_std),
        }

    @classmethod
    def from_metadata(cls, record: Any) -> Preprocessing:
        """The inverse of :meth:`to_metadata`; a ValueError names what is missing or wrong."""
        if not isinstance(record, Mapping) or record.get("format") != _FORMAT:
            raise ValueError("the preprocessing record is missing or not one mlds_jax wrote")
        try:
            task = record["task"]
            features = tuple(str(f) for f in record["features"])
            targets = tuple(str(t) for t in record["targets"])
            classes = None if record["classes"] is None else tuple(record["classes"])
            arrays = {
                k: None if record[k] is None else np.asarray(record[k], np.float64)
                for k in ("x_mean", "x_std", "y_mean", "y_std")
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the preprocessing record is invalid: {exc!r}") from None
        x_mean, x_std = arrays["x_mean"], arrays["x_std"]
        if (
            task not in TASK_OUTPUT
            or x_mean is None
            or x_std is None
            or x_mean.shape != (len(features),)
            or x_std.shape != (len(features),)
            or (task in ("multiclass", "binary")) != (classes is not None)
        ):
            raise ValueError("the preprocessing record is invalid (its fields disagree)")
        return cls(task, features, targets, classes, x_mean, x_std, arrays["y_mean"],
                   arrays["y_std"])  # fmt: skip

    @classmethod
    def of_dataset(cls, ds: Dataset) -> Preprocessing:
        """The preprocessing of a bundled data set (:func:`mlds_jax.load_dataset`): its
        feature names and training statistics (as stored, in the data's dtype), the target
        "target"."""
        features = ds.feature_names or tuple(f"x{j}" for j in range(ds.n_features))
        regression = ds.task == "regression"
        return cls(
            task=ds.task,
            features=tuple(features),
            targets=("target",),
            classes=None if regression else ds.class_names,
            x_mean=np.asarray(ds.mean, np.float64),
            x_std=np.asarray(ds.std, np.float64),
            y_mean=None if ds.y_mean is None else np.asarray(ds.y_mean, np.float64),
            y_std=None if ds.y_std is None else np.asarray(ds.y_std, np.float64),
        )

    # --- applying it ---
    def raw_features(self, table: Table) -> np.ndarray:
        """(n, d) float64: the feature columns of ``table`` by name (for an ``.npz``
        table, by position when its X has exactly d columns)."""
        missing = [f for f in self.features if f not in table.names]
        if not missing:
            names = list(self.features)
        else:
            xs = [n for n in table.names if re.fullmatch(r"x\d+", n)]
            if table.format != "npz" or len(xs) != len(self.features):
                got = len(xs) if table.format == "npz" else len(table.names)
                hint = validation.did_you_mean(missing[0], table.names)
                raise ValueError(
                    f"{table.path} has no column {missing[0]!r}{hint} (the model's "
                    f"{len(self.features)} features: {_short(self.features)}; the file's {got} "
                    f"columns: {_short(table.names)})"
                )
            names = xs
        return np.stack([numeric_column(table, n) for n in names], axis=1)

    def transform(self, X: np.ndarray, dtype) -> np.ndarray:
        """Standardised features ``(X − x_mean) / x_std`` computed in float64, in ``dtype``."""
        X = np.asarray(X, np.float64)
        return ((X - self.x_mean[None, :]) / self.x_std[None, :]).astype(dtype)

    def encode_targets(self, table: Table) -> np.ndarray:
        """The table's target columns as the network's labels: int32 (n,) class indices
        (multiclass/binary), int32 (n, k) 0/1 (multilabel) or float64 (n, k) values
        (regression, not standardised).  Class names are matched as written; where the
        classes have names and the column holds integers none of which is a name (a bundled
        data set's labels, say), the integers are the label indices."""
        missing = [t for t in self.targets if t not in table.names]
        if missing and table.format == "npz":
            ys = [n for n in table.names if re.fullmatch(r"y\d*", n)]
            if len(ys) == len(self.targets):
                table = dataclasses.replace(
                    table, names=tuple(dict(zip(ys, self.targets, strict=True)).get(n, n)
                                       for n in table.names)
                )  # fmt: skip
                missing = []
        if missing:
            hint = validation.did_you_mean(missing[0], table.names)
            raise ValueError(
                f"{table.path} has no target column {missing[0]!r}{hint} (its columns: "
                f"{_short(table.names)})"
            )
        if self.task == "regression":
            return np.stack([numeric_column(table, t, "target") for t in self.targets], axis=1)
        if self.task == "multilabel":
            return np.stack([_zero_one(table, t) for t in self.targets], axis=1)
        assert self.classes is not None
        name = self.targets[0]
        kind = _label_kind(table, name)
        if isinstance(self.classes[0], (int, float)) and kind == "text":
            first = str(table.column(name)[0])
            raise ValueError(
                f"target column {name!r} of {table.path} holds text ({first!r}), but the "
                f"model's classes are numbers {_short(self.classes)}"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        values = _label_values(table, name, "text" if isinstance(self.classes[0], str) else kind)
        if kind == "int" and not set(values) & set(index):  # named classes, integer labels:
            values = [self.classes[v] if 0 <= v < len(self.classes) else v  # label indices
                      for v in _label_values(table, name, "int")]  # fmt: skip
        labels = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            if v not in index:
                raise ValueError(
                    f"target column {name!r} of {table.path} holds {v!r} at {table.where(i)}, "
                    f"a class the model was not trained on (its classes: "
                    f"{_short(self.classes)})"
                )
            labels[i] = index[v]
        return labels

    def network_targets(self, encoded: np.ndarray, dtype) -> np.ndarray:
        """Encoded targets as the default loss takes them: class indices as they are,
        multilabel and binary 0/1 as (n, k) floats, regression standardised."""
        if self.task == "multiclass":
            return encoded
        if self.task == "binary":
            return encoded.astype(dtype).reshape(-1, 1)
        if self.task == "multilabel":
            return encoded.astype(dtype)
        assert self.y_mean is not None and self.y_std is not None
        return ((encoded - self.y_mean[None, :]) / self.y_std[None, :]).astype(dtype)

    def decode(self, outputs) -> list[np.ndarray]:
        """Network outputs (n, K) as predictions, one (n,) column per target: class names
        (the largest output, or a single output above 0.5), 0/1 per label, or values in the
        target's units."""
        Y = np.asarray(outputs, np.float64)
        if self.task == "regression":
            assert self.y_mean is not None and self.y_std is not None
            values = Y * self.y_std[None, :] + self.y_mean[None, :]
            return [values[:, j] for j in range(values.shape[1])]
        if self.task == "multilabel":
            return [(Y[:, j] > 0.5).astype(np.int64) for j in range(Y.shape[1])]
        assert self.classes is not None
        idx = (Y[:, 0] > 0.5).astype(np.int64) if Y.shape[1] == 1 else np.argmax(Y, axis=1)
        return [np.asarray(self.classes, dtype=object)[idx]]


def _short(names: Sequence, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _zero_one(table: Table, name: str) -> np.ndarray:
    kind = _label_kind(table, name)
    values = _label_values(table, name, kind) if kind != "text" else None
    if values is None or any(v not in (0, 1) for v in values):
        raise ValueError(
            f"target column {name!r} of {table.path} is not 0/1: several target columns are "
            f"read as labels (multi-label) only when every value is 0 or 1"
        )
    return np.asarray(values, np.int32)


# --- loading ----------------------------------------------------------------------------------
def _target_names(table: Table, targets: Sequence[str] | None) -> list[str]:
    if not targets:
        if table.format == "npz":
            ys = [n for n in table.names if re.fullmatch(r"y\d*", n)]
            if not ys:
                raise ValueError(f"{table.path} has no array 'y' with the targets")
            return ys
        return [table.names[-1]]
    for t in targets:
        if t not in table.names:
            raise ValueError(
                f"{table.path} has no column {t!r}{validation.did_you_mean(t, table.names)} (its "
                f"columns: {_short(table.names)})"
            )
    if len(set(targets)) != len(targets):
        raise ValueError(f"a target column is named twice: {list(targets)}")
    if len(targets) == len(table.names):
        raise ValueError(f"{table.path}: every column is a target; no feature is left")
    return list(targets)


def _infer(table: Table, targets: list[str], task: str | None) -> tuple[str, tuple | None]:
    """(task, classes) from the target columns and the ``task`` asked for."""
    kinds = [_label_kind(table, t) for t in targets]
    if len(targets) > 1:
        numeric = all(k != "text" for k in kinds)
        zero_one = all(k == "int" for k in kinds) and all(
            set(_label_values(table, t, "int")) <= {0, 1} for t in targets
        )
        if task == "regression" or (task is None and numeric and not zero_one):
            if not numeric:
                bad = targets[kinds.index("text")]
                raise ValueError(f"target column {bad!r} of {table.path} is not numeric")
            return "regression", None
        if not zero_one:
            raise ValueError(
                f"several target columns {targets} are read as labels (multi-label) only when "
                f"every value is 0 or 1; numbers are read as regression targets (--task "
                f"regression)"
            )
        return "multilabel", None
    (name,), (kind,) = targets, kinds
    if task == "regression" or (task is None and kind == "float"):
        if kind == "text":
            values = table.column(name)
            raise ValueError(
                f"target column {name!r} of {table.path} is not numeric ({str(values[0])!r}): "
                f"regression needs numbers; text labels are read as classes"
            )
        return "regression", None
    values = _label_values(table, name, kind)
    classes = tuple(sorted(set(values)))
    if len(classes) < 2:
        raise ValueError(
            f"target column {name!r} of {table.path} holds one class ({values[0]!r}) in all "
            f"{len(values)} rows: classification needs two or more"
        )
    return ("binary" if len(classes) == 2 else "multiclass"), classes


def load_table(
    path: str | os.PathLike,
    targets: Sequence[str] | None = None,
    task: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    dtype=None,
) -> tuple[Dataset, Preprocessing]:
    """A CSV or ``.npz`` file as a split, standardised :class:`Dataset`, with its
    :class:`Preprocessing` (see the module docstring for the rules).

    Args:
      path: the file (:func:`mlds_jax.io.table.read_table`).
      targets: the target column names (CSV); default the last column (CSV) or ``y`` (NPZ).
      task: "classification", "regression" or None (inferred from the targets).
      test_size: fraction of rows held out as the test split, in (0, 1).
      seed: int ``random_state`` of the split (stratified by class for classification).
      dtype: floating dtype of the features (and regression targets); default float32.

    Returns:
      ``(dataset, preprocessing)``: the dataset's arrays as :func:`mlds_jax.load_dataset`'s
      (labels (n,) int32, multilabel (n, k) int32 0/1, regression (n, k) standardised), its
      ``name`` the file's base name.

    Raises:
      FileNotFoundError: no such file.  ValueError: a problem with the file or its columns
      (named, with the line), one class, too few rows to split.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)} or None, got {task!r}")
    test_size = validation.number_in_interval(test_size, "test_size", 0, 1)
    seed = validation.int_in_range(seed, "seed", 0, 2**32, high_text="2**32")
    dt = np.dtype(np.float32 if dtype is None else dtype)
    table = read_table(path)
    target_names = _target_names(table, targets)
    kind, classes = _infer(table, target_names, task)
    features = tuple(n for n in table.names if n not in target_names)
    X = np.stack([numeric_column(table, f) for f in features], axis=1)
    encoder = Preprocessing(kind, features, tuple(target_names), classes, np.zeros(0), np.ones(0))
    y = encoder.encode_targets(table)
    tr, te = _split(table, y, kind, test_size, seed)
    _, _, x_mean, x_std = standardize(X[tr])
    y_mean = y_std = None
    if kind == "regression":
        _, _, y_mean, y_std = standardize(y[tr])
    prep = dataclasses.replace(encoder, x_mean=x_mean, x_std=x_std, y_mean=y_mean, y_std=y_std)
    y_train, y_test = (
        (prep.network_targets(y[tr], dt), prep.network_targets(y[te], dt))
        if kind == "regression"
        else (y[tr], y[te])
    )
    ds = Dataset(
        name=os.path.basename(os.fsdecode(os.fspath(path))),
        task=kind,
        X_train=_readonly(prep.transform(X[tr], dt)),
        X_test=_readonly(prep.transform(X[te], dt)),
        y_train=_readonly(y_train),
        y_test=_readonly(y_test),
        n_features=len(features),
        n_outputs=_n_outputs(kind, classes, y),
        class_names=None if classes is None else tuple(str(c) for c in classes),
        feature_names=features,
        default_loss=default_loss_for(TASK_OUTPUT[kind]),
        default_output=TASK_OUTPUT[kind],
        mean=_readonly(x_mean.astype(dt)),
        std=_readonly(x_std.astype(dt)),
        y_mean=None if y_mean is None else _readonly(y_mean.astype(dt)),
        y_std=None if y_std is None else _readonly(y_std.astype(dt)),
        standardized=True,
        seed=seed,
        test_size=test_size,
    )
    return ds, prep


def _n_outputs(kind: str, classes: tuple | None, y: np.ndarray) -> int:
    """K for multiclass, 1 for binary, the number of target columns otherwise."""
    if kind == "multiclass":
        assert classes is not None
        return len(classes)
    return 1 if kind == "binary" else int(y.shape[1])


def _split(table: Table, y: np.ndarray, kind: str, test_size: float, seed: int):
    try:
        from sklearn.model_selection import train_test_split
    except ModuleNotFoundError:
        raise ImportError(
            "splitting a table needs scikit-learn: pip install 'mlds-jax[data]'"
        ) from None
    idx = np.arange(table.n_rows)
    stratify = y if kind in ("multiclass", "binary") else None
    try:
        return train_test_split(
            idx, test_size=test_size, random_state=seed, shuffle=True, stratify=stratify
        )
    except ValueError as exc:
        raise ValueError(
            f"cannot split {table.path} ({table.n_rows} rows) into train and test with "
            f"test_size={test_size}: {exc}"
        ) from None


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a
