# pyright: reportArgumentType=false, reportReturnType=false, reportOptionalCall=false, reportCallIssue=false, reportOperatorIssue=false
# (1-based, None-padded per-layer lists in the notes' numbering defeat the checker here)
r"""Curvature by hand: Hessian- and GGN-vector products, the diagonal GGN, the top Hessian
eigenvalue, the Hessian trace and the largest stable step size of full-batch gradient descent.

Everything runs the hand-derived forward and backward passes of :mod:`mlds_jax.core` a second
time on tangents (the R-operator), equations (H1)-(H12) of ``docs/derivations.md``; nothing
here calls ``jax.jvp`` or ``jax.grad`` of the loss.

Symbols (batch-major, layers l = 1..L, A^(0) = X): Z^(l) = A^(l−1) W^(l) + b^(l),
A^(l) = f_l(Z^(l)); L = Σ_n w_n ℓ_n with row weights w (N,) (default 1/N); a direction
v = (V^(l), v_b^(l)) has the structure of params; Ż, Ȧ, δ̇ are the tangents of Z, A, δ along v.

Conventions:

* **Where the GGN is taken.** For the two log-losses (sigmoid + binary cross-entropy, softmax
  + cross-entropy) the output activation belongs to the loss and the GGN is Jᵀ H_z J with J the
  Jacobian of the logits Z^(L) and H_z the Hessian of ℓ_n in z_n (H5).  For every other pair
  (identity/sigmoid/tanh/relu/softmax + mse or half squared error) it is Jᵀ H_ŷ J with J the
  Jacobian of Ŷ = A^(L) (so J contains the output activation's f') and H_ŷ the constant
  Hessian of ℓ_n in ŷ_n (H6): the output activation's f'' is dropped, as BackPACK does.
* **Row weights** enter as w_n H_n per example (the 1/N of the mean inside), so the GGN and the
  Hessian are those of L = Σ_n w_n ℓ_n.
* **Square-root factors** S_n (K × C) with S_n S_nᵀ = H_n, scaled by √w_n, are propagated like δ
  (H8); the exact diagonal GGN and the KFLR factors of :mod:`mlds_jax.extensions.kfac` read them.

Each public function validates once (:func:`mlds_jax.validation.check_batch`, directions
checked against the structure, shapes and dtypes of params), then calls a jitted, unchecked
``*_core`` function, also public.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.layers import Dense, Params
from mlds_jax.losses import get_loss

__all__ = [
    "LOGIT_PAIRS",
    "ZERO_CURVATURE",
    "activation_jvp",
    "backprop_factor",
    "check_direction",
    "check_row_weights",
    "diag_ggn",
    "diag_ggn_core",
    "ggn_vp",
    "ggn_vp_core",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hessian_trace_core",
    "hvp",
    "hvp_core",
    "lanczos_core",
    "lanczos_step_core",
    "lanczos_steps_core",
    "network_exact_step_size",
    "network_exact_step_size_core",
    "network_max_stable_step_size",
    "output_hessian_scale",
    "output_sqrt_factor",
    "sampled_output_factor",
    "sharpness",
]

#: Activations with f'' = 0 (away from the kink, (A8)): their f'' term of (H3) is skipped.
ZERO_CURVATURE: frozenset[str] = frozenset({"identity", "relu", "leaky_relu"})

#: (output activation, loss) pairs whose GGN is taken at the logits Z^(L) (H5).
LOGIT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy")}
)


# --- validation -----------------------------------------------------------------------------
def check_row_weights(row_weights, n_rows: int, dtype) -> Array:
    """Row weights w (N,): finite, ≥ 0, not all zero; returned in ``dtype``.

    ``None`` gives w_n = 1/N (the mean loss).
    """
    w = validation.check_row_weights(row_weights, n_rows, dtype)
    return jnp.full((n_rows,), 1.0 / n_rows, dtype=dtype) if w is None else w


def check_direction(params: Params, v, name: str = "v") -> Params:
    """v has exactly the structure of params (Dense layers, same activations), each leaf the
    same shape and dtype, and finite entries.  Returns v."""
    if not isinstance(v, (tuple, list)) or len(v) != len(params):
        raise TypeError(
            f"{name} must be a tuple of {len(params)} Dense layers shaped like "
            f"params, got {type(v).__name__}"
            + (f" of length {len(v)}" if isinstance(v, (tuple, list)) else "")
        )
    for i, (layer, d) in enumerate(zip(params, v, strict=True)):
        if not isinstance(d, Dense):
            raise TypeError(f"{name}[{i}] must be a Dense layer, got {type(d).__name__}")
        if d.activation != layer.activation:
            raise ValueError(
                f"{name}[{i}] has activation {d.activation!r} but params[{i}] has "
                f"{layer.activation!r}"
            )
        for leaf in ("W", "b"):
            a, b = getattr(d, leaf), getattr(layer, leaf)
            if getattr(a, "shape", None) != b.shape:
                raise ValueError(
                    f"{name}[{i}].{leaf} has shape {getattr(a, 'shape', None)} but "
                    f"params[{i}].{leaf} has shape {b.shape}"
                )
            if getattr(a, "dtype", None) != b.dtype:
                raise TypeError(
                    f"{name}[{i}].{leaf} has dtype {getattr(a, 'dtype', None)} but "
                    f"params[{i}].{leaf} has dtype {b.dtype}"
                )
    leaves = jax.tree_util.tree_leaves(v)
    if all(map(validation.is_concrete, leaves)):
        for i, d in enumerate(v):
            for leaf in ("W", "b"):
                validation.check_finite(np.asarray(getattr(d, leaf)), f"{name}[{i}].{leaf}")
    return v


def _check_common(params, X, Y, loss, row_weights):
    X, Y = validation.check_batch(params, X, Y, loss)
    w = check_row_weights(row_weights, X.shape[0], params[0].W.dtype)
    return X, Y, w


# --- per-layer tangent rules ----------------------------------------------------------------
def activation_jvp(name: str, Z: Array, A: Array, Zdot: Array) -> Array:
    r"""Ȧ = J_f(Z) Ż: f'(Z) ⊙ Ż element-wise, a ⊙ (ż − ⟨ż, a⟩) per row for softmax (H1)."""
    if name == "softmax":
        return A * (Zdot - jnp.sum(Zdot * A, axis=-1, keepdims=True))  # (H1)
    return ACTIVATIONS[name].prime(Z) * Zdot  # (H1)


