"""``mlds-jax train --out DIR``: the run directory is always one complete set.

Each fault class runs the real command in a subprocess (plain JAX configuration, float32)
whose ``os.fsync`` or ``os.replace`` is wrapped to deliver a signal at a chosen moment (the
driver below: no private names, the command unchanged), into a ``DIR`` that already holds an
earlier run's set (made once, by a subprocess that also fills a persistent compilation cache
the others share: each then pays for its imports, not for XLA).  Each asserts the exit status
and message, that the earlier set is byte-identical (or, once the swap happened, that the new
set is complete), exactly what is left beside it, and that the next run cleans it up:

* SIGKILL while writing an epoch's state, while staging the new set, and just after the swap;
* SIGINT and SIGTERM during a second run into the same ``DIR`` (then ``--resume``);
* a full disk (``RLIMIT_FSIZE``): the first state write fails; the set's staging fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import mlds_jax as mj
from mlds_jax import cli
from mlds_jax.io import atomic
from mlds_jax.io.run_directory import RunDirectory, work_path

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="signals, /proc/self/fd and RLIMIT_FSIZE"
)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--dataset", "iris", "--hidden-sizes", "8", "--optimizer", "sgd",
        "--no-progress"]
FIRST = [*ARGS, "--epochs", "2", "--seed", "0"]
SECOND = [*ARGS, "--epochs", "3", "--seed", "1"]
SET = ["curves.png", "history.csv", "history.json", "model.npz", "train_state.npz"]
NEVER = r"^$"  # a pattern no path matches: no signal

#: The command, with os.<call> wrapped: the nth call whose path matches gets the signal
#: ("before": instead of the call; "after": once it is done); with "fsize", files cannot
#: grow past that many bytes (RLIMIT_FSIZE, set here in the child before anything runs, not
#: in a preexec_fn: that would fork the multithreaded JAX test process).
DRIVER = textwrap.dedent("""
    import json, os, re, resource, signal, sys
    spec = json.loads(sys.argv[1])
    # Ctrl-C as in a terminal, also when this test runs in a background job (there SIGINT
    # starts out ignored, and Python then installs no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if spec["fsize"] is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], resource.RLIM_INFINITY))
    real, seen = getattr(os, spec["call"]), []

    def wrapped(*args, **kwargs):
        target = args[1] if spec["call"] == "replace" else os.readlink(f"/proc/self/fd/{args[0]}")
        hit = re.search(spec["pattern"], os.fspath(target)) is not None
        if hit:
            seen.append(target)
        fire = hit and len(seen) == spec["nth"]
        if fire and spec["when"] == "before":
            os.kill(os.getpid(), spec["signal"])
        result = real(*args, **kwargs)
        if fire and spec["when"] == "after":
            os.kill(os.getpid(), spec["signal"])
        return result

    setattr(os, spec["call"], wrapped)
    from mlds_jax import cli
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax-cache")


def _faulted(argv, *, call, pattern, nth, sig, when="before", fsize=None, cache=None):
    spec = {"call": call, "pattern": pattern, "nth": nth, "signal": int(sig), "when": when,
            "fsize": fsize}
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1", MLDS_JAX_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec), *argv],
                          capture_output=True, text=True, env=env, timeout=300)


