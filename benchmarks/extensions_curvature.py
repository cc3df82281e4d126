r"""Curvature extensions against their peers: hvp, diagonal GGN, KFAC, λ_max, trace, density.

Run ``python benchmarks/extensions_curvature.py`` (``--size tiny`` for a smoke run,
``--rows hvp,eig`` and ``--batches 128`` to select).  With the peers installed (``pip install
'mlds-jax[peers]'`` in a separate environment; run it there with ``PYTHONPATH=$PWD``) every row
times ours against the peer; without them the peer rows are skipped.  Harness, fairness and
the peers' set-up: ``benchmarks/peers.py``.

Rows (784-512-256-10 relu/softmax + cross-entropy, float32; ratio = peer time ÷ ours, our
public API against the peer's as users call it):

* ``hvp``: ``mj.hvp`` vs double backward (``torch.autograd.grad`` twice, what PyHessian does)
  from scratch (forward included) (target ≥ 1.2×);
* ``diag-ggn``: ``mj.diag_ggn`` vs BackPACK ``DiagGGNExact`` (≥ 2×);
* ``kfac``: ``mj.kfac_factors(kind="exact")`` vs BackPACK ``KFLR`` (≥ 3×);
* ``eig``: ``mj.hessian_top_eigenvalue(tol=1e-3)`` (eigenvalue-error rule) vs PyHessian
  ``eigenvalues()`` (power iteration, tol 1e-3), both from building the Hessian object; the
  relative error of each against a tight reference (our residual rule, tol 1e-6) is printed
  (≥ 2×);
* ``trace``: ``mj.hessian_trace(samples=100)`` vs PyHessian ``trace(maxIter=100)`` with its
  early stop disabled (100 probes) (≥ 1.5×);
* ``density``: ``mj.hessian_spectral_density(num_iters=100, num_probes=1)`` vs PyHessian
  ``density(iter=100, n_v=1)`` (``torch.eig`` shimmed by ``torch.linalg.eigh``) (≥ 5×).

FLOPs: the matrix products', counted from the layer sizes (F = one forward's 2N Σ d_in d_out,
F' the same without the first layer): hvp 3F + 4F' (forward, δs, the two tangent passes);
diag GGN 2F + K·F'; KFAC F + K·F' + Σ 2N(d_in + 1)² + 2KN Σ d_out²; λ_max, trace, density
(steps)·(2F + 3F') plus the forward and δs; the Lanczos reorthogonalisation adds 2·Σk·P
multiply-adds.  "% of limit": those FLOPs at XLA's measured GEMM speed (same run) ÷ our time.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

import mlds_jax as mj  # noqa: E402
from mlds_jax.extensions.lanczos import top_eigenpair_core  # noqa: E402

ROWS = ["hvp", "diag-ggn", "kfac", "eig", "trace", "density"]
BATCHES = {"full": [128, 1024], "tiny": [16]}
TARGETS = {"hvp": 1.2, "diag-ggn": 2.0, "kfac": 3.0, "eig": 2.0, "trace": 1.5, "density": 5.0}
PEER = {"hvp": "torch", "diag-ggn": "backpack", "kfac": "backpack", "eig": "pyhessian",
        "trace": "pyhessian", "density": "pyhessian"}  # fmt: skip
LOSS = peers.LOSS


def flops_of(name, sizes, N, steps=0):
    F, Fp = peers.forward_flops(sizes, N)
    K = sizes[-1]
    P = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    tangent = 2 * F + 3 * Fp  # A V, Ȧ W; Aᵀδ̇, Ȧᵀδ; δ̇Wᵀ, δVᵀ
    if name == "hvp":
        return F + Fp + tangent
    if name == "diag-ggn":
        return 2 * F + K * Fp
    if name == "kfac":
        a = sum(2 * N * (d + 1) ** 2 for d in sizes[:-1])
        return F + K * Fp + a + 2 * K * N * sum(d * d for d in sizes[1:])
    reorth = 2 * 2 * P * steps * (steps + 1) / 2  # 2(k + 1)·P multiply-adds at step k
    return F + Fp + steps * tangent + (reorth if name in ("eig", "density") else 0)


def contenders(name, params, X, y, v, key, torch_side, peer_ok):
    """(ours, peer or None, steps, note) for one row: zero-arg callables."""
    note, steps, ref = "", 0, None
    if name == "hvp":
        ours = lambda: mj.hvp(params, X, y, LOSS, v)  # noqa: E731
        ref = peer_ok and torch_side.double_backward_hvp(v)
    elif name == "diag-ggn":
        ours = lambda: mj.diag_ggn(params, X, y, LOSS)  # noqa: E731
        ref = peer_ok and torch_side.backpack_second_order("diag")
    elif name == "kfac":
        ours = lambda: mj.kfac_factors(params, X, y, LOSS)  # noqa: E731
        ref = peer_ok and torch_side.backpack_second_order("kflr")
    elif name == "eig":
        lam_ref, _ = mj.hessian_top_eigenvalue(
            params, X, y, LOSS, key=key, tol=1e-6, stop="residual"
        )
        lam_ref = float(lam_ref)
        Xp, Yp = mj.validation.check_batch(params, X, y, LOSS)
        r = top_eigenpair_core(
            params, Xp, Yp, LOSS, key, None, 100, 1e-3, True, "eigenvalue"
        )
        steps = int(r.steps)

        def ours():
            return mj.hessian_top_eigenvalue(params, X, y, LOSS, key=key, tol=1e-3)[0]

        err = abs(float(ours()) - lam_ref) / abs(lam_ref)
        note = f"ours: {steps} steps, rel. error {err:.1e}"
        ref = peer_ok and torch_side.pyhessian("eigenvalues")
        if ref:
            lam_p = ref()[0][0]
            note += f"; PyHessian rel. error {abs(lam_p - lam_ref) / abs(lam_ref):.1e}"
    elif name == "trace":
        steps = 100
        ours = lambda: mj.hessian_trace(params, X, y, LOSS, key=key, samples=100)  # noqa: E731
        ref = peer_ok and torch_side.pyhessian("trace", maxIter=100, tol=-1.0)
    else:
        steps = 100

        def ours():
            return mj.hessian_spectral_density(
                params, X, y, LOSS, key=key, num_iters=100, num_probes=1
            )

        ref = peer_ok and torch_side.pyhessian("density", iter=100, n_v=1)
    return ours, ref or None, steps, note


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
    rounds = args.rounds or (3 if args.size == "tiny" else 7)
    sizes = peers.SIZES[args.size]
    have = peers.available()
    limit = peers.gemm_limit()
    print(
        f"# curvature extensions: sizes {sizes}, float32, {rounds} interleaved rounds, medians; "
        f"jax {jax.__version__}; peers {', '.join(k for k, v in have.items() if v) or 'none'}; "
        f"XLA GEMM {limit / 1e9:.0f} GFLOP/s; load {os.getloadavg()[0]:.2f}"
    )
    print(
        "\n| row | batch | ours ms | peer ms | peer ÷ ours | target | met | GFLOP | "
        "% of limit | note |"
    )
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---|")
    out = []
    for N in batches:
        params, X, y, Y, v = peers.problem(sizes, N)
        torch_side = peers.Torch(params, X, y) if have["torch"] else None
        key = jax.random.key(1)
        for name in rows:
            peer_ok = torch_side is not None and have.get(PEER[name], False)
            ours, ref, steps, note = contenders(name, params, X, y, v, key, torch_side, peer_ok)
            fns = {"ours": ours} | ({"ref": ref} if ref else {})
            med = peers.interleaved(fns, rounds)
            flops = flops_of(name, sizes, N, steps)
            target = TARGETS[name]
            if ref:
                ratio = med["ref"] / med["ours"]
                peer_ms, ratio_s, met = f"{1e3 * med['ref']:.1f}", f"{ratio:.2f}×", ratio >= target
            else:
                ratio, peer_ms, ratio_s, met = None, "skipped", "–", None
            print(
                f"| {name} | {N} | {1e3 * med['ours']:.1f} | {peer_ms} | {ratio_s} | ≥ {target}× | "
                f"{'' if met is None else ('yes' if met else 'NO')} | {flops / 1e9:.2f} | "
                f"{100 * flops / limit / med['ours']:.0f}% | {note} |"
            )
            out.append({"row": name, "batch": N, "ours_s": med["ours"], "ratio": ratio})
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
