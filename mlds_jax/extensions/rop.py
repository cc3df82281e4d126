r"""Hessian- and GGN-vector products by hand: the R-operator, equations (H1)-(H7).

The hand-derived forward and backward passes of :mod:`mlds_jax.core` run a second time on
tangents; nothing here calls ``jax.jvp`` or ``jax.grad`` of the loss.

Symbols (batch-major, layers l = 1..L, A^(0) = X): Z^(l) = A^(l−1) W^(l) + b^(l),
A^(l) = f_l(Z^(l)); L = Σ_n w_n ℓ_n with row weights w (N,) (default 1/N); a direction
v = (V^(l), v_b^(l)) has the structure of params; Ż, Ȧ, δ̇ are the tangents of Z, A, δ along v.

Conventions:

* **Where the GGN is taken** is a fact of the loss (:meth:`mlds_jax.losses.Loss.ggn_at_logits`):
  for the two log-losses (sigmoid + binary cross-entropy, softmax + cross-entropy) the output
  activation belongs to the loss and the GGN is Jᵀ H_z J with J the Jacobian of the logits
  Z^(L) (H5).  For every other pair it is Jᵀ H_ŷ J with J the Jacobian of Ŷ = A^(L) and
  H_ŷ = c·I the loss's constant Hessian in ŷ (H6): the output activation's f'' is dropped, as
  BackPACK does.
* **Row weights** enter as w_n H_n per example, so the GGN and the Hessian are those of
  L = Σ_n w_n ℓ_n.
* Every activation's tangent and f'' term come from its registry entry
  (:class:`mlds_jax.activations.Activation` ``jvp`` and ``curvature``).

Each public function checks shapes and dtypes on the host, then calls a jitted, unchecked
``*_core`` function (also public) that checks the finiteness of its inputs beside the result.
"""

from __future__ import annotations

import functools
from typing import cast

import jax
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.extensions.checks import (
    call_checked,
    check_batch_deferred,
    check_direction,
    row_weights_or_mean,
)
from mlds_jax.layers import Dense, Params
from mlds_jax.losses import get_loss

__all__ = [
    "Tangents",
    "curvature_vp",
    "flat_operator",
    "forward_tangent",
    "ggn_vp",
    "ggn_vp_core",
    "hvp",
    "hvp_core",
    "output_delta_tangent",
    "tangent_backward",
]


class Tangents:
    """Ż^(l) and Ȧ^(l) of the forward tangent pass, read in the notes' numbering."""

    def __init__(self, Zdots: list[Array], Adots: list[Array]):
        self._Z, self._A = Zdots, Adots

    def Z(self, l: int) -> Array:  # noqa: N802 (the notes' symbol)
        """Ż^(l), l = 1..L."""
        return self._Z[l - 1]

    def A(self, l: int) -> Array:  # noqa: N802 (the notes' symbol)
        """Ȧ^(l), l = 1..L (Ȧ^(0) = 0 is never formed)."""
        return self._A[l - 1]


def forward_tangent(params: Params, cache: core.ForwardCache, v: Params) -> Tangents:
    """Ż^(l) = Ȧ^(l−1) W^(l) + A^(l−1) V^(l) + v_b^(l), Ȧ^(l) = J_f Ż^(l), Ȧ^(0) = 0 (H1)."""
    Zdots: list[Array] = []
    Adots: list[Array] = []
    for l, (layer, d) in enumerate(zip(params, v, strict=True), start=1):
        Zdot = cache.A(l - 1) @ d.W + d.b[None, :]  # A^(l−1) V^(l) + v_b^(l)
        if l > 1:
            Zdot = Zdot + Adots[-1] @ layer.W  # + Ȧ^(l−1) W^(l)   (H1)
        Zdots.append(Zdot)
        Adots.append(ACTIVATIONS[layer.activation].jvp(cache.Z(l), cache.A(l), Zdot))  # (H1)
    return Tangents(Zdots, Adots)


