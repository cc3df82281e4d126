r"""Benchmark of the per-example extensions (issue 13): norms, DP-SGD, ``mj.mlp``'s custom VJP.

Prints a markdown table.  Every timed function is jitted and compiled before timing; the
contenders of one comparison run in interleaved rounds (order rotated every round) and the table
reports the median over the rounds and the ratio to the comparison's baseline measured in the
same rounds.  The machine may be shared: read the ratios, not the absolute times.

Comparisons (MNIST-size: 784-512-256-10, relu, softmax + cross-entropy, float32, synthetic data):

* ``norms``: ``per_example_grad_norms_core`` vs a manual value-and-grads step (the baseline,
  ``core.value_and_grads`` jitted) vs ``jax.vmap(jax.grad(ℓ_n))`` + norms.  Targets: ≤ 1.5× the
  baseline, ≥ 5× faster than vmap(grad).
* ``dp``: a DP-SGD step (σ = 1, C = 1) vs the plain SGD step.  Target ≤ 2.5×.
* ``mlp``: ``jax.grad`` through ``mj.mlp`` vs ``jax.grad`` through ``core.forward``.
  Target ≤ 1.05×.

Peak memory: the analytic sizes N·Σ widths (what the norms hold) and N·|θ| (what vmap(grad)
materialises), and XLA's ``compile().memory_analysis()`` temp bytes where the backend reports it.

Usage: ``python benchmarks/extensions_per_example.py [--size tiny|full] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mlds_jax as mj
from mlds_jax import core
from mlds_jax.extensions import per_example

SIZES = {"full": [784, 512, 256, 10], "tiny": [64, 32, 10]}
BATCHES = {"full": [128, 1024], "tiny": [16]}
LOSS = "cross_entropy"


def single_loss(params, x, y):
    return core.batch_loss(params, x[None, :], y[None, :], LOSS)


def vmap_grad_norms(params, X, Y):
    g = jax.vmap(jax.grad(single_loss), in_axes=(None, 0, 0))(params, X, Y)
    return jnp.sqrt(
        sum(jnp.sum(x.reshape(X.shape[0], -1) ** 2, axis=1) for x in jax.tree_util.tree_leaves(g))
    )


def ce_of_output(Y_hat, Y):
    return -jnp.mean(jnp.sum(Y * jnp.log(Y_hat), axis=1))


def contenders(params, X, Y, key):
    """name -> (group, is_baseline, zero-arg callable returning arrays)."""
    opt = optax.sgd(0.01)
    state = opt.init(params)
    vag = jax.jit(lambda p, x, y: core.value_and_grads(p, x, y, LOSS))
    norms = jax.jit(lambda p, x, y: per_example.per_example_grad_norms_core(p, x, y, LOSS))
    vnorms = jax.jit(vmap_grad_norms)

    def plain_core(p, s, x, y):
        _, g = core.value_and_grads(p, x, y, LOSS)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    plain = jax.jit(plain_core)
    dp_step = mj.make_dp_train_step(opt, LOSS, mj.DPSGD(l2_clip=1.0, noise_multiplier=1.0))
    grad_mlp = jax.jit(jax.grad(lambda p, x, y: ce_of_output(mj.extensions.mlp_core(p, x), y)))
    grad_fwd = jax.jit(jax.grad(lambda p, x, y: ce_of_output(core.forward(p, x), y)))
    return {
        "value_and_grads (manual)": ("norms", True, lambda: vag(params, X, Y)),
        "per_example_grad_norms": ("norms", False, lambda: norms(params, X, Y)),
        "vmap(grad) + norms": ("norms", False, lambda: vnorms(params, X, Y)),
        "plain SGD step": ("dp", True, lambda: plain(params, state, X, Y)),
        "DP-SGD step": ("dp", False, lambda: dp_step.jitted(params, state, X, Y, key, None)),
        "grad through core.forward": ("mlp", True, lambda: grad_fwd(params, X, Y)),
        "grad through mj.mlp": ("mlp", False, lambda: grad_mlp(params, X, Y)),
    }, {"vag": vag, "norms": norms, "vnorms": vnorms}


def time_interleaved(fns: dict[str, Callable], rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each fn over ``rounds`` interleaved rounds of ``reps`` calls."""
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(reps):
                out = fns[n]()
            jax.block_until_ready(out)
            samples[n].append((time.perf_counter() - t0) / reps)
    return {n: statistics.median(s) for n, s in samples.items()}


