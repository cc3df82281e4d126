"""safetensors files (``mj.save(..., format="safetensors")``, ``mlds_jax.io.safetensors``).

* round trips are exact, through ``mj.save``/``mj.load``, for float16/32/64;
* the files are what the reference implementation (the ``safetensors`` package) reads, with
  PyTorch's names, and what it writes we read;
* end to end: PyTorch's forward on the loaded weights equals ``mj.forward`` in float64 for
  every activation we share with PyTorch, in both directions;
* hostile files (truncated, lying headers, FIFOs, directories, bit flips) are ValueErrors,
  raised before any tensor byte is read.

The PyTorch and ``safetensors`` tests need the ``torch`` extra (``pip install -e
".[torch]"``); they are skipped without it, except under CI (``CI=true``), where a missing
extra is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import struct
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlds_jax as mj
from mlds_jax.io import files, safetensors

SIZES = [5, 7, 4, 3]
#: Our activation -> PyTorch module, written out here independently of safetensors.TORCH_MODULES.
TORCH = {
    "identity": lambda nn: nn.Identity(),
    "sigmoid": lambda nn: nn.Sigmoid(),
    "tanh": lambda nn: nn.Tanh(),
    "relu": lambda nn: nn.ReLU(),
    "leaky_relu": lambda nn: nn.LeakyReLU(negative_slope=0.01),
    "softplus": lambda nn: nn.Softplus(),
    "softmax": lambda nn: nn.Softmax(dim=-1),
}
#: (hidden, output) pairs: every activation we share with PyTorch, as a hidden layer and as
#: the head (softmax only as the head).
PAIRS = [(a, a) for a in mj.activations.HIDDEN_ACTIVATIONS]
PAIRS += [("tanh", "softmax"), ("relu", "softmax")]
#: float64 agreement of PyTorch's forward with ours.  Both evaluate the same formulas in
#: IEEE double; they differ only in the order of the matmul sums (inner length <= 7 here) and
#: in the last ulp of exp/tanh/log1p, so per entry |Δ| <~ 8 · 2.2e-16 · Σ|terms| ~ 1e-14 for
#: the O(1) activations of these small layers: 1e-12 leaves two orders of magnitude of slack
#: and is still 10^4 below any real disagreement (a transposed W, a missing bias, a softplus
#: or leaky slope that differs, all > 1e-3 here).
FORWARD_ATOL = 1e-12


def _need(module: str):
    """Import an optional test dependency: skip without it, but fail under CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _params(hidden="tanh", output="softmax", dtype=jnp.float64, sizes=SIZES, seed=0):
    key = jax.random.key(seed)
    params = mj.init_mlp(key, sizes, hidden=hidden, output=output, dtype=dtype)
    # non-zero biases, so a dropped or misplaced bias shows
    rng = np.random.default_rng(seed)
    return tuple(
        mj.Dense(p.W, jnp.asarray(0.1 * rng.standard_normal(p.b.shape), dtype), p.activation)
        for p in params
    )


def _numpy_params(dtype, sizes=SIZES, acts=("relu", "sigmoid", "identity"), seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        mj.Dense(
            W=rng.normal(size=(m, n)).astype(dtype),
            b=rng.normal(size=(n,)).astype(dtype),
            activation=act,
        )
        for m, n, act in zip(sizes[:-1], sizes[1:], acts, strict=True)
    )


def _assert_same(a, b):
    assert [layer.activation for layer in a] == [layer.activation for layer in b]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bitwise


def _X(n=11, d=SIZES[0], seed=1):
    return np.random.default_rng(seed).standard_normal((n, d))


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    params = _numpy_params(dtype)
    meta = {"dataset": "digits", "history": [1.5, 0.25], "σ": "✓"}
    out = mj.save(tmp_path / "m.safetensors", params, metadata=meta)
    assert out == tmp_path / "m.safetensors"
    loaded, got = mj.load(tmp_path / "m.safetensors", return_metadata=True)
    _assert_same(params, loaded)
    assert got == meta
    assert all(isinstance(p.W, jax.Array) for p in loaded)