def _activation_curvature(name: str, Z: Array, A: Array, Zdot: Array, dA: Array) -> Array:
    r"""The f'' term of the tangent backward: (d/dt J_f(Z(t))ᵀ) dA along Ż (H3)."""
    if name == "softmax":
        # δ = a ⊙ (g − ⟨g, a⟩) with g = dA held fixed; differentiate a along ȧ (H4)
        Adot = activation_jvp(name, Z, A, Zdot)
        inner = jnp.sum(dA * A, axis=-1, keepdims=True)
        return Adot * (dA - inner) - A * jnp.sum(dA * Adot, axis=-1, keepdims=True)  # (H4)
    return dA * ACTIVATIONS[name].prime2(Z) * Zdot  # (H3)


def output_hessian_scale(loss: str, K: int) -> float:
    """The constant Hessian of ℓ_n in ŷ_n, c·I: 2/K for "mse", 1 for half squared error (H6)."""
    if loss == "mse":
        return 2.0 / K  # (H6)
    if loss == "half_squared_error":
        return 1.0  # (H6)
    raise ValueError(
        f"loss {loss!r} has no constant output Hessian in ŷ; it is taken at the "
        f"logits with its matched output activation"
    )


def _forward_tangent(params: Params, cache: core.ForwardCache, v: Params) -> tuple[list, list]:
    """Ż^(l) = Ȧ^(l−1) W^(l) + A^(l−1) V^(l) + v_b^(l), Ȧ^(l) = J_f Ż^(l), Ȧ^(0) = 0 (H1)."""
    Zdots, Adots = [], [None]
    Adot = None
    for l, (layer, d) in enumerate(zip(params, v, strict=True), start=1):
        Zdot = cache.As[l - 1] @ d.W + d.b[None, :]  # A^(l−1) V^(l) + v_b^(l)
        if Adot is not None:
            Zdot = Zdot + Adot @ layer.W  # + Ȧ^(l−1) W^(l)   (H1)
        Adot = activation_jvp(layer.activation, cache.Zs[l - 1], cache.As[l], Zdot)
        Zdots.append(Zdot)
        Adots.append(Adot)
    return Zdots, Adots


def _output_delta_tangent(cache, Zdot_L, Adot_L, Y, loss, act, w, *, ggn: bool) -> Array:
    """δ̇^(L): H_z Ż for the logit pairs (H5); J_fᵀ (c w ⊙ Ȧ) (+ the f'' term) otherwise (H6)."""
    Z, A = cache.Zs[-1], cache.As[-1]
    wc = w[:, None]
    if (act, loss) in LOGIT_PAIRS:
        # softmax-CE: (diag(p) − ppᵀ) ż = J_softmax ż = ȧ; sigmoid-BCE: σ(1−σ) ż = ȧ   (H5)
        return wc * Adot_L
    c = output_hessian_scale(loss, A.shape[1])
    out = ACTIVATIONS[act].backward(wc * (c * Adot_L), Z)  # J_fᵀ H_ŷ Ȧ   (H6)
    if not ggn and act not in ZERO_CURVATURE:
        dA = get_loss(loss).dA(A, Y, w)  # ∂L/∂Ŷ = w ⊙ dℓ/dŷ
        out = out + _activation_curvature(act, Z, A, Zdot_L, dA)  # (H3), (H4)
    return out


