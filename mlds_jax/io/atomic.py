"""All-or-nothing writes: one file (:func:`atomic_write`) or a directory of files as one set
(:func:`write_set`).

A file is written to a temporary name in its directory (``.NAME.<12 hex>.tmp``), flushed,
fsync'ed and renamed onto its target, so a reader sees the old file or the new one, never a
mixture; a failure (an exception, Ctrl-C, a full disk) removes the temporary file.  A process
killed outright (SIGKILL, power loss) can leave the temporary file behind:
:func:`remove_temporaries` removes such leftovers when no writer is running.

A set of files replaces a directory ``OUT`` as a whole: the new set is written into a sibling
staging directory ``.OUT.new-<12 hex>``, fsync'ed, and exchanged with ``OUT`` by one atomic
``renameat2(RENAME_EXCHANGE)`` on Linux (elsewhere, two renames through ``.OUT.old-<12 hex>``),
so ``OUT`` holds the complete earlier set until it holds the complete new one.  What a killed
writer leaves (a staging directory, an old set between the two renames) is cleaned up, or put
back, by :func:`recover_set`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Mapping

__all__ = [
    "Chunks",
    "atomic_write",
    "exchange",
    "fsync_dir",
    "recover_set",
    "remove_temporaries",
    "write_chunks",
    "write_set",
]

#: What a writer accepts: bytes (or any buffer), or an iterable of buffers written in order.
Chunks = bytes | bytearray | memoryview | Iterable

_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable; not possible on every platform, and not fatal."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_chunks(f, data: Chunks) -> None:
    """Write ``data`` (a buffer, or an iterable of buffers) to the binary file ``f``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        f.write(data)
        return
    for chunk in data:
        f.write(chunk)


def _check_parent(target: str, what: str) -> str:
    """The directory of ``target``, which must exist; clear errors naming what is in the way."""
    parent = os.path.dirname(os.path.abspath(target))
    probe = parent
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"cannot save {what} {target}: {probe} is a file, not a directory",
            target,
        )
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save {what} {target}: directory {parent} does not exist", target
        )
    if os.path.isdir(target):
        raise IsADirectoryError(
            errno.EISDIR, f"cannot save {what} {target}: it is a directory", target
        )
    return parent


def _temporary(parent: str, base: str, target: str, what: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(parent, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp  # mode 0o666 & ~umask, like open()
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise PermissionError(
                exc.errno,
                f"cannot save {what} {target}: directory {parent} is not writable ({exc.strerror})",
                target,
            ) from None  # errno and strerror are in the message
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot save {what} {target}: could not create a temporary file in {parent} "
                f"({exc.strerror})",
                target,
            ) from None  # errno and strerror are in the message
    raise FileExistsError(  # pragma: no cover - 100 random-name collisions
        errno.EEXIST,
        f"cannot save {what} {target}: no free temporary file name in {parent}",
        target,
    )


def atomic_write(target: str, data: Chunks, *, what: str = "checkpoint") -> None:
    """Write ``data`` to ``target`` all or nothing (see the module docstring).

    Args:
      target: the file to create or replace; its directory must exist.
      data: bytes, or an iterable of buffers (written as they come: a large file is streamed
        from the arrays, never assembled in memory).
      what: the kind of file, for the error messages ("cannot save <what> <target>: ...").

    Raises:
      FileNotFoundError / NotADirectoryError / IsADirectoryError: the directory is missing, a
        file is in its way, or ``target`` is a directory.
      PermissionError / OSError: the directory is not writable, or the disk is full (the
        earlier file, if any, is untouched and the temporary file removed).
    """
    parent = _check_parent(target, what)
    fd, tmp = _temporary(parent, os.path.basename(target), target, what)
    try:
        with os.fdopen(fd, "wb") as f:
            write_chunks(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def remove_temporaries(directory: str) -> list[str]:
    """Remove the temporary files (``.NAME.<12 hex>.tmp``) that killed :func:`atomic_write`
    calls left in ``directory``; call it only while no writer uses the directory.  Returns
    the names removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(directory):
            if _TEMP.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed.append(name)
    return removed


def exchange(a: str, b: str) -> bool:
    """Atomically swap the paths ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the OS or file system cannot, and nothing changed."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _siblings(out: str, kind: str) -> list[str]:
    parent, base = os.path.split(out)
    pattern = re.compile(rf"^\.{re.escape(base)}\.{kind}-[0-9a-f]{{12}}$")
    with contextlib.suppress(FileNotFoundError):
        return sorted(os.path.join(parent, n) for n in os.listdir(parent) if pattern.match(n))
    return []


def recover_set(out: str) -> list[str]:
    """Undo what a killed :func:`write_set` left beside ``out``: staging directories are
    removed, and if ``out`` itself is missing while an earlier set waits under its
    ``.OUT.old-*`` name (killed between the two renames), that set is put back.  Call it only
    while no writer uses ``out``.  Returns the paths removed or restored."""
    out = os.path.abspath(out)
    done = []
    olds = _siblings(out, "old")
    if olds and not os.path.lexists(out):
        os.rename(olds.pop(), out)
        done.append(out)
    for path in _siblings(out, "new") + olds:
        shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


def _place(stage: str, name: str, data) -> None:
    """One file of a set: bytes or chunks written and fsync'ed, or a path linked (or copied)."""
    dest = os.path.join(stage, name)
    if isinstance(data, os.PathLike):
        try:
            os.link(os.fspath(data), dest)  # the same inode: no copy, and never half written
            return
        except OSError:
            shutil.copyfile(os.fspath(data), dest)
        data = None
    with open(dest, "r+b" if data is None else "wb") as f:
        if data is not None:
            write_chunks(f, data)
        f.flush()
        os.fsync(f.fileno())


def write_set(out: str, files: Mapping[str, Chunks | os.PathLike]) -> None:
    """Replace the contents of the directory ``out`` with ``files`` as one set.

    Args:
      out: the directory (created if missing; its parent must exist).
      files: file name -> contents: bytes, an iterable of buffers, or the ``pathlib.Path`` of
        an existing file, hard-linked into the set (copied where links are impossible).  The
        file is never modified afterwards: :func:`atomic_write` replaces, never rewrites.

    On any failure ``out`` keeps its earlier complete set and the staging directory is removed
    (see the module docstring for what a killed process leaves, and :func:`recover_set`).
    """
    out = os.path.abspath(out)
    parent, base = os.path.split(out)
    token = secrets.token_hex(6)
    stage = os.path.join(parent, f".{base}.new-{token}")
    os.mkdir(stage)
    try:
        for name, data in files.items():
            _place(stage, name, data)
        fsync_dir(stage)
        if not os.path.exists(out):
            os.rename(stage, out)
        elif not exchange(stage, out):
            old = os.path.join(parent, f".{base}.old-{token}")
            os.rename(out, old)
            try:
                os.rename(stage, out)
            except BaseException:
                os.rename(old, out)
                raise
            stage = old  # the earlier set, removed below
        fsync_dir(parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
