# pyright: reportArgumentType=false, reportReturnType=false, reportCallIssue=false
# (per-layer lists in the notes' numbering defeat the checker here)
r"""The exact Jacobian of the network's outputs with respect to every parameter, by hand.

The backward pass (B2)-(B5) turns one output gradient δ^(L) into ∂L/∂params.  Run it on the K
unit output directions e_1, ..., e_K instead of on δ^(L), every example separately, and it
returns the K rows of each example's Jacobian: equations (J1), (J2) of ``docs/derivations.md``.
Nothing here calls ``jax.jacrev``.

Symbols (batch-major, layers l = 1..L, A^(0) = X): o_n the output the Jacobian is taken of,
either Ŷ_n = A^(L)_n ("outputs") or the logits Z^(L)_n ("logits"); K = its width; a factor
S_n (K, C) holds C output directions per example (C = K and S_n = the identity for the plain
Jacobian); B^(l) (C, N, n_l) is S propagated back to layer l like δ, (H8).

**Where the Jacobian is taken** (``at``): ``"logits"`` gives ∂Z^(L)/∂θ, ``"outputs"`` gives
∂Ŷ/∂θ = J_f ∂Z^(L)/∂θ.  ``"auto"`` follows the GGN convention of
:mod:`mlds_jax.extensions.ggn_factors`: the logits for sigmoid + binary cross-entropy and
softmax + cross-entropy (the log-losses own their output activation), Ŷ for every other pair.
Without a ``loss``, ``"auto"`` takes the logits for softmax and sigmoid outputs (the losses
they are trained with by default) and Ŷ otherwise.

Memory: N·C·P entries for P parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.extensions.ggn_factors import backprop_factor
from mlds_jax.layers import Dense, Params
from mlds_jax.losses import DEFAULT_LOSS, get_loss

__all__ = [
    "JACOBIAN_AT",
    "factor_jacobian",
    "flat_factor_jacobian",
    "jacobian_at_logits",
    "output_directions",
    "output_jacobian",
    "output_jacobian_core",
]

#: Where :func:`output_jacobian` may take the Jacobian.
JACOBIAN_AT = ("auto", "logits", "outputs")


def jacobian_at_logits(output_activation: str, loss: str | None, at: str) -> bool:
    """True when the Jacobian (or the GGN) is taken at the logits Z^(L), False at Ŷ.

    ``at="auto"``: with a loss, the GGN's convention (the loss registry's
    :meth:`~mlds_jax.losses.Loss.ggn_at_logits`); without one, the logits exactly for the
    outputs whose default loss is a log-loss (softmax, sigmoid).
    """
    if at == "logits":
        return True
    if at == "outputs":
        return False
    if loss is None:
        loss = DEFAULT_LOSS.get(output_activation)
    return loss is not None and get_loss(loss).ggn_at_logits(output_activation)


def output_directions(cache: core.ForwardCache, output_activation: str, logits: bool) -> Array:
    r"""S_n = ∂o_n/∂z_n^(L), columns first: (K, N, K), ``out[k, n]`` the direction of output
    k of example n (J1), as the GGN factors are laid out (:mod:`~mlds_jax.extensions.ggn_factors`).

    The identity at the logits; at Ŷ, row k of the output activation's Jacobian J_f (so
    column k of J_fᵀ: f'(z_nk) e_k element-wise, diag(a) − a aᵀ for softmax, symmetric).
    """
    Z = cache.Zs[-1]
    N, K = Z.shape
    eye = jnp.broadcast_to(jnp.eye(K, dtype=Z.dtype)[:, None, :], (K, N, K))
    if logits:
        return eye  # (J1): B^(L) = e_k
    backward = ACTIVATIONS[output_activation].backward
    return jax.vmap(lambda col: backward(col, Z))(eye)  # (J1): J_fᵀ e_k


def factor_jacobian(params: Params, cache: core.ForwardCache, S: Array) -> Params:
    r"""Sᵀ_n ∂z_n^(L)/∂θ for every example, like params with leaves (N, C, *leaf.shape) (J2).

    The C columns of S are propagated back like δ (H8), B^(L) = S, then

    .. math:: \frac{\partial o_{nc}}{\partial W^{(l)}_{ij}} = a^{(l-1)}_{ni} B^{(l)}_{c,n,j},
              \qquad \frac{\partial o_{nc}}{\partial b^{(l)}_j} = B^{(l)}_{c,n,j}.

    Args:
      params: L layers.
      cache: ``core.forward_cache(params, X)``.
      S: (C, N, K), C directions per example at the logits, columns first.

    Returns:
      Like params: W^(l) leaves (N, C, n_{l−1}, n_l), b^(l) leaves (N, C, n_l).
    """
    B = backprop_factor(params, cache, S)  # B^(l) (C, N, n_l)   (H8), (J1)
    out = []
    for l, layer in enumerate(params, start=1):
        A_prev = cache.As[l - 1]
        out.append(
            Dense(
                W=jnp.einsum("ni,cnj->ncij", A_prev, B[l - 1]),  # (J2)
                b=jnp.moveaxis(B[l - 1], 0, 1),  # (J2)
                activation=layer.activation,
            )
        )
    return tuple(out) if isinstance(params, tuple) else out


def flat_factor_jacobian(params: Params, cache: core.ForwardCache, S: Array) -> Array:
    r""":func:`factor_jacobian` as one (N·C, P) matrix, columns in ``ravel_pytree(params)``
    order (W1, b1, W2, b2, ..., each row-major): row n·C + c is the Jacobian of o_nc (J2)."""
    B = backprop_factor(params, cache, S)  # (H8), (J1)
    C, N = S.shape[0], S.shape[1]
    blocks = []
    for l in range(1, len(params) + 1):
        A_prev = cache.As[l - 1]
        Bl = jnp.moveaxis(B[l - 1], 0, 1)  # (N, C, n_l)
        blocks.append((A_prev[:, None, :, None] * Bl[:, :, None, :]).reshape(N, C, -1))  # (J2)
        blocks.append(Bl)  # (J2)
    return jnp.concatenate(blocks, axis=2).reshape(N * C, -1)


@functools.partial(jax.jit, static_argnames=("logits",))
def output_jacobian_core(params: Params, X: Array, logits: bool) -> Params:
    """∂o/∂θ like params with leaves (N, K, *leaf.shape) (J1), (J2), unchecked."""
    cache = core.forward_cache(params, X)
    S = output_directions(cache, params[-1].activation, logits)
    return factor_jacobian(params, cache, S)


def output_jacobian(
    params: Params, X: ArrayLike, *, at: str = "auto", loss: str | None = None
) -> Params:
    r"""The exact Jacobian of the network's outputs in every parameter, by back-propagating
    the K output directions (J1), (J2).

    For each example n and output k, the backward pass (B2)-(B5) run from δ^(L) = e_k (the
    logits) or from row k of the output activation's Jacobian (Ŷ) gives ∂o_nk/∂θ:

    .. math:: \frac{\partial o_{nk}}{\partial W^{(l)}_{ij}} = a^{(l-1)}_{ni}\,B^{(l)}_{k,n,j},
              \quad B^{(L)}_{k,n} = \frac{\partial o_{nk}}{\partial z^{(L)}_n},\quad
              B^{(l-1)}_{k} = \big(B^{(l)}_k W^{(l)T}\big)\odot f_{l-1}'(Z^{(l-1)}).

    The result has the structure of ``jax.jacrev(lambda p: mj.forward(p, X))(params)``
    (at ``"outputs"``).

    Args:
      params: tuple of :class:`~mlds_jax.layers.Dense`.
      X: inputs, (N, n_in).
      at: ``"logits"`` (∂Z^(L)/∂θ), ``"outputs"`` (∂Ŷ/∂θ) or ``"auto"`` (where the GGN is
        taken: the logits for softmax + cross-entropy and sigmoid + binary cross-entropy, Ŷ
        otherwise; see the module docstring).
      loss: optional loss name, read only by ``at="auto"`` (e.g. a sigmoid output trained
        with "mse" has its GGN, and so its ``"auto"`` Jacobian, at Ŷ).

    Returns:
      Like params: each W^(l) leaf (N, K, n_{l−1}, n_l), each b^(l) leaf (N, K, n_l).

    Example:
      >>> J = mj.extensions.output_jacobian(params, X)          # J[0].W: (N, K, n_in, n_1)
    """
    validation.check_params(params)
    validation.check_params_finite(params)
    if at not in JACOBIAN_AT:
        raise ValueError(f"at must be one of {list(JACOBIAN_AT)}, got {at!r}")
    if loss is not None:
        get_loss(loss)
        validation.check_loss_output(params, loss)
    X = validation.check_X(params, X)
    logits = jacobian_at_logits(params[-1].activation, loss, at)
    return output_jacobian_core(params, X, logits)
