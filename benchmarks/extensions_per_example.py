r"""Per-example extensions against their peers: norms, DP-SGD, and the checked API's overhead.

Run ``python benchmarks/extensions_per_example.py`` (``--size tiny`` for a smoke run,
``--rows norms-backpack,dp-opacus`` and ``--batches 128`` to select).  With the peers
installed (``pip install 'mlds-jax[peers]'`` in a separate environment; run it there with
``PYTHONPATH=$PWD``) every row times ours against the peer; without them the peer rows are
skipped.  Harness, fairness and the peers' set-up: ``benchmarks/peers.py``.

Rows (784-512-256-10 relu/softmax + cross-entropy, float32; ratio = peer time ÷ ours unless
marked "checked ÷ core"):

* ``norms-backpack``: ``mj.per_example_grad_norms`` vs BackPACK ``BatchL2Grad`` (target ≥ 2×);
* ``norms-func``: vs ``torch.func`` ``vmap(grad)`` + norms (≥ 40×);
* ``norms-opacus``: vs Opacus ``GradSampleModule`` + norms (≥ 40×);
* ``dp-opacus``: one DP-SGD step (σ = 1, C = 1, ``dp_value_and_grads`` + ``optax.sgd``, jitted)
  vs one Opacus ``make_private`` step (≥ 20×);
* ``norms-checked``, ``grads-checked``: ``mj.per_example_grad_norms`` and ``mj.manual_grads``
  against their jitted cores: the checked API's cost (≤ 1.25×).

FLOPs are the matrix products' (2·m·n·k each, counted from the layer sizes); "% of limit" is
the time those FLOPs would take at XLA's measured GEMM speed (2048² float32 product, same run)
divided by our time.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

import mlds_jax as mj  # noqa: E402
from mlds_jax import core  # noqa: E402
from mlds_jax.extensions import per_example  # noqa: E402

ROWS = [
    "norms-backpack",
    "norms-func",
    "norms-opacus",
    "dp-opacus",
    "norms-checked",
    "grads-checked",
]
BATCHES = {"full": [128, 1024], "tiny": [16]}
TARGETS = {
    "norms-backpack": (">=", 2.0),
    "norms-func": (">=", 40.0),
    "norms-opacus": (">=", 40.0),
    "dp-opacus": (">=", 20.0),
    "norms-checked": ("<=", 1.25),
    "grads-checked": ("<=", 1.25),
}
PEER = {
    "norms-backpack": "backpack",
    "norms-func": "torch",
    "norms-opacus": "opacus",
    "dp-opacus": "opacus",
}
LOSS = peers.LOSS


def rows_for(name, params, X, y, Y, torch_side, sizes):
    """(ours, reference, flops of ours): zero-arg callables."""
    N = X.shape[0]
    F, F_nf = peers.forward_flops(sizes, N)
    norms = lambda: mj.per_example_grad_norms(params, X, y, LOSS)  # noqa: E731
    if name == "norms-backpack":
        return norms, torch_side and torch_side.backpack_l2(), F + F_nf
    if name == "norms-func":
        return norms, torch_side and torch_side.func_norms(), F + F_nf
    if name == "norms-opacus":
        return norms, torch_side and torch_side.opacus_norms(), F + F_nf
    if name == "dp-opacus":
        dp = mj.DPSGD(l2_clip=1.0, noise_multiplier=1.0)
        opt = optax.sgd(0.01)
        state = {"p": params, "s": opt.init(params), "i": 0}

        @jax.jit
        def step(p, s, X, Y, key):
            _, g = mj.extensions.dp_value_and_grads(p, X, Y, LOSS, dp, key)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        key = jax.random.key(0)

        def ours():
            state["i"] += 1
            return step(params, state["s"], X, Y, jax.random.fold_in(key, state["i"]))

        return ours, torch_side and torch_side.opacus_dp_step(1.0, 1.0), 2 * F + F_nf
    if name == "norms-checked":
        Yp = mj.network.prepare_targets(params, y, LOSS)
        return (
            lambda: per_example.per_example_grad_norms_core(params, X, Yp, LOSS),
            norms,
            F + F_nf,
        )
    if name == "grads-checked":
        Yp = mj.network.prepare_targets(params, y, LOSS)
        jitted = jax.jit(lambda p, X, Y: core.backward(p, core.forward_cache(p, X), Y, LOSS).grads)
        checked = lambda: mj.manual_grads(params, X, y, LOSS)  # noqa: E731
        return lambda: jitted(params, X, Yp), checked, 2 * F + F_nf
    raise ValueError(name)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(peers.SIZES), default="full")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {ROWS}")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else BATCHES[args.size]
    rounds = args.rounds or (3 if args.size == "tiny" else 11)
    sizes = peers.SIZES[args.size]
    have = peers.available()
    limit = peers.gemm_limit()
    load = os.getloadavg()[0]
    print(
        f"# per-example extensions: sizes {sizes}, float32, {rounds} interleaved rounds, medians; "
        f"jax {jax.__version__}; peers {', '.join(k for k, v in have.items() if v) or 'none'}; "
        f"XLA GEMM {limit / 1e9:.0f} GFLOP/s; load {load:.2f}"
    )
    print("\n| row | batch | ours ms | reference ms | ratio | target | met | GFLOP | % of limit |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|")
    out = []
    for N in batches:
        params, X, y, Y, _ = peers.problem(sizes, N)
        torch_side = peers.Torch(params, X, y) if have["torch"] else None
        for name in rows:
            peer = PEER.get(name)
            side = torch_side if (peer is None or have.get(peer)) else None
            ours, ref, flops = rows_for(name, params, X, y, Y, side, sizes)
            fns = {"ours": ours} | ({"ref": ref} if ref else {})
            med = peers.interleaved(fns, rounds)
            op, target = TARGETS[name]
            if ref:
                ratio = med["ref"] / med["ours"] if op == ">=" else med["ref"] / med["ours"]
                met = ratio >= target if op == ">=" else ratio <= target
                ref_ms, ratio_s = f"{1e3 * med['ref']:.2f}", f"{ratio:.2f}×"
            else:
                ratio, met, ref_ms, ratio_s = None, None, "skipped", "–"
            frac = flops / limit / med["ours"]
            print(
                f"| {name} | {N} | {1e3 * med['ours']:.2f} | {ref_ms} | {ratio_s} | "
                f"{op} {target}× | {'' if met is None else ('yes' if met else 'NO')} | "
                f"{flops / 1e9:.3f} | {100 * frac:.0f}% |"
            )
            out.append({"row": name, "batch": N, "ours_s": med["ours"], "ratio": ratio})
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
