r"""Benchmark of Levenberg–Marquardt (``mj.levenberg_marquardt``, issue 26): four tables.

Run ``.venv/bin/python benchmarks/lm.py`` (about 3-6 minutes on a 2-core machine), or
``--size tiny`` for a smoke run; ``--sections scipy,realizable,flops,switch`` picks tables.

1. **scipy** — ``scipy.optimize.least_squares(method="lm")`` (MINPACK's lmder) given the exact
   Jacobian (a jitted ``jax.jacrev`` of the residuals), against ``mj.levenberg_marquardt``:
   diabetes (442 × 10, features and target standardised), a 10-16-1 tanh network, mean squared
   error, float64, three starting seeds (``mj.init_mlp``), the same start for both.  scipy runs
   ``max_nfev = --scipy-nfev`` function evaluations; ours runs as many iterations as scipy's
   Jacobian evaluations ("equal iterations"), and again with ``goal`` = scipy's final loss
   ("time to scipy's loss": LM stops as soon as it is as low).  Both minimise the same
   residuals (scipy's cost ½Σr² is N/2 times our mean squared error).
   Targets: our final loss at most 1% above scipy's (median over seeds), ≥ 3× faster.
2. **realizable** — targets made by a 2-6-1 tanh teacher (200 inputs ~ N(0, I), biases
   N(0, 0.5²)), four starts = the teacher plus N(0, σ²) noise on every parameter, one table
   per σ of ``--noise`` (default 0.1, 0.2, 0.3: the farther the start, the more often LM meets
   a long curved valley or another local minimum), float64.  LM runs up to 500 iterations
   (tol = 0): the loss it reaches relative to its initial loss.  Adam (full batch,
   ``optax.adam``, the hand-derived gradient in one compiled loop) then gets 10× LM's wall
   time on the same start, for two learning rates; the best of the two per start.  Targets:
   LM's median ratio < 1e-7; Adam's median final loss ≥ 10× LM's.
3. **flops** — one dense LM iteration on a 16-55-1 tanh network (P = 991 parameters), 1000
   rows, float32: iterations timed inside ``mj.levenberg_marquardt`` (its per-iteration time =
   the run's time / iterations) against the operation count of what it does: per iteration
   2·N·P² (G = RᵀR) + 2·N·P (the Jacobian rows) + 6·N·P (forward and backward), per linear
   solve P³/3 (Cholesky) + 2P² (triangular solves) + 2·N·P (the trial loss), divided by this
   machine's GEMM speed measured in the same run (a float32 2048² GEMM, and the RᵀR GEMM of
   the shape LM forms).  Target: within 2× of that bound (~10 ms).
4. **switch** — the direction −(G + μI)⁻¹∇L by ``gauss_newton_direction_core`` dense against
   CG (relative residual 1e-6), N = 1000 rows, 16-h-1 tanh networks of growing P, float64,
   μ = c × mean diag(G) for c = 1e-3 and 1e-6 (LM's damping shrinks as it converges, and CG
   needs more iterations the smaller it is): where CG becomes cheaper than dense
   (``DENSE_AUTO_MAX_PARAMS``).

Method: one process; every contender compiled and run once before timing; then ``--rounds``
interleaved rounds (contenders in rotating order), medians reported with ratios to the
baseline measured in the same run.  The machine is shared: note ``uptime``'s load (printed).

**BLAS threads under load.** The Cholesky factorisation (``jnp.linalg.cholesky``) calls LAPACK
from scipy's OpenBLAS.  On an oversubscribed machine OpenBLAS's worker threads stall each
other: a 193 × 193 float64 Cholesky measured 13-330 ms with the default threads at load 10 on
2 cores, 0.8 ms with ``OPENBLAS_NUM_THREADS=1``.  ``--blas-threads N`` sets
``OPENBLAS_NUM_THREADS`` (and OMP/MKL) before NumPy and JAX load; the table header says which.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--sections", default="scipy,realizable,flops,switch")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (full 3, tiny 1)")
    p.add_argument("--scipy-nfev", type=int, default=None, help="scipy's max_nfev (full 200)")
    p.add_argument(
        "--noise", default="0.1,0.2,0.3", help="σ of the realizable starts (a table each)"
    )
    p.add_argument("--blas-threads", type=int, default=None)
    return p.parse_args(argv)


ARGS = _parse(sys.argv[1:] if __name__ == "__main__" else [])
if ARGS.blas_threads is not None:  # before NumPy and JAX load their BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.blas_threads)

import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import mlds_jax as mj  # noqa: E402
from mlds_jax.extensions import gauss_newton  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 where a table says so; float32 arrays stay


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t, out


def interleaved(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """{name: [seconds per round]}: each contender once per round, the order rotated."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(timed(contenders[n])[0])
    return times