def output_delta_tangent(
    params: Params,
    cache: core.ForwardCache,
    t: Tangents,
    Y: Array,
    loss: str,
    w: Array,
    *,
    ggn: bool,
) -> Array:
    """δ̇^(L): w ⊙ H_z Ż = w ⊙ Ȧ at the logits (H5); J_fᵀ (c w ⊙ Ȧ) (+ the f'' term) at Ŷ (H6)."""
    L = len(params)
    spec, f = get_loss(loss), ACTIVATIONS[params[-1].activation]
    wc = w[:, None]
    if spec.ggn_at_logits(f.name):
        return wc * t.A(L)  # the logit Hessian is the activation's Jacobian: H_z ż = ȧ   (H5)
    if spec.output_hessian_scale is None:
        raise ValueError(f"loss {loss!r} after {f.name!r} has no output Hessian")
    c = spec.output_hessian_scale(cache.A(L).shape[1])
    out = f.backward(wc * (c * t.A(L)), cache.Z(L))  # J_fᵀ H_ŷ Ȧ   (H6)
    if not ggn and not f.zero_curvature:
        dA = spec.dA(cache.A(L), Y, w)  # ∂L/∂Ŷ = w ⊙ dℓ/dŷ
        out = out + f.curvature(cache.Z(L), cache.A(L), t.Z(L), dA)  # (H3), (H4)
    return out


def tangent_backward(
    params: Params,
    cache: core.ForwardCache,
    deltas: tuple[Array, ...] | None,
    v: Params,
    t: Tangents,
    delta_dot_L: Array,
) -> Params:
    """The backward pass run on tangents, l = L..1 (H2), (H3).

    With ``deltas`` (the primal δ^(l)) it is the Hessian's; with ``None`` the GGN's, which
    drops the f'' terms, δVᵀ and Ȧᵀδ (H7).
    """
    L = len(params)
    out: dict[int, Dense] = {}
    dd = delta_dot_L
    for l in range(L, 0, -1):
        layer, d = params[l - 1], v[l - 1]
        dW = cache.A(l - 1).T @ dd  # A^(l−1)ᵀ δ̇^(l)
        if deltas is not None and l > 1:
            dW = dW + t.A(l - 1).T @ deltas[l - 1]  # + Ȧ^(l−1)ᵀ δ^(l)   (H2)
        out[l] = Dense(W=dW, b=dd.sum(axis=0), activation=layer.activation)  # (H2)
        if l > 1:
            dA_dot = dd @ layer.W.T  # δ̇^(l) W^(l)ᵀ
            if deltas is not None:
                dA_dot = dA_dot + deltas[l - 1] @ d.W.T  # + δ^(l) V^(l)ᵀ   (H3)
            f = ACTIVATIONS[params[l - 2].activation]
            new = f.backward(dA_dot, cache.Z(l - 1))  # ⊙ f'(Z^(l−1))
            if deltas is not None and not f.zero_curvature:
                dA = deltas[l - 1] @ layer.W.T  # ∂L/∂A^(l−1)
                new = new + f.curvature(cache.Z(l - 1), cache.A(l - 1), t.Z(l - 1), dA)  # (H3)
            dd = new
    grads = [out[l] for l in range(1, L + 1)]
    return cast(Params, tuple(grads) if isinstance(params, tuple) else grads)


def curvature_vp(
    params: Params, cache: core.ForwardCache, Y: Array, loss: str, v: Params, w: Array, *, ggn: bool
) -> Params:
    """H v (``ggn=False``) or G v from a forward cache: (H1)-(H7)."""
    t = forward_tangent(params, cache, v)
    dd_L = output_delta_tangent(params, cache, t, Y, loss, w, ggn=ggn)
    deltas = None if ggn else core.backward(params, cache, Y, loss, row_weights=w).deltas
    return tangent_backward(params, cache, deltas, v, t, dd_L)


def _vp(params, X, Y, loss, v, row_weights, *, ggn: bool) -> Params:
    w = row_weights_or_mean(X, row_weights)
    return curvature_vp(params, core.forward_cache(params, X), Y, loss, v, w, ggn=ggn)


@functools.partial(jax.jit, static_argnames=("loss",))
def hvp_core(
    params: Params, X: Array, Y: Array, loss: str, v: Params, row_weights: Array | None = None
) -> Params:
    """H v by the R-operator (H1)-(H4), unchecked; inputs prepared as for :mod:`mlds_jax.core`."""
    return _vp(params, X, Y, loss, v, row_weights, ggn=False)


