"""Multi-process training: ``examples/launch_multihost.sh`` against a single process.

Two JAX processes on 127.0.0.1 (``jax.distributed.initialize``, gloo collectives over TCP)
with two CPU devices each train ``examples/distributed_train.py`` data-parallel over the
4-device global mesh; one process with four CPU devices trains the same run.  Both write
``model.npz``; the parameters must agree.  Both runs start together, in their own sessions,
bounded by :data:`TIMEOUT_S`; on a timeout or failure every process they started is stopped
(the launcher's own cleanup, then SIGKILL to whatever is left).  A third test checks that
cleanup: when one process of a launch fails, the launcher stops the others at once.

Float64 (``JAX_ENABLE_X64=1``) keeps the comparison tight: see :data:`PARAM_ATOL`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mlds_jax.io.checkpoint import load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the launcher and /proc are Linux's"),
]

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "examples" / "launch_multihost.sh"
EXAMPLE = ROOT / "examples" / "distributed_train.py"
#: digits, 64-16-10, 2 epochs of 23 adam steps (1437 rows, global batch 64 = 16 per device).
TRAIN_ARGS = ["--epochs", "2", "--hidden-sizes", "16", "--batch-size", "64", "--quiet"]
#: Wall-clock bound of the whole module's subprocesses (measured: ~30 s on an idle 2-core
#: machine, both runs side by side); each JAX process also gets the launcher's TIMEOUT.
TIMEOUT_S = 300
#: Single vs multi-process parameters, float64.  The two runs execute the same XLA program
#: on the same 4 shards of every batch; they differ only in how the gradient all-reduce sums
#: the 4 per-device partial gradients (in one process vs. gloo across two), i.e. in rounding:
#: |δg| <= 3 eps64 Σ|g_d| ~ 7e-16 for these O(1) partials.  Adam's step lr·g/(|g| + ε)
#: amplifies an absolute gradient error by at most lr/ε = 1e-3/1e-8 = 1e5, so <= 7e-11 per
#: step and ~3e-9 over the 46 steps: atol 1e-8 covers that worst case.  Observed: 1.1e-16
#: (1 ulp).  A real fault (a shard dropped or counted twice, rows misassigned) moves the
#: parameters by ~lr = 1e-3 per step, 10^5 above the tolerance.
PARAM_ATOL = 1e-8


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "MLDS_COORDINATOR",
        "MLDS_NUM_PROCESSES",
        "MLDS_PROCESS_ID",
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "JAX_NUM_CPU_DEVICES",
    ):
        env.pop(name, None)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    ]
    env["XLA_FLAGS"] = " ".join(flags)
    env.update(JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1", **extra)
    return env


def _session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # state, ppid, pgrp, session
                members.append(int(entry.name))
    return members


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it started.

    SIGTERM first (the launcher's trap stops its processes), then SIGKILL to whatever is
    left of its session: it was started with ``start_new_session``, so the session id is its
    pid and every process it started (``timeout`` makes process groups of its own, but not
    sessions) carries it; no other process can.
    """
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for pid in _session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _run_together(commands: dict[str, tuple[list[str], dict]], tmp: Path) -> dict:
    """Start every command at once; wait for all within TIMEOUT_S; stop them all if not."""
    procs, outcomes = {}, {}
    t0 = time.perf_counter()
    try:
        for name, (cmd, env) in commands.items():
            with open(tmp / f"{name}.out", "w") as out:
                procs[name] = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        for name, proc in procs.items():
            try:
                rc = proc.wait(timeout=max(1.0, TIMEOUT_S - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                rc = None
            outcomes[name] = {"rc": rc, "cmd": " ".join(map(str, commands[name][0]))}
    finally:
        for proc in procs.values():
            _stop(proc)
    for name in outcomes:
        outcomes[name]["output"] = (tmp / f"{name}.out").read_text(errors="replace")[-6000:]
    outcomes["seconds"] = time.perf_counter() - t0
    return outcomes


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("multihost")
    launch_env = _env(
        PORT=str(_free_port()),
        PYTHON=sys.executable,
        DEVICES_PER_PROCESS="2",
        TIMEOUT=str(TIMEOUT_S - 20),
        LOG_DIR=str(tmp / "logs"),
    )
    commands = {
        "multi": (
            ["bash", str(LAUNCHER), "2", *TRAIN_ARGS, "--out", str(tmp / "multi")],
            launch_env,
        ),
        "single": (
            [sys.executable, str(EXAMPLE), *TRAIN_ARGS, "--out", str(tmp / "single")],
            _env(JAX_NUM_CPU_DEVICES="4"),
        ),
    }
    outcomes = _run_together(commands, tmp)
    outcomes["tmp"] = tmp
    return outcomes


def _ok(run: dict) -> None:
    status = "timed out" if run["rc"] is None else f"exit status {run['rc']}"
    assert run["rc"] == 0, f"{run['cmd']}: {status}\n--- output (tail) ---\n{run['output']}"


def test_two_processes_train_over_four_devices(runs):
    print(f"\nmulti-host test: both runs in {runs['seconds']:.1f} s wall")
    _ok(runs["multi"])
    out = runs["multi"]["output"]
    assert "2 process(es), 4 cpu device(s) in the mesh (2 local)" in out, out
    assert "trained 2 epochs" in out, out
    log = (runs["tmp"] / "logs" / "process_1.log").read_text()
    assert "Traceback" not in log, log
    _ok(runs["single"])
    assert "1 process(es), 4 cpu device(s) in the mesh (4 local)" in runs["single"]["output"]


def test_multi_process_params_equal_single_process(runs):
    _ok(runs["multi"])
    _ok(runs["single"])
    with jax.enable_x64(True):
        multi, meta_m = load(runs["tmp"] / "multi" / "model.npz", return_metadata=True)
        single, meta_s = load(runs["tmp"] / "single" / "model.npz", return_metadata=True)
    assert [p.activation for p in multi] == [p.activation for p in single]
    worst = 0.0
    for a, b in zip(
        jax.tree_util.tree_leaves(multi), jax.tree_util.tree_leaves(single), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL)
        worst = max(worst, float(np.max(np.abs(a - b))))
    print(f"\nmulti vs single process: max |Δparam| = {worst:.3g} (tolerance {PARAM_ATOL})")
    assert (meta_m["processes"], meta_m["devices"], meta_m["local_devices"]) == (2, 4, 2)
    assert (meta_s["processes"], meta_s["devices"], meta_s["local_devices"]) == (1, 4, 4)
    assert meta_m["epochs"] == meta_s["epochs"] == 2
    for key in ("loss", "val_loss", "val_accuracy"):
        assert abs(meta_m[key] - meta_s[key]) <= PARAM_ATOL, (key, meta_m[key], meta_s[key])
    # training happened: the parameters moved away from the shared initialisation
    assert meta_s["val_accuracy"] > 0.2, meta_s  # chance: 0.1


def test_launcher_stops_every_process_when_one_fails(tmp_path):
    """A stand-in interpreter: rank 1 fails at once, rank 0 would wait forever (as a real
    rank 0 waits for its peer in a collective).  The launcher must fail and stop rank 0."""
    fake = tmp_path / "fake_python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'echo $$ > "$PID_DIR/rank_$MLDS_PROCESS_ID.pid"\n'
        'if [ "$MLDS_PROCESS_ID" = 1 ]; then sleep 1; echo "rank 1 fails" >&2; exit 3; fi\n'
        "exec sleep 600\n"
    )
    fake.chmod(0o755)
    env = _env(
        PORT=str(_free_port()),
        PYTHON=str(fake),
        TIMEOUT="600",
        LOG_DIR=str(tmp_path / "logs"),
        PID_DIR=str(tmp_path),
    )
    proc = subprocess.Popen(
        ["bash", str(LAUNCHER), "2"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)  # far less than the ranks' 600 s
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail("the launcher kept waiting after rank 1 failed")
    assert proc.returncode == 1, out
    assert "process 1 failed" in out, out
    assert "rank 1 fails" in (tmp_path / "logs" / "process_1.log").read_text()
    rank0 = int((tmp_path / "rank_0.pid").read_text())
    for _ in range(50):  # the TERM is delivered asynchronously: allow it 5 s
        if not Path(f"/proc/{rank0}").exists() or "Z" in _state(rank0):
            break
        time.sleep(0.1)
    else:
        os.kill(rank0, signal.SIGKILL)
        pytest.fail(f"rank 0 (pid {rank0}) survived the launcher")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
