r"""Levenberg–Marquardt training of a whole network: ``mj.levenberg_marquardt`` (MATLAB's
``trainlm``, with its defaults and stopping rules), on device.

Each iteration forms the damped Gauss-Newton system once, (G + μD) d = −∇L (M1), (M2) of
``docs/derivations.md`` (by :mod:`~mlds_jax.extensions.gauss_newton`: dense Cholesky, or CG on
the GGN-vector product), and adapts μ by trial (M4): the step is accepted when the loss falls
(μ ← μ·μ_dec), otherwise μ ← μ·μ_inc and only the solve is repeated.  Any loss of the
package: least squares exactly (the model is the loss of the linearised network), the
log-losses through the GGN at the logits.

**On device.** The iterations run inside one compiled ``lax.while_loop`` (the retries inside a
nested one), up to :data:`LM_CHUNK` iterations per call; the host sees the state once per
call (to stop or to continue), never once per iteration.  The hyperparameters are data, so one
compilation serves every value of them, every ``max_iter`` and every starting point of one
architecture, data shape and loss.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.extensions.checks import check_row_weights
from mlds_jax.extensions.gauss_newton import (
    check_damping,
    check_solver_options,
    damped_solve_cg,
    damped_solve_dense,
    flat_diag_ggn,
    flat_ggn_matvec,
    marquardt_scale,
    normal_equations,
    penalty_mask,
)
from mlds_jax.layers import Params

__all__ = [
    "LM_CHUNK",
    "LM_STOP_REASONS",
    "LMHyper",
    "LMState",
    "LevenbergMarquardtResult",
    "levenberg_marquardt",
    "lm_finish_core",
    "lm_start_core",
    "lm_steps_core",
]

#: Stop codes of :class:`LMState` ``stop``, indexing this tuple ("running" is 0).
LM_STOP_REASONS = (
    "running",
    "max_iter",
    "goal",
    "min_grad",
    "max_damping",
    "validation",
    "no_improvement",
)
_GOAL, _MIN_GRAD, _MAX_DAMPING, _VALIDATION, _NO_IMPROVEMENT = 2, 3, 4, 5, 6

#: The most iterations one compiled call runs (the host checks the stop flag in between).
LM_CHUNK = 64

#: trainlm's lower bound on μ after a successful step.
MIN_DAMPING = 1e-20


class LMHyper(NamedTuple):
    """The hyperparameters, as device scalars (data: changing one does not recompile)."""

    damping_decrease: Array
    damping_increase: Array
    max_damping: Array
    tol: Array
    goal: Array
    min_delta: Array
    max_fail: Array  # int32
    patience: Array  # int32 (a huge value: no patience rule)
    l2: Array
    cg_tol: Array


class LMState(NamedTuple):
    """Everything the iteration carries, on device.

    Attributes:
      theta: the parameters, flat (P,).  loss: L(theta) (penalty included).  damping: μ for
      the next trial.  scale: running max of diag(G) (Marquardt; zeros when unused).
      stop: an index into :data:`LM_STOP_REASONS` (0 while running).  iterations: accepted
      steps so far.  solves: linear solves so far (accepted and rejected trials).
      grad_norm: ‖∇L‖ at the start of the last iteration.  best_val, best_theta, best_iteration,
      fails: the validation rule's best loss, its parameters and iteration, and the failures
      since.  best_loss, stall: the patience rule's loss at its last improvement and the
      iterations since.
    """

    theta: Array
    loss: Array
    damping: Array
    scale: Array
    stop: Array
    iterations: Array
    solves: Array
    grad_norm: Array
    best_val: Array
    best_theta: Array
    best_iteration: Array
    fails: Array
    best_loss: Array
    stall: Array


class LevenbergMarquardtResult(NamedTuple):
    """What :func:`levenberg_marquardt` reports, on the host.

    Attributes:
      loss_history: (iterations + 1,) the training loss (with the ``l2`` penalty) at the start
        and after each iteration: strictly decreasing.
      damping_history: (iterations,) the μ of each accepted step.
      val_loss_history: (iterations + 1,) the validation loss at the same points, or None.
      iterations: accepted steps taken.
      solves: linear systems solved (accepted and rejected trials).
      converged: False only when ``max_iter`` stopped the run.
      stop_reason: one of :data:`LM_STOP_REASONS` (not "running").
      grad_norm: ‖∇L‖ at the returned parameters.
      best_iteration: with validation data, the iteration whose parameters are returned (the
        lowest validation loss); else None.
      damping: μ to continue with (a later call's ``damping``).
    """

    loss_history: np.ndarray
    damping_history: np.ndarray
    val_loss_history: np.ndarray | None
    iterations: int
    solves: int
    converged: bool
    stop_reason: str
    grad_norm: float
    best_iteration: int | None
    damping: float


# --- the compiled pieces ----------------------------------------------------------------------
def _objective(params, X, Y, loss, w, l2, mask):
    _, unravel = ravel_pytree(params)

    def value(theta):
        L = core.batch_loss(unravel(theta), X, Y, loss, w)
        return L + 0.5 * l2 * jnp.sum(mask * theta * theta)  # (M5)

    return value


def _val_loss(params, Xv, Yv, loss, wv):
    _, unravel = ravel_pytree(params)
    return lambda theta: core.batch_loss(unravel(theta), Xv, Yv, loss, wv)


@functools.partial(jax.jit, static_argnames=("loss", "has_val"))
def lm_start_core(params, X, Y, loss, w, Xv, Yv, wv, damping, l2, has_val: bool) -> LMState:
    """The state before the first iteration (loss and validation loss at params), unchecked."""
    theta = ravel_pytree(params)[0]
    dt = theta.dtype
    value = _objective(params, X, Y, loss, w, l2, penalty_mask(params))(theta)
    val = _val_loss(params, Xv, Yv, loss, wv)(theta) if has_val else jnp.asarray(jnp.inf, dt)
    zero = jnp.asarray(0, jnp.int32)
    return LMState(
        theta=theta,
        loss=value,
        damping=jnp.asarray(damping, dt),
        scale=jnp.zeros_like(theta),
        stop=zero,
        iterations=zero,
        solves=zero,
        grad_norm=jnp.asarray(jnp.inf, dt),
        best_val=val,
        best_theta=theta,
        best_iteration=zero,
        fails=zero,
        best_loss=value,
        stall=zero,
    )


@functools.partial(
    jax.jit,
    static_argnames=("loss", "solver", "scaling", "has_val", "cg_maxiter"),
)
def lm_steps_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    w: Array,
    Xv: Array | None,
    Yv: Array | None,
    wv: Array | None,
    state: LMState,
    hyper: LMHyper,
    n_steps: Array,
    solver: str = "dense",
    scaling: bool = False,
    has_val: bool = False,
    cg_maxiter: int = 100,
) -> tuple[LMState, Array, Array, Array]:
    r"""Up to ``n_steps`` (≤ :data:`LM_CHUNK`) Levenberg–Marquardt iterations (M1)-(M5), unchecked.

    ``params`` gives the structure (and activations) only; the values are ``state.theta``.

    Returns:
      (state, loss (LM_CHUNK,), damping (LM_CHUNK,), val_loss (LM_CHUNK,)): entry k of the
      histories belongs to the call's k-th accepted iteration (the first
      ``state.iterations − iterations before`` entries are set).
    """
    _, unravel = ravel_pytree(params)
    mask = penalty_mask(params)
    l2 = hyper.l2
    objective = _objective(params, X, Y, loss, w, l2, mask)
    val_loss = _val_loss(params, Xv, Yv, loss, wv) if has_val else None
    dt = state.theta.dtype
    histories = tuple(jnp.full((LM_CHUNK,), jnp.nan, dt) for _ in range(3))

    def system(theta):
        """(g, diag(G), solve: μ, D ↦ d) at theta: G formed (dense) or applied (CG) once."""
        p = unravel(theta)
        if solver == "dense":
            G, g, _ = normal_equations(p, X, Y, loss, w, l2)  # (M1), (M5)
            return g, jnp.diag(G), lambda mu, D: damped_solve_dense(G, g, mu, D)  # (M2)
        _, grads = core.value_and_grads(p, X, Y, loss, row_weights=w)
        g = ravel_pytree(grads)[0] + l2 * mask * theta  # (M5)
        diag = flat_diag_ggn(p, X, Y, loss, w, l2) if scaling else jnp.zeros_like(g)
        matvec = flat_ggn_matvec(p, X, Y, loss, w, l2)
        return g, diag, lambda mu, D: damped_solve_cg(matvec, g, mu, D, hyper.cg_tol, cg_maxiter)

    def iteration(carry):
        s, k, hist = carry
        g, diag, solve = system(s.theta)
        grad_norm = jnp.linalg.norm(g)
        scale = jnp.maximum(s.scale, diag) if scaling else s.scale  # running max of diag(G)
        D = marquardt_scale(scale) if scaling else jnp.ones_like(g)  # (M2)
        stop = jnp.where(
            s.loss <= hyper.goal,
            _GOAL,
            jnp.where(grad_norm <= hyper.tol, _MIN_GRAD, 0),
        ).astype(jnp.int32)

        def trying(t):
            mu, accepted, *_ = t
            return (stop == 0) & ~accepted & (mu <= hyper.max_damping)

        def trial(t):  # (M4): solve (M2) at μ; accept if the loss falls, else raise μ
            mu, _, theta_new, loss_new, solves = t
            d = solve(mu, D)
            theta_try = s.theta + d
            loss_try = objective(theta_try)
            ok = jnp.isfinite(loss_try) & (loss_try < s.loss) & jnp.all(jnp.isfinite(d))
            return (
                jnp.where(ok, mu, mu * hyper.damping_increase),  # (M4)
                ok,
                jnp.where(ok, theta_try, theta_new),
                jnp.where(ok, loss_try, loss_new),
                solves + 1,
            )

        start = (s.damping, jnp.asarray(False), s.theta, s.loss, s.solves)
        mu, accepted, theta, value, solves = jax.lax.while_loop(trying, trial, start)
        stop = jnp.where((stop == 0) & ~accepted, _MAX_DAMPING, stop).astype(jnp.int32)
        mu_next = jnp.where(
            accepted, jnp.maximum(mu * hyper.damping_decrease, MIN_DAMPING), mu
        )  # (M4)
        iterations = s.iterations + accepted.astype(jnp.int32)

        # the validation rule: fails since the best validation loss (trainlm's max_fail)
        best_val, best_theta, best_iteration, fails = (
            s.best_val,
            s.best_theta,
            s.best_iteration,
            s.fails,
        )
        val = jnp.asarray(jnp.nan, dt)
        if val_loss is not None:
            val = val_loss(theta)
            better = accepted & (val < s.best_val - hyper.min_delta)
            best_val = jnp.where(better, val, s.best_val)
            best_theta = jnp.where(better, theta, s.best_theta)
            best_iteration = jnp.where(better, iterations, s.best_iteration)
            fails = jnp.where(better, 0, s.fails + accepted.astype(jnp.int32))
            stop = jnp.where((stop == 0) & (fails >= hyper.max_fail), _VALIDATION, stop)
        # the patience rule on the training loss
        improved = accepted & (value < s.best_loss - hyper.min_delta)
        best_loss = jnp.where(improved, value, s.best_loss)
        stall = jnp.where(improved, 0, s.stall + accepted.astype(jnp.int32))
        stop = jnp.where((stop == 0) & (stall >= hyper.patience), _NO_IMPROVEMENT, stop)

        loss_h, mu_h, val_h = hist
        hist = (  # entry k is written only by an accepted step (a rejected one is the last)
            loss_h.at[k].set(jnp.where(accepted, value, loss_h[k])),
            mu_h.at[k].set(jnp.where(accepted, mu, mu_h[k])),
            val_h.at[k].set(jnp.where(accepted, val, val_h[k])),
        )
        new = LMState(
            theta=theta,
            loss=value,
            damping=mu_next,
            scale=scale,
            stop=stop.astype(jnp.int32),
            iterations=iterations,
            solves=solves,
            grad_norm=grad_norm,
            best_val=best_val,
            best_theta=best_theta,
            best_iteration=best_iteration.astype(jnp.int32),
            fails=fails.astype(jnp.int32),
            best_loss=best_loss,
            stall=stall.astype(jnp.int32),
        )
        return new, k + 1, hist

    def running(carry):
        s, k, _ = carry
        return (s.stop == 0) & (k < n_steps)

    k0 = jnp.asarray(0, jnp.int32)
    state, _, (loss_h, mu_h, val_h) = jax.lax.while_loop(running, iteration, (state, k0, histories))
    return state, loss_h, mu_h, val_h


@functools.partial(jax.jit, static_argnames=("loss",))
def lm_finish_core(params, theta, X, Y, loss, w, l2) -> tuple[Params, Array]:
    """(params with the values theta, ‖∇L‖ there (penalty included)), unchecked."""
    _, unravel = ravel_pytree(params)
    p = unravel(theta)
    _, grads = core.value_and_grads(p, X, Y, loss, row_weights=w)
    g = ravel_pytree(grads)[0] + l2 * penalty_mask(params) * theta  # (M5)
    return p, jnp.linalg.norm(g)


# --- the checked API --------------------------------------------------------------------------
def _check_schedule(damping, decrease, increase, max_damping) -> tuple[float, ...]:
    mu = check_damping(damping)
    dec = validation.positive_float(decrease, "damping_decrease")
    inc = validation.positive_float(increase, "damping_increase")
    mu_max = validation.positive_float(max_damping, "max_damping")
    if dec >= 1.0:
        raise ValueError(f"damping_decrease must be < 1, got {decrease!r}")
    if inc <= 1.0:
        raise ValueError(f"damping_increase must be > 1, got {increase!r}")
    if mu_max < mu:
        raise ValueError(f"max_damping ({max_damping!r}) must be >= damping ({damping!r})")
    return mu, dec, inc, mu_max


def _check_validation_data(params, validation_data, loss):
    if validation_data is None:
        return None, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError(
            f"validation_data must be a pair (X_val, Y_val), got {type(validation_data).__name__}"
        )
    return validation.check_data(
        params, validation_data[0], validation_data[1], loss, x_name="X_val", y_name="Y_val"
    )


def levenberg_marquardt(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    max_iter: int = 100,
    damping: float = 1e-3,
    damping_decrease: float = 0.1,
    damping_increase: float = 10.0,
    max_damping: float = 1e10,
    tol: float = 1e-7,
    goal: float = 0.0,
    validation_data: tuple[ArrayLike, ArrayLike] | None = None,
    max_fail: int = 6,
    patience: int | None = None,
    min_delta: float = 0.0,
    row_weights: ArrayLike | None = None,
    scaling: bool = False,
    l2: float = 0.0,
    solver: str = "auto",
    cg_tol: float = 1e-6,
    cg_maxiter: int | None = None,
) -> tuple[Params, LevenbergMarquardtResult]:
    r"""Train a network by Levenberg–Marquardt: MATLAB's ``trainlm``, on device (M1)-(M5).

    Each iteration solves (G + μD) d = −∇L for the batch loss L = Σ_n w_n ℓ_n (G its GGN, the
    matrix :func:`~mlds_jax.extensions.rop.ggn_vp` multiplies by; D = I, or diag(G) with
    ``scaling``) and tries θ + d: accepted if the loss falls (then μ ← μ·``damping_decrease``),
    else μ ← μ·``damping_increase`` and the solve is repeated (M4).  Large μ is a short
    gradient step −∇L/μ, small μ the Gauss-Newton step (M3).

    Stopping rules, checked in this order at the start of each iteration, then after it:
    L ≤ ``goal`` ("goal"); ‖∇L‖₂ ≤ ``tol`` ("min_grad", trainlm's min_grad); μ would exceed
    ``max_damping`` before a step is accepted ("max_damping": no damped step lowers the loss,
    a minimum to the loss's precision); ``max_fail`` iterations in a row whose validation loss
    is not below the best so far by more than ``min_delta`` ("validation"; the parameters with
    the best validation loss are returned, as trainlm); ``patience`` iterations in a row whose
    training loss is not below its value at the last improvement by more than ``min_delta``
    ("no_improvement"); ``max_iter`` iterations ("max_iter").

    Performance: the dense solve factorises G + μD with LAPACK (``jnp.linalg.cholesky``,
    which JAX's CPU backend runs in scipy's OpenBLAS).  On a CPU shared with other busy
    processes, OpenBLAS's worker threads can stall each other (a 193 × 193 Cholesky measured
    13-330 ms at load 10 on 2 cores, 0.8 ms single-threaded): set ``OPENBLAS_NUM_THREADS=1``
    before starting Python, or ``threadpoolctl.threadpool_limits(1, "blas")``, there.

    Defaults are trainlm's (mu = 0.001, mu_dec = 0.1, mu_inc = 10, mu_max = 1e10,
    min_grad = 1e-7, max_fail = 6, goal = 0).  μ is in the units of G of *our* loss (the mean
    over rows by default), trainlm's in those of JᵀJ of the sum of squared errors: for "mse"
    with K outputs, our μ = trainlm's μ · 2/(N·K).

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`, the starting point.
      X: inputs, (N, n_in).
      Y: targets, as :func:`mlds_jax.loss` takes them.
      loss: any loss name of the package (least squares exactly; the log-losses through the
        GGN at the logits).
      max_iter: the most accepted iterations (trainlm's epochs).
      damping: the initial μ > 0.
      damping_decrease: μ's factor after an accepted step, in (0, 1).
      damping_increase: μ's factor after a rejected trial, > 1.
      max_damping: the largest μ tried, ≥ ``damping``.
      tol: stop when ‖∇L‖₂ ≤ tol (≥ 0; 0 disables the rule).
      goal: stop when L ≤ goal (≥ 0).
      validation_data: optional (X_val (M, n_in), Y_val): the validation loss is computed after
        every iteration (unweighted, without the penalty).
      max_fail: validation failures in a row that stop the run (≥ 1).
      patience: optional; iterations in a row without a training-loss improvement of more than
        ``min_delta`` that stop the run (≥ 1).
      min_delta: the improvement (≥ 0) the validation and patience rules require.
      row_weights: optional w (N,), ≥ 0 (default 1/N).
      scaling: Marquardt's scaling D = running max of diag(G) (MINPACK's).
      l2: λ ≥ 0 of a penalty (λ/2)·Σ_l ‖W^(l)‖²_F added to L (M5) (scikit-learn's alpha/S).
      solver: "dense", "cg" or "auto", as :func:`~mlds_jax.extensions.gauss_newton_direction`.
      cg_tol, cg_maxiter: CG's relative residual and iteration cap (default P).

    Returns:
      (params, :class:`LevenbergMarquardtResult`).

    Raises:
      ValueError / TypeError: any input check of :func:`mlds_jax.loss` (and of the validation
        data), damping ≤ 0, damping_decrease ∉ (0, 1), damping_increase ≤ 1, max_damping <
        damping, a forced dense solve on a too-large network, ... all before anything is traced.

    Example:
      >>> params, result = mj.levenberg_marquardt(params, X, Y, "mse", max_iter=200)
      >>> result.stop_reason, result.loss_history[-1]
    """
    validation.reject_tracers("levenberg_marquardt", params, X, Y)
    X, Y = validation.check_batch(params, X, Y, loss)
    dtype = params[0].W.dtype
    w = check_row_weights(row_weights, X.shape[0], dtype)
    Xv, Yv = _check_validation_data(params, validation_data, loss)
    has_val = Xv is not None
    if has_val and Xv.shape[0] == 0:
        raise ValueError("X_val is empty (0 rows)")
    wv = None if Xv is None else jnp.full((Xv.shape[0],), 1.0 / Xv.shape[0], dtype)
    n_iter = validation.positive_int(max_iter, "max_iter")
    mu, dec, inc, mu_max = _check_schedule(damping, damping_decrease, damping_increase, max_damping)
    tol_ = validation.non_negative_float(tol, "tol", finite=True)
    goal_ = validation.non_negative_float(goal, "goal", finite=True)
    min_delta_ = validation.non_negative_float(min_delta, "min_delta", finite=True)
    l2_ = validation.non_negative_float(l2, "l2", finite=True)
    fails = validation.positive_int(max_fail, "max_fail")
    wait = 2**30 if patience is None else validation.positive_int(patience, "patience")
    method, cg_tol_, maxiter = check_solver_options(
        params, X.shape[0], Y.shape[1], solver, scaling, cg_tol, cg_maxiter
    )

    def scalar(v, dt=dtype):
        return jnp.asarray(v, dt)

    hyper = LMHyper(
        damping_decrease=scalar(dec),
        damping_increase=scalar(inc),
        max_damping=scalar(mu_max),
        tol=scalar(tol_),
        goal=scalar(goal_),
        min_delta=scalar(min_delta_),
        max_fail=scalar(fails, jnp.int32),
        patience=scalar(wait, jnp.int32),
        l2=scalar(l2_),
        cg_tol=scalar(cg_tol_),
    )
    state = lm_start_core(params, X, Y, loss, w, Xv, Yv, wv, scalar(mu), hyper.l2, has_val)
    losses, mus, vals = [float(state.loss)], [], [float(state.best_val)]
    while True:
        before = int(state.iterations)
        n = min(LM_CHUNK, n_iter - before)
        state, loss_h, mu_h, val_h = lm_steps_core(
            params, X, Y, loss, w, Xv, Yv, wv, state, hyper, jnp.asarray(n, jnp.int32),
            method, scaling, has_val, maxiter,
        )  # fmt: skip
        done = int(state.iterations) - before
        # sliced on the host: an eager slice of a device array compiles once per length
        losses.extend(np.asarray(loss_h, np.float64)[:done].tolist())
        mus.extend(np.asarray(mu_h, np.float64)[:done].tolist())
        vals.extend(np.asarray(val_h, np.float64)[:done].tolist())
        stop = int(state.stop)
        if stop == 0 and int(state.iterations) >= n_iter:
            stop = 1  # max_iter
        if stop:
            break
    theta = state.best_theta if has_val else state.theta
    out, grad_norm = lm_finish_core(params, theta, X, Y, loss, w, hyper.l2)
    reason = LM_STOP_REASONS[stop]
    result = LevenbergMarquardtResult(
        loss_history=np.asarray(losses),
        damping_history=np.asarray(mus),
        val_loss_history=np.asarray(vals) if has_val else None,
        iterations=int(state.iterations),
        solves=int(state.solves),
        converged=reason != "max_iter",
        stop_reason=reason,
        grad_norm=float(grad_norm),
        best_iteration=int(state.best_iteration) if has_val else None,
        damping=float(state.damping),
    )
    return out, result