def med(xs) -> float:
    return float(statistics.median(xs))


# --- shared pieces ---------------------------------------------------------------------------
def diabetes():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X, y[:, None]


def adam_loop(loss: str):
    """A compiled full-batch Adam run: (params, X, Y, lr, steps) -> (params, final loss)."""

    @jax.jit
    def run(params, X, Y, lr, steps):
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
        state = opt.init(params)

        def step(_, carry):
            p, s = carry
            _, g = mj.core.value_and_grads(p, X, Y, loss)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, _ = jax.lax.fori_loop(0, steps, step, (params, state))
        return p, mj.core.batch_loss(p, X, Y, loss)

    return run


# --- 1. against scipy -------------------------------------------------------------------------
def section_scipy(size: str, rounds: int, nfev: int) -> None:
    from scipy.optimize import least_squares

    X, Y = diabetes()
    sizes = [10, 16, 1]
    if size == "tiny":
        X, Y = X[:250], Y[:250]  # MINPACK needs N ≥ P = 193
    Xj, yj = jnp.asarray(X), jnp.asarray(Y[:, 0])
    rows = []
    for seed in range(3):
        p0 = mj.init_mlp(jax.random.key(seed), sizes, hidden="tanh", dtype=jnp.float64)
        flat, unravel = ravel_pytree(p0)

        def residual(t, unravel=unravel):
            return mj.core.forward(unravel(t), Xj)[:, 0] - yj

        fun, jac = jax.jit(residual), jax.jit(jax.jacrev(residual))
        x0 = np.asarray(flat)
        fun(x0), jac(x0)  # compile

        def scipy_run(fun=fun, jac=jac, x0=x0):
            return least_squares(
                lambda t: np.asarray(fun(t)), x0, jac=lambda t: np.asarray(jac(t)),
                method="lm", max_nfev=nfev,
            )  # fmt: skip

        res = scipy_run()
        scipy_mse = float(np.mean(res.fun**2))
        iters = int(res.njev)

        def ours(p0=p0, iters=iters):
            return mj.levenberg_marquardt(p0, X, Y, "mse", max_iter=iters, tol=0.0)

        def ours_goal(p0=p0, goal=scipy_mse, cap=10 * iters):
            return mj.levenberg_marquardt(p0, X, Y, "mse", max_iter=cap, goal=goal, tol=0.0)

        _, r_eq = ours()
        _, r_goal = ours_goal()
        times = interleaved(
            {"scipy": lambda f=scipy_run: f().x, "ours": lambda f=ours: f()[0],
             "ours_goal": lambda f=ours_goal: f()[0]},
            rounds,
        )  # fmt: skip
        rows.append(
            dict(seed=seed, nfev=res.nfev, njev=iters, scipy_loss=scipy_mse,
                 ours_loss=float(r_eq.loss_history[-1]), t_scipy=med(times["scipy"]),
                 t_ours=med(times["ours"]), goal_iters=r_goal.iterations,
                 goal_reached=r_goal.stop_reason == "goal", t_goal=med(times["ours_goal"]))
        )  # fmt: skip
    print(f"\n### 1. against scipy.optimize.least_squares(method='lm'), exact Jacobian "
          f"(diabetes {X.shape[0]} x 10, 10-16-1 tanh, mse, float64; max_nfev = {nfev}; "
          f"{rounds} round(s))\n")  # fmt: skip
    print(
        "| seed | scipy nfev / njev | scipy MSE | ours MSE (same iterations) | ratio | "
        "scipy s | ours s | speed-up | ours iters to scipy's MSE | s | speed-up |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['nfev']} / {r['njev']} | {r['scipy_loss']:.5f} | "
              f"{r['ours_loss']:.5f} | {r['ours_loss'] / r['scipy_loss']:.3f} | "
              f"{r['t_scipy']:.3f} | {r['t_ours']:.4f} | {r['t_scipy'] / r['t_ours']:.1f}x | "
              f"{r['goal_iters']}{'' if r['goal_reached'] else ' (not reached)'} | "
              f"{r['t_goal']:.4f} | {r['t_scipy'] / r['t_goal']:.1f}x |")  # fmt: skip
    ratio = med([r["ours_loss"] / r["scipy_loss"] for r in rows])
    speed = med([r["t_scipy"] / r["t_ours"] for r in rows])
    speed_goal = med([r["t_scipy"] / r["t_goal"] for r in rows])
    print(f"\nmedian over seeds: final-loss ratio ours/scipy {ratio:.3f} (target ≤ 1.01); "
          f"speed-up {speed:.1f}x at equal iterations, {speed_goal:.1f}x to scipy's loss "
          "(target ≥ 3x)")  # fmt: skip