def _tangent_backward(params, cache, deltas, v, Zdots, Adots, delta_dot_L, *, ggn: bool):
    """The backward pass run on tangents, l = L..1 (H2), (H3); the GGN drops f'' and δVᵀ (H7)."""
    L = len(params)
    out = [None] * L
    dd = delta_dot_L
    for l in range(L, 0, -1):
        layer, d = params[l - 1], v[l - 1]
        A_prev = cache.As[l - 1]
        dW = A_prev.T @ dd  # A^(l−1)ᵀ δ̇^(l)
        if not ggn and l > 1:
            dW = dW + Adots[l - 1].T @ deltas[l - 1]  # + Ȧ^(l−1)ᵀ δ^(l)   (H2)
        out[l - 1] = Dense(W=dW, b=dd.sum(axis=0), activation=layer.activation)  # (H2)
        if l > 1:
            dA_dot = dd @ layer.W.T  # δ̇^(l) W^(l)ᵀ
            if not ggn:
                dA_dot = dA_dot + deltas[l - 1] @ d.W.T  # + δ^(l) V^(l)ᵀ   (H3)
            prev = params[l - 2].activation
            Zp = cache.Zs[l - 2]
            new = ACTIVATIONS[prev].backward(dA_dot, Zp)  # ⊙ f'(Z^(l−1))
            if not ggn and prev not in ZERO_CURVATURE:
                dA = deltas[l - 1] @ layer.W.T  # ∂L/∂A^(l−1)
                new = new + _activation_curvature(prev, Zp, cache.As[l - 1], Zdots[l - 2], dA)
            dd = new
    return tuple(out) if isinstance(params, tuple) else out


def _curvature_vp(params, X, Y, loss, v, w, *, ggn: bool) -> Params:
    cache = core.forward_cache(params, X)
    Zdots, Adots = _forward_tangent(params, cache, v)
    act = params[-1].activation
    dd_L = _output_delta_tangent(cache, Zdots[-1], Adots[-1], Y, loss, act, w, ggn=ggn)
    deltas = None
    if not ggn:
        deltas = core.backward(params, cache, Y, loss, row_weights=w).deltas
    return _tangent_backward(params, cache, deltas, v, Zdots, Adots, dd_L, ggn=ggn)


@functools.partial(jax.jit, static_argnames=("loss",))
def hvp_core(
    params: Params, X: Array, Y: Array, loss: str, v: Params, row_weights: Array | None = None
) -> Params:
    """H v by the R-operator (H1)-(H4), unchecked; inputs prepared as for :mod:`mlds_jax.core`."""
    w = _weights(X, row_weights)
    return _curvature_vp(params, X, Y, loss, v, w, ggn=False)


@functools.partial(jax.jit, static_argnames=("loss",))
def ggn_vp_core(
    params: Params, X: Array, Y: Array, loss: str, v: Params, row_weights: Array | None = None
) -> Params:
    """G v = Jᵀ H_out J v (H7), unchecked."""
    w = _weights(X, row_weights)
    return _curvature_vp(params, X, Y, loss, v, w, ggn=True)


def _weights(X: Array, row_weights: Array | None) -> Array:
    if row_weights is None:
        return jnp.full((X.shape[0],), 1.0 / X.shape[0], dtype=X.dtype)
    return row_weights.astype(X.dtype)


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
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    check_direction(params, v)
    return hvp_core(params, X, Y, loss, v, w)


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
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    check_direction(params, v)
    return ggn_vp_core(params, X, Y, loss, v, w)


# --- square-root factors and the diagonal GGN -----------------------------------------------
def output_sqrt_factor(cache: core.ForwardCache, loss: str, act: str, w: Array) -> Array:
    r"""√w_n S_n at the logits Z^(L), S_n S_nᵀ = the output Hessian in z_n; (N, K, K) (H8).

    softmax-CE: S = diag(√p) − p √pᵀ; sigmoid-BCE: diag(√(σ(1 − σ))); other pairs:
    J_fᵀ √c I with c from (H6) (for softmax + mse: √c (diag(a) − a aᵀ)).
    """
    Z, A = cache.Zs[-1], cache.As[-1]
    K = A.shape[1]
    eye = jnp.eye(K, dtype=A.dtype)
    if (act, loss) == ("softmax", "cross_entropy"):
        sq = jnp.sqrt(A)
        S = sq[:, :, None] * eye[None] - A[:, :, None] * sq[:, None, :]  # (H8)
    elif (act, loss) == ("sigmoid", "binary_cross_entropy"):
        S = jnp.sqrt(A * (1 - A))[:, :, None] * eye[None]  # (H8)
    else:
        c = output_hessian_scale(loss, K)
        cols = jnp.broadcast_to(math.sqrt(c) * eye, (A.shape[0], K, K))  # column j: √c e_j
        # J_fᵀ applied to each column: move columns to the batch axis of backward
        S = jax.vmap(lambda col: ACTIVATIONS[act].backward(col, Z), in_axes=2, out_axes=2)(cols)
    return jnp.sqrt(w)[:, None, None] * S


