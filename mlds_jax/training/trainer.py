"""The :class:`Trainer`: a training program built once, and the state it carries between chunks.

A Trainer is built from what determines the compiled computation (loss, gradient source,
optimizer, batch size, shuffling, mesh, DP settings).  ``prepare`` validates a data set once and
puts it on the device as the run's :class:`TrainData`; ``init`` makes the first
:class:`TrainState`; ``run`` advances the state by up to K epochs in one compiled call (see
:mod:`mlds_jax.training.epoch`) and returns their metrics.  :func:`mlds_jax.fit` is a loop of
``run`` calls with callbacks around it; the estimators' ``partial_fit`` is one ``run`` call.

Example:
  >>> trainer = mj.Trainer("cross_entropy", optax.adam(1e-3), batch_size=32)
  >>> data = trainer.prepare(params, X, y, key=jax.random.key(0))
  >>> state = trainer.init(params, data)
  >>> state, chunk = trainer.run(state, data, epochs=5)   # one compiled call
  >>> chunk.logs[-1]["loss"], state.epoch
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from mlds_jax import parallel, validation
from mlds_jax.compilation import use_default_cache
from mlds_jax.layers import Params
from mlds_jax.losses import get_loss
from mlds_jax.training.batching import (
    BatchPlan,
    as_key,
    batch_plan,
    check_sample_weight,
    checked_bucketed,
    chunk_epochs,
    epoch_indices,
    key_words,
    train_bucket,
)
from mlds_jax.training.epoch import (
    DIVERGED,
    EARLY_STOPPED,
    EpochData,
    StopState,
    metric_names,
    run_chunk,
)
from mlds_jax.training.program import ProgramSpec, UpdateIdentity
from mlds_jax.training.step import (
    GradientSource,
    check_dp,
    check_grads_name,
    check_l2,
    check_opt_state,
    check_optimizer,
)
from mlds_jax.training.stopping import EarlyStopping

__all__ = ["ChunkResult", "TrainData", "TrainState", "Trainer"]

#: The early-stopping patience that never stops (no early stopping).
NO_PATIENCE = int(np.iinfo(np.int32).max)


class TrainState(NamedTuple):
    """Where a run stands after ``epoch`` epochs: everything needed to continue it exactly.

    Attributes:
      params: the parameters after ``epoch`` epochs.
      opt_state: the optimizer state.
      epoch: epochs done (the next epoch's 0-based number).
      best_value: early stopping's reference value so far (the monitored metric; inf
        before the first epoch, −inf for metrics where higher is better, inf without it).
      since_best: epochs since it improved by more than min_delta.
      best_epoch: 0-based epoch of the best value, or None.
      best_params: the parameters after that epoch (``params`` without early stopping).
    """

    params: Params
    opt_state: Any
    epoch: int
    best_value: float
    since_best: int
    best_epoch: int | None
    best_params: Params


@dataclasses.dataclass(frozen=True, eq=False)
class TrainData:
    """A data set prepared for one Trainer: validated, bucketed and on the device.

    Attributes:
      arrays: the :class:`~mlds_jax.training.epoch.EpochData` every epoch reads.
      plan: the host-side :class:`~mlds_jax.training.BatchPlan`.
      n: training rows.  n_val: validation rows (0 without validation data).
      key: the ``jax.random`` key of the shuffles (epoch e's order: ``shuffle_order(key, n, e)``).
      words: the key's bits (the shuffles' seed).
      chunk: K, the most epochs one compiled call runs.
      names: the metric names, in the compiled metric vector's order.
      early_stopping: the :class:`EarlyStopping` settings, or None.
      trainer: the :class:`Trainer` that prepared it.
      template: the params' structure, shapes and dtypes (``jax.ShapeDtypeStruct`` leaves).
      weighted: whether ``sample_weight`` was given.
    """

    arrays: EpochData
    plan: BatchPlan
    n: int
    n_val: int
    key: Any
    words: tuple[int, ...]
    chunk: int
    names: tuple[str, ...]
    early_stopping: EarlyStopping | None
    trainer: Trainer
    template: Any
    weighted: bool = True

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches (optimizer steps) per epoch."""
        return len(self.plan.counts)

    @functools.cached_property
    def spec(self) -> ProgramSpec:
        """The compiled program's :class:`~mlds_jax.training.program.ProgramSpec`, built at
        the first epoch (tracing the optimizer's update comes after every input check)."""
        t = self.trainer
        update = UpdateIdentity(t.optimizer, self.template)
        return ProgramSpec(
            update, t.loss, t.grads, self.arrays.Xv is not None, t.mesh, t.dp,
            weighted=self.weighted, stopping=self.early_stopping is not None,
        )  # fmt: skip


