"""Tests for mlds_jax.io.checkpoint: exact round trips, and every bad file is a clean ValueError.

Written to pass with or without the suite's strict JAX flags: params are built with
explicit dtypes, float64 ones inside ``jax.enable_x64(True)``.  The exception is the last
two sections (params dtypes and bad params, Ctrl-C halfway through the bytes, a checkpoint
from a future format version), which rely on conftest's x64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    BF16,
    F16,
    F32,
    F64,
    base_problem,
    bit_identical,
    cast_params,
    one_error_line,
    patching,
    run_cli,
    set_leaf,
)

import mlds_jax as mj
from mlds_jax.io import checkpoint, container, files
from mlds_jax.io.checkpoint import load, save

SIZES = [5, 7, 4, 3]
SIGNATURE = container.signature(checkpoint.FORMAT_NAME)


def _leaves(params) -> list[tuple[str, np.ndarray]]:
    """The checkpoint's entries of ``params``: ``layer{i}/W``, ``layer{i}/b``, ..."""
    return [(checkpoint.leaf_key(i, name), np.asarray(getattr(p, name)))
            for i, p in enumerate(params) for name in ("W", "b")]


def _archive(entries) -> bytes:
    """A signed container of raw entries (the header entry included), as a forger writes it."""
    return b"".join(container.archive_chunks(checkpoint.FORMAT_NAME, entries))


def _params(dtype=jnp.float32, output="softmax", seed=0):
    return mj.init_mlp(jax.random.key(seed), SIZES, hidden="tanh", output=output, dtype=dtype)


def _numpy_params(dtype=np.float32, seed=0):
    """Dense layers holding numpy arrays: float64 without needing x64."""
    rng = np.random.default_rng(seed)
    return tuple(
        mj.Dense(W=rng.normal(size=(m, n)).astype(dtype), b=rng.normal(size=(n,)).astype(dtype),
                 activation=act)
        for m, n, act in zip(SIZES[:-1], SIZES[1:], ["relu", "sigmoid", "identity"], strict=True)
    )


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert [layer.activation for layer in a] == [layer.activation for layer in b]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bitwise, NaN payloads included


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def saved(tmp_path):
    """A good float32 checkpoint: (path, params, bytes)."""
    params = _params()
    path = tmp_path / "model.npz"
    save(path, params, metadata={"dataset": "iris"})
    return path, params, path.read_bytes()


# --- round trips ----------------------------------------------------------------------------
def test_round_trip_float32(tmp_path):
    params = _params(jnp.float32)
    out = save(tmp_path / "m.npz", params)
    assert out == tmp_path / "m.npz"
    loaded = load(tmp_path / "m.npz")
    assert isinstance(loaded, tuple) and all(isinstance(p, mj.Dense) for p in loaded)
    assert all(isinstance(p.W, jax.Array) for p in loaded)
    _assert_same(params, loaded)
    X = jnp.ones((2, SIZES[0]), jnp.float32)
    np.testing.assert_array_equal(mj.forward(params, X), mj.forward(loaded, X))
    assert mj.layer_sizes(loaded) == SIZES


def test_round_trip_float64(tmp_path):
    with jax.enable_x64(True):
        params = _params(jnp.float64, output="sigmoid")
        save(str(tmp_path / "m64.npz"), params)
        loaded = load(str(tmp_path / "m64.npz"))
        assert loaded[0].W.dtype == jnp.float64
        _assert_same(params, loaded)


def test_round_trip_float16_and_numpy_leaves(tmp_path):
    params = tuple(mj.Dense(p.W.astype(np.float16), p.b.astype(np.float16), p.activation)
                   for p in _numpy_params())
    save(tmp_path / "h.npz", params)
    _assert_same(params, load(tmp_path / "h.npz"))


def test_float64_checkpoint_without_x64(tmp_path):
    path = tmp_path / "m64.npz"
    params = _numpy_params(np.float64)
    save(path, params)  # numpy float64 leaves: no x64 needed to save
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="float64 .*x64 mode"):
            load(path)
        loaded = load(path, dtype=np.float32)
    assert loaded[0].W.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(loaded[1].b), params[1].b.astype(np.float32))
    with jax.enable_x64(True):
        _assert_same(params, load(path))


