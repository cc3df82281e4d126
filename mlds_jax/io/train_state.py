"""Training states: everything ``fit`` needs to continue a run exactly where it stopped.

``fit(..., checkpoint_dir=d, checkpoint_every=k)`` writes ``d/train_state.npz`` every k
epochs, when training ends and when it is interrupted (Ctrl-C, SIGTERM raised as an
exception); ``fit(..., resume=True)`` continues from it, bit for bit as if never stopped.

File format ("mlds_jax.train_state", version 2)
-----------------------------------------------
A signed container (:mod:`mlds_jax.io.container`), no pickle: ``__header__`` and one entry
per array leaf: ``params/{i}``, ``opt_state/{i}``, ``best_params/{i}``, in ``jax.tree_util``
flattening order.  The header holds the format and version, for each group its tree
structure (``str(treedef)``), leaf shapes, dtypes and weak-type flags, the ``state`` (next
epoch, the key's words (the shuffles of epoch e are drawn from (key, e), so this is the RNG
position), the history, stop reason, the early-stopping state) and the content digest.
Version 1 (written before the container existed) is the same archive without the whole-file
signature and with its own digest; it is still read.

The optimizer state is any optax pytree (named tuples, dicts, arrays, counters): it is
rebuilt on the structure of ``optimizer.init(params)`` of the resuming call, after checking
that structure, every shape and every dtype against the file; a mismatch names the leaf.
Reading holds the state's arrays and nothing more (:meth:`~mlds_jax.io.container.Container.read`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from mlds_jax.io import container, files
from mlds_jax.io.files import BadFileError

__all__ = [
    "DTYPES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STATE_FILE",
    "describe_network",
    "load_train_state",
    "save_train_state",
    "state_path",
]

FORMAT_NAME = "mlds_jax.train_state"
#: The version written; 1 (unsigned, its own digest) is still read.
FORMAT_VERSION = 2
#: The file name inside ``checkpoint_dir``.
STATE_FILE = "train_state.npz"
#: The leaf dtypes a training state holds.
DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    + ["float16", "bfloat16", "float32", "float64"]
)
_GROUPS = ("params", "opt_state", "best_params")
_WHAT = "training state"


def state_path(checkpoint_dir: str | os.PathLike) -> str:
    """``checkpoint_dir/train_state.npz``."""
    return os.path.join(os.fsdecode(os.fspath(checkpoint_dir)), STATE_FILE)


def _describe(tree: Any, group: str) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays, info = [], []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, Tracer):
            raise TypeError(f"{group} leaf {i} is a JAX tracer: save outside jit/grad/vmap")
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(f"{group} leaf {i} is a typed PRNG key, which is not saved")
        arr = np.asarray(leaf)
        if arr.dtype.name not in DTYPES:
            raise TypeError(f"{group} leaf {i} has dtype {arr.dtype}, which is not saved")
        weak = bool(getattr(leaf, "weak_type", False))
        info.append({"shape": list(arr.shape), "dtype": arr.dtype.name, "weak": weak})
        arrays.append((f"{group}/{i}", arr))
    return {"treedef": str(treedef), "leaves": info}, arrays


def save_train_state(path: str, params: Any, opt_state: Any, best_params: Any, state: dict):
    """Write the training state atomically, streamed from the arrays (see the module
    docstring).  ``state`` must be JSON-serialisable (numbers, strings, lists, dicts);
    non-finite floats are kept."""
    header: dict[str, Any] = {"format_version": FORMAT_VERSION}
    entries: list[tuple[str, np.ndarray]] = []
    for group, tree in zip(_GROUPS, (params, opt_state, best_params), strict=True):
        header[group], arrays = _describe(tree, group)
        entries += arrays
    header["state"] = json.loads(container.canonical_json(state))
    container.write_container(path, FORMAT_NAME, header, entries, what=_WHAT)


def _v1_digest(header: Mapping, entries: list[tuple[str, np.ndarray]]) -> str:
    """Version 1's digest: no separator between a leaf's dtype and shape."""
    h = hashlib.sha256(container.canonical_json({k: v for k, v in header.items() if k != "sha256"}))
    for name, arr in entries:
        h.update(name.encode() + b"\0" + arr.dtype.str.encode() + repr(arr.shape).encode())
        h.update(files.byte_view(arr))
    return h.hexdigest()


def describe_network(treedef: str, shapes: list, dtype: str | None = None) -> str:
    """A network as people name it, from a params tree's structure and leaf shapes: "a
    64-128-10 relu/softmax network" (with " of float32" when ``dtype`` is given)."""
    acts = re.findall(r"Dense\[\('(\w+)',?\)\]", treedef)
    Ws = [tuple(s) for s in shapes if len(s) == 2]
    sizes = "-".join(str(n) for n in ([Ws[0][0], *(s[1] for s in Ws)] if Ws else []))
    hidden = list(dict.fromkeys(acts[:-1]))
    names = "/".join([*(hidden if len(hidden) == 1 else acts[:-1]), *acts[-1:]])
    return f"a {sizes} {names} network" + (f" of {dtype}" if dtype else "")


