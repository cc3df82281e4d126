"""Gradient descent with a fixed step, a schedule or a line search, run on device with
``jax.lax.while_loop``.

Source: ``lecture-forward-backward-training.md``, sections "The Approach of Gradient Descent"
and "Gradient descent convergence criteria".

To minimise a differentiable scalar function ``f`` of a float vector ``x`` the lecture iterates

    x^{k+1} = x^k - eta^k * grad f(x^k)   (G1)

with a step size ``eta^k`` chosen by one of the lecture's "many solutions to choosing step size":
a fixed ``eta``, a schedule ``eta^k = schedule(k)`` (any callable of the step count, e.g. an optax
schedule), the exact line search along ``-g`` for the local quadratic model,
``eta^k = g^T g / g^T H g`` (S1), or Armijo backtracking (S3); it stops when

    |f(x^{k+1}) - f(x^k)| < eps_1      OR      ||grad f(x^k)|| < eps_2.   (G2)

It also gives a "trivial algorithm" for one variable, ``x^{k+1} = x^k - sign(f'(x^k)) * step``,
offered here as ``method="sign"`` (applied elementwise, so it works in n dimensions too) and as
:func:`sign_gradient_descent`. "How big must the steps be?" is answered by
:func:`max_stable_step_size`: near a point where the Hessian ``H`` is positive definite, a fixed
step converges locally iff ``eta < 2 / lambda_max(H)`` (G4).

Contracts
---------
* ``x0`` is a non-empty, finite, 1-D floating-point vector of shape ``(n,)``. Its dtype is the
  working dtype (float32 by default, float64 when ``jax_enable_x64`` is on and ``x0`` is
  float64); integer, boolean or complex input raises ``TypeError``.
* ``f`` maps an ``(n,)`` array to a scalar (shape ``()``); its gradient is ``jax.grad(f)``.
  ``f`` must be traceable by JAX (pure, ``jax.numpy`` operations).
* All arguments are validated in Python before anything is traced; errors name the bad value.
* The whole loop runs in a single jitted ``lax.while_loop``; there is no host synchronisation per
  step. The program is compiled once per ``(f, method, max_iter, n, dtype)``; the step size and the
  tolerances are traced values, so changing them does not recompile. ``f`` is traced a small,
  bounded number of times, never once per iteration.
* The path is recorded in a preallocated ``(max_iter + 1, n)`` device buffer (memory grows with
  ``max_iter * n``) and sliced to ``(n_iter + 1, n)`` on the host.
* The returned ``x`` and ``f`` are always finite: on divergence the offending step is rejected and
  the last accepted iterate is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mlds_jax import validation

__all__ = [
    "GradientDescentResult",
    "gradient_descent",
    "max_stable_step_size",
    "quadratic_example",
    "sign_gradient_descent",
]

Method = Literal["gradient", "sign"]
LineSearch = Literal["armijo", "exact"]
StepSize = float | Callable[[jax.Array], jax.Array]
_LINE_SEARCHES = (None, "armijo", "exact")

#: A step is rejected as divergent when ``|f(x_{k+1})| > _DIVERGENCE_FACTOR * (1 + |f(x0)|)``.
_DIVERGENCE_FACTOR = 1e12

# Integer codes used inside the device loop; index into _REASONS.
_RUNNING, _TOL_F, _TOL_GRAD, _MAX_ITER, _DIVERGED = 0, 1, 2, 3, 4
_REASONS = ("running", "tol_f", "tol_grad", "max_iter", "diverged")
_METHODS = ("gradient", "sign")


@dataclass(frozen=True)
class GradientDescentResult:
    """Outcome of :func:`gradient_descent`.

    Attributes:
        x: final iterate, jax array of shape ``(n,)`` (always finite).
        f: ``f(x)`` as a Python float.
        n_iter: number of accepted steps ``k``, so ``x = x^k``.
        converged: ``True`` iff ``reason`` is ``"tol_f"`` or ``"tol_grad"``.
        path: numpy array ``(n_iter + 1, n)`` of the iterates ``x^0, ..., x^k``.
        f_path: numpy array ``(n_iter + 1,)`` with ``f_path[i] = f(path[i])``.
        grad_norm: ``||grad f(x)||_2`` as a Python float.
        reason: ``"tol_f"`` | ``"tol_grad"`` | ``"max_iter"`` | ``"diverged"``.
        step_sizes: numpy array ``(n_iter,)``, the ``eta^k`` of each accepted step.
    """

    x: jax.Array
    f: float
    n_iter: int
    converged: bool
    path: np.ndarray
    f_path: np.ndarray
    grad_norm: float
    reason: str
    step_sizes: np.ndarray | None = None


def quadratic_example(x: jax.Array) -> jax.Array:
    """The lecture's example ``f(x1, x2) = x1**2 + x1*x2 + 4*x2**2``.

    Its gradient is ``[2 x1 + x2, x1 + 8 x2]`` and its (constant) Hessian ``[[2, 1], [1, 8]]``
    has eigenvalues ``5 -/+ sqrt(10)``; the unique minimum is ``f(0, 0) = 0``.

    Args:
        x: array of shape ``(2,)``.

    Returns:
        Scalar array (shape ``()``).

    Example:
        >>> import jax.numpy as jnp
        >>> float(quadratic_example(jnp.array([3.0, 3.0])))
        54.0
    """
    return x[0] ** 2 + x[0] * x[1] + 4.0 * x[1] ** 2


# --------------------------------------------------------------------------------------------
# Validation (pure Python, before any tracing)
# --------------------------------------------------------------------------------------------


def _check_callable(f: object) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}: {f!r}")


def _as_float_vector(x0: object, name: str = "x0") -> jax.Array:
    """Return ``x0`` as a finite, non-empty, 1-D floating jax array, or raise."""
    try:
        arr = jnp.asarray(x0)
    except (TypeError, ValueError):  # None, strings, ragged lists: JAX's message omits the name
        raise TypeError(
            f"{name} must be a floating-point vector, got {type(x0).__name__}: {x0!r}"
        ) from None
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point vector, got dtype {arr.dtype}; "
            f"pass floats, e.g. jnp.asarray({name}, dtype=jnp.float32)"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of shape (n,), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"{name} must be finite, got {np.asarray(arr)}")
    return arr


def _check_scalar_value(f: Callable[[jax.Array], jax.Array], x: jax.Array, name: str) -> float:
    """Evaluate ``f(x)`` eagerly; it must be a finite scalar. Returns it as a float."""
    value = f(x)
    shape = jnp.shape(value)
    if shape != ():
        raise ValueError(f"f({name}) must be a scalar (shape ()), got shape {shape}")
    value_f = float(value)
    if not math.isfinite(value_f):
        raise ValueError(f"f({name}) must be finite, got {value_f}")
    return value_f


def _schedule_value(schedule: Callable) -> float:
    """``schedule(0)`` evaluated eagerly: it must be a real scalar."""
    try:
        value = schedule(jnp.asarray(0, jnp.int32))
    except Exception as err:  # a schedule that cannot take the step count
        # the schedule's own error (and where in it) is shown once, as the cause
        raise TypeError(
            "step_size is callable but step_size(k) failed for k = 0 (its error is above)"
        ) from err
    if jnp.shape(value) != ():
        raise ValueError(f"step_size(k) must return a scalar, got shape {jnp.shape(value)}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Device loop
# --------------------------------------------------------------------------------------------


def _direction(g: jax.Array, method: Method) -> jax.Array:
    """Search direction: the gradient, or its elementwise sign (the lecture's trivial rule)."""
    return jnp.sign(g) if method == "sign" else g


def _step_size(
    f: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    fx: jax.Array,
    g: jax.Array,
    eta0: jax.Array,
    line_search: LineSearch | None,
    armijo: tuple[jax.Array, jax.Array, int],
) -> jax.Array:
    """``eta^k``: ``eta0`` (fixed or scheduled), or a line search along ``-g`` started there."""
    if line_search == "exact":
        # eta = g^T g / g^T H g, with H g = d/dt grad f(x + t g) at t = 0   (S1)
        Hg = jax.jvp(jax.grad(f), (x,), (g,))[1]
        gHg = jnp.dot(g, Hg)
        positive = gHg > 0
        return jnp.where(positive, jnp.dot(g, g) / jnp.where(positive, gHg, 1), eta0)
    if line_search == "armijo":
        c, shrink, max_backtracks = armijo
        gg = jnp.dot(g, g)

        def too_long(state):  # not f(x - eta g) <= f(x) - c eta ||g||^2   (S3); NaN is too long
            eta, i = state
            return ~(f(x - eta * g) <= fx - c * eta * gg) & (i < max_backtracks)

        eta, _ = jax.lax.while_loop(
            too_long, lambda s: (s[0] * shrink, s[1] + 1), (eta0, jnp.asarray(0, jnp.int32))
        )
        return eta
    return eta0


@partial(
    jax.jit,
    static_argnames=("f", "method", "max_iter", "schedule", "line_search", "max_backtracks"),
)
def _descent_loop(
    f: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    step_size: jax.Array,
    tol_f: jax.Array,
    tol_grad: jax.Array,
    f_bound: jax.Array,
    armijo_c: jax.Array,
    armijo_shrink: jax.Array,
    *,
    method: Method,
    max_iter: int,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    line_search: LineSearch | None = None,
    max_backtracks: int = 30,
) -> tuple[jax.Array, ...]:
    """Run the descent; returns ``(k, x, f(x), grad(x), path_buffer, f_buffer, reason_code)``.

    State at the top of each pass: ``x = x^k`` (accepted), ``fx = f(x^k)``, ``g = grad f(x^k)``.
    One pass applies, in order: the gradient test at ``x^k``, the iteration cap, a trial step,
    the divergence test on the trial point (reject it if it fails), then the ``|df|`` test.
    """
    value_and_grad = jax.value_and_grad(f)
    dtype = x0.dtype
    f0, g0 = value_and_grad(x0)
    path = jnp.zeros((max_iter + 1, x0.shape[0]), dtype).at[0].set(x0)
    f_path = jnp.zeros((max_iter + 1,), dtype).at[0].set(f0)
    etas = jnp.zeros((max_iter,), dtype)
    init = (
        jnp.asarray(0, jnp.int32),
        x0,
        f0,
        g0,
        path,
        f_path,
        etas,
        jnp.asarray(_RUNNING, jnp.int32),
    )

    def cond(state: tuple[jax.Array, ...]) -> jax.Array:
        return state[-1] == _RUNNING

    def body(state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        k, x, fx, g, path, f_path, etas, _ = state
        stop_grad = jnp.linalg.norm(g) < tol_grad
        stop_iter = k >= max_iter
        eta0 = step_size if schedule is None else jnp.asarray(schedule(k), dtype)
        eta = _step_size(f, x, fx, g, eta0, line_search, (armijo_c, armijo_shrink, max_backtracks))
        x_new = x - eta * _direction(g, method)
        f_new, g_new = value_and_grad(x_new)
        finite = jnp.all(jnp.isfinite(x_new)) & jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new))
        diverged = ~finite | (jnp.abs(f_new) > f_bound)
        stop_f = jnp.abs(f_new - fx) < tol_f
        code = jnp.where(
            stop_grad,
            _TOL_GRAD,
            jnp.where(
                stop_iter,
                _MAX_ITER,
                jnp.where(diverged, _DIVERGED, jnp.where(stop_f, _TOL_F, _RUNNING)),
            ),
        ).astype(jnp.int32)
        accept = ~(stop_grad | stop_iter | diverged)
        etas = jnp.where(accept, etas.at[jnp.minimum(k, max_iter - 1)].set(eta), etas)
        x = jnp.where(accept, x_new, x)
        fx = jnp.where(accept, f_new, fx)
        g = jnp.where(accept, g_new, g)
        k = k + accept.astype(k.dtype)
        # When the step is rejected these writes repeat x^k at row k, which is harmless.
        path = jax.lax.dynamic_update_slice(path, x[None, :], (k, jnp.zeros_like(k)))
        f_path = jax.lax.dynamic_update_slice(f_path, fx[None], (k,))
        return k, x, fx, g, path, f_path, etas, code

    return jax.lax.while_loop(cond, body, init)