# --- 2. the realizable problem ----------------------------------------------------------------
def section_realizable(size: str, rounds: int, noise: float) -> None:
    rng = np.random.default_rng(0)
    teacher = mj.init_mlp(jax.random.key(1), [2, 6, 1], hidden="tanh", dtype=jnp.float64)
    teacher = tuple(
        mj.Dense(
            W=t.W, b=jnp.asarray(0.5 * rng.standard_normal(t.b.shape)), activation=t.activation
        )
        for t in teacher
    )
    n = 200 if size == "full" else 50
    max_iter = 500 if size == "full" else 50
    X = rng.standard_normal((n, 2))
    Y = np.asarray(mj.forward(teacher, X))
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    adam = adam_loop("mse")
    lrs = (1e-2, 1e-3)
    rows = []
    for s in range(4):
        r2 = np.random.default_rng(100 + s)
        start = jax.tree_util.tree_map(
            lambda a, r2=r2: a + noise * r2.standard_normal(a.shape), teacher
        )

        def lm(start=start):
            return mj.levenberg_marquardt(start, X, Y, "mse", max_iter=max_iter, tol=0.0)

        _, res = lm()
        t_lm = med(interleaved({"lm": lambda f=lm: f()[0]}, rounds)["lm"])
        # Adam's steps in 10x LM's time, from its own per-step time measured here
        probe = 2000
        adam(start, Xj, Yj, lrs[0], probe)  # compile (steps and lr are data)
        t_probe = med(
            interleaved({"a": lambda s=start, n=probe: adam(s, Xj, Yj, lrs[0], n)}, rounds)["a"]
        )
        steps = max(1, int(10 * t_lm / (t_probe / probe)))
        finals = {}
        t_adam = {}
        for lr in lrs:
            t, (_, value) = timed(lambda lr=lr, s=start, n=steps: adam(s, Xj, Yj, lr, n))
            finals[lr], t_adam[lr] = float(value), t
        best = min(finals, key=finals.get)
        rows.append(
            dict(start=s, L0=res.loss_history[0], L=res.loss_history[-1], iters=res.iterations,
                 stop=res.stop_reason, t_lm=t_lm, steps=steps, lr=best, adam=finals[best],
                 t_adam=t_adam[best], other=finals[lrs[1] if best == lrs[0] else lrs[0]])
        )  # fmt: skip
    print(f"\n### 2. realizable 2-6-1 tanh (N = {n}, starts = teacher + N(0, {noise}²), float64; "
          f"LM ≤ {max_iter} iterations, Adam 10x LM's time, best of lr {lrs})\n")  # fmt: skip
    print(
        "| start | L0 | LM loss | LM / L0 | LM iters (stop) | LM s | Adam steps | Adam s | "
        "Adam loss (lr) | other lr | Adam / LM |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['start']} | {r['L0']:.3g} | {r['L']:.3g} | {r['L'] / r['L0']:.2g} | "
              f"{r['iters']} ({r['stop']}) | {r['t_lm']:.3f} | {r['steps']} | {r['t_adam']:.3f} | "
              f"{r['adam']:.3g} ({r['lr']:g}) | {r['other']:.3g} | "
              f"{r['adam'] / max(r['L'], 1e-300):.2g} |")  # fmt: skip
    lm_ratio = med([r["L"] / r["L0"] for r in rows])
    adam_over = med([r["adam"] for r in rows]) / max(med([r["L"] for r in rows]), 1e-300)
    print(f"\nmedian LM loss / initial = {lm_ratio:.2g} (target < 1e-7); median Adam loss / "
          f"median LM loss = {adam_over:.3g} (target ≥ 10)")  # fmt: skip


# --- 3. the dense iteration against its FLOP count --------------------------------------------
def gemm_speed(n: int, dtype, rounds: int) -> float:
    A = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    mm = jax.jit(lambda a: a @ a)
    mm(A).block_until_ready()
    reps = 5
    t = med(interleaved({"g": lambda: [mm(A) for _ in range(reps)][-1]}, max(rounds, 3))["g"])
    return 2 * n**3 * reps / t


def rtr_speed(R, rounds: int) -> float:
    f = jax.jit(lambda r: r.T @ r)
    f(R).block_until_ready()
    reps = 10
    t = med(interleaved({"g": lambda: [f(R) for _ in range(reps)][-1]}, max(rounds, 3))["g"])
    N, P = R.shape
    return 2 * N * P * P * reps / t