def sampled_output_factor(
    cache: core.ForwardCache, loss: str, act: str, w: Array, key: Array, mc_samples: int
) -> Array:
    r"""Monte Carlo √w_n S̃_n, (N, K, M): columns ĝ_m/√M with E[ĝ ĝᵀ] = H_n (H9).

    Targets are sampled from the model: softmax-CE y ~ Cat(p), ĝ = p − e_y; sigmoid-BCE
    y ~ Bernoulli(σ), ĝ = σ − y; mse / half squared error ĝ_ŷ = √c ε, ε ~ N(0, I) (the
    Gaussian whose negative log-likelihood the loss is), mapped to the logits by J_fᵀ.
    """
    Z, A = cache.Zs[-1], cache.As[-1]
    N, K = A.shape
    if (act, loss) == ("softmax", "cross_entropy"):
        labels = jax.random.categorical(key, jnp.log(A)[None], axis=-1, shape=(mc_samples, N))
        G = A[None] - jax.nn.one_hot(labels, K, dtype=A.dtype)  # (H9)
    elif (act, loss) == ("sigmoid", "binary_cross_entropy"):
        y = jax.random.bernoulli(key, A[None], shape=(mc_samples, N, K)).astype(A.dtype)
        G = A[None] - y  # (H9)
    else:
        c = output_hessian_scale(loss, K)
        eps = jax.random.normal(key, (mc_samples, N, K), dtype=A.dtype)
        G = jax.vmap(lambda e: ACTIVATIONS[act].backward(math.sqrt(c) * e, Z))(eps)  # (H9)
    S = jnp.moveaxis(G, 0, 2) / math.sqrt(mc_samples)
    return jnp.sqrt(w)[:, None, None] * S


def backprop_factor(params: Params, cache: core.ForwardCache, S: Array) -> list[Array]:
    r"""Propagate the factor columns like δ (H8): B^(L) = S, B^(l−1) = (B^(l) W^(l)ᵀ) ⊙ f'(Z^(l−1)).

    Args:
      S: (N, K, C), the output factor.

    Returns:
      [B^(1), ..., B^(L)], B^(l) of shape (C, N, sizes[l]).
    """
    L = len(params)
    B = [None] * L
    B[L - 1] = jnp.moveaxis(S, 2, 0)
    for l in range(L, 1, -1):
        prev = params[l - 2]
        dA = B[l - 1] @ params[l - 1].W.T
        B[l - 2] = jax.vmap(
            lambda d, Z=cache.Zs[l - 2], f=prev.activation: ACTIVATIONS[f].backward(d, Z)
        )(dA)
    return B


@functools.partial(jax.jit, static_argnames=("loss", "mc_samples"))
def diag_ggn_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array | None = None,
    key: Array | None = None,
    mc_samples: int = 0,
) -> Params:
    r"""diag(G) like params (H10), unchecked; ``mc_samples = 0`` is exact, else Monte Carlo."""
    del Y  # the GGN does not depend on the targets
    w = _weights(X, row_weights)
    cache = core.forward_cache(params, X)
    act = params[-1].activation
    if mc_samples == 0:
        S = output_sqrt_factor(cache, loss, act, w)
    else:
        S = sampled_output_factor(cache, loss, act, w, key, mc_samples)
    B = backprop_factor(params, cache, S)
    out = []
    for l, layer in enumerate(params, start=1):
        Bsq = jnp.sum(B[l - 1] ** 2, axis=0)  # Σ_c (B^(l)_{c,n,j})², (N, d_l)
        A_prev = cache.As[l - 1]
        out.append(
            Dense(
                W=(A_prev**2).T @ Bsq,
                b=Bsq.sum(axis=0),  # (H10)
                activation=layer.activation,
            )
        )
    return tuple(out) if isinstance(params, tuple) else out


def diag_ggn(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    row_weights: ArrayLike | None = None,
    mc_samples: int | None = None,
    key: Array | None = None,
) -> Params:
    r"""The diagonal of the generalised Gauss-Newton matrix, like params (H8)-(H10).

    Exact (default): each example's output-Hessian square root S_n (H8), scaled by √w_n, is
    propagated like δ, column by column (K columns), and

    .. math:: \mathrm{diag}(G)_{W^{(l)}_{ij}} = \sum_n (a^{(l-1)}_{ni})^2
              \sum_c (B^{(l)}_{c,n,j})^2,\qquad
              \mathrm{diag}(G)_{b^{(l)}_j} = \sum_n\sum_c (B^{(l)}_{c,n,j})^2.

    Monte Carlo (``mc_samples=M`` and ``key``): the columns are M sampled output gradients
    (targets drawn from the model, (H9)) divided by √M: an unbiased estimate.  The GGN
    convention (logits vs Ŷ) is that of :func:`ggn_vp`.

    Args:
      params, X, Y, loss: as :func:`hvp`.
      row_weights: optional w (N,).
      mc_samples: None for the exact diagonal, else the number of sampled targets M ≥ 1.
      key: a ``jax.random`` key, required with ``mc_samples``.

    Returns:
      diag(G), like params (every entry ≥ 0).
    """
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    if mc_samples is None:
        if key is not None:
            raise ValueError(
                "key is only used with mc_samples; pass mc_samples=M for the "
                "Monte Carlo estimate or drop key for the exact diagonal"
            )
        return diag_ggn_core(params, X, Y, loss, w)
    m = validation.positive_int(mc_samples, "mc_samples")
    if key is None:
        raise ValueError("mc_samples needs a key (jax.random.key(seed))")
    validation.check_key(key)
    return diag_ggn_core(params, X, Y, loss, w, key, m)


