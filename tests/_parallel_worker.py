"""Data-parallel checks in a process of their own, with 4 simulated CPU devices.

``tests/test_parallel.py`` runs ``python tests/_parallel_worker.py --json OUT``; this script
sets the device count *before* importing jax (it cannot change once jax is initialised, which
is why it is not done in the main pytest process), runs every case, and writes one JSON
document of figures to OUT.  The test file asserts on them.  Run it by hand to see the
figures::

    python tests/_parallel_worker.py                 # all cases, JSON on stdout
    python tests/_parallel_worker.py step rowweights  # some cases

Each case returns a dict; an exception inside a case is recorded as {"error": traceback} so
the test shows it instead of a bare non-zero exit status.

Like ``tests/conftest.py``: float64 enabled, strict dtype promotion and rank promotion
"raise", so the sharded code paths must be clean under them too.  float32 cases pass
``dtype=jnp.float32`` explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import pathlib
import sys
import tempfile
import time
import traceback

N_DEVICES = 4
os.environ["JAX_NUM_CPU_DEVICES"] = str(N_DEVICES)
os.environ["JAX_PLATFORMS"] = "cpu"
_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                  if "xla_force_host_platform_device_count" not in f)
_flags += f" --xla_force_host_platform_device_count={N_DEVICES}"
# XLA's CPU compile (LLVM -O3) dominates this script's run time: ~1 s per tiny program on a
# small machine, and the grid compiles ~100 of them.  LLVM -O0 cuts that ~3x.  It changes
# only the machine code of each kernel, not the HLO: the sharding, the SPMD partitioning and
# the all-reduce under test are the same, and both sides of every comparison use the same
# flags.  MLDS_PARALLEL_FULL_OPT=1 keeps XLA's default.
if os.environ.get("MLDS_PARALLEL_FULL_OPT") != "1" and "backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import mlds_jax as mj  # noqa: E402
from mlds_jax import core, parallel  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --- tolerances -------------------------------------------------------------------------------
# A pass means |a - b| <= atol + rtol * |b| for every entry; each record reports
# "ratio" = max over entries of |a - b| / (atol + rtol |b|), so ratio <= 1 passes.
#
# One step: the mesh run and the single-device run do the same arithmetic except that every sum
# over the batch rows (dW = A_prevᵀ δ, db = 1ᵀ δ, the loss and accuracy averages) is grouped
# differently: 4 per-device partial sums, then the all-reduce; padded rows add exact zeros
# (their weight is 0, so their row of δ is 0).  Regrouping a sum of N terms changes it by at
# most ~N·eps·Σ|terms| (N <= 12 here), and the update W - α·g (α = 0.1) adds one rounding of
# W: a few ulp of the parameters' O(0.1 .. 1) scale at most.  Measured: <= 1 ulp of the
# largest entry (float64 ~1.1e-16, float32 ~6e-8 on the parameters; the printed figures).
#   float64: rtol 1e-12 (~4500 eps64), atol 1e-14 (entries near 0): generous, and still ten
#     orders of magnitude below what any real bug gives (a missing 1/N, a padded row that
#     counts, a device's rows dropped: all O(1e-2) or more).
#   float32: rtol 1e-6 (~8 eps32), atol 1e-7 (~1 eps32 at the parameters' scale).
STEP_TOL = {"float64": {"rtol": 1e-12, "atol": 1e-14}, "float32": {"rtol": 1e-6, "atol": 1e-7}}
# Raw gradients (padded vs unpadded): the same regrouping, but without the factor α = 0.1, and
# an entry that is a near-cancelling sum of O(1) terms carries an absolute error of a few ulp
# of the *terms*, not of itself: atol is a few eps at the gradients' O(1) scale.
GRAD_TOL = {"float64": {"rtol": 1e-12, "atol": 1e-14}, "float32": {"rtol": 1e-6, "atol": 1e-6}}
# fit: 3 epochs x 11 adam updates.  Each update's ulp-level differences are carried forward
# (adam rescales each entry by 1/sqrt(v), a relative change, so it does not amplify them);
# allow 10x the one-step tolerance.  Measured: <= 2 ulp after the 33 updates.
FIT_TOL = {"float64": {"rtol": 1e-11, "atol": 1e-13}, "float32": {"rtol": 1e-5, "atol": 1e-6}}

# OPTAX_STRICT: optax.adam's bias correction computes ``decay ** count`` (Python float ** int32
# step count), which strict promotion rejects inside optax itself; the adam runs (fit, the
# example) therefore use standard promotion.

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}
#: loss -> output activation of the test network.
LOSS_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "identity",
               "half_squared_error": "sigmoid"}
#: (dtype, grads) of the fit comparisons (each costs two compilations of a whole epoch).
FIT_RUNS = (("float64", "manual"), ("float64", "autodiff"), ("float32", "manual"))
STEP_LOSSES = ("cross_entropy", "binary_cross_entropy", "mse")
GRADS = ("manual", "autodiff")
#: Batch sizes of the step grid: 8 divides over 4 devices; 10, 3 and 1 are padded (to 12, 4 and
#: 4 rows; with 3 and 1 some devices hold only padding).  float32 runs the two padded sizes
#: that differ most (each case costs two XLA compilations; float64 runs them all).
STEP_BATCHES = {"float64": (8, 10, 3, 1), "float32": (10, 3)}
SIZES = (5, 7, 3)


# --- helpers ----------------------------------------------------------------------------------
def problem(loss: str, n: int, dtype_name: str, seed: int = 0, sizes=SIZES):
    """Random (params, X, Y) for ``loss``: tanh hidden layer, nonzero biases, float targets
    (integer labels for cross_entropy, so the step's label handling runs as well)."""
    dtype = DTYPES[dtype_name]
    kp, kb, kx, ky = jax.random.split(jax.random.key(seed), 4)
    params = mj.init_mlp(kp, list(sizes), hidden="tanh", output=LOSS_OUTPUT[loss], dtype=dtype)
    bkeys = jax.random.split(kb, len(params))
    params = tuple(
        mj.Dense(W=layer.W, b=0.1 * jax.random.normal(k, layer.b.shape, dtype),
                 activation=layer.activation)
        for layer, k in zip(params, bkeys, strict=True)
    )
    X = jax.random.normal(kx, (n, sizes[0]), dtype)
    K = sizes[-1]
    if loss == "cross_entropy":
        Y = jax.random.randint(ky, (n,), 0, K, dtype=jnp.int32)
    elif loss == "binary_cross_entropy":
        Y = jax.random.uniform(ky, (n, K), dtype)
    else:
        Y = jax.random.normal(ky, (n, K), dtype)
    return params, X, Y


def targets_2d(Y, K: int, dtype) -> jax.Array:
    return jax.nn.one_hot(Y, K, dtype=dtype) if Y.ndim == 1 else Y


def compare(a, b, tol: dict) -> dict:
    """Figures for two pytrees (or dicts of scalars) that should agree: max |a - b|, max
    |a - b| / max |b| per leaf, and ratio = max |a - b| / (atol + rtol |b|) (<= 1 passes)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb) or jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return {"max_abs": math.inf, "max_rel": math.inf, "ratio": math.inf,
                "error": f"structures differ: {jax.tree_util.tree_structure(a)} vs "
                         f"{jax.tree_util.tree_structure(b)}"}
    max_abs = max_rel = ratio = 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return {"max_abs": math.inf, "max_rel": math.inf, "ratio": math.inf,
                    "error": f"shapes differ: {x.shape} vs {y.shape}"}
        if not x.size:
            continue
        d = np.abs(x - y)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return {"max_abs": math.inf, "max_rel": math.inf, "ratio": math.inf,
                    "error": "non-finite values"}
        max_abs = max(max_abs, float(d.max()))
        scale = float(np.abs(y).max())
        if scale > 0:
            max_rel = max(max_rel, float(d.max()) / scale)
        ratio = max(ratio, float(np.max(d / (tol["atol"] + tol["rtol"] * np.abs(y)))))
    return {"max_abs": max_abs, "max_rel": max_rel, "ratio": ratio}


def n_devices_of(tree) -> list[int]:
    """Size of every leaf's device set."""
    return sorted({len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(tree)})


def mesh_1d(name: str = "batch") -> jax.sharding.Mesh:
    return jax.make_mesh((N_DEVICES,), (name,))


# --- cases ------------------------------------------------------------------------------------
def case_devices() -> dict:
    return {"device_count": jax.device_count(), "platform": jax.devices()[0].platform,
            "xla_flags": os.environ["XLA_FLAGS"], "jax": jax.__version__}


def case_step() -> list[dict]:
    """(1) make_train_step with a mesh == without, for losses x grads x batch sizes x dtypes;
    (3) the outputs of the mesh step live on all 4 devices."""
    out = []
    mesh = mesh_1d()
    opt = optax.sgd(0.1)
    for dtype_name in DTYPES:
        for loss in STEP_LOSSES:
            for grads in GRADS:
                single = mj.make_train_step(opt, loss, grads)
                sharded = mj.make_train_step(opt, loss, grads, mesh=mesh)
                for n in STEP_BATCHES[dtype_name]:
                    params, X, Y = problem(loss, n, dtype_name, seed=n)
                    p0, s0, m0 = single(params, opt.init(params), X, Y)
                    p1, s1, m1 = sharded(params, opt.init(params), X, Y)
                    tol = STEP_TOL[dtype_name]
                    out.append({
                        "dtype": dtype_name, "loss": loss, "grads": grads, "n": n,
                        "params": compare(p1, p0, tol), "metrics": compare(m1, m0, tol),
                        "metric_keys": sorted(m1) == sorted(m0),
                        "param_devices": n_devices_of(p1), "metric_devices": n_devices_of(m1),
                        "replicated": all(x.sharding.is_fully_replicated
                                          for x in jax.tree_util.tree_leaves((p1, m1))),
                        "dtype_kept": all(x.dtype == DTYPES[dtype_name]
                                          for x in jax.tree_util.tree_leaves(p1)),
                    })
    return out


def case_step_2d() -> list[dict]:
    """A 2 x 2 mesh ("batch", "model"): rows split over the 2 "batch" shards only."""
    mesh = jax.make_mesh((2, 2), ("batch", "model"))
    opt = optax.sgd(0.1)
    out = []
    for grads in GRADS:
        for n in (7, 8):
            params, X, Y = problem("cross_entropy", n, "float64", seed=n)
            p0, _, m0 = mj.make_train_step(opt, "cross_entropy", grads)(
                params, opt.init(params), X, Y)
            p1, _, m1 = mj.make_train_step(opt, "cross_entropy", grads, mesh=mesh)(
                params, opt.init(params), X, Y)
            tol = STEP_TOL["float64"]
            out.append({"grads": grads, "n": n, "params": compare(p1, p0, tol),
                        "metrics": compare(m1, m0, tol), "param_devices": n_devices_of(p1)})
    return out


def case_fit() -> list[dict]:
    """(2) fit with a ragged last batch (103 rows, batch 10 → 10 full + 3), 3 epochs, with
    validation data: mesh == no mesh for params and every history entry."""
    out = []
    mesh = mesh_1d()
    for dtype_name, grads in FIT_RUNS:
        params, X, Y = problem("cross_entropy", 103 + 17, dtype_name, seed=7,
                               sizes=(5, 8, 4))
        Xt, Yt, Xv, Yv = X[:103], Y[:103], X[103:], Y[103:]
        kw = dict(loss="cross_entropy", optimizer=optax.adam(1e-2), epochs=3,
                  batch_size=10, key=jax.random.key(3), validation_data=(Xv, Yv),
                  grads=grads, progress=False)
        with jax.numpy_dtype_promotion("standard"):  # see OPTAX_STRICT
            p0, h0 = mj.fit(params, Xt, Yt, **kw)
            p1, h1 = mj.fit(params, Xt, Yt, mesh=mesh, **kw)
        tol = FIT_TOL[dtype_name]
        keys0 = sorted(k for k in h0 if k != "time")
        keys1 = sorted(k for k in h1 if k != "time")
        hist = (compare({k: h1[k] for k in keys1}, {k: h0[k] for k in keys0}, tol)
                if keys0 == keys1 else {"ratio": math.inf, "error": "history keys differ"})
        out.append({
            "dtype": dtype_name, "grads": grads, "params": compare(p1, p0, tol),
            "history": hist, "history_keys": keys1, "epochs": len(h1.get("loss", [])),
            "stop_reasons": [h0.stop_reason, h1.stop_reason],
            "param_devices": n_devices_of(p1), "final_loss": h1["loss"][-1],
            "first_loss": h1["loss"][0],
        })
    return out


def case_sharding() -> dict:
    """(3) inside the compiled mesh step the batch is row-sharded and the gradients are
    all-reduced; the single-device step has no collective (so the check discriminates)."""
    mesh = mesh_1d()
    opt = optax.sgd(0.1)
    params, X, Y = problem("cross_entropy", 10, "float64")
    Y = targets_2d(Y, SIZES[-1], jnp.float64)
    Xp, Yp, w = parallel.pad_rows(X, Y, N_DEVICES)
    step = mj.make_train_step(opt, "cross_entropy", mesh=mesh)
    compiled = step.jitted.lower(params, opt.init(params), Xp, Yp, w).compile()
    text = compiled.as_text()
    in_shardings = compiled.input_shardings[0]
    x_sharding, w_sharding = in_shardings[2], in_shardings[4]
    p_sharding = jax.tree_util.tree_leaves(in_shardings[0])[0]
    single = mj.make_train_step(opt, "cross_entropy").jitted.lower(
        params, opt.init(params), X, Y).compile().as_text()
    # what the step actually receives: run it and look at the outputs, and at a placed batch
    _, rows = parallel.shardings(step.mesh)
    placed = jax.device_put(Xp, rows)
    return {
        "all_reduce_in_mesh_step": "all-reduce" in text,
        "all_reduce_in_single_step": "all-reduce" in single,
        "x_spec": str(getattr(x_sharding, "spec", x_sharding)),
        "x_shard_shape": list(x_sharding.shard_shape(Xp.shape)),
        "x_global_shape": list(Xp.shape),
        "x_devices": len(x_sharding.device_set),
        "w_shard_shape": list(w_sharding.shard_shape(w.shape)),
        "params_replicated": bool(p_sharding.is_fully_replicated),
        "placed_shard_shapes": sorted({tuple(s.data.shape) for s in placed.addressable_shards}),
        "placed_devices": len(placed.sharding.device_set),
        "padded_rows": int(Xp.shape[0] - X.shape[0]),
        "row_weights": np.asarray(w).tolist(),
    }


def _padded_grads(problems: dict) -> dict:
    """For every problem: (value, grads) of the unpadded, zero-padded and junk-padded batch,
    by the manual fused δ, the manual general δ and autodiff.  One jit for all of them."""
    out = {}
    for name, (loss, params, X, Y, Xp, Yp, Xj, Yj, w) in problems.items():
        fns = {
            "manual_fused": lambda X_, Y_, w_, p=params, l=loss: core.value_and_grads(
                p, X_, Y_, l, fused=True, row_weights=w_),
            "manual_general": lambda X_, Y_, w_, p=params, l=loss: core.value_and_grads(
                p, X_, Y_, l, fused=False, row_weights=w_),
            "autodiff": lambda X_, Y_, w_, p=params, l=loss: core.value_and_grads(
                p, X_, Y_, l, row_weights=w_, method="autodiff"),
        }
        out[name] = {m: {"ref": f(X, Y, None), "zero_pad": f(Xp, Yp, w),
                         "junk_pad": f(Xj, Yj, w)} for m, f in fns.items()}
    return out


def case_rowweights() -> list[dict]:
    """(4) gradients of the zero-weight-padded batch == gradients of the unpadded batch:
    manual (fused and general δ) and autodiff; zero padding (pad_rows) and junk padding, i.e.
    random rows with weight 0 (the weights, not the zeros, must do the work)."""
    out = []
    for dtype_name in DTYPES:
        dtype = DTYPES[dtype_name]
        for n in (10, 3, 1):
            problems = {}
            for loss in LOSS_OUTPUT:
                params, X, Y = problem(loss, n, dtype_name, seed=11 + n)
                Y = targets_2d(Y, SIZES[-1], dtype)
                Xp, Yp, w = parallel.pad_rows(X, Y, N_DEVICES)
                junk = jax.random.normal(jax.random.key(n), (Xp.shape[0] - n, 8), dtype)
                Xj = Xp.at[n:].set(junk[:, :SIZES[0]])
                Yj = Yp.at[n:].set(jax.nn.sigmoid(junk[:, 8 - SIZES[-1]:]))
                problems[loss] = (loss, params, X, Y, Xp, Yp, Xj, Yj, w)
            # One jit per (dtype, n) for all losses (the fastest grouping to compile); the loss
            # names are static, so they are closed over rather than passed.
            static = {k: v[0] for k, v in problems.items()}
            arrays = {k: v[1:] for k, v in problems.items()}
            results = jax.jit(lambda a, static=static: _padded_grads(
                {k: (static[k], *v) for k, v in a.items()}))(arrays)
            for loss, by_method in results.items():
                w = problems[loss][-1]
                for method, r in by_method.items():
                    tol = GRAD_TOL[dtype_name]
                    out.append({"dtype": dtype_name, "loss": loss, "n": n,
                                "padded_to": int(w.shape[0]), "method": method,
                                "weights_sum": float(jnp.sum(w)),
                                "zero_pad": compare(r["zero_pad"], r["ref"], tol),
                                "junk_pad": compare(r["junk_pad"], r["ref"], tol)})
    return out


def case_bad_mesh() -> list[dict]:
    """(6) a mesh without a "batch" axis → ValueError naming the axes; not a mesh → TypeError."""
    params, X, Y = problem("cross_entropy", 8, "float64")
    opt = optax.sgd(0.1)
    bad = {
        "mesh_data": jax.make_mesh((N_DEVICES,), ("data",)),
        "mesh_data_model": jax.make_mesh((2, 2), ("data", "model")),
        "device_list": jax.devices(),
        "string": "batch",
        "sharding": jax.sharding.NamedSharding(mesh_1d(), jax.sharding.PartitionSpec()),
    }
    calls = {
        "make_train_step": lambda m: mj.make_train_step(opt, "cross_entropy", mesh=m),
        "fit": lambda m: mj.fit(params, X, Y, epochs=1, batch_size=4, progress=False, mesh=m),
    }
    out = []
    for what, mesh in bad.items():
        for api, call in calls.items():
            try:
                call(mesh)
            except Exception as exc:  # recorded for the test to judge
                out.append({"mesh": what, "api": api, "raised": type(exc).__name__,
                            "message": str(exc)})
            else:
                out.append({"mesh": what, "api": api, "raised": None, "message": ""})
    return out


def case_example() -> dict:
    """examples/distributed_train.py, single-process path, over the 4 devices."""
    spec = importlib.util.spec_from_file_location(
        "distributed_train", ROOT / "examples" / "distributed_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env_keys = [n for names in module.ENV_VARS.values() for n in names]
    saved = {k: os.environ.pop(k) for k in env_keys if k in os.environ}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), jax.numpy_dtype_promotion("standard"):
                metrics = module.main(["--epochs", "2", "--hidden-sizes", "32",
                                       "--batch-size", "50", "--lr", "0.01", "--out", tmp])
            wrote = os.path.exists(os.path.join(tmp, "model.npz"))
            if wrote:
                from mlds_jax.io.checkpoint import load

                loaded = load(os.path.join(tmp, "model.npz"))
                sizes = mj.layer_sizes(loaded)
            else:
                sizes = None
    finally:
        os.environ.update(saved)
    partial = None
    try:
        module.distributed_settings({"MLDS_COORDINATOR": "127.0.0.1:1"})
    except ValueError as exc:
        partial = str(exc)
    settings = module.distributed_settings({"MLDS_COORDINATOR": "127.0.0.1:9",
                                            "JAX_NUM_PROCESSES": "2", "MLDS_PROCESS_ID": "1"})
    return {"metrics": metrics, "stdout": buf.getvalue(), "wrote_model": wrote,
            "saved_sizes": sizes, "partial_env_error": partial, "env_settings": settings,
            "no_env_settings": module.distributed_settings({})}


CASES = {
    "devices": case_devices,
    "step": case_step,
    "step_2d": case_step_2d,
    "fit": case_fit,
    "sharding": case_sharding,
    "rowweights": case_rowweights,
    "bad_mesh": case_bad_mesh,
    "example": case_example,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="*", metavar="CASE",
                   help=f"cases to run, of {list(CASES)} (default: all)")
    p.add_argument("--json", default=None, help="write the results here (default: stdout)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    results = {}
    for name in args.cases or list(CASES):
        t0 = time.perf_counter()
        try:
            value = CASES[name]()
            results[name] = {"result": value}
        except Exception:  # reported to the test with its traceback
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[parallel worker] {name}: {results[name]['seconds']} s"
              + (" ERROR" if "error" in results[name] else ""), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=1, default=str)
    if args.json:
        pathlib.Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