def test_format_by_suffix_or_explicit(tmp_path):
    params = _params()
    mj.save(tmp_path / "a.safetensors", params)
    mj.save(tmp_path / "b.st", params, format="safetensors")
    mj.save(tmp_path / "c.npz", params)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.st").read_bytes()
    assert (tmp_path / "c.npz").read_bytes()[:4] == b"PK\x03\x04"
    _assert_same(params, mj.load(tmp_path / "b.st", format="safetensors"))
    _assert_same(params, mj.load(tmp_path / "c.npz"))
    # the wrong reader refuses each file cleanly
    with pytest.raises(ValueError, match="not an mlds_jax checkpoint"):
        mj.load(tmp_path / "b.st")  # npz by default
    with pytest.raises(ValueError, match="c.npz"):
        mj.load(tmp_path / "c.npz", format="safetensors")
    for call in (
        lambda: mj.save(tmp_path / "d", params, format="onnx"),
        lambda: mj.load(tmp_path / "a.safetensors", format="pickle"),
    ):
        with pytest.raises(ValueError, match="unknown checkpoint format"):
            call()


def test_file_layout_is_pytorch_sequential(tmp_path):
    """The bytes, read by hand: header length, JSON header, Wᵀ then b per layer, in order."""
    params = _params(dtype=jnp.float32)
    path = mj.save(tmp_path / "m.safetensors", params, metadata={"k": 1})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and 8 + n < len(raw)
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert list(header) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    data = raw[8 + n :]
    for i, p in enumerate(params):
        W, b = header[f"{2 * i}.weight"], header[f"{2 * i}.bias"]
        assert W["dtype"] == b["dtype"] == "F32"
        assert W["shape"] == [p.W.shape[1], p.W.shape[0]] and b["shape"] == [p.b.shape[0]]
        got_W = np.frombuffer(data[slice(*W["data_offsets"])], "<f4").reshape(W["shape"])
        np.testing.assert_array_equal(got_W, np.asarray(p.W).T)
        np.testing.assert_array_equal(
            np.frombuffer(data[slice(*b["data_offsets"])], "<f4"), np.asarray(p.b)
        )
    assert json.loads(meta["activations"]) == ["tanh", "tanh", "softmax"]
    assert json.loads(meta["layer_sizes"]) == SIZES
    assert json.loads(meta["metadata"]) == {"k": 1}
    assert meta["pytorch"] == (
        "nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), "
        "nn.Tanh(), nn.Linear(4, 3), nn.Softmax(dim=-1))"
    )
    assert meta["mlds_jax.format_version"] == "1" and len(meta["mlds_jax.sha256"]) == 64
    # deterministic bytes
    mj.save(tmp_path / "again.safetensors", params, metadata={"k": 1})
    assert (tmp_path / "again.safetensors").read_bytes() == raw


def test_reference_implementation_reads_and_writes_the_same_files(tmp_path):
    st_numpy = _need("safetensors.numpy")
    params = _numpy_params(np.float64)
    path = mj.save(tmp_path / "m.safetensors", params)
    tensors = st_numpy.load_file(str(path))
    assert sorted(tensors) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    for i, p in enumerate(params):
        np.testing.assert_array_equal(tensors[f"{2 * i}.weight"], p.W.T)
        np.testing.assert_array_equal(tensors[f"{2 * i}.bias"], p.b)
    # ... and a file the reference writer made (no digest: a foreign file) reads back here
    other = tmp_path / "theirs.safetensors"
    st_numpy.save_file(
        tensors, str(other), metadata={"activations": '["relu", "sigmoid", "identity"]'}
    )
    _assert_same(params, mj.load(other))
    st_numpy.save_file(tensors, str(other))  # no activations: we cannot know the layers
    with pytest.raises(ValueError, match="lacks 'activations'"):
        mj.load(other)
    got = safetensors.read_safetensors(other, activations=["relu", "sigmoid", "identity"])
    assert got.activations == ("relu", "sigmoid", "identity") and got.metadata == {}
    for (W, b), p in zip(got.weights, params, strict=True):
        np.testing.assert_array_equal(W, p.W)
        np.testing.assert_array_equal(b, p.b)


# --- PyTorch end to end ----------------------------------------------------------------------
def _torch_model(torch, acts, sizes):
    """The matching nn.Sequential, built here by hand (not by safetensors.torch_sequential)."""
    layers = []
    for i, act in enumerate(acts):
        layers += [
            torch.nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64),
            TORCH[act](torch.nn),
        ]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize(("hidden", "output"), PAIRS, ids=[f"{h}-{o}" for h, o in PAIRS])
