"""Training checkpoints: everything ``fit`` needs to continue a run exactly where it stopped.

``fit(..., checkpoint_dir=d, checkpoint_every=k)`` writes ``d/train_state.npz`` every k
epochs, when training ends and when it is interrupted (Ctrl-C, SIGTERM raised as an
exception); ``fit(..., resume=True)`` continues from it, bit for bit as if never stopped.

File format ("mlds_jax.train_state", version 1)
-----------------------------------------------
An uncompressed zip archive, no pickle: ``__header__.npy`` (uint8 UTF-8 JSON) and one
``.npy`` entry per array leaf: ``params/{i}``, ``opt_state/{i}``, ``best_params/{i}``, in
``jax.tree_util`` flattening order.  The header holds the format and version, for each group
its tree structure (``str(treedef)``), leaf shapes, dtypes and weak-type flags, the ``state``
(next epoch, the key's words (the shuffles of epoch e are drawn from (key, e), so this is the
RNG position), the history, stop reason, the early-stopping state) and a SHA-256 of the header
and every leaf.

The optimizer state is any optax pytree (named tuples, dicts, arrays, counters): it is
rebuilt on the structure of ``optimizer.init(params)`` of the resuming call, after checking
that structure, every shape and every dtype against the file; a mismatch names the leaf.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from mlds_jax.checkpoint import atomic_write, read_regular_file

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "STATE_FILE", "load_train_state", "save_train_state"]

FORMAT_NAME = "mlds_jax.train_state"
FORMAT_VERSION = 1
#: The file name inside ``checkpoint_dir``.
STATE_FILE = "train_state.npz"
_GROUPS = ("params", "opt_state", "best_params")
_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "bfloat16", "float32", "float64"]
)
_MAX_HEADER_BYTES = 64 * 2**20
_NPY_SLACK = 2**16
_DATE = (1980, 1, 1, 0, 0, 0)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _digest(header: dict, leaves: list[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256(_canonical({k: v for k, v in header.items() if k != "sha256"}))
    for name, arr in leaves:
        h.update(name.encode() + b"\0" + arr.dtype.str.encode() + repr(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _describe(tree: Any, group: str) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays, info = [], []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tracer):
            raise TypeError(f"{group} leaf {i} is a JAX tracer: save outside jit/grad/vmap")
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(f"{group} leaf {i} is a typed PRNG key, which is not saved")
        arr = np.asarray(leaf)
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"{group} leaf {i} has dtype {arr.dtype}, which is not saved")
        weak = bool(getattr(leaf, "weak_type", False))
        info.append({"shape": list(arr.shape), "dtype": arr.dtype.name, "weak": weak})
        arrays.append((f"{group}/{i}", arr))
    return {"treedef": str(treedef), "leaves": info}, arrays


def save_train_state(path: str, params: Any, opt_state: Any, best_params: Any, state: dict):
    """Write the training state atomically (see the module docstring).  ``state`` must be
    JSON-serialisable (numbers, strings, lists, dicts); non-finite floats are kept."""
    header: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    entries: list[tuple[str, np.ndarray]] = []
    for group, tree in zip(_GROUPS, (params, opt_state, best_params), strict=True):
        header[group], arrays = _describe(tree, group)
        entries += arrays
    header["state"] = json.loads(_canonical(state))
    header["sha256"] = _digest(header, entries)
    head = _canonical(header)
    if len(head) > _MAX_HEADER_BYTES:
        raise ValueError(f"training state header is {len(head)} bytes, over {_MAX_HEADER_BYTES}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in [("__header__", np.frombuffer(head, np.uint8)), *entries]:
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=_DATE), member.getvalue())
    atomic_write(path, buf.getvalue())


class _BadError(Exception):
    pass


def _read(zf: zipfile.ZipFile, name: str, nbytes: int) -> np.ndarray:
    info = zf.getinfo(name + ".npy")
    if not nbytes <= info.file_size <= nbytes + _NPY_SLACK:
        raise _BadError(f"entry {name} is {info.file_size} bytes, its header shape needs {nbytes}")
    with zf.open(info) as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            raise _BadError(f"entry {name} is unreadable ({exc})") from None


def _rebuild(zf, header: dict, group: str, template: Any) -> tuple[Any, list]:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    stored = header.get(group)
    if not isinstance(stored, dict) or not isinstance(stored.get("leaves"), list):
        raise _BadError(f"header lacks the {group} description")
    if stored.get("treedef") != str(treedef) or len(stored["leaves"]) != len(leaves):
        raise ValueError(
            f"the saved {group} does not match this run's {group} (structure): saved "
            f"{stored.get('treedef')}, expected {treedef}; resume with the same optimizer "
            f"and architecture"
        )
    out, arrays = [], []
    for i, (info, leaf) in enumerate(zip(stored["leaves"], leaves, strict=True)):
        shape, dtype = tuple(np.shape(leaf)), np.dtype(leaf.dtype).name
        if info.get("shape") != list(shape) or info.get("dtype") != dtype:
            raise ValueError(
                f"the saved {group} does not match this run's: leaf {i} is "
                f"{info.get('dtype')} {info.get('shape')}, expected {dtype} {list(shape)}"
            )
        arr = _read(zf, f"{group}/{i}", int(np.prod(shape)) * np.dtype(dtype).itemsize)
        if arr.dtype.name != dtype or arr.shape != shape:
            raise _BadError(f"entry {group}/{i} is {arr.dtype} {arr.shape}, header says otherwise")
        arrays.append((f"{group}/{i}", arr))
        if info.get("weak") and arr.ndim == 0:  # a Python-scalar-like leaf stays weakly typed
            value = jnp.asarray(arr.item())
            out.append(value if value.dtype == arr.dtype else jnp.asarray(arr))
        else:
            out.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, out), arrays


def load_train_state(path: str, params: Any, opt_state: Any) -> tuple[dict, Any, Any, Any]:
    """Read and validate a training state; ``params``/``opt_state`` are this run's templates
    (``optimizer.init(params)``).  Returns (state, params, opt_state, best_params).

    Raises:
      FileNotFoundError: no file.  ValueError: a corrupt file (naming it) or a state that does
      not match the templates (structure, shapes or dtypes; naming the group and leaf).
    """
    raw = read_regular_file(path, "training state")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            if len(names) != len(set(names)):
                raise _BadError("it has duplicate entries")
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise _BadError(f"entry {info.filename} is compressed")
            head = zf.getinfo("__header__.npy")
            if head.file_size > _MAX_HEADER_BYTES + _NPY_SLACK:
                raise _BadError(f"its header is {head.file_size} bytes")
            with zf.open(head) as f:
                header = json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes())
            if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
                raise _BadError("it is not an mlds_jax training state")
            if header.get("format_version") != FORMAT_VERSION:
                raise _BadError(f"it has unsupported version {header.get('format_version')!r}")
            if not isinstance(header.get("state"), dict):
                raise _BadError("its header lacks the state")
            expected = {"__header__.npy"}
            for group in _GROUPS:
                n = len((header.get(group) or {}).get("leaves") or [])
                expected |= {f"{group}/{i}.npy" for i in range(n)}
            if set(names) != expected:
                raise _BadError(f"its entries are not the expected set ({len(names)} entries)")
            p, p_arrays = _rebuild(zf, header, "params", params)
            s, s_arrays = _rebuild(zf, header, "opt_state", opt_state)
            b, b_arrays = _rebuild(zf, header, "best_params", params)
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise ValueError(f"training state {path} is corrupt: bad header JSON") from None
        raise ValueError(f"training state {path}: {exc}") from None
    except (_BadError, KeyError, zipfile.BadZipFile, EOFError, RecursionError) as exc:
        raise ValueError(f"training state {path} is corrupt: {exc}") from None
    if _digest(header, p_arrays + s_arrays + b_arrays) != header.get("sha256"):
        raise ValueError(f"training state {path} is corrupt: checksum mismatch")
    return header["state"], p, s, b


def state_path(checkpoint_dir: str | os.PathLike) -> str:
    """``checkpoint_dir/train_state.npz``."""
    return os.path.join(os.fsdecode(os.fspath(checkpoint_dir)), STATE_FILE)
