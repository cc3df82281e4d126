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

Reading is as strict as the ``.npz`` format's (:mod:`mlds_jax.io.checkpoint`)
------------------------------------------------------------------------------
Only a regular file is opened (:func:`mlds_jax.io.files.open_regular`).  Before a single
tensor byte is read: the header length is bounded
(:data:`~mlds_jax.io.files.MAX_HEADER_BYTES`) and must fit in the file; the header must be a
JSON object (duplicate keys refused) whose tensor set is exactly the one the activations
imply; every dtype, shape and offset pair is checked, the network schema
(:func:`mlds_jax.validation.check_schema`) holds, ``end - begin`` equals the tensor's size,
and the offsets tile ``[0, file size - 8 - N)`` exactly.  Only then are the tensors read,
each straight into the array returned (a weight in blocks of at most 16 MiB, transposed on
the way), so peak memory is the weights plus one block; the digest, when present, is checked
before anything is returned.  Every problem is a ``ValueError`` naming the file.

PyTorch's modules for our activations are in :data:`TORCH_MODULES`.  One differs in
floating point: ``nn.Softplus`` (threshold 20) returns ``z`` itself for ``z > 20`` where we
compute ``log(1 + e^z)``; the two differ by less than ``e^-20 ≈ 2e-9`` there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlds_jax import validation
from mlds_jax.io import files
from mlds_jax.io.container import canonical_json
from mlds_jax.io.files import BadFileError

__all__ = [
    "FORMAT_VERSION",
    "TORCH_MODULES",
    "SafetensorsFile",
    "read_safetensors",
    "safetensors_bytes",
    "safetensors_chunks",
    "tensor_names",
    "torch_expression",
    "torch_sequential",
]

#: The ``mlds_jax.format_version`` this module writes (and the newest it reads).
FORMAT_VERSION = 1

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
_WHAT = "safetensors file"


def tensor_names(layer: int) -> tuple[str, str]:
    """The (weight, bias) tensor names of 0-based ``layer``: ``("{2i}.weight", "{2i}.bias")``."""
    return f"{2 * layer}.weight", f"{2 * layer}.bias"


def _tensor_name(i: int, leaf: str | None) -> str:
    """How the schema check names our W/b of layer ``i``: by the file's tensor names."""
    return f"layer {i}" if leaf is None else tensor_names(i)[leaf == "b"]


