r"""The damped Gauss-Newton direction d = −(G + μD)⁻¹ ∇L, by a dense Cholesky solve of the
normal equations or by conjugate gradients on the GGN-vector product.

G is the generalised Gauss-Newton matrix of the batch loss L = Σ_n w_n ℓ_n, the one
:func:`~mlds_jax.extensions.rop.ggn_vp` multiplies by (H7), (at the logits for sigmoid +
BCE and softmax + CE, at Ŷ otherwise); μ > 0 the damping; D = I, or diag(G) with
``scaling=True`` (Marquardt's scaling).  Equations (M1), (M2) of ``docs/derivations.md``;
:func:`mlds_jax.levenberg_marquardt` adapts μ by the damping rule (M4) around these solves.

**Dense** (``solver="dense"``): R = [√w_n S_nᵀ J_n]_n (N·K × P), the GGN's square root built by
back-propagating the output-Hessian factors (H8), (J1), (J2); G = RᵀR, then the Cholesky factor
of G + μD and two triangular solves.  Cost ≈ 2·N·K·P² (forming G, one GEMM) + P³/3 (Cholesky)
floating-point operations; memory N·K·P + P².

**Conjugate gradients** (``solver="cg"``): no G is formed; each CG iteration is one
:func:`~mlds_jax.extensions.rop.ggn_vp_core` (about two forward and two backward
passes, O(N·P)) plus μD v; stops at relative residual ``cg_tol`` or after ``cg_maxiter``
iterations.

**The switch** (``solver="auto"``): dense when P ≤ :data:`DENSE_AUTO_MAX_PARAMS` (and the
Jacobian fits in :data:`DENSE_MAX_JACOBIAN_ENTRIES`), CG otherwise.  Measured by
``benchmarks/lm.py`` ("switch" table: N = 1000 rows, 16-h-1 tanh, float64, CG to relative
residual 10⁻⁶, one direction; a shared 2-core CPU at load 6-14, two runs, so ratios only):
with a small damping μ = 10⁻⁶·mean diag(G), as late in an LM run, CG took 2.5-3.2× the dense
time at P = 253, 2.1-3.8× at P = 991, 0.6-1.1× at P = 1999 and 0.2-0.4× at P = 3997; with
μ = 10⁻³·mean diag(G) it is as fast as dense at P ≈ 1000 and cheaper above.  Within LM a
dense G also serves every damping retry of an iteration (about two solves per iteration), so
the switch sits at 2048 parameters.  A forced dense solve beyond :data:`DENSE_MAX_PARAMS`
parameters (G alone would take P²·8 bytes) is refused with an error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import check_row_weights
from mlds_jax.extensions.diag_ggn import diag_ggn_core
from mlds_jax.extensions.ggn_factors import output_sqrt_factor
from mlds_jax.extensions.jacobian import flat_factor_jacobian
from mlds_jax.extensions.rop import ggn_vp_core
from mlds_jax.layers import Params

__all__ = [
    "DENSE_AUTO_MAX_PARAMS",
    "DENSE_MAX_JACOBIAN_ENTRIES",
    "DENSE_MAX_PARAMS",
    "GN_SOLVERS",
    "check_damping",
    "check_gn_solver",
    "check_solver_options",
    "damped_solve_cg",
    "damped_solve_dense",
    "flat_diag_ggn",
    "flat_ggn_matvec",
    "gauss_newton_direction",
    "gauss_newton_direction_core",
    "ggn_root",
    "marquardt_scale",
    "normal_equations",
    "penalty_mask",
]

#: The linear solvers of the damped Gauss-Newton system.
GN_SOLVERS = ("auto", "dense", "cg")

#: ``solver="auto"`` solves densely up to this many parameters, by CG above (measured: see
#: the module docstring and ``benchmarks/lm.py``).
DENSE_AUTO_MAX_PARAMS = 2048

#: A dense solve is refused above this many parameters: G alone is P² entries (8192² float64
#: = 512 MiB) and its Cholesky factorisation P³/3 operations (~10 s at 20 GFLOP/s).
DENSE_MAX_PARAMS = 8192

#: A dense solve is refused when the GGN's square root R (N·K × P) has more entries than this
#: (2²⁷ float64 entries = 1 GiB).
DENSE_MAX_JACOBIAN_ENTRIES = 2**27


# --- the normal equations (M1) ----------------------------------------------------------------
def ggn_root(params: Params, cache: core.ForwardCache, loss: str, w: Array) -> Array:
    r"""R (N·K, P) with RᵀR = G: rows √w_n S_nᵀ J_n, S_n S_nᵀ the output Hessian (H8), (J2)."""
    S = output_sqrt_factor(cache, loss, params[-1].activation, w)  # (H8)
    return flat_factor_jacobian(params, cache, S)  # (J1), (J2)


def penalty_mask(params: Params) -> Array:
    """(P,) 1 on the weight matrices' entries, 0 on the biases, in ``ravel_pytree`` order."""
    mask = [(jnp.ones_like(layer.W), jnp.zeros_like(layer.b)) for layer in params]
    return ravel_pytree(mask)[0]