def test_metadata_round_trip(tmp_path):
    meta = {
        "dataset": "digits",
        "loss": "cross_entropy",
        "history": {"loss": [2.3, 0.5, 0.25], "epochs": 3},
        "shape": (1, 2),
        "lr": np.float32(0.5),
        "steps": np.int64(7),
        "weights": np.arange(3),
        "none": None,
        "unicode": "σ(z) ✓",
    }
    save(tmp_path / "m.npz", _params(), metadata=meta)
    params, got = load(tmp_path / "m.npz", return_metadata=True)
    assert got == {
        "dataset": "digits",
        "loss": "cross_entropy",
        "history": {"loss": [2.3, 0.5, 0.25], "epochs": 3},
        "shape": [1, 2],
        "lr": 0.5,
        "steps": 7,
        "weights": [0, 1, 2],
        "none": None,
        "unicode": "σ(z) ✓",
    }
    _assert_same(_params(), params)
    save(tmp_path / "n.npz", _params())
    assert load(tmp_path / "n.npz", return_metadata=True)[1] == {}


@pytest.mark.parametrize(
    ("metadata", "match"),
    [({"f": object()}, "JSON"), ({1: "a"}, "keys must be strings"),
     ({"a": [{2: 0}]}, "keys must be strings"), ([1, 2], "dict")],
)
def test_bad_metadata(tmp_path, metadata, match):
    with pytest.raises(TypeError, match=match):
        save(tmp_path / "m.npz", _params(), metadata=metadata)
    assert _files(tmp_path) == []


def test_file_is_a_plain_deterministic_npz(tmp_path):
    params = _params()
    save(tmp_path / "a.npz", params, metadata={"k": 1})
    save(tmp_path / "b.npz", params, metadata={"k": 1})
    raw = (tmp_path / "a.npz").read_bytes()
    assert raw == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__header__", "layer0/W", "layer0/b", "layer1/W",
                                     "layer1/b", "layer2/W", "layer2/b"]
        header = json.loads(npz["__header__"].tobytes())
        np.testing.assert_array_equal(npz["layer1/W"], np.asarray(params[1].W))
    assert header["format"] == "mlds_jax.checkpoint" and header["format_version"] == 1
    assert header["layer_sizes"] == SIZES and header["dtype"] == "float32"
    assert header["activations"] == ["tanh", "tanh", "softmax"]
    assert header["leaves"][0] == {"key": "layer0/W", "shape": [5, 7]}
    assert header["metadata"] == {"k": 1} and len(header["sha256"]) == 64
    assert header["library_version"] == mj.__version__
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_saves_exactly_at_the_given_path(tmp_path):
    save(tmp_path / "model.ckpt", _params())
    save(str(tmp_path / "noext"), _params())
    assert _files(tmp_path) == ["model.ckpt", "noext"]
    _assert_same(_params(), load(tmp_path / "noext"))


def test_overwrite_replaces_the_checkpoint(saved, tmp_path):
    path, _, _ = saved
    other = _params(seed=1)
    save(path, other)
    _assert_same(other, load(path))
    assert _files(tmp_path) == ["model.npz"]


# --- corrupt and foreign files ----------------------------------------------------------------
def _expect_invalid(path, match=None):
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ValueError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)
    if before is not None:
        assert path.read_bytes() == before  # load never writes
    return str(info.value)