def _state_names(treedef: str) -> str:
    """The optax state types in an optimizer state's structure: "ScaleByAdamState, EmptyState"."""
    return ", ".join(re.findall(r"namedtuple\[(\w+)\]", treedef)) or treedef


def _mismatch(group: str, stored: dict, leaves: list, treedef) -> ValueError:
    """The error for a saved ``group`` that is not this run's, in the user's terms: layer
    sizes and activations for the parameters, state types for the optimizer."""
    saved_shapes = [i.get("shape", []) for i in stored["leaves"] if isinstance(i, dict)]
    if group in ("params", "best_params"):
        dtypes = {i.get("dtype") for i in stored["leaves"] if isinstance(i, dict)}
        ours_dtype = {np.dtype(leaf.dtype).name for leaf in leaves}
        show = dtypes != ours_dtype
        saved = describe_network(
            str(stored.get("treedef")),
            saved_shapes,
            ", ".join(sorted(map(str, dtypes))) if show else None,
        )
        ours = describe_network(
            str(treedef),
            [np.shape(x) for x in leaves],
            ", ".join(sorted(ours_dtype)) if show else None,
        )
        if saved != ours:
            return ValueError(
                f"the state is for {saved}; this run has {ours}: resume with the same architecture"
            )
    return ValueError(
        f"the saved {group} does not match this run's optimizer (structure): saved "
        f"{_state_names(str(stored.get('treedef')))} ({len(stored['leaves'])} arrays), this "
        f"run's {_state_names(str(treedef))} ({len(leaves)} arrays); resume with the same "
        f"optimizer"
    )


def _specs(header: dict, group: str, template: Any) -> tuple[list, Any, list[bool]]:
    """The entries of ``group`` checked against this run's ``template``: (specs, treedef,
    weak flags); a mismatch is a ValueError naming the group and leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    stored = header.get(group)
    if not isinstance(stored, dict) or not isinstance(stored.get("leaves"), list):
        raise BadFileError(f"is corrupt: its header lacks the {group} description")
    if stored.get("treedef") != str(treedef) or len(stored["leaves"]) != len(leaves):
        raise _mismatch(group, stored, leaves, treedef)
    specs, weak = [], []
    for i, (info, leaf) in enumerate(zip(stored["leaves"], leaves, strict=True)):
        shape, dtype = tuple(np.shape(leaf)), np.dtype(leaf.dtype).name
        if (
            not isinstance(info, dict)
            or info.get("shape") != list(shape)
            or info.get("dtype") != dtype
        ):
            if group != "opt_state" and all(isinstance(i, dict) for i in stored["leaves"]):
                raise _mismatch(group, stored, leaves, treedef)
            got = info if not isinstance(info, dict) else f"{info.get('dtype')} {info.get('shape')}"
            raise ValueError(
                f"the saved {group} does not match this run's: leaf {i} is {got}, expected "
                f"{dtype} {list(shape)}"
            )
        specs.append((f"{group}/{i}", np.dtype(leaf.dtype), shape))
        weak.append(bool(info.get("weak")))
    return specs, treedef, weak


def _rebuild(arrays: list[np.ndarray], treedef, weak: list[bool]) -> Any:
    out = []
    for arr, w in zip(arrays, weak, strict=True):
        if w and arr.ndim == 0:  # a Python-scalar-like leaf stays weakly typed
            value = jnp.asarray(arr.item())
            out.append(value if value.dtype == arr.dtype else jnp.asarray(arr))
        else:
            out.append(jax.device_put(arr))
    return jax.tree_util.tree_unflatten(treedef, out)


def load_train_state(path: str, params: Any, opt_state: Any) -> tuple[dict, Any, Any, Any]:
    """Read and validate a training state; ``params``/``opt_state`` are this run's templates
    (``optimizer.init(params)``).  Returns (state, params, opt_state, best_params).

    Raises:
      FileNotFoundError: no file.
      ValueError: a corrupt file (naming it) or a state that does not match the templates
        (structure, shapes or dtypes; naming the group and leaf).
    """
    try:
        with container.open_container(path, what=_WHAT, format_name=FORMAT_NAME) as c:
            header = c.header
            version = header.get("format_version")
            if version not in (1, FORMAT_VERSION):
                raise BadFileError(f"has unsupported format version {version!r}")
            if version == FORMAT_VERSION and not c.signed:
                raise BadFileError(
                    "is corrupt: the archive checksum is missing (truncated, or re-packed)"
                )
            if not isinstance(header.get("state"), dict):
                raise BadFileError("is corrupt: its header lacks the state")
            groups = [
                _specs(header, group, template)
                for group, template in zip(_GROUPS, (params, opt_state, params), strict=True)
            ]
            arrays = c.read(
                [spec for specs, _, _ in groups for spec in specs],
                digest=_v1_digest if version == 1 else container.content_digest,
            )
    except ValueError as exc:
        message = str(exc)
        if message.startswith(f"{_WHAT} {path}"):
            raise
        raise ValueError(f"{_WHAT} {path}: {message}") from None
    trees = []
    for specs, treedef, weak in groups:
        trees.append(_rebuild(arrays[: len(specs)], treedef, weak))
        arrays = arrays[len(specs) :]
    return header["state"], *trees
