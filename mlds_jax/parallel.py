"""Data parallelism with JAX's own SPMD machinery (``jax.sharding``), no home-made scheme.

With a mesh that has a "batch" axis, every minibatch is sharded along its rows
(``NamedSharding(mesh, P("batch"))``), parameters and optimizer state are replicated
(``P()``), and XLA inserts the all-reduce that sums the per-device gradient pieces:
dW = A_prevᵀ δ is a contraction over rows, so each device computes its rows' part.

A batch whose size is not a multiple of the device count is padded with zero rows that carry
zero weight: the row weights r_p = m_p / Σ m replace the 1/N of the average loss
(``mlds_jax.losses``), so the loss, δ = r ⊙ (A − Y) and every gradient are unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mlds_jax import validation

__all__ = ["BATCH_AXIS", "data_parallel_mesh", "pad_rows"]

BATCH_AXIS = "batch"


def data_parallel_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device JAX sees) with axis "batch".

    Equivalent to ``jax.make_mesh((jax.device_count(),), ("batch",))``.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_parallel_mesh needs at least one device, got none")
    for d in devices:
        if not isinstance(d, jax.Device):
            raise TypeError(
                f"devices must be jax.Device objects (e.g. jax.devices()), got "
                f"{type(d).__name__} {d!r}"
            )
    return jax.make_mesh((len(devices),), (BATCH_AXIS,), devices=devices)


def check_mesh(mesh) -> Mesh:
    """Validate a user mesh and return it with automatic (GSPMD) axis types.

    ``jax.make_mesh`` gives Explicit axes by default in this JAX; the library only places
    inputs and lets XLA propagate shardings, so it re-wraps the same devices as Auto axes.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (jax.make_mesh(...)), got {type(mesh).__name__}"
        )
    if BATCH_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh needs an axis named {BATCH_AXIS!r}; it has {mesh.axis_names}")
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, rows sharded on "batch")."""
    return NamedSharding(mesh, P()), NamedSharding(mesh, P(BATCH_AXIS))


def n_shards(mesh: Mesh) -> int:
    return int(mesh.shape[BATCH_AXIS])


def padded_size(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def pad_rows(X: Array, Y: Array, multiple: int) -> tuple[Array, Array, Array]:
    """Pad (X, Y) with zero rows to a multiple of ``multiple``; return the row weights.

    Args:
      X: (N, d).  Y: (N, K).  multiple: the device count.

    Returns:
      X (N', d), Y (N', K), row_weights (N',) = 1/N on real rows, 0 on padding; N' ≥ N.
    """
    multiple = validation.positive_int(multiple, "multiple")  # the device count
    for name, a in (("X", X), ("Y", Y)):
        if getattr(a, "ndim", None) != 2:
            raise ValueError(
                f"pad_rows needs 2-D {name} (N, columns), got shape {getattr(a, 'shape', None)}"
            )
    if not jnp.issubdtype(X.dtype, jnp.floating):  # the row weights 1/N take X's dtype
        raise TypeError(f"pad_rows needs floating-point X, got {X.dtype}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; they must match")
    if X.shape[0] == 0:
        raise ValueError("X is empty (0 rows): no row weights 1/N")
    n = X.shape[0]
    n_pad = padded_size(n, multiple) - n
    weights = jnp.concatenate([jnp.full((n,), 1.0 / n, X.dtype), jnp.zeros((n_pad,), X.dtype)])
    if n_pad:
        X = jnp.concatenate([X, jnp.zeros((n_pad, X.shape[1]), X.dtype)])
        Y = jnp.concatenate([Y, jnp.zeros((n_pad, Y.shape[1]), Y.dtype)])
    return X, Y, weights
