"""Minibatches on the host: row buckets, the batch plan, the per-epoch shuffles, sample weights.

Everything here is NumPy work on the host, done once per ``fit`` call (the plan, the
buckets) or once per epoch (a shuffle: ~0.5 ms for 60000 rows).  The compiled epoch then
gathers the planned rows on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlds_jax import parallel, validation

__all__ = [
    "BatchPlan",
    "as_key",
    "batch_plan",
    "bucketed_on_host",
    "check_sample_weight",
    "checked_bucketed",
    "chunk_epochs",
    "epoch_indices",
    "key_words",
    "row_bucket",
    "shuffle_order",
    "train_bucket",
]


class BatchPlan(NamedTuple):
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


def batch_plan(n: int, batch_size: int, multiple: int, dtype, rows: int | None = None) -> BatchPlan:
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
    return BatchPlan(pos, weights, counts.astype(dtype))


def as_key(key):
    """A ``jax.random`` key from what the high-level API accepts: a key (new-style or legacy
    uint32), an int seed (as ``flax.nnx.Rngs(0)`` takes one), or None (seed 0).

    An int seed in [0, 2³²) under the default threefry PRNG is built on the host, bit-equal
    to ``jax.random.key(seed)`` but without compiling the seeding program (a first-call cost).
    """
    if key is None:
        key = 0
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = int(key)
        threefry = getattr(jax.config, "jax_default_prng_impl", None) == "threefry2x32"
        if 0 <= seed < 2**32 and threefry:
            words = jax.device_put(np.array([0, seed], np.uint32))
            return jax.random.wrap_key_data(words, impl="threefry2x32")
        return jax.random.key(seed)
    return validation.check_key(key)


def key_words(key) -> tuple[int, ...]:
    """The key's bits as Python ints (new-style or legacy uint32 keys alike)."""
    data = key if jnp.issubdtype(key.dtype, jnp.unsignedinteger) else jax.random.key_data(key)
    return tuple(int(w) for w in np.asarray(data).ravel())


def _permutation(words: tuple[int, ...], epoch: int, n: int) -> np.ndarray:
    # Drawn on the host, seeded by (key, epoch) through NumPy's SeedSequence: no device work
    # and nothing built per epoch up front, so memory and set-up do not grow with ``epochs``.
    # NumPy's PCG64 permutes 60000 rows in ~0.5 ms (jax.random.permutation: ~24 ms, 2 cores).
    return np.random.default_rng([*words, int(epoch)]).permutation(n)


def shuffle_order(key: ArrayLike, n: int, epoch: int) -> np.ndarray:
    """The row order ``fit(..., key=key)`` uses in epoch ``epoch`` (0-based) for ``n`` rows.

    Minibatch i of that epoch is ``order[i*batch_size:(i+1)*batch_size]`` (the last one may be
    shorter).  Reproducible: the same key gives the same orders, whatever the epoch count.
    """
    key = validation.check_key(key)
    n = validation.positive_int(n, "n")
    epoch = validation.positive_int(epoch, "epoch", minimum=0)
    return _permutation(key_words(key), epoch, n)


def epoch_indices(
    plan: BatchPlan, words: tuple[int, ...], epoch: int, shuffle: bool = True
) -> np.ndarray:
    """The epoch's shuffled row indices laid out as ``plan`` (padding gathers row 0).

    The permutation is over the real rows only: rows added to reach a row bucket (see
    :func:`train_bucket`) are never gathered as real rows.  ``shuffle=False``: the identity.
    """
    n = int(plan.counts.sum())
    perm = _permutation(words, epoch, n) if shuffle else np.arange(n)
    out = np.zeros(plan.pos.shape, np.int32)
    out[plan.pos >= 0] = perm  # the real slots hold positions 0..n-1 in row-major order
    return out


def check_sample_weight(sample_weight, n: int, rows: int, dtype) -> np.ndarray:
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


#: Row counts are padded up to the next bucket when X holds at most this many bytes; larger
#: data sets (a 1 s epoch) keep their exact size, where a compile costs less than a host copy.
ROW_BUCKET_MAX_BYTES = 64 * 2**20


def row_bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 2^(⌊log2 n⌋ − 3): at most 12.5% padding rows, and
    data sets that differ by a few rows (the folds of a cross-validation) share one shape."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def train_bucket(n: int) -> int:
    """The training rows' bucket: ``n`` rounded up to a power of two.  The padding rows are
    never gathered (they cost memory, not compute: at most as much again), and data sets
    within a factor of two share one compiled epoch, e.g. the 4/5 of a 5-fold
    cross-validation's folds and the refit on all rows, when both fall in one octave."""
    return 1 << max(0, (n - 1).bit_length())


def bucketed_on_host(X, Y, bucket: Callable[[int], int] = row_bucket):
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
    if x.dtype == object or x.nbytes > ROW_BUCKET_MAX_BYTES:
        return X, Y, None
    rows = bucket(n)
    if rows == n:
        return X, Y, n

    def pad(a):
        return np.concatenate([a, np.repeat(a[:1], rows - n, axis=0)])

    return pad(x), pad(y), n


def checked_bucketed(params, X, Y, loss: str, bucket: Callable[[int], int] = row_bucket,
                     **names):  # fmt: skip
    """(X, Y, n) validated and padded to the row bucket.  The checks run on the padded
    arrays (compiled once per bucket); if they fail, they run again on the user's own arrays,
    so the error names the user's shapes, counts and indices, not the padded ones."""
    Xb, Yb, n = bucketed_on_host(X, Y, bucket)
    try:
        Xc, Yc = validation.check_data(params, Xb, Yb, loss, **names)
    except (ValueError, TypeError) as exc:
        failed = exc
    else:
        return Xc, Yc, (Xc.shape[0] if n is None else n)
    # outside the handler, so that the user's error is not chained to the padded one's
    validation.check_data(params, X, Y, loss, **names)  # the error as the user sees it
    raise failed


#: Epoch row indices per chunk (K·n_batches·B' int32 entries) are kept under this many.
CHUNK_INDEX_BUDGET = 2**18
#: The most epochs in one compiled call.
CHUNK_MAX_EPOCHS = 32


def chunk_epochs(index_entries: int) -> int:
    """K, the epochs one compiled call can run: a power of two in [1, 32] such that the
    chunk's row indices (K × ``index_entries``) stay under ``CHUNK_INDEX_BUDGET`` entries
    (1 MiB).  It depends on the batch plan's shape only, so it never triggers a compile of
    its own."""
    k = max(1, CHUNK_INDEX_BUDGET // max(1, index_entries))
    return min(CHUNK_MAX_EPOCHS, 1 << (k.bit_length() - 1))