class ChunkResult(NamedTuple):
    """What one compiled call reports.

    Attributes:
      logs: one dict of floats per committed epoch: the metrics and "time" (the call's wall
        time divided by its epochs).
      status: "running" (every epoch asked for ran), "early_stopping" or "diverged" (the
        next epoch went non-finite and was discarded; the state is the last finite one).
    """

    logs: list[dict]
    status: str


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def typed_key(key):
    """A key as a new-style typed key (a legacy uint32 key keeps its bits)."""
    return key if _is_typed_key(key) else jax.random.wrap_key_data(key)


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """A training program: the loss, gradient source, optimizer and minibatching of a run.

    Args:
      loss: loss name (see ``mlds_jax.losses.LOSSES``).
      optimizer: an optax optimizer; default ``optax.adam(1e-3)``.
      grads: "manual" (hand-derived) or "autodiff" (``jax.grad``).
      batch_size: rows per update (>= 1); the last partial batch is used.  A batch size
        above N trains full-batch.
      shuffle: draw a new row order every epoch (default); ``False`` keeps the given order.
      mesh: optional ``jax.sharding.Mesh`` with a "batch" axis: data-parallel training.
      dp: optional gradient source, :class:`mlds_jax.DPSGD`: every update is DP-SGD's.

    The compiled programs are reused exactly when they are provably the same computation:
    equal loss, gradient source, validation setting, mesh and DP settings, and an optimizer
    whose ``update`` traces to the same jaxpr with equal constants for these params (see
    :mod:`mlds_jax.training.program`).  So a fresh ``optax.adam(1e-3)`` reuses an earlier
    one's program, while a schedule that reads a changed global value gets a new one.
    """

    loss: str
    optimizer: optax.GradientTransformation | None = None
    grads: str = "manual"
    batch_size: int = 32
    shuffle: bool = True
    mesh: Any = None
    dp: GradientSource | None = None

    def __post_init__(self):
        get_loss(self.loss)
        check_grads_name(self.grads)
        set_ = functools.partial(object.__setattr__, self)
        set_("optimizer", optax.adam(1e-3) if self.optimizer is None else self.optimizer)
        check_optimizer(self.optimizer)
        set_("batch_size", validation.positive_int(self.batch_size, "batch_size"))
        if not isinstance(self.shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {self.shuffle!r}")
        set_("mesh", None if self.mesh is None else parallel.check_mesh(self.mesh))
        set_("dp", check_dp(self.dp))
        if self.dp is not None and self.mesh is not None:
            raise ValueError("dp with a mesh is not supported: pass one or the other")

    # --- a data set, once -------------------------------------------------------------------
    def prepare(
        self,
        params: Params,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        key: ArrayLike | None = None,
        validation_data: tuple[ArrayLike, ArrayLike] | None = None,
        sample_weight: ArrayLike | None = None,
        l2: float = 0.0,
        early_stopping: EarlyStopping | None = None,
    ) -> TrainData:
        """Validate (X, Y) once for ``params`` and put everything a run reads on the device.

        Args:
          params: the network (its shapes and dtype shape the program).
          X: (N, n_in).  Y: targets as for :func:`mlds_jax.loss`.
          key: the shuffles' ``jax.random`` key or an int seed; default 0.
          validation_data: optional (X_val, Y_val), evaluated after every epoch.
          sample_weight: optional (N,) weights s_n ≥ 0, not all zero (see :func:`fit`).
          l2: λ ≥ 0 of (R1) (data: changing it does not recompile).
          early_stopping: optional :class:`EarlyStopping` (data too).
        """
        use_default_cache()  # the persistent compilation cache policy (mlds_jax.compilation)
        key = as_key(key)
        X, Y, n = checked_bucketed(params, X, Y, self.loss, train_bucket)
        has_val = validation_data is not None
        Xv = Yv = wv = None
        n_val = 0
        dtype = np.dtype(X.dtype)
        if has_val:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a tuple (X_val, Y_val)")
            Xv, Yv, n_val = checked_bucketed(
                params, *validation_data, self.loss, x_name="validation X", y_name="validation Y"
            )
            w = np.zeros(Xv.shape[0], dtype)  # validation rows beyond n_val (padding) weigh 0
            w[:n_val] = 1.0 / n_val
            wv = jax.device_put(w)
        names = metric_names(self.loss, has_val, int(Y.shape[1]))
        if early_stopping is not None:
            if not isinstance(early_stopping, EarlyStopping):
                raise TypeError("early_stopping must be None, an int patience or an EarlyStopping")
            monitor = early_stopping.monitor
            if monitor.startswith("val_") and not has_val:
                raise ValueError(
                    f"early stopping monitors {monitor}: pass validation_data=(X_val, Y_val)"
                )
            if monitor not in names:
                raise ValueError(
                    f"early stopping monitors {monitor}, which a {self.loss} run does not "
                    f"record; it records {list(names)}"
                )
        l2 = check_l2(l2)
        if self.dp is not None and sample_weight is not None:
            raise ValueError("dp and sample_weight cannot be combined: DP-SGD counts each row once")
        sw = check_sample_weight(sample_weight, n, X.shape[0], dtype)
        multiple = 1 if self.mesh is None else parallel.n_shards(self.mesh)
        plan = batch_plan(n, self.batch_size, multiple, dtype, rows=X.shape[0])
        wr = None  # regression: 1/n on the real training rows, for the epoch's r2
        if get_loss(self.loss).targets == "real":
            wr = np.zeros(X.shape[0], dtype)
            wr[:n] = 1.0 / n
        put = jax.device_put  # host arrays: a transfer, where jnp.asarray compiles a program
        if self.mesh is not None:
            rep, _ = parallel.shardings(self.mesh)
            X, Y, Xv, Yv, wv = jax.device_put((X, Y, Xv, Yv, wv), rep)
            put = functools.partial(jax.device_put, device=rep)
        if early_stopping is None:
            stopping = (0, 1.0, 0.0, NO_PATIENCE, 0)
        else:
            es = early_stopping
            running = int(es.reference == "best")
            stopping = (names.index(es.monitor), es.sign, es.min_delta, es.patience, running)
        noise_key = None
        if self.dp is not None:
            noise_key, _ = jax.random.split(typed_key(key))
        arrays = EpochData(
            X=jnp.asarray(X),
            Y=jnp.asarray(Y),
            mask=put((plan.pos >= 0).astype(dtype)),
            sw=put(sw),
            l2=put(np.asarray(l2, dtype)),
            n_batches=put(np.asarray(len(plan.counts), np.int32)),
            Xv=Xv,
            Yv=Yv,
            wv=wv,
            wr=None if wr is None else put(wr),
            # regression's R² runs the rows in their given order, over the same batch slots
            plain=None if wr is None else put(np.maximum(plan.pos, 0).astype(np.int32)),
            noise_key=noise_key,
            stopping=(
                put(np.asarray(stopping[0], np.int32)),
                put(np.asarray(stopping[1], dtype)),
                put(np.asarray(stopping[2], dtype)),
                put(np.asarray(stopping[3], np.int32)),
                put(np.asarray(stopping[4], np.int32)),
            ),
        )
        return TrainData(
            arrays=arrays,
            plan=plan,
            n=n,
            n_val=n_val,
            key=key,
            words=key_words(key),
            chunk=chunk_epochs(plan.pos.size),
            names=names,
            early_stopping=early_stopping,
            trainer=self,
            weighted=sample_weight is not None,
            template=jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params
            ),
        )

    def init(self, params: Params, data: TrainData, opt_state: Any = None) -> TrainState:
        """The state before the first epoch: ``optimizer.init(params)`` unless ``opt_state``
        (continuing an optimizer, as ``partial_fit`` does; checked against the optimizer)."""
        if opt_state is None:
            opt_state = self.optimizer.init(params)  # pyright: ignore[reportOptionalMemberAccess, reportArgumentType]
        else:
            check_opt_state(self.optimizer, params, opt_state)
        es = data.early_stopping
        best = math.inf if es is None else es.sign * math.inf  # the worst value to beat
        return TrainState(params, opt_state, 0, best, 0, None, params)

    # --- epochs -----------------------------------------------------------------------------
    def run(
        self, state: TrainState, data: TrainData, epochs: int
    ) -> tuple[TrainState, ChunkResult]:
        """Advance ``state`` by up to ``min(epochs, data.chunk)`` epochs in one compiled call.

        Fewer run when early stopping ends the run or an epoch diverges (its update is
        discarded).  Returns the new state and the :class:`ChunkResult`.
        """
        d = data.arrays
        put = jax.device_put
        params, opt_state, best_params = state.params, state.opt_state, state.best_params
        if self.mesh is not None:
            rep, _ = parallel.shardings(self.mesh)
            params, opt_state, best_params = jax.device_put((params, opt_state, best_params), rep)
            put = functools.partial(jax.device_put, device=rep)
        e, dtype = state.epoch, np.dtype(d.X.dtype)
        limit = max(1, min(int(epochs), data.chunk))
        t0 = time.perf_counter()
        idx = np.zeros((data.chunk, *data.plan.pos.shape), np.int32)
        for i in range(limit):
            idx[i] = epoch_indices(data.plan, data.words, e + i, self.shuffle)
        sign = 1.0 if data.early_stopping is None else data.early_stopping.sign
        stop = StopState(
            put(np.asarray(sign * state.best_value, dtype)),  # lower is better on the device
            put(np.asarray(state.since_best, np.int32)),
            put(np.asarray(-1 if state.best_epoch is None else state.best_epoch, np.int32)),
            best_params,
        )
        params, opt_state, stop, values, runs, status = run_chunk(
            data.spec, params, opt_state, stop, d, put(idx), put(np.asarray(e, np.int32)),
            put(np.asarray(limit, np.int32)),
        )  # fmt: skip
        # the chunk's one read back: every epoch's metrics and the loop's state
        values, runs, status, best_value, since_best, best_epoch = jax.device_get(
            (values, runs, status, stop.best_value, stop.since_best, stop.best_epoch)
        )
        runs, status = int(runs), int(status)
        elapsed = (time.perf_counter() - t0) / max(runs, 1)
        logs = []
        for i in range(runs):
            row = dict(zip(data.names, values[i, :-1].tolist(), strict=True))
            row["time"] = elapsed  # the call's time, spread evenly over its epochs
            logs.append(row)
        if data.early_stopping is not None:
            best = int(best_epoch)
            new = TrainState(
                params, opt_state, e + runs, sign * float(best_value), int(since_best),
                best if best >= 0 else None, stop.best_params,
            )  # fmt: skip
        else:
            new = TrainState(params, opt_state, e + runs, math.inf, 0, None, params)
        name = {DIVERGED: "diverged", EARLY_STOPPED: "early_stopping"}.get(status, "running")
        return new, ChunkResult(logs, name)

    def __repr__(self) -> str:
        return (
            f"Trainer(loss={self.loss!r}, grads={self.grads!r}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, mesh={self.mesh}, dp={self.dp})"
        )