@pytest.mark.parametrize("tenths", range(10))
def test_truncated_file(saved, tmp_path, tenths):
    _, _, raw = saved
    path = tmp_path / "cut.npz"
    path.write_bytes(raw[: len(raw) * tenths // 10])
    _expect_invalid(path, "empty" if tenths == 0 else "corrupt|not an mlds_jax")


def test_random_bit_flips_are_detected(saved, tmp_path):
    _, _, raw = saved
    rng = np.random.default_rng(1234)
    path = tmp_path / "flipped.npz"
    for _ in range(20):
        data = bytearray(raw)
        pos = int(rng.integers(len(data)))
        data[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        _expect_invalid(path, "corrupt|not an mlds_jax")


def _resign(data: bytes) -> bytes:
    """Recompute the trailing archive digest, as a forger would."""
    body = data[:-64]
    return body + hashlib.sha256(body).hexdigest().encode()


def test_bit_flips_behind_a_valid_archive_checksum(saved, tmp_path):
    """Past the file digest, the zip reader, header and content checks still catch damage."""
    _, params, raw = saved
    rng = np.random.default_rng(99)
    path = tmp_path / "forged.npz"
    for _ in range(20):
        data = bytearray(raw)
        pos = int(rng.integers(len(data) - 64 - len(SIGNATURE)))
        data[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(_resign(bytes(data)))
        try:
            loaded = load(path)
        except ValueError as exc:
            assert str(path) in str(exc)
        else:  # only a flip in a field that carries no content (e.g. a zip timestamp)
            _assert_same(params, loaded)


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    rng = np.random.default_rng(0)
    np.savez(path, W=rng.normal(size=(3, 4)), b=rng.normal(size=4))
    _expect_invalid(path, "not an mlds_jax checkpoint: no '__header__'")


def test_text_empty_npy_and_directory(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello, these are not weights\n")
    _expect_invalid(text, "not an mlds_jax checkpoint")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _expect_invalid(empty, "empty")
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.ones(3))
    _expect_invalid(npy, "single .npy array")
    directory = tmp_path / "dir.npz"
    directory.mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        load(directory)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load(tmp_path / "nope.npz")


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_rejected_without_unpickling(tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"layer0/W": _Evil(marker)})
    # sanity: this pickle really does create the marker when unpickled
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe))).close()
    assert probe.exists()
    for name in ("evil.npz", "evil.pkl"):
        path = tmp_path / name
        path.write_bytes(evil)
        _expect_invalid(path, "not an mlds_jax checkpoint")
    assert not marker.exists()


def _object_npz(entries: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **entries)
    return buf.getvalue()


def _sign(zip_bytes: bytes) -> bytes:
    buf = io.BytesIO(zip_bytes)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.comment = SIGNATURE + b"0" * 64
    return _resign(buf.getvalue())


