"""The held-out validation split of ``fit(..., validation_split=f)``: stratified, deterministic."""

from __future__ import annotations

import numbers

import numpy as np
from jax.typing import ArrayLike

from mlds_jax import validation
from mlds_jax.losses import get_loss
from mlds_jax.training.batching import key_words

__all__ = ["split_off_validation", "validation_split_indices"]

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
    rng = np.random.default_rng([*key_words(key), *_SPLIT_STREAM])
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


def split_off_validation(params, X, Y, loss, sample_weight, fraction, key):
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
