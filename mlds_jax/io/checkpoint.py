"""Save and load MLP parameters: no pickle, validated, atomic, memory bounded by the params.

>>> save("model.npz", params, metadata={"dataset": "digits", "epochs": 20})
>>> params = load("model.npz")
>>> params, meta = load("model.npz", return_metadata=True)

File format ("mlds_jax.checkpoint", version 1)
-----------------------------------------------
A signed container (:mod:`mlds_jax.io.container`: an uncompressed ``.npz`` that
``np.load(path, allow_pickle=False)`` reads) with entries

* ``layer{i}/W`` (fan_in, fan_out) and ``layer{i}/b`` (fan_out,), i = 0 .. L-1: the leaves,
  little-endian float16/32/64, all the same dtype;
* ``__header__`` (first): UTF-8 JSON with ``format``, ``format_version``,
  ``library_version``, ``n_layers``, ``layer_sizes`` ``[n_in, h_1, ..., n_out]``,
  ``activations`` (one per layer), ``dtype``, ``byteorder``, ``leaves`` (key and shape of
  every leaf, in flattening order W1, b1, W2, ...), the user's ``metadata`` and ``sha256``
  (the container's content digest).

The archive comment ``mlds_jax.checkpoint sha256=<hex>`` signs every byte of the file.  The
same params and metadata give the same bytes (fixed timestamps), the bytes earlier versions
wrote.

Guarantees
----------
* :func:`load` never unpickles and runs no code.  A file that is not a checkpoint is refused
  after a few hundred bytes; a checkpoint's signature is checked before anything in it is
  believed; the header (fields, the network schema of
  :func:`mlds_jax.validation.check_schema`, entry names, shapes, dtypes) before any array is
  read; each array is read straight into the buffer the returned parameter uses, so peak
  memory is about the parameters' size.  A bad file raises ``ValueError`` naming the path and
  the problem; a missing one ``FileNotFoundError``.
* :func:`save` writes exactly the given path (no suffix added) all or nothing
  (:func:`mlds_jax.io.atomic.atomic_write`), streamed from the arrays.
* Round trips are exact: bitwise-equal leaves, same dtype, activations and tree structure.

The other format, safetensors: ``save(path, params, format="safetensors")`` (or a path
ending in ``.safetensors``) writes PyTorch's ``nn.Sequential`` layout, read back by
:func:`load` with the same guarantees (:mod:`mlds_jax.io.safetensors`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal, TypeGuard, overload

import jax
import numpy as np
from jax.core import Tracer

from mlds_jax import validation
from mlds_jax.io import atomic, container, files, safetensors
from mlds_jax.io.files import BadFileError
from mlds_jax.layers import Dense, Params

__all__ = [
    "DTYPES",
    "FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_METADATA_DEPTH",
    "checkpoint_bytes",
    "leaf_key",
    "library_version",
    "load",
    "save",
]

#: The ``format`` field of every checkpoint header.
FORMAT_NAME = "mlds_jax.checkpoint"
#: The format version this module writes (and the newest it reads).
FORMAT_VERSION = 1
#: ``format=`` values of :func:`save` and :func:`load`.
FORMATS = ("npz", "safetensors")
#: The parameter dtypes a checkpoint holds.
DTYPES = ("float16", "float32", "float64")
#: Deepest metadata nesting save writes (and so load is sure to parse).
MAX_METADATA_DEPTH = 64


def leaf_key(i: int, name: str) -> str:
    """The entry name of leaf ``name`` ("W" or "b") of 0-based layer ``i``: ``layer{i}/W``."""
    return f"layer{i}/{name}"


def _leaf_name(i: int, leaf: str | None) -> str:
    return f"layer {i}" if leaf is None else leaf_key(i, leaf)


def library_version() -> str:
    """The installed mlds-jax version, recorded in every file written."""
    try:
        from importlib.metadata import version

        return version("mlds-jax")
    except Exception:
        try:
            from mlds_jax.version import __version__

            return str(__version__)
        except Exception:
            return "unknown"


# --- save -----------------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _check_json_keys(obj: Any, where: str) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"metadata keys must be strings; {where} has key {k!r}")
            _check_json_keys(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json_keys(v, f"{where}[{i}]")


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of dicts/lists/tuples, counting no further than ``limit`` + 1."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        item, d = stack.pop()
        if isinstance(item, (Mapping, list, tuple)):
            deepest = max(deepest, d)
            if d > limit:
                return d
            values = item.values() if isinstance(item, Mapping) else item
            stack.extend((v, d + 1) for v in values)
    return deepest


def _normalise_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata as it will come back from :func:`load` (a JSON round trip)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict (JSON object), got {type(metadata).__name__}")
    if _depth(metadata, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
        raise ValueError(
            f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep; checkpoints "
            f"refuse it so that load can always parse what save wrote"
        )
    _check_json_keys(metadata, "metadata")
    try:
        text = json.dumps(dict(metadata), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    return json.loads(text)


def _params_to_numpy(params, allow_nonfinite: bool, target: str) -> list[tuple[str, np.ndarray]]:
    """The leaves as little-endian NumPy arrays, keyed ``layer{i}/W`` ..., checked."""
    validation.check_params(params)
    leaves: list[tuple[str, np.ndarray]] = []
    for i, layer in enumerate(params):
        for name in ("W", "b"):
            leaf = getattr(layer, name)
            if isinstance(leaf, Tracer):
                raise TypeError(
                    f"params[{i}].{name} is a JAX tracer: save concrete params, outside jit/grad"
                )
            arr = np.asarray(leaf)
            if arr.dtype.name not in DTYPES:
                raise TypeError(
                    f"params[{i}].{name} has dtype {arr.dtype}; checkpoints hold "
                    f"{list(DTYPES)} (cast with .astype)"
                )
            if not allow_nonfinite:
                try:
                    validation.check_finite(arr, f"params[{i}].{name}")
                except ValueError as exc:
                    raise ValueError(
                        f"refusing to save checkpoint {target}: {exc}; pass "
                        f"allow_nonfinite=True to save it anyway"
                    ) from None
            little = np.dtype(arr.dtype.name).newbyteorder("<")
            leaves.append((leaf_key(i, name), np.ascontiguousarray(arr, dtype=little)))
    return leaves


def _header(params, leaves: list[tuple[str, np.ndarray]], metadata: dict) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "n_layers": len(params),
        "layer_sizes": [int(params[0].W.shape[0])] + [int(p.W.shape[1]) for p in params],
        "activations": [str(p.activation) for p in params],
        "dtype": leaves[0][1].dtype.name,
        "byteorder": "little",
        "leaves": [{"key": key, "shape": [int(s) for s in arr.shape]} for key, arr in leaves],
        "metadata": metadata,
    }


def _file_format(format: str | None, target: str) -> str:
    """``format``, or by default "safetensors" for a ``.safetensors`` path and "npz" else."""
    if format is None:
        return "safetensors" if target.lower().endswith(".safetensors") else "npz"
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; valid: {list(FORMATS)}")
    return format


def save(
    path: str | os.PathLike,
    params,
    *,
    metadata: Mapping[str, Any] | None = None,
    allow_nonfinite: bool = False,
    format: str | None = None,
) -> pathlib.Path:
    """Write ``params`` (a tuple of :class:`~mlds_jax.network.Dense`) to ``path``.

    The file is written exactly at ``path`` (no ``.npz`` suffix is added; use one by
    convention), atomically: a temporary file in the same directory is written, flushed,
    fsync'ed and renamed onto ``path``, so readers see either the old checkpoint or the new
    one, and a failed save leaves the old one in place.

    Args:
      path: destination file; its directory must exist.
      params: non-empty tuple of Dense, W (fan_in, fan_out), b (fan_out,), chained shapes,
        one floating dtype (float16/32/64), concrete (not traced).
      metadata: optional JSON-serialisable dict with string keys (numpy/JAX scalars and
        arrays are stored as numbers and nested lists).  :func:`load` returns it as JSON
        gives it back (tuples become lists).
      allow_nonfinite: save NaN/inf parameters instead of refusing.
      format: "npz" (this module's format) or "safetensors" (PyTorch-readable, see
        :mod:`mlds_jax.io.safetensors`); default: "safetensors" if ``path`` ends in
        ``.safetensors``, else "npz".

    Returns:
      ``pathlib.Path(path)``.

    Raises:
      TypeError: params not a tuple of Dense, mixed or unsupported dtype, tracers, or
        metadata not JSON-serialisable.
      ValueError: malformed params, or non-finite values (names the leaf and index).
      FileNotFoundError: the directory does not exist.
      PermissionError / OSError: the directory is not writable (the message names the path).
    """
    target = os.fsdecode(os.fspath(path))
    fmt = _file_format(format, target)
    leaves = _params_to_numpy(params, allow_nonfinite, target)
    meta = _normalise_metadata(metadata)
    if fmt == "safetensors":
        weights = [(leaves[2 * i][1], leaves[2 * i + 1][1]) for i in range(len(params))]
        data = safetensors.safetensors_chunks(
            weights,
            [str(p.activation) for p in params],
            metadata=meta,
            library_version=library_version(),
        )
        atomic.atomic_write(target, data, what="checkpoint")
    else:
        header = _header(params, leaves, meta)
        container.write_container(target, FORMAT_NAME, header, leaves, what="checkpoint")
    return pathlib.Path(target)


def checkpoint_bytes(params, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes :func:`save` would write for ``params`` in the npz format (same checks), for
    callers that write several files as one set."""
    leaves = _params_to_numpy(params, False, "<memory>")
    header = _header(params, leaves, _normalise_metadata(metadata))
    return container.container_bytes(FORMAT_NAME, header, leaves, what="checkpoint")


