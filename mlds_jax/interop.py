r"""Weights other tools can read: safetensors files laid out as PyTorch's ``nn.Sequential``.

>>> mj.save("model.safetensors", params)                # format chosen by the suffix, or
>>> mj.save("model.st", params, format="safetensors")   # ... asked for explicitly
>>> params = mj.load("model.safetensors")

and in PyTorch, with the model the file's ``pytorch`` metadata names
(:func:`torch_sequential` builds it)::

    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                                torch.nn.Linear(7, 3), torch.nn.Softmax(dim=-1))
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

File layout (the safetensors format, written and read here with NumPy alone)
-----------------------------------------------------------------------------
``8-byte little-endian N | N bytes of UTF-8 JSON header | tensor bytes``.  The header maps
each tensor name to ``{"dtype": "F16"|"F32"|"F64", "shape": [...], "data_offsets": [begin,
end]}`` (offsets into the tensor bytes, which they cover exactly, in order, with no gap or
overlap), plus ``"__metadata__"``, a map of strings.  Layer ``i`` (0-based) of ``L`` becomes

* ``"{2i}.weight"``: our ``W`` transposed, shape (fan_out, fan_in), as ``nn.Linear.weight``;
* ``"{2i}.bias"``: ``b``, shape (fan_out,);

because the matching ``nn.Sequential`` holds ``Linear`` modules at the even indices and each
layer's activation module (``nn.Identity()`` for ``"identity"``) at the odd ones.  The
metadata holds

* ``"activations"``: JSON list of our activation names, one per layer (the one key a file
  written by PyTorch needs to be readable here, e.g.
  ``save_file(sd, path, metadata={"activations": '["tanh", "softmax"]'})``);
* ``"layer_sizes"``: JSON list ``[n_in, h_1, ..., n_out]``;
* ``"pytorch"``: the ``nn.Sequential(...)`` expression of the matching model;
* ``"metadata"``: the user's metadata as JSON;
* ``"mlds_jax.format_version"`` (``"1"``), ``"mlds_jax.library_version"`` and
  ``"mlds_jax.sha256"``: SHA-256 of the canonical JSON of the other metadata entries, then of
  every tensor's name, dtype, shape and bytes in layer order (files from other writers carry
  no digest and are read without one).

The header is padded with spaces to a multiple of 8 bytes, as the reference implementation
does.

Reading is as strict as the ``.npz`` format's (:mod:`mlds_jax.checkpoint`)
----------------------------------------------------------------------------
Only a regular file is opened (a FIFO, directory or device is refused before ``open``, and
re-checked on the open descriptor, which is opened non-blocking).  Before a single tensor
byte is read: the header length is bounded (:data:`MAX_HEADER_BYTES`) and must fit in the
file; the header must be a JSON object (duplicate keys refused) whose tensor set is exactly
the one the activations imply; every dtype, shape and offset pair is checked, shapes must
chain, ``end - begin`` must equal the tensor's size, and the offsets must tile
``[0, file size - 8 - N)`` exactly.  Only then are the tensor bytes read (and the digest, when
present, verified).  Every problem is a ``ValueError`` naming the file.

PyTorch's modules for our activations are in :data:`TORCH_MODULES`.  One differs in
floating point: ``nn.Softplus`` (threshold 20) returns ``z`` itself for ``z > 20`` where we
compute ``log(1 + e^z)``; the two differ by less than ``e^-20 ≈ 2e-9`` there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlds_jax.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS

__all__ = [
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "TORCH_MODULES",
    "SafetensorsFile",
    "read_exactly",
    "read_safetensors",
    "safetensors_bytes",
    "tensor_names",
    "torch_expression",
    "torch_sequential",
]

#: The ``mlds_jax.format_version`` this module writes (and the newest it reads).
FORMAT_VERSION = 1
#: Largest JSON header accepted (the reference implementation's limit, 100 MB).
MAX_HEADER_BYTES = 100_000_000

#: Our activation name -> the PyTorch module that computes it (float64 agreement 1e-12; see
#: the module docstring for softplus above 20).
TORCH_MODULES: dict[str, str] = {
    "identity": "nn.Identity()",
    "sigmoid": "nn.Sigmoid()",
    "tanh": "nn.Tanh()",
    "relu": "nn.ReLU()",
    "leaky_relu": "nn.LeakyReLU(0.01)",
    "softplus": "nn.Softplus()",
    "softmax": "nn.Softmax(dim=-1)",
}

_DTYPES = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
_DTYPE_CODES = {dt.name: code for code, dt in _DTYPES.items()}
_META = "__metadata__"
_SHA_KEY = "mlds_jax.sha256"
_VERSION_KEY = "mlds_jax.format_version"
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


class _FileError(Exception):
    """A problem with the file; the message continues "safetensors file <path> ..."."""


def tensor_names(layer: int) -> tuple[str, str]:
    """The (weight, bias) tensor names of 0-based ``layer``: ``("{2i}.weight", "{2i}.bias")``."""
    return f"{2 * layer}.weight", f"{2 * layer}.bias"


def _check_activations(activations: Any) -> list[str]:
    if not isinstance(activations, (list, tuple)) or not activations:
        raise ValueError(f"activations must be a non-empty list of names, got {activations!r}")
    for i, act in enumerate(activations):
        if act not in ACTIVATIONS:
            raise ValueError(
                f"layer {i} has unknown activation {act!r}; valid: {list(ACTIVATIONS)}"
            )
        if i < len(activations) - 1 and act not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"hidden layer {i} has activation {act!r}, allowed only on the output layer"
            )
    return [str(a) for a in activations]


def torch_expression(activations: Sequence[str], layer_sizes: Sequence[int]) -> str:
    """The ``nn.Sequential(...)`` that matches the file's tensor names, as text."""
    acts = _check_activations(list(activations))
    if len(layer_sizes) != len(acts) + 1:
        raise ValueError(
            f"need {len(acts) + 1} layer sizes for {len(acts)} layers, got {list(layer_sizes)}"
        )
    parts = []
    for i, act in enumerate(acts):
        parts += [f"nn.Linear({layer_sizes[i]}, {layer_sizes[i + 1]})", TORCH_MODULES[act]]
    return f"nn.Sequential({', '.join(parts)})"


