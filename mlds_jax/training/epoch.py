"""The compiled epoch and the compiled chunk of epochs: the whole inner loop on the device.

One epoch is one ``lax.fori_loop`` over the padded minibatches (gathers, the step, the
metrics), followed by the validation pass; up to K epochs run in one compiled
``lax.while_loop`` (a *chunk*) with early stopping and the divergence check decided on the
device after every epoch, so the host reads back once per chunk.  :func:`run_chunk` is that
program, compiled by ``jax.jit`` with the :class:`~mlds_jax.training.program.ProgramSpec` as
a static argument: a program is reused exactly when the spec (what the computation is) is
equal.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from mlds_jax import core, parallel
from mlds_jax.layers import Params
from mlds_jax.losses import get_loss
from mlds_jax.training.program import ProgramSpec
from mlds_jax.training.step import batch_metrics, make_step_core

__all__ = [
    "DIVERGED",
    "EARLY_STOPPED",
    "PREGATHER_MAX_BYTES",
    "RUNNING",
    "EpochData",
    "StopState",
    "metric_names",
    "run_chunk",
]

#: A chunk's status: still running (all ``limit`` epochs done), stopped early, diverged.
RUNNING, EARLY_STOPPED, DIVERGED = 0, 1, 2

#: An epoch gathers its minibatches' rows all at once (one gather of X per epoch, then a
#: slice per step) when that copy holds at most this many bytes; else one gather per step.
#: Layout, not maths: XLA:CPU splits a gather from an operand above ~512 KiB over its
#: threads, and a per-step hand-off between threads costs more than a small step's
#: gather itself (digits in a 2048-row bucket, batch 32: ~25% of the epoch).
PREGATHER_MAX_BYTES = 16 * 2**20


class EpochData(NamedTuple):
    """The arrays every epoch of a run reads: prepared once, on the device.

    Attributes:
      X, Y: training rows, row-bucketed (rows ≥ N; the padding rows are never gathered).
      mask: (slots, B') 1 on real minibatch slots, 0 on padding.
      sw: (rows,) the sample weights s_n (0 on the bucket padding).
      l2: λ of (R1), a scalar.
      n_batches: int32 scalar, the batches to run (≤ slots: the trip count is data).
      Xv, Yv, wv: validation rows (row-bucketed) and their weights 1/N_val (0 on padding),
        or None.
      wr: regression only: 1/N on the real training rows, for the epoch's R², else None.
      plain: regression only: (slots, B') row indices in the given order, else None.
      noise_key: the DP-SGD noise key, or None.
      stopping: early stopping's settings as device scalars: (monitor index in the metric
        vector, sign s (+1: lower is better, −1: higher), δ_min, patience, reference (1:
        the best value so far, scikit-learn's rule; 0: the last improvement, Keras's)).
    """

    X: Array
    Y: Array
    mask: Array
    sw: Array
    l2: Array
    n_batches: Array
    Xv: Array | None
    Yv: Array | None
    wv: Array | None
    wr: Array | None
    plain: Array | None
    noise_key: Array | None
    stopping: tuple[Array, Array, Array, Array, Array]


class StopState(NamedTuple):
    """Early stopping's running state, carried on device from epoch to epoch."""

    best_value: Array  # s × the reference value (inf before the first epoch): lower is better
    since_best: Array  # int32: epochs since it improved by more than min_delta
    best_epoch: Array  # int32: 0-based epoch of the best value, -1 before the first
    best_params: Params  # the parameters after that epoch


def batch_metric_names(loss: str, n_out: int) -> tuple[str, ...]:
    """The keys of :func:`~mlds_jax.training.step.batch_metrics`, in order."""
    target = get_loss(loss).targets
    if target == "real":
        return ("loss",)
    if target == "probability" and n_out > 1:
        return ("loss", "accuracy", "label_accuracy")
    return ("loss", "accuracy")


def metric_names(loss: str, has_val: bool, n_out: int = 1) -> tuple[str, ...]:
    """The epoch's metrics in the order of the compiled metric vector (``n_out`` outputs)."""
    train = batch_metric_names(loss, n_out)
    train = train + (("r2",) if get_loss(loss).targets == "real" else ())
    return train + (tuple("val_" + k for k in train) if has_val else ())


def _tree_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _r2(resid: Array, Y: Array, w: Array) -> Array:
    """R² from the residual sum Σ ‖A_n − Y_n‖² over the rows with weight w_n > 0.

    Over those N rows: Ȳ = Σ_n Y_n / N, R² = 1 − resid / Σ ‖Y_n − Ȳ‖², :func:`evaluate`'s
    sums; constant targets give 1 for a perfect fit and 0 otherwise, as there.
    """
    Y = Y.astype(resid.dtype)  # targets may be stored as integers
    m = (w > 0).astype(resid.dtype)[:, None]  # the real rows; sums / count as jnp.mean does
    mean = jnp.sum(m * Y, axis=0, keepdims=True) / jnp.sum(m)
    total = jnp.sum(m * (Y - mean) ** 2)
    r2 = 1 - resid / jnp.where(total > 0, total, jnp.ones_like(total))
    return jnp.where(total > 0, r2, jnp.where(resid == 0, 1.0, 0.0).astype(Y.dtype))


def _weighted_r2(A: Array, Y: Array, w: Array) -> Array:
    """:func:`evaluate`'s r2 over the rows with weight 1/N (padding rows weigh 0)."""
    m = (w > 0).astype(A.dtype)[:, None]
    return _r2(jnp.sum(m * (A - Y.astype(A.dtype)) ** 2), Y, w)


def _make_epoch(spec: ProgramSpec):
    """One epoch as one traced function: a loop over the padded minibatches.

    ``epoch(params, opt_state, idx, data, e)`` with ``idx`` (slots, B') the epoch's row
    indices and ``e`` the int32 epoch number; returns params, opt_state and a vector of the
    metrics in :func:`metric_names` order followed by a finiteness flag of the new params.

    Minibatch i: s_n = sw[row] · mask, S = Σ s_n, row weights w_n = s_n / S (the weighted
    mean), (R1) with this S; a batch with S = 0 leaves params and optimizer state as they
    are (a skipped update).  The epoch's metrics are the S-weighted means of the minibatch
    metrics.  The noise key of step i is fold_in(fold_in(key, epoch), i).  With a mesh, each
    gathered minibatch and its weights are constrained to be row-sharded over "batch".
    """
    loss, mesh, has_val = spec.loss, spec.mesh, spec.has_val
    step_core = make_step_core(spec.update.optimizer.update, loss, spec.grads, dp=spec.dp)
    regression = get_loss(loss).targets == "real"

    def epoch(params, opt_state, idx, d: EpochData, e):
        X, Y, mask, sw = d.X, d.Y, d.mask, d.sw
        keys = batch_metric_names(loss, Y.shape[1])
        pregather = X.dtype.itemsize * X.shape[1] * idx.size <= PREGATHER_MAX_BYTES
        if pregather:  # the epoch's rows in one gather each (see PREGATHER_MAX_BYTES)
            Xe, Ye, se = X[idx], Y[idx], sw[idx] * mask

        def body(i, carry):
            p, s, sums, total = carry
            if pregather:
                Xb, Yb, sb = Xe[i], Ye[i], se[i]
            else:
                rows = idx[i]
                Xb, Yb, sb = X[rows], Y[rows], sw[rows] * mask[i]  # gathered on device
            if mesh is not None:
                sharded = parallel.shardings(mesh)[1]
                Xb, Yb, sb = (jax.lax.with_sharding_constraint(a, sharded) for a in (Xb, Yb, sb))
            S = jnp.sum(sb)
            ok = S > 0
            S_safe = jnp.where(ok, S, jnp.ones_like(S))
            key = d.noise_key
            step_key = None if key is None else jax.random.fold_in(jax.random.fold_in(key, e), i)
            p_new, s_new, met = step_core(p, s, Xb, Yb, sb / S_safe, d.l2, S_safe, step_key)
            if spec.weighted:  # S = 0: no rows count, no update
                keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
                    lambda a, b: jnp.where(ok, a, b), new, old
                )
                p_new, s_new = keep(p_new, p), keep(s_new, s)
            p, s = p_new, s_new
            batch = jnp.stack([met[k] for k in keys])
            return p, s, sums + batch * S, total + S

        sums0 = jnp.zeros((len(keys),), X.dtype)
        params, opt_state, sums, total = jax.lax.fori_loop(
            0, d.n_batches, body, (params, opt_state, sums0, jnp.zeros((), X.dtype))
        )  # n_batches run; the plan's further slots (the rest of the row bucket) do not
        values = [sums / total]  # the S-weighted mean over the minibatches
        if regression:  # R² of the end-of-epoch params on the real training rows, batchwise
            plain, wr = d.plain, d.wr
            assert plain is not None and wr is not None  # prepared for regression losses

            def residual(i, acc):
                A = core.forward(params, X[plain[i]])
                r = (A - Y[plain[i]].astype(A.dtype)) ** 2
                return acc + jnp.sum(mask[i].astype(A.dtype)[:, None] * r)

            resid = jax.lax.fori_loop(0, d.n_batches, residual, jnp.zeros((), X.dtype))
            values.append(_r2(resid, Y, wr)[None])
        if has_val:  # padding rows weigh 0: the mean over the real validation rows
            Xv, Yv, wv = d.Xv, d.Yv, d.wv
            assert Xv is not None and Yv is not None and wv is not None
            cache = core.forward_cache(params, Xv)
            value = core.loss_value(cache, Yv, loss, row_weights=wv)
            m = batch_metrics(loss, value, cache.As[-1], Yv, wv)
            values.append(jnp.stack([m[k] for k in keys]))
            if regression:
                values.append(_weighted_r2(cache.As[-1], Yv, wv)[None])
        values.append(_tree_finite(params).astype(X.dtype)[None])
        return params, opt_state, jnp.concatenate(values)

    return epoch


