"""Save and load MLP parameters as a plain ``.npz``: no pickle, validated, atomic.

>>> save("model.npz", params, metadata={"dataset": "digits", "epochs": 20})
>>> params = load("model.npz")
>>> params, meta = load("model.npz", return_metadata=True)

File format ("mlds_jax.checkpoint", version 1)
-----------------------------------------------
An uncompressed zip archive that ``np.load(path, allow_pickle=False)`` reads, with entries

* ``layer{i}/W`` (fan_in, fan_out) and ``layer{i}/b`` (fan_out,), i = 0 .. L-1: the leaves,
  little-endian float16/32/64, all the same dtype, written by ``np.lib.format.write_array``
  with ``allow_pickle=False``;
* ``__header__``: a uint8 array holding UTF-8 JSON: ``format``, ``format_version``,
  ``library_version``, ``n_layers``, ``layer_sizes`` ``[n_in, h_1, ..., n_out]``,
  ``activations`` (one per layer), ``dtype``, ``leaves`` (key and shape of every leaf, in
  flattening order W1, b1, W2, ...), the user's ``metadata`` and ``sha256``: a digest of the
  canonical JSON of the rest of the header followed by every leaf's key, dtype, shape and
  bytes.

The archive comment is ``mlds_jax.checkpoint sha256=<hex>``, the SHA-256 of every byte of
the file before the hex digits, so a flipped bit anywhere (zip structures included) is
detected.  Entries carry a fixed timestamp: the same params and metadata give the same bytes.

Guarantees
----------
* :func:`load` never unpickles: the file must start as a zip archive, ``np.load`` runs with
  ``allow_pickle=False``, and everything (signature, header, entry names, shapes, the chain
  ``W_i`` fan_out == ``W_{i+1}`` fan_in, dtypes, activations, both checksums) is checked
  before any :class:`~mlds_jax.network.Dense` is built.  A bad file raises ``ValueError``
  naming the path and the problem; a missing one ``FileNotFoundError``.
* :func:`save` writes exactly to the given path (no ``.npz`` is appended), through a
  temporary file in the same directory that is flushed, fsync'ed and then ``os.replace``'d
  onto the target: an interrupted save leaves any previous checkpoint untouched and removes
  its temporary file.
* Round trips are exact: bitwise-equal leaves, same dtype, activations and tree structure.

The other format: safetensors
-----------------------------
``save(path, params, format="safetensors")`` (or a path ending in ``.safetensors``) writes
the same params as a safetensors file named as PyTorch's ``nn.Sequential`` of ``Linear``
layers names them (``"0.weight"`` = Wᵀ, ``"0.bias"``, ...; activations in its metadata), so
PyTorch loads it with ``model.load_state_dict(safetensors.torch.load_file(path))``;
``load`` reads it back with the same guarantees (validated before any tensor byte is read,
atomic save, exact round trip).  The layout: :mod:`mlds_jax.interop`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import pathlib
import secrets
import stat
import zipfile
from collections.abc import Mapping
from typing import Any, Literal, TypeGuard, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from mlds_jax import validation
from mlds_jax.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from mlds_jax.interop import read_exactly
from mlds_jax.layers import Dense, Params

__all__ = [
    "atomic_write",
    "fsync_dir",
    "checkpoint_bytes",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FORMATS",
    "load",
    "load_checkpoint",
    "read_regular_file",
    "save",
    "save_checkpoint",
]

#: The ``format`` field of every checkpoint header.
FORMAT_NAME = "mlds_jax.checkpoint"
#: The format version this module writes (and the newest it reads).
FORMAT_VERSION = 1

_HEADER_KEY = "__header__"
_SIGNATURE = b"mlds_jax.checkpoint sha256="
_DIGEST_LEN = 64  # hex characters of a SHA-256
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: deterministic bytes
_DTYPES = ("float16", "float32", "float64")
_MAX_HEADER_BYTES = 64 * 2**20
_NPY_HEADER_SLACK = 2**16  # an .npy entry is its data plus a (small) header


class _CkError(Exception):
    """A checkpoint problem; the message continues "checkpoint <path> ..."."""


# --- helpers shared by save and load --------------------------------------------------------
def _leaf_key(i: int, name: str) -> str:
    return f"layer{i}/{name}"


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode("ascii")


def _content_digest(header: Mapping[str, Any], leaves: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 of the header (without its ``sha256`` field) and of every leaf."""
    h = hashlib.sha256()
    h.update(_canonical_json({k: v for k, v in header.items() if k != "sha256"}))
    for key, arr in leaves:
        h.update(key.encode("utf-8") + b"\0")
        h.update(arr.dtype.str.encode("ascii") + b"\0")
        h.update(repr(tuple(int(s) for s in arr.shape)).encode("ascii") + b"\0")
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _archive_bytes(entries: list[tuple[str, np.ndarray]]) -> bytes:
    """An uncompressed, signed npz of ``entries`` (name without ``.npy``, array)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in entries:
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
        zf.comment = _SIGNATURE + b"0" * _DIGEST_LEN
    body = buf.getvalue()[:-_DIGEST_LEN]
    return body + hashlib.sha256(body).hexdigest().encode("ascii")


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("mlds-jax")
    except Exception:
        try:
            from mlds_jax import __version__

            return str(__version__)
        except Exception:
            return "unknown"


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


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


#: Deepest metadata nesting save writes (and so load is sure to parse).
MAX_METADATA_DEPTH = 64


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


def _params_to_numpy(params, allow_nonfinite: bool, target: str) -> tuple[list, np.dtype]:
    validation.check_params(params)
    leaves: list[tuple[str, np.ndarray]] = []
    dtypes = set()
    for i, layer in enumerate(params):
        for name in ("W", "b"):
            leaf = getattr(layer, name)
            if isinstance(leaf, Tracer):
                raise TypeError(
                    f"params[{i}].{name} is a JAX tracer: save concrete params, outside jit/grad"
                )
            arr = np.asarray(leaf)
            if arr.dtype.name not in _DTYPES:
                raise TypeError(
                    f"params[{i}].{name} has dtype {arr.dtype}; checkpoints hold "
                    f"{list(_DTYPES)} (cast with .astype)"
                )
            if not allow_nonfinite:
                bad = ~np.isfinite(arr)
                if bad.any():
                    idx = tuple(int(j) for j in np.argwhere(bad)[0])
                    raise ValueError(
                        f"refusing to save checkpoint {target}: params[{i}].{name} has "
                        f"{int(bad.sum())} non-finite value(s), first {arr[idx]} at index "
                        f"{idx}; pass allow_nonfinite=True to save it anyway"
                    )
            dtypes.add(arr.dtype.name)
            little = np.dtype(arr.dtype.name).newbyteorder("<")
            leaves.append((_leaf_key(i, name), np.ascontiguousarray(arr, dtype=little)))
    if len(dtypes) != 1:
        raise TypeError(f"all parameters must share one dtype, got {sorted(dtypes)}")
    return leaves, np.dtype(dtypes.pop())


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable; not possible on every platform, and not fatal."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(target: str, data: bytes) -> None:
    """Write ``data`` to ``target`` all or nothing: a temporary file in the same directory,
    flushed and fsync'ed, then ``os.replace``'d onto the target; on any failure the previous
    file (if any) is untouched and the temporary file is removed."""
    parent = os.path.dirname(os.path.abspath(target))
    probe = parent
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot save checkpoint {target}: {probe} is a file, not a directory",
            target,
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            errno.ENOENT,
            f"cannot save checkpoint {target}: directory {parent} does not exist",
            target,
        )
    if os.path.isdir(target):
        raise IsADirectoryError(
            errno.EISDIR, f"cannot save checkpoint {target}: it is a directory", target
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    base = os.path.basename(target)
    for _ in range(100):
        tmp = os.path.join(parent, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # mode 0o666 & ~umask, like a plain open()
            break
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise PermissionError(
                exc.errno,
                f"cannot save checkpoint {target}: directory "
                f"{parent} is not writable ({exc.strerror})",
                target,
            ) from exc
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot save checkpoint {target}: could not create a "
                f"temporary file in {parent} ({exc.strerror})",
                target,
            ) from exc
    else:  # pragma: no cover - 100 random-name collisions
        raise FileExistsError(
            errno.EEXIST,
            f"cannot save checkpoint {target}: no free temporary file name in {parent}",
            target,
        )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def read_regular_file(path: str, what: str = "checkpoint") -> bytes:
    """All bytes of ``path``, which must be a regular file (a symlink to one is followed):
    FIFOs, devices, sockets and directories are refused before any read (opened non-blocking,
    so a path swapped for a FIFO after the check cannot hang), and the size is taken from
    ``fstat`` first, so nothing is read or allocated beyond the file itself."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} {path} does not exist", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is {_kind(st.st_mode)}; only regular files are read")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path} is {_kind(st.st_mode)}; only regular files are read")
        try:
            return read_exactly(fd, st.st_size)
        except EOFError as short:
            raise ValueError(
                f"{what} {path} is truncated: it ended {short.args[0]} bytes short of its size "
                f"(was it changed while being read?)"
            ) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


