"""Data-parallel training (``mesh=``) on 4 simulated CPU devices, checked in subprocesses.

The device count of a JAX process is fixed when jax initialises, and this pytest process
already runs on one device; so the checks run in fresh processes with
``JAX_NUM_CPU_DEVICES=4`` (``tests/_parallel_worker.py``, two of them side by side, plus the
``mlds-jax`` CLI), started once for the module.  Each worker writes a JSON document of
figures; the tests below assert on them and print the failing records.

What is checked (the numbers refer to the worker's cases):

1. one ``make_train_step`` with a mesh == without, manual and autodiff gradients,
   cross_entropy / binary_cross_entropy / mse, batches of 8, 10, 3, 1 rows (padded to a
   multiple of 4 with zero-weight rows), float64 and float32: parameters and metrics;
   also on a 2 x 2 ("batch", "model") mesh;
2. ``fit`` with a ragged last batch (103 rows, batch 10, 3 epochs, validation data): params
   and history;
3. the mesh outputs live on all 4 devices (replicated), the compiled step takes X row-sharded
   (P("batch"), 3 of 12 rows per device) and contains an all-reduce;
4. gradients of a batch padded with zero-weight rows (``mlds_jax.parallel.pad_rows``) equal
   those of the unpadded batch (manual fused/general δ, autodiff; zero or junk padding);
5. ``mlds-jax train --data-parallel`` runs and reports the 4 devices;
6. a mesh without a "batch" axis is a ValueError naming the axes; a non-mesh a TypeError;
7. ``examples/distributed_train.py`` trains on the single-process path;
8. in this process (one device, no subprocess): ``pad_rows``' and ``data_parallel_mesh``'s
   argument checks and dtypes.

The tolerances and their justification are in the worker (``STEP_TOL``, ``GRAD_TOL``,
``FIT_TOL``).  Run the worker by hand to see all figures:
``python tests/_parallel_worker.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import BF16, F16, F32, F64, base_problem

import mlds_jax as mj

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "_parallel_worker.py"
N_DEVICES = 4
TIMEOUT_S = 300
#: Two worker processes run side by side (each case's cost is mostly XLA compilation).
WORKER_GROUPS = {
    "steps": ["devices", "step", "step_2d", "bad_mesh", "example"],
    "rest": ["devices", "sharding", "fit", "rowweights"],
}
CLI_ARGS = ["train", "--data-parallel", "--epochs", "2", "--dataset", "iris", "--no-progress"]


def _env() -> dict:
    env = dict(os.environ)
    env["JAX_NUM_CPU_DEVICES"] = str(N_DEVICES)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={N_DEVICES}"])
    for name in ("MLDS_COORDINATOR", "MLDS_NUM_PROCESSES", "MLDS_PROCESS_ID",
                 "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)  # the example must take its single-process path
    return env


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("mlds-jax")
    if script.is_file():
        return [str(script), *CLI_ARGS]
    return [sys.executable, "-m", "mlds_jax.cli", *CLI_ARGS]


def _tail(path: Path, n: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "<no output>"
    return text[-n:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Start the workers and the CLI together; wait; return their outcomes by name."""
    tmp = tmp_path_factory.mktemp("parallel")
    env = _env()
    commands = {name: [sys.executable, str(WORKER), *cases, "--json", str(tmp / f"{name}.json")]
                for name, cases in WORKER_GROUPS.items()}
    commands["cli"] = _cli_command()
    procs = {}
    t0 = time.perf_counter()
    for name, cmd in commands.items():
        with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
            procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    outcomes = {}
    for name, proc in procs.items():
        try:
            rc = proc.wait(timeout=max(1.0, TIMEOUT_S - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        outcome = {"cmd": " ".join(commands[name]), "rc": rc,
                   "stdout": _tail(tmp / f"{name}.out", 20000),
                   "stderr": _tail(tmp / f"{name}.err")}
        json_path = tmp / f"{name}.json"
        if json_path.exists():
            outcome["results"] = json.loads(json_path.read_text())
        outcomes[name] = outcome
    outcomes["seconds"] = time.perf_counter() - t0
    return outcomes


def _results(runs: dict, group: str) -> dict:
    """All case records of one worker, or a failure that shows why there are none."""
    run = runs[group]
    if run["rc"] != 0 or "results" not in run:
        status = "timed out" if run["rc"] is None else f"exit status {run['rc']}"
        pytest.fail(f"parallel worker {group!r} {status}\ncommand: {run['cmd']}\n"
                    f"--- stderr (tail) ---\n{run['stderr']}")
    return run["results"]


def _case(runs: dict, case: str, group: str | None = None):
    """The worker's result for ``case`` (raised exceptions are shown with their traceback)."""
    group = group or next(g for g, cases in WORKER_GROUPS.items() if case in cases)
    record = _results(runs, group).get(case)
    if record is None:
        pytest.fail(f"worker {group!r} returned no result for case {case!r}")
    if "error" in record:
        pytest.fail(f"case {case!r} raised in the 4-device worker:\n{record['error']}")
    return record["result"]


def _label(rec: dict, keys) -> str:
    return " ".join(f"{k}={rec[k]}" for k in keys if k in rec)


def _check_figures(records: list[dict], fields, keys) -> str:
    """Fail listing every record whose figures exceed the tolerance; return a summary."""
    bad = []
    for rec in records:
        for field in fields:
            fig = rec[field]
            if "error" in fig or not fig["ratio"] <= 1.0:
                bad.append(f"  {_label(rec, keys)} {field}: "
                           f"max|Δ|={fig.get('max_abs', math.nan):.3g} "
                           f"max|Δ|/max|ref|={fig.get('max_rel', math.nan):.3g} "
                           f"tolerance used={fig.get('ratio', math.nan):.3g}x "
                           f"{fig.get('error', '')}")
    summary = _summary(records, fields)
    assert not bad, "mesh and single-device results differ beyond tolerance:\n" + "\n".join(
        bad) + "\n" + summary
    return summary


def _summary(records: list[dict], fields) -> str:
    lines = []
    for dtype in ("float64", "float32"):
        rs = [r for r in records if r.get("dtype", "float64") == dtype]
        for field in fields:
            if rs:
                worst = {k: max(r[field].get(k, math.nan) for r in rs)
                         for k in ("max_abs", "max_rel", "ratio")}
                lines.append(f"  {dtype} {field}: max|Δ| = {worst['max_abs']:.3g}, "
                             f"max|Δ|/max|ref| = {worst['max_rel']:.3g}, tolerance used "
                             f"{worst['ratio']:.3g}x ({len(rs)} cases)")
    return "\n".join(lines)


# --- the tests --------------------------------------------------------------------------------
def test_workers_see_four_cpu_devices(runs):
    for group in WORKER_GROUPS:
        info = _case(runs, "devices", group)
        assert info["device_count"] == N_DEVICES and info["platform"] == "cpu", info


def test_train_step_with_mesh_equals_single_device(runs):
    records = _case(runs, "step")
    combos = {(r["dtype"], r["loss"], r["grads"], r["n"]) for r in records}
    assert len(combos) == len(records) == 36, sorted(combos)
    assert {r["n"] for r in records} == {8, 10, 3, 1}
    summary = _check_figures(records, ("params", "metrics"), ("dtype", "loss", "grads", "n"))
    print("\ntrain step, mesh vs single device:\n" + summary)
    for r in records:
        assert r["metric_keys"], f"metric names differ: {_label(r, ('dtype', 'loss', 'n'))}"
        assert r["dtype_kept"], f"parameter dtype changed: {_label(r, ('dtype', 'loss'))}"


def test_train_step_on_2d_mesh_equals_single_device(runs):
    records = _case(runs, "step_2d")
    assert len(records) == 4
    _check_figures(records, ("params", "metrics"), ("grads", "n"))
    assert all(r["param_devices"] == [N_DEVICES] for r in records)


def test_fit_with_mesh_equals_single_device(runs):
    records = _case(runs, "fit")
    assert len(records) == 3
    summary = _check_figures(records, ("params", "history"), ("dtype", "grads"))
    print("\nfit (103 rows, batch 10, 3 epochs), mesh vs single device:\n" + summary)
    for r in records:
        assert r["epochs"] == 3 and r["stop_reasons"] == ["completed", "completed"], r
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(r["history_keys"]), r
        assert r["final_loss"] < r["first_loss"], f"fit did not train: {r}"


def test_outputs_live_on_all_devices(runs):
    steps, fits = _case(runs, "step"), _case(runs, "fit")
    for r in steps:
        where = _label(r, ("dtype", "loss", "grads", "n"))
        assert r["param_devices"] == [N_DEVICES], f"params not on all devices: {where}"
        assert r["metric_devices"] == [N_DEVICES], f"metrics not on all devices: {where}"
        assert r["replicated"], f"outputs not replicated: {where}"
    for r in fits:
        assert r["param_devices"] == [N_DEVICES], f"fit params not on all devices: {r}"


def test_batch_is_sharded_inside_the_step(runs):
    s = _case(runs, "sharding")
    assert s["all_reduce_in_mesh_step"], "no all-reduce in the compiled mesh step"
    assert not s["all_reduce_in_single_step"], "single-device step has an all-reduce?"
    assert s["x_spec"] == "P('batch',)", s
    assert s["x_global_shape"] == [12, 5] and s["padded_rows"] == 2, s  # 10 rows → 12
    assert s["x_shard_shape"] == [3, 5] and s["w_shard_shape"] == [3], s
    assert s["x_devices"] == N_DEVICES and s["params_replicated"], s
    assert s["placed_shard_shapes"] == [[3, 5]] and s["placed_devices"] == N_DEVICES, s
    assert s["row_weights"] == [0.1] * 10 + [0.0] * 2, s["row_weights"]


def test_row_weights_make_padding_invisible(runs):
    records = _case(runs, "rowweights")
    # 2 dtypes x 4 losses x 3 sizes x 3 gradient methods
    assert len(records) == 72
    assert {r["method"] for r in records} == {"manual_fused", "manual_general", "autodiff"}
    summary = _check_figures(records, ("zero_pad", "junk_pad"),
                             ("dtype", "loss", "n", "padded_to", "method"))
    print("\npadded (row weights) vs unpadded gradients:\n" + summary)
    for r in records:
        assert r["padded_to"] % N_DEVICES == 0 and r["padded_to"] >= r["n"], r
        assert math.isclose(r["weights_sum"], 1.0, rel_tol=1e-6), r


def test_bad_mesh_errors(runs):
    records = {(r["mesh"], r["api"]): r for r in _case(runs, "bad_mesh")}
    for api in ("make_train_step", "fit"):
        for mesh, axes in (("mesh_data", ["data"]), ("mesh_data_model", ["data", "model"])):
            r = records[(mesh, api)]
            assert r["raised"] == "ValueError", r
            for name in ["batch", *axes]:
                assert repr(name) in r["message"], f"{name!r} not named: {r}"
        for mesh in ("device_list", "string", "sharding"):
            r = records[(mesh, api)]
            assert r["raised"] == "TypeError", r
            assert "Mesh" in r["message"], r


def test_cli_data_parallel(runs):
    run = runs["cli"]
    out = run["stdout"]
    assert run["rc"] == 0, (f"{run['cmd']} exited {run['rc']}\n--- stdout ---\n{out}\n"
                            f"--- stderr ---\n{run['stderr']}")
    assert "4 CPU devices (data parallel)" in out, out
    assert "trained 2 epochs" in out, out


def test_distributed_example_single_process(runs):
    r = _case(runs, "example")
    m = r["metrics"]
    assert m["processes"] == 1 and m["devices"] == N_DEVICES and m["epochs"] == 2, m
    assert all(math.isfinite(m[k]) for k in ("loss", "val_loss", "val_accuracy")), m
    assert m["val_accuracy"] > 0.8, f"digits, 2 epochs: expected > 80% (chance 10%): {m}"
    assert r["wrote_model"] and r["saved_sizes"] == [64, 32, 10], r
    assert "4 cpu device(s) in the mesh" in r["stdout"], r["stdout"]
    assert r["no_env_settings"] is None
    assert r["env_settings"] == {"coordinator_address": "127.0.0.1:9", "num_processes": 2,
                                 "process_id": 1}
    assert r["partial_env_error"] and "MLDS_NUM_PROCESSES" in r["partial_env_error"]


def test_no_subprocess_timed_out(runs):
    """Every subprocess finished (the timings are printed with ``pytest -s``)."""
    print(f"\nparallel subprocesses: {runs['seconds']:.1f} s wall; per case: " + ", ".join(
        f"{case} {rec.get('seconds')} s" for g in WORKER_GROUPS
        for case, rec in runs[g].get("results", {}).items()))
    late = [name for name in [*WORKER_GROUPS, "cli"] if runs[name]["rc"] is None]
    assert not late, f"timed out after {TIMEOUT_S} s: {late}"


# --- in-process, one device: pad_rows' and data_parallel_mesh's argument checks and dtypes --------
@pytest.mark.parametrize(("args", "exc", "regex"), [
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), 0), ValueError, r"multiple must be >= 1"),
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), -2), ValueError, r"multiple must be >= 1"),
    ((jnp.zeros((3, 2)), jnp.zeros((3, 1)), 1.5), TypeError, r"multiple must be an int"),
    ((jnp.zeros((0, 2)), jnp.zeros((0, 1)), 2), ValueError, r"X is empty \(0 rows\)"),
    ((jnp.zeros((3, 2)), jnp.zeros((3,)), 2), ValueError, r"pad_rows needs 2-D Y"),
    ((jnp.zeros(3), jnp.zeros((3, 1)), 2), ValueError, r"pad_rows needs 2-D X"),
    ((jnp.zeros((3, 2)), jnp.zeros((4, 1)), 2), ValueError, r"X has 3 rows but Y has 4"),
    ((jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 1)), 2), TypeError,
     r"pad_rows needs floating-point X, got int32"),
])
def test_bad_pad_rows(args, exc, regex):
    with pytest.raises(exc, match=regex):
        mj.parallel.pad_rows(*args)


@pytest.mark.parametrize("dtype", [F16, BF16, F32, F64])
def test_bad_pad_rows_dtypes_work(dtype):
    X = jnp.arange(6.0, dtype=dtype).reshape(3, 2)
    Xp, Yp, w = mj.parallel.pad_rows(X, jnp.ones((3, 1), dtype), 2)
    assert Xp.shape == (4, 2) and Yp.shape == (4, 1) and w.dtype == dtype
    np.testing.assert_allclose(np.asarray(w, F64), [1 / 3] * 3 + [0],
                               rtol=4 * float(jnp.finfo(dtype).eps))


def test_bad_mesh_arguments():
    with pytest.raises(ValueError, match=r"needs at least one device, got none"):
        mj.data_parallel_mesh([])
    with pytest.raises(TypeError, match=r"devices must be jax\.Device objects .*got str 'c'"):
        mj.data_parallel_mesh("cpu")
    params, X, Y, _ = base_problem("mse")
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        mj.fit(params, X, Y, optimizer=optax.sgd(0.1), mesh="cpu", progress=False)
    assert mj.data_parallel_mesh().axis_names == ("batch",)

