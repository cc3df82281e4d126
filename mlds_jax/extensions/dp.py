r"""DP-SGD with ghost clipping on the hand-derived backward, and its privacy accounting.

One DP-SGD step (Abadi et al., 2016) with Opacus's clip factor, equations (D1)-(D3) of
``docs/derivations.md`` (section "DP-SGD"):

* (D1) κ_n = min(1, C / (‖∇ℓ_n‖ + 10⁻⁶)), with ‖∇ℓ_n‖ from (P3), nothing materialised;
* (D2) Σ_n κ_n ∇ℓ_n is the gradient of Σ_n κ_n ℓ_n: one more backward pass with row
  weights κ_n (ghost clipping), so no per-example gradient is ever formed;
* (D3) g̃ = (Σ_n κ_n ∇ℓ_n + σC ξ) / B, ξ ~ N(0, I), B the number of real rows.

σ = 0 with C = ∞ gives κ_n = 1 and no noise: exactly the plain mean gradient (the same
backward with row weights 1/N, bit for bit).  Row weights act as a padding mask only: rows with
w_n > 0 are real and each counts once (DP needs every example's contribution bounded by C,
which arbitrary weights would break).

:class:`DPSGD` is a gradient source for training: ``mj.make_train_step(optimizer, loss,
dp=DPSGD(C, σ))`` (the noise key is explicit: ``step(params, opt_state, X, Y, key=k)``) and
``mj.fit(..., dp=DPSGD(C, σ))``, where its :class:`PrivacyAccountant` callback records the ε
spent after every epoch.  :func:`dp_epsilon` reports the privacy spent with Google's
``dp-accounting`` package (optional extra ``dp``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
from typing import Any, cast

import jax
import jax.numpy as jnp
from jax import Array

from mlds_jax import core, validation
from mlds_jax.callback import Callback
from mlds_jax.extensions.per_example import ghost_sq_norms, per_example_deltas, row_mask
from mlds_jax.layers import Dense, Params

__all__ = [
    "ACCOUNTANTS",
    "DPSGD",
    "PrivacyAccountant",
    "clip_factors",
    "dp_epsilon",
    "dp_value_and_grads",
]

#: Opacus's guard against division by a zero norm, in κ_n = min(1, C / (‖∇ℓ_n‖ + ε)).
CLIP_EPS = 1e-6
#: The privacy accountants :func:`dp_epsilon` offers (both from ``dp-accounting``).
ACCOUNTANTS = ("rdp", "pld")


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """DP-SGD settings: clip every example's gradient to norm ≤ C, add N(0, σ²C²) noise.

    Attributes:
      l2_clip: C > 0; ``math.inf`` turns clipping off (then σ must be 0).
      noise_multiplier: σ ≥ 0, finite: the noise std relative to C.
      delta: δ in (0, 1) at which :class:`PrivacyAccountant` reports ε during ``fit``;
        default 1/N.  Not part of the computation (equality and hash ignore it).

    Frozen and hashable, so it can be a static argument of ``jax.jit``.  A gradient source
    for training (:class:`mlds_jax.training.GradientSource`).
    """

    l2_clip: float
    noise_multiplier: float
    delta: float | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.delta is not None:
            d = validation.positive_float(self.delta, "DPSGD.delta")
            if d >= 1:
                raise ValueError(f"DPSGD.delta must lie in (0, 1), got {self.delta}")
            object.__setattr__(self, "delta", d)
        for name in ("l2_clip", "noise_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"DPSGD.{name} must be a real number, got {v!r}")
            object.__setattr__(self, name, float(v))
        C, sigma = self.l2_clip, self.noise_multiplier
        if math.isnan(C) or C <= 0:
            raise ValueError(f"DPSGD.l2_clip must be > 0 (math.inf for no clipping), got {C}")
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"DPSGD.noise_multiplier must be finite and >= 0, got {sigma}")
        if sigma > 0 and math.isinf(C):
            raise ValueError(
                "DPSGD with noise_multiplier > 0 needs a finite l2_clip: the noise "
                "std is noise_multiplier * l2_clip"
            )

    def value_and_grads(self, params, X, Y, loss: str, key, row_weights=None):
        """(L, g̃) of one step: :func:`dp_value_and_grads` with these settings."""
        return dp_value_and_grads(params, X, Y, loss, self, key, row_weights)

    def training_callbacks(self) -> list:
        """What ``fit(dp=self)`` adds to its callbacks: the :class:`PrivacyAccountant`."""
        return [PrivacyAccountant(self)]


def clip_factors(norms: Array, l2_clip: float) -> Array:
    r"""κ_n = min(1, C / (‖∇ℓ_n‖ + 10⁻⁶)), Opacus's clip factor, equation (D1); (N,).

    ‖κ_n ∇ℓ_n‖ ≤ C for every n; C = ∞ gives κ_n = 1.
    """
    return jnp.minimum(1.0, l2_clip / (norms + CLIP_EPS)).astype(norms.dtype)  # (D1)


def dp_value_and_grads(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    dp: DPSGD,
    key: Array,
    row_weights: Array | None = None,
) -> tuple[Array, Params]:
    r"""The loss and the DP-SGD gradient g̃, equations (D1)-(D3), by ghost clipping.

    .. math:: \tilde g = \frac{1}{B}\Big(\sum_n \kappa_n \nabla\ell_n + \sigma C\,\xi\Big),
              \qquad \kappa_n = \min\Big(1, \frac{C}{\|\nabla\ell_n\| + 10^{-6}}\Big)

    Pass 1: the per-example δ̂ (P1) and norms (P3).  Pass 2: the core's backward with row
    weights κ_n m_n / B (D2), whose ∂L/∂W is Σ_n κ_n ∇ℓ_n / B; then the noise σC ξ / B
    (D3), one independent draw per parameter entry.  The backward acts row by row, so pass 2's
    δ^(l) is (κ m / B) ⊙ δ̂^(l) of pass 1: only its ∂L/∂W products (B2), (B3) are computed.

    Pure and unchecked (prepared inputs, as :mod:`mlds_jax.core`): jit it with ``loss`` and
    ``dp`` static.

    Args:
      params: L layers.
      X: inputs, (N, n_in).  Y: prepared targets, (N, K).
      loss: loss name.
      dp: :class:`DPSGD` settings.
      key: a ``jax.random`` key for the noise.
      row_weights: optional (N,); rows with w_n > 0 are real (each counts once), zero rows are
        padding.  B = the number of real rows (N when None).

    Returns:
      (L, g̃): L = (1/B) Σ_n m_n ℓ_n, the plain (unclipped, noise-free) mean loss over the real
      rows, for monitoring only (it is not privatised); g̃ like params.
    """
    n = X.shape[0]
    cache = core.forward_cache(params, X)
    mask = row_mask(row_weights, n, X.dtype)
    B = jnp.asarray(n, X.dtype) if row_weights is None else jnp.sum(mask)
    # the plain loss, averaged over the real rows (weights m/B; None: the core's 1/N)
    value = core.loss_value(cache, Y, loss, None if row_weights is None else mask / B)
    if math.isinf(dp.l2_clip):  # κ_n = min(1, ∞) = 1: pass 1 is not needed
        grads = core.backward(params, cache, Y, loss, row_weights=mask / B).grads  # (D2)
    else:
        deltas = per_example_deltas(params, cache, Y, loss, mask)  # (P1)
        sq = jnp.sum(ghost_sq_norms(cache.As[:-1], deltas), axis=1)  # (P3)
        c = (clip_factors(jnp.sqrt(sq), dp.l2_clip) * mask / B)[:, None]  # κ m / B   (D1)
        layers = [
            Dense(*core.dense_backward(c * d, A, layer.W)[:2], activation=layer.activation)
            for layer, A, d in zip(params, cache.As[:-1], deltas, strict=True)
        ]  # (D2): pass 2's δ^(l) = (κ m / B) ⊙ δ̂^(l), its ∂L/∂W^(l) and ∂L/∂b^(l)
        grads = cast(Params, layers if isinstance(params, list) else tuple(layers))
    if dp.noise_multiplier == 0:
        return value, grads
    leaves, treedef = jax.tree_util.tree_flatten(grads)
    keys = jax.random.split(key, len(leaves))
    std = dp.noise_multiplier * dp.l2_clip
    noisy = [
        g + (std / B) * jax.random.normal(k, g.shape, g.dtype)  # (D3)
        for g, k in zip(leaves, keys, strict=True)
    ]
    return value, jax.tree_util.tree_unflatten(treedef, noisy)


def dp_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "rdp",
) -> float:
    r"""ε spent by ``steps`` DP-SGD steps at a given δ: the Poisson-subsampled Gaussian mechanism.

    Uses Google's ``dp-accounting`` package (``pip install dp-accounting``, or ``pip install -e
    '.[dp]'`` in the clone): by default its Rényi-DP accountant
    (``dp_accounting.rdp.RdpAccountant``, as Opacus and TF Privacy report), or with
    ``accountant="pld"`` its privacy-loss-distribution accountant
    (``dp_accounting.pld.PLDAccountant``), which is tighter.  Each step is a
    ``PoissonSampledDpEvent(sample_rate, GaussianDpEvent(noise_multiplier))``.

    Args:
      noise_multiplier: σ > 0.
      sample_rate: q = batch size / data set size, in (0, 1].
      steps: number of steps, ≥ 1.
      delta: δ in (0, 1).
      accountant: "rdp" or "pld".

    Returns:
      ε (a float; ``inf`` if the accountant finds no finite bound).
    """
    sigma = validation.positive_float(noise_multiplier, "noise_multiplier")
    q = validation.positive_float(sample_rate, "sample_rate")
    if q > 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    steps = validation.positive_int(steps, "steps")
    d = validation.positive_float(delta, "delta")
    if d >= 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {list(ACCOUNTANTS)}, got {accountant!r}")
    try:
        import dp_accounting
    except ImportError as exc:
        raise ImportError(
            "dp_epsilon needs Google's dp-accounting package: "
            "pip install dp-accounting (from a clone of mlds_jax: pip install -e '.[dp]')"
        ) from exc
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    if accountant == "rdp":
        acct = dp_accounting.rdp.RdpAccountant()
    else:
        acct = dp_accounting.pld.PLDAccountant()
    acct.compose(event, steps)
    return float(acct.get_epsilon(d))


class PrivacyAccountant(Callback):
    """A training callback: ``history["epsilon"]``, the ε spent after each epoch of DP-SGD.

    RDP accountant (:func:`dp_epsilon`) with sample rate q = min(1, batch_size / N), the steps
    so far (epochs × minibatches per epoch) and δ = ``dp.delta`` (default 1/N).  Records
    nothing when σ = 0 (no privacy guarantee) or when the optional ``dp-accounting`` package
    is not installed.
    """

    def __init__(self, dp: DPSGD):
        self.dp = dp
        self._args: tuple | None = None

    def on_train_begin(self, run: Any) -> None:
        n = run.data.n
        if self.dp.noise_multiplier > 0 and importlib.util.find_spec("dp_accounting"):
            delta = 1.0 / n if self.dp.delta is None else self.dp.delta
            q = min(1.0, run.trainer.batch_size / n)
            self._args = (q, run.data.steps_per_epoch, delta)

    def on_epoch_end(self, epoch: int, logs: dict, run: Any) -> bool | None:
        if self._args is not None:
            q, steps, delta = self._args
            logs["epsilon"] = dp_epsilon(self.dp.noise_multiplier, q, (epoch + 1) * steps, delta)
        return None