#: ``format=`` values of :func:`save` and :func:`load`.
FORMATS = ("npz", "safetensors")


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
        :mod:`mlds_jax.interop`); default: "safetensors" if ``path`` ends in
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
    leaves, dtype = _params_to_numpy(params, allow_nonfinite, target)
    meta = _normalise_metadata(metadata)
    if fmt == "safetensors":
        from mlds_jax import interop

        weights = [(leaves[2 * i][1], leaves[2 * i + 1][1]) for i in range(len(params))]
        atomic_write(
            target,
            interop.safetensors_bytes(
                weights,
                [str(p.activation) for p in params],
                metadata=meta,
                library_version=_library_version(),
            ),
        )
        return pathlib.Path(target)
    _save_npz(target, params, meta, allow_nonfinite, fmt, leaves=leaves, dtype=dtype)
    return pathlib.Path(target)


def _save_npz(target, params, metadata, allow_nonfinite, fmt, *, leaves=None, dtype=None):
    """The npz checkpoint: its bytes when ``fmt`` is None, else written atomically."""
    if leaves is None or dtype is None:
        leaves, dtype = _params_to_numpy(params, allow_nonfinite, target)
        metadata = _normalise_metadata(metadata)
    meta = metadata
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "n_layers": len(params),
        "layer_sizes": [int(params[0].W.shape[0])] + [int(p.W.shape[1]) for p in params],
        "activations": [str(p.activation) for p in params],
        "dtype": dtype.name,
        "byteorder": "little",
        "leaves": [{"key": key, "shape": [int(s) for s in arr.shape]} for key, arr in leaves],
        "metadata": meta,
    }
    header["sha256"] = _content_digest(header, leaves)
    header_bytes = _canonical_json(header)
    if len(header_bytes) > _MAX_HEADER_BYTES:
        raise ValueError(
            f"refusing to save checkpoint {target}: its header (metadata included) is "
            f"{len(header_bytes)} bytes, more than load accepts ({_MAX_HEADER_BYTES})"
        )
    header_arr = np.frombuffer(header_bytes, dtype=np.uint8)
    data = _archive_bytes([(_HEADER_KEY, header_arr), *leaves])
    if fmt is None:
        return data
    atomic_write(target, data)
    return pathlib.Path(target)