def torch_sequential(activations: Sequence[str], layer_sizes: Sequence[int], *, dtype=None):
    """Build the matching ``torch.nn.Sequential`` (needs PyTorch: ``pip install mlds-jax[torch]``).

    ``model.load_state_dict(safetensors.torch.load_file(path))`` then loads a file written by
    ``mj.save(path, params, format="safetensors")``.

    Args:
      activations: one of our activation names per layer (``[p.activation for p in params]``).
      layer_sizes: ``[n_in, h_1, ..., n_out]`` (``mj.layer_sizes(params)``).
      dtype: a ``torch.dtype`` for the parameters (default: torch's default, float32).
    """
    import torch
    from torch import nn

    torch_expression(activations, layer_sizes)  # validates names and sizes
    modules = {
        "identity": nn.Identity,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "softplus": nn.Softplus,
        "softmax": lambda: nn.Softmax(dim=-1),
    }
    layers: list[torch.nn.Module] = []
    for i, act in enumerate(activations):
        layers += [
            nn.Linear(int(layer_sizes[i]), int(layer_sizes[i + 1]), dtype=dtype),
            modules[act](),
        ]
    return nn.Sequential(*layers)


# --- writing ----------------------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _digest(meta: Mapping[str, str], tensors: Sequence[tuple[str, str, list[int], bytes]]) -> str:
    h = hashlib.sha256(_canonical({k: v for k, v in meta.items() if k != _SHA_KEY}))
    for name, code, shape, data in tensors:
        h.update(f"{name}\0{code}\0{shape}\0".encode("ascii"))
        h.update(data)
    return h.hexdigest()