def test_object_arrays_inside_an_npz_are_never_unpickled(saved, tmp_path):
    path0, _, _ = saved
    marker = tmp_path / "PWNED"
    evil = np.empty((1,), dtype=object)
    evil[0] = _Evil(marker)
    with np.load(path0, allow_pickle=False) as npz:
        good = {k: npz[k] for k in npz.files}
    cases = {
        "header.npz": _object_npz({**good, "__header__": evil}),
        "leaf.npz": _object_npz({**good, "layer0/W": evil}),
        "signed_leaf.npz": _sign(_object_npz({**good, "layer0/W": evil})),
        "signed_header.npz": _sign(_object_npz({**good, "__header__": evil})),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _expect_invalid(path)
    assert not marker.exists()


# --- headers that lie (with every checksum recomputed, as a forger would) -------------------
def _forge(path, params, edit_header=None, edit_arrays=None):
    """Write a checkpoint whose header/arrays were edited and whose checksums are valid."""
    leaves = _leaves(params)
    arrays = dict(leaves)
    header = {
        "format": checkpoint.FORMAT_NAME, "format_version": 1, "library_version": "0",
        "n_layers": len(params), "layer_sizes": mj.layer_sizes(params),
        "activations": [p.activation for p in params], "dtype": "float32",
        "byteorder": "little",
        "leaves": [{"key": k, "shape": list(a.shape)} for k, a in leaves], "metadata": {},
    }
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    items = list(arrays.items())
    header["sha256"] = container.content_digest(header, items)
    head = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path.write_bytes(_archive([("__header__", head), *items]))
    return path


def test_forge_helper_makes_loadable_files(tmp_path):
    params = _params()
    _assert_same(params, load(_forge(tmp_path / "ok.npz", params)))


def _set_shape(index, shape):
    def edit(h):
        h["leaves"][index]["shape"] = shape
    return edit


@pytest.mark.parametrize(
    ("edit_header", "edit_arrays", "match"),
    [
        (_set_shape(0, [5, 8]), None, "shape"),                       # header vs. sizes
        (lambda h: h.update(layer_sizes=[5, 8, 4, 3]), None, "shape"),  # sizes vs. leaves
        (None, lambda a: a.update({"layer0/W": np.zeros((5, 6), np.float32)}), "shape"),
        (lambda h: h.update(activations=["tanh", "swish", "softmax"]), None,
         "unknown hidden activation 'swish' for layer 1"),
        (lambda h: h.update(activations=["softmax", "tanh", "softmax"]), None, "hidden layer"),
        (lambda h: h.update(format_version=2), None, "newer"),
        (lambda h: h.update(format="something.else"), None, "not an mlds_jax checkpoint"),
        (lambda h: h.update(dtype="float64"), None, "dtype|bytes"),
        (lambda h: h.update(dtype="int32"), None, "dtype"),
        (lambda h: h.pop("activations"), None, "activations"),
        (lambda h: h.update(n_layers=True), None, "n_layers"),
        (None, lambda a: a.pop("layer2/b"), "missing entries"),
        (None, lambda a: a.update(extra=np.zeros(2, np.float32)), "unexpected entries"),
        (None, lambda a: a.update({"layer1/b": np.zeros(4, np.float64)}), "dtype|bytes"),
    ],
)
def test_header_that_disagrees_with_the_arrays(tmp_path, edit_header, edit_arrays, match):
    path = _forge(tmp_path / "lying.npz", _params(), edit_header, edit_arrays)
    _expect_invalid(path, match)


def test_header_checksum_is_checked(tmp_path, saved):
    """Same archive checksum trick, but the content digest is left stale."""
    path0, _, _ = saved
    with np.load(path0, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    W = entries["layer0/W"].copy()
    W[0, 0] += 1
    items = [(k, W if k == "layer0/W" else v) for k, v in entries.items()]
    path = tmp_path / "stale.npz"
    path.write_bytes(_archive(items))
    _expect_invalid(path, "checksum mismatch")


# --- save: validation and atomicity ------------------------------------------------------------
def test_refuses_nonfinite_params(tmp_path):
    params = _numpy_params()
    W = params[1].W.copy()
    W[2, 1] = np.nan
    bad = (params[0], mj.Dense(W, params[1].b, params[1].activation), params[2])
    with pytest.raises(ValueError, match=r"params\[1\]\.W .*nan at index \(2, 1\)"):
        save(tmp_path / "m.npz", bad)
    inf = (params[0], params[1], mj.Dense(params[2].W, params[2].b * np.inf, "identity"))
    with pytest.raises(ValueError, match=r"params\[2\]\.b"):
        save(tmp_path / "m.npz", inf)
    assert _files(tmp_path) == []
    save(tmp_path / "m.npz", bad, allow_nonfinite=True)
    _assert_same(bad, load(tmp_path / "m.npz"))


def test_save_validates_params(tmp_path):
    params = _numpy_params()
    with pytest.raises(TypeError):
        save(tmp_path / "m.npz", {"W": 1})
    with pytest.raises(TypeError):
        save(tmp_path / "m.npz", ())
    mixed = (params[0], mj.Dense(params[1].W.astype(np.float64), params[1].b.astype(np.float64),
                                 "sigmoid"), params[2])
    with pytest.raises(TypeError, match="one dtype"):
        save(tmp_path / "m.npz", mixed)
    broken = (params[0], mj.Dense(params[1].W[:3], params[1].b, "sigmoid"), params[2])
    with pytest.raises(ValueError, match="fan_in"):
        save(tmp_path / "m.npz", broken)
    with pytest.raises(TypeError, match="tracer"):
        jax.jit(lambda p: save(tmp_path / "m.npz", p))(_params())
    assert _files(tmp_path) == []


def test_missing_directory_and_directory_target(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save(tmp_path / "no" / "such" / "m.npz", _params())
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save(tmp_path, _params())


def test_unwritable_directory(tmp_path, monkeypatch):
    # chmod does not stop root, so simulate the OS refusing to create the temporary file
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match="not writable") as info:
        save(tmp_path / "m.npz", _params())
    assert info.value.filename == str(tmp_path / "m.npz")


@pytest.mark.parametrize("where", ["write_array", "fsync", "replace", "interrupt"])
def test_interrupted_save_keeps_the_old_checkpoint(saved, tmp_path, monkeypatch, where):
    path, params, raw = saved
    error = KeyboardInterrupt if where == "interrupt" else OSError

    def boom(*args, **kwargs):
        raise error("simulated crash")

    if where == "write_array":  # the entries' .npy headers are made as the file is written
        real, calls = np.lib.format.write_array_header_1_0, []

        def write_header(*args, **kwargs):  # fail midway through the entries
            calls.append(1)
            if len(calls) == 3:
                boom()
            return real(*args, **kwargs)

        monkeypatch.setattr(np.lib.format, "write_array_header_1_0", write_header)
    elif where == "replace":
        monkeypatch.setattr(os, "replace", boom)
    else:
        monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(error, match="simulated crash"):
        save(path, _params(seed=5))
    monkeypatch.undo()
    assert path.read_bytes() == raw
    assert _files(tmp_path) == ["model.npz"]  # no temporary file left behind
    _assert_same(params, load(path))


# --- dtypes and bad params (the bad-input contract; float64 relies on conftest's x64) ----------
@pytest.mark.parametrize(("dtype", "outcome"), [
    (F16, "ok"), (F32, "ok"), (F64, "ok"),
    (BF16, r"params\[0\]\.W has dtype bfloat16; checkpoints hold \['float16', 'float32', "
           r"'float64'\]")])
def test_bad_checkpoint_dtypes(tmp_path, dtype, outcome):
    params = base_problem("ce", dtype=dtype)[0]
    path = tmp_path / "m.npz"
    if outcome != "ok":
        with pytest.raises(TypeError, match=outcome):
            mj.save(path, params)
        assert not path.exists()
        return
    mj.save(path, params)
    assert bit_identical(mj.load(path), params)
    # load casts to any floating dtype on request, bfloat16 included; never to an integer
    as_bf16 = mj.load(path, dtype=jnp.bfloat16)
    assert bit_identical(as_bf16, cast_params(params, BF16))
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype, got int32"):
        mj.load(path, dtype=np.int32)


def test_bad_checkpoint_params(tmp_path):
    params = base_problem("ce")[0]
    path = tmp_path / "m.npz"
    with pytest.raises(TypeError, match=r"all parameters must share one dtype"):
        mj.save(path, (params[0], dataclasses.replace(params[1], b=params[1].b.astype(F64))))
    with pytest.raises(ValueError, match=r"refusing to save checkpoint .*params\[0\]\.W contains 1 "
                                         r"non-finite value"):
        mj.save(path, set_leaf(0, "W", (0, 0), jnp.nan)(params, None, None, None)[0])
    with pytest.raises(TypeError, match=r"params must be a non-empty tuple"):
        mj.save(path, "params")
    mj.save(path, list(params))  # a list of layers is saved like the tuple, loaded as a tuple
    assert bit_identical(mj.load(path), params)
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


# --- faults: Ctrl-C halfway through the bytes, a checkpoint from a future format version -------
class _InterruptedFile:
    """A file object whose write puts half the bytes on disk, then raises KeyboardInterrupt
    (Ctrl-C in the middle of the write)."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(bytes(data[: len(data) // 2]))
        self.real.flush()
        raise KeyboardInterrupt

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_fault_keyboard_interrupt_midway_through_the_bytes(tmp_path):
    """test_interrupted_save_keeps_the_old_checkpoint interrupts while the archive is built in
    memory, or at fsync or the rename; here half of the archive is already in the temporary
    file when Ctrl-C arrives."""
    path = tmp_path / "model.npz"
    old = base_problem("ce")[0]
    mj.save(path, old)
    raw = path.read_bytes()
    real_fdopen = os.fdopen
    written = []

    def fdopen(fd, mode):
        f = real_fdopen(fd, mode)
        written.append(f)
        return _InterruptedFile(f)

    with patching() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(os, "fdopen", fdopen)
        mj.save(path, cast_params(old, F64))
    assert len(written) == 1 and written[0].closed
    assert path.read_bytes() == raw  # the previous checkpoint, byte for byte
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # the half-written temp file is gone
    assert bit_identical(mj.load(path), old)


def _future_checkpoint(path, version):
    """A checkpoint whose header says ``format_version = version``, checksums recomputed."""
    params = base_problem("ce")[0]
    leaves = _leaves(params)
    header = {"format": checkpoint.FORMAT_NAME, "format_version": version,
              "library_version": "9.0.0", "n_layers": len(params),
              "layer_sizes": mj.layer_sizes(params),
              "activations": [p.activation for p in params], "dtype": "float32",
              "byteorder": "little", "leaves": [{"key": k, "shape": list(a.shape)}
                                                for k, a in leaves],
              "metadata": {"dataset": "iris"}}
    header["sha256"] = container.content_digest(header, leaves)
    head = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path.write_bytes(_archive([("__header__", head), *leaves]))
    return path


def test_fault_checkpoint_from_a_future_version(tmp_path):
    """load: a clear ValueError; the CLI: exit 2 and that message on one line."""
    assert mj.load(_future_checkpoint(tmp_path / "v1.npz", 1))  # the forger is faithful
    path = _future_checkpoint(tmp_path / "v7.npz", 7)
    regex = (r"checkpoint .*v7\.npz has format version 7, newer than this mlds_jax reads "
             r"\(1\); upgrade mlds_jax")
    with pytest.raises(ValueError, match=regex):
        mj.load(path)
    rc, out, err = run_cli(["evaluate", "--checkpoint", str(path)])
    assert rc == 2 and out == ""
    assert re.search(regex, one_error_line(err))



# --- issue 12: fault classes of load and save ---------------------------------------------------
def _good(tmp_path):
    path = tmp_path / "good.npz"
    save(path, _params(), metadata={"a": 1})
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_load_refuses_a_fifo_without_blocking(tmp_path):
    import signal

    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    link = tmp_path / "link.npz"
    link.symlink_to(fifo)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("load blocked on a FIFO"))
    signal.alarm(5)
    try:
        for path in (fifo, link):
            with pytest.raises(ValueError, match=f"{re.escape(str(path))} is a FIFO"):
                load(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_load_refuses_devices_and_symlinks_to_directories(tmp_path):
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="is a device"):
            load("/dev/null")
    link = tmp_path / "dir.npz"
    link.symlink_to(tmp_path)
    with pytest.raises(ValueError, match="directory"):
        load(link)


def _repack(path, out, *, compress=False, duplicate=False):
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            kind = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=kind)
            if duplicate and info.filename.startswith("layer0/W"):
                with pytest.warns(UserWarning, match="Duplicate"):
                    dst.writestr(info.filename, data, compress_type=kind)
        dst.comment = src.comment
    raw = out.read_bytes()  # re-signed: the member checks, not the checksum, must refuse it
    body = raw[:-64]
    out.write_bytes(body + hashlib.sha256(body).hexdigest().encode("ascii"))


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"compress": True}, "compressed"), ({"duplicate": True}, "duplicate")]
)
def test_load_refuses_compressed_or_duplicate_members(tmp_path, kwargs, needle):
    bad = tmp_path / "bad.npz"
    _repack(_good(tmp_path), bad, **kwargs)
    with pytest.raises(ValueError, match=needle):
        load(bad)


def test_save_refuses_metadata_load_would_refuse_and_keeps_the_good_file(tmp_path, monkeypatch):
    path = _good(tmp_path)
    before = path.read_bytes()
    deep: dict = {}
    node = deep
    for _ in range(checkpoint.MAX_METADATA_DEPTH + 1):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValueError, match="nested"):
        save(path, _params(), metadata=deep)
    monkeypatch.setattr(files, "MAX_HEADER_BYTES", 4096)
    with pytest.raises(ValueError, match="header .* bytes"):
        save(path, _params(), metadata={"big": "x" * 5000})
    with pytest.raises(TypeError, match="JSON"):
        save(path, _params(), metadata={"f": object()})
    assert path.read_bytes() == before
    load(path)


def test_save_under_a_file_says_the_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"{re.escape(str(blocker))} is a file"):
        save(blocker / "sub" / "model.npz", _params())


def test_evaluate_refuses_tracers():
    params = _params()
    X = jnp.ones((2, mj.layer_sizes(params)[0]))
    y = jnp.zeros(2, jnp.int32)
    with pytest.raises(TypeError, match="evaluate .*cannot be traced"):
        jax.jit(lambda p: mj.evaluate(p, X, y)["loss"])(params)
