"""Opening and reading files we did not write: regular files only, reads bounded by the file.

Every reader in :mod:`mlds_jax.io` opens its file with :func:`open_regular` (a FIFO, device,
socket or directory is refused before anything is read, and the descriptor is opened
non-blocking, so a path swapped for a FIFO after the check cannot hang) and then reads pieces
of it with :func:`read_at` or straight into the arrays it returns with :func:`read_into`:
nothing is allocated beyond what the file holds, and the caller decides how much to read
before it has seen the rest.  A problem with the file's contents is raised inside a reader as
:class:`BadFileError` and reported to the user as ``ValueError("<what> <path> <problem>")``.
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ALIGNMENT",
    "CHUNK_BYTES",
    "MAX_HEADER_BYTES",
    "BadFileError",
    "aligned_empty",
    "byte_view",
    "kind_of",
    "open_regular",
    "read_at",
    "read_exactly",
    "read_into",
    "read_regular_file",
]

#: The largest JSON header any reader here parses (a checkpoint's, a training state's or a
#: safetensors file's), metadata included.
MAX_HEADER_BYTES = 64 * 2**20
#: Reads and writes move at most this many bytes per system call.
CHUNK_BYTES = 1 << 24
#: Arrays are read into buffers aligned to this many bytes, so that ``jax.device_put`` on the
#: CPU can use them in place instead of copying.
ALIGNMENT = 64


class BadFileError(Exception):
    """A problem with a file's contents; the message continues "<what> <path> ..."."""


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a directory", "a FIFO", ...)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(path: str, what: str) -> tuple[int, int]:
    """Open ``path`` read-only if it is a regular file (a symlink to one is followed).

    Returns:
      ``(fd, size)``: the descriptor (the caller closes it) and the size from ``fstat``.

    Raises:
      FileNotFoundError: no such file ("<what> <path> does not exist").
      ValueError: a directory, FIFO, device or socket, refused before any byte is read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} {path} does not exist", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: only regular files "
            f"are read"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(
                f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: only regular "
                f"files are read"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_exactly(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from the descriptor's position, read in pieces of at most
    :data:`CHUNK_BYTES` (nothing is allocated beyond what the file holds).  ``EOFError(left)``
    if the file ends ``left`` bytes short (it was truncated, or changed while being read)."""
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, CHUNK_BYTES))
        if not chunk:
            raise EOFError(left)
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_at(fd: int, offset: int, n: int, what: str = "data") -> bytes:
    """Exactly ``n`` bytes at ``offset``; :class:`BadFileError` if the file ends first."""
    os.lseek(fd, offset, os.SEEK_SET)
    try:
        return read_exactly(fd, n)
    except EOFError as short:
        raise BadFileError(
            f"is truncated: it ended {short.args[0]} bytes short inside the {what} (was it "
            f"changed while being read?)"
        ) from None


def read_into(fd: int, offset: int, buffer: memoryview, what: str = "data", hasher=None) -> None:
    """Fill ``buffer`` (a writable byte memoryview) with the file's bytes from ``offset``,
    without an intermediate copy; ``hasher.update`` sees each piece when given."""
    raw = io.FileIO(fd, "rb", closefd=False)
    raw.seek(offset)
    done, n = 0, len(buffer)
    while done < n:
        got = raw.readinto(buffer[done : min(n, done + CHUNK_BYTES)])
        if not got:
            raise BadFileError(
                f"is truncated: it ended {n - done} bytes short inside the {what} (was it "
                f"changed while being read?)"
            )
        if hasher is not None:
            hasher.update(buffer[done : done + got])
        done += got


def byte_view(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat memoryview, without a copy (any dtype, a
    0-d array included): what hashes, CRCs and writes read, and what reads fill."""
    return arr.reshape(-1).view(np.uint8).data


def aligned_empty(shape: Sequence[int], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an :data:`ALIGNMENT`-byte
    boundary (``np.empty`` gives 16), so the CPU backend can adopt it without a copy."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(tuple(shape))


def read_regular_file(path: str, what: str) -> bytes:
    """All bytes of the regular file ``path`` (see :func:`open_regular`), for small files;
    the size is taken from ``fstat`` first, so nothing is read beyond the file itself."""
    fd, size = open_regular(path, what)
    try:
        return read_exactly(fd, size)
    except EOFError as short:
        raise ValueError(
            f"{what} {path} is truncated: it ended {short.args[0]} bytes short of its size "
            f"(was it changed while being read?)"
        ) from None
    finally:
        os.close(fd)