def safetensors_bytes(
    weights: Sequence[tuple[Any, Any]],
    activations: Sequence[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    library_version: str = "unknown",
) -> bytes:
    """The bytes of a safetensors file holding an MLP (the layout of the module docstring).

    ``mj.save(path, params, format="safetensors")`` validates the params, calls this and
    writes the result atomically; call it directly only to serialise in memory.

    Args:
      weights: per layer ``(W, b)`` in our layout, W (fan_in, fan_out), b (fan_out,), NumPy
        arrays (or array-likes) of one dtype among float16/32/64, shapes chained.
      activations: one activation name per layer.
      metadata: JSON-serialisable dict stored under the ``"metadata"`` key.
      library_version: recorded as ``"mlds_jax.library_version"``.

    Raises:
      ValueError: inconsistent shapes, dtypes or activations, or non-JSON metadata.
    """
    acts = _check_activations(list(activations))
    if len(weights) != len(acts):
        raise ValueError(f"{len(weights)} layers of weights but {len(acts)} activations")
    arrays = [(np.asarray(W), np.asarray(b)) for W, b in weights]
    dtypes = {a.dtype.name for pair in arrays for a in pair}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPE_CODES:
        raise ValueError(
            f"weights must share one dtype among {list(_DTYPE_CODES)}, got {sorted(dtypes)}"
        )
    code = _DTYPE_CODES[dtypes.pop()]
    sizes = [int(arrays[0][0].shape[0])] if arrays[0][0].ndim == 2 else [-1]
    for i, (W, b) in enumerate(arrays):
        if W.ndim != 2 or W.shape[0] != sizes[-1] or b.shape != (W.shape[1],):
            raise ValueError(
                f"layer {i}: W {W.shape} and b {b.shape} do not chain onto fan_in {sizes[-1]}"
            )
        sizes.append(int(W.shape[1]))
    try:
        user = json.dumps(
            {} if metadata is None else dict(metadata), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    meta = {
        "activations": json.dumps(acts),
        "layer_sizes": json.dumps(sizes),
        "pytorch": torch_expression(acts, sizes),
        "metadata": user,
        _VERSION_KEY: str(FORMAT_VERSION),
        "mlds_jax.library_version": str(library_version),
    }
    tensors = []
    for i, (W, b) in enumerate(arrays):
        w_name, b_name = tensor_names(i)
        little = _DTYPES[code]
        # torch's Linear.weight is (out, in): our W transposed
        tensors.append(
            (
                w_name,
                code,
                [int(W.shape[1]), int(W.shape[0])],
                np.ascontiguousarray(W.T, dtype=little).tobytes(),
            )
        )
        tensors.append(
            (b_name, code, [int(b.shape[0])], np.ascontiguousarray(b, dtype=little).tobytes())
        )
    meta[_SHA_KEY] = _digest(meta, tensors)
    header: dict[str, Any] = {_META: meta}
    offset = 0
    for name, tcode, shape, data in tensors:
        header[name] = {
            "dtype": tcode,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    head += b" " * (-len(head) % 8)  # pad to 8 bytes, as the reference writer does
    return len(head).to_bytes(8, "little") + head + b"".join(t[3] for t in tensors)


# --- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SafetensorsFile:
    """What :func:`read_safetensors` found in a validated file.

    Attributes:
      weights: per layer ``(W, b)`` as NumPy arrays in our layout, W (fan_in, fan_out).
      activations: one activation name per layer.
      dtype: the stored dtype (float16, float32 or float64).
      metadata: the user's metadata (``{}`` if the file has none).
      header_metadata: the file's ``__metadata__`` map as stored (strings).
    """

    weights: tuple[tuple[np.ndarray, np.ndarray], ...]
    activations: tuple[str, ...]
    dtype: np.dtype
    metadata: dict[str, Any]
    header_metadata: dict[str, str]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _FileError(f"is corrupt: header has the key {key!r} twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _FileError(f"is corrupt: header holds the non-JSON number {name}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _json_field(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _FileError(f"is corrupt: metadata {key!r} is not valid JSON ({exc})") from None


def _open_regular(path: str) -> tuple[int, int]:
    """Open ``path`` read-only if it is a regular file; returns (fd, size)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"safetensors file {path} does not exist", path
        ) from None
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "not a regular file"
        )
        raise _FileError(f"is {kind}; only regular files are read")
    # Non-blocking: if the path was swapped for a FIFO since the stat, open must not hang.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _FileError("is not a regular file; only regular files are read")
    return fd, st.st_size


def read_exactly(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from the file descriptor ``fd``, read in pieces of at most 16 MiB
    (nothing is allocated beyond what the file holds).  ``EOFError(left)`` if the file ends
    ``left`` bytes short (it was truncated, or changed while being read)."""
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            raise EOFError(left)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_exactly(fd: int, n: int, what: str) -> bytes:
    try:
        return read_exactly(fd, n)
    except EOFError as short:
        raise _FileError(
            f"is truncated: it ended {short.args[0]} bytes short inside the {what} (was it "
            f"changed while being read?)"
        ) from None


def _parse_header(head: bytes) -> dict[str, Any]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _FileError(f"is corrupt: header is not UTF-8 ({exc})") from None
    if not text.startswith("{"):
        raise _FileError("is not a safetensors file: its header does not start with '{'")
    try:
        header = json.loads(
            text.rstrip(" "), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _FileError(f"is corrupt: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _FileError("is corrupt: header is not a JSON object")
    return header


def _check_metadata(
    header: dict[str, Any], activations: Sequence[str] | None
) -> tuple[dict[str, str], list[str]]:
    meta = header.get(_META, {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _FileError(f"is corrupt: {_META} is not a map of strings")
    if _VERSION_KEY in meta:
        version = meta[_VERSION_KEY]
        if not version.isdigit():
            raise _FileError(f"is corrupt: {_VERSION_KEY} is {version!r}")
        if int(version) > FORMAT_VERSION:
            raise _FileError(
                f"has format version {version}, newer than this mlds_jax reads "
                f"({FORMAT_VERSION}); upgrade mlds_jax"
            )
        if _SHA_KEY not in meta:
            raise _FileError(f"is corrupt: written by mlds_jax but its {_SHA_KEY!r} is missing")
    stored = _json_field(meta, "activations") if "activations" in meta else None
    if activations is None:
        if stored is None:
            raise _FileError(
                "names no activations: its metadata lacks 'activations' (pass "
                "activations=[...] to read a file written elsewhere)"
            )
        activations = stored
    try:
        acts = _check_activations(activations)
    except ValueError as exc:
        raise _FileError(f"is invalid: {exc}") from None
    if stored is not None and list(stored) != acts:
        raise _FileError(f"records activations {stored} but {acts} were asked for")
    return meta, acts


def _check_entries(
    header: dict[str, Any], acts: list[str], meta: dict[str, str], data_size: int
) -> tuple[np.dtype, list[tuple[str, list[int], int, int]]]:
    """Validate every tensor entry against the layout; returns (dtype, [(name, shape, begin,
    end)] in layer order)."""
    expected = [name for i in range(len(acts)) for name in tensor_names(i)]
    found = {k for k in header if k != _META}
    if found != set(expected):
        missing = [n for n in expected if n not in found]
        extra = sorted(found - set(expected))
        problems = ([f"missing tensors {missing}"] if missing else []) + (
            [f"unexpected tensors {extra[:10]}"] if extra else []
        )
        raise _FileError(
            f"does not hold the {len(acts)}-layer MLP its activations describe: "
            f"{', '.join(problems)}"
        )
    codes = set()
    entries = []
    for name in expected:
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise _FileError(
                f"is corrupt: entry {name!r} is not {{dtype, shape, data_offsets}}: "
                f"{str(entry)[:200]}"
            )
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _DTYPES:
            raise _FileError(f"is invalid: {name} has dtype {code!r}; readable: {list(_DTYPES)}")
        codes.add(code)
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 1 for s in shape):
            raise _FileError(f"is corrupt: {name} has shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _FileError(f"is corrupt: {name} has data_offsets {offsets!r}")
        nbytes = math.prod(shape) * _DTYPES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise _FileError(
                f"is corrupt: {name} {code} {shape} needs {nbytes} bytes but its "
                f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
            )
        entries.append((name, shape, offsets[0], offsets[1]))
    if len(codes) != 1:
        raise _FileError(f"is invalid: tensors of mixed dtypes {sorted(codes)}")
    sizes = [entries[0][1][-1]]
    for i in range(len(acts)):
        (w_name, w_shape, *_), (b_name, b_shape, *_) = entries[2 * i], entries[2 * i + 1]
        if len(w_shape) != 2 or w_shape[1] != sizes[-1] or b_shape != [w_shape[0]]:
            raise _FileError(
                f"is invalid: {w_name} {w_shape} and {b_name} {b_shape} are not an "
                f"nn.Linear (out, in) weight and (out,) bias with in = {sizes[-1]}"
            )
        sizes.append(w_shape[0])
    if "layer_sizes" in meta and _json_field(meta, "layer_sizes") != sizes:
        raise _FileError(
            f"is invalid: metadata layer_sizes {meta['layer_sizes']} but the "
            f"tensors chain as {sizes}"
        )
    position = 0
    for name, _, begin, end in sorted(entries, key=lambda e: (e[2], e[3])):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise _FileError(
                f"is corrupt: {name} data_offsets start at {begin}, {what} (expected {position})"
            )
        position = end
    if position != data_size:
        raise _FileError(
            f"is corrupt: the tensors cover {position} bytes but the file holds "
            f"{data_size} after the header (truncated, or trailing bytes)"
        )
    return _DTYPES[codes.pop()], entries


def read_safetensors(
    path: str | os.PathLike, *, activations: Sequence[str] | None = None
) -> SafetensorsFile:
    """Validate and read an MLP from a safetensors file (layout: the module docstring).

    ``mj.load(path, format="safetensors")`` calls this and builds the params.  Call it
    directly to read a file written by PyTorch (``safetensors.torch.save_file(
    model.state_dict(), path)`` of an ``nn.Sequential`` of ``Linear`` and activation modules)
    that carries no ``"activations"`` metadata: pass them here.

    Args:
      path: the file; must be a regular file.
      activations: one of our activation names per layer; default: the file's
        ``"activations"`` metadata (both given: they must agree).

    Returns:
      A :class:`SafetensorsFile`; ``weights`` are fresh NumPy arrays in our layout.

    Raises:
      FileNotFoundError: no such file.
      ValueError: anything wrong with the file (the message names it and the problem).
    """
    target = os.fsdecode(os.fspath(path))
    try:
        fd, size = _open_regular(target)
        try:
            if size < 8:
                raise _FileError(f"is truncated: {size} bytes, not even the 8-byte header length")
            n = int.from_bytes(_read_exactly(fd, 8, "header length"), "little")
            if n > MAX_HEADER_BYTES:
                raise _FileError(
                    f"is corrupt: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"
                )
            if n < 2 or 8 + n > size:
                raise _FileError(
                    f"is corrupt or truncated: header length {n} does not fit in "
                    f"the file's {size} bytes"
                )
            header = _parse_header(_read_exactly(fd, n, "header"))
            meta, acts = _check_metadata(header, activations)
            dtype, entries = _check_entries(header, acts, meta, size - 8 - n)
            # Everything is consistent: now, and only now, read the tensor bytes.
            data = _read_exactly(fd, size - 8 - n, "tensor data")
            if os.read(fd, 1):
                raise _FileError("grew while being read")
        finally:
            os.close(fd)
        blobs = [
            (name, _DTYPE_CODES[dtype.name], shape, data[begin:end])
            for name, shape, begin, end in entries
        ]
        if _SHA_KEY in meta and _digest(meta, blobs) != meta[_SHA_KEY]:
            raise _FileError("is corrupt: checksum mismatch (its bytes changed after it was saved)")
        user = _json_field(meta, "metadata") if "metadata" in meta else {}
        if not isinstance(user, dict):
            raise _FileError("is corrupt: metadata 'metadata' is not a JSON object")
    except _FileError as exc:
        raise ValueError(f"safetensors file {target} {exc}") from None
    arrays = [np.frombuffer(blob, dtype=dtype).reshape(shape) for _, _, shape, blob in blobs]
    weights = tuple(
        (np.ascontiguousarray(arrays[2 * i].T), arrays[2 * i + 1].copy()) for i in range(len(acts))
    )
    return SafetensorsFile(
        weights=weights,
        activations=tuple(acts),
        dtype=dtype.newbyteorder("="),
        metadata=user,
        header_metadata=dict(meta),
    )
