"""The training loop's one extension point: callbacks.

:func:`mlds_jax.fit` runs epochs in compiled chunks (up to 32 epochs per device call) and, after
each chunk, hands every finished epoch to its callbacks in order.  Progress bars, the verbose
log, resumable checkpoints, DP-SGD's privacy accounting and sharpness tracking are all
callbacks; so is anything a user writes.  This module holds only the protocol, so that the
training package and the extensions (which never import training) can both implement it.

The protocol (every method optional; subclass :class:`Callback` for the no-op defaults):

``on_train_begin(run)``
  Once, before the first chunk.  May replace ``run.state`` and ``run.history`` (resuming).
``epochs_until_due(epoch) -> int | None``
  Asked before every chunk with ``epoch`` = the epochs done so far: the number of epochs that
  may run before this callback must see the training state (``1``: after every epoch, as a
  callback that may stop training needs; ``k - epoch % k``: every k-th epoch).  ``None``
  (the default) puts no bound: the callback still sees every epoch, after its chunk.
``on_epoch_end(epoch, logs, run) -> bool | None``
  For every finished epoch of a chunk, 0-based ``epoch``, in order, before the epoch is
  recorded: ``logs`` is that epoch's dict of floats (the metrics and "time"); entries a
  callback adds to it (``logs["epsilon"] = ...``) go into ``run.history`` with it.
  Returning ``True`` asks training to stop after this chunk (``history.stop_reason ==
  "callback"``).
``on_chunk_end(run) -> bool | None``
  After the chunk's epochs are recorded in ``run.history``: ``run.state`` is the state after
  ``run.state.epoch`` epochs, consistent with the history.  The place for work that needs
  the parameters of a particular epoch (λ_max every k epochs, a checkpoint): with
  :meth:`epochs_until_due` the chunk ends exactly there.  Not called after a diverged
  epoch.  Returning ``True`` asks training to stop.
``on_train_end(run)``
  Once, after the last chunk, when training ends normally (completed, early stopping,
  divergence or a callback's stop).
``on_interrupt(run, error)``
  Instead of ``on_train_end`` when an exception (a KeyboardInterrupt, an error in another
  callback) ends training; ``run.state`` is the last completed epoch's.  The exception then
  propagates.

``run`` is the :class:`mlds_jax.training.Run` of the call: ``run.state`` (a
:class:`mlds_jax.training.TrainState`: params, opt_state, epoch, early-stopping state),
``run.history``, ``run.epochs`` (the epochs asked for), ``run.trainer`` (loss, optimizer,
batch size) and ``run.data`` (the prepared data: ``n`` training rows, ``key``, ...).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Base class of training callbacks: every hook is a no-op; override the ones you need."""

    def on_train_begin(self, run: Any) -> None:
        """Before the first chunk; may replace ``run.state`` and ``run.history``."""

    def epochs_until_due(self, epoch: int) -> int | None:
        """Epochs that may run (from ``epoch`` done) before this callback must see the state."""
        return None

    def on_epoch_end(self, epoch: int, logs: dict, run: Any) -> bool | None:
        """After each finished epoch (0-based ``epoch``); add entries to ``logs``; True stops."""
        return None

    def on_chunk_end(self, run: Any) -> bool | None:
        """After each chunk, its epochs recorded; ``run.state`` is their end; True stops."""
        return None

    def on_train_end(self, run: Any) -> None:
        """After the last chunk of a run that ended normally."""

    def on_interrupt(self, run: Any, error: BaseException) -> None:
        """When an exception ends training (then it propagates)."""