def gradient_descent(
    f: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    step_size: StepSize = 0.1,
    tol_f: float = 1e-10,
    tol_grad: float = 1e-8,
    max_iter: int = 10_000,
    *,
    method: Method = "gradient",
    line_search: LineSearch | None = None,
    armijo_c: float = 1e-4,
    armijo_shrink: float = 0.5,
    max_backtracks: int = 30,
) -> GradientDescentResult:
    """Minimise ``f`` by gradient descent (lecture: "The Approach of Gradient Descent").

    Update rule::

        method="gradient":  x^{k+1} = x^k - eta^k * grad f(x^k)
        method="sign":      x^{k+1} = x^k - eta^k * sign(grad f(x^k))   (elementwise)

    The lecture's "many solutions to choosing step size eta^k":

    * ``step_size`` a float: fixed ``eta^k = eta``;
    * ``step_size`` a callable of the step count ``k`` (an int32 array), e.g. an optax schedule
      such as ``optax.exponential_decay(0.2, 10, 0.5)``: ``eta^k = step_size(k)``, traced
      inside the loop (it must be a JAX-traceable function);
    * ``line_search="exact"``: ``eta^k = g^T g / g^T H g`` with ``g = grad f(x^k)`` and ``H g``
      from ``jax.jvp(jax.grad(f))`` (S1): the minimiser of the local quadratic model along
      ``-g``, exact for a quadratic ``f``.  Where ``g^T H g <= 0`` (no minimum along ``-g``)
      the step falls back to ``step_size``'s ``eta^k``;
    * ``line_search="armijo"``: backtracking from ``eta^k`` of ``step_size``: ``eta <- armijo_shrink
      * eta`` until ``f(x - eta g) <= f(x) - armijo_c * eta * ||g||^2`` (S3), at most
      ``max_backtracks`` times.

    Line searches search along ``-g`` and need ``method="gradient"``.

    Stop rules ("Gradient descent convergence criteria", lecture-forward-backward-training.md),
    checked in this order at every iterate ``x^k``:

    1. ``||grad f(x^k)||_2 < tol_grad`` -> ``reason="tol_grad"`` (tested before stepping, so an
       ``x0`` at a minimum gives ``n_iter == 0``);
    2. ``k == max_iter`` -> ``reason="max_iter"``;
    3. the trial point ``x^{k+1}`` has a non-finite ``x``, ``f`` or gradient, or
       ``|f(x^{k+1})| > 1e12 * (1 + |f(x^0)|)`` -> ``reason="diverged"``; the trial point is
       rejected, so ``x = x^k`` is the last finite iterate;
    4. otherwise ``x^{k+1}`` is accepted, and if ``|f(x^{k+1}) - f(x^k)| < tol_f`` ->
       ``reason="tol_f"``.

    ``converged`` is ``True`` only for ``"tol_f"`` and ``"tol_grad"``. A tolerance of ``0``
    disables its rule (the comparisons are strict).

    Args:
        f: differentiable scalar function, ``(n,) -> ()``, traceable by JAX.
        x0: starting point, non-empty 1-D float array of shape ``(n,)``; sets the dtype.
        step_size: fixed step ``eta > 0``, or a callable ``k -> eta^k`` (an optax schedule);
            with a line search, the (fallback or initial) step.
        tol_f: ``eps_1 >= 0`` for ``|f(x^{k+1}) - f(x^k)|``.
        tol_grad: ``eps_2 >= 0`` for ``||grad f(x^k)||``.
        max_iter: maximum number of steps, ``>= 1``; the path buffer has ``max_iter + 1`` rows.
        method: ``"gradient"`` (default) or ``"sign"`` (the lecture's trivial algorithm).
        line_search: ``None`` (default), ``"exact"`` or ``"armijo"``.
        armijo_c: sufficient-decrease constant ``c`` in (0, 1) of the Armijo rule (S3).
        armijo_shrink: backtracking factor ``rho`` in (0, 1).
        max_backtracks: the most halvings (shrinks) per step, ``>= 1``.

    Returns:
        :class:`GradientDescentResult` with ``path`` of shape ``(n_iter + 1, n)``, ``f_path``
        of shape ``(n_iter + 1,)`` and ``step_sizes`` of shape ``(n_iter,)``.

    Raises:
        TypeError: ``f`` not callable, ``x0`` not floating point, ``max_iter`` not an int.
        ValueError: ``x0`` not 1-D, empty or non-finite; ``f(x0)`` not a finite scalar;
            ``step_size`` not finite and > 0; a tolerance < 0; ``max_iter < 1``; unknown method.

    Example:
        >>> import jax.numpy as jnp
        >>> res = gradient_descent(quadratic_example, jnp.array([3.0, 3.0]), step_size=0.2)
        >>> res.converged, res.path.shape == (res.n_iter + 1, 2)
        (True, True)
        >>> bool(jnp.allclose(res.x, 0.0, atol=1e-4))
        True
    """
    _check_callable(f)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if line_search not in _LINE_SEARCHES:
        raise ValueError(f"line_search must be one of {_LINE_SEARCHES}, got {line_search!r}")
    if line_search is not None and method != "gradient":
        raise ValueError(
            f"line_search={line_search!r} searches along -grad f and needs "
            f'method="gradient", got method={method!r}'
        )
    c = validation.number_in_interval(armijo_c, "armijo_c", 0, 1)
    rho = validation.number_in_interval(armijo_shrink, "armijo_shrink", 0, 1)
    n_back = validation.positive_int(max_backtracks, "max_backtracks")
    x0_arr = _as_float_vector(x0)
    schedule = None
    if callable(step_size):
        schedule = step_size
        validation.positive_float(_schedule_value(schedule), "step_size(0)")
        eta = 1.0  # unused
    else:
        eta = validation.positive_float(step_size, "step_size")
    eps_f = validation.non_negative_float(tol_f, "tol_f")
    eps_g = validation.non_negative_float(tol_grad, "tol_grad")
    n_max = validation.positive_int(max_iter, "max_iter")
    f0 = _check_scalar_value(f, x0_arr, "x0")

    dtype = x0_arr.dtype
    k, x, fx, g, path, f_path, etas, code = _descent_loop(
        f,
        x0_arr,
        jnp.asarray(eta, dtype),
        jnp.asarray(eps_f, dtype),
        jnp.asarray(eps_g, dtype),
        # capped at the dtype's max: 1e12 overflows float16 (a cast warning, an inf bound)
        jnp.asarray(min(_DIVERGENCE_FACTOR * (1.0 + abs(f0)), float(jnp.finfo(dtype).max)), dtype),
        jnp.asarray(c, dtype),
        jnp.asarray(rho, dtype),
        method=method,
        max_iter=n_max,
        schedule=schedule,
        line_search=line_search,
        max_backtracks=n_back,
    )
    n_iter = int(k)
    reason = _REASONS[int(code)]
    return GradientDescentResult(
        x=x,
        f=float(fx),
        n_iter=n_iter,
        converged=reason in ("tol_f", "tol_grad"),
        path=np.asarray(path)[: n_iter + 1],
        f_path=np.asarray(f_path)[: n_iter + 1],
        grad_norm=float(jnp.linalg.norm(g)),
        reason=reason,
        step_sizes=np.asarray(etas)[:n_iter],
    )


