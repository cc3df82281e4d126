r"""Benchmark of the hand-derived curvature products (``mlds_jax.extensions.curvature``).

Run ``.venv/bin/python benchmarks/extensions_curvature.py`` for the MNIST-size table, or
``--size tiny`` for a quick smoke run.  Prints a markdown table per batch size.

Workload: a 784-512-256-10 MLP (float32, relu hidden layers, softmax + cross-entropy, K = 10)
on synthetic N(0, 1) inputs with random labels, batches of 128 and 1024 rows.  Contenders,
each a compiled function of (params, v):

* ``value_and_grads``: ``mlds_jax.core.value_and_grads`` jitted (manual backward): the baseline;
* ``hvp (R-op)``: ``curvature.hvp_core``, the hand-derived R-operator;
* ``jvp(grad)``: ``jax.jvp(jax.grad(batch_loss))``, forward-over-reverse autodiff;
* ``ggn_vp``: ``curvature.ggn_vp_core``;
* ``diag_ggn exact``: ``curvature.diag_ggn_core`` (K backward passes of the square-root factor);
* ``Lanczos step``: one ``curvature.lanczos_step_core`` at step k = 10 (an hvp and the
  three-term recurrence), with full reorthogonalisation against the 11 stored vectors and
  without (plain): one step should cost one hvp.

Method: after one compile-and-warm-up call each, ``--rounds`` interleaved rounds (the order
rotated every round); each contender is timed once per round with ``block_until_ready``; the
table shows the median and the ratio to the baseline's median in the same run.  The machine
is shared and noisy: ratios are more stable than absolute times.
Targets (issue 14): hvp ≤ 2.5× value_and_grads and no slower than jvp(grad); exact diag_ggn
≤ (K + 1)× a gradient; one Lanczos step ≈ one hvp.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import mlds_jax as mj
from mlds_jax.extensions import curvature

SIZES = {"full": [784, 512, 256, 10], "tiny": [64, 32, 10]}
BATCHES = {"full": (128, 1024), "tiny": (32,)}
LOSS = "cross_entropy"


def problem(sizes: list[int], batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = mj.init_mlp(
        jax.random.key(seed), sizes, hidden="relu", output="softmax", dtype=jnp.float32
    )
    X = jnp.asarray(rng.standard_normal((batch, sizes[0])), jnp.float32)
    Y = jax.nn.one_hot(rng.integers(0, sizes[-1], batch), sizes[-1], dtype=jnp.float32)
    v = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params
    )
    return params, X, Y, v


def lanczos_step(params, X, Y, w, reorthogonalize: bool) -> Callable[[], object]:
    """One Lanczos step at k = 10 of a 20-vector basis (``lanczos_step_core``)."""
    P = ravel_pytree(params)[0].shape[0]
    rng = np.random.default_rng(2)
    state = {"Q": jnp.asarray(rng.standard_normal((21, P)) / np.sqrt(P), jnp.float32)}
    k, b = jnp.asarray(10, jnp.int32), jnp.asarray(0.5, jnp.float32)

    def run():
        Q, a, beta = curvature.lanczos_step_core(
            params, X, Y, LOSS, w, state["Q"], k, b, reorthogonalize
        )
        state["Q"] = Q  # the buffer is donated: keep the returned one
        return a

    return run


def contenders(params, X, Y, v) -> dict[str, Callable[[], object]]:
    w = jnp.full((X.shape[0],), 1.0 / X.shape[0], jnp.float32)
    # every contender takes X and Y as arguments (none closes over them as constants)
    vag = jax.jit(lambda p, X, Y: mj.core.value_and_grads(p, X, Y, LOSS))
    jvp_grad = jax.jit(
        lambda p, t, X, Y: jax.jvp(
            jax.grad(lambda q: mj.core.batch_loss(q, X, Y, LOSS)), (p,), (t,)
        )[1]
    )
    return {
        "value_and_grads (baseline)": lambda: vag(params, X, Y),
        "hvp (R-op)": lambda: curvature.hvp_core(params, X, Y, LOSS, v, w),
        "jvp(grad)": lambda: jvp_grad(params, v, X, Y),
        "ggn_vp": lambda: curvature.ggn_vp_core(params, X, Y, LOSS, v, w),
        "diag_ggn exact": lambda: curvature.diag_ggn_core(params, X, Y, LOSS, w),
        "Lanczos step, reorth. (k = 10)": lanczos_step(params, X, Y, w, True),
        "Lanczos step, plain": lanczos_step(params, X, Y, w, False),
    }


def measure(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[n]())
            times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    return med


def table(batch: int, med: dict[str, float], K: int) -> str:
    base = med["value_and_grads (baseline)"]
    hvp = med["hvp (R-op)"]
    targets = {
        "hvp (R-op)": f"≤ 2.5× baseline, ≤ jvp(grad) ({hvp / med['jvp(grad)']:.2f}× it)",
        "diag_ggn exact": f"≤ (K + 1) = {K + 1}× a gradient",
        "Lanczos step, reorth. (k = 10)": f"≈ 1 hvp "
        f"({med['Lanczos step, reorth. (k = 10)'] / hvp:.2f}× hvp)",
        "Lanczos step, plain": f"≈ 1 hvp ({med['Lanczos step, plain'] / hvp:.2f}× hvp)",
    }
    lines = [
        f"\n### batch {batch}\n",
        "| contender | median (ms) | × baseline | target |",
        "|---|---:|---:|---|",
    ]
    for n, t in med.items():
        lines.append(f"| {n} | {1e3 * t:.2f} | {t / base:.2f} | {targets.get(n, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.size == "tiny" else 15)
    sizes = SIZES[args.size]
    print(
        f"# curvature benchmark: sizes {sizes}, float32, {LOSS}, {rounds} rounds, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    results = {}
    for batch in BATCHES[args.size]:
        med = measure(contenders(*problem(sizes, batch)), rounds)
        results[batch] = med
        print(table(batch, med, sizes[-1]))
    return results


if __name__ == "__main__":
    main()