# --- eigenvalues, trace, step sizes ---------------------------------------------------------
#: The most Lanczos steps :func:`lanczos_core` runs in one compiled call between two host
#: convergence checks (fewer when the residual's trend predicts convergence sooner).
_MAX_CHUNK = 8


def _project_out(Q: Array, z: Array, k: Array) -> Array:
    r"""z − Q_kᵀ (Q_k z) with Q_k rows 0..k of Q (R, P): classical Gram-Schmidt.

    Two loops over the k + 1 filled rows, one row at a time (c_j = q_jᵀ z, then z ← z − c_j q_j
    with the c_j of the original z): 2(k + 1)·P multiply-adds, rows beyond k never read.  A
    matrix product on a dynamic slice of Q would copy the slice first; row by row it does not.
    """

    def coef(j, c):
        return c.at[j].set(jnp.dot(jax.lax.dynamic_index_in_dim(Q, j, keepdims=False), z))

    c = jax.lax.fori_loop(0, k + 1, coef, jnp.zeros((Q.shape[0],), z.dtype))

    def subtract(j, z):
        return z - c[j] * jax.lax.dynamic_index_in_dim(Q, j, keepdims=False)

    return jax.lax.fori_loop(0, k + 1, subtract, z)


def _lanczos_step(hv, Q: Array, k: Array, beta_prev: Array, reorthogonalize: bool):
    """One step of (H11) on the flat operator ``hv``: (Q with row k + 1 set, α_k, β_k)."""
    q = jax.lax.dynamic_index_in_dim(Q, k, keepdims=False)
    q_prev = jax.lax.dynamic_index_in_dim(Q, jnp.maximum(k - 1, 0), keepdims=False)
    z = hv(q)
    z = z - beta_prev * q_prev * (k > 0).astype(z.dtype)
    a = jnp.dot(q, z)
    z = z - a * q
    if reorthogonalize:
        before = jnp.linalg.norm(z)
        z = _project_out(Q, z, k)
        z = jax.lax.cond(
            jnp.linalg.norm(z) < 0.7071 * before, lambda z: _project_out(Q, z, k), lambda z: z, z
        )
    b = jnp.linalg.norm(z)
    q_next = jnp.where(b > 0, z / jnp.where(b > 0, b, 1.0), 0.0)
    return jax.lax.dynamic_update_index_in_dim(Q, q_next, k + 1, 0), a, b


def _flat_hvp(params, X, Y, loss, row_weights):
    _, unravel = ravel_pytree(params)
    return lambda q: ravel_pytree(hvp_core(params, X, Y, loss, unravel(q), row_weights))[0]


@functools.partial(jax.jit, static_argnames=("loss", "reorthogonalize"), donate_argnums=(5,))
def lanczos_step_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array,
    Q: Array,
    k: Array,
    beta_prev: Array,
    reorthogonalize: bool = True,
) -> tuple[Array, Array, Array]:
    r"""One Lanczos step (H11), unchecked: one :func:`hvp_core` and the recurrence.

    z = H q_k − β_{k−1} q_{k−1}, α_k = q_kᵀ z, z ← z − α_k q_k, then (with ``reorthogonalize``)
    z ← z − Q_k (Q_kᵀ z) against the stored vectors q_0..q_k (repeated when that cancels most
    of z; 2(k + 1)·P per pass, rows beyond k are not read), β_k = ‖z‖ and q_{k+1} = z/β_k
    written into row k + 1 of Q.  :func:`lanczos_steps_core` runs several steps in one call.

    Args:
      Q: (R, P) Lanczos vectors, R ≥ k + 2, row j = q_j for j ≤ k (donated: updated in place).
      k: the step, an int32 scalar (traced: one compilation serves every step).
      beta_prev: β_{k−1} (ignored for k = 0).

    Returns:
      (Q with row k + 1 set, α_k, β_k).
    """
    hv = _flat_hvp(params, X, Y, loss, row_weights)
    return _lanczos_step(hv, Q, k, beta_prev, reorthogonalize)


@functools.partial(jax.jit, static_argnames=("loss", "reorthogonalize"), donate_argnums=(5,))
def lanczos_steps_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    row_weights: Array,
    Q: Array,
    alpha: Array,
    beta: Array,
    start: Array,
    stop: Array,
    reorthogonalize: bool = True,
) -> tuple[Array, Array, Array]:
    r"""Lanczos steps k = start, …, stop − 1 of (H11) in one compiled loop, unchecked.

    Each step is :func:`lanczos_step_core`'s (one :func:`hvp_core`, the recurrence, the
    optional reorthogonalisation against rows 0..k); α_k, β_k are written into ``alpha``,
    ``beta`` and q_{k+1} into row k + 1 of Q, all in place in a ``lax.fori_loop``.  The forward
    pass of the hvp depends on params only, so it is computed once per call, not per step.

    Args:
      Q: (R, P) Lanczos vectors, R ≥ stop + 1, rows 0..start filled (donated: updated in place).
      alpha, beta: (m,) with m ≥ stop, entries < start filled (β_{start−1} is read).
      start, stop: int32 scalars, 0 ≤ start ≤ stop (traced: one compilation serves all).

    Returns:
      (Q, alpha, beta) with rows start + 1..stop of Q and entries start..stop − 1 set.
    """
    hv = _flat_hvp(params, X, Y, loss, row_weights)

    def body(k, carry):
        Q, alpha, beta = carry
        b_prev = beta[jnp.maximum(k - 1, 0)]
        Q, a, b = _lanczos_step(hv, Q, k, b_prev, reorthogonalize)
        return Q, alpha.at[k].set(a), beta.at[k].set(b)

    return jax.lax.fori_loop(start, stop, body, (Q, alpha, beta))


