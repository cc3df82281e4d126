"""Sharpness tracking during training: λ_max of the loss Hessian every k epochs, as a callback.

``mj.fit(..., callbacks=[mj.SharpnessTracker(every=k)])`` records after every k-th epoch the
top eigenvalue of the Hessian of the (unpenalised) training loss, by Lanczos (H11), in
``history["sharpness"]`` and the 1-based epoch in ``history["sharpness_epoch"]``.  Compare it
with 2/η: gradient descent with step η is stable on a quadratic only while λ_max < 2/η (G3),
and full-batch training tends to hover at that "edge of stability" (Cohen et al., 2021).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlds_jax import validation
from mlds_jax.callback import Callback
from mlds_jax.extensions.lanczos import sharpness_core

__all__ = ["SharpnessTracker"]

#: Without ``data``, λ_max is taken on the first this-many training rows.
DEFAULT_ROWS = 1024

#: λ_max by Lanczos (H11), one compiled program per network shape and loss.
_sharpness = jax.jit(sharpness_core, static_argnames=("loss", "num_iters"))


class SharpnessTracker(Callback):
    """Record λ_max of the loss Hessian after every ``every``-th epoch (a training callback).

    Args:
      every: k ≥ 1.
      data: optional (X_s, Y_s) on which the Hessian is taken, validated once at the start;
        default the first min(N, 1024) training rows.

    The Lanczos start vector of epoch e (0-based) comes from ``fold_in(k2, e)``, k2 the
    second half of ``jax.random.split(key)`` of the fit's key: reproducible with the run.
    The chunk of epochs ends at each k-th epoch (:meth:`epochs_until_due`), so the λ_max is
    that epoch's exactly.
    """

    def __init__(self, every: int = 1, data: tuple[ArrayLike, ArrayLike] | None = None):
        self.every = validation.positive_int(every, "every")
        if data is not None and (not isinstance(data, (tuple, list)) or len(data) != 2):
            raise TypeError("data must be a tuple (X_s, Y_s)")
        self.data = data
        self._args: tuple | None = None

    def on_train_begin(self, run: Any) -> None:
        params, loss = run.state.params, run.trainer.loss
        if self.data is None:
            rows = min(run.data.n, DEFAULT_ROWS)
            X, Y = run.data.arrays.X[:rows], run.data.arrays.Y[:rows]
        else:
            X, Y = validation.check_data(
                params, *self.data, loss, x_name="sharpness X", y_name="sharpness Y"
            )
        key = run.data.key
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        self._args = (X, Y, loss, jax.random.split(key)[1])

    def epochs_until_due(self, epoch: int) -> int | None:
        return self.every - epoch % self.every

    def on_chunk_end(self, run: Any) -> bool | None:
        epoch = run.state.epoch
        if epoch % self.every or self._args is None:
            return None
        X, Y, loss, key = self._args
        lam = _sharpness(run.state.params, X, Y, loss, jax.random.fold_in(key, epoch - 1))
        run.history.setdefault("sharpness", []).append(float(lam))
        run.history.setdefault("sharpness_epoch", []).append(epoch)
        return None
