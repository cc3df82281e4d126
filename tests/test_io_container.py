"""mlds_jax.io.container (and files): the signed container's bytes and its bounded reads.

* the writer produces exactly what ``zipfile`` writes (zip64 fields included), so files are
  byte-identical to those of earlier versions and ``np.load`` reads them;
* fault class "a non-checkpoint, however large": a 1 GiB sparse file of each kind is refused
  after reading at most a few KiB, with a few KiB of memory;
* fault class "oversize members": a header entry over the limit, a member longer than its
  array, a directory that promises more than the file holds, an array header announcing a
  huge shape: refused before anything of that size is allocated;
* memory bounded by the result: loading a 128 MiB checkpoint (npz and safetensors) peaks at
  no more than 1.3x the parameters' bytes above the process baseline (a fresh process).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import mlds_jax as mj
from mlds_jax.io import checkpoint, container, files

FORMAT = checkpoint.FORMAT_NAME
GIB = 2**30


def _params(sizes=(5, 7, 3)):
    """float32 params of NumPy arrays (nothing to compile)."""
    rng = np.random.default_rng(0)
    return tuple(mj.Dense(rng.standard_normal((m, n)).astype(np.float32),
                          np.zeros(n, np.float32), act)
                 for m, n, act in zip(sizes[:-1], sizes[1:], ("tanh", "softmax"), strict=False))


def _entries(seed=0):
    rng = np.random.default_rng(seed)
    header = np.frombuffer(b'{"format":"x"}', np.uint8)
    return [("__header__", header), ("a", rng.standard_normal((3, 4))),
            ("b", np.arange(5, dtype=np.int32)), ("c", np.float32(2.5).reshape(()))]


def _zipfile_archive(entries, comment: bytes) -> bytes:
    """The reference: the archive as zipfile writes it (as mlds_jax's writer did until the io
    package), then signed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in entries:
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
        zf.comment = comment + b"0" * 64
    body = buf.getvalue()[:-64]
    return body + hashlib.sha256(body).hexdigest().encode()


@pytest.mark.parametrize("zip64_limit", [container.ZIP64_LIMIT, 100])
def test_writer_writes_what_zipfile_writes(monkeypatch, zip64_limit):
    """Byte for byte, with zip64 fields for entries (and offsets) above the limit too (a
    small limit stands in for 2 GiB members)."""
    monkeypatch.setattr(container, "ZIP64_LIMIT", zip64_limit)
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", zip64_limit)
    entries = _entries()
    ours = b"".join(container.archive_chunks(FORMAT, entries))
    assert ours == _zipfile_archive(entries, container.signature(FORMAT))
    with np.load(io.BytesIO(ours), allow_pickle=False) as npz:  # NumPy reads it
        np.testing.assert_array_equal(npz["a"], entries[1][1])


@pytest.mark.parametrize("zip64_limit", [container.ZIP64_LIMIT, 100])
def test_round_trip_reads_each_array_into_an_aligned_buffer(tmp_path, monkeypatch, zip64_limit):
    monkeypatch.setattr(container, "ZIP64_LIMIT", zip64_limit)
    import ml_dtypes

    arrays = [("w", np.arange(12, dtype=np.float32).reshape(3, 4)),
              ("k", np.array([True, False])), ("s", np.asarray(3, np.int64)),
              ("h", np.arange(3).astype(ml_dtypes.bfloat16))]
    path = str(tmp_path / "c.npz")
    container.write_container(path, "mlds_jax.test", {"format_version": 1, "n": 3}, arrays)
    with container.open_container(path, what="test file", format_name="mlds_jax.test") as c:
        assert c.signed and c.names == ["w", "k", "s", "h"] and c.header["n"] == 3
        got = c.read([(n, a.dtype, a.shape) for n, a in arrays])
    for (_, want), arr in zip(arrays, got, strict=True):
        assert arr.dtype == want.dtype and arr.tobytes() == want.tobytes()
        assert arr.ctypes.data % files.ALIGNMENT == 0 and arr.flags.c_contiguous