def _top_ritz(alpha: list[float], beta: list[float], tol: float, eps: float):
    """(θ, s, stop, residual) for T_k of α_0..α_{k−1}, β_0..β_{k−2}, in float64 (H11): stop
    when the residual β_{k−1}|s_k| ≤ tol·|θ| or β_{k−1} ≈ 0 (invariant Krylov space)."""
    T = np.diag(alpha) + np.diag(beta[:-1], 1) + np.diag(beta[:-1], -1)
    vals, vecs = np.linalg.eigh(T)
    theta, s = float(vals[-1]), vecs[:, -1]
    residual = beta[-1] * abs(s[-1])  # (H11)
    scale = max(abs(theta), max(abs(x) for x in alpha), np.finfo(np.float64).tiny)
    stop = residual <= tol * abs(theta) or beta[-1] <= 1e3 * eps * scale
    return theta, s, stop, residual


def _next_chunk(log_ratios: list[float], remaining: int) -> int:
    """Steps for the next compiled call: the steps the residual's recent geometric decrease
    predicts until it reaches tol (at least 1, at most ``_MAX_CHUNK`` and ``remaining``)."""
    n = _MAX_CHUNK
    if len(log_ratios) >= 2:
        h = min(4, len(log_ratios) - 1)
        rate = (log_ratios[-1 - h] - log_ratios[-1]) / h  # decrease of log(residual/tol) per step
        if rate > 0 and math.isfinite(log_ratios[-1]):
            n = max(1, min(n, int(log_ratios[-1] / rate)))
    return min(n, remaining)


def _log_ratio(residual: float, bound: float) -> float:
    if residual == 0.0:
        return -math.inf
    return math.log(residual / bound) if bound > 0.0 else math.inf


def lanczos_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    key: Array,
    row_weights: Array | None = None,
    num_iters: int = 100,
    tol: float = 1e-7,
    reorthogonalize: bool = True,
) -> tuple[float, Array, int]:
    r"""Lanczos on ``hvp_core`` (H11), unchecked: a host loop over :func:`lanczos_steps_core`.

    Runs at most m = min(num_iters, P) steps and stops at the first step k whose top Ritz pair
    (θ, y) of the tridiagonal T_k (solved on the host in float64) has residual
    ‖H y − θ y‖ = β_k |s_k| ≤ tol·|θ|, or whose Krylov space is invariant (β_k ≈ 0).  The steps
    run on the device in chunks of at most ``_MAX_CHUNK`` (8) per compiled call, sized by the
    residual's recent rate of decrease; the host then checks each step of the chunk in order,
    exactly as a step-by-step loop would.  Steps a chunk ran past the stopping step (at most
    ``_MAX_CHUNK`` − 1) are discarded: they cost time but change neither θ, y nor the step
    count, since later steps do not touch α, β or the rows of Q before them.  Per step: one
    hvp (its forward pass shared by the chunk), O(P), and with ``reorthogonalize`` 2(k + 1)·P
    more.  Q starts with 33 rows (``_FIRST_ROWS`` + 1) and grows once, to m + 1, if more steps
    are needed.  Not traceable (a Python loop).

    Returns:
      (θ as a float, y flat (P,) of unit norm, steps taken).
    """
    w = _weights(X, row_weights)
    flat, _ = ravel_pytree(params)
    P, dtype = flat.shape[0], flat.dtype
    m = min(num_iters, P)
    eps = _eps(dtype)
    Q, alpha_d, beta_d = _lanczos_start(key, P, min(m, _FIRST_ROWS) + 1, m, dtype)
    alpha: list[float] = []
    beta: list[float] = []
    log_ratios: list[float] = []  # log(residual / (tol·|θ|)) per step
    theta, s = 0.0, np.ones(1)
    done = 0
    while done < m:
        n = _next_chunk(log_ratios, m - done)
        if done + n + 1 > Q.shape[0]:  # more steps than the first block holds: all m + 1 rows
            Q = _grown(Q, m + 1)
        Q, alpha_d, beta_d = lanczos_steps_core(
            params, X, Y, loss, w, Q, alpha_d, beta_d,
            jnp.asarray(done, jnp.int32), jnp.asarray(done + n, jnp.int32), reorthogonalize,
        )  # fmt: skip
        a_h = np.asarray(alpha_d)[done : done + n].astype(np.float64)
        b_h = np.asarray(beta_d)[done : done + n].astype(np.float64)
        stop = False
        for a, b in zip(a_h, b_h, strict=True):
            alpha.append(float(a))
            beta.append(float(b))
            theta, s, stop, residual = _top_ritz(alpha, beta, tol, eps)
            bound = tol * abs(theta)
            log_ratios.append(_log_ratio(residual, bound))
            if stop:
                break
        done += n
        if stop:
            break
    k = len(alpha)
    s_pad = np.zeros(m, dtype)
    s_pad[:k] = s
    return theta, _ritz_vector(Q, jnp.asarray(s_pad), jnp.asarray(k, jnp.int32)), k