def epochs(spec: ProgramSpec, params, opt_state, stop: StopState, data: EpochData,
               idx, e0, limit):  # fmt: skip
    """Up to K epochs in one compiled call (a ``lax.while_loop``).

    Args:
      spec: the program (static).
      params, opt_state: the state after epoch ``e0``; stop: the early-stopping state.
      data: the run's :class:`EpochData`.
      idx: (K, slots, B') int32; row k holds the indices of epoch ``e0 + k``.
      e0: int32, the number of the chunk's first epoch.  limit: int32 in [1, K], the epochs
        to run.

    After each epoch, exactly as a host loop would: if any training or validation metric
    (r² excepted) or the new params are non-finite the epoch is discarded and the chunk
    ends ``DIVERGED``; otherwise it is committed, its metric vector written to row k of
    ``values``, and early stopping updated, in the metrics' dtype with x = s · value:
    improved ⇔ x < reference − δ_min (resets the count); the reference (and the best
    params) move to x when improved, or, with the "best" reference, whenever x < reference;
    ``patience`` epochs without improvement end the chunk ``EARLY_STOPPED``.

    Returns:
      (params, opt_state, stop, values (K, n_metrics + 1), runs (int32: committed epochs),
      status).  Rows of ``values`` at and beyond ``runs`` are zero, except the row of a
      diverged epoch, which holds its (non-finite) metrics.
    """
    epoch = _make_epoch(spec)
    names = metric_names(spec.loss, spec.has_val, data.Y.shape[1])
    # a non-finite loss or accuracy means divergence; r2 can overflow before the params do
    checked = np.array([not k.endswith("r2") for k in names] + [False])
    monitor, sign, min_delta, patience, running = data.stopping
    values0 = jnp.zeros((idx.shape[0], len(names) + 1), data.X.dtype)

    def cond(carry):
        k, status = carry[0], carry[1]
        return (k < limit) & (status == RUNNING)

    def body(carry):
        k, _, p, s, values, st = carry
        p_new, s_new, v = epoch(p, s, idx[k], data, e0 + k)
        values = values.at[k].set(v)
        finite = (v[-1] == 1) & jnp.all(jnp.where(checked, jnp.isfinite(v), True))

        def commit(_):
            if not spec.stopping:  # no early stopping: nothing to track
                return k + 1, jnp.int32(RUNNING), p_new, s_new, st
            x = sign * v[monitor]
            improved = x < st.best_value - min_delta
            moved = improved | ((running == 1) & (x < st.best_value))
            since = jnp.where(improved, 0, st.since_best + 1)
            best = jax.lax.cond(moved, lambda: p_new, lambda: st.best_params)
            new_st = StopState(
                jnp.where(moved, x, st.best_value),
                since,
                jnp.where(moved, e0 + k, st.best_epoch),
                best,
            )
            status = jnp.where(since >= patience, EARLY_STOPPED, RUNNING)
            return k + 1, status.astype(jnp.int32), p_new, s_new, new_st

        def discard(_):  # a non-finite epoch: keep the last finite state and stop
            return k, jnp.int32(DIVERGED), p, s, st

        k, status, p, s, st = jax.lax.cond(finite, commit, discard, None)
        return k, status, p, s, values, st

    start = (jnp.zeros((), jnp.int32), jnp.int32(RUNNING), params, opt_state, values0, stop)
    k, status, params, opt_state, values, stop = jax.lax.while_loop(cond, body, start)
    return params, opt_state, stop, values, k, status


#: The compiled chunk: ``run_chunk(spec, params, opt_state, stop, data, idx, e0, limit)``.
#: ``spec`` is static, so a program is compiled once per (spec, argument shapes) and reused
#: by every later call whose spec is equal (see :mod:`mlds_jax.training.program`).
run_chunk: Any = jax.jit(epochs, static_argnums=0)
