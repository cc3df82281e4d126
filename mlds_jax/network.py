r"""The MLP as a pytree: Dense layers, initialisation, the pure forward pass and the loss.

Convention (row-major, batch-major, as the MLDS notes): for layer l

.. math:: Z^{(l)} = A^{(l-1)} W^{(l)} + b^{(l)},\qquad A^{(l)} = f_l(Z^{(l)}),\qquad A^{(0)} = X

with ``X (N, n_in)``, ``W (fan_in, fan_out)``, ``b (fan_out,)``.  The lecture writes
``Z = X W^T + b`` with its W of shape (out, in): our ``W`` is the lecture's ``W^T``.

``params`` is a tuple of :class:`Dense`; each holds the leaves ``W`` and ``b`` and, as static
metadata, its activation name, so ``forward(params, X)`` needs nothing else.  Leaves flatten
in the order W1, b1, W2, b2, ...; ``jax.grad``, optax, ``jax.tree_util`` and chex work on it
unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import _checks
from mlds_jax.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from mlds_jax.losses import get_loss

__all__ = [
    "dense_forward",
    "INITIALIZERS",
    "Dense",
    "ForwardCache",
    "Params",
    "forward",
    "forward_cache",
    "init_mlp",
    "layer_sizes",
    "loss",
    "predict",
    "prepare_targets",
]


@dataclasses.dataclass(frozen=True)
class Dense:
    """One fully connected layer: Z = X W + b, A = f(Z).

    Attributes:
      W: weights, shape (fan_in, fan_out) (the lecture's W^T).
      b: bias, shape (fan_out,).
      activation: name of f in ``mlds_jax.ACTIVATIONS`` (static, not a leaf).
    """

    W: Array
    b: Array
    activation: str = "identity"

    def __repr__(self) -> str:
        shape = getattr(self.W, "shape", "?")
        dtype = getattr(self.W, "dtype", "?")
        return f"Dense(W={tuple(shape)}, activation={self.activation!r}, dtype={dtype})"


jax.tree_util.register_dataclass(Dense, data_fields=["W", "b"], meta_fields=["activation"])

Params = tuple[Dense, ...]


def _he(key: Array, shape: tuple[int, int], dtype) -> Array:
    return jax.nn.initializers.he_normal()(key, shape, dtype)


def _xavier(key: Array, shape: tuple[int, int], dtype) -> Array:
    return jax.nn.initializers.glorot_uniform()(key, shape, dtype)


def _lecun(key: Array, shape: tuple[int, int], dtype) -> Array:
    return jax.nn.initializers.lecun_normal()(key, shape, dtype)


def _normal(key: Array, shape: tuple[int, int], dtype) -> Array:
    return 0.01 * jax.random.normal(key, shape, dtype)


#: Weight initialisers by name (biases start at zero).  "auto" picks "he" for relu-like hidden
#: layers and "xavier" otherwise.
INITIALIZERS = {"he": _he, "xavier": _xavier, "lecun": _lecun, "normal": _normal}


def init_mlp(
    key: ArrayLike,
    sizes: Sequence[int],
    hidden: str = "relu",
    output: str = "identity",
    init: str = "auto",
    dtype=None,
) -> Params:
    """Initialise an MLP with layer sizes ``[n_in, h_1, ..., n_out]``.

    Args:
      key: a ``jax.random`` key.
      sizes: at least two positive ints; ``sizes[0]`` is the input width.
      hidden: activation of every hidden layer (any of ``HIDDEN_ACTIVATIONS``).
      output: activation of the output layer (any of ``OUTPUT_ACTIVATIONS``).
      init: "auto" (He for relu/leaky_relu hidden layers, Xavier otherwise), "he", "xavier",
        "lecun" or "normal" (N(0, 0.01²)).  Biases are zero.
      dtype: parameter dtype; default float32, or float64 when x64 is enabled.

    Returns:
      A tuple of :class:`Dense`, one per layer, ``W`` (sizes[i], sizes[i+1]), ``b`` (sizes[i+1],).

    Example:
      >>> import jax, mlds_jax as mj
      >>> params = mj.init_mlp(jax.random.key(0), [5, 7, 4, 3], hidden="sigmoid", output="softmax")
      >>> [p.W.shape for p in params]
      [(5, 7), (7, 4), (4, 3)]
    """
    sizes = _checks.check_sizes(sizes)
    if hidden not in HIDDEN_ACTIVATIONS:
        if hidden in ACTIVATIONS:
            raise ValueError(
                f"activation {hidden!r} can only be used on the output layer; "
                f"hidden layers take one of {list(HIDDEN_ACTIVATIONS)}"
            )
        raise ValueError(f"unknown hidden activation {hidden!r}; valid: {list(HIDDEN_ACTIVATIONS)}")
    if output not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"unknown output activation {output!r}; valid: {list(OUTPUT_ACTIVATIONS)}")
    if init == "auto":
        init = "he" if hidden in ("relu", "leaky_relu") else "xavier"
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; valid: {['auto', *INITIALIZERS]}")
    key = _checks.check_key(key)
    dtype = _checks.float_dtype(dtype)
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        act = output if i == len(sizes) - 2 else hidden
        W = INITIALIZERS[init](keys[i], (fan_in, fan_out), dtype)
        layers.append(Dense(W=W, b=jnp.zeros((fan_out,), dtype), activation=act))
    return tuple(layers)


def layer_sizes(params: Params) -> list[int]:
    """``[n_in, h_1, ..., n_out]`` of a params tuple."""
    return [int(params[0].W.shape[0])] + [int(layer.W.shape[1]) for layer in params]


class ForwardCache(NamedTuple):
    """Every layer's pre-activation and activation, for teaching and for backprop.

    Attributes:
      Zs: (Z^{(1)}, ..., Z^{(L)}), Z^{(l)} of shape (N, sizes[l]).
      As: (A^{(0)} = X, A^{(1)}, ..., A^{(L)} = Ŷ), A^{(l)} of shape (N, sizes[l]).
    """

    Zs: tuple[Array, ...]
    As: tuple[Array, ...]


def dense_forward(layer: Dense, A_prev: Array) -> tuple[Array, Array]:
    r"""Z = A_prev W + b, A = f(Z) (MLDS notes, "Forward Pass" steps 1-4; lecture "MLP").

    Args:
      layer: the layer, W (d_in, d_out), b (d_out,).
      A_prev: input, (N, d_in).

    Returns:
      Z, A, each (N, d_out).
    """
    # b is (d_out,): broadcast it explicitly to a row so strict rank promotion is happy.
    Z = A_prev @ layer.W + layer.b[None, :]
    return Z, ACTIVATIONS[layer.activation].fn(Z)


def _forward_cache(params: Params, X: Array) -> ForwardCache:
    A = X.astype(params[0].W.dtype)
    Zs, As = [], [A]
    for layer in params:
        Z, A = dense_forward(layer, A)
        Zs.append(Z)
        As.append(A)
    return ForwardCache(tuple(Zs), tuple(As))


_forward_cache_jit = jax.jit(_forward_cache)


def forward_cache(params: Params, X: ArrayLike) -> ForwardCache:
    """Forward pass that keeps every layer's Z and A (lecture, "Forward propagation: MLP").

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in); cast to the parameters' dtype.

    Returns:
      :class:`ForwardCache` with ``Zs[l-1] = Z^{(l)}`` and ``As[l] = A^{(l)}``, ``As[0] = X``.
    """
    _checks.check_params(params)
    _checks.check_params_finite(params)
    X = _checks.check_X(params, X)
    return _forward_cache_jit(params, X)


def forward(params: Params, X: ArrayLike) -> Array:
    """Ŷ = f_L(... f_1(X W_1 + b_1) ... W_L + b_L): the network's output.

    Pure and jit-able; shapes are checked in Python before tracing.

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in); cast to the parameters' dtype.

    Returns:
      Ŷ, (N, n_out).

    Example:
      >>> Y_hat = mj.forward(params, jnp.ones((3, 5)))   # (3, 3)
    """
    return forward_cache(params, X).As[-1]


def _loss_from_cache(cache: ForwardCache, Y: Array, loss_name: str, row_weights=None) -> Array:
    return get_loss(loss_name).value(cache.Zs[-1], cache.As[-1], Y, row_weights)


def _loss_core(params: Params, X: Array, Y: Array, loss_name: str, row_weights=None) -> Array:
    """Loss without validation: Y already 2-D and in the params' dtype."""
    return _loss_from_cache(_forward_cache(params, X), Y, loss_name, row_weights)