def section_flops(size: str, rounds: int) -> None:
    h, N = (55, 1000) if size == "full" else (14, 200)
    sizes = [16, h, 1]
    rng = np.random.default_rng(0)
    params = mj.init_mlp(jax.random.key(0), sizes, hidden="tanh", dtype=jnp.float32)
    P = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    X = rng.standard_normal((N, 16)).astype(np.float32)
    Y = np.sin(X[:, :1] + X[:, 1:2]).astype(np.float32)
    iters = 20

    def lm():
        return mj.levenberg_marquardt(params, X, Y, "mse", max_iter=iters, tol=0.0, solver="dense")

    _, res = lm()
    t = med(interleaved({"lm": lambda: lm()[0]}, max(rounds, 3))["lm"])
    peak = gemm_speed(2048 if size == "full" else 512, jnp.float32, rounds)
    R = jnp.asarray(rng.standard_normal((N, P)), jnp.float32)
    rtr = rtr_speed(R, rounds)
    k, s = res.iterations, res.solves
    flops = k * (2 * N * P * P + 2 * N * P + 6 * N * P) + s * (P**3 / 3 + 2 * P * P + 2 * N * P)
    per_iter = t / k
    bound_peak = flops / k / peak
    bound_rtr = flops / k / rtr
    print(f"\n### 3. one dense LM iteration against its FLOP count (16-{h}-1 tanh, P = {P}, "
          f"N = {N}, float32; {k} iterations, {s} solves)\n")  # fmt: skip
    print("| quantity | value |\n|---|---:|")
    print(f"| FLOPs per iteration (2NP² + P³/3 per solve + ...) | {flops / k / 1e9:.3f} G |")
    print(f"| GEMM speed, 2048² float32 | {peak / 1e9:.1f} GFLOP/s |")
    print(f"| GEMM speed, RᵀR ({N} x {P}) float32 | {rtr / 1e9:.1f} GFLOP/s |")
    print(f"| FLOP-count time at the 2048² speed | {bound_peak * 1e3:.2f} ms |")
    print(f"| FLOP-count time at the RᵀR speed | {bound_rtr * 1e3:.2f} ms |")
    print(f"| measured time per iteration (whole run / iterations) | {per_iter * 1e3:.2f} ms |")
    print(f"| ratio to the 2048² bound (target ≤ 2) | {per_iter / bound_peak:.2f} |")
    print(f"| ratio to the RᵀR bound | {per_iter / bound_rtr:.2f} |")


# --- 4. dense against CG: the switch ----------------------------------------------------------
def section_switch(size: str, rounds: int) -> None:
    N = 1000 if size == "full" else 200
    widths = (14, 55, 111, 222) if size == "full" else (6, 14)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((N, 16)))
    Y = jnp.sin(X[:, :1] + X[:, 1:2])
    w = jnp.full((N,), 1.0 / N)
    core = gauss_newton.gauss_newton_direction_core
    print(f"\n### 4. dense vs CG direction (16-h-1 tanh, N = {N}, float64, μ = c·mean diag G, "
          f"CG to relative residual 1e-6, at most P iterations; {rounds} round(s))\n")  # fmt: skip
    print("| P | c | dense s | CG s | CG / dense |\n|---:|---:|---:|---:|---:|")
    for h in widths:
        params = mj.init_mlp(jax.random.key(0), [16, h, 1], hidden="tanh", dtype=jnp.float64)
        P = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
        diag = ravel_pytree(mj.diag_ggn(params, X, Y, "mse"))[0]
        for c in (1e-3, 1e-6):  # LM's damping late in a run is small: CG needs more iterations
            mu = c * float(jnp.mean(diag))

            def dense(params=params, mu=mu):
                return core(params, X, Y, "mse", mu, w, "dense")

            def cg(params=params, mu=mu, P=P):
                return core(params, X, Y, "mse", mu, w, "cg", False, 1e-6, P)

            dense(), cg()
            t = interleaved({"dense": dense, "cg": cg}, rounds)
            td, tc = med(t["dense"]), med(t["cg"])
            print(f"| {P} | {c:g} | {td:.4f} | {tc:.4f} | {tc / td:.2f} |")


def main() -> None:
    size = ARGS.size
    rounds = ARGS.rounds or (3 if size == "full" else 1)
    nfev = ARGS.scipy_nfev or (200 if size == "full" else 20)
    sections = ARGS.sections.split(",")
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"# benchmarks/lm.py ({size}); OPENBLAS_NUM_THREADS={threads}; jax {jax.__version__}")
    print(f"load before: {load()}")
    if "scipy" in sections:
        section_scipy(size, rounds, nfev)
    if "realizable" in sections:
        for noise in ARGS.noise.split(","):
            section_realizable(size, rounds, float(noise))
    if "flops" in sections:
        section_flops(size, rounds)
    if "switch" in sections:
        section_switch(size, rounds)
    print(f"\nload after: {load()}")


if __name__ == "__main__":
    main()