def sign_gradient_descent(
    f: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    step_size: float = 0.1,
    tol_f: float = 1e-10,
    tol_grad: float = 1e-8,
    max_iter: int = 10_000,
) -> GradientDescentResult:
    """The lecture's "trivial algorithm": ``x^{k+1} = x^k - sign(f'(x^k)) * step``.  Equation (G3).

    Same contract, shapes and stop rules as :func:`gradient_descent` with ``method="sign"``; the
    sign is taken elementwise, so ``x0`` may have any length ``n`` (the lecture uses ``n = 1``).
    Every step moves each coordinate by exactly ``step_size``, so the iterates end up
    oscillating within ``step_size`` of a minimiser; such a 2-cycle between points of equal ``f``
    stops by ``tol_f``, otherwise the run ends at ``max_iter``.

    Example:
        >>> import jax.numpy as jnp
        >>> res = sign_gradient_descent(lambda x: (x[0] - 3.0) ** 2, jnp.array([0.0]), 0.5)
        >>> float(res.x[0]), res.n_iter, res.reason
        (3.0, 6, 'tol_grad')
    """
    return gradient_descent(
        f, x0, step_size, tol_f=tol_f, tol_grad=tol_grad, max_iter=max_iter, method="sign"
    )


def max_stable_step_size(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> float:
    """Largest stable fixed step at ``x``: ``2 / lambda_max(H)`` with ``H = jax.hessian(f)(x)``.

    Lecture question "how big must the steps be?": near ``x`` the model ``f`` is quadratic with
    Hessian ``H``, and one step multiplies the error along each eigenvector of ``H`` (eigenvalue
    ``lambda``) by ``1 - eta * lambda``. The iteration contracts iff ``|1 - eta*lambda| < 1`` for
    all ``lambda``, i.e. ``0 < eta < 2 / lambda_max`` (requires ``lambda > 0``), equation (S2).
    The fastest fixed step for a quadratic is ``2 / (lambda_min + lambda_max)`` (S4).

    Args:
        f: twice-differentiable scalar function, ``(n,) -> ()``.
        x: point, non-empty 1-D float array of shape ``(n,)``.

    Returns:
        ``2 / lambda_max`` as a Python float (the bound itself is *not* stable: use smaller steps).

    Raises:
        TypeError / ValueError: as for :func:`gradient_descent` for ``f`` and ``x``.
        ValueError: if ``lambda_max <= 0`` (``f`` is not locally convex at ``x``) or the Hessian
            is not finite.

    Example:
        >>> import jax.numpy as jnp
        >>> round(max_stable_step_size(quadratic_example, jnp.array([3.0, 3.0])), 4)
        0.245
    """
    _check_callable(f)
    x_arr = _as_float_vector(x, name="x")
    _check_scalar_value(f, x_arr, "x")
    hess = jax.hessian(f)(x_arr)
    hess = 0.5 * (hess + hess.T)  # symmetric in exact arithmetic; remove round-off asymmetry
    if not bool(jnp.all(jnp.isfinite(hess))):
        raise ValueError(f"the Hessian of f at x is not finite: {np.asarray(hess)}")
    # in float64 on the host: LAPACK has no float16/bfloat16 eigensolver, and H is n x n
    lam_max = float(np.linalg.eigvalsh(np.asarray(hess, np.float64))[-1])
    if lam_max <= 0.0:
        raise ValueError(
            f"largest Hessian eigenvalue is {lam_max} <= 0: f is not locally convex at x, "
            "so no fixed step size is stable there"
        )
    return 2.0 / lam_max