# --- fault class: a non-checkpoint of any size -------------------------------------------------
def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def _sparse(path, head: bytes, size: int = GIB, tail: bytes = b""):
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size - len(tail))
        f.seek(size - len(tail))
        f.write(tail)
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read via /proc")
def test_fault_1_gib_non_checkpoints_are_refused_after_a_few_kib(tmp_path):
    """Sparse 1 GiB files (no disk used): zeros; a zip with a foreign first entry; the start
    of a real checkpoint with no end record; a real end record of another format.  Each is
    refused having read at most 4 KiB and allocated at most 64 KiB (tracemalloc)."""
    good = checkpoint.checkpoint_bytes(_params())
    comment = container.signature("mlds_jax.train_state") + b"0" * 64
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, 46, 0, len(comment)) + comment
    foreign = io.BytesIO()
    np.savez(foreign, W=np.zeros(3))
    cases = {
        "zeros": (_sparse(tmp_path / "zeros.npz", b""), "not a .npz"),
        "foreign zip": (_sparse(tmp_path / "foreign.npz", foreign.getvalue()[:200]),
                        "no '__header__' entry first"),
        "cut checkpoint": (_sparse(tmp_path / "cut.npz", good[:300]), "end-of-archive"),
        "another format": (_sparse(tmp_path / "state.npz", good[:300], tail=end),
                           "it is an mlds_jax.train_state file"),
    }
    for name, (path, match) in cases.items():
        assert os.path.getsize(path) == GIB
        before = _rchar()
        tracemalloc.start()
        try:
            with pytest.raises(ValueError, match=match) as info:
                mj.load(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        read = _rchar() - before
        message = str(info.value)
        assert str(path) in message, name
        assert "not an mlds_jax checkpoint" in message or "corrupt" in message, name
        assert read <= 4096, f"{name}: read {read} bytes before refusing"
        assert peak <= 64 * 1024, f"{name}: allocated {peak} bytes before refusing"


# --- fault class: oversize members -------------------------------------------------------------
def _signed(zip_bytes: bytes) -> bytes:
    """Sign a zip written with the checkpoint comment: the file is "ours", its contents not."""
    body = zip_bytes[:-64]
    return body + hashlib.sha256(body).hexdigest().encode()


def _repack(raw: bytes, edit) -> bytes:
    """The checkpoint's members through ``edit(name, data) -> data``, re-signed."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, edit(info.filename, src.read(info)))
        dst.comment = src.comment
    return _signed(buf.getvalue())


@pytest.fixture
def raw():
    return checkpoint.checkpoint_bytes(_params(), metadata={"note": "x" * 100})


def test_fault_oversize_header_entry(tmp_path, raw, monkeypatch):
    path = tmp_path / "m.npz"
    path.write_bytes(raw)
    monkeypatch.setattr(files, "MAX_HEADER_BYTES", 64)
    with pytest.raises(ValueError, match=r"is corrupt: its header entry is \d+ bytes"):
        mj.load(path)


def test_fault_member_longer_than_its_array(tmp_path, raw):
    path = tmp_path / "m.npz"
    path.write_bytes(_repack(raw, lambda n, d: d + b"\0" * 64 if n == "layer0/W.npy" else d))
    with pytest.raises(ValueError, match=r"entry layer0/W is \d+ bytes, but a \(5, 7\) float"):
        mj.load(path)


def test_fault_array_header_announcing_a_huge_shape_allocates_nothing(tmp_path, raw):
    """A signed file whose header and .npy header agree on a 10^12-element W: refused by the
    byte count before any buffer is allocated."""
    def edit(name, data):
        if name == "__header__.npy":
            head = np.lib.format.read_array(io.BytesIO(data))
            header = json.loads(head.tobytes())
            header["leaves"][0]["shape"] = [10**6, 10**6]
            header["leaves"][2]["shape"] = [10**6, 3]
            header["layer_sizes"] = [10**6, 10**6, 3]
            header["leaves"][1]["shape"] = [10**6]
            out = io.BytesIO()
            np.lib.format.write_array(out, np.frombuffer(json.dumps(header).encode(), np.uint8))
            return out.getvalue()
        if name == "layer0/W.npy":
            out = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
            return out.getvalue() + data[128:]
        return data

    path = tmp_path / "huge.npz"
    path.write_bytes(_repack(raw, edit))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="is corrupt: entry layer0/W is"):
            mj.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_fault_directory_promising_more_than_the_file(tmp_path, raw):
    """The directory's size of a member, changed (and re-signed): the members no longer tile
    the file."""
    data = bytearray(raw)
    at = data.rfind(b"PK\x01\x02")  # the last directory entry: its compressed/file sizes
    data[at + 20 : at + 28] = (2**31).to_bytes(4, "little") * 2
    path = tmp_path / "m.npz"
    path.write_bytes(_signed(bytes(data)))
    with pytest.raises(ValueError, match="is corrupt"):
        mj.load(path)


def test_fault_directory_larger_than_the_limit(tmp_path, raw, monkeypatch):
    path = tmp_path / "m.npz"
    path.write_bytes(raw)
    monkeypatch.setattr(container, "MAX_DIRECTORY_BYTES", 100)
    with pytest.raises(ValueError, match="zip directory"):
        mj.load(path)


# --- memory bounded by the result --------------------------------------------------------------
_PEAK = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import mlds_jax as mj

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    jnp.zeros(8).block_until_ready()
    out = {}
    for path in sys.argv[1:]:
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        params = mj.load(path)
        jax.block_until_ready(params)
        nbytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
        out[path] = (status("VmHWM") - base) / nbytes
        del params
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_load_peaks_at_the_size_of_the_parameters(tmp_path):
    """A 128 MiB float32 network (one 128 MiB weight) in both formats: peak RSS above the
    baseline <= 1.3x the parameters' bytes (the reader's fixed buffers are 16 MiB, 12%)."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5793, 5793), dtype=np.float32)  # 128 MiB
    params = (mj.Dense(W, np.zeros(5793, np.float32), "tanh"),
              mj.Dense(np.ones((5793, 3), np.float32), np.zeros(3, np.float32), "softmax"))
    paths = [str(mj.save(tmp_path / "m.npz", params)),
             str(mj.save(tmp_path / "m.safetensors", params))]
    del W, params
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        run = subprocess.run([sys.executable, "-c", _PEAK, *paths], capture_output=True,
                             text=True, env=env, timeout=300)
    finally:
        for p in paths:
            os.remove(p)
    assert run.returncode == 0, run.stderr
    ratios = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(r <= 1.3 for r in ratios.values()), ratios
