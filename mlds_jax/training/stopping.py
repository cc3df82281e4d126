"""When training stops: early stopping's settings, and divergence (what it means, its warning)."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "MONITORS",
    "EarlyStopping",
    "TrainingDivergedWarning",
    "divergence_cause",
    "input_scale",
]


class TrainingDivergedWarning(RuntimeWarning):
    """Training produced a non-finite loss or parameters and was stopped."""


#: The metrics early stopping can monitor, and whether lower or higher is better.
MONITORS = {
    "loss": "min",
    "val_loss": "min",
    "accuracy": "max",
    "val_accuracy": "max",
    "label_accuracy": "max",
    "val_label_accuracy": "max",
    "r2": "max",
    "val_r2": "max",
}
#: What "improved" is measured against (see :class:`EarlyStopping`).
REFERENCES = ("last_improvement", "best")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Args:
      patience: epochs without improvement that end training (>= 1).
      min_delta: δ ≥ 0: an epoch improves when its value beats the reference by more than δ
        (lower for losses, higher for accuracy and r2).
      monitor: "val_loss" (default), "loss", "val_accuracy", "accuracy", "val_r2" or "r2".
      restore_best: return the parameters of the best epoch.
      reference: what an epoch is compared with.  "last_improvement" (Keras's rule, the
        default): the value of the last epoch that counted as an improvement, which is also
        the "best" one restored.  "best" (scikit-learn's ``tol``/``n_iter_no_change`` rule):
        the best value seen so far, updated by every better epoch even when it does not beat
        the reference by δ (so slow steady progress does not reset the count).

    The rule runs on the device after every epoch (inside the compiled chunk), in the
    metrics' dtype; its settings are data, so changing them compiles nothing.
    """

    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"
    restore_best: bool = True
    reference: str = "last_improvement"

    def __post_init__(self):
        if isinstance(self.patience, bool) or not isinstance(self.patience, int):
            raise ValueError(f"early stopping patience must be an int >= 1, got {self.patience!r}")
        if self.patience < 1:
            raise ValueError(f"early stopping patience must be an int >= 1, got {self.patience!r}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {list(MONITORS)}, got {self.monitor!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {list(REFERENCES)}, got {self.reference!r}")

    @property
    def sign(self) -> float:
        """+1 when lower is better (losses), −1 when higher is (accuracy, r2)."""
        return 1.0 if MONITORS[self.monitor] == "min" else -1.0


#: Inputs whose largest column standard deviation exceeds this are called "unscaled".
LARGE_INPUT_SCALE = 10.0


def input_scale(X) -> float | None:
    """The largest column standard deviation of X (host), or None if X is not an array."""
    try:
        x = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if x.ndim != 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        return None
    return float(np.max(np.std(x, axis=0), initial=0.0))


def divergence_cause(scale: float | None) -> str:
    """One sentence: the likely cause of a divergence, inputs' scale or the learning rate."""
    if scale is not None and scale > LARGE_INPUT_SCALE:
        return (
            f"Likely cause: the input scale (a feature has standard deviation "
            f"{scale:.3g}); standardise X to mean 0 and variance 1."
        )
    return "Likely cause: the learning rate is too large (the inputs are on a unit scale)."