@functools.partial(jax.jit, static_argnames=("loss",))
def ggn_vp_core(
    params: Params, X: Array, Y: Array, loss: str, v: Params, row_weights: Array | None = None
) -> Params:
    """G v = Jᵀ H_out J v (H7), unchecked."""
    return _vp(params, X, Y, loss, v, row_weights, ggn=True)


def _checked_vp(core_fn, params, X, Y, loss, v, row_weights) -> Params:
    X0, Y0 = X, Y
    X, Y, w = check_batch_deferred(params, X, Y, loss, row_weights)
    check_direction(params, v, finite=False)

    def recheck():
        validation.check_batch(params, X0, Y0, loss)
        check_direction(params, v)

    return call_checked(
        core_fn,
        (params, X, Y),
        {"v": v, "row_weights": w},
        static={"loss": loss},
        also_finite=("v",),
        recheck=recheck,
    )


def hvp(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    v: Params,
    *,
    row_weights: ArrayLike | None = None,
) -> Params:
    r"""Hessian-vector product H v of the batch loss L = Σ_n w_n ℓ_n, by hand (R-operator).

    Forward tangent pass (H1): Ż^(l) = Ȧ^(l−1) W^(l) + A^(l−1) V^(l) + v_b^(l), Ȧ^(l) = f'(Z^(l))
    ⊙ Ż^(l); output tangent δ̇^(L) (H5), (H6) with the output activation's own second derivative
    (H3), (H4); backward tangent pass (H2), (H3):

    .. math::
       (Hv)_{W^{(l)}} = \dot A^{(l-1)T}\delta^{(l)} + A^{(l-1)T}\dot\delta^{(l)},\quad
       (Hv)_{b^{(l)}} = \textstyle\sum_n \dot\delta^{(l)}_n,\\
       \dot\delta^{(l-1)} = (\dot\delta^{(l)}W^{(l)T} + \delta^{(l)}V^{(l)T}) \odot f'(Z^{(l-1)})
       + (\delta^{(l)}W^{(l)T}) \odot f''(Z^{(l-1)}) \odot \dot Z^{(l-1)}.

    relu and leaky_relu have f'' = 0 (away from the kink, where the Hessian is undefined).
    Cost: about two forward and two backward passes.

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      Y: targets, as :func:`mlds_jax.loss` takes them.
      loss: loss name.
      v: direction with the structure, shapes and dtype of params.
      row_weights: optional w (N,), ≥ 0 (default 1/N).

    Returns:
      H v, like params.
    """
    return _checked_vp(hvp_core, params, X, Y, loss, v, row_weights)


def ggn_vp(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    v: Params,
    *,
    row_weights: ArrayLike | None = None,
) -> Params:
    r"""Generalised Gauss-Newton vector product G v = Σ_n w_n J_nᵀ H_n J_n v (H7).

    The R-operator of :func:`hvp` without the f'' terms, the δVᵀ terms and Ȧᵀδ: the forward
    tangent J v, then H_out at the output (at the logits for sigmoid + BCE and softmax + CE,
    at Ŷ for the other pairs, the output activation's f'' dropped as BackPACK does), then the
    ordinary backward (B2)-(B5) run on δ̇.  G is positive semi-definite.

    Args and returns as :func:`hvp`.
    """
    return _checked_vp(ggn_vp_core, params, X, Y, loss, v, row_weights)


def flat_operator(params: Params, X: Array, Y: Array, loss: str, w: Array, *, ggn: bool = False):
    """v ↦ H v (or G v) on flat vectors (P,) (``jax.flatten_util.ravel_pytree`` order).

    The forward pass and the primal δ^(l) depend on params only: they are computed once here,
    and every application runs the tangent passes alone (H1)-(H7).  Traceable; meant to be
    built inside a jitted loop (Lanczos, Hutchinson) and applied many times.  Applied under
    ``jax.vmap`` it runs a block of directions as one set of wider matrix products.
    """
    _, unravel = ravel_pytree(params)
    cache = core.forward_cache(params, X)
    deltas = None if ggn else core.backward(params, cache, Y, loss, row_weights=w).deltas

    def matvec(q: Array) -> Array:
        v = unravel(q)
        t = forward_tangent(params, cache, v)
        dd_L = output_delta_tangent(params, cache, t, Y, loss, w, ggn=ggn)
        return ravel_pytree(tangent_backward(params, cache, deltas, v, t, dd_L))[0]

    return matvec