def test_pytorch_forward_equals_ours(tmp_path, hidden, output):
    torch = _need("torch")
    st_torch = _need("safetensors.torch")
    params = _params(hidden, output)
    path = mj.save(tmp_path / "m.safetensors", params)
    model = _torch_model(torch, [p.activation for p in params], SIZES)
    model.load_state_dict(st_torch.load_file(str(path)))  # strict: exactly these names
    X = _X()
    # softplus: torch's threshold makes it exactly z for z > 20 (module docstring); stay below
    assert max(float(jnp.max(jnp.abs(Z))) for Z in mj.forward_cache(params, X).Zs) < 20
    with torch.no_grad():
        theirs = model(torch.from_numpy(X)).numpy()
    ours = np.asarray(mj.forward(params, X))
    assert theirs.dtype == ours.dtype == np.float64
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=FORWARD_ATOL)
    # the helper builds the same model
    built = safetensors.torch_sequential([p.activation for p in params], SIZES, dtype=torch.float64)
    assert [type(m) for m in built] == [type(m) for m in model]
    assert [p.shape for p in built.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize(("hidden", "output"), [("leaky_relu", "sigmoid"), ("softplus", "softmax")])
def test_pytorch_state_dict_reads_back(tmp_path, hidden, output):
    """A PyTorch model saved by safetensors (with our "activations" key) loads here and
    computes what PyTorch computes."""
    torch = _need("torch")
    st_torch = _need("safetensors.torch")
    torch.manual_seed(0)
    acts = [hidden, hidden, output]
    model = _torch_model(torch, acts, SIZES)
    path = tmp_path / "torch.safetensors"
    st_torch.save_file(model.state_dict(), str(path), metadata={"activations": json.dumps(acts)})
    params = mj.load(path)
    assert [p.activation for p in params] == acts and params[0].W.dtype == jnp.float64
    X = _X()
    with torch.no_grad():
        theirs = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.asarray(mj.forward(params, X)), theirs, rtol=0, atol=FORWARD_ATOL)


# --- save: the same guarantees as npz -------------------------------------------------------
def test_save_refuses_bad_params_and_leaves_nothing(tmp_path):
    params = _numpy_params(np.float32)
    W = params[0].W.copy()
    W[1, 2] = np.inf
    bad = (mj.Dense(W, params[0].b, "relu"), *params[1:])
    with pytest.raises(ValueError, match=r"params\[0\]\.W"):
        mj.save(tmp_path / "m.safetensors", bad)
    with pytest.raises(TypeError, match="one dtype"):
        mj.save(
            tmp_path / "m.safetensors",
            (
                params[0],
                mj.Dense(params[1].W.astype(np.float64), params[1].b, "sigmoid"),
                params[2],
            ),
        )
    assert os.listdir(tmp_path) == []
    mj.save(tmp_path / "m.safetensors", bad, allow_nonfinite=True)
    _assert_same(bad, mj.load(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch, where):
    path = tmp_path / "m.safetensors"
    mj.save(path, _params())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, where, boom)
    with pytest.raises(OSError, match="simulated crash"):
        mj.save(path, _params(seed=3))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left


# --- hostile files ----------------------------------------------------------------------------
GOOD_ACTS = ["relu", "sigmoid", "identity"]


def _entries(params, code="F32"):
    """(name, header entry, bytes) of every tensor, as our writer lays them out."""
    out, offset = [], 0
    for i, p in enumerate(params):
        for name, arr in ((f"{2 * i}.weight", np.asarray(p.W).T), (f"{2 * i}.bias", p.b)):
            data = np.ascontiguousarray(arr, "<f4").tobytes()
            out.append(
                [
                    name,
                    {
                        "dtype": code,
                        "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)],
                    },
                    data,
                ]
            )
            offset += len(data)
    return out


