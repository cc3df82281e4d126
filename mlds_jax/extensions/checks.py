r"""The checks every curvature extension shares: row weights, directions, the common batch.

Host-side shape and dtype checks run before tracing (:mod:`mlds_jax.validation`); value
checks (finite entries) run *inside* the compiled computation, one boolean coming back with
the result (:func:`mlds_jax.validation.all_finite`), and only when that flag is false are the
host checks run to name the first bad entry, with today's messages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax import Array

from mlds_jax import validation
from mlds_jax.layers import Dense, Params

__all__ = [
    "call_checked",
    "check_batch_deferred",
    "check_direction",
    "check_row_weights",
    "row_weights_or_mean",
]


def check_row_weights(row_weights, n_rows: int, dtype) -> Array:
    """Row weights w (N,): finite, ≥ 0, not all zero; returned in ``dtype``.

    ``None`` gives w_n = 1/N (the mean loss).
    """
    w = validation.check_row_weights(row_weights, n_rows, dtype)
    return jnp.full((n_rows,), 1.0 / n_rows, dtype=dtype) if w is None else w


def row_weights_or_mean(X: Array, row_weights: Array | None) -> Array:
    """w in X's dtype, or 1/N each when ``row_weights`` is None (traceable); (N,)."""
    if row_weights is None:
        return jnp.full((X.shape[0],), 1.0 / X.shape[0], dtype=X.dtype)
    return row_weights.astype(X.dtype)


def check_direction(params: Params, v, name: str = "v", *, finite: bool = True) -> Params:
    """v has exactly the structure of params (Dense layers, same activations), each leaf the
    same shape and dtype; with ``finite`` also finite entries (on the host).  Returns v."""
    if not isinstance(v, (tuple, list)) or len(v) != len(params):
        raise TypeError(
            f"{name} must be a tuple of {len(params)} Dense layers shaped like "
            f"params, got {type(v).__name__}"
            + (f" of length {len(v)}" if isinstance(v, (tuple, list)) else "")
        )
    for i, (layer, d) in enumerate(zip(params, v, strict=True)):
        if not isinstance(d, Dense):
            raise TypeError(f"{name}[{i}] must be a Dense layer, got {type(d).__name__}")
        if d.activation != layer.activation:
            raise ValueError(
                f"{name}[{i}] has activation {d.activation!r} but params[{i}] has "
                f"{layer.activation!r}"
            )
        for leaf in ("W", "b"):
            a, b = getattr(d, leaf), getattr(layer, leaf)
            if getattr(a, "shape", None) != b.shape:
                raise ValueError(
                    f"{name}[{i}].{leaf} has shape {getattr(a, 'shape', None)} but "
                    f"params[{i}].{leaf} has shape {b.shape}"
                )
            if getattr(a, "dtype", None) != b.dtype:
                raise TypeError(
                    f"{name}[{i}].{leaf} has dtype {getattr(a, 'dtype', None)} but "
                    f"params[{i}].{leaf} has dtype {b.dtype}"
                )
    if finite:
        leaves = jax.tree_util.tree_leaves(v)
        if all(map(validation.is_concrete, leaves)):
            for i, d in enumerate(v):
                for leaf in ("W", "b"):
                    arr = validation.host_floats(getattr(d, leaf))
                    validation.check_finite(arr, f"{name}[{i}].{leaf}")
    return cast(Params, v)


def check_batch_deferred(params: Params, X, Y, loss: str, row_weights=None):
    """(X, Y, w or None) ready for a core, with every check that needs no pass over the values.

    Shapes, dtypes, labels and the loss/output pairing are checked here; the finiteness of
    params, X and Y is left to the compiled computation (:func:`mlds_jax.validation.all_finite`
    inside it, then :func:`mlds_jax.validation.raise_if_not_finite` with the host checks).
    """
    X2, Y2 = validation.check_batch(params, X, Y, loss, deferred=True)
    # None stays None: the core forms 1/N itself (no separate device op for it)
    return X2, Y2, validation.check_row_weights(row_weights, X2.shape[0], params[0].W.dtype)


@functools.partial(jax.jit, static_argnames=("core_fn", "static", "also_finite"))
def _flagged(args, kwargs, *, core_fn, static, also_finite):
    # the core and the finiteness of its inputs in one program: no second pass over them
    out = core_fn(*args, **kwargs, **dict(static))
    return out, validation.all_finite(args[0], args[1], *(kwargs[k] for k in also_finite))


def call_checked(
    core_fn: Callable,
    args: tuple,
    kwargs: dict[str, Any] | None = None,
    *,
    static: dict[str, Any] | None = None,
    also_finite: tuple[str, ...] = (),
    recheck: Callable[[], object],
):
    """``core_fn(*args, **kwargs, **static)`` with its inputs' finiteness checked inside the same
    compiled program (params = ``args[0]``, X = ``args[1]`` and the ``also_finite`` keyword
    arguments); when that flag is false, ``recheck()`` runs the host checks that name the bad
    entry (:func:`mlds_jax.validation.raise_if_not_finite`).  ``static`` holds the hashable
    arguments (loss name, sizes, flags)."""
    out, ok = _flagged(
        tuple(args),
        dict(kwargs or {}),
        core_fn=core_fn,
        static=tuple(sorted((static or {}).items())),
        also_finite=tuple(also_finite),
    )
    validation.raise_if_not_finite(ok, recheck)
    return out
