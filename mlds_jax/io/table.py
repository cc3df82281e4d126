"""Reading a user's table: a CSV file with a header, or a NumPy ``.npz`` archive with X and y.

>>> table = read_table("flowers.csv")
>>> table.names, table.n_rows
(('sepal_length', 'sepal_width', 'petal_length', 'petal_width', 'species'), 150)
>>> table.column("species")[:2]
array(['setosa', 'setosa'], dtype='<U10')

CSV: UTF-8 text (a byte-order mark is allowed), comma-separated (tab-separated when the name
ends in ``.tsv``), quoted as Python's :mod:`csv` reads it.  The first line names the columns
(each name once, none empty); every other non-blank line is a row with exactly as many
fields; fields are stripped of surrounding spaces and kept as text: what a column means
(numbers, labels) is decided by the caller (:mod:`mlds_jax.tabular`).

NPZ: an archive (``np.savez``) with ``X`` (n, d) numbers and, optionally, ``y`` (n,) or
(n, k) (numbers or strings); ``Y`` is accepted for ``y``.  No pickled object arrays are read.
Its columns are named ``x0 .. x{d-1}`` and ``y`` (``y0 .. y{k-1}`` for several).

Every problem with the file is a ``ValueError`` whose message starts with "data file PATH"
and says what is wrong and where (the line, the column); a missing file is a
``FileNotFoundError``.  Files are read through :func:`mlds_jax.io.files.read_regular_file`
(regular files only).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import zipfile

import numpy as np

from mlds_jax.io import files

__all__ = ["WHAT", "Table", "read_table"]

#: How messages name the file.
WHAT = "data file"


@dataclasses.dataclass(frozen=True)
class Table:
    """A table read from a file: named columns of equal length.

    Attributes:
      path: the file it was read from.
      format: "csv" or "npz".
      names: the column names, in file order.
      columns: one (n,) array per name: text (``str`` dtype) for CSV; as stored for NPZ.
      lines: for CSV, the file line number of each row (n,) (for messages); None for NPZ.
    """

    path: str
    format: str
    names: tuple[str, ...]
    columns: tuple[np.ndarray, ...]
    lines: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return 0 if not self.columns else int(self.columns[0].shape[0])

    def column(self, name: str) -> np.ndarray:
        """The (n,) column ``name`` (KeyError if there is none)."""
        return self.columns[self.names.index(name)]

    def where(self, row: int) -> str:
        """How messages name row ``row`` (0-based): "line L" for CSV, "row R" for NPZ."""
        return f"line {int(self.lines[row])}" if self.lines is not None else f"row {row}"


def _fail(path: str, problem: str) -> ValueError:
    return ValueError(f"{WHAT} {path} {problem}")


def _read_csv(path: str, raw: bytes) -> Table:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if not text.strip():
        raise _fail(path, "is empty: a CSV file needs a header line naming its columns")
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # a blank line
            fields = [f.strip() for f in fields]
            if header is None:
                header = fields
                _check_header(path, header, reader.line_num)
                continue
            if len(fields) != len(header):
                raise _fail(
                    path,
                    f"line {reader.line_num} has {len(fields)} field(s), but the header names "
                    f"{len(header)} columns (ragged rows)",
                )
            rows.append(fields)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise _fail(path, f"line {reader.line_num} is not valid CSV: {exc}") from None
    assert header is not None  # the text is not blank
    if not rows:
        raise _fail(path, "has a header but no rows")
    table = np.array(rows, dtype=str)
    return Table(
        path=path,
        format="csv",
        names=tuple(header),
        columns=tuple(np.ascontiguousarray(table[:, j]) for j in range(len(header))),
        lines=np.array(lines),
    )


def _check_header(path: str, header: list[str], line: int) -> None:
    seen: set[str] = set()
    for j, name in enumerate(header):
        if not name:
            raise _fail(path, f"line {line} (the header) leaves column {j + 1} without a name")
        if name in seen:
            raise _fail(path, f"line {line} (the header) names the column {name!r} twice")
        seen.add(name)


def _read_npz(path: str, raw: bytes) -> Table:
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(path, f"is not a NumPy .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "is a single .npy array, not an .npz archive with X and y")
    with archive:
        keys = list(archive.files)
        if "X" not in keys:
            raise _fail(
                path, f"has no array 'X' (it holds {keys}): save it with np.savez(path, X=X, y=y)"
            )
        y_key = "y" if "y" in keys else ("Y" if "Y" in keys else None)
        try:
            X = archive["X"]
            y = None if y_key is None else archive[y_key]
        except ValueError as exc:  # an object array: it would need pickle
            raise _fail(
                path, f"holds an array that cannot be read without pickle ({exc})"
            ) from None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise _fail(path, f"is corrupt ({exc})") from None
    if X.ndim != 2:
        raise _fail(path, f"has X of shape {X.shape}: X must be 2-D (rows, features)")
    if X.shape[0] == 0:
        raise _fail(path, f"has no rows (X has shape {X.shape})")
    names = [f"x{j}" for j in range(X.shape[1])]
    columns = [np.ascontiguousarray(X[:, j]) for j in range(X.shape[1])]
    if y is not None:
        if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
            raise _fail(
                path, f"has X of shape {X.shape} but {y_key} of shape {y.shape}: {y_key} must "
                f"be ({X.shape[0]},) or ({X.shape[0]}, k)"
            )  # fmt: skip
        if y.ndim == 1:
            names.append("y")
            columns.append(np.ascontiguousarray(y))
        else:
            names += [f"y{j}" for j in range(y.shape[1])]
            columns += [np.ascontiguousarray(y[:, j]) for j in range(y.shape[1])]
    return Table(path=path, format="npz", names=tuple(names), columns=tuple(columns))


def read_table(path: str | os.PathLike) -> Table:
    """Read a CSV (with a header) or ``.npz`` (X, y) file as a :class:`Table`.

    Args:
      path: the file; ``.npz`` by its name, anything else is read as CSV (``.tsv``:
        tab-separated).

    Raises:
      FileNotFoundError: no such file.
      ValueError: "data file PATH ..." naming the problem: not a regular file, empty, a
        header without rows, ragged rows (the line), a column without a name or named
        twice, not UTF-8, not an archive, no X, X not 2-D, y's rows not X's.
    """
    target = os.fsdecode(os.fspath(path))
    raw = files.read_regular_file(target, WHAT)
    if target.lower().endswith(".npz"):
        return _read_npz(target, raw)
    return _read_csv(target, raw)
