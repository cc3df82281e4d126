"""The lecture's gradient-descent study: f(x1, x2) = x1^2 + x1*x2 + 4*x2^2 from x0 = [3, 3].

Runs fixed-step gradient descent for several step sizes (lecture: eta = 0.1 and eta = 0.2, plus
0.26, just past the stability bound 2 / lambda_max ~= 0.245), prints a table and the bound, and
saves a figure: contour plot of f with each path, and f(x_k) against k on a log scale.

Usage::

    python examples/gradient_descent.py --etas 0.1,0.2,0.26 --max-iter 1000 --out gd_paths.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

import mlds_jax as mj  # noqa: E402
from mlds_jax.descent import GradientDescentResult  # noqa: E402

X_INITIAL = (3.0, 3.0)
ETAS = "0.1,0.2,0.26"  # the lecture's two steps, and one just past 2 / lambda_max ~= 0.245
MAX_ITER = 1000
OUT = None  # the figure is written only when --out PATH is given
DIVERGENT_SHOWN = 12  # iterations of a divergent path drawn on the contour panel


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv=None`` reads ``sys.argv``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--etas",
        default=ETAS,
        help="comma-separated fixed step sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=MAX_ITER,
        help="iteration cap per run (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        default=OUT,
        metavar="PATH",
        help="save the figure as this PNG (default: no figure written)",
    )
    args = parser.parse_args(argv)
    try:
        args.etas = [float(e) for e in args.etas.split(",") if e.strip()]
    except ValueError:
        parser.error(f"--etas must be comma-separated numbers, got {args.etas!r}")
    if not args.etas:
        parser.error("--etas is empty")
    return args


def run_study(etas: Sequence[float], max_iter: int) -> dict[float, GradientDescentResult]:
    """Run gradient descent on the lecture's function from ``X_INITIAL`` for each step size."""
    x0 = jnp.asarray(X_INITIAL, dtype=jnp.float32)
    return {
        eta: mj.gradient_descent(mj.descent.quadratic_example, x0, step_size=eta, max_iter=max_iter)
        for eta in etas
    }


def format_table(results: dict[float, GradientDescentResult]) -> str:
    """Plain-text table: eta, iterations, converged, reason, final f."""
    lines = [f"{'eta':>8}  {'iters':>6}  {'converged':>9}  {'reason':>9}  {'final f':>12}"]
    for eta, res in results.items():
        lines.append(
            f"{eta:>8.4g}  {res.n_iter:>6d}  {res.converged!s:>9}  {res.reason:>9}  {res.f:>12.4e}"
        )
    return "\n".join(lines)


def plot_study(results: dict[float, GradientDescentResult], out: str, eta_max: float) -> None:
    """Save the contour-plus-paths panel and the f(x_k)-vs-k panel to ``out``."""
    fig, (ax_path, ax_f) = plt.subplots(1, 2, figsize=(12, 5))

    lim = 4.0
    grid = np.linspace(-lim, lim, 201)
    xx, yy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=jnp.float32)
    zz = np.asarray(jax.vmap(mj.descent.quadratic_example)(points)).reshape(xx.shape)
    contours = ax_path.contour(xx, yy, zz, levels=np.geomspace(0.05, zz.max(), 15), cmap="viridis")
    ax_path.clabel(contours, fontsize=7, fmt="%.2g")

    for eta, res in results.items():
        label = f"eta={eta:g} ({res.reason}, {res.n_iter} it.)"
        path = np.asarray(res.path)
        if not res.converged:  # a divergent path would cover the contours: its start only
            inside = np.all(np.abs(path) <= lim, axis=1)
            leaves = int(np.argmin(inside)) if not inside.all() else len(path)
            path = path[: min(DIVERGENT_SHOWN, leaves + 1)]
            label += f", first {len(path) - 1} step(s) drawn"
        (line,) = ax_path.plot(path[:, 0], path[:, 1], ".-", ms=3, lw=1, label=label)
        # f can reach exactly 0 in floating point; keep the log axis defined
        f_vals = np.maximum(res.f_path.astype(np.float64), np.finfo(np.float32).tiny)
        ax_f.semilogy(np.arange(res.n_iter + 1), f_vals, color=line.get_color(), label=label)

    ax_path.plot(*X_INITIAL, "k*", ms=10, label="x0 = [3, 3]")
    ax_path.plot(0.0, 0.0, "r*", ms=14, mec="k", zorder=5, label="minimum [0, 0]")
    ax_path.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="x1", ylabel="x2", aspect="equal")
    title = r"$f = x_1^2 + x_1 x_2 + 4 x_2^2$; 2/$\lambda_{max}$ = " + f"{eta_max:.4f}"
    ax_path.set_title(title)
    ax_path.legend(fontsize=7, loc="lower left")
    ax_f.set(xlabel="iteration k", ylabel=r"$f(x^k)$", title="f along the path (log scale)")
    ax_f.grid(True, which="both", alpha=0.3)
    ax_f.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the study, print the table and the stability bound, save the figure.

    Returns:
      ``{"eta_max": 2 / lambda_max, "runs": {eta: {"n_iter", "converged", "reason", "f",
      "grad_norm", "x"}}}`` with plain Python values.
    """
    args = parse_args(argv)
    x0 = jnp.asarray(X_INITIAL, dtype=jnp.float32)
    # The Hessian [[2, 1], [1, 8]] is constant, so the bound is the same at every point.
    eta_max = mj.max_stable_step_size(mj.descent.quadratic_example, x0)
    results = run_study(args.etas, args.max_iter)
    print(format_table(results))
    print(f"largest stable fixed step 2/lambda_max = {eta_max:.5f}")
    if args.out is not None:
        plot_study(results, args.out, eta_max)
        print(f"figure saved to {args.out}")
    runs = {
        eta: {
            "n_iter": res.n_iter,
            "converged": res.converged,
            "reason": res.reason,
            "f": res.f,
            "grad_norm": res.grad_norm,
            "x": [float(v) for v in np.asarray(res.x)],
        }
        for eta, res in results.items()
    }
    return {"eta_max": eta_max, "runs": runs}


if __name__ == "__main__":
    main()
