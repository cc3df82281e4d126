"""``fit``: train a network with minibatches, a thin loop of :meth:`Trainer.run` calls with
callbacks around it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import optax
from jax.typing import ArrayLike

from mlds_jax import validation
from mlds_jax.callback import Callback
from mlds_jax.layers import Params
from mlds_jax.training.batching import as_key
from mlds_jax.training.callbacks import (
    Checkpoint,
    EpochEndFunction,
    ProgressBar,
    VerboseLog,
    check_verbose,
    progress_mode,
)
from mlds_jax.training.run import History, Run
from mlds_jax.training.split import split_off_validation
from mlds_jax.training.step import GradientSource, default_loss
from mlds_jax.training.stopping import (
    EarlyStopping,
    TrainingDivergedWarning,
    divergence_cause,
    input_scale,
)
from mlds_jax.training.trainer import Trainer

__all__ = ["fit", "train"]


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
    validation_split: float | None = None,
    grads: str = "manual",
    early_stopping: int | EarlyStopping | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    verbose: int = 0,
    on_epoch_end: Callable[[int, dict], bool | None] | None = None,
    l2: float = 0.0,
    sample_weight: ArrayLike | None = None,
    shuffle: bool = True,
    mesh=None,
    dp: GradientSource | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    trainer: Trainer | None = None,
) -> tuple[Params, History]:
    """Train with minibatches; up to 32 epochs run in one compiled call on the device.

    ``fit`` builds a :class:`Trainer` from ``loss, optimizer, grads, batch_size, shuffle, mesh,
    dp`` (or takes the given ``trainer``, then those must be left out), prepares the data once
    and runs epochs in chunks of K (a power of two ≤ 32 such that a chunk's row indices number
    at most 2^18) inside one compiled ``lax.while_loop``, with early stopping and the
    divergence check decided on the device after every epoch: the host reads back once per
    chunk and then hands every epoch to the callbacks (:mod:`mlds_jax.callback`).  A callback
    can end a chunk early where it must see the state (a checkpoint every k epochs, a
    per-epoch function, a progress display every ~0.25 s); the results are the same however
    the epochs are chunked (bit-identical: it is one program).

    Args:
      params: initial parameters (not modified).
      X: (N, n_in) inputs.  Y: targets as for :func:`mlds_jax.loss`.
      loss: loss name; default from the output activation (softmax → cross_entropy,
        sigmoid → binary_cross_entropy, otherwise mse).
      optimizer: an optax optimizer; default ``optax.adam(1e-3)``.
      epochs: passes over the data (>= 1); with ``resume`` the total, counting earlier ones.
      batch_size: rows per update (>= 1); the last partial batch is used.  A batch_size
        above N trains full-batch.
      key: ``jax.random`` key for the per-epoch shuffles, or an int seed (``key=7`` is
        ``jax.random.key(7)``); default 0.
        The same key gives bit-identical parameters and history;
        :func:`mlds_jax.training.shuffle_order` returns the row order of any epoch.
      validation_data: optional (X_val, Y_val), evaluated after every epoch.
      validation_split: optional fraction in (0, 1) of the rows of (X, Y) held out as the
        validation data instead (not with ``validation_data``): stratified by class for
        classification losses, deterministic from ``key`` and independent of the shuffles;
        :func:`mlds_jax.training.validation_split_indices` gives the rows.  ``sample_weight``
        follows its rows.
      grads: "manual" (hand-derived) or "autodiff" (``jax.grad``).
      early_stopping: patience as an int, or an :class:`EarlyStopping`; monitors val_loss
        (needs validation data) and restores the best parameters.
      callbacks: further :class:`mlds_jax.callback.Callback` objects, run in order after the
        ones the arguments below imply (e.g. ``mj.SharpnessTracker(every=k)``).
      progress: show progress where people look: on a terminal (stderr a tty) a tqdm bar
        with the metrics; in a Jupyter/IPython kernel tqdm's widget bar when ``tqdm`` and
        ``ipywidgets`` are installed, else one line on stdout rewritten in place; nothing
        otherwise (a pipe, a log file, a test run).  Off when ``verbose > 0``.
      verbose: 0 (default, silent), 1 (a line ``epoch e/E  loss ...  val_loss ...`` on stdout
        every ⌈E/10⌉-th epoch and for the last one run) or 2 (a line per epoch).
      on_epoch_end: optional ``callback(epoch, metrics) -> bool | None``, called after
        every finished epoch with the 0-based epoch index and a fresh dict of that epoch's
        history entries as floats ("time" included).  Returning ``True`` stops training after
        that epoch (``history.stop_reason == "callback"``, unless early stopping ended it in
        the same epoch).  It runs after the epoch's checkpoint; an exception raised in it
        propagates (with ``checkpoint_dir`` the finished epoch is saved first).
      l2: λ ≥ 0, scikit-learn's ``alpha``: each update minimises the batch loss plus
        λ/(2S) Σ_l ‖W^(l)‖²_F, equation (R1), S the batch's total sample weight (its number
        of rows when unweighted); biases are not penalised.  The recorded "loss" includes the
        penalty (as scikit-learn's ``loss_``); "val_loss" does not.  λ is data: changing it
        does not recompile.
      sample_weight: optional (N,) non-negative finite weights s_n, not all zero.  In a
        minibatch the loss is Σ s_n ℓ_n / Σ s_m (scikit-learn's weighted mean), i.e. row
        weights w_n = s_n / S; a minibatch whose rows all weigh 0 is skipped (params and
        optimizer state unchanged, no NaN).  The epoch's "loss" and "accuracy" are then
        sample-weighted too: Σ_batches S_b · metric_b / Σ_b S_b.  Validation metrics stay
        unweighted.  The weights are data: changing them does not recompile.
      shuffle: draw a new row order every epoch (default); ``False`` keeps the given order:
        minibatch i is rows i·batch_size .. (i+1)·batch_size − 1 in every epoch.
      mesh: optional ``jax.sharding.Mesh`` with a "batch" axis for data-parallel training
        (see :func:`make_train_step`).
      dp: optional :class:`mlds_jax.DPSGD`: every update is DP-SGD's (D1)-(D3) by ghost
        clipping, with the noise key of step i of epoch e fold_in(fold_in(k, e), i),
        k = ``jax.random.split(key)[0]``; its privacy accountant adds ``history["epsilon"]``
        (see :class:`mlds_jax.DPSGD`).  Not with ``sample_weight`` or a mesh.
      checkpoint_dir: optional directory (created if missing) for resumable training: see
        :class:`mlds_jax.training.Checkpoint` (every ``checkpoint_every`` epochs, default 1;
        at the end; on interruption, the last completed chunk of epochs).
      checkpoint_every: k >= 1, with ``checkpoint_dir``.
      resume: continue from ``checkpoint_dir``'s state (FileNotFoundError if there is none).
        Pass the same data, key, optimizer, loss, batch size and architecture: the run then
        ends bit-identical (params and history but "time") to an uninterrupted one.  A
        finished run continues when ``epochs`` is more than it has done; fewer is a
        ValueError (see :class:`mlds_jax.training.Checkpoint`).  With ``verbose`` a line
        "resuming from epoch N of M" is printed.
      trainer: a :class:`Trainer` to run (its compiled programs are then shared by every
        call with it); ``loss, optimizer, grads, batch_size, shuffle, mesh, dp`` must then be
        left at their defaults.

    Returns:
      ``(params, history)``.  ``history`` is a :class:`History` (a dict) of per-epoch lists:
      "loss" (mean minibatch loss over the epoch, before each update; with ``l2`` including
      the (R1) penalty), "accuracy" for classification, "r2" for regression losses (real
      targets: :func:`evaluate`'s r2 of the params at the END of the epoch on all training
      rows), "val_loss"/"val_accuracy"/"val_r2" with validation data (also the end-of-epoch
      params), "time" (seconds: the wall time of the compiled call that ran the epoch,
      divided by its epochs), and what callbacks add ("epsilon" with ``dp``, "sharpness"
      ...).  If the loss or parameters become non-finite, training stops with a
      :class:`TrainingDivergedWarning` and the last finite parameters are returned.

    What triggers a compile:
      A call compiles (about 1 s for a small MLP on a 2-core CPU) only when the computation
      differs from every earlier call's: the architecture (layer shapes and activations),
      the dtypes, the loss, ``grads``, the batch size (and N itself when N < batch_size), the
      bucket of N (the next power of two, for X up to 64 MiB; the number of minibatches is
      data), the bucket of N_val, whether there is validation data, whether there are sample
      weights and whether early stopping is on (their values are data), the mesh, the ``dp``
      settings, and what the optimizer's update computes: its traced jaxpr and constants.
      A fresh ``optax.adam(1e-3)`` reuses the program of an earlier ``optax.adam(1e-3)``;
      ``optax.adam(3e-4)`` compiles again, unless the optimizer comes from
      ``optax.inject_hyperparams`` (hyperparameters as data: one compile serves every value).
      A schedule that reads a global or an object's attribute is traced again every call,
      so a changed value is never served a stale program.  ``epochs``, ``key``, ``l2``, the
      values of ``sample_weight`` and ``early_stopping``, ``shuffle`` and the callbacks never
      trigger a compile.  Across processes, JAX's persistent compilation cache is on by default (see
      :mod:`mlds_jax.compilation`; ``MLDS_JAX_COMPILATION_CACHE=0`` turns it off).
    """
    validation.reject_tracers("fit", params, X, Y, validation_data, sample_weight)
    validation.check_params(params)
    if trainer is None:
        loss = default_loss(params) if loss is None else loss
        trainer = Trainer(loss, optimizer, grads, batch_size, shuffle, mesh, dp)
    elif not isinstance(trainer, Trainer):
        raise TypeError(f"trainer must be an mlds_jax.Trainer, got {type(trainer).__name__}")
    else:
        defaults = (None, None, "manual", 32, True, None, None)
        given = (loss, optimizer, grads, batch_size, shuffle, mesh, dp)
        names = ("loss", "optimizer", "grads", "batch_size", "shuffle", "mesh", "dp")
        clash = [k for k, v, d in zip(names, given, defaults, strict=True) if v is not d and v != d]
        if clash:
            raise ValueError(f"pass {', '.join(clash)} to the Trainer, not to fit(trainer=...)")
    validation.check_params_finite(params)
    validation.check_loss_output(params, trainer.loss)
    key = as_key(key)
    epochs = validation.positive_int(epochs, "epochs")
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("pass validation_data or validation_split, not both")
        X, Y, validation_data, sample_weight = split_off_validation(
            params, X, Y, trainer.loss, sample_weight, validation_split, key
        )
    if isinstance(early_stopping, bool):
        raise TypeError("early_stopping must be None, an int patience or an EarlyStopping")
    if isinstance(early_stopping, (int, np.integer)):
        early_stopping = EarlyStopping(patience=int(early_stopping))
    chain = _callbacks(trainer, callbacks, progress, verbose, on_epoch_end, checkpoint_dir,
                       checkpoint_every, resume)  # fmt: skip
    data = trainer.prepare(
        params, X, Y, key=key, validation_data=validation_data, sample_weight=sample_weight,
        l2=l2, early_stopping=early_stopping,
    )  # fmt: skip
    run = Run(trainer, data, trainer.init(params, data), History(), epochs)
    train(run, chain)
    restore = early_stopping is not None and early_stopping.restore_best
    if restore and run.history.best_epoch is not None:
        return run.state.best_params, run.history
    return run.state.params, run.history


def _callbacks(trainer, callbacks, progress, verbose, on_epoch_end, checkpoint_dir,
               checkpoint_every, resume) -> list:  # fmt: skip
    """The callbacks of a fit call, in order: the gradient source's (privacy accounting),
    the checkpoint, the user's, the per-epoch function, the display."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError("callbacks must be a list of mlds_jax.callback.Callback objects")
    for cb in callbacks:
        if not any(callable(getattr(cb, h, None)) for h in ("on_epoch_end", "on_chunk_end")):
            raise TypeError(f"{cb!r} is not a training callback (see mlds_jax.callback)")
    chain: list = [] if trainer.dp is None else list(trainer.dp.training_callbacks())
    if checkpoint_dir is None:
        if checkpoint_every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint_dir=")
    else:
        every = 1 if checkpoint_every is None else checkpoint_every
        every = validation.positive_int(every, "checkpoint_every")
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {resume!r}")
        chain.append(Checkpoint(checkpoint_dir, every, resume, verbose=check_verbose(verbose)))
    chain.extend(callbacks)
    if on_epoch_end is not None:
        chain.append(EpochEndFunction(on_epoch_end))
    verbose = check_verbose(verbose)
    mode = None if verbose else progress_mode(progress)
    if verbose:
        chain.append(VerboseLog(verbose))
    elif mode is not None:
        chain.append(ProgressBar(mode))
    return chain


def _hook(cb, name: str):
    return getattr(cb, name, None) or (lambda *args: None)


def train(run: Run, callbacks: Sequence) -> None:
    """The training loop: chunks of epochs until ``run.epochs`` are done or training stops.

    Every callback hook is optional (:mod:`mlds_jax.callback`).  After each chunk: each epoch
    goes through ``on_epoch_end`` and into the history, then ``on_chunk_end`` runs (not after a
    diverged epoch); the first exception calls ``on_interrupt`` and propagates.
    """
    for cb in callbacks:
        _hook(cb, "on_train_begin")(run)  # a resumed run's state and history replace the new
    try:
        while run.state.epoch < run.epochs and run.history.stop_reason == "completed":
            history, e = run.history, run.state.epoch
            dues = [d for cb in callbacks if (d := _hook(cb, "epochs_until_due")(e)) is not None]
            run.state, chunk = run.trainer.run(run.state, run.data, min([run.epochs - e, *dues]))
            stop = False
            for i, logs in enumerate(chunk.logs):
                for cb in callbacks:
                    stop |= _hook(cb, "on_epoch_end")(e + i, logs, run) is True
                history.record(logs)
            if run.state.best_epoch is not None:
                history.best_epoch = run.state.best_epoch
            if chunk.status == "early_stopping":
                history.stop_reason = "early_stopping"
            elif chunk.status == "diverged":
                history.stop_reason = "diverged"
                scale = input_scale(np.asarray(run.data.arrays.X)[: run.data.n])  # only now
                warnings.warn(
                    f"training diverged in epoch {run.state.epoch + 1}: non-finite loss or "
                    f"parameters; returning the parameters after epoch {run.state.epoch} (the "
                    "last finite ones). " + divergence_cause(scale),
                    TrainingDivergedWarning,
                    stacklevel=3,
                )
                break
            for cb in callbacks:
                stop |= _hook(cb, "on_chunk_end")(run) is True
            if stop and history.stop_reason == "completed":
                history.stop_reason = "callback"
    except BaseException as error:
        for cb in callbacks:
            _hook(cb, "on_interrupt")(run, error)
        raise
    for cb in callbacks:
        _hook(cb, "on_train_end")(run)
