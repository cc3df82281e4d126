r"""One signed container for arrays and a JSON header: the file format of checkpoints and of
training states.

Layout
------
An uncompressed zip archive that ``np.load(path, allow_pickle=False)`` reads, written entry
by entry exactly as Python's ``zipfile`` would (so the bytes are those earlier versions
wrote):

* ``__header__.npy`` first: a uint8 array holding the canonical JSON of the header (keys
  sorted, no spaces, ASCII), with at least ``format`` (e.g. "mlds_jax.checkpoint"),
  ``format_version`` and ``sha256``, the :func:`content_digest`: SHA-256 of the canonical
  JSON of the rest of the header, then of every entry's name, dtype, shape and bytes;
* one ``NAME.npy`` per array, in order, little-endian, C order;
* the archive comment ``<format> sha256=<64 hex>``, the SHA-256 of every byte of the file
  before the hex digits, so a flipped bit anywhere (zip structures included) is detected.

Entries carry a fixed timestamp (1980-01-01): the same arrays and header give the same bytes.

Reading: bounded by the result
------------------------------
:func:`open_container` refuses a file that is not one of ours after reading at most a few
hundred bytes (the zip magic and the first entry's name at the start, the end record and its
signature at the end); then, for a signed file, it hashes the whole file in fixed-size pieces
(no copy of the file is held) before it believes anything inside it; then it checks the
directory (stored entries that tile the file exactly, no duplicates) and parses the header
(at most :data:`~mlds_jax.io.files.MAX_HEADER_BYTES`).  :meth:`Container.read` then reads each
array straight from the file into its final, aligned buffer, after checking its ``.npy``
header (dtype, shape, byte count) against what the caller expects from the header, and
verifies the content digest.  Peak memory is the arrays returned plus a 16 MiB buffer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlds_jax.io import atomic, files
from mlds_jax.io.files import BadFileError

__all__ = [
    "HEADER_ENTRY",
    "MAX_DIRECTORY_BYTES",
    "ZIP64_LIMIT",
    "Container",
    "archive_chunks",
    "canonical_json",
    "container_bytes",
    "content_digest",
    "open_container",
    "signature",
    "write_container",
]

#: The name (without ``.npy``) of the header entry, always the first.
HEADER_ENTRY = "__header__"
#: Largest zip directory read (about 200,000 entries).
MAX_DIRECTORY_BYTES = 16 * 2**20

_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry (46 bytes)
_END = struct.Struct("<4s4H2LH")  # end of central directory (22 bytes)
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory (56 bytes)
_LOCATOR64 = struct.Struct("<4sLQL")  # zip64 end locator (20 bytes)
#: Entries (and directory offsets) larger than this get zip64 fields, as with ``zipfile``.
ZIP64_LIMIT = (1 << 31) - 1
_COUNT_LIMIT = 0xFFFF
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the fixed timestamp
_DIGEST_HEX = 64
_SIGNED = re.compile(rb"(mlds_jax\.[a-z_]+) sha256=([0-9a-f]{64})")
_NPY_HEADER_MAX = 2**16  # an .npy header is its magic, a length and a short dict literal


def signature(format_name: str) -> bytes:
    """The archive comment before the hex digest: ``b"<format> sha256="``."""
    return f"{format_name} sha256=".encode("ascii")


def canonical_json(obj: Any) -> bytes:
    """Keys sorted, no spaces, ASCII; NaN and infinities kept as JSON's extensions."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True
    ).encode("ascii")


def _c_order(arr) -> np.ndarray:
    """``arr`` as a C-contiguous array, 0-d kept 0-d (``np.ascontiguousarray`` makes it 1-d)."""
    arr = np.asarray(arr)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def content_digest(header: Mapping[str, Any], entries: Sequence[tuple[str, np.ndarray]]) -> str:
    """SHA-256 of the header without its ``sha256`` field, then of every entry's name, dtype
    (``dtype.str``), shape and bytes: what the header's ``sha256`` holds."""
    h = hashlib.sha256()
    h.update(canonical_json({k: v for k, v in header.items() if k != "sha256"}))
    for name, arr in entries:
        arr = _c_order(arr)
        h.update(name.encode("utf-8") + b"\0")
        h.update(arr.dtype.str.encode("ascii") + b"\0")
        h.update(repr(tuple(int(s) for s in arr.shape)).encode("ascii") + b"\0")
        h.update(files.byte_view(arr))
    return h.hexdigest()