def normal_equations(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    w: Array,
    l2: Array | float = 0.0,
) -> tuple[Array, Array, Array]:
    r"""(G (P, P), g = ∇L (P,), L) of L = Σ_n w_n ℓ_n + (l2/2) Σ_l ‖W^(l)‖² (M1), (M5).

    G = RᵀR (H7), (J2) plus l2 on the weights' diagonal; g by the hand-derived backward
    (B1)-(B5) plus l2·W.
    """
    cache = core.forward_cache(params, X)
    R = ggn_root(params, cache, loss, w)
    G = R.T @ R  # (M1): Σ_n w_n J_nᵀ H_n J_n
    value = core.loss_value(cache, Y, loss, w)
    g = ravel_pytree(core.backward(params, cache, Y, loss, row_weights=w).grads)[0]
    theta = ravel_pytree(params)[0]
    mask = penalty_mask(params)
    value = value + 0.5 * l2 * jnp.sum(mask * theta * theta)  # (M5)
    g = g + l2 * mask * theta  # (M5)
    G = G + jnp.diag(l2 * mask)  # (M5)
    return G, g, value


def marquardt_scale(diag: Array) -> Array:
    """D from diag(G): the diagonal itself, 1 where it is 0 (no curvature: no units) (M2)."""
    return jnp.where(diag > 0, diag, jnp.ones_like(diag))


# --- the damped solves (M2) ---------------------------------------------------------------------
def damped_solve_dense(G: Array, g: Array, mu: Array, D: Array) -> Array:
    r"""d = −(G + μ diag(D))⁻¹ g by Cholesky (M2); NaN where G + μD is not numerically
    positive definite (the caller then raises μ)."""
    A = G + jnp.diag(mu * D)  # (M2)
    C = jnp.linalg.cholesky(A)
    y = jax.scipy.linalg.solve_triangular(C, -g, lower=True)
    return jax.scipy.linalg.solve_triangular(C.T, y, lower=False)


def damped_solve_cg(matvec, g: Array, mu: Array, D: Array, tol: Array, maxiter: int) -> Array:
    r"""d = −(G + μ diag(D))⁻¹ g by conjugate gradients on v ↦ G v (M2), from d = 0.

    Stops at ‖r‖ ≤ tol·‖g‖, after ``maxiter`` iterations, or at a breakdown: a curvature
    pᵀAp or a residual rᵀr that is no longer a positive finite number (in float32 both
    underflow once the recursive residual has fallen ~19 orders; A = G + μD is positive
    definite, so anything else is rounding).  The last iterate before a breakdown is
    returned, never the NaN that 0/0 would give (``jax.scipy.sparse.linalg.cg`` has no such
    guard: on digits in float32 it returned NaN directions).
    """

    def op(v):
        return matvec(v) + mu * D * v  # (M2)

    b = -g
    stop2 = tol * tol * (b @ b)  # tol may be traced: one compilation serves every value

    def positive(x):
        return jnp.isfinite(x) & (x > 0)

    def cond(state):
        _, _, _, rr, k, ok = state
        return ok & (rr > stop2) & (k < maxiter)

    def body(state):
        d, r, p, rr, k, _ = state
        Ap = op(p)
        pAp = p @ Ap
        alpha = rr / pAp
        d_new, r_new = d + alpha * p, r - alpha * Ap
        rr_new = r_new @ r_new
        ok = positive(pAp) & jnp.isfinite(rr_new) & jnp.all(jnp.isfinite(d_new))
        keep = ok & positive(rr_new)
        beta = jnp.where(keep, rr_new / jnp.where(keep, rr, 1), 0)
        d = jnp.where(ok, d_new, d)
        return (d, jnp.where(ok, r_new, r), r_new + beta * p, jnp.where(ok, rr_new, rr),
                k + 1, keep)  # fmt: skip

    state = (jnp.zeros_like(b), b, b, b @ b, jnp.int32(0), positive(b @ b))
    return jax.lax.while_loop(cond, body, state)[0]


