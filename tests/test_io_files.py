"""mlds_jax.io.files: regular files only, reads bounded by the file, aligned buffers.  (The
formats' readers go through these: their fault tests are in test_io_checkpoint,
test_io_safetensors and test_io_container.)"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from mlds_jax.io import files


def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^\[Errno 2\] thing .*nope does not exist"):
        files.open_regular(str(tmp_path / "nope"), "thing")
    with pytest.raises(ValueError, match=r"thing .* is a directory, not a regular file"):
        files.open_regular(str(tmp_path), "thing")
    if hasattr(os, "mkfifo"):  # refused before open: a FIFO would block it
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
            files.open_regular(str(tmp_path / "pipe"), "thing")
    (tmp_path / "f").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(tmp_path / "f")  # a link to a regular file is followed
    fd, size = files.open_regular(str(tmp_path / "link"), "thing")
    try:
        assert size == 10
        assert files.read_at(fd, 3, 4) == b"3456"
        with pytest.raises(files.BadFileError, match="is truncated: it ended 2 bytes short"):
            files.read_at(fd, 8, 4, "tail")
        buf = bytearray(5)
        h = hashlib.sha256()
        files.read_into(fd, 2, memoryview(buf), hasher=h)
        assert bytes(buf) == b"23456" and h.hexdigest() == hashlib.sha256(b"23456").hexdigest()
        with pytest.raises(files.BadFileError, match="is truncated"):
            files.read_into(fd, 8, memoryview(bytearray(4)))
    finally:
        os.close(fd)
    assert files.read_regular_file(str(tmp_path / "f"), "thing") == b"0123456789"


@pytest.mark.parametrize("shape", [(), (0,), (3,), (7, 5), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.bool_])
def test_aligned_empty_is_aligned_and_c_contiguous(shape, dtype):
    arr = files.aligned_empty(shape, dtype)
    assert arr.shape == shape and arr.dtype == dtype and arr.flags.c_contiguous
    assert arr.ctypes.data % files.ALIGNMENT == 0 or arr.size == 0
    assert len(files.byte_view(arr)) == arr.nbytes