#: Rows of Q :func:`lanczos_core` allocates first (then all m + 1 if it needs more steps):
#: most runs converge in fewer steps, and zero-filling (m + 1)·P entries up front (216 MB
#: for m = 100 and a 535k-parameter MLP) costs more than a few hvps.
_FIRST_ROWS = 32


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _lanczos_start(key: Array, P: int, rows: int, m: int, dtype) -> tuple[Array, Array, Array]:
    """Q (rows, P) with row 0 a random unit vector, the rest zero; α, β (m,) zero."""
    q0 = jax.random.normal(key, (P,), dtype=dtype)
    Q = jnp.zeros((rows, P), dtype).at[0].set(q0 / jnp.linalg.norm(q0))
    return Q, jnp.zeros((m,), dtype), jnp.zeros((m,), dtype)


@functools.partial(jax.jit, static_argnums=(1,))
def _grown(Q: Array, rows: int) -> Array:
    """Q (R, P) copied into the first R rows of a zero (rows, P) array."""
    return jnp.zeros((rows, Q.shape[1]), Q.dtype).at[: Q.shape[0]].set(Q)


@jax.jit
def _ritz_vector(Q: Array, s: Array, k: Array) -> Array:
    """y = Σ_{j<k} s_j q_j / ‖·‖, reading rows 0..k − 1 of Q only (H11)."""

    def add(j, y):
        return y + s[j] * jax.lax.dynamic_index_in_dim(Q, j, keepdims=False)

    y = jax.lax.fori_loop(0, k, add, jnp.zeros(Q.shape[1:], Q.dtype))
    return y / jnp.linalg.norm(y)


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def _check_eig_args(num_iters, tol):
    n = validation.positive_int(num_iters, "num_iters")
    t = validation.positive_float(tol, "tol")
    return n, t


def hessian_top_eigenvalue(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array,
    num_iters: int = 100,
    tol: float = 1e-7,
    row_weights: ArrayLike | None = None,
    reorthogonalize: bool = True,
) -> tuple[Array, Params]:
    r"""The algebraically largest eigenvalue λ_max of the Hessian and its eigenvector (H11).

    Lanczos iteration on :func:`hvp` (with full reorthogonalisation by default), from a random
    unit vector drawn with ``key``: after k steps the Krylov basis Q_k gives H Q_k = Q_k T_k +
    β_k q_{k+1} e_kᵀ; the top Ritz value θ of the tridiagonal T_k is the estimate, its Ritz
    vector y = Q_k s the eigenvector.  Stops when ‖H y − θ y‖ = β_k |s_k| ≤ tol·|θ| (then some
    eigenvalue lies within tol·|θ| of θ), when the Krylov space is invariant, or after
    min(num_iters, P) steps (P = number of parameters; at P steps the answer is exact).
    The Hessian can be indefinite: this is the largest eigenvalue, not the largest |λ|
    (which is what plain power iteration would find).

    Args:
      params, X, Y, loss: as :func:`hvp`.
      key: ``jax.random`` key for the start vector.
      num_iters: the most Lanczos steps (each one :func:`hvp`); memory 33·P, or
        (num_iters + 1)·P once a run takes more than 32 steps.
      tol: relative residual at which to stop; the defaults reach 1e-6 relative accuracy in
        λ on small networks (tested against ``numpy.linalg.eigh``).
      row_weights: optional w (N,).
      reorthogonalize: orthogonalise each new vector against all previous ones (robust, costs
        2(k + 1)·P per step on top of the hvp); ``False`` is the plain three-term recurrence
        (one hvp and O(P) per step; the top Ritz value still converges, though copies of
        converged eigenvalues may appear lower in the spectrum of T_k).

    Returns:
      (λ_max scalar array, unit eigenvector like params).
    """
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    validation.check_key(key)
    n, t = _check_eig_args(num_iters, tol)
    if not isinstance(reorthogonalize, bool):
        raise TypeError(f"reorthogonalize must be a bool, got {reorthogonalize!r}")
    theta, y, _ = lanczos_core(params, X, Y, loss, key, w, n, t, reorthogonalize)
    _, unravel = ravel_pytree(params)
    return jnp.asarray(theta, y.dtype), unravel(y)


def sharpness(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array,
    num_iters: int = 100,
    tol: float = 1e-7,
    row_weights: ArrayLike | None = None,
) -> float:
    """λ_max of the Hessian as a Python float: the "sharpness" of Cohen et al. (2021) (H11).

    The helper ``fit(..., track_sharpness=k, sharpness_data=(X_s, Y_s))`` calls every k-th
    epoch to fill ``history["sharpness"]``; compare it with 2/η.
    """
    lam, _ = hessian_top_eigenvalue(
        params, X, Y, loss, key=key, num_iters=num_iters, tol=tol, row_weights=row_weights
    )
    return float(lam)


