r"""Training: a jit-compiled train step over any optax optimizer, ``fit`` and ``evaluate``.

Contracts:

* ``make_train_step(optimizer, loss, grads="manual")`` returns ``step(params, opt_state, X, Y)
  -> (params, opt_state, metrics)``: pure, compiled once per input shape; ``metrics["loss"]`` is
  the loss *before* the update (the value whose gradient was applied).  With
  ``optax.sgd(α)`` the update is exactly the notes' W ← W − α ∂L/∂W (MLDS notes, "Gradient
  descent"; sigmoid notes, w_{k+1} = w_k − α ∂C/∂w_k).
* ``fit`` runs each epoch as a single compiled call: the minibatch gathers, every update (one
  ``lax.scan``; the last partial batch is padded to the common shape with zero-weight rows)
  and the validation pass stay on device; per epoch the host only sends the shuffled row
  indices and reads back one small vector of metrics.  The compiled epoch is reused across
  ``fit`` calls (see "What triggers a compile" in :func:`fit`).
* ``evaluate`` returns ``{"loss", "accuracy"}`` for classification losses and
  ``{"loss", "r2"}`` for regression ones.

Optimizers are optax's; only the gradients are hand-written.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import math
import numbers
import os
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, parallel, train_state, validation
from mlds_jax.extensions.curvature import lanczos_core
from mlds_jax.extensions.dp import DPSGD, dp_epsilon, dp_value_and_grads
from mlds_jax.layers import Params
from mlds_jax.losses import default_loss_for, get_loss
from mlds_jax.network import check_loss_finite

__all__ = [
    "EarlyStopping",
    "History",
    "TrainStep",
    "TrainingDivergedWarning",
    "default_loss",
    "evaluate",
    "fit",
    "in_jupyter_kernel",
    "l2_penalty",
    "make_train_step",
    "shuffle_order",
    "validation_split_indices",
]

GRADS = core.GRAD_METHODS


class TrainingDivergedWarning(RuntimeWarning):
    """Training produced a non-finite loss or parameters and was stopped."""


def default_loss(params: Params) -> str:
    """The loss for the output activation: softmax → cross_entropy, sigmoid → BCE, else mse."""
    return default_loss_for(params[-1].activation)


def _check_grads_name(grads: str) -> None:
    if grads not in GRADS:
        raise ValueError(f"grads must be one of {list(GRADS)}, got {grads!r}")


def _check_optimizer(optimizer) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.1)); "
            f"got {type(optimizer).__name__}"
        )


#: dense_backward's A_prevᵀ is materialised when it has at most this many entries (see below).
_MATERIALISE_TRANSPOSE_MAX_ELEMENTS = 65536


def _layout_dense_backward(delta: Array, A_prev: Array, W: Array):
    """:func:`mlds_jax.core.dense_backward` (B2)-(B4) with a memory-layout hint for XLA:CPU.

    Layout, not maths: XLA:CPU otherwise folds the transpose into the dot as a contraction
    over rows, which it runs with Eigen; a materialised Aᵀ makes it a plain (d_in, N) @
    (N, d_out) product that its YNNPACK kernels take.  Measured on 2 cores (whole epochs,
    interleaved): −4% (digits, batch 32), −7% (batch 256); for larger activations
    (MNIST-size) the copy costs about what it saves, so they keep the plain form.  The same
    products, so the same gradients up to the summation order of one dot.
    """
    if A_prev.size > _MATERIALISE_TRANSPOSE_MAX_ELEMENTS:
        return core.dense_backward(delta, A_prev, W)
    A_prev_T = jax.lax.optimization_barrier(A_prev.T)
    return A_prev_T @ delta, delta.sum(axis=0), delta @ W.T


def _value_grads_aux(grads: str, fused: bool) -> Callable:
    """(params, X, Y, loss, row_weights) -> (value, Ŷ, grads), manual or autodiff."""

    def vga(p, X, Y, loss, rw):
        value, g, Y_hat = core.value_grads_output(
            p,
            X,
            Y,
            loss,
            row_weights=rw,
            method=grads,
            fused=fused,
        )
        return value, Y_hat, g

    return vga


def _batch_metrics(loss: str, value: Array, A: Array, Y: Array, row_weights=None) -> dict:
    """Loss and, for classification, accuracy, averaged with the row weights (default 1/N)."""
    metrics = {"loss": value}
    target = get_loss(loss).targets
    if target == "real":
        return metrics
    if target == "class":
        correct = (jnp.argmax(A, axis=-1) == jnp.argmax(Y, axis=-1)).astype(A.dtype)
    else:  # probability outputs: threshold at 0.5, mean over the outputs of each row
        correct = jnp.mean(((A > 0.5) == (Y > 0.5)).astype(A.dtype), axis=-1)
    if row_weights is None:
        metrics["accuracy"] = jnp.mean(correct)
    else:
        metrics["accuracy"] = jnp.sum(correct * row_weights.astype(A.dtype))
    return metrics


def l2_penalty(params: Params, l2: ArrayLike, total: ArrayLike) -> tuple[Array, Params]:
    r"""scikit-learn's L2 term and its gradient, equation (R1).

    .. math:: R = \frac{\lambda}{2S}\sum_l \|W^{(l)}\|_F^2, \qquad
              \frac{\partial R}{\partial W^{(l)}} = \frac{\lambda}{S} W^{(l)}, \qquad
              \frac{\partial R}{\partial b^{(l)}} = 0

    Args:
      params: L layers.
      l2: λ ≥ 0, a scalar (a Python float or a traced array: data, not a constant).
      total: S > 0, the batch's total sample weight (its number of rows when unweighted).

    Returns:
      (R scalar, ∂R/∂params like params: λW^(l)/S for the weights, zeros for the biases).
    """
    scale = l2 / total
    value = jnp.asarray(0.5 * scale * sum(jnp.sum(layer.W * layer.W) for layer in params))  # (R1)
    grads = [
        dataclasses.replace(layer, W=scale * layer.W, b=jnp.zeros_like(layer.b))  # (R1)
        for layer in params
    ]
    # mirror the params' container (a list stays a list), as the gradients do
    return value, cast(Params, grads if isinstance(params, list) else tuple(grads))


def _add_penalty(value, g, params, l2, total):
    """(value + R, g + ∂R/∂params), equation (R1)."""
    penalty, g_penalty = l2_penalty(params, l2, total)
    return value + penalty, jax.tree_util.tree_map(jnp.add, g, g_penalty)


def _make_step_core(optimizer, loss: str, grads: str, fused: bool = True, dp=None) -> Callable:
    """``step_core(params, opt_state, X, Y, row_weights, l2, total, key)``, pure.

    ``row_weights`` (N,) sum to 1 over the batch (None: 1/N); ``l2`` (None: no penalty) and
    ``total`` = S, the batch's total sample weight, give the (R1) term.  With ``dp`` the
    gradient is :func:`mlds_jax.extensions.dp.dp_value_and_grads` (D1)-(D3) with noise key
    ``key`` (rows with w_n > 0 each count once).
    """
    vga = _value_grads_aux(grads, fused)

    def step_core(params, opt_state, X, Y, row_weights=None, l2=None, total=None, key=None):
        if dp is None:
            value, A, g = vga(params, X, Y, loss, row_weights)
        else:
            assert key is not None, "a DP-SGD step needs its noise key"
            value, g = dp_value_and_grads(params, X, Y, loss, dp, key, row_weights)
            A = core.forward(params, X)  # Ŷ for the accuracy metric
        if l2 is not None:
            if total is None:
                total = (
                    jnp.asarray(X.shape[0], X.dtype)
                    if row_weights is None
                    else jnp.sum(row_weights > 0).astype(X.dtype)
                )
            value, g = _add_penalty(value, g, params, l2, total)  # (R1)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)  # (G1): sgd's update is −α ∂L/∂W
        return params, opt_state, _batch_metrics(loss, value, A, Y, row_weights)

    return step_core


class TrainStep:
    """A compiled train step: ``step(params, opt_state, X, Y) -> (params, opt_state, metrics)``.

    With DP-SGD settings (``make_train_step(..., dp=DPSGD(C, σ))``) the noise key is required:
    ``step(params, opt_state, X, Y, key=k)``.

    Attributes:
      jitted: the underlying ``jax.jit`` function (no input checks), for tight loops:
        ``jitted(params, opt_state, X, Y)`` (with dp: ``jitted(params, opt_state, X, Y, None,
        key)``); with a mesh ``jitted(params, opt_state, X, Y, w)`` with row weights ``w``
        (see :func:`mlds_jax.parallel.pad_rows`).
      trace_count: how many times it has been traced (compiled once per input shape).
      mesh: the data-parallel mesh, or None.
      l2: the (R1) weight penalty λ (0: none).
      dp: the :class:`mlds_jax.DPSGD` settings, or None.
    """

    def __init__(
        self,
        optimizer,
        loss: str,
        grads: str,
        *,
        fused: bool,
        check_inputs: bool,
        mesh=None,
        l2: float = 0.0,
        dp: DPSGD | None = None,
    ):
        self.optimizer, self.loss, self.grads = optimizer, loss, grads
        self.check_inputs = check_inputs
        self.trace_count = 0
        self.l2, self.dp = l2, dp
        self._state_structures: dict = {}
        self.mesh = None if mesh is None else parallel.check_mesh(mesh)
        core = _make_step_core(optimizer, loss, grads, fused, dp)
        penalty = l2 if l2 > 0 else None  # l2 = 0: the plain step, bit for bit

        def traced(params, opt_state, X, Y, row_weights=None, key=None):
            self.trace_count += 1  # Python side effect: runs only while tracing
            return core(params, opt_state, X, Y, row_weights, penalty, None, key)

        if self.mesh is None:
            self.jitted = jax.jit(traced)
        else:
            rep, rows = parallel.shardings(self.mesh)
            self._shardings = rep, rows
            self.jitted = jax.jit(
                traced, in_shardings=(rep, rep, rows, rows, rows), out_shardings=(rep, rep, rep)
            )

    def __call__(
        self,
        params: Params,
        opt_state: Any,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        key: ArrayLike | None = None,
    ):
        if self.dp is not None and key is None:
            raise ValueError(
                "this train step does DP-SGD: pass its noise key, step(params, opt_state, X, Y, "
                "key=jax.random.key(seed)), a new one for every step"
            )
        if self.dp is None and key is not None:
            raise ValueError("key is only used by a DP-SGD step (make_train_step(..., dp=...))")
        if self.check_inputs:
            X, Y = validation.check_batch(params, X, Y, self.loss)
            self._check_opt_state(params, opt_state)
        if key is not None:
            key = validation.check_key(key)
        if self.mesh is None:
            if key is None:
                return self.jitted(params, opt_state, X, Y)
            return self.jitted(params, opt_state, X, Y, None, key)
        rep, rows = self._shardings
        X, Y, w = parallel.pad_rows(jnp.asarray(X), jnp.asarray(Y), parallel.n_shards(self.mesh))
        params, opt_state = jax.device_put((params, opt_state), rep)
        X, Y, w = jax.device_put((X, Y, w), rows)
        return self.jitted(params, opt_state, X, Y, w)

    def _check_opt_state(self, params: Params, opt_state: Any) -> None:
        """opt_state has the structure of ``optimizer.init(params)`` (not None, not another
        optimizer's state): a clear error instead of one from inside optax."""
        treedef = jax.tree_util.tree_structure(params)
        if treedef not in self._state_structures:  # traced once per params structure
            self._state_structures[treedef] = jax.tree_util.tree_structure(
                jax.eval_shape(self.optimizer.init, params)
            )
        if jax.tree_util.tree_structure(opt_state) != self._state_structures[treedef]:
            raise TypeError(
                f"opt_state does not match this step's optimizer and params: "
                f"pass optimizer.init(params) of the same optimizer; got "
                f"{type(opt_state).__name__}"
            )

    def __repr__(self) -> str:
        return f"TrainStep(loss={self.loss!r}, grads={self.grads!r}, mesh={self.mesh})"


def _check_l2(l2) -> float:
    """λ of (R1) as a finite float ≥ 0."""
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number >= 0, got {l2!r}")
    value = float(l2)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return value


def _check_dp(dp) -> DPSGD | None:
    if dp is not None and not isinstance(dp, DPSGD):
        raise TypeError(f"dp must be None or an mlds_jax.DPSGD, got {type(dp).__name__}")
    return dp


def make_train_step(
    optimizer: optax.GradientTransformation,
    loss: str,
    grads: str = "manual",
    *,
    fused: bool = True,
    check_inputs: bool = True,
    mesh=None,
    l2: float = 0.0,
    dp: DPSGD | None = None,
) -> TrainStep:
    """Build a jit-compiled training step.

    Args:
      optimizer: any ``optax.GradientTransformation``; ``optax.sgd(α)`` is the notes' rule
        W ← W − α ∂L/∂W, equation (G1).
      loss: loss name (see ``mlds_jax.LOSSES``).
      grads: "manual" (hand-derived backprop) or "autodiff" (``jax.grad``).
      fused: use the simplified output δ for matched output/loss pairs (manual only).
      check_inputs: validate (params, X, Y) on the host before each call (shapes, labels,
        finiteness).  ``step.jitted`` skips the checks.
      mesh: optional ``jax.sharding.Mesh`` with a "batch" axis: the batch is sharded along
        its rows over the mesh, params and optimizer state are replicated, and XLA reduces
        the gradients; a batch that does not divide evenly is padded with zero-weight rows.
      l2: λ ≥ 0, scikit-learn's ``alpha``: the step minimises L + λ/(2S) Σ_l ‖W^(l)‖²_F,
        equation (R1), with S the number of rows of the batch; biases are not penalised.
        ``metrics["loss"]`` then includes the penalty (as scikit-learn's ``loss_``).  0 (the
        default) is the plain step, bit for bit.
      dp: optional :class:`mlds_jax.DPSGD` (clip norm C, noise multiplier σ): the gradient
        is DP-SGD's (D1)-(D3) (:func:`mlds_jax.extensions.dp.dp_value_and_grads`) and the
        step then requires ``key=`` (a fresh ``jax.random`` key per step).  With l2 the
        (R1) gradient is added after the noise (it does not depend on the data).  Not with
        a mesh.

    Returns:
      A :class:`TrainStep`; initialise the optimizer state with ``optimizer.init(params)``.

    Example:
      >>> step = mj.make_train_step(optax.sgd(0.1), "cross_entropy")
      >>> opt_state = optax.sgd(0.1).init(params)
      >>> params, opt_state, metrics = step(params, opt_state, X, y)
    """
    get_loss(loss)
    _check_grads_name(grads)
    _check_optimizer(optimizer)
    l2 = _check_l2(l2)
    dp = _check_dp(dp)
    if dp is not None and mesh is not None:
        raise ValueError("dp with a mesh is not supported: pass one or the other")
    return TrainStep(
        optimizer, loss, grads, fused=fused, check_inputs=check_inputs, mesh=mesh, l2=l2, dp=dp
    )


# --- evaluate --------------------------------------------------------------------------------
def _eval_core(params, X, Y, loss: str) -> dict:
    cache = core.forward_cache(params, X)
    value = core.loss_value(cache, Y, loss)
    metrics = _batch_metrics(loss, value, cache.As[-1], Y)
    if get_loss(loss).targets == "real":
        resid = jnp.sum((cache.As[-1] - Y) ** 2)
        total = jnp.sum((Y - jnp.mean(Y, axis=0, keepdims=True)) ** 2)
        # constant targets (one row, say) have no variance to explain: as scikit-learn's
        # r2_score, 1 for a perfect fit and 0 otherwise instead of -inf or -1e300
        r2 = 1 - resid / jnp.where(total > 0, total, jnp.ones_like(total))
        metrics["r2"] = jnp.where(total > 0, r2, jnp.where(resid == 0, 1.0, 0.0).astype(Y.dtype))
    return metrics


_eval_jit = jax.jit(_eval_core, static_argnums=3)


def evaluate(params: Params, X: ArrayLike, Y: ArrayLike, loss: str | None = None) -> dict:
    """Loss and a score of the network on (X, Y).

    Args:
      params: tuple of :class:`Dense`.
      X: (N, n_in).  Y: targets as for :func:`mlds_jax.loss`.
      loss: loss name; default from the output activation (softmax → cross_entropy,
        sigmoid → binary_cross_entropy, otherwise mse).

    Returns:
      ``{"loss": float, "accuracy": float}`` for classification losses,
      ``{"loss": float, "r2": float}`` (coefficient of determination) for regression ones;
      for targets without variance (one row, say) r2 is 1 for a perfect fit and 0 otherwise,
      as scikit-learn's ``r2_score``.  An overflowed loss raises ValueError, as in
      :func:`mlds_jax.loss`.
    """
    validation.reject_tracers("evaluate", params, X, Y)
    validation.check_params(params)
    loss = default_loss(params) if loss is None else loss
    validation.check_params_finite(params)
    validation.check_loss_output(params, loss)
    X, Y = validation.check_data(params, X, Y, loss)
    metrics = _eval_jit(params, X, Y, loss)
    check_loss_finite(metrics["loss"], params, X)
    return {k: float(v) for k, v in metrics.items()}


# --- fit -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the parameters of the best epoch are returned.
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best: bool = True

    def __post_init__(self):
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"early stopping patience must be an int >= 1, got {self.patience!r}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.monitor not in ("val_loss", "loss"):
            raise ValueError(f"monitor must be 'val_loss' or 'loss', got {self.monitor!r}")


class History(dict):
    """Per-epoch lists ("loss", "accuracy", "val_loss", "val_accuracy", "epsilon", "time"),
    "sharpness"/"sharpness_epoch" (one entry per k epochs), plus ``stop_reason``
    ("completed", "early_stopping" or "diverged") and ``best_epoch``."""

    stop_reason: str = "completed"
    best_epoch: int | None = None


def _tree_finite(tree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


class _BatchPlan(NamedTuple):
    """Where each row of a shuffled epoch goes: every minibatch padded to one static shape.

    Attributes:
      pos: (slots, B') positions into the epoch's permutation, -1 on padding; the first
        n_batches rows are the batches, any further ones all padding.
      weights: (slots, B') row weights: 1/(real rows of the batch), 0 on padding.
      counts: (n_batches,) real rows per batch (B, ..., B, the remainder).
    """

    pos: np.ndarray
    weights: np.ndarray
    counts: np.ndarray


def _batch_plan(n: int, batch_size: int, multiple: int, dtype, rows: int | None = None
                ) -> _BatchPlan:  # fmt: skip
    """Minibatches of ``batch_size`` rows (the last may be short), padded to a multiple.

    The last partial batch is used, not dropped: it is padded to the common shape with
    zero-weight rows, so the whole epoch is one loop with one compiled step and its
    gradient is exactly that of the partial batch (row weights replace 1/N, see losses.py).
    With ``rows`` (the row bucket, >= n) and n >= batch_size, ``pos`` and ``weights`` have
    room for the ⌈rows / batch_size⌉ batches of a full bucket (the extra ones all padding,
    never run): every n of one bucket gets the same shapes.
    """
    b = min(batch_size, n)
    n_batches = -(-n // b)
    slots = n_batches if rows is None or b < batch_size else max(n_batches, -(-rows // b))
    b_pad = parallel.padded_size(b, multiple)
    counts = np.full(n_batches, b)
    counts[-1] = n - (n_batches - 1) * b
    real = np.arange(b_pad)[None, :] < np.pad(counts, (0, slots - n_batches))[:, None]
    pos = np.full((slots, b_pad), -1, np.int64)
    pos[real] = np.arange(n)  # row-major: batch i holds permutation positions i*b ... i*b+count-1
    safe = np.pad(counts, (0, slots - n_batches), constant_values=1)[:, None]
    weights = np.where(real, 1.0 / safe, 0.0).astype(dtype)
    return _BatchPlan(pos, weights, counts.astype(dtype))


def _key_words(key) -> tuple[int, ...]:
    """The key's bits as Python ints (new-style or legacy uint32 keys alike)."""
    data = key if jnp.issubdtype(key.dtype, jnp.unsignedinteger) else jax.random.key_data(key)
    return tuple(int(w) for w in np.asarray(data).ravel())


def _permutation(key_words: tuple[int, ...], epoch: int, n: int) -> np.ndarray:
    # Drawn on the host, seeded by (key, epoch) through NumPy's SeedSequence: no device work
    # and nothing built per epoch up front, so memory and set-up do not grow with ``epochs``.
    # NumPy's PCG64 permutes 60000 rows in ~0.5 ms (jax.random.permutation: ~24 ms, 2 cores).
    return np.random.default_rng([*key_words, int(epoch)]).permutation(n)


def shuffle_order(key: ArrayLike, n: int, epoch: int) -> np.ndarray:
    """The row order ``fit(..., key=key)`` uses in epoch ``epoch`` (0-based) for ``n`` rows.

    Minibatch i of that epoch is ``order[i*batch_size:(i+1)*batch_size]`` (the last one may be
    shorter).  Reproducible: the same key gives the same orders, whatever the epoch count.
    """
    key = validation.check_key(key)
    n = validation.positive_int(n, "n")
    epoch = validation.positive_int(epoch, "epoch", minimum=0)
    return _permutation(_key_words(key), epoch, n)


def _epoch_indices(
    plan: _BatchPlan, key_words: tuple[int, ...], epoch: int, shuffle: bool = True
) -> np.ndarray:
    """The epoch's shuffled row indices laid out as ``plan`` (padding gathers row 0).

    The permutation is over the real rows only: rows added to reach a row bucket (see
    :func:`_train_bucket`) are never gathered as real rows.  ``shuffle=False``: the identity.
    """
    n = int(plan.counts.sum())
    perm = _permutation(key_words, epoch, n) if shuffle else np.arange(n)
    out = np.zeros(plan.pos.shape, np.int32)
    out[plan.pos >= 0] = perm  # the real slots hold positions 0..n-1 in row-major order
    return out


def _check_sample_weight(sample_weight, n: int, rows: int, dtype) -> np.ndarray:
    """(rows,) host array: the validated s_n on the n real rows, 0 on the bucket padding."""
    sw = np.zeros(rows, dtype)
    if sample_weight is None:
        sw[:n] = 1
        return sw
    try:
        s = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"sample_weight must be an array of numbers, got {type(sample_weight).__name__}"
        ) from None
    if s.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one per row), got {s.shape}")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(f"sample_weight has a non-finite value at index {bad[0]}: {s[bad[0]]}")
    neg = np.flatnonzero(s < 0)
    if neg.size:
        raise ValueError(f"sample_weight must be >= 0; index {neg[0]} is {s[neg[0]]}")
    if not np.any(s > 0):
        raise ValueError("sample_weight is all zero: no row would count")
    sw[:n] = s
    return sw


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _as_typed(key):
    """A legacy uint32 key as a new-style one (same bits)."""
    return jax.random.wrap_key_data(key)


def _metric_names(loss: str, has_val: bool) -> tuple[str, ...]:
    target = get_loss(loss).targets
    train = ("loss", "accuracy") if get_loss(loss).is_classification else ("loss",)
    train = train + (("r2",) if target == "real" else ())
    return train + (tuple("val_" + k for k in train) if has_val else ())


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


# --- reuse of compiled epochs across fit calls ------------------------------------------------
#: Row counts are padded up to the next bucket when X holds at most this many bytes; larger
#: data sets (a 1 s epoch) keep their exact size, where a compile costs less than a host copy.
_ROW_BUCKET_MAX_BYTES = 64 * 2**20


def _row_bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 2^(⌊log2 n⌋ − 3): at most 12.5% padding rows, and
    data sets that differ by a few rows (the folds of a cross-validation) share one shape."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def _train_bucket(n: int) -> int:
    """The training rows' bucket: ``n`` rounded up to a power of two.  The padding rows are
    never gathered (they cost memory, not compute: at most as much again), and data sets
    within a factor of two share one compiled epoch, e.g. the 4/5 of a 5-fold
    cross-validation's folds and the refit on all rows, when both fall in one octave."""
    return 1 << max(0, (n - 1).bit_length())


def _bucketed_on_host(X, Y, bucket: Callable[[int], int] = _row_bucket):
    """(X, Y, n): X and Y padded on the host to the row bucket by repeating row 0, before
    the input checks, so that the checks' own device work (one-hot labels, casts) is
    compiled once per bucket, not once per row count.  Row 0 is a valid row, so the checks
    pass or fail exactly as on the real rows, and report the same first bad index.  Inputs
    that are not plain row-matched arrays, or too large, come back unchanged."""
    try:
        x, y = np.asarray(X), np.asarray(Y)
    except Exception:  # ragged lists and the like: the checks will say what is wrong
        return X, Y, None
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        return X, Y, None
    n = x.shape[0]
    if x.dtype == object or x.nbytes > _ROW_BUCKET_MAX_BYTES:
        return X, Y, None
    rows = bucket(n)
    if rows == n:
        return X, Y, n

    def pad(a):
        return np.concatenate([a, np.repeat(a[:1], rows - n, axis=0)])

    return pad(x), pad(y), n


def _checked_bucketed(params, X, Y, loss: str, bucket: Callable[[int], int] = _row_bucket,
                      **names):  # fmt: skip
    """(X, Y, n) validated and padded to the row bucket.  The checks run on the padded
    arrays (compiled once per bucket); if they fail, they run again on the user's own arrays,
    so the error names the user's shapes, counts and indices, not the padded ones."""
    Xb, Yb, n = _bucketed_on_host(X, Y, bucket)
    try:
        Xb, Yb = validation.check_data(params, Xb, Yb, loss, **names)
    except (ValueError, TypeError):
        validation.check_data(params, X, Y, loss, **names)  # the error as the user sees it
        raise
    return Xb, Yb, n


_SCALARS = (bool, int, float, complex, str, bytes, type(None), type(Ellipsis))


def _fingerprint(obj: Any, seen: frozenset = frozenset(), depth: int = 0) -> Any:
    """A hashable description of a callable and everything its closure holds.

    Two objects get the same fingerprint only if they compute the same thing when traced:
    functions by their code object, defaults and closure cells (recursively), partials by
    their function and arguments, containers by their items, Python scalars by type and value,
    dtypes and classes by themselves.  Anything else (arrays, arbitrary objects) by identity,
    which is safe because the cache entry keeps the optimizer, hence those objects, alive.
    """
    if depth > 40 or id(obj) in seen:
        return ("ref", id(obj))
    seen = seen | {id(obj)}
    t = type(obj)
    if t in _SCALARS:
        return (t.__name__, obj)
    if isinstance(obj, (type, np.dtype, types.ModuleType, types.CodeType)):
        return ("obj", obj)
    if isinstance(obj, types.FunctionType):
        cells = tuple(
            _fingerprint(c.cell_contents, seen, depth + 1) if _cell_full(c) else "empty"
            for c in (obj.__closure__ or ())
        )
        return (
            "fn",
            obj.__code__,
            _fingerprint(obj.__defaults__, seen, depth + 1),
            _fingerprint(obj.__kwdefaults__, seen, depth + 1),
            cells,
        )
    if isinstance(obj, types.MethodType):
        return (
            "method",
            _fingerprint(obj.__func__, seen, depth + 1),
            _fingerprint(obj.__self__, seen, depth + 1),
        )
    if isinstance(obj, functools.partial):
        return (
            "partial",
            _fingerprint(obj.func, seen, depth + 1),
            _fingerprint(obj.args, seen, depth + 1),
            _fingerprint(obj.keywords, seen, depth + 1),
        )
    if isinstance(obj, (tuple, list)):  # NamedTuples (optax's transformations) included
        return (t, tuple(_fingerprint(v, seen, depth + 1) for v in obj))
    if isinstance(obj, dict):
        return (
            t,
            tuple(
                (_fingerprint(k, seen, depth + 1), _fingerprint(v, seen, depth + 1))
                for k, v in obj.items()
            ),
        )
    if isinstance(obj, (np.generic,)):
        return ("np", obj.dtype, obj.item())
    return ("id", id(obj))


def _cell_full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises ValueError)
    except ValueError:
        return False
    return True


#: Compiled epoch functions by computation: an LRU of at most this many entries.
_EPOCH_CACHE_SIZE = 32
_EPOCH_CACHE: collections.OrderedDict = collections.OrderedDict()


def _cached_epoch(optimizer, loss: str, grads: str, has_val: bool, mesh, dp=None) -> Callable:
    """The jitted :func:`_make_epochs` for this computation, built once and reused by later
    ``fit`` calls.

    Keyed on everything the traced program closes over: the optimizer's ``update`` (only
    ``update`` is traced; ``init`` runs outside, so the hyperparameters that
    ``optax.inject_hyperparams`` keeps in the state do not enter the key), the loss, the
    gradient source, whether there is validation data, the mesh and the DP-SGD settings.
    Shapes, dtypes and the params' structure (activations included) are handled by
    ``jax.jit``'s own cache; the sample weights and λ of (R1) are arguments (data).
    """
    key = (_fingerprint(optimizer.update), loss, grads, has_val, mesh, dp)
    try:
        hash(key)
    except TypeError:  # an unhashable leaf somewhere: no reuse, but still correct
        key = ("unhashable", id(optimizer), loss, grads, has_val, id(mesh), dp)
    entry = _EPOCH_CACHE.get(key)
    if entry is None:
        step_core = _make_step_core(optimizer, loss, grads, dp=dp)
        entry = (jax.jit(_make_epochs(step_core, loss, has_val, mesh)), optimizer, mesh)
        _EPOCH_CACHE[key] = entry  # keeps optimizer (what "id" fingerprints name) alive
        while len(_EPOCH_CACHE) > _EPOCH_CACHE_SIZE:
            _EPOCH_CACHE.popitem(last=False)
    else:
        _EPOCH_CACHE.move_to_end(key)
    return entry[0]


#: An epoch gathers its minibatches' rows all at once (one gather of X per epoch, then a
#: slice per step) when that copy holds at most this many bytes; else one gather per step.
#: Layout, not maths: XLA:CPU splits a gather from an operand above ~512 KiB over its
#: threads, and a per-step hand-off between threads costs more than a small step's
#: gather itself (digits in a 2048-row bucket, batch 32: ~25% of the epoch).
_PREGATHER_MAX_BYTES = 16 * 2**20


def _make_epoch(step_core, loss: str, has_val: bool, mesh=None) -> Callable:
    """One epoch as one compiled function: a ``lax.scan`` over the padded minibatches.

    Args of the returned function: params, opt_state, idx (slots, B') row indices,
    mask (slots, B') 1 on real rows and 0 on padding, sw (rows,) the sample weights s_n
    (row-bucketed, 0 on bucket padding), l2 (λ of (R1), a scalar), X, Y (row-bucketed),
    X_val, Y_val, val_weights (row-bucketed validation data; ``val_weights`` 1/N_val on
    real rows, 0 on padding), key (the DP noise key, or None), epoch (an int32 scalar),
    wr (regression: 1/N on the real training rows, else None), plain (regression: the
    (slots, B') row indices in the given order, for the epoch's R², else None) and nb (an
    int32 scalar: the batches to run, ≤ slots; the loop's trip count is data, so every
    N of one row bucket shares the compiled epoch).
    Returns params, opt_state and a vector of the metrics in ``_metric_names`` order followed
    by a finiteness flag of the new params: one array, read back with one transfer.

    Minibatch i: s_n = sw[row] · mask, S = Σ s_n, row weights w_n = s_n / S (the weighted
    mean), (R1) with this S; a batch with S = 0 leaves params and optimizer state as they
    are (a skipped update).  The epoch's metrics are the S-weighted means of the minibatch
    metrics.  The noise key of step i is fold_in(fold_in(key, epoch), i).

    With a mesh, each gathered minibatch and its weights are constrained to be row-sharded
    over "batch" (B' is a multiple of the device count).
    """
    n_train = 2 if get_loss(loss).is_classification else 1
    regression = get_loss(loss).targets == "real"

    def epoch(params, opt_state, idx, mask, sw, l2, X, Y, Xv, Yv, wv, key, e, wr, plain, nb):
        pregather = X.dtype.itemsize * X.shape[1] * idx.size <= _PREGATHER_MAX_BYTES
        if pregather:  # the epoch's rows in one gather each (see _PREGATHER_MAX_BYTES)
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
            step_key = None if key is None else jax.random.fold_in(jax.random.fold_in(key, e), i)
            p_new, s_new, met = step_core(p, s, Xb, Yb, sb / S_safe, l2, S_safe, step_key)
            keep = functools.partial(jax.tree_util.tree_map, lambda a, b: jnp.where(ok, a, b))
            p, s = keep(p_new, p), keep(s_new, s)  # S = 0: no rows count, no update
            batch = jnp.stack([met["loss"], met["accuracy"]] if n_train == 2 else [met["loss"]])
            return p, s, sums + batch * S, total + S

        sums0 = jnp.zeros((n_train,), X.dtype)
        params, opt_state, sums, total = jax.lax.fori_loop(
            0, nb, body, (params, opt_state, sums0, jnp.zeros((), X.dtype))
        )  # nb batches run; the plan's further slots (the rest of the row bucket) do not
        values = [sums / total]  # the S-weighted mean over the minibatches
        if regression:  # R² of the end-of-epoch params on the real training rows, batchwise

            def residual(i, acc):
                A = core.forward(params, X[plain[i]])
                d = (A - Y[plain[i]].astype(A.dtype)) ** 2
                return acc + jnp.sum(mask[i].astype(A.dtype)[:, None] * d)

            resid = jax.lax.fori_loop(0, nb, residual, jnp.zeros((), X.dtype))
            values.append(_r2(resid, Y, wr)[None])
        if has_val:  # padding rows weigh 0: the mean over the real validation rows
            cache = core.forward_cache(params, Xv)
            value = core.loss_value(cache, Yv, loss, row_weights=wv)
            m = _batch_metrics(loss, value, cache.As[-1], Yv, wv)
            values.append(jnp.stack([m["loss"], m["accuracy"]] if n_train == 2 else [m["loss"]]))
            if regression:
                values.append(_weighted_r2(cache.As[-1], Yv, wv)[None])
        values.append(_tree_finite(params).astype(X.dtype)[None])
        return params, opt_state, jnp.concatenate(values)

    return epoch


#: A chunk's status: still running (all ``limit`` epochs done), stopped early, diverged.
_RUNNING, _EARLY_STOPPED, _DIVERGED = 0, 1, 2

#: Epoch row indices per chunk (K·n_batches·B' int32 entries) are kept under this many.
_CHUNK_INDEX_BUDGET = 2**18
#: The most epochs in one compiled call.
_CHUNK_MAX_EPOCHS = 32


def _chunk_epochs(index_entries: int) -> int:
    """K, the epochs one compiled call can run: a power of two in [1, 32] such that the
    chunk's row indices (K × ``index_entries``) stay under ``_CHUNK_INDEX_BUDGET`` entries
    (1 MiB).  It depends on the batch plan's shape only, so it never triggers a compile of
    its own."""
    k = max(1, _CHUNK_INDEX_BUDGET // max(1, index_entries))
    return min(_CHUNK_MAX_EPOCHS, 1 << (k.bit_length() - 1))


class _StopState(NamedTuple):
    """Early stopping's running state, carried on device from epoch to epoch."""

    best_value: Array  # the best monitored value so far (inf before the first epoch)
    since_best: Array  # int32: epochs since it improved by more than min_delta
    best_epoch: Array  # int32: 0-based epoch of the best value, -1 before the first
    best_params: Params  # the parameters after that epoch


def _make_epochs(step_core, loss: str, has_val: bool, mesh=None) -> Callable:
    """Up to K epochs of :func:`_make_epoch` in one compiled call (a ``lax.while_loop``).

    Args of the returned function: those of the epoch (``idx`` now (K, slots, B'), row
    ``k`` the indices of epoch ``e0 + k``), then ``limit`` (int32, 1 <= limit <= K: the epochs
    to run), ``stopping`` = (monitor, min_delta, patience): the index of the monitored value
    in the epoch's metric vector, δ_min and the patience (int32; the int32 maximum when there
    is no early stopping) and ``stop`` a :class:`_StopState`.

    After each epoch, exactly as a host loop would: if any training or validation metric
    (r² excepted) or the new params are non-finite the epoch is discarded and the chunk
    ends ``_DIVERGED``; otherwise it is committed, its metric vector written to row k of
    ``values``, and early stopping updated (improved: value < best − δ_min, in the metrics'
    dtype; ``patience`` epochs without improvement end the chunk ``_EARLY_STOPPED``).

    Returns:
      (params, opt_state, values (K, n_metrics + 1), runs (int32: committed epochs), status,
      stop state).  Rows of ``values`` at and beyond ``runs`` are zero, except the row of a
      diverged epoch, which holds its (non-finite) metrics.
    """
    epoch = _make_epoch(step_core, loss, has_val, mesh)
    names = _metric_names(loss, has_val)
    # a non-finite loss or accuracy means divergence; r2 can overflow before the params do
    checked = np.array([not k.endswith("r2") for k in names] + [False])

    def epochs(params, opt_state, idx, mask, sw, l2, X, Y, Xv, Yv, wv, key, e0, wr, plain, nb,
               limit, stopping, stop):  # fmt: skip
        monitor, min_delta, patience = stopping
        values0 = jnp.zeros((idx.shape[0], len(names) + 1), X.dtype)

        def cond(carry):
            k, status = carry[0], carry[1]
            return (k < limit) & (status == _RUNNING)

        def body(carry):
            k, _, p, s, values, st = carry
            p_new, s_new, v = epoch(
                p, s, idx[k], mask, sw, l2, X, Y, Xv, Yv, wv, key, e0 + k, wr, plain, nb
            )
            values = values.at[k].set(v)
            finite = (v[-1] == 1) & jnp.all(jnp.where(checked, jnp.isfinite(v), True))

            def commit(_):
                improved = v[monitor] < st.best_value - min_delta
                since = jnp.where(improved, 0, st.since_best + 1)
                best = jax.lax.cond(improved, lambda: p_new, lambda: st.best_params)
                new_st = _StopState(
                    jnp.where(improved, v[monitor], st.best_value),
                    since,
                    jnp.where(improved, e0 + k, st.best_epoch),
                    best,
                )
                status = jnp.where(since >= patience, _EARLY_STOPPED, _RUNNING)
                return k + 1, status.astype(jnp.int32), p_new, s_new, new_st

            def discard(_):  # a non-finite epoch: keep the last finite state and stop
                return k, jnp.int32(_DIVERGED), p, s, st

            k, status, p, s, st = jax.lax.cond(finite, commit, discard, None)
            return k, status, p, s, values, st

        k, status, params, opt_state, values, stop = jax.lax.while_loop(
            cond, body, (jnp.zeros((), jnp.int32), jnp.int32(_RUNNING), params, opt_state,
                         values0, stop)
        )  # fmt: skip
        return params, opt_state, values, k, status, stop

    return epochs


#: Inputs whose largest column standard deviation exceeds this are called "unscaled".
_LARGE_INPUT_SCALE = 10.0


def _input_scale(X) -> float | None:
    """The largest column standard deviation of X (host), or None if X is not an array."""
    try:
        x = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        return None
    return float(np.max(np.std(x, axis=0), initial=0.0))


def _divergence_cause(input_scale: float | None) -> str:
    """One sentence: the likely cause of a divergence, inputs' scale or the learning rate."""
    if input_scale is not None and input_scale > _LARGE_INPUT_SCALE:
        return (
            f"Likely cause: the input scale (a feature has standard deviation "
            f"{input_scale:.3g}); standardise X to mean 0 and variance 1."
        )
    return "Likely cause: the learning rate is too large (the inputs are on a unit scale)."


#: The entropy tag that separates the validation split's RNG stream from the shuffles'.
_SPLIT_STREAM = (0x76616C, 0x73706C)


def validation_split_indices(
    key: ArrayLike, Y: ArrayLike, fraction: float, *, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) row indices ``fit(..., validation_split=fraction)`` uses.

    Deterministic from ``key`` (and independent of the per-epoch shuffles).  Stratified by
    class when ``stratify`` (Y (N,) labels or (N, k) one-hot/probability rows: argmax, or
    y > 0.5 for one column): each class gives round(fraction · its count) rows.  At least one
    row lands on each side.

    Args:
      key: ``jax.random`` key.  Y: (N,) or (N, k) targets.  fraction: in (0, 1).

    Returns:
      (train_idx, val_idx), sorted int64 arrays partitioning range(N).
    """
    key = validation.check_key(key)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(f"validation_split must be a float in (0, 1), got {fraction!r}")
    if not 0 < float(fraction) < 1:
        raise ValueError(f"validation_split must lie strictly between 0 and 1, got {fraction!r}")
    y = np.asarray(Y)
    n = y.shape[0] if y.ndim >= 1 else 0
    if n < 2:
        raise ValueError(f"validation_split needs at least 2 rows, got {n}")
    rng = np.random.default_rng([*_key_words(key), *_SPLIT_STREAM])
    if stratify:
        if y.ndim == 1:
            labels = y
        elif y.shape[1] == 1:
            labels = (y[:, 0] > 0.5).astype(np.int64)
        else:
            labels = np.argmax(y, axis=1)
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    else:
        groups = [np.arange(n)]
    val: list[np.ndarray] = []
    for rows in groups:
        rows = rows[rng.permutation(rows.size)]
        val.append(rows[: int(round(float(fraction) * rows.size))])
    val_idx = np.sort(np.concatenate(val))
    if val_idx.size == 0:  # tiny data: one row from the largest group
        val_idx = np.sort(max(groups, key=len)[rng.integers(max(map(len, groups)))][None])
    if val_idx.size == n:
        val_idx = val_idx[1:]
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def _split_off_validation(params, X, Y, loss, sample_weight, fraction, key):
    """(X_train, Y_train, (X_val, Y_val), sample_weight_train): the held-out split of fit."""
    Xc, Yc = validation.check_data(params, X, Y, loss)
    Xh, Yh = np.asarray(Xc), np.asarray(Yc)
    stratify = get_loss(loss).targets in ("class", "probability")
    train_idx, val_idx = validation_split_indices(key, Yh, fraction, stratify=stratify)
    if sample_weight is not None:
        s = np.asarray(sample_weight)
        if s.shape != (Xh.shape[0],):
            raise ValueError(
                f"sample_weight must have shape ({Xh.shape[0]},) (one per row), got {s.shape}"
            )
        sample_weight = s[train_idx]
    return Xh[train_idx], Yh[train_idx], (Xh[val_idx], Yh[val_idx]), sample_weight


def in_jupyter_kernel() -> bool:
    """True when running inside an IPython kernel (Jupyter, VS Code notebooks, Colab).

    IPython must already be imported (it is, in a kernel) and ``get_ipython()`` must return
    a shell with a ``kernel``; a plain IPython terminal has none.  Never imports IPython.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:
        return False
    return getattr(shell, "kernel", None) is not None


def _progress_mode(progress: bool) -> str | None:
    """How ``fit`` shows progress: "notebook" (tqdm.auto's widget bar in a kernel, when tqdm
    and ipywidgets are installed), "text" (a kernel without them: one line per epoch on
    stdout), "bar" (tqdm on a terminal stderr) or None (off, not a terminal, or no tqdm)."""
    if not progress:
        return None
    has_tqdm = importlib.util.find_spec("tqdm") is not None
    if in_jupyter_kernel():
        return "notebook" if has_tqdm and importlib.util.find_spec("ipywidgets") else "text"
    if hasattr(sys.stderr, "isatty") and sys.stderr.isatty() and has_tqdm:
        return "bar"
    return None


def _check_verbose(verbose) -> int:
    if isinstance(verbose, bool) or not isinstance(verbose, (int, np.integer)):
        raise TypeError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose}")
    return int(verbose)


def _log_line(e: int, epochs: int, metrics: dict) -> str:
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "time")
    return f"epoch {e + 1:>{len(str(epochs))}}/{epochs}  {shown}"


def fit(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    *,
    loss: str | None = None,
    optimizer: optax.GradientTransformation | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    key: ArrayLike | None = None,
    validation_data: tuple[ArrayLike, ArrayLike] | None = None,
    grads: str = "manual",
    early_stopping: int | EarlyStopping | None = None,
    progress: bool = True,
    verbose: int = 0,
    on_epoch_end: Callable[[int, dict], bool | None] | None = None,
    mesh=None,
    l2: float = 0.0,
    sample_weight: ArrayLike | None = None,
    shuffle: bool = True,
    dp: DPSGD | None = None,
    dp_delta: float | None = None,
    track_sharpness: int | None = None,
    sharpness_data: tuple[ArrayLike, ArrayLike] | None = None,
    validation_split: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> tuple[Params, History]:
    """Train with minibatches; up to 32 epochs run in one compiled call on the device.

    Epochs run in chunks of K (a power of two ≤ 32 such that a chunk's row indices number
    at most 2^18: K < 32 when an epoch has more than 8192 rows) inside one compiled
    ``lax.while_loop``,
    with early stopping and the divergence check decided on the device after every epoch:
    the host reads back once per chunk.  One epoch per call instead when the host must act
    after each epoch: with ``on_epoch_end``, a progress bar, ``verbose=2`` or
    ``checkpoint_dir``; ``verbose=1`` and ``track_sharpness`` end chunks where a line or a
    λ_max is due.  The results are the same either way (bit-identical: it is one program).

    Args:
      params: initial parameters (not modified).
      X: (N, n_in) inputs.  Y: targets as for :func:`mlds_jax.loss`.
      loss: loss name; default from the output activation (softmax → cross_entropy,
        sigmoid → binary_cross_entropy, otherwise mse).
      optimizer: an optax optimizer; default ``optax.adam(1e-3)``.
      epochs: passes over the data (>= 1).
      batch_size: rows per update (>= 1); the last partial batch is used.  A batch_size
        above N trains full-batch.
      key: ``jax.random`` key for the per-epoch shuffles; default ``jax.random.key(0)``.
        The same key gives bit-identical parameters and history; :func:`shuffle_order`
        returns the row order of any epoch.
      validation_data: optional (X_val, Y_val), evaluated after every epoch.
      validation_split: optional fraction in (0, 1) of the rows of (X, Y) held out as the
        validation data instead (not with ``validation_data``): stratified by class for
        classification losses, deterministic from ``key`` and independent of the shuffles;
        :func:`validation_split_indices` gives the rows.  ``sample_weight`` follows its rows.
      grads: "manual" (hand-derived) or "autodiff" (``jax.grad``).
      early_stopping: patience as an int, or an :class:`EarlyStopping`; monitors val_loss
        (needs validation_data) and restores the best parameters.
      progress: show progress where people look: on a terminal (stderr a tty) a tqdm bar
        with the metrics; in a Jupyter/IPython kernel (:func:`in_jupyter_kernel`) tqdm's
        notebook bar when ``tqdm`` and ``ipywidgets`` are installed, else one plain text
        line per epoch on stdout; nothing otherwise (a pipe, a log file, a test run).  A
        missing ``tqdm`` (the ``progress`` extra) is never an error.  Off when
        ``verbose > 0`` (the log lines replace it).
      verbose: 0 (default, silent), 1 (one line ``epoch e/E  loss ...  val_loss ...`` on
        stdout per ~10% of the epochs: every ⌈E/10⌉-th epoch and the last one run) or 2
        (a line per epoch); for logs and scripts whatever stderr is.
      on_epoch_end: optional ``callback(epoch, metrics) -> bool | None``, called after
        every finished epoch with the 0-based epoch index and a fresh dict of that epoch's
        history entries as floats (the keys of "Returns", "time" included).  Returning
        ``True`` stops training after that epoch (``history.stop_reason == "callback"``,
        unless early stopping ended it in the same epoch); any other return value (None)
        continues.  It runs after the epoch's checkpoint; an exception raised in it
        propagates (with ``checkpoint_dir`` the finished epoch is saved first).
      checkpoint_dir: optional directory (it must exist): the training state (params,
        optimizer state, epoch, RNG position, history, early-stopping state; see
        :mod:`mlds_jax.train_state`) is written atomically to ``checkpoint_dir/
        train_state.npz`` every ``checkpoint_every`` epochs (default 1), when training ends,
        and when it is interrupted (KeyboardInterrupt or any exception raised from a signal
        handler: the last completed epoch is saved, then the exception propagates).
      checkpoint_every: k >= 1, with ``checkpoint_dir``.
      resume: continue from ``checkpoint_dir``'s state (FileNotFoundError if there is none).
        Pass the same data, key, optimizer, loss, batch size and architecture: the run then
        ends bit-identical (params and history but "time") to an uninterrupted one; a state
        of another optimizer or architecture is refused naming the mismatch.  ``epochs`` is
        the total, so it may be raised to train further.
      mesh: optional ``jax.sharding.Mesh`` with a "batch" axis for data-parallel training
        (see :func:`make_train_step`); the data and parameters are replicated on its devices
        and every minibatch is split along its rows.
      l2: λ ≥ 0, scikit-learn's ``alpha``: each update minimises the batch loss plus
        λ/(2S) Σ_l ‖W^(l)‖²_F, equation (R1), S the batch's total sample weight (its number
        of rows when unweighted); biases are not penalised.  The recorded "loss" includes the
        penalty (as scikit-learn's ``loss_``); "val_loss" does not.  λ is data: changing it
        does not recompile.
      sample_weight: optional (N,) non-negative finite weights s_n, not all zero.  In a
        minibatch the loss is Σ s_n ℓ_n / Σ s_m (scikit-learn's weighted mean), i.e. row
        weights w_n = s_n / S; a minibatch whose rows all weigh 0 is skipped (params and
        optimizer state unchanged, no NaN).  The epoch's "loss" and "accuracy" are then
        sample-weighted too: Σ_batches S_b · metric_b / Σ_b S_b, i.e. the weighted mean over
        the epoch's rows of the pre-update values.  Validation metrics stay unweighted.  The
        weights are data: changing them does not recompile.
      shuffle: draw a new row order every epoch (default); ``False`` keeps the given order:
        minibatch i is rows i·batch_size .. (i+1)·batch_size − 1 in every epoch.
      dp: optional :class:`mlds_jax.DPSGD`: every update is DP-SGD's (D1)-(D3) by ghost
        clipping, with the noise key of step i of epoch e fold_in(fold_in(k, e), i),
        k = ``jax.random.split(key)[0]``.  Not with ``sample_weight`` (each example must
        count once) or a mesh.
        ``history["epsilon"]`` records after every epoch the ε spent so far (RDP accountant,
        sample rate min(1, batch_size/N), steps so far, δ = ``dp_delta``) when the optional
        ``dp-accounting`` package is installed and σ > 0; otherwise it is omitted.
        σ = 0 with C = ∞ is the plain fit.
      dp_delta: δ for ``history["epsilon"]``, in (0, 1); default 1/N.
      track_sharpness: k ≥ 1: after every k-th epoch record λ_max of the Hessian of the
        (unpenalised) loss on ``sharpness_data`` in ``history["sharpness"]`` and the 1-based
        epoch in ``history["sharpness_epoch"]``; Lanczos (H11) from
        :func:`mlds_jax.extensions.curvature.lanczos_core` with its default tolerance.
        Compare it with 2/η (the edge of stability of plain gradient descent).
      sharpness_data: (X_s, Y_s) for ``track_sharpness``, validated once; default the first
        min(N, 1024) training rows.

    Returns:
      ``(params, history)``.  ``history`` is a :class:`History` (a dict) of per-epoch lists:
      "loss" (mean minibatch loss over the epoch, before each update; with ``l2`` including
      the (R1) penalty), "accuracy" for classification, "r2" for regression losses (real
      targets: mse, half_squared_error; :func:`evaluate`'s r2, unweighted, of the params at
      the END of the epoch on all training rows: one extra forward pass inside the compiled
      epoch, so ``history["r2"][-1] == evaluate(params, X, Y)["r2"]`` for the returned
      params of a completed run), "val_loss"/"val_accuracy"/"val_r2" with validation data
      (also the end-of-epoch params), "epsilon" with ``dp`` (see above) and "time" (seconds:
      the wall time of the compiled call that ran the epoch, divided by its epochs); with
      ``track_sharpness`` also "sharpness" and "sharpness_epoch" (one entry per k epochs).
      If the loss or parameters become non-finite, training stops with a
      :class:`TrainingDivergedWarning` and the last finite parameters are returned.

    What triggers a compile:
      The compiled epoch is cached in the process and reused by later ``fit`` calls that do
      the same computation.  A call compiles (about 1 s for a small MLP on a 2-core CPU)
      only when one of these differs from every earlier call: the architecture (layer shapes
      and activations), the dtypes, the loss, ``grads``, the batch size (and N itself when
      N < batch_size: full-batch training), the bucket of N (the next power of two, for X up
      to 64 MiB: the folds of a cross-validation and the refit on all rows share one when
      they fall in one octave, e.g. 1437 and 1797 rows; the padding rows are never sampled,
      and the number of minibatches is data), the bucket of N_val (N_val rounded up to a
      multiple of 2^(⌊log2 N_val⌋ − 3): the validation pass runs over it, so it is kept
      tight), whether there is validation data,
      the mesh, and the optimizer's *kind*: its ``update`` function and the Python scalars it
      closes over.  A fresh ``optax.adam(1e-3)`` reuses the compiled epoch of an earlier
      ``optax.adam(1e-3)``; ``optax.adam(3e-4)`` compiles again, unless the optimizer comes
      from ``optax.inject_hyperparams`` (``optax.inject_hyperparams(optax.adam)(
      learning_rate=3e-4)``), whose hyperparameters are data: one compile serves every
      learning rate.  An optimizer closing over arrays or other objects is reused only as
      the same object.  ``dp`` settings are constants of the program too.  ``epochs``,
      ``key``, ``l2``, ``sample_weight``, ``shuffle``, ``early_stopping``, ``progress``,
      ``verbose`` and ``on_epoch_end`` never trigger a compile.  Across processes, see
      :func:`mlds_jax.enable_compilation_cache`.
    """
    validation.reject_tracers("fit", params, X, Y, validation_data, sample_weight)
    validation.check_params(params)
    loss = default_loss(params) if loss is None else loss
    validation.check_params_finite(params)
    validation.check_loss_output(params, loss)
    key = jax.random.key(0) if key is None else validation.check_key(key)
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        X, Y, validation_data, sample_weight = _split_off_validation(
            params, X, Y, loss, sample_weight, validation_split, key
        )
    X, Y, n = _checked_bucketed(params, X, Y, loss, _train_bucket)  # padding: never sampled
    n = X.shape[0] if n is None else n
    epochs = validation.positive_int(epochs, "epochs")
    batch_size = validation.positive_int(batch_size, "batch_size")
    _check_grads_name(grads)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    _check_optimizer(optimizer)
    has_val = validation_data is not None
    if has_val:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a tuple (X_val, Y_val)")
        Xv, Yv, n_val = _checked_bucketed(
            params, *validation_data, loss, x_name="validation X", y_name="validation Y"
        )
        n_val = Xv.shape[0] if n_val is None else n_val
    else:
        Xv = Yv = None
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError(
            f"on_epoch_end must be callable(epoch, metrics), got {type(on_epoch_end).__name__}"
        )
    if isinstance(early_stopping, bool):
        raise TypeError("early_stopping must be None, an int patience or an EarlyStopping")
    if isinstance(early_stopping, (int, np.integer)):
        early_stopping = EarlyStopping(patience=int(early_stopping))
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError("early_stopping must be None, an int patience or an EarlyStopping")
        if early_stopping.monitor == "val_loss" and not has_val:
            raise ValueError(
                "early stopping monitors val_loss: pass validation_data=(X_val, Y_val)"
            )

    if checkpoint_dir is None:
        if checkpoint_every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint_dir=")
        state_file = None
    else:
        if not os.path.isdir(checkpoint_dir):
            raise NotADirectoryError(
                f"checkpoint_dir {os.fspath(checkpoint_dir)!r} is not a directory"
            )
        state_file = train_state.state_path(checkpoint_dir)
    every = (
        1
        if checkpoint_every is None
        else validation.positive_int(checkpoint_every, "checkpoint_every")
    )
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    mesh = None if mesh is None else parallel.check_mesh(mesh)
    l2 = _check_l2(l2)
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {shuffle!r}")
    dp = _check_dp(dp)
    if dp is not None and sample_weight is not None:
        raise ValueError("dp and sample_weight cannot be combined: DP-SGD counts each row once")
    if dp is not None and mesh is not None:
        raise ValueError("dp with a mesh is not supported: pass one or the other")
    if dp_delta is not None:
        if dp is None:
            raise ValueError("dp_delta is only used with dp=DPSGD(...)")
        dp_delta = validation.positive_float(dp_delta, "dp_delta")
        if dp_delta >= 1:
            raise ValueError(f"dp_delta must lie in (0, 1), got {dp_delta}")
    sw = _check_sample_weight(sample_weight, n, X.shape[0], np.dtype(X.dtype))
    if track_sharpness is not None:
        track_sharpness = validation.positive_int(track_sharpness, "track_sharpness")
        if sharpness_data is None:
            Xs, Ys = X[: min(n, 1024)], Y[: min(n, 1024)]
        else:
            if not isinstance(sharpness_data, (tuple, list)) or len(sharpness_data) != 2:
                raise TypeError("sharpness_data must be a tuple (X_s, Y_s)")
            Xs, Ys = validation.check_data(
                params, *sharpness_data, loss, x_name="sharpness X", y_name="sharpness Y"
            )
    elif sharpness_data is not None:
        raise ValueError("sharpness_data is only used with track_sharpness=k")
    else:
        Xs = Ys = None
    multiple = 1 if mesh is None else parallel.n_shards(mesh)
    dtype = np.dtype(X.dtype)
    plan = _batch_plan(n, batch_size, multiple, dtype, rows=X.shape[0])
    names = _metric_names(loss, has_val)
    epoch_fn = _cached_epoch(optimizer, loss, grads, has_val, mesh, dp)
    if Xv is not None:  # validation rows beyond n_val (bucket padding) weigh 0
        wv = np.zeros(Xv.shape[0], np.dtype(X.dtype))
        wv[:n_val] = 1.0 / n_val
        wv = jnp.asarray(wv)
    else:
        wv = None
    wr = None  # regression: 1/n on the real training rows, for the epoch's r2
    if get_loss(loss).targets == "real":
        wr = np.zeros(X.shape[0], np.dtype(X.dtype))
        wr[:n] = 1.0 / n
    opt_state = optimizer.init(params)  # pyright: ignore[reportArgumentType]
    history = History()
    best_value, best_params, since_best = math.inf, params, 0
    key_words = _key_words(key)  # epoch e shuffles with (key, e): see shuffle_order
    run_id = {"key": list(key_words), "n": n, "batch_size": batch_size, "loss": loss}
    start = 0
    if resume:
        assert state_file is not None
        saved, params, opt_state, best_params = train_state.load_train_state(
            state_file, params, opt_state
        )
        if saved.get("run") != run_id:
            raise ValueError(
                f"training state {state_file} is of another run ({saved.get('run')}); this "
                f"call has {run_id}: resume with the same key, data, batch size and loss"
            )
        start = int(saved["epoch"])
        history.update({k: list(v) for k, v in saved["history"].items()})
        history.stop_reason = saved["stop_reason"]
        history.best_epoch = saved["best_epoch"]
        best_value, since_best = float(saved["best_value"]), int(saved["since_best"])
    put = jnp.asarray
    if mesh is not None:
        rep, _ = parallel.shardings(mesh)
        params, opt_state, best_params, X, Y, Xv, Yv, wv = jax.device_put(
            (params, opt_state, best_params, X, Y, Xv, Yv, wv), rep
        )
        put = functools.partial(jax.device_put, device=rep)
    mask, sw = put((plan.pos >= 0).astype(dtype)), put(sw)
    wr = None if wr is None else put(wr)
    # regression's R² runs the rows in their given order, over the same batch slots
    plain = None if wr is None else put(np.maximum(plan.pos, 0).astype(np.int32))
    n_batches = put(np.asarray(len(plan.counts), np.int32))
    l2_data = put(np.asarray(l2, dtype))
    noise_key = sharp_key = None
    if dp is not None or track_sharpness is not None:
        noise_key, sharp_key = jax.random.split(key if _is_typed_key(key) else _as_typed(key))
    want_epsilon = (
        dp is not None
        and dp.noise_multiplier > 0
        and importlib.util.find_spec("dp_accounting") is not None
    )
    delta = (1.0 / n if dp_delta is None else dp_delta) if dp is not None else None

    verbose = _check_verbose(verbose)
    mode = None if verbose else _progress_mode(progress)
    if mode == "text":
        verbose = 2
    log_every = max(1, -(-epochs // 10)) if verbose == 1 else 1
    bar = None
    if mode in ("bar", "notebook"):
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="fit", unit="epoch", file=sys.stderr, initial=start)
    done = (start, params, opt_state, best_value, best_params, since_best, history.best_epoch)
    lengths = {k: len(v) for k, v in history.items()}
    saved_at = start if resume else -1

    def save_state(stop_reason: str) -> None:
        e_done, p, s, bv, bp, sb, be = done
        state = {
            "run": run_id,
            "epoch": e_done,
            "history": {k: list(history[k][:m]) for k, m in lengths.items()},
            "stop_reason": stop_reason,
            "best_epoch": be,
            "best_value": bv,
            "since_best": sb,
        }
        assert state_file is not None
        train_state.save_train_state(state_file, p, s, bp, state)

    finished = history.stop_reason != "completed" or start >= epochs
    pending = None  # verbose: the line of the last epoch run, until printed
    chunk = _chunk_epochs(plan.pos.size)  # K: a shape, like the batch plan's
    # the host acts after every epoch for these; otherwise K epochs run per compiled call
    every_epoch = (
        on_epoch_end is not None or bar is not None or verbose == 2 or state_file is not None
    )
    no_patience = np.iinfo(np.int32).max
    if early_stopping is None:
        stopping = (0, 0.0, no_patience)
    else:
        stopping = (names.index(early_stopping.monitor), early_stopping.min_delta,
                    early_stopping.patience)  # fmt: skip
    stopping = (
        put(np.asarray(stopping[0], np.int32)),
        put(np.asarray(stopping[1], dtype)),
        put(np.asarray(stopping[2], np.int32)),
    )
    e = start
    try:
        while e < epochs and not finished:
            limit = 1 if every_epoch else min(chunk, epochs - e)
            if verbose == 1:  # end the chunk where a line is due
                limit = min(limit, log_every - e % log_every)
            if track_sharpness is not None:  # ... and where λ_max is recorded
                limit = min(limit, track_sharpness - e % track_sharpness)
            t0 = time.perf_counter()
            idx = np.zeros((chunk, *plan.pos.shape), np.int32)
            for i in range(limit):
                idx[i] = _epoch_indices(plan, key_words, e + i, shuffle)
            _, p0, s0, bv, bp, sb, be = done
            stop = _StopState(
                put(np.asarray(bv, dtype)),
                put(np.asarray(sb, np.int32)),
                put(np.asarray(-1 if be is None else be, np.int32)),
                bp,
            )
            new_params, new_state, values, runs, status, stop = epoch_fn(
                p0,
                s0,
                put(idx),
                mask,
                sw,
                l2_data,
                X,
                Y,
                Xv,
                Yv,
                wv,
                None if dp is None else noise_key,
                put(np.asarray(e, np.int32)),
                wr,
                plain,
                n_batches,
                put(np.asarray(limit, np.int32)),
                stopping,
                stop,
            )
            # the chunk's one read back: every epoch's metrics and the loop's state
            values, runs, status, best_value, since_best, best_epoch = jax.device_get(
                (values, runs, status, stop.best_value, stop.since_best, stop.best_epoch)
            )
            runs, status = int(runs), int(status)
            elapsed = (time.perf_counter() - t0) / max(runs, 1)
            params, opt_state = new_params, new_state
            metrics: dict = {}
            for i in range(runs):
                metrics = dict(zip(names, values[i, :-1].tolist(), strict=True))
                if want_epsilon:
                    metrics["epsilon"] = dp_epsilon(
                        dp.noise_multiplier,  # pyright: ignore[reportOptionalMemberAccess]
                        min(1.0, batch_size / n),
                        (e + 1) * len(plan.counts),
                        delta,  # pyright: ignore[reportArgumentType]
                    )
                metrics["time"] = elapsed  # the chunk's time, spread evenly over its epochs
                for k, v in metrics.items():
                    history.setdefault(k, []).append(v)
                if track_sharpness is not None and (e + 1) % track_sharpness == 0:
                    assert Xs is not None and Ys is not None and sharp_key is not None
                    lam, _, _ = lanczos_core(
                        params, Xs, Ys, loss, jax.random.fold_in(sharp_key, e)
                    )  # the chunk ends here: ``params`` are this epoch's
                    history.setdefault("sharpness", []).append(float(lam))
                    history.setdefault("sharpness_epoch", []).append(e + 1)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k != "time"})
                    bar.update(1)
                if verbose:  # the last epoch run is always shown, when training stops early too
                    pending = _log_line(e, epochs, metrics)
                    if (e + 1) % log_every == 0 or e + 1 == epochs:
                        print(pending, flush=True)
                        pending = None
                e += 1
            if early_stopping is not None:
                if int(best_epoch) >= 0:
                    history.best_epoch = int(best_epoch)
                if status == _EARLY_STOPPED:
                    history.stop_reason = "early_stopping"
                best_value, since_best = float(best_value), int(since_best)
                done = (e, params, opt_state, best_value, stop.best_params, since_best,
                        history.best_epoch)  # fmt: skip
            else:
                done = (e, params, opt_state, math.inf, params, 0, None)
            lengths = {k: len(v) for k, v in history.items()}
            if status == _DIVERGED:
                history.stop_reason = "diverged"
                warnings.warn(
                    f"training diverged in epoch {e + 1}: non-finite loss or parameters; "
                    f"returning the parameters after epoch {e} (the last finite ones). "
                    + _divergence_cause(_input_scale(np.asarray(X)[:n])),  # only now
                    TrainingDivergedWarning,
                    stacklevel=2,
                )
                break
            if state_file is not None and e % every == 0:
                save_state(history.stop_reason)
                saved_at = e
            # every_epoch: the chunk ran one epoch, whose metrics are ``metrics``
            if runs and on_epoch_end is not None and on_epoch_end(e - 1, dict(metrics)) is True:
                if history.stop_reason == "completed":
                    history.stop_reason = "callback"
                break
            if history.stop_reason != "completed":
                break
        if pending is not None:
            print(pending, flush=True)
        if state_file is not None and saved_at != done[0]:
            save_state(history.stop_reason)
    except BaseException:
        if state_file is not None and saved_at != done[0]:
            save_state("completed")  # interrupted: the last completed epoch, resumable
        raise
    finally:
        if bar is not None:
            bar.close()
    restore = early_stopping is not None and early_stopping.restore_best
    if restore and history.best_epoch is not None:
        params = done[4]
    return params, history
