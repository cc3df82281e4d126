r"""Experiment: variants of fit's compiled epoch, timed side by side (a developer's diagnostic).

Not part of ``make bench``.  Re-implements ``mlds_jax.training._make_epoch`` (without validation
data) with switches, so that a change to ``training.py`` can be tried before it is made:

* ``perm``: "permutation" (``jax.random.permutation``, today), "argsort" (one sort of random
  bits), or "host" (a NumPy permutation passed in as an argument);
* ``pad``: run ONE scan over ceil(N / batch) batches, the last one padded with rows of weight 0
  and its real rows weighted 1/rest (``row_weights``), instead of a scan plus a separately
  compiled step for the last partial batch;
* ``unroll``: ``lax.scan(..., unroll=k)``;
* ``carry_metrics``: accumulate the loss/accuracy sums in the scan carry instead of stacking
  per-step metrics.

Usage: ``.venv/bin/python benchmarks/epoch_variants.py --workloads digits-32,mnist-128``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402


def make_epoch(step_core, n, bs, *, perm="permutation", pad=False, unroll=1,
               carry_metrics=False):
    import jax
    import jax.numpy as jnp

    from mlds_jax.training import _tree_finite

    n_full, rest = divmod(n, bs)

    def epoch(params, opt_state, key, X, Y, host_perm):
        if perm == "permutation":
            p = jax.random.permutation(key, n)
        elif perm == "argsort":
            p = jnp.argsort(jax.random.bits(key, (n,), jnp.uint32)).astype(jnp.int32)
        else:
            p = host_perm
        if pad and rest:
            n_b = n_full + 1
            idx = jnp.concatenate([p, jnp.zeros(n_b * bs - n, p.dtype)]).reshape(n_b, bs)
            w_full = jnp.full((bs,), 1.0 / bs, X.dtype)
            w_last = jnp.where(jnp.arange(bs) < rest, 1.0 / rest, 0.0).astype(X.dtype)
            rw = jnp.concatenate([jnp.tile(w_full, (n_full, 1)), w_last[None]])
            sizes = jnp.concatenate([jnp.full((n_full,), bs, X.dtype),
                                     jnp.full((1,), rest, X.dtype)])
        else:
            idx = p[: n_full * bs].reshape(n_full, bs)
            rw, sizes = None, jnp.full((n_full,), bs, X.dtype)

        def body(carry, xs):
            if carry_metrics:
                (pp, s), acc = carry
            else:
                pp, s = carry
            i, w, size = xs
            pp, s, m = step_core(pp, s, X[i], Y[i], w)
            if carry_metrics:
                acc = {k: acc[k] + m[k] * size for k in acc}
                return ((pp, s), acc), None
            return (pp, s), {k: v * size for k, v in m.items()}

        xs = (idx, rw, sizes)
        if carry_metrics:
            zero = {"loss": jnp.zeros((), X.dtype), "accuracy": jnp.zeros((), X.dtype)}
            ((params, opt_state), sums), _ = jax.lax.scan(
                body, ((params, opt_state), zero), xs, unroll=unroll)
        else:
            (params, opt_state), ms = jax.lax.scan(body, (params, opt_state), xs,
                                                    unroll=unroll)
            sums = {k: jnp.sum(v) for k, v in ms.items()}
        if rest and not pad:
            i = p[n_full * bs:]
            params, opt_state, m = step_core(params, opt_state, X[i], Y[i])
            sums = {k: sums[k] + v * rest for k, v in m.items()}
        metrics = {k: v / n for k, v in sums.items()}
        metrics["finite"] = _tree_finite(params)
        return params, opt_state, metrics

    return epoch


VARIANTS = {
    "today": {},
    "argsort": {"perm": "argsort"},
    "host_perm": {"perm": "host"},
    "pad": {"pad": True},
    "pad+argsort": {"pad": True, "perm": "argsort"},
    "pad+host+carry": {"pad": True, "perm": "host", "carry_metrics": True},
    "pad+host+carry+unroll4": {"pad": True, "perm": "host", "carry_metrics": True,
                               "unroll": 4},
}


def main(argv=None):
    import jax
    import jax.numpy as jnp
    import optax

    from mlds_jax.training import _make_step_core

    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="digits-32,digits-256,mnist-128,mnist-1024")
    ap.add_argument("--rows", type=int, default=12000)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    for w in args.workloads.split(","):
        dname, sizes, bs = bench.WORKLOADS[w]
        X, y = bench.digits_data() if dname == "digits" else bench.mnist_like_data(args.rows)
        n = X.shape[0]
        jX, jY = jnp.asarray(X), jnp.asarray(bench.one_hot(y, bench.N_CLASSES))
        params = bench._jax_params(sizes)
        opt = optax.sgd(bench.LR)
        state = opt.init(params)
        key = jax.random.key(0)
        rng = np.random.default_rng(0)
        compiled, comp_s = {}, {}
        for v in args.variants.split(","):
            core = _make_step_core(opt, "cross_entropy", "manual")
            f = jax.jit(make_epoch(core, n, bs, **VARIANTS[v]))
            t0 = time.perf_counter()
            hp = jnp.asarray(rng.permutation(n).astype(np.int32))
            compiled[v] = f.lower(params, state, key, jX, jY, hp).compile()
            comp_s[v] = time.perf_counter() - t0
        times = {v: [] for v in compiled}
        names = list(compiled)
        for r in range(args.reps + 1):
            k = r % len(names)
            for v in names[k:] + names[:k]:
                t0 = time.perf_counter()
                hp = rng.permutation(n).astype(np.int32)  # host cost counted for all
                out = compiled[v](params, state, key, jX, jY, hp)
                jax.device_get(out[2])
                if r:
                    times[v].append(time.perf_counter() - t0)
        print(f"\n{w} (N={n}, batch {bs}):")
        for v in names:
            t = np.asarray(times[v]) * 1e3
            print(f"  {v:24s} compile {comp_s[v]:5.2f} s   epoch min {t.min():8.2f} ms   "
                  f"median {np.median(t):8.2f} ms")


if __name__ == "__main__":
    main()