# --- load -----------------------------------------------------------------------------------
def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


_FIELDS = (
    ("library_version", str),
    ("n_layers", int),
    ("layer_sizes", list),
    ("activations", list),
    ("dtype", str),
    ("byteorder", str),
    ("leaves", list),
    ("metadata", dict),
    ("sha256", str),
)


def _check_header(header: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """The entries a header announces, ``(key, dtype, shape)``, after checking its fields and
    the network schema; raises BadFileError."""
    corrupt = "is corrupt: header "
    version = header.get("format_version")
    if not _is_int(version):
        raise BadFileError(f"{corrupt}format_version is {version!r}, not an int")
    if version > FORMAT_VERSION:
        raise BadFileError(
            f"has format version {version}, newer than this mlds_jax reads "
            f"({FORMAT_VERSION}); upgrade mlds_jax"
        )
    if version < 1:
        raise BadFileError(f"has unsupported format version {version}")
    for field, kind in _FIELDS:
        if field not in header:
            raise BadFileError(f"{corrupt}lacks the field {field!r}")
        if not isinstance(header[field], kind) or isinstance(header[field], bool):
            raise BadFileError(
                f"{corrupt}field {field!r} should be {kind.__name__}, got {header[field]!r}"
            )
    n_layers, acts, leaves = header["n_layers"], header["activations"], header["leaves"]
    if n_layers < 1 or len(acts) != n_layers or len(leaves) != 2 * n_layers:
        raise BadFileError(
            f"{corrupt}has n_layers = {n_layers}, {len(acts)} activations and {len(leaves)} "
            f"leaves (one W and one b per layer)"
        )
    shapes = []
    for j, entry in enumerate(leaves):
        key = leaf_key(j // 2, "Wb"[j % 2])
        if not isinstance(entry, dict) or entry.get("key") != key:
            raise BadFileError(
                f"{corrupt}leaf list is out of order: expected {key!r}, got {entry!r}"
            )
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 1 for s in shape):
            raise BadFileError(f"{corrupt}gives {key} the shape {shape!r}")
        shapes.append(tuple(shape))
    if header["dtype"] not in DTYPES:
        raise BadFileError(f"is invalid: dtype {header['dtype']!r} is not one of {list(DTYPES)}")
    if header["byteorder"] != "little":
        raise BadFileError(f"{corrupt}byteorder is {header['byteorder']!r}")
    try:
        sizes = validation.check_schema(acts, shapes[0::2], shapes[1::2], names=_leaf_name)
    except (ValueError, TypeError) as exc:
        raise BadFileError(f"is invalid: {exc}") from None
    if header["layer_sizes"] != sizes:
        raise BadFileError(
            f"is invalid: header layer_sizes {header['layer_sizes']!r} disagree with the leaf "
            f"shapes, which chain as {sizes}"
        )
    digest = header["sha256"]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BadFileError(f"{corrupt}sha256 {digest!r} is not a hex digest")
    dtype = np.dtype(header["dtype"])
    return [(leaf_key(j // 2, "Wb"[j % 2]), dtype, s) for j, s in enumerate(shapes)]


def _read_npz(target: str) -> tuple[list[str], list[np.ndarray], np.dtype, dict]:
    """(activations, leaves W0, b0, W1, ..., stored dtype, metadata) of a checked file."""
    with container.open_container(target, what="checkpoint", format_name=FORMAT_NAME) as c:
        specs = _check_header(c.header)
        if not c.signed:
            raise BadFileError(
                "is corrupt: the archive checksum is missing (truncated, or re-packed by "
                "another tool)"
            )
        arrays = c.read(specs)
    header = c.header
    return header["activations"], arrays, np.dtype(header["dtype"]), header["metadata"]


def _to_device(arr: np.ndarray, dtype: np.dtype) -> jax.Array:
    """The array as a ``jax.Array`` of ``dtype``.  On the CPU backend an aligned array of the
    dtype asked for is adopted by ``jax.device_put`` without a copy, so loading holds one
    copy of the parameters: the one read from the file."""
    if arr.dtype != dtype:
        cast = files.aligned_empty(arr.shape, dtype)
        cast[...] = arr
        arr = cast
    return jax.device_put(arr)


@overload
def load(
    path: str | os.PathLike,
    *,
    return_metadata: Literal[False] = False,
    dtype=None,
    format: str | None = None,
) -> Params: ...
@overload
def load(
    path: str | os.PathLike,
    *,
    return_metadata: Literal[True],
    dtype=None,
    format: str | None = None,
) -> tuple[Params, dict[str, Any]]: ...
def load(
    path: str | os.PathLike,
    *,
    return_metadata: bool = False,
    dtype=None,
    format: str | None = None,
):
    """Read a checkpoint written by :func:`save` and rebuild the params.

    Nothing is unpickled and no code runs: the file is validated completely (see the module
    docstring) before any parameter is built.

    Args:
      path: the checkpoint file.
      return_metadata: also return the metadata dict given to :func:`save` (``{}`` if none).
      dtype: cast the leaves to this floating dtype; default: the stored one.  A float64
        checkpoint needs JAX's x64 mode (``jax.config.update("jax_enable_x64", True)`` or
        ``with jax.enable_x64(True):``), or ``dtype=np.float32``.
      format: "npz" or "safetensors"; default: "safetensors" if ``path`` ends in
        ``.safetensors``, else "npz".

    Returns:
      ``params``, a tuple of :class:`~mlds_jax.network.Dense` with ``jax.Array`` leaves, or
      ``(params, metadata)`` when ``return_metadata``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: anything else wrong with the file ("checkpoint <path> is corrupt: ...",
        "... is not an mlds_jax checkpoint: ..."), or float64 leaves without x64.
    """
    target = os.fsdecode(os.fspath(path))
    fmt = _file_format(format, target)
    out = None if dtype is None else validation.float_dtype(dtype)
    if fmt == "safetensors":
        contents = safetensors.read_safetensors(target)
        acts, stored, metadata = contents.activations, contents.dtype, contents.metadata
        arrays = [a for pair in contents.weights for a in pair]
        del contents
    else:
        acts, arrays, stored, metadata = _read_npz(target)
    out = stored if out is None else np.dtype(out)
    validation.require_x64(out, f"checkpoint {target}")
    leaves = [_to_device(arrays.pop(0), out) for _ in range(len(acts) * 2)]  # drop as we go
    params = tuple(
        Dense(W=leaves[2 * i], b=leaves[2 * i + 1], activation=act) for i, act in enumerate(acts)
    )
    return (params, metadata) if return_metadata else params
