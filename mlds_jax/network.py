r"""The checked forward API: ``forward``, ``forward_cache``, ``loss``, ``predict``.

Each function validates its inputs once (:mod:`mlds_jax.validation`), then calls the
compiled core (:mod:`mlds_jax.core`).  The layer convention, equation (F1):

.. math:: Z^{(l)} = A^{(l-1)} W^{(l)} + b^{(l)},\qquad A^{(l)} = f_l(Z^{(l)}),\qquad A^{(0)} = X

``Dense``, ``Params``, ``init_mlp`` and friends are re-exported here for code written against
earlier versions; they live in :mod:`mlds_jax.layers` and :mod:`mlds_jax.initialization`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.core import ForwardCache, dense_forward
from mlds_jax.initialization import INITIALIZERS, init_mlp
from mlds_jax.layers import Dense, Params, layer_sizes

__all__ = [
    "INITIALIZERS",
    "Dense",
    "ForwardCache",
    "Params",
    "check_loss_finite",
    "dense_forward",
    "forward",
    "forward_cache",
    "init_mlp",
    "layer_sizes",
    "loss",
    "predict",
    "prepare_targets",
]

_forward_jit = jax.jit(core.forward)
_forward_cache_jit = jax.jit(core.forward_cache)
_loss_jit = jax.jit(core.batch_loss, static_argnums=3)


def _checked_X(params: Params, X: ArrayLike) -> Array:
    validation.check_params(params)
    validation.check_params_finite(params)
    return validation.check_X(params, X)


def forward_cache(params: Params, X: ArrayLike) -> ForwardCache:
    """Forward pass that keeps every layer's Z and A (F1), for teaching.

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in); cast to the parameters' dtype.

    Returns:
      :class:`ForwardCache` with ``Zs[l-1] = Z^(l)`` and ``As[l] = A^(l)``, ``As[0] = X``.
    """
    return _forward_cache_jit(params, _checked_X(params, X))


def forward(params: Params, X: ArrayLike) -> Array:
    """Ŷ = f_L(... f_1(X W_1 + b_1) ... W_L + b_L): the network's output (F1).

    Pure and jit-able; shapes are checked in Python before tracing.

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in); cast to the parameters' dtype.

    Returns:
      Ŷ, (N, n_out).

    Example:
      >>> Y_hat = mj.forward(params, jnp.ones((3, 5)))   # (3, 3)
    """
    return _forward_jit(params, _checked_X(params, X))


def prepare_targets(params: Params, Y: ArrayLike, loss: str) -> Array:
    """Validate targets for ``loss`` and return them as the core functions take them.

    Integer labels (N,) for "cross_entropy" become one-hot rows; (N,) targets of a
    single-output loss become (N, 1); everything is cast to the parameters' dtype.  Use it
    to feed :mod:`mlds_jax.core` or ``TrainStep.jitted``, which skip all checks.

    Returns:
      Y, (N, n_out).
    """
    validation.check_params(params)
    validation.check_loss_output(params, loss)
    Y = validation.numeric_array(Y, "Y")
    n_rows = Y.shape[0] if Y.ndim else 0  # a 0-d Y is rejected by the shape check
    return validation.prepare_targets(
        Y,
        loss,
        params[-1].W.shape[1],
        n_rows,
        params[0].W.dtype,
        output_activation=params[-1].activation,
    )


def predict(params: Params, X: ArrayLike) -> Array:
    """Class labels for classifier outputs, values otherwise.

    softmax output → argmax labels (N,); a single sigmoid output → 0/1 labels (N,), several
    sigmoid outputs → 0/1 per output (N, K); any other output → Ŷ (N, K).
    """
    Y_hat = forward(params, X)
    out = params[-1].activation
    if out == "softmax":
        return jnp.argmax(Y_hat, axis=-1)
    if out == "sigmoid":
        labels = (Y_hat > 0.5).astype(jnp.int32)
        return labels[:, 0] if labels.shape[1] == 1 else labels
    return Y_hat


def loss(params: Params, X: ArrayLike, Y: ArrayLike, loss: str) -> Array:
    """The average loss L = (1/N) Σ_n ℓ_n of the network on (X, Y), equation (L1).

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in).
      Y: targets: (N, n_out) or (N,) for one output; for "cross_entropy" integer labels (N,)
        in [0, K) or one-hot / probability rows (N, K).
      loss: one of ``mlds_jax.losses.LOSSES``.

    Returns:
      Scalar loss, in the parameters' dtype.  A non-finite value from finite inputs (the
      forward pass overflowed the dtype) raises ValueError instead of returning NaN or inf.
    """
    X, Y = validation.check_batch(params, X, Y, loss)
    value = _loss_jit(params, X, Y, loss)
    check_loss_finite(value, params, X)
    return value


def check_loss_finite(value, params: Params, X: Array) -> None:
    """A non-finite loss from finite, representable inputs means the forward pass overflowed
    (e.g. Z = X W past 3.4e38 in float32): a clear error instead of a NaN or inf."""
    if not validation.is_concrete(value) or bool(jnp.isfinite(value)):
        return
    Zs = _forward_cache_jit(params, X).Zs
    peaks = ", ".join(f"{float(jnp.max(jnp.abs(Z))):.3g}" for Z in Zs)
    raise ValueError(
        f"the loss is {float(value)} although params, X and Y are finite: the computation "
        f"overflowed {params[0].W.dtype} (max |Z| per layer: {peaks}); rescale X or use "
        f"float64 parameters"
    )
