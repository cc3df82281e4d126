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
* ``Lanczos step …``: the Lanczos steps (an hvp, the three-term recurrence and, for
  ``reorth.``, full reorthogonalisation against the rows 0..k filled so far; ``plain`` without),
  from a basis built by 10 real Lanczos steps from a random start, stored in a 21-row Q:

  - ``single call (k = 10)``: one ``curvature.lanczos_step_core`` at step k = 10 (one
    compiled call per step, as a step-by-step loop would run it);
  - ``chunk k = 10..17, per step``: one ``curvature.lanczos_steps_core`` call running steps
    10..17 in its ``fori_loop`` (as ``lanczos_core`` runs them), its time divided by 8;
  - ``lanczos_core, 20 steps, per step``: the whole ``curvature.lanczos_core`` with tol = 0
    and num_iters = 20 (it runs all 20 steps: start vector, compiled chunks, the host's float64
    convergence check of every step, the Ritz vector), its time divided by 20.

  One step should cost one hvp.

Method: after one compile-and-warm-up call each, ``--rounds`` interleaved rounds (the order
rotated every round); each contender is timed once per round with ``block_until_ready`` (and
divided by its number of steps where it runs several); the table shows the median and the
ratio to the baseline's median in the same run.  The machine
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


Contender = tuple[Callable[[], object], int]  # (call, steps it runs: its time is divided by it)

LANCZOS_K, LANCZOS_CHUNK, LANCZOS_ROWS, LANCZOS_CORE_STEPS = 10, 8, 21, 20


def lanczos_basis(params, X, Y, w) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Q, alpha, beta) after LANCZOS_K real Lanczos steps from a random unit vector."""
    P = ravel_pytree(params)[0].shape[0]
    q0 = jax.random.normal(jax.random.key(2), (P,), jnp.float32)
    Q = jnp.zeros((LANCZOS_ROWS, P), jnp.float32).at[0].set(q0 / jnp.linalg.norm(q0))
    ab = jnp.zeros((LANCZOS_ROWS - 1,), jnp.float32)
    k = jnp.asarray(LANCZOS_K, jnp.int32)
    return curvature.lanczos_steps_core(params, X, Y, LOSS, w, Q, ab, ab, jnp.int32(0), k, True)


def lanczos_step(params, X, Y, w, reorthogonalize: bool) -> Contender:
    """One ``lanczos_step_core`` call at step k = LANCZOS_K."""
    Q, _, beta = lanczos_basis(params, X, Y, w)
    state = {"Q": Q}
    k, b = jnp.asarray(LANCZOS_K, jnp.int32), beta[LANCZOS_K - 1]

    def run():
        Q, a, _ = curvature.lanczos_step_core(
            params, X, Y, LOSS, w, state["Q"], k, b, reorthogonalize
        )
        state["Q"] = Q  # the buffer is donated: keep the returned one
        return a

    return run, 1


def lanczos_chunk(params, X, Y, w, reorthogonalize: bool) -> Contender:
    """One ``lanczos_steps_core`` call running steps LANCZOS_K .. LANCZOS_K + LANCZOS_CHUNK − 1."""
    Q, alpha, beta = lanczos_basis(params, X, Y, w)
    state = {"Q": Q}
    start = jnp.asarray(LANCZOS_K, jnp.int32)
    stop = jnp.asarray(LANCZOS_K + LANCZOS_CHUNK, jnp.int32)

    def run():
        Q, a, _ = curvature.lanczos_steps_core(
            params, X, Y, LOSS, w, state["Q"], alpha, beta, start, stop, reorthogonalize
        )
        state["Q"] = Q  # donated; rows beyond LANCZOS_K are rewritten by every call
        return a

    return run, LANCZOS_CHUNK


def lanczos_whole(params, X, Y, w, reorthogonalize: bool) -> Contender:
    """``lanczos_core`` with tol = 0: exactly LANCZOS_CORE_STEPS steps."""
    key = jax.random.key(3)

    def run():
        return curvature.lanczos_core(
            params, X, Y, LOSS, key, w, LANCZOS_CORE_STEPS, 0.0, reorthogonalize
        )[1]

    return run, LANCZOS_CORE_STEPS


#: the Lanczos rows: (label, kind, reorthogonalize)
LANCZOS_ROWS_SPEC = [
    ("Lanczos step, reorth., single call (k = 10)", lanczos_step, True),
    ("Lanczos step, reorth., chunk k = 10..17, per step", lanczos_chunk, True),
    ("Lanczos step, reorth., lanczos_core 20 steps, per step", lanczos_whole, True),
    ("Lanczos step, plain, single call (k = 10)", lanczos_step, False),
    ("Lanczos step, plain, chunk k = 10..17, per step", lanczos_chunk, False),
    ("Lanczos step, plain, lanczos_core 20 steps, per step", lanczos_whole, False),
]


def contenders(params, X, Y, v) -> dict[str, Contender]:
    w = jnp.full((X.shape[0],), 1.0 / X.shape[0], jnp.float32)
    # every contender takes X and Y as arguments (none closes over them as constants)
    vag = jax.jit(lambda p, X, Y: mj.core.value_and_grads(p, X, Y, LOSS))
    jvp_grad = jax.jit(
        lambda p, t, X, Y: jax.jvp(
            jax.grad(lambda q: mj.core.batch_loss(q, X, Y, LOSS)), (p,), (t,)
        )[1]
    )
    out: dict[str, Contender] = {
        "value_and_grads (baseline)": (lambda: vag(params, X, Y), 1),
        "hvp (R-op)": (lambda: curvature.hvp_core(params, X, Y, LOSS, v, w), 1),
        "jvp(grad)": (lambda: jvp_grad(params, v, X, Y), 1),
        "ggn_vp": (lambda: curvature.ggn_vp_core(params, X, Y, LOSS, v, w), 1),
        "diag_ggn exact": (lambda: curvature.diag_ggn_core(params, X, Y, LOSS, w), 1),
    }
    for name, make, reorth in LANCZOS_ROWS_SPEC:
        out[name] = make(params, X, Y, w, reorth)
    return out


def measure(fns: dict[str, Contender], rounds: int) -> dict[str, float]:
    for fn, _ in fns.values():  # compile and warm up
        jax.block_until_ready(fn())
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            fn, steps = fns[n]
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[n].append((time.perf_counter() - t0) / steps)
    med = {n: statistics.median(t) for n, t in times.items()}
    return med


def table(batch: int, med: dict[str, float], K: int) -> str:
    base = med["value_and_grads (baseline)"]
    hvp = med["hvp (R-op)"]
    targets = {
        "hvp (R-op)": f"≤ 2.5× baseline, ≤ jvp(grad) ({hvp / med['jvp(grad)']:.2f}× it)",
        "diag_ggn exact": f"≤ (K + 1) = {K + 1}× a gradient",
    }
    for name, _, _ in LANCZOS_ROWS_SPEC:
        targets[name] = f"≈ 1 hvp ({med[name] / hvp:.2f}× hvp)"
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