@functools.partial(jax.jit, static_argnames=("loss", "samples"))
def hessian_trace_core(
    params: Params,
    X: Array,
    Y: Array,
    loss: str,
    key: Array,
    samples: int,
    row_weights: Array | None = None,
) -> tuple[Array, Array]:
    r"""Hutchinson's estimate (H12), unchecked: (mean of vᵀHv, each probe's vᵀHv (samples,))."""
    w = _weights(X, row_weights)
    flat, unravel = ravel_pytree(params)

    def one(k):
        v = jax.random.rademacher(k, flat.shape, dtype=flat.dtype)
        Hv = ravel_pytree(hvp_core(params, X, Y, loss, unravel(v), w))[0]
        return jnp.dot(v, Hv)  # (H12)

    per_probe = jax.lax.map(one, jax.random.split(key, samples))
    return jnp.mean(per_probe), per_probe


def hessian_trace(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array,
    samples: int = 100,
    row_weights: ArrayLike | None = None,
) -> Array:
    r"""Hutchinson estimate of tr(H) with Rademacher probes (H12).

    tr(H) ≈ (1/S) Σ_s v_sᵀ H v_s, v_s with independent ±1 entries (E[v vᵀ] = I, so each term
    is unbiased); one :func:`hvp` per probe.  Its variance is 2(‖H‖_F² − Σ_i H_ii²)/S.

    Args:
      params, X, Y, loss: as :func:`hvp`.
      key: ``jax.random`` key.
      samples: number of probes S ≥ 1.
      row_weights: optional w (N,).

    Returns:
      The estimate, a scalar array.
    """
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    validation.check_key(key)
    s = validation.positive_int(samples, "samples")
    return hessian_trace_core(params, X, Y, loss, key, s, w)[0]


def network_max_stable_step_size(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    key: Array | None = None,
    num_iters: int = 100,
    tol: float = 1e-7,
    row_weights: ArrayLike | None = None,
) -> float:
    r"""2 / λ_max of the Hessian: the largest stable fixed step of full-batch gradient descent.

    Near params the loss is locally quadratic; one step multiplies the error along an
    eigenvector of H by 1 − ηλ, so a fixed step is stable iff η < 2/λ_max (S2) (the network form
    of :func:`mlds_jax.max_stable_step_size`).  λ_max by :func:`hessian_top_eigenvalue`.

    Args:
      params, X, Y, loss: as :func:`hvp`.
      key: start vector key (default ``jax.random.key(0)``: deterministic).
      num_iters, tol: as :func:`hessian_top_eigenvalue`.
      row_weights: optional w (N,).

    Returns:
      2/λ_max as a Python float.

    Raises:
      ValueError: λ_max ≤ 0 (no fixed step is stable: the loss is not locally convex in any
        direction).
    """
    if key is None:
        key = jax.random.key(0)
    lam = sharpness(
        params, X, Y, loss, key=key, num_iters=num_iters, tol=tol, row_weights=row_weights
    )
    if not lam > 0.0:
        raise ValueError(
            f"largest Hessian eigenvalue is {lam} <= 0: no fixed step size is stable there"
        )
    return 2.0 / lam


@functools.partial(jax.jit, static_argnames=("loss",))
def network_exact_step_size_core(
    params: Params, X: Array, Y: Array, loss: str, row_weights: Array | None = None
) -> Array:
    r"""η = gᵀg / gᵀHg along −g (S1), unchecked; g by the hand-derived backward."""
    w = _weights(X, row_weights)
    _, g = core.value_and_grads(params, X, Y, loss, row_weights=w)
    Hg = hvp_core(params, X, Y, loss, g, w)
    gg = sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(g))
    gHg = sum(
        jnp.vdot(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(Hg), strict=True)
    )
    return gg / gHg  # (S1)


def network_exact_step_size(
    params: Params, X: ArrayLike, Y: ArrayLike, loss: str, *, row_weights: ArrayLike | None = None
) -> float:
    r"""The exact line-search step along −g for the local quadratic model: η = gᵀg / gᵀHg (S1).

    Minimises L(θ − η g) ≈ L − η gᵀg + ½η² gᵀHg over η; g by the manual backward, Hg by
    :func:`hvp`.  The network form of ``gradient_descent(..., line_search="exact")``.

    Returns:
      η as a Python float.

    Raises:
      ValueError: gᵀHg ≤ 0 (negative curvature along −g: the quadratic model has no minimum)
        or g = 0.
    """
    X, Y, w = _check_common(params, X, Y, loss, row_weights)
    eta = float(network_exact_step_size_core(params, X, Y, loss, w))
    if not (math.isfinite(eta) and eta > 0.0):
        raise ValueError(
            f"the exact step gᵀg/gᵀHg is {eta}: the curvature along the "
            f"gradient is not positive (or the gradient is zero)"
        )
    return eta