def flat_ggn_matvec(
    params: Params, X: Array, Y: Array, loss: str, w: Array, l2: Array | float = 0.0
):
    """v (P,) ↦ G v (P,) by :func:`~mlds_jax.extensions.rop.ggn_vp_core` (H7), plus
    the penalty's l2 on the weights (M5)."""
    _, unravel = ravel_pytree(params)
    mask = penalty_mask(params)

    def matvec(v):
        Gv = ravel_pytree(ggn_vp_core(params, X, Y, loss, unravel(v), w))[0]  # (H7)
        return Gv + l2 * mask * v  # (M5)

    return matvec


def flat_diag_ggn(
    params: Params, X: Array, Y: Array, loss: str, w: Array, l2: Array | float = 0.0
) -> Array:
    """diag(G) (P,) by :func:`~mlds_jax.extensions.diag_ggn.diag_ggn_core` (H10), (M5)."""
    d = ravel_pytree(diag_ggn_core(params, X, Y, loss, w))[0]  # (H10)
    return d + l2 * penalty_mask(params)  # (M5)


@functools.partial(jax.jit, static_argnames=("loss", "solver", "scaling", "cg_maxiter"))
def gauss_newton_direction_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    damping: Array,
    row_weights: Array,
    solver: str = "dense",
    scaling: bool = False,
    cg_tol: Array | float = 1e-6,
    cg_maxiter: int = 100,
) -> Params:
    r"""d = −(G + μD)⁻¹ ∇L like params (M1), (M2), unchecked; ``solver`` "dense" or "cg"."""
    _, unravel = ravel_pytree(params)
    w = row_weights.astype(X.dtype)
    mu = jnp.asarray(damping, X.dtype)
    if solver == "dense":
        G, g, _ = normal_equations(params, X, Y, loss, w)
        D = marquardt_scale(jnp.diag(G)) if scaling else jnp.ones_like(g)
        return unravel(damped_solve_dense(G, g, mu, D))
    _, grads = core.value_and_grads(params, X, Y, loss, row_weights=w)
    g = ravel_pytree(grads)[0]
    D = marquardt_scale(flat_diag_ggn(params, X, Y, loss, w)) if scaling else jnp.ones_like(g)
    matvec = flat_ggn_matvec(params, X, Y, loss, w)
    return unravel(damped_solve_cg(matvec, g, mu, D, jnp.asarray(cg_tol, X.dtype), cg_maxiter))


