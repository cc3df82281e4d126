"""When training stops: early stopping's settings, and divergence (what it means, its warning)."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["EarlyStopping", "TrainingDivergedWarning", "divergence_cause", "input_scale"]


class TrainingDivergedWarning(RuntimeWarning):
    """Training produced a non-finite loss or parameters and was stopped."""


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the parameters of the best epoch are returned.  The rule runs on the
    device after every epoch (inside the compiled chunk): improved means value < best −
    min_delta, in the metrics' dtype.
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