def temp_bytes(fn, *args) -> int | None:
    try:
        ma = fn.lower(*args).compile().memory_analysis()
        return int(ma.temp_size_in_bytes) if ma is not None else None
    except Exception:  # not every backend reports it
        return None


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; tiny 3)")
    parser.add_argument(
        "--reps", type=int, default=None, help="calls per round (default 5; tiny 2)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.size == "tiny" else 9)
    reps = args.reps or (2 if args.size == "tiny" else 5)
    sizes = SIZES[args.size]
    params = mj.init_mlp(jax.random.key(0), sizes, "relu", "softmax", dtype=jnp.float32)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    rng = np.random.default_rng(0)
    rows = []
    print(
        f"backend {jax.default_backend()}, devices {jax.devices()}, sizes {sizes}, "
        f"|θ| = {n_params}, float32, {rounds} rounds × {reps} calls, medians"
    )
    print()
    print("| batch | comparison | contender | median ms | ratio to baseline | target |")
    print("|---:|---|---|---:|---:|---|")
    targets = {
        "per_example_grad_norms": "≤ 1.5×",
        "vmap(grad) + norms": "norms ≥ 5× faster",
        "DP-SGD step": "≤ 2.5×",
        "grad through mj.mlp": "≤ 1.05×",
    }
    mem_rows = []
    for N in BATCHES[args.size]:
        X = jnp.asarray(rng.standard_normal((N, sizes[0])), jnp.float32)
        Y = jax.nn.one_hot(rng.integers(0, sizes[-1], N), sizes[-1], dtype=jnp.float32)
        fns, jitted = contenders(params, X, Y, jax.random.key(1))
        med = time_interleaved({n: f for n, (_, _, f) in fns.items()}, rounds, reps)
        base = {g: med[n] for n, (g, b, _) in fns.items() if b}
        for name, (group, _, _) in fns.items():
            ratio = med[name] / base[group]
            rows.append(
                {
                    "batch": N,
                    "group": group,
                    "contender": name,
                    "median_s": med[name],
                    "ratio": ratio,
                }
            )
            print(
                f"| {N} | {group} | {name} | {1e3 * med[name]:.3f} | {ratio:.2f}× | "
                f"{targets.get(name, 'baseline' if fns[name][1] else '')} |"
            )
        speedup = med["vmap(grad) + norms"] / med["per_example_grad_norms"]
        print(
            f"| {N} | norms | vmap(grad) / per_example_grad_norms | | {speedup:.1f}× faster | "
            f"≥ 5× |"
        )
        widths = sum(sizes)
        mem_rows.append(
            (
                N,
                4 * N * widths,
                4 * N * n_params,
                temp_bytes(jitted["norms"], params, X, Y),
                temp_bytes(jitted["vnorms"], params, X, Y),
                temp_bytes(jitted["vag"], params, X, Y),
            )
        )
    print()
    print(
        "| batch | N·Σwidths (f32) | N·|θ| (f32) | XLA temp: norms | XLA temp: vmap(grad) "
        "| XLA temp: value_and_grads |"
    )
    print("|---:|---:|---:|---:|---:|---:|")

    def mb(b):
        return "n/a" if b is None else f"{b / 2**20:.1f} MiB"

    for N, a, b, t1, t2, t3 in mem_rows:
        print(f"| {N} | {mb(a)} | {mb(b)} | {mb(t1)} | {mb(t2)} | {mb(t3)} |")
    return rows


if __name__ == "__main__":
    main()