_loss_jit = jax.jit(_loss_core, static_argnums=3)


def prepare_targets(params: Params, Y: ArrayLike, loss: str) -> Array:
    """Validate targets for ``loss`` and return them as the core functions take them.

    Integer labels (N,) for "cross_entropy" become one-hot rows; (N,) targets of a
    single-output loss become (N, 1); everything is cast to the parameters' dtype.  Use it
    to feed ``TrainStep.jitted``, which skips all checks.

    Returns:
      Y, (N, n_out).
    """
    _checks.check_params(params)
    _checks.check_loss_output(params, loss)
    Y = _checks._numeric(Y, "Y")
    n_rows = Y.shape[0] if Y.ndim else 0  # a 0-d Y is rejected by the shape check
    return _checks.prepare_targets(Y, loss, params[-1].W.shape[1], n_rows, params[0].W.dtype)


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
    """The average loss L = (1/N) Σ_p div(ŷ_p, y_p) of the network on (X, Y).

    Args:
      params: tuple of :class:`Dense`.
      X: inputs, (N, n_in).
      Y: targets: (N, n_out) or (N,) for one output; for "cross_entropy" integer labels (N,)
        in [0, K) or one-hot / probability rows (N, K).
      loss: one of ``mlds_jax.LOSSES``.

    Returns:
      Scalar loss, in the parameters' dtype.  A non-finite value from finite inputs (the
      forward pass overflowed the dtype) raises ValueError instead of returning NaN or inf.
    """
    X, Y = _checks.check_batch(params, X, Y, loss)
    value = _loss_jit(params, X, Y, loss)
    _check_loss_finite(value, params, X)
    return value


def _check_loss_finite(value, params: Params, X: Array) -> None:
    """A non-finite loss from finite, representable inputs means the forward pass overflowed
    (e.g. Z = X W past 3.4e38 in float32): a clear error instead of a NaN or inf."""
    if not _checks.is_concrete(value) or bool(jnp.isfinite(value)):
        return
    Zs = _forward_cache_jit(params, X).Zs
    peaks = ", ".join(f"{float(jnp.max(jnp.abs(Z))):.3g}" for Z in Zs)
    raise ValueError(
        f"the loss is {float(value)} although params, X and Y are finite: the computation "
        f"overflowed {params[0].W.dtype} (max |Z| per layer: {peaks}); rescale X or use "
        f"float64 parameters")
