r"""Where does ``mj.fit``'s epoch time go?  A decomposition by timing experiments.

A developer's diagnostic, not part of ``make bench``.  It uses fit's internals
(``mlds_jax.training._make_epoch`` / ``_make_step_core``) so it may need updating when
``training.py`` changes.  For each workload it times, interleaved and steady-state (median of
``--reps`` calls after a compile call), the jitted functions below and prints per-step times:

* ``epoch``: fit's compiled epoch (permutation, gathers, scan of train steps, the last partial
  batch, metrics, the finiteness check), without validation data;
* ``scan_presliced``: the same train step in a ``lax.scan`` over pre-sliced contiguous batches
  (no permutation, no gather, no partial batch);
* ``scan_matmuls``: the same scan with a body of only the step's matmuls (forward X·W, dW =
  Aᵀδ, dX = δWᵀ) and the W update (no bias, activation, softmax, loss or metrics);
* ``scan_fwd`` / ``scan_fwd_dW`` / ``scan_fwd_dX``: the forward matmuls only, plus the dW
  (Aᵀδ) or the dX (δWᵀ) matmuls (the difference is the cost of that kind);
* ``scan_empty``: a scan of the same length whose body reads one number of its batch (the
  per-iteration cost of XLA's while loop);
* ``permutation``: ``jax.random.permutation(key, N)``; ``gathers``: X[idx], Y[idx] per batch
  (summed, so that the gathers are not simplified away);
* ``numpy_matmuls``: the same matmuls per step with NumPy (BLAS), as a reference;
* ``step_call``: one ``make_train_step(...).jitted`` call (dispatch + step).

Usage: ``.venv/bin/python benchmarks/profile_fit.py [--workloads digits-32,mnist-128]``; run
it under different ``XLA_FLAGS`` (or ``taskset -c 0``) to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402


def _median_times(fns: dict, reps: int) -> tuple[dict[str, float], dict[str, float]]:
    import jax

    for f in fns.values():
        jax.block_until_ready(f())
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            samples[name].append(time.perf_counter() - t0)
    return ({k: float(np.median(v)) for k, v in samples.items()},
            {k: float(np.min(v)) for k, v in samples.items()})


def profile_workload(wname: str, n_rows: int, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import mlds_jax as mj
    from mlds_jax.training import _make_epoch, _make_step_core

    dname, sizes, bs = bench.WORKLOADS[wname]
    X, y = bench.digits_data() if dname == "digits" else bench.mnist_like_data(n_rows)
    Y = bench.one_hot(y, bench.N_CLASSES)
    n = X.shape[0]
    n_full = n // bs
    params = bench._jax_params(sizes)
    opt = optax.sgd(bench.LR)
    state = opt.init(params)
    core = _make_step_core(opt, "cross_entropy", "manual")
    jX, jY = jnp.asarray(X), jnp.asarray(Y)
    key = jax.random.key(3)

    # the compile time of fit's epoch, split into tracing+lowering and XLA compilation
    t0 = time.perf_counter()
    epoch_jit = jax.jit(_make_epoch(core, "cross_entropy", n, bs, False))
    lowered = epoch_jit.lower(params, state, key, jX, jY, None, None)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    compile_split = {"trace_lower_s": t1 - t0, "xla_compile_s": t2 - t1}

    Xs = jX[: n_full * bs].reshape(n_full, bs, -1)
    Ys = jY[: n_full * bs].reshape(n_full, bs, -1)
    lr = jnp.float32(bench.LR)
    Ws = tuple(layer.W for layer in params)

    @jax.jit
    def scan_presliced(p, s, Xs, Ys):
        def body(c, xy):
            p, s, m = core(*c, *xy)
            return (p, s), m["loss"]
        return jax.lax.scan(body, (p, s), (Xs, Ys))

    def matmul_scan(kinds):
        @jax.jit
        def f(Ws, Xs, Ys):
            def body(Ws, xy):
                x, yb = xy
                As = [x]
                for W in Ws:  # forward: Z = A W (activation omitted), always
                    As.append(As[-1] @ W)
                d = As[-1] - yb
                new = list(Ws)
                for i in range(len(Ws) - 1, -1, -1):
                    if "dW" in kinds:
                        new[i] = Ws[i] - lr * (As[i].T @ d)
                    if i > 0:
                        d = d @ Ws[i].T if "dX" in kinds else As[i]
                return tuple(new), d[0, 0]
            return jax.lax.scan(body, Ws, (Xs, Ys))
        return f

    scan_mm = matmul_scan(("dW", "dX"))
    scan_fwd, scan_dw, scan_dx = (matmul_scan(k) for k in ((), ("dW",), ("dX",)))

    @jax.jit
    def scan_empty(c, Xs):
        return jax.lax.scan(lambda c, x: (c + x[0, 0], None), c, Xs)

    perm_fn = jax.jit(lambda k: jax.random.permutation(k, n))
    perm_idx = perm_fn(key)[: n_full * bs].reshape(n_full, bs)

    @jax.jit
    def gathers(X, Y, idx):
        return jax.lax.scan(lambda c, i: (c + jnp.sum(X[i]) + jnp.sum(Y[i]), None),
                            jnp.float32(0), idx)

    step = mj.make_train_step(opt, "cross_entropy", grads="manual").jitted
    xb, yb = jX[:bs], jY[:bs]

    fns = {
        "epoch": lambda: compiled(params, state, key, jX, jY, None, None),
        "scan_presliced": lambda: scan_presliced(params, state, Xs, Ys),
        "scan_matmuls": lambda: scan_mm(Ws, Xs, Ys),
        "scan_fwd": lambda: scan_fwd(Ws, Xs, Ys),
        "scan_fwd_dW": lambda: scan_dw(Ws, Xs, Ys),
        "scan_fwd_dX": lambda: scan_dx(Ws, Xs, Ys),
        "scan_empty": lambda: scan_empty(jnp.float32(0), Xs),
        "permutation": lambda: perm_fn(key),
        "gathers": lambda: gathers(jX, jY, perm_idx),
        "step_call": lambda: step(params, state, xb, yb),
    }
    med, best = _median_times(fns, reps)

    # NumPy: the same matmuls per step, on BLAS
    Wn = [np.asarray(W) for W in Ws]
    Xn = np.asarray(Xs)
    Yn = np.asarray(Ys)

    def numpy_matmuls():
        for b in range(n_full):
            As = [Xn[b]]
            for W in Wn:
                As.append(As[-1] @ W)
            d = As[-1] - Yn[b]
            for i in range(len(Wn) - 1, -1, -1):
                As[i].T @ d
                if i > 0:
                    d = d @ Wn[i].T

    ts = []
    for _ in range(max(3, reps // 2)):
        t0 = time.perf_counter()
        numpy_matmuls()
        ts.append(time.perf_counter() - t0)
    med["numpy_matmuls"] = float(np.median(ts))
    best["numpy_matmuls"] = float(np.min(ts))

    def per(d):
        return {k: v / (1 if k in ("permutation", "step_call") else n_full) for k, v in
                d.items()}

    per_step, per_step_min = per(med), per(best)
    flops_step = bench.train_flops_per_sample(sizes) * bs
    return {"workload": wname, "n": n, "batch": bs, "steps": n_full, "epoch_ms": med["epoch"]
            * 1e3, "epoch_min_ms": best["epoch"] * 1e3,
            "per_step_us": {k: v * 1e6 for k, v in per_step.items()},
            "per_step_min_us": {k: v * 1e6 for k, v in per_step_min.items()},
            "matmul_gflops": flops_step / per_step_min["scan_matmuls"] / 1e9,
            "step_gflops": flops_step / per_step_min["scan_presliced"] / 1e9,
            "numpy_matmul_gflops": flops_step / per_step_min["numpy_matmuls"] / 1e9,
            "compile": compile_split}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="digits-32,digits-256,mnist-128,mnist-1024")
    p.add_argument("--rows", type=int, default=60000, help="MNIST-size rows")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    out = []
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}; loadavg {os.getloadavg()}")
    for w in args.workloads.split(","):
        r = profile_workload(w, args.rows, args.reps)
        out.append(r)
        ps, pm = r["per_step_us"], r["per_step_min_us"]
        print(f"\n{w}: N={r['n']}, batch {r['batch']}, {r['steps']} full steps; fit epoch "
              f"min {r['epoch_min_ms']:.2f} ms (median {r['epoch_ms']:.2f}); compile: "
              f"trace+lower {r['compile']['trace_lower_s']:.2f} s, XLA "
              f"{r['compile']['xla_compile_s']:.2f} s")
        for k, v in ps.items():
            unit = "/call" if k in ("permutation", "step_call") else "/step"
            print(f"  {k:16s} min {pm[k]:10.1f} µs{unit}   (median {v:10.1f})")
        print(f"  GFLOP/s (min times): train step in scan {r['step_gflops']:.1f}, matmuls only "
              f"in scan {r['matmul_gflops']:.1f}, NumPy matmuls {r['numpy_matmul_gflops']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
