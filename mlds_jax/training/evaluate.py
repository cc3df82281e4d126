"""``evaluate(params, X, Y)``: the loss and a score (accuracy or R²) of a network on data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.layers import Params
from mlds_jax.losses import get_loss
from mlds_jax.network import check_loss_finite
from mlds_jax.training.step import batch_metrics, default_loss

__all__ = ["evaluate"]


def _eval_core(params, X, Y, loss: str) -> dict:
    cache = core.forward_cache(params, X)
    value = core.loss_value(cache, Y, loss)
    metrics = batch_metrics(loss, value, cache.As[-1], Y)
    if get_loss(loss).targets == "real":
        resid = jnp.sum((cache.As[-1] - Y) ** 2)
        total = jnp.sum((Y - jnp.mean(Y, axis=0, keepdims=True)) ** 2)
        # constant targets (one row, say) have no variance to explain: as scikit-learn's
        # r2_score, 1 for a perfect fit and 0 otherwise instead of -inf or -1e300
        r2 = 1 - resid / jnp.where(total > 0, total, jnp.ones_like(total))
        metrics["r2"] = jnp.where(total > 0, r2, jnp.where(resid == 0, 1.0, 0.0).astype(Y.dtype))
    return metrics


_eval_jit = jax.jit(_eval_core, static_argnums=3)


def evaluate(params: Params, X: ArrayLike, Y: ArrayLike, loss: str | None = None) -> dict:
    """Loss and a score of the network on (X, Y).

    Args:
      params: tuple of :class:`Dense`.
      X: (N, n_in).  Y: targets as for :func:`mlds_jax.loss`.
      loss: loss name; default from the output activation (softmax → cross_entropy,
        sigmoid → binary_cross_entropy, otherwise mse).

    Returns:
      ``{"loss": float, "accuracy": float}`` for classification losses (for several sigmoid
      labels: exact-match accuracy, as scikit-learn's ``score``, plus "label_accuracy", the
      fraction of right labels),
      ``{"loss": float, "r2": float}`` (coefficient of determination) for regression ones;
      for targets without variance (one row, say) r2 is 1 for a perfect fit and 0 otherwise,
      as scikit-learn's ``r2_score``.  An overflowed loss raises ValueError, as in
      :func:`mlds_jax.loss`.
    """
    validation.reject_tracers("evaluate", params, X, Y)
    validation.check_params(params)
    loss = default_loss(params) if loss is None else loss
    validation.check_params_finite(params)
    validation.check_loss_output(params, loss)
    X, Y = validation.check_data(params, X, Y, loss)
    metrics = _eval_jit(params, X, Y, loss)
    check_loss_finite(metrics["loss"], params, X)
    return {k: float(v) for k, v in metrics.items()}