def _check_activations(activations: Any) -> list[str]:
    if not isinstance(activations, (list, tuple)) or not activations:
        raise ValueError(f"activations must be a non-empty list of names, got {activations!r}")
    n = len(activations)
    for i, act in enumerate(activations):
        validation.check_activation(act, hidden=i < n - 1, subject=f"layer {i}")
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
    """Build the matching ``torch.nn.Sequential`` (needs PyTorch: ``pip install torch``, or
    ``pip install -e '.[torch]'`` in the clone).

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


def _rows_per_block(row_bytes: int) -> int:
    return max(1, files.CHUNK_BYTES // max(row_bytes, 1))


def _transposed_blocks(W: np.ndarray) -> Iterator[memoryview]:
    """The bytes of ``W.T`` (row-major), as blocks of at most 16 MiB: no full copy."""
    step = _rows_per_block(W.shape[0] * W.dtype.itemsize)
    for r in range(0, W.shape[1], step):
        yield files.byte_view(np.ascontiguousarray(W[:, r : r + step].T))


def _tensor_blocks(arr: np.ndarray, transposed: bool) -> Iterator[memoryview]:
    if transposed:
        return _transposed_blocks(arr)
    return iter([files.byte_view(arr)])


# --- writing ----------------------------------------------------------------------------------
def _layout(
    weights: Sequence[tuple[Any, Any]],
    activations: Sequence[str],
    metadata: Mapping[str, Any] | None,
    library_version: str,
) -> tuple[bytes, list[tuple[np.ndarray, bool]]]:
    """(the header with its length in front, [(array, stored transposed?)] in file order)."""
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
    little = _DTYPES[code]
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
    tensors: list[tuple[np.ndarray, bool]] = []
    header: dict[str, Any] = {}
    h = hashlib.sha256(canonical_json(meta))
    offset = 0
    for i, (W, b) in enumerate(arrays):
        for name, arr, transposed in zip(tensor_names(i), (W, b), (True, False), strict=True):
            arr = np.ascontiguousarray(arr, dtype=little)
            shape = [int(s) for s in (arr.shape[::-1] if transposed else arr.shape)]
            h.update(f"{name}\0{code}\0{shape}\0".encode("ascii"))
            for block in _tensor_blocks(arr, transposed):  # torch's Linear.weight is W.T
                h.update(block)
            header[name] = {
                "dtype": code,
                "shape": shape,
                "data_offsets": [offset, offset + arr.nbytes],
            }
            offset += arr.nbytes
            tensors.append((arr, transposed))
    meta[_SHA_KEY] = h.hexdigest()
    head = json.dumps({_META: meta, **header}, separators=(",", ":"), ensure_ascii=True)
    raw = head.encode("ascii")
    raw += b" " * (-len(raw) % 8)  # pad to 8 bytes, as the reference writer does
    return len(raw).to_bytes(8, "little") + raw, tensors


def safetensors_chunks(
    weights: Sequence[tuple[Any, Any]],
    activations: Sequence[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    library_version: str = "unknown",
) -> Iterator:
    """The file of :func:`safetensors_bytes` as buffers in order (the header first), for a
    streamed write; the arguments are checked before the first buffer is produced."""
    head, tensors = _layout(weights, activations, metadata, library_version)

    def chunks():
        yield head
        for arr, transposed in tensors:
            yield from _tensor_blocks(arr, transposed)

    return chunks()


def safetensors_bytes(
    weights: Sequence[tuple[Any, Any]],
    activations: Sequence[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    library_version: str = "unknown",
) -> bytes:
    """The bytes of a safetensors file holding an MLP (the layout of the module docstring).

    ``mj.save(path, params, format="safetensors")`` validates the params and writes these
    bytes atomically, streamed (:func:`safetensors_chunks`); call this only to serialise in
    memory.

    Args:
      weights: per layer ``(W, b)`` in our layout, W (fan_in, fan_out), b (fan_out,), NumPy
        arrays (or array-likes) of one dtype among float16/32/64, shapes chained.
      activations: one activation name per layer.
      metadata: JSON-serialisable dict stored under the ``"metadata"`` key.
      library_version: recorded as ``"mlds_jax.library_version"``.

    Raises:
      ValueError: inconsistent shapes, dtypes or activations, or non-JSON metadata.
    """
    return b"".join(
        bytes(c)
        for c in safetensors_chunks(
            weights, activations, metadata=metadata, library_version=library_version
        )
    )


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
            raise BadFileError(f"is corrupt: header has the key {key!r} twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise BadFileError(f"is corrupt: header holds the non-JSON number {name}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _json_field(meta: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadFileError(f"is corrupt: metadata {key!r} is not valid JSON ({exc})") from None


def _parse_header(head: bytes) -> dict[str, Any]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFileError(f"is corrupt: header is not UTF-8 ({exc})") from None
    if not text.startswith("{"):
        raise BadFileError("is not a safetensors file: its header does not start with '{'")
    try:
        header = json.loads(
            text.rstrip(" "), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BadFileError(f"is corrupt: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadFileError("is corrupt: header is not a JSON object")
    return header


def _check_metadata(
    header: dict[str, Any], activations: Sequence[str] | None
) -> tuple[dict[str, str], list[str]]:
    meta = header.get(_META, {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadFileError(f"is corrupt: {_META} is not a map of strings")
    if _VERSION_KEY in meta:
        version = meta[_VERSION_KEY]
        if not version.isdigit():
            raise BadFileError(f"is corrupt: {_VERSION_KEY} is {version!r}")
        if int(version) > FORMAT_VERSION:
            raise BadFileError(
                f"has format version {version}, newer than this mlds_jax reads "
                f"({FORMAT_VERSION}); upgrade mlds_jax"
            )
        if _SHA_KEY not in meta:
            raise BadFileError(f"is corrupt: written by mlds_jax but its {_SHA_KEY!r} is missing")
    stored = _json_field(meta, "activations") if "activations" in meta else None
    if activations is None:
        if stored is None:
            raise BadFileError(
                "names no activations: its metadata lacks 'activations' (pass "
                "activations=[...] to read a file written elsewhere)"
            )
        activations = stored
    try:
        acts = _check_activations(activations)
    except ValueError as exc:
        raise BadFileError(f"is invalid: {exc}") from None
    if stored is not None and list(stored) != acts:
        raise BadFileError(f"records activations {stored} but {acts} were asked for")
    return meta, acts


@dataclass
class _Tensor:
    name: str
    shape: list[int]
    begin: int
    end: int


def _check_entries(
    header: dict[str, Any], acts: list[str], meta: dict[str, str], data_size: int
) -> tuple[np.dtype, list[_Tensor]]:
    """Validate every tensor entry against the layout and the network schema; returns
    (dtype, tensors in layer order W0, b0, W1, ...)."""
    expected = [name for i in range(len(acts)) for name in tensor_names(i)]
    found = {k for k in header if k != _META}
    if found != set(expected):
        missing = [n for n in expected if n not in found]
        extra = sorted(found - set(expected))
        problems = ([f"missing tensors {missing}"] if missing else []) + (
            [f"unexpected tensors {extra[:10]}"] if extra else []
        )
        raise BadFileError(
            f"does not hold the {len(acts)}-layer MLP its activations describe: "
            f"{', '.join(problems)}"
        )
    tensors, dtypes = [], []
    for name in expected:
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
            raise BadFileError(
                f"is corrupt: entry {name!r} is not {{dtype, shape, data_offsets}}: "
                f"{str(entry)[:200]}"
            )
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in _DTYPES:
            raise BadFileError(f"is invalid: {name} has dtype {code!r}; readable: {list(_DTYPES)}")
        dtypes.append(_DTYPES[code])
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 1 for s in shape):
            raise BadFileError(f"is corrupt: {name} has shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise BadFileError(f"is corrupt: {name} has data_offsets {offsets!r}")
        nbytes = math.prod(shape) * _DTYPES[code].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise BadFileError(
                f"is corrupt: {name} {code} {shape} needs {nbytes} bytes but its "
                f"data_offsets {offsets} span {offsets[1] - offsets[0]}"
            )
        tensors.append(_Tensor(name, shape, offsets[0], offsets[1]))
    try:  # in our layout: a weight (out, in) is W (in, out)
        sizes = validation.check_schema(
            acts,
            [t.shape[::-1] for t in tensors[0::2]],
            [t.shape for t in tensors[1::2]],
            dtypes,
            names=_tensor_name,
        )
    except ValueError as exc:
        raise BadFileError(f"is invalid: the tensors are not an nn.Linear chain: {exc}") from None
    except TypeError as exc:
        raise BadFileError(f"is invalid: {exc}") from None
    if "layer_sizes" in meta and _json_field(meta, "layer_sizes") != sizes:
        raise BadFileError(
            f"is invalid: metadata layer_sizes {meta['layer_sizes']} but the "
            f"tensors chain as {sizes}"
        )
    position = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != position:
            what = "overlaps the previous tensor" if t.begin < position else "leaves a gap"
            raise BadFileError(
                f"is corrupt: {t.name} data_offsets start at {t.begin}, {what} (expected "
                f"{position})"
            )
        position = t.end
    if position != data_size:
        raise BadFileError(
            f"is corrupt: the tensors cover {position} bytes but the file holds "
            f"{data_size} after the header (truncated, or trailing bytes)"
        )
    return dtypes[0], tensors


def _read_tensors(fd: int, base: int, dtype: np.dtype, tensors: list[_Tensor], hasher):
    """Each tensor read into its array in our layout (a weight transposed block by block);
    ``hasher`` (if any) sees the file's bytes, which must then be in layer order."""
    out = []
    for t in tensors:
        transposed = t.name.endswith(".weight")
        arr = files.aligned_empty(t.shape[::-1] if transposed else t.shape, dtype)
        if hasher is not None:
            hasher.update(f"{t.name}\0{_DTYPE_CODES[dtype.name]}\0{t.shape}\0".encode("ascii"))
        if not transposed:
            files.read_into(fd, base + t.begin, files.byte_view(arr), t.name, hasher)
        else:
            rows, cols = t.shape  # the file's (out, in): rows of W.T
            step = _rows_per_block(cols * dtype.itemsize)
            block = np.empty((min(step, rows), cols), dtype)
            for r in range(0, rows, step):
                part = block[: min(step, rows - r)]
                where = base + t.begin + r * cols * dtype.itemsize
                files.read_into(fd, where, files.byte_view(part), t.name, hasher)
                arr[:, r : r + len(part)] = part.T
        out.append(arr)
    return out


