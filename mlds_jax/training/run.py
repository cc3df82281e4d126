"""A ``fit`` call in progress: its :class:`Run` (what callbacks see) and its :class:`History`."""

from __future__ import annotations

import dataclasses

from mlds_jax.training.trainer import TrainData, Trainer, TrainState

__all__ = ["History", "Run"]


class History(dict):
    """Per-epoch lists ("loss", "accuracy", "val_loss", "val_accuracy", "r2", "epsilon",
    "time", ...), entries added by callbacks ("sharpness"/"sharpness_epoch": one per k
    epochs), plus ``stop_reason`` ("completed", "early_stopping", "diverged" or "callback")
    and ``best_epoch`` (0-based, with early stopping)."""

    stop_reason: str = "completed"
    best_epoch: int | None = None

    def record(self, logs: dict) -> None:
        """Append one epoch's entries."""
        for k, v in logs.items():
            self.setdefault(k, []).append(v)

    def lengths(self) -> dict[str, int]:
        """How many entries each list holds (a consistent snapshot for checkpoints)."""
        return {k: len(v) for k, v in self.items()}


@dataclasses.dataclass
class Run:
    """One training run: what :func:`mlds_jax.fit`'s callbacks see and may change.

    Attributes:
      trainer: the :class:`~mlds_jax.training.trainer.Trainer` (loss, optimizer, batch size).
      data: the prepared :class:`~mlds_jax.training.trainer.TrainData` (``n``, ``key``, ...).
      state: the current :class:`~mlds_jax.training.trainer.TrainState`.
      history: the :class:`History` so far.
      epochs: the epochs asked for (a total: a resumed run counts the earlier ones).
    """

    trainer: Trainer
    data: TrainData
    state: TrainState
    history: History
    epochs: int
