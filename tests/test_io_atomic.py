"""mlds_jax.io.atomic: one file or a directory set, all or nothing; what a killed writer
leaves is cleaned up (or put back) by the next one.  The file-level faults of the formats'
writers (Ctrl-C, fsync, rename) are in test_io_checkpoint and test_io_safetensors."""

from __future__ import annotations

import os

import pytest
from helpers import patching

from mlds_jax.io import atomic


def test_atomic_write_streams_chunks_and_replaces(tmp_path):
    target = tmp_path / "f.bin"
    atomic.atomic_write(str(target), b"old")
    atomic.atomic_write(str(target), iter([b"ne", memoryview(b"w!")]))
    assert target.read_bytes() == b"new!"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_failing_midway_keeps_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.bin"
    atomic.atomic_write(str(target), b"old")

    def chunks():
        yield b"half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write(str(target), chunks(), what="training state")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_remove_temporaries_removes_only_what_atomic_write_leaves(tmp_path):
    for name in (".model.npz.0123456789ab.tmp", ".x.abcdefabcdef.tmp", "keep.tmp",
                 ".model.npz.tmp", "model.npz"):
        (tmp_path / name).write_bytes(b"")
    removed = atomic.remove_temporaries(str(tmp_path))
    assert sorted(removed) == [".model.npz.0123456789ab.tmp", ".x.abcdefabcdef.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".model.npz.tmp", "keep.tmp", "model.npz"]
    assert atomic.remove_temporaries(str(tmp_path / "missing")) == []


def test_out_is_replaced_as_a_set_or_not_at_all(tmp_path):
    out = tmp_path / "run"
    atomic.write_set(str(out), {"a": b"1", "b": b"2"})
    assert sorted(os.listdir(out)) == ["a", "b"]

    def failing_open(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with patching() as mp:  # disk full while writing the second file of the new set
        real_open = open
        calls = []

        def counting_open(path, mode="r", *a, **k):
            calls.append(path)
            if len(calls) == 2:
                failing_open()
            return real_open(path, mode, *a, **k)

        mp.setattr("builtins.open", counting_open)
        with pytest.raises(OSError, match="No space"):
            atomic.write_set(str(out), {"a": b"new", "c": b"3"})
    assert sorted(os.listdir(out)) == ["a", "b"] and (out / "a").read_bytes() == b"1"
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no staging directory left behind
    atomic.write_set(str(out), {"a": b"new", "c": b"3"})
    assert sorted(os.listdir(out)) == ["a", "c"] and (out / "a").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_write_set_links_a_path_and_falls_back_to_two_renames(tmp_path):
    state = tmp_path / "state.npz"
    state.write_bytes(b"state")
    out = tmp_path / "run"
    atomic.write_set(str(out), {"a": b"1"})
    with patching() as mp:  # no renameat2: the earlier set goes aside, the new one in
        mp.setattr(atomic, "exchange", lambda a, b: False)
        atomic.write_set(str(out), {"model": b"2", "train_state.npz": state})
    assert sorted(os.listdir(out)) == ["model", "train_state.npz"]
    assert os.path.samefile(out / "train_state.npz", state)  # linked, not copied
    assert sorted(os.listdir(tmp_path)) == ["run", "state.npz"]


def test_recover_set_puts_an_interrupted_swap_back_and_removes_staging(tmp_path):
    """A writer killed between the two renames of the fallback leaves no OUT and the earlier
    set under .OUT.old-*; a killed staging leaves .OUT.new-*."""
    out = tmp_path / "run"
    old = tmp_path / ".run.old-0123456789ab"
    old.mkdir()
    (old / "model.npz").write_bytes(b"earlier")
    stage = tmp_path / ".run.new-abcdefabcdef"
    stage.mkdir()
    (stage / "model.npz").write_bytes(b"half")
    (tmp_path / ".run2.new-abcdefabcdef").mkdir()  # another directory's: not touched
    done = atomic.recover_set(str(out))
    assert sorted(done) == sorted([str(out), str(stage)])
    assert (out / "model.npz").read_bytes() == b"earlier"
    assert sorted(os.listdir(tmp_path)) == [".run2.new-abcdefabcdef", "run"]
    assert atomic.recover_set(str(out)) == []


def test_exchange_swaps_two_directories_where_the_os_can(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"a")
    if not atomic.exchange(str(a), str(b)):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here; write_set uses two renames")
    assert (b / "x").read_bytes() == b"a" and os.listdir(a) == []
