"""Initial parameters: ``init_mlp`` and the weight initialisers it can use."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import validation
from mlds_jax.layers import Dense, Params

__all__ = ["INITIALIZERS", "init_mlp"]


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
      key: a ``jax.random`` key, or an int seed in [0, 2³²) (``0`` is ``jax.random.key(0)``).
      sizes: at least two positive ints; ``sizes[0]`` is the input width.
      hidden: activation of every hidden layer (any of ``HIDDEN_ACTIVATIONS``).
      output: activation of the output layer (any of ``OUTPUT_ACTIVATIONS``): "identity" for
        regression, "softmax" for class labels (cross-entropy; K >= 2 outputs), "sigmoid"
        for 0/1 targets.
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
    sizes = validation.check_sizes(sizes)
    for name, value, what in (
        ("hidden", hidden, "the activation of every hidden layer"),
        ("output", output, "the output layer's activation"),
        ("init", init, "an initializer name"),
    ):
        if not isinstance(value, str) and value is not None:  # None: "unknown ..." below
            raise TypeError(f"{name} must be a str, {what}; got {type(value).__name__} {value!r}")
    validation.check_activation(hidden, hidden=True)  # even with no hidden layer: a typo
    validation.check_activation(output, hidden=False)
    if init == "auto":
        init = "he" if hidden in ("relu", "leaky_relu") else "xavier"
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; valid: {['auto', *INITIALIZERS]}")
    if output == "softmax" and sizes[-1] == 1:
        raise ValueError(
            f"a softmax over 1 output is the constant 1 and cannot learn (sizes {sizes}): use "
            f"output='sigmoid' with 1 output for two classes, or softmax with K >= 2 outputs"
        )
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(validation.int_in_range(key, "key", 0, 2**32, high_text="2**32"))
    key = validation.check_key(key)
    dtype = validation.float_dtype(dtype)
    activations = [hidden] * (len(sizes) - 2) + [output]
    shapes = list(zip(sizes[:-1], sizes[1:], strict=True))
    validation.check_schema(activations, shapes, [(fan_out,) for _, fan_out in shapes])
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple(
        Dense(
            W=INITIALIZERS[init](keys[i], shape, dtype),
            b=jnp.zeros((shape[1],), dtype),
            activation=activations[i],
        )
        for i, shape in enumerate(shapes)
    )