def checkpoint_bytes(params, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes :func:`save` would write for ``params`` in the npz format (same checks), for
    callers that write several files as one set."""
    data = _save_npz("<memory>", params, metadata, False, None)
    assert isinstance(data, bytes)
    return data


# --- load -----------------------------------------------------------------------------------
def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(header: Any) -> None:
    """Structure and consistency of a parsed header (before any leaf is read)."""
    corrupt = "is corrupt: header "
    if not isinstance(header, dict):
        raise _CkError(f"{corrupt}is not a JSON object")
    fmt = header.get("format")
    if fmt != FORMAT_NAME:
        raise _CkError(
            f"is not an mlds_jax checkpoint: header format is {fmt!r}, expected {FORMAT_NAME!r}"
        )
    version = header.get("format_version")
    if not _is_int(version):
        raise _CkError(f"{corrupt}format_version is {version!r}, not an int")
    if version > FORMAT_VERSION:
        raise _CkError(
            f"has format version {version}, newer than this mlds_jax reads "
            f"({FORMAT_VERSION}); upgrade mlds_jax"
        )
    if version < 1:
        raise _CkError(f"has unsupported format version {version}")
    for field, kind in (
        ("library_version", str),
        ("n_layers", int),
        ("layer_sizes", list),
        ("activations", list),
        ("dtype", str),
        ("byteorder", str),
        ("leaves", list),
        ("metadata", dict),
        ("sha256", str),
    ):
        if field not in header:
            raise _CkError(f"{corrupt}lacks the field {field!r}")
        if not isinstance(header[field], kind) or isinstance(header[field], bool):
            raise _CkError(
                f"{corrupt}field {field!r} should be {kind.__name__}, got {header[field]!r}"
            )
    n_layers, sizes, acts = header["n_layers"], header["layer_sizes"], header["activations"]
    if n_layers < 1:
        raise _CkError(f"{corrupt}has n_layers = {n_layers}")
    if len(sizes) != n_layers + 1 or not all(_is_int(s) and s >= 1 for s in sizes):
        raise _CkError(f"{corrupt}layer_sizes {sizes!r} is not {n_layers + 1} positive ints")
    if len(acts) != n_layers or not all(isinstance(a, str) for a in acts):
        raise _CkError(f"{corrupt}activations {acts!r} is not {n_layers} names")
    for i, act in enumerate(acts):
        if act not in ACTIVATIONS:
            raise _CkError(
                f"is invalid: layer {i} has unknown activation {act!r}; valid: {list(ACTIVATIONS)}"
            )
        if i < n_layers - 1 and act not in HIDDEN_ACTIVATIONS:
            raise _CkError(
                f"is invalid: hidden layer {i} has activation {act!r}, allowed only "
                f"on the output layer"
            )
    if header["dtype"] not in _DTYPES:
        raise _CkError(f"is invalid: dtype {header['dtype']!r} is not one of {list(_DTYPES)}")
    if header["byteorder"] != "little":
        raise _CkError(f"{corrupt}byteorder is {header['byteorder']!r}")
    leaves = header["leaves"]
    if len(leaves) != 2 * n_layers:
        raise _CkError(f"{corrupt}lists {len(leaves)} leaves for {n_layers} layers")
    for i in range(n_layers):
        expected = (
            (_leaf_key(i, "W"), [sizes[i], sizes[i + 1]]),
            (_leaf_key(i, "b"), [sizes[i + 1]]),
        )
        for entry, (key, shape) in zip(leaves[2 * i : 2 * i + 2], expected, strict=True):
            if not isinstance(entry, dict) or entry.get("key") != key:
                raise _CkError(
                    f"{corrupt}leaf list is out of order: expected {key!r}, got {entry!r}"
                )
            if entry.get("shape") != shape:
                raise _CkError(
                    f"is invalid: header gives {key} the shape {entry.get('shape')!r}"
                    f" but layer_sizes {sizes} need {shape} (shapes must chain: W_i "
                    f"fan_out == W_(i+1) fan_in, b_i == fan_out)"
                )
    digest = header["sha256"]
    if len(digest) != _DIGEST_LEN or any(c not in "0123456789abcdef" for c in digest):
        raise _CkError(f"{corrupt}sha256 {digest!r} is not a hex digest")


def _entry(npz, key: str) -> np.ndarray:
    """Read one entry; pickled (object) arrays are refused by ``allow_pickle=False``."""
    try:
        return npz[key]
    except Exception as exc:
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise _CkError(
                f"is invalid: entry {key!r} holds pickled Python objects, which are never loaded"
            ) from None
        raise _CkError(
            f"is corrupt: entry {key!r} is unreadable ({type(exc).__name__}: {exc})"
        ) from None


def _check_members(zf) -> None:
    """No duplicate names, every member stored (never inflated) at its declared size."""
    names = zf.namelist()
    if len(names) != len(set(names)):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise _CkError(f"is corrupt: duplicate entries {dup[:5]}")
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _CkError(
                f"is invalid: entry {info.filename!r} is compressed; checkpoint entries are "
                f"stored uncompressed (nothing is inflated on load)"
            )


def _read_header(npz) -> dict:
    info = npz.zip.getinfo(_HEADER_KEY + ".npy")
    if info.file_size > _MAX_HEADER_BYTES:
        raise _CkError(f"is corrupt: header entry is {info.file_size} bytes")
    arr = _entry(npz, _HEADER_KEY)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise _CkError(f"is corrupt: header entry is {arr.dtype} {arr.shape}, not uint8 bytes")
    try:
        return json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _CkError(f"is corrupt: header is not valid JSON ({exc})") from None


def _parse(raw: bytes) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """Validate the bytes of a checkpoint; returns (header, [(key, leaf), ...])."""
    if len(raw) == 0:
        raise _CkError("is empty (0 bytes): not an mlds_jax checkpoint")
    if not raw.startswith(_ZIP_MAGIC):
        if raw.startswith(b"\x93NUMPY"):
            raise _CkError(
                "is not an mlds_jax checkpoint: it is a single .npy array, not a .npz archive"
            )
        raise _CkError(
            "is not an mlds_jax checkpoint: not a .npz (zip) archive (other files, "
            "pickles included, are never loaded)"
        )
    tail = raw[-(len(_SIGNATURE) + _DIGEST_LEN) :]
    signed = len(raw) > len(tail) and tail.startswith(_SIGNATURE)
    if signed:
        body, digest = raw[:-_DIGEST_LEN], raw[-_DIGEST_LEN:]
        if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
            raise _CkError("is corrupt: checksum mismatch (its bytes changed after it was saved)")
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as exc:
        raise _CkError(
            f"is corrupt or truncated: not a readable .npz archive ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _CkError("is not an mlds_jax checkpoint: not a .npz archive")
    with npz:
        _check_members(npz.zip)
        if _HEADER_KEY not in npz.files:
            raise _CkError(
                f"is not an mlds_jax checkpoint: no {_HEADER_KEY!r} entry (a plain "
                f".npz?); entries: {sorted(npz.files)[:10]}"
            )
        header = _read_header(npz)
        _check_header(header)
        if not signed:
            raise _CkError(
                "is corrupt: the archive checksum is missing (truncated, or "
                "re-packed by another tool)"
            )
        sizes = header["layer_sizes"]  # validated ints; the leaf shapes were checked against it
        expected = []
        for i in range(header["n_layers"]):
            expected += [
                (_leaf_key(i, "W"), (sizes[i], sizes[i + 1])),
                (_leaf_key(i, "b"), (sizes[i + 1],)),
            ]
        keys = {key for key, _ in expected} | {_HEADER_KEY}
        if set(npz.files) != keys:
            missing = sorted(keys - set(npz.files))
            extra = sorted(set(npz.files) - keys)
            problems = ([f"missing entries {missing}"] if missing else []) + (
                [f"unexpected entries {extra}"] if extra else []
            )
            raise _CkError(f"is corrupt: {', '.join(problems)}")
        dtype = np.dtype(header["dtype"]).newbyteorder("<")
        leaves = []
        for key, shape in expected:
            nbytes = math.prod(shape) * dtype.itemsize
            size = npz.zip.getinfo(key + ".npy").file_size  # type: ignore[union-attr]
            if not nbytes < size <= nbytes + _NPY_HEADER_SLACK:
                raise _CkError(
                    f"is corrupt: entry {key} is {size} bytes, but a {shape} "
                    f"{dtype.name} array needs {nbytes} plus a small header"
                )
            arr = _entry(npz, key)
            if arr.dtype.hasobject or arr.dtype != dtype:
                raise _CkError(
                    f"is invalid: {key} has dtype {arr.dtype}, header says {header['dtype']}"
                )
            if arr.shape != shape:
                raise _CkError(f"is invalid: {key} has shape {arr.shape}, header says {shape}")
            leaves.append((key, arr))
    if _content_digest(header, leaves) != header["sha256"]:
        raise _CkError(
            "is corrupt: checksum mismatch (header and arrays disagree with the stored sha256)"
        )
    return header, leaves


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
    if not os.path.exists(target):
        raise FileNotFoundError(errno.ENOENT, f"checkpoint {target} does not exist", target)
    if os.path.isdir(target):
        raise ValueError(f"checkpoint {target} is a directory, not a checkpoint file")
    if _file_format(format, target) == "safetensors":
        return _load_safetensors(target, return_metadata, dtype)
    raw = read_regular_file(target, "checkpoint")
    try:
        header, leaves = _parse(raw)
    except _CkError as exc:
        raise ValueError(f"checkpoint {target} {exc}") from None
    except Exception as exc:  # anything numpy/zipfile raise on malformed input
        raise ValueError(
            f"checkpoint {target} is corrupt or not an mlds_jax checkpoint "
            f"({type(exc).__name__}: {exc})"
        ) from None

    out = np.dtype(header["dtype"]) if dtype is None else validation.float_dtype(dtype)
    if out == np.float64 and not _x64_enabled():
        raise ValueError(
            f"checkpoint {target}: loading float64 parameters needs JAX's x64 mode, which is "
            f"off; enable it (jax.config.update('jax_enable_x64', True)) or load with "
            f"dtype=np.float32"
        )
    arrays = [jnp.asarray(arr.astype(out)) for _, arr in leaves]
    params = tuple(
        Dense(W=arrays[2 * i], b=arrays[2 * i + 1], activation=act)
        for i, act in enumerate(header["activations"])
    )
    if return_metadata:
        return params, header["metadata"]
    return params


def _load_safetensors(target: str, return_metadata: bool, dtype):
    from mlds_jax import interop

    contents = interop.read_safetensors(target)  # validated completely, or ValueError
    out = contents.dtype if dtype is None else validation.float_dtype(dtype)
    if out == np.float64 and not _x64_enabled():
        raise ValueError(
            f"checkpoint {target}: loading float64 parameters needs JAX's x64 mode, which is "
            f"off; enable it (jax.config.update('jax_enable_x64', True)) or load with "
            f"dtype=np.float32"
        )
    params = tuple(
        Dense(W=jnp.asarray(W.astype(out)), b=jnp.asarray(b.astype(out)), activation=act)
        for (W, b), act in zip(contents.weights, contents.activations, strict=True)
    )
    return (params, contents.metadata) if return_metadata else params


#: Aliases for re-export at the package top level (``mlds_jax.save_checkpoint``).
save_checkpoint = save
load_checkpoint = load
