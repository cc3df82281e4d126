"""A training run's output directory, published as one complete set.

``mlds-jax train --out DIR`` writes ``model.npz``, ``history.json``, ``history.csv``,
``curves.png`` and the final ``train_state.npz`` into ``DIR`` only when the run is complete,
all at once (:func:`mlds_jax.io.atomic.write_set`).  While it runs, its training state lives
in the sibling work directory ``DIR.partial/`` (the path :func:`work_path` gives), outside the
published set:

* an interrupted (Ctrl-C, SIGTERM), killed or failed (full disk) run leaves ``DIR`` exactly as
  it was, byte for byte; ``DIR.partial/train_state.npz`` then holds its last completed epoch,
  which ``--resume`` continues (a finished run's ``DIR/train_state.npz`` is continued when
  there is no work directory, to train a finished run for more epochs);
* the next run into ``DIR`` removes what a killed run left behind: staging directories
  ``.DIR.new-*``, an earlier set caught between two renames ``.DIR.old-*`` (put back), and
  temporary files in ``DIR.partial/``; a run without ``--resume`` also starts its work
  directory afresh;
* a run that saved no epoch removes its (empty) work directory; a published run removes it.

The work directory is locked (``flock``, where the OS has it) while a run uses it, so two runs
into the same ``DIR`` cannot clean up after each other: the second is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from mlds_jax.io import atomic
from mlds_jax.io.train_state import STATE_FILE, state_path

__all__ = ["WORK_SUFFIX", "RunDirectory", "work_path"]

#: The work directory of ``DIR`` is ``DIR`` + this suffix.
WORK_SUFFIX = ".partial"


def work_path(out: str | os.PathLike) -> str:
    """The work directory of the run directory ``out``: ``out.partial`` beside it."""
    return os.path.abspath(os.fspath(out)) + WORK_SUFFIX


def _lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the open directory ``fd``; False if held elsewhere
    (True where the OS has no ``flock``: nothing to enforce)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class RunDirectory:
    """The run directory ``out`` and its work directory, for one run (a context manager).

    >>> with RunDirectory("runs/digits", resume=False) as run:
    ...     fit(..., checkpoint_dir=run.work)   # the state of every epoch: run.state_file
    ...     run.publish({"model.npz": data, ...})  # the set, with the final state

    Args:
      out: the directory the finished run's files are published in.
      resume: continue the run whose state is in the work directory (or, without one, the
        finished run in ``out``); False starts the work directory afresh.

    Raises (on entering):
      ValueError: ``out`` cannot be a run directory (a file is in the way, it is a
        file system root, another run holds it).
      FileNotFoundError: ``resume`` without any training state to resume.
      OSError: the parent directory cannot be created or written.
    """

    def __init__(self, out: str | os.PathLike, *, resume: bool):
        self.out = os.path.abspath(os.fspath(out))
        self.work = work_path(out)
        self.resume = resume
        self._fd = -1

    @property
    def state_file(self) -> str:
        """The training state of this run: ``work/train_state.npz``."""
        return state_path(self.work)

    def __enter__(self) -> RunDirectory:
        parent, base = os.path.split(self.out)
        if not base:
            raise ValueError(f"cannot use {self.out} as a run directory: it is a root")
        probe = parent
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise ValueError(f"cannot create the run directory {self.out}: {probe} is a file")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"{self.out} is a file, not a run directory")
        os.makedirs(parent, exist_ok=True)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, f"cannot write the run directory's parent {parent}")
        self._take()
        try:
            atomic.recover_set(self.out)
            atomic.remove_temporaries(self.work)
            self._seed()
        except BaseException:
            self.close()
            raise
        return self

    def _take(self) -> None:
        """Create and lock the work directory (the path must still name the locked one)."""
        for _ in range(10):
            if os.path.islink(self.work) or (
                os.path.lexists(self.work) and not os.path.isdir(self.work)
            ):
                raise ValueError(f"{self.work} is in the way of the run's work directory")
            os.makedirs(self.work, exist_ok=True)
            fd = os.open(self.work, os.O_RDONLY)
            if not _lock(fd):
                os.close(fd)
                raise ValueError(
                    f"another run is using {self.out} (its work directory {self.work} is "
                    f"locked); wait for it or choose another directory"
                )
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.work)):
                    self._fd = fd
                    return
            os.close(fd)  # removed by a run that just finished: take the new one
        raise ValueError(f"could not lock the work directory {self.work}")  # pragma: no cover

    def _seed(self) -> None:
        """The work directory's state: none for a fresh run; for ``resume`` the interrupted
        run's, else a link to (or copy of) the finished run's."""
        if not self.resume:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.state_file)
            return
        if os.path.exists(self.state_file):
            return
        finished = state_path(self.out)
        if not os.path.isfile(finished):
            raise FileNotFoundError(
                2,
                f"nothing to resume: no training state in {self.work} (an interrupted run) "
                f"nor in {self.out} (a finished run)",
                self.state_file,
            )
        try:  # the same inode: fit replaces its state file, it never rewrites it
            os.link(finished, self.state_file)
        except OSError:
            atomic.atomic_write(self.state_file, Path(finished).read_bytes(), what="training state")

    def saved_state(self) -> str | None:
        """The work directory's training state, if a completed epoch was saved."""
        return self.state_file if os.path.isfile(self.state_file) else None

    def publish(self, files: Mapping[str, atomic.Chunks | os.PathLike]) -> None:
        """Replace ``out`` with ``files`` and the final training state, as one set; then the
        work directory goes."""
        state = {STATE_FILE: Path(self.state_file)} if self.saved_state() else {}
        atomic.write_set(self.out, {**files, **state})
        self.discard()

    def discard(self) -> None:
        """Remove the work directory (a run that leaves nothing to resume)."""
        shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> None:
        """Release the lock; a work directory without a saved state is removed."""
        if self._fd < 0:
            return
        if os.path.isdir(self.work) and self.saved_state() is None:
            self.discard()
        os.close(self._fd)
        self._fd = -1

    def __exit__(self, *exc) -> None:
        self.close()