def _write(path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    """A file with ``header`` (dict -> JSON) behind its length, then ``data``."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(head) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + head + data)
    return path


def _forge(path, edit=None, meta=None, data_edit=None):
    """A foreign-style file (no digest) of _numpy_params, edited: structure checks only."""
    entries = _entries(_numpy_params(np.float32))
    header = {"__metadata__": {"activations": json.dumps(GOOD_ACTS)} if meta is None else meta}
    for name, entry, _ in entries:
        header[name] = entry
    data = b"".join(e[2] for e in entries)
    if edit:
        edit(header)
    if data_edit:
        data = data_edit(data)
    return _write(path, header, data)


@pytest.fixture
def bytes_read(monkeypatch):
    """Count the bytes the reader reads, to prove that a bad header stops it before the data."""
    counter = {"n": 0}
    real = os.read
    me = threading.get_ident()  # os.read is global: count this test's thread only

    def read(fd, n):
        chunk = real(fd, n)
        if threading.get_ident() == me:
            counter["n"] += len(chunk)
        return chunk

    monkeypatch.setattr(os, "read", read)
    return counter


def _expect_invalid(path, match, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        safetensors.read_safetensors(path, **kwargs)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError):  # and through the public load
        mj.load(path, format="safetensors")
    return str(info.value)


def test_forge_helper_makes_readable_files(tmp_path):
    _assert_same(
        _numpy_params(np.float32), mj.load(_forge(tmp_path / "ok.st"), format="safetensors")
    )


def _set(name, field, value):
    def edit(h):
        h[name][field] = value

    return edit


def _shift(h, delta, start=1):
    """Move every tensor after the first ``start`` by ``delta`` bytes."""
    for name in list(h)[1 + start :]:
        h[name]["data_offsets"] = [o + delta for o in h[name]["data_offsets"]]


HOSTILE_HEADERS = {
    # offsets
    "overlap": (lambda h: _set("0.bias", "data_offsets", [0, 28])(h), "overlaps"),
    "gap": (lambda h: _shift(h, 4), "gap|cover"),
    "beyond_end": (lambda h: _set("4.bias", "data_offsets", [10**12, 10**12 + 12])(h), "gap"),
    "negative": (lambda h: _set("0.bias", "data_offsets", [-28, 0])(h), "data_offsets"),
    "reversed": (lambda h: _set("0.bias", "data_offsets", [168, 140])(h), "data_offsets"),
    "span_vs_shape": (lambda h: _set("0.bias", "shape", [8])(h), "needs 32 bytes"),
    "float_offset": (lambda h: _set("0.bias", "data_offsets", [140.0, 168.0])(h), "data_offsets"),
    "bool_shape": (lambda h: _set("0.bias", "shape", [True])(h), "shape"),
    "zero_dim": (lambda h: _set("0.bias", "shape", [0])(h), "shape"),
    # dtypes
    "int_dtype": (lambda h: _set("2.weight", "dtype", "I32")(h), "dtype 'I32'"),
    "bf16": (lambda h: [h[k].update(dtype="BF16") for k in list(h)[1:]], "dtype 'BF16'"),
    "mixed": (
        lambda h: [
            _set(n, "dtype", "F16")(h) or _set(n, "shape", s)(h) for n, s in (("4.bias", [6]),)
        ],
        "mixed dtypes",
    ),
    # tensor set and shapes
    "extra": (lambda h: h.update({"6.weight": dict(h["4.bias"])}), r"unexpected tensors \['6"),
    "missing": (lambda h: h.pop("2.bias"), r"missing tensors \['2.bias'\]"),
    "renamed": (lambda h: h.update({"layer0.weight": h.pop("0.weight")}), "missing tensors"),
    "unchained": (lambda h: [_set("2.weight", "shape", [7, 4])(h)], "not an nn.Linear"),
    "extra_field": (lambda h: _set("0.bias", "note", "hi")(h), "is not {dtype"),
    "entry_not_object": (lambda h: h.update({"0.bias": [1, 2]}), "is not {dtype"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_lying_header_is_refused_before_the_data_is_read(tmp_path, bytes_read, case):
    edit, match = HOSTILE_HEADERS[case]
    path = _forge(tmp_path / f"{case}.safetensors", edit)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    bytes_read["n"] = 0
    with pytest.raises(ValueError, match=match) as info:
        safetensors.read_safetensors(path)
    assert str(path) in str(info.value)
    assert bytes_read["n"] <= 8 + n, "tensor bytes were read before the header was checked"
    with pytest.raises(ValueError):
        mj.load(path)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({}, "lacks 'activations'"),
        ({"activations": '["relu", "swish", "identity"]'}, "unknown hidden activation 'swish'"),
        (
            {"activations": '["softmax", "sigmoid", "identity"]'},
            "activation 'softmax' of layer 0 can only be used on the output layer",
        ),
        ({"activations": '["relu", "identity"]'}, "unexpected tensors"),
        ({"activations": "relu"}, "not valid JSON"),
        ({"activations": json.dumps(GOOD_ACTS), "layer_sizes": "[5, 7, 4, 2]"}, "layer_sizes"),
        ({"activations": json.dumps(GOOD_ACTS), "metadata": "[1]"}, "not a JSON object"),
        ({"activations": json.dumps(GOOD_ACTS), "mlds_jax.format_version": "2"}, "newer"),
        (
            {"activations": json.dumps(GOOD_ACTS), "mlds_jax.format_version": "1"},
            "sha256' is missing",
        ),
        ({"activations": ["relu"]}, "map of strings"),
    ],
)
def test_bad_metadata(tmp_path, meta, match):
    _expect_invalid(_forge(tmp_path / "m.safetensors", meta=meta), match)


def test_activations_argument_must_agree_with_the_file(tmp_path):
    path = _forge(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="records activations"):
        safetensors.read_safetensors(path, activations=["tanh", "sigmoid", "identity"])
    assert safetensors.read_safetensors(path, activations=GOOD_ACTS).activations == tuple(GOOD_ACTS)


@pytest.mark.parametrize(
    ("header", "length", "match"),
    [
        (b"", 2**63, "exceeds"),  # header length huge
        (b"{}", files.MAX_HEADER_BYTES + 1, "exceeds"),  # just over the limit
        (b'{"a": 1}', 4096, "does not fit"),  # longer than the file
        (b"[1, 2]", None, "does not start with"),  # not an object
        (b"\xff{}", None, "does not start with|UTF-8"),
        (b'{"x": NaN}', None, "non-JSON number NaN"),
        (b'{"__metadata__": {}, "__metadata__": {}}', None, "twice"),
        (b"{" * 5000, None, "not valid JSON"),
        (b'{"__metadata__": {"activations": "[\\"relu\\"]"}} x', None, "not valid JSON"),
        (b"{}", 0, "does not fit"),
    ],
)
def test_malformed_header(tmp_path, header, length, match):
    _expect_invalid(_write(tmp_path / "bad.safetensors", header, length=length), match)


def test_truncated_files(tmp_path):
    path = mj.save(tmp_path / "m.safetensors", _params(dtype=jnp.float32))
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for end in sorted({0, 1, 7, 8, 9, 20, len(raw) // 2, len(raw) - 1, *range(0, len(raw), 97)}):
        cut.write_bytes(raw[:end])
        _expect_invalid(cut, "truncated|does not fit|cover|not valid JSON")
    cut.write_bytes(raw + b"\0" * 4)  # trailing bytes are refused as well
    _expect_invalid(cut, "cover")


def test_every_single_bit_flip_is_detected(tmp_path):
    """Flip each bit of a small file in turn: each flip is refused (the digest covers the
    tensors and the metadata; the structure checks the rest)."""
    params = _numpy_params(np.float32, sizes=[2, 3, 2], acts=("tanh", "sigmoid"))
    raw = mj.save(tmp_path / "m.safetensors", params).read_bytes()
    path = tmp_path / "flipped.safetensors"
    undetected = []
    for pos in range(len(raw)):
        for bit in range(8):
            data = bytearray(raw)
            data[pos] ^= 1 << bit
            path.write_bytes(bytes(data))
            try:
                safetensors.read_safetensors(path)
            except ValueError:
                continue
            undetected.append((pos, bit))
    assert not undetected, f"{len(undetected)} of {8 * len(raw)} flips undetected: {undetected[:5]}"


def test_digest_mismatch_names_the_checksum(tmp_path):
    raw = bytearray(mj.save(tmp_path / "m.safetensors", _params()).read_bytes())
    raw[-3] ^= 0x10  # inside the last bias
    (tmp_path / "m.safetensors").write_bytes(bytes(raw))
    _expect_invalid(tmp_path / "m.safetensors", "checksum mismatch")


def test_only_regular_files_are_opened(tmp_path):
    directory = tmp_path / "dir.safetensors"
    directory.mkdir()
    _expect_invalid(directory, "is a directory")
    with pytest.raises(ValueError, match="is a directory"):
        mj.load(directory)
    if os.path.exists("/dev/null"):
        _expect_invalid("/dev/null", "not a regular file")
    # a symlink to a good file is fine (the target is regular)
    good = mj.save(tmp_path / "good.safetensors", _params())
    (tmp_path / "link.safetensors").symlink_to(good)
    _assert_same(mj.load(good), mj.load(tmp_path / "link.safetensors"))
    with pytest.raises(FileNotFoundError, match="nope"):
        safetensors.read_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope"):
        mj.load(tmp_path / "nope.safetensors")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    outcome = {}

    def attempt():
        try:
            mj.load(fifo)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked in open(): give it a writer so the thread can finish
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("loading a FIFO blocked instead of being refused")
    assert isinstance(outcome.get("error"), ValueError), outcome
    assert "a FIFO" in str(outcome["error"]) and str(fifo) in str(outcome["error"])