# --- the checked API --------------------------------------------------------------------------
def check_gn_solver(solver: str, n_params: int, n_rows: int, n_out: int) -> str:
    """``"dense"`` or ``"cg"`` for ``solver`` in :data:`GN_SOLVERS` and a problem with P
    parameters, N rows and K outputs; a forced dense solve of a too-large system is an error."""
    if solver not in GN_SOLVERS:
        raise ValueError(f"solver must be one of {list(GN_SOLVERS)}, got {solver!r}")
    entries = n_rows * n_out * n_params
    fits = n_params <= DENSE_MAX_PARAMS and entries <= DENSE_MAX_JACOBIAN_ENTRIES
    if solver == "dense" and not fits:
        raise ValueError(
            f'solver="dense" needs the {n_params} x {n_params} matrix G and the '
            f"{n_rows * n_out} x {n_params} Jacobian; the dense solve is limited to "
            f"{DENSE_MAX_PARAMS} parameters and {DENSE_MAX_JACOBIAN_ENTRIES} Jacobian entries "
            f'(N*K*P = {entries}): use solver="cg" (or "auto") for this network'
        )
    if solver == "auto":
        return "dense" if fits and n_params <= DENSE_AUTO_MAX_PARAMS else "cg"
    return solver


def check_damping(damping, name: str = "damping") -> float:
    """μ as a finite float > 0."""
    return validation.positive_float(damping, name)


def check_solver_options(
    params: Params, n_rows: int, n_out: int, solver: str, scaling, cg_tol, cg_maxiter
) -> tuple[str, float, int]:
    """(``"dense"`` or ``"cg"``, cg_tol, cg_maxiter (default P)) for N rows and K outputs,
    each option checked (:func:`check_gn_solver` for the solver and the dense limits)."""
    if not isinstance(scaling, bool):
        raise TypeError(f"scaling must be a bool, got {scaling!r}")
    n_params = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    method = check_gn_solver(solver, n_params, n_rows, n_out)
    tol = validation.positive_float(cg_tol, "cg_tol")
    maxiter = n_params if cg_maxiter is None else validation.positive_int(cg_maxiter, "cg_maxiter")
    return method, tol, maxiter


def gauss_newton_direction(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    damping: float,
    row_weights: ArrayLike | None = None,
    solver: str = "auto",
    scaling: bool = False,
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
) -> Params:
    r"""The damped Gauss-Newton step d = −(G + μD)⁻¹ ∇L, like params (M1), (M2).

    .. math:: (G + \mu D)\,d = -\nabla L,\qquad G = \sum_n w_n J_n^T H_n J_n

    G is the GGN of the batch loss (the matrix :func:`~mlds_jax.extensions.rop.ggn_vp`
    multiplies by), μ = ``damping``, D = I (or diag(G) with ``scaling``).  As μ → 0 this is the
    Gauss-Newton step −G⁻¹∇L (when G is invertible); as μ → ∞ it tends to −∇L/μ (−D⁻¹∇L/μ):
    a gradient step of length 1/μ (M3).

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets, as :func:`mlds_jax.loss` takes them.
      loss: loss name.
      damping: μ > 0, in the units of G (that of the mean loss by default).
      row_weights: optional w (N,), ≥ 0 (default 1/N).
      solver: ``"dense"`` (form G, Cholesky), ``"cg"`` (conjugate gradients on the GGN-vector
        product, G never formed) or ``"auto"`` (dense up to :data:`DENSE_AUTO_MAX_PARAMS`
        parameters); see the module docstring for the costs and the measured switch.
      scaling: Marquardt's scaling D = diag(G) (entries where it is 0 set to 1).
      cg_tol: CG's relative residual ‖(G + μD)d + ∇L‖ ≤ cg_tol·‖∇L‖.
      cg_maxiter: the most CG iterations (default P, exact in exact arithmetic).

    Returns:
      d, like params.

    Raises:
      ValueError: damping ≤ 0, an unknown solver, ``solver="dense"`` on a network beyond
        :data:`DENSE_MAX_PARAMS` parameters (or :data:`DENSE_MAX_JACOBIAN_ENTRIES` Jacobian
        entries), or any input check of :func:`mlds_jax.loss`.
    """
    mu = check_damping(damping)
    X, Y = validation.check_batch(params, X, Y, loss)
    w = check_row_weights(row_weights, X.shape[0], params[0].W.dtype)
    method, tol, maxiter = check_solver_options(
        params, X.shape[0], Y.shape[1], solver, scaling, cg_tol, cg_maxiter
    )
    return gauss_newton_direction_core(params, X, Y, loss, mu, w, method, scaling, tol, maxiter)