def _in_process(argv) -> tuple[int, str]:
    """The command in this process, float32 like the subprocesses; (status, stderr)."""
    err = io.StringIO()
    with (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err),
          jax.enable_x64(False)):
        rc = cli.main([*argv, "--no-compilation-cache"])
    return rc, err.getvalue()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _state_epoch(path: Path) -> int:
    with np.load(path) as npz:
        return json.loads(npz["__header__"].tobytes())["state"]["epoch"]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, cache) -> Path:
    """An earlier run's complete set (2 epochs, seed 0); it fills the compilation cache."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    p = _faulted([*FIRST, "--out", str(out)], call="fsync", pattern=NEVER, nth=1,
                 sig=signal.SIGKILL, cache=cache)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == SET
    return out


@pytest.fixture
def run(earlier, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(earlier, out)
    return out


def test_fault_sigkill_at_three_moments_while_writing(run, tmp_path, cache):
    before = _snapshot(run)
    partial = Path(work_path(run))
    # 1. killed writing epoch 2's state: its temporary file is fsync'ed, never renamed
    p = _faulted([*SECOND, "--out", str(run)], cache=cache, call="fsync", nth=2, sig=signal.SIGKILL,
                 pattern=r"run\.partial/\.train_state\.npz\.[0-9a-f]{12}\.tmp$")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run.partial"]
    left = sorted(os.listdir(partial))
    assert left[1:] == ["train_state.npz"] and re.fullmatch(r"\.train_state\.npz\..*\.tmp", left[0])
    assert _state_epoch(partial / "train_state.npz") == 1

    # 2. --resume finds epoch 1 and removes the stray file; killed staging the new set
    p = _faulted([*SECOND, "--resume", "--out", str(run)], cache=cache, call="fsync", nth=1,
                 sig=signal.SIGKILL, pattern=r"/\.run\.new-[0-9a-f]{12}/history\.json$")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert _snapshot(run) == before
    assert os.listdir(partial) == ["train_state.npz"] and _state_epoch(
        partial / "train_state.npz") == 3
    (stage,) = [n for n in os.listdir(tmp_path) if n.startswith(".run.new-")]
    assert sorted(os.listdir(tmp_path)) == sorted(["run", "run.partial", stage])

    # 3. --resume again (nothing left to train): killed just after the swap, before cleaning
    p = _faulted([*SECOND, "--resume", "--out", str(run)], cache=cache, call="fsync", nth=1,
                 sig=signal.SIGKILL, pattern=rf"^{re.escape(str(tmp_path))}$")
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert sorted(os.listdir(run)) == SET  # the new set, complete
    summary = json.loads((run / "history.json").read_text())["summary"]
    assert (summary["seed"], summary["epochs_run"]) == (1, 3)
    assert mj.load(run / "model.npz") and _state_epoch(run / "train_state.npz") == 3
    (old,) = [n for n in os.listdir(tmp_path) if n.startswith(".run.new-")]
    assert old != stage and _snapshot(tmp_path / old) == before  # the earlier set, swapped out
    assert sorted(os.listdir(tmp_path)) == sorted(["run", "run.partial", old])

    # a later run removes what the killed ones left
    rc, err = _in_process([*SECOND, "--resume", "--out", str(run)])
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["run"] and sorted(os.listdir(run)) == SET


def test_fault_sigint_and_sigterm_during_a_second_run(run, tmp_path, cache):
    before = _snapshot(run)
    state = Path(work_path(run)) / "train_state.npz"
    p = _faulted([*SECOND, "--out", str(run)], cache=cache, call="replace", nth=1,
                 sig=signal.SIGINT, when="after", pattern=r"run\.partial/train_state\.npz$")
    assert p.returncode == cli.EXIT_INTERRUPTED == 130, p.stderr
    assert _one_line(p.stderr) == (f"mlds-jax train: interrupted; the last completed epoch is "
                                   f"saved in {state}: rerun with --resume")
    assert _snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run.partial"]
    assert os.listdir(state.parent) == ["train_state.npz"] and _state_epoch(state) == 1

    p = _faulted([*SECOND, "--resume", "--out", str(run)], cache=cache, call="replace", nth=1,
                 sig=signal.SIGTERM, when="after", pattern=r"run\.partial/train_state\.npz$")
    assert p.returncode == cli.EXIT_TERMINATED == 143, p.stderr
    assert _one_line(p.stderr).startswith("mlds-jax train: terminated; the last completed "
                                          f"epoch is saved in {state}")
    assert _snapshot(run) == before
    assert os.listdir(state.parent) == ["train_state.npz"] and _state_epoch(state) == 2

    rc, err = _in_process([*SECOND, "--resume", "--out", str(run)])
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["run"] and sorted(os.listdir(run)) == SET
    assert json.loads((run / "history.json").read_text())["summary"]["epochs_run"] == 3


def test_fault_full_disk(run, tmp_path, cache):
    """RLIMIT_FSIZE: 1 KiB (the first training state cannot be written), then 16 KiB (every
    state fits, curves.png does not: the new set cannot be staged)."""
    before = _snapshot(run)
    state = Path(work_path(run)) / "train_state.npz"
    p = _faulted([*SECOND, "--out", str(run)], cache=cache, call="fsync", pattern=NEVER, nth=1,
                 sig=signal.SIGKILL, fsize=1024)
    assert p.returncode == 2, p.stderr
    assert _one_line(p.stderr) == "mlds-jax train: error: [Errno 27] File too large"
    assert _snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no epoch saved: no work directory

    p = _faulted([*SECOND, "--out", str(run)], cache=cache, call="fsync", pattern=NEVER, nth=1,
                 sig=signal.SIGKILL, fsize=16 * 1024)
    assert p.returncode == 2, p.stderr
    line = _one_line(p.stderr)
    assert line.startswith("mlds-jax train: error: [Errno 27] File too large")
    assert line.endswith(f"; the last completed epoch is saved in {state}: rerun with --resume")
    assert _snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["run", "run.partial"]
    assert os.listdir(state.parent) == ["train_state.npz"] and _state_epoch(state) == 3

    rc, err = _in_process([*SECOND, "--resume", "--out", str(run)])  # space again: published
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == ["run"] and sorted(os.listdir(run)) == SET


# --- the run directory itself --------------------------------------------------------------------
def test_a_second_run_into_the_same_directory_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "run"
    with RunDirectory(out, resume=False) as first:
        with pytest.raises(ValueError, match="another run is using"):
            RunDirectory(out, resume=False).__enter__()
        assert first.saved_state() is None
    assert os.listdir(tmp_path) == []  # nothing saved: the work directory went


def test_resume_without_a_state_and_bad_out_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        RunDirectory(tmp_path / "run", resume=True).__enter__()
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunDirectory(blocker, resume=False).__enter__()
    with pytest.raises(ValueError, match="is a file"):
        RunDirectory(blocker / "run", resume=False).__enter__()
    Path(f"{tmp_path / 'x'}.partial").write_text("not a directory")
    with pytest.raises(ValueError, match=r"x\.partial is in the way"):
        RunDirectory(tmp_path / "x", resume=False).__enter__()
    rc, err = _in_process([*ARGS, "--epochs", "1", "--resume", "--out", str(tmp_path / "r")])
    assert rc == 2 and "nothing to resume" in _one_line(err)


def test_a_fresh_run_starts_its_work_directory_afresh(tmp_path):
    out = tmp_path / "run"
    os.makedirs(work_path(out))
    Path(work_path(out), "train_state.npz").write_bytes(b"an interrupted run's")
    Path(work_path(out), ".train_state.npz.0123456789ab.tmp").write_bytes(b"killed")
    with RunDirectory(out, resume=False) as run:
        assert os.listdir(run.work) == []
        atomic.atomic_write(run.state_file, b"state", what="training state")
        run.publish({"model.npz": b"model"})
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert sorted(os.listdir(out)) == ["model.npz", "train_state.npz"]