def _layer_order_digest(meta: dict, dtype: np.dtype, tensors: list[_Tensor], arrays) -> str:
    """The digest of arrays already read, for a file whose tensors are not in layer order."""
    h = hashlib.sha256(canonical_json({k: v for k, v in meta.items() if k != _SHA_KEY}))
    for t, arr in zip(tensors, arrays, strict=True):
        h.update(f"{t.name}\0{_DTYPE_CODES[dtype.name]}\0{t.shape}\0".encode("ascii"))
        for block in _tensor_blocks(arr, t.name.endswith(".weight")):
            h.update(block)
    return h.hexdigest()


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
    fd, size = files.open_regular(target, _WHAT)
    try:
        if size < 8:
            raise BadFileError(f"is truncated: {size} bytes, not even the 8-byte header length")
        n = int.from_bytes(files.read_at(fd, 0, 8, "header length"), "little")
        if n > files.MAX_HEADER_BYTES:
            raise BadFileError(
                f"is corrupt: header length {n} exceeds the {files.MAX_HEADER_BYTES}-byte limit"
            )
        if n < 2 or 8 + n > size:
            raise BadFileError(
                f"is corrupt or truncated: header length {n} does not fit in the file's "
                f"{size} bytes"
            )
        header = _parse_header(files.read_at(fd, 8, n, "header"))
        meta, acts = _check_metadata(header, activations)
        dtype, tensors = _check_entries(header, acts, meta, size - 8 - n)
        # Everything is consistent: now, and only now, read the tensor bytes.
        in_order = all(a.end == b.begin for a, b in zip(tensors, tensors[1:], strict=False)) and (
            tensors[0].begin == 0
        )
        hasher = None
        if _SHA_KEY in meta and in_order:
            hasher = hashlib.sha256(
                canonical_json({k: v for k, v in meta.items() if k != _SHA_KEY})
            )
        arrays = _read_tensors(fd, 8 + n, dtype, tensors, hasher)
        os.lseek(fd, size, os.SEEK_SET)
        if os.read(fd, 1):
            raise BadFileError("grew while being read")
        if _SHA_KEY in meta:
            digest = (
                hasher.hexdigest()
                if hasher is not None
                else _layer_order_digest(meta, dtype, tensors, arrays)
            )
            if digest != meta[_SHA_KEY]:
                raise BadFileError(
                    "is corrupt: checksum mismatch (its bytes changed after it was saved)"
                )
        user = _json_field(meta, "metadata") if "metadata" in meta else {}
        if not isinstance(user, dict):
            raise BadFileError("is corrupt: metadata 'metadata' is not a JSON object")
    except BadFileError as exc:
        raise ValueError(f"{_WHAT} {target} {exc}") from None
    finally:
        os.close(fd)
    return SafetensorsFile(
        weights=tuple((arrays[2 * i], arrays[2 * i + 1]) for i in range(len(acts))),
        activations=tuple(acts),
        dtype=dtype.newbyteorder("="),
        metadata=user,
        header_metadata=dict(meta),
    )