# --- writing ---------------------------------------------------------------------------------
def _npy_header(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


@dataclass
class _Written:
    name: bytes
    flags: int
    crc: int
    size: int
    offset: int
    version: int


def archive_chunks(format_name: str, entries: Sequence[tuple[str, np.ndarray]]) -> Iterator:
    """The signed archive of ``entries`` (name without ``.npy``, array), as buffers in file
    order (the arrays' own memory, never copied); the last is the 64 hex digits.  Entries are
    written as they come: put the header entry first."""
    h = hashlib.sha256()
    offset, written = 0, []
    for name, arr in entries:
        arr = _c_order(arr)
        head, data = _npy_header(arr), files.byte_view(arr)
        size = len(head) + len(data)
        fname = (name + ".npy").encode("utf-8")
        flags = 0 if fname.isascii() else 0x800
        zip64 = size * 1.05 > ZIP64_LIMIT  # zipfile's rule for an entry of known size
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        version = 45 if zip64 else 20
        field = 0xFFFFFFFF if zip64 else size
        crc = zlib.crc32(data, zlib.crc32(head))
        local = _LOCAL.pack(
            _ZIP_MAGIC,
            version,
            0,
            flags,
            0,
            0,
            _DOS_DATE,
            crc,
            field,
            field,
            len(fname),
            len(extra),
        )
        for piece in (local + fname + extra, head, data):
            h.update(piece)
            yield piece
        written.append(_Written(fname, flags, crc, size, offset, version))
        offset += len(local) + len(fname) + len(extra) + size
    start = offset
    for w in written:
        zip64 = [w.size, w.size] if w.size > ZIP64_LIMIT else []
        if w.offset > ZIP64_LIMIT:
            zip64.append(w.offset)
        extra = struct.pack(f"<HH{len(zip64)}Q", 1, 8 * len(zip64), *zip64) if zip64 else b""
        version = max(45 if zip64 else 0, w.version)
        size = 0xFFFFFFFF if w.size > ZIP64_LIMIT else w.size
        entry = (
            _CENTRAL.pack(
                b"PK\x01\x02",
                version,
                3,
                version,
                0,
                w.flags,
                0,
                0,
                _DOS_DATE,
                w.crc,
                size,
                size,
                len(w.name),
                len(extra),
                0,
                0,
                0,
                0o644 << 16,
                0xFFFFFFFF if w.offset > ZIP64_LIMIT else w.offset,
            )
            + w.name
            + extra
        )
        h.update(entry)
        yield entry
        offset += len(entry)
    count, cd_size = len(written), offset - start
    tail = b""
    if count > _COUNT_LIMIT or start > ZIP64_LIMIT or cd_size > ZIP64_LIMIT:
        tail = _END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, start)
        tail += _LOCATOR64.pack(b"PK\x06\x07", 0, offset, 1)
        count, cd_size, start = min(count, 0xFFFF), min(cd_size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    comment = signature(format_name)
    tail += _END.pack(b"PK\x05\x06", 0, 0, count, count, cd_size, start, len(comment) + _DIGEST_HEX)
    tail += comment
    h.update(tail)
    yield tail
    yield h.hexdigest().encode("ascii")


def _sealed(
    format_name: str,
    header: Mapping[str, Any],
    entries: Sequence[tuple[str, np.ndarray]],
    what: str,
    target: str,
) -> list[tuple[str, np.ndarray]]:
    """The entries of the archive: the header (with its ``sha256``) first, size-checked."""
    sealed = {**header, "format": format_name}
    sealed["sha256"] = content_digest(sealed, entries)
    head = canonical_json(sealed)
    if len(head) > files.MAX_HEADER_BYTES:
        raise ValueError(
            f"refusing to save {what} {target}: its header (metadata included) is "
            f"{len(head)} bytes, more than load accepts ({files.MAX_HEADER_BYTES})"
        )
    return [(HEADER_ENTRY, np.frombuffer(head, np.uint8)), *entries]


def container_bytes(
    format_name: str,
    header: Mapping[str, Any],
    entries: Sequence[tuple[str, np.ndarray]],
    *,
    what: str = "file",
) -> bytes:
    """The bytes :func:`write_container` writes, in memory (for small files and sets)."""
    sealed = _sealed(format_name, header, entries, what, "<memory>")
    return b"".join(bytes(c) for c in archive_chunks(format_name, sealed))


def write_container(
    path: str,
    format_name: str,
    header: Mapping[str, Any],
    entries: Sequence[tuple[str, np.ndarray]],
    *,
    what: str = "file",
) -> None:
    """Write a container atomically (:func:`~mlds_jax.io.atomic.atomic_write`), streamed from
    the arrays: the file is never assembled in memory.

    Args:
      path: the file to create or replace.
      format_name: the header's ``format`` (and the signature's).
      header: JSON-serialisable; ``format`` and ``sha256`` are filled in.
      entries: ``(name, array)`` in file order; names without ``.npy``, not ``__header__``.
      what: the kind of file, for messages ("checkpoint", "training state").

    Raises:
      ValueError: the header is larger than readers accept.  OSError: see ``atomic_write``.
    """
    sealed = _sealed(format_name, header, entries, what, path)
    atomic.atomic_write(path, archive_chunks(format_name, sealed), what=what)


# --- reading ---------------------------------------------------------------------------------
@dataclass
class _Entry:
    name: str  # without .npy
    offset: int  # of the local header
    data: int  # of the member's bytes (the .npy file)
    size: int


def _zip64_fields(extra: bytes, wanted: int) -> list[int]:
    """The first ``wanted`` 8-byte values of the zip64 extra field (id 1)."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, n = struct.unpack_from("<HH", extra, pos)
        if kind == 1:
            if n < 8 * wanted or pos + 4 + n > len(extra):
                break
            return list(struct.unpack_from(f"<{wanted}Q", extra, pos + 4))
        pos += 4 + n
    raise BadFileError("is corrupt: an entry lacks its zip64 sizes")


def _end_record(fd: int, size: int, what: str, format_name: str) -> tuple[int, bytes, str | None]:
    """(position of the end record, the record with its comment, the hex digest if signed)."""
    n = min(size, _END.size + 1024)  # our comment is short: a foreign long one is not ours
    tail = files.read_at(fd, size - n, n, "end of the archive")
    pos = tail.rfind(b"PK\x05\x06")
    while pos >= 0:
        if pos + _END.size <= n and struct.unpack_from("<H", tail, pos + 20)[0] == n - pos - 22:
            break
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
    if pos < 0:
        raise BadFileError(
            "is corrupt or truncated: it has no zip end-of-archive record (cut short?)"
        )
    record = tail[pos:]
    signed = _SIGNED.fullmatch(record[_END.size :])
    if signed is None:
        return size - n + pos, record, None
    kind = signed.group(1).decode("ascii")
    if kind != format_name:
        raise BadFileError(f"is not an mlds_jax {what}: it is an {kind} file")
    return size - n + pos, record, signed.group(2).decode("ascii")


def _verify_signature(fd: int, size: int, digest: str) -> None:
    """SHA-256 of every byte before the hex digits, read in fixed-size pieces."""
    h, buf = hashlib.sha256(), bytearray(min(files.CHUNK_BYTES, max(size, 1)))
    view, done, end = memoryview(buf), 0, size - _DIGEST_HEX
    raw = io.FileIO(fd, "rb", closefd=False)
    raw.seek(0)
    while done < end:
        got = raw.readinto(view[: min(len(buf), end - done)])
        if not got:
            raise BadFileError("is truncated: it ended early (was it changed while being read?)")
        h.update(view[:got])
        done += got
    if h.hexdigest() != digest:
        raise BadFileError("is corrupt: checksum mismatch (its bytes changed after it was saved)")


def _directory(fd: int, end_pos: int, record: bytes) -> tuple[list[_Entry], int]:
    """The entries (checked: stored, unique, tiling the file), and where the directory starts."""
    _, disk, disk_cd, count_here, count, cd_size, cd_start, _ = _END.unpack_from(record)
    cd_end = end_pos
    loc = b""
    if end_pos >= _LOCATOR64.size + _END64.size:
        loc = files.read_at(fd, end_pos - _LOCATOR64.size, _LOCATOR64.size, "zip64 locator")
    if loc.startswith(b"PK\x06\x07"):  # zip64 end records precede the end record
        _, _, rec_pos, _ = _LOCATOR64.unpack(loc)
        cd_end = end_pos - _LOCATOR64.size - _END64.size
        if rec_pos != cd_end:
            raise BadFileError("is corrupt: its zip64 end locator is damaged")
        rec = files.read_at(fd, cd_end, _END64.size, "zip64 end record")
        sig, _, _, _, disk, disk_cd, count_here, count, cd_size, cd_start = _END64.unpack(rec)
        if sig != b"PK\x06\x06":
            raise BadFileError("is corrupt: its zip64 end record is damaged")
    if disk or disk_cd or count_here != count or count < 1:
        raise BadFileError("is corrupt: its zip end record is damaged")
    if cd_start + cd_size != cd_end or cd_size > MAX_DIRECTORY_BYTES:
        raise BadFileError(
            f"is corrupt: its zip directory ({cd_size} bytes at {cd_start}) does not end "
            f"where the end record begins ({cd_end})"
        )
    cd = files.read_at(fd, cd_start, cd_size, "zip directory")
    entries, names, pos, expected = [], [], 0, 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(cd):
            raise BadFileError("is corrupt: its zip directory is cut short")
        (sig, _, _, _, _, flags, method, _, _, _, csize, usize, n, m, k, _, _, _,
         offset) = _CENTRAL.unpack_from(cd, pos)  # fmt: skip
        if sig != b"PK\x01\x02":
            raise BadFileError("is corrupt: its zip directory is damaged")
        raw_name = cd[pos + 46 : pos + 46 + n]
        extra = cd[pos + 46 + n : pos + 46 + n + m]
        pos += 46 + n + m + k
        wanted = [v for v in (usize, csize, offset) if v == 0xFFFFFFFF]
        if wanted:
            values = iter(_zip64_fields(extra, len(wanted)))
            usize = next(values) if usize == 0xFFFFFFFF else usize
            csize = next(values) if csize == 0xFFFFFFFF else csize
            offset = next(values) if offset == 0xFFFFFFFF else offset
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        if method != 0 or csize != usize:
            raise BadFileError(
                f"is invalid: entry {name!r} is compressed; entries are stored uncompressed "
                f"(nothing is inflated on load)"
            )
        if flags & 0x9:  # encrypted, or sizes after the data
            raise BadFileError(f"is invalid: entry {name!r} is encrypted or streamed")
        if not name.endswith(".npy"):
            raise BadFileError(f"is invalid: entry {name!r} is not an .npy array")
        names.append(name)
        if offset != expected:
            raise BadFileError(f"is corrupt: entry {name!r} is not where the directory says")
        local = files.read_at(fd, offset, _LOCAL.size, f"entry {name!r}")
        (lsig, _, _, lflags, lmethod, _, _, _, lcsize, lusize, ln, lm) = _LOCAL.unpack(local)
        head = files.read_at(fd, offset + _LOCAL.size, ln + lm, f"entry {name!r}")
        if lusize == 0xFFFFFFFF or lcsize == 0xFFFFFFFF:
            lusize, lcsize = _zip64_fields(head[ln:], 2)
        if (lsig, head[:ln], lmethod, lflags & 0x9, lcsize, lusize) != (
            _ZIP_MAGIC,
            raw_name,
            0,
            0,
            csize,
            usize,
        ):
            raise BadFileError(f"is corrupt: entry {name!r} disagrees with the zip directory")
        data = offset + _LOCAL.size + ln + lm
        entries.append(_Entry(name[:-4], offset, data, usize))
        expected = data + usize
    if pos != len(cd):
        raise BadFileError("is corrupt: its zip directory holds more than its entries")
    if expected != cd_start:
        raise BadFileError(
            f"is corrupt: {cd_start - expected} bytes lie between the last entry and the "
            f"zip directory"
        )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BadFileError(f"is corrupt: duplicate entries {dup[:5]}")
    return entries, cd_start


def _npy_layout(fd: int, entry: _Entry) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header length) of an entry's ``.npy`` header."""
    n = min(entry.size, _NPY_HEADER_MAX)
    head = io.BytesIO(files.read_at(fd, entry.data, n, f"entry {entry.name!r}"))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # numpy's parser of a damaged header raises many kinds
        raise BadFileError(
            f"is corrupt: entry {entry.name!r} is not a readable .npy ({type(exc).__name__}: {exc})"
        ) from None
    if dtype.hasobject:
        raise BadFileError(
            f"is invalid: entry {entry.name!r} holds pickled Python objects, which are never loaded"
        )
    return tuple(shape), bool(fortran), dtype, head.tell()


def _same_dtype(stored: np.dtype, expected: np.dtype) -> bool:
    if expected.name == "bfloat16":  # .npy stores it as raw 2-byte void
        return stored.kind == "V" and stored.itemsize == 2 and not stored.fields
    return stored == expected.newbyteorder("<")


class Container:
    """An open, checked container (from :func:`open_container`); a context manager that
    closes the file and turns a :class:`~mlds_jax.io.files.BadFileError` raised inside the
    ``with`` block into ``ValueError("<what> <path> <problem>")``.

    Attributes:
      path, what: the file and its kind, for messages.
      header: the parsed JSON header (its ``format`` checked).
      signed: whether the archive carries (and matched) its whole-file signature.
      names: the entry names after the header, in file order.
    """

    def __init__(self, path: str, what: str, fd: int, header: dict, signed: bool, entries):
        self.path, self.what, self.header, self.signed = path, what, header, signed
        self._fd = fd
        self._entries = {e.name: e for e in entries[1:]}
        self.names = [e.name for e in entries[1:]]

    def __enter__(self) -> Container:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close()
        if isinstance(exc, BadFileError):
            raise ValueError(f"{self.what} {self.path} {exc}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read(
        self,
        specs: Sequence[tuple[str, Any, Sequence[int]]],
        *,
        digest: Callable[[Mapping, list], str] | None = content_digest,
    ) -> list[np.ndarray]:
        """Read the entries the header announced, each straight into its final buffer.

        Args:
          specs: ``(name, dtype, shape)`` of every entry after the header, in file order:
            the file must hold exactly these (else "missing/unexpected entries").
          digest: the function whose value the header's ``sha256`` must equal (None: none).

        Returns:
          The arrays, in ``specs`` order: C-contiguous, 64-byte aligned, never views of a
          larger buffer.

        Raises:
          BadFileError: a missing, extra, mistyped, misshapen or mis-sized entry, or a digest
            mismatch.
        """
        wanted = [name for name, _, _ in specs]
        if wanted != self.names:
            missing = [n for n in wanted if n not in self._entries]
            extra = [n for n in self.names if n not in set(wanted)]
            problems = ([f"missing entries {missing}"] if missing else []) + (
                [f"unexpected entries {extra[:10]}"] if extra else []
            )
            raise BadFileError(f"is corrupt: {', '.join(problems) or 'entries out of order'}")
        arrays = []
        for name, dtype, shape in specs:
            entry, dtype, shape = self._entries[name], np.dtype(dtype), tuple(shape)
            stored_shape, fortran, stored, head = _npy_layout(self._fd, entry)
            if not _same_dtype(stored, dtype):
                raise BadFileError(f"is invalid: {name} has dtype {stored}, header says {dtype}")
            if stored_shape != shape or fortran:
                order = " (Fortran order)" if fortran else ""
                raise BadFileError(
                    f"is invalid: {name} has shape {stored_shape}{order}, header says {shape}"
                )
            nbytes = math.prod(shape) * dtype.itemsize
            if entry.size != head + nbytes:
                raise BadFileError(
                    f"is corrupt: entry {name} is {entry.size} bytes, but a {shape} "
                    f"{dtype.name} array needs {nbytes} after its {head}-byte .npy header"
                )
            arr = files.aligned_empty(shape, dtype)
            files.read_into(self._fd, entry.data + head, files.byte_view(arr), f"entry {name}")
            arrays.append(arr)
        if digest is not None:
            stored_digest = self.header.get("sha256")
            if digest(self.header, list(zip(wanted, arrays, strict=True))) != stored_digest:
                raise BadFileError(
                    "is corrupt: checksum mismatch (header and arrays disagree with the "
                    "stored sha256)"
                )
        return arrays


def _first_entry(fd: int, size: int, what: str) -> None:
    """A zip whose first entry is ``__header__.npy``, or refuse after a few bytes."""
    start = files.read_at(fd, 0, min(size, 64), "start")
    if not start.startswith(_ZIP_MAGIC):
        if start.startswith(_NPY_MAGIC):
            raise BadFileError(
                f"is not an mlds_jax {what}: it is a single .npy array, not a .npz archive"
            )
        raise BadFileError(
            f"is not an mlds_jax {what}: not a .npz (zip) archive (other files, pickles "
            f"included, are never loaded)"
        )
    if size < _LOCAL.size:
        raise BadFileError("is corrupt or truncated: it ends inside its first zip entry")
    n = struct.unpack_from("<H", start, 26)[0]
    name = files.read_at(fd, _LOCAL.size, min(n, 256), "first entry's name")
    if name != (HEADER_ENTRY + ".npy").encode():
        raise BadFileError(
            f"is not an mlds_jax {what}: no {HEADER_ENTRY!r} entry first (a plain .npz?); its "
            f"first entry is {name.decode('utf-8', 'replace')!r}"
        )


def _parse_header(fd: int, entry: _Entry, what: str, format_name: str) -> dict:
    shape, fortran, dtype, head = _npy_layout(fd, entry)
    if entry.size - head > files.MAX_HEADER_BYTES:
        raise BadFileError(
            f"is corrupt: its header entry is {entry.size} bytes, over the "
            f"{files.MAX_HEADER_BYTES}-byte limit"
        )
    if dtype != np.uint8 or len(shape) != 1 or fortran or head + shape[0] != entry.size:
        raise BadFileError(f"is corrupt: its header entry is {dtype} {shape}, not uint8 bytes")
    raw = files.read_at(fd, entry.data + head, shape[0], "header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadFileError(f"is corrupt: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadFileError("is corrupt: header is not a JSON object")
    if header.get("format") != format_name:
        raise BadFileError(
            f"is not an mlds_jax {what}: header format is {header.get('format')!r}, expected "
            f"{format_name!r}"
        )
    return header


def open_container(path: str, *, what: str, format_name: str) -> Container:
    """Open and check a container (the steps of the module docstring), up to its header.

    Args:
      path: the file; must be a regular file.
      what: the kind of file, for messages ("checkpoint", "training state").
      format_name: the ``format`` its header (and signature, if any) must name.

    Returns:
      A :class:`Container`; read its arrays with :meth:`Container.read` inside ``with``.
      An unsigned archive (no signature, e.g. an early training state) is returned with
      ``signed = False``: the caller decides whether to accept it.

    Raises:
      FileNotFoundError: no such file.  ValueError: anything wrong with the file
        ("<what> <path> is corrupt: ...", "... is not an mlds_jax <what>: ...").
    """
    fd, size = files.open_regular(path, what)
    try:
        if size == 0:
            raise BadFileError(f"is empty (0 bytes): not an mlds_jax {what}")
        _first_entry(fd, size, what)
        end_pos, record, digest = _end_record(fd, size, what, format_name)
        if digest is not None:
            _verify_signature(fd, size, digest)
        entries, _ = _directory(fd, end_pos, record)
        header = _parse_header(fd, entries[0], what, format_name)
        return Container(path, what, fd, header, digest is not None, entries)
    except BadFileError as exc:
        os.close(fd)
        raise ValueError(f"{what} {path} {exc}") from None
    except BaseException:
        os.close(fd)
        raise
