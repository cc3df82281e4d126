"""When may a compiled training program be reused?  Exactly when it is provably the same.

A compiled epoch closes over the optimizer's ``update``: a Python function that may read a
global, a schedule object's attribute or anything else when it is traced.  Reusing a program
because two optimizers *look* alike (same code, same closure cells) silently trains with stale
values when what they read has changed.  Instead, :class:`UpdateIdentity` traces ``update``
for the params at hand (a few milliseconds) and compares what it computes: the jaxpr (every
equation, literal, shape and dtype) and the values of its constants.  Two identities are equal
only when both updates compute the same function of their inputs, so a program compiled for
one is the program the other would compile.  Hyperparameters kept in the optimizer state
(``optax.inject_hyperparams``) are inputs, not constants: one program serves every value.

:class:`ProgramSpec` adds everything else the compiled chunk closes over (loss, gradient
source, validation, mesh, DP settings); the chunk is compiled by ``jax.jit`` with the spec as
a static argument, so JAX's own cache reuses a program exactly when the specs are equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import numpy as np

__all__ = ["Computation", "ProgramSpec", "UpdateIdentity"]


def _digest(value: Any) -> tuple:
    array = np.asarray(value)
    return (array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).hexdigest())


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class Computation:
    """What ``fn`` computes for arguments of given structures, shapes and dtypes.

    Equality and hash are those of (the traced jaxpr's text, the digests of its constants,
    the input and output tree structures).  If the jaxpr prints an object by its address
    (a host callback, say), the identity is equal only to itself: no reuse, always correct.
    ``fn`` is traced through a new function object every time: JAX caches traces by
    function, and a cached trace would describe what ``fn`` computed then, not now.

    Attributes:
      fn: the function described (what a program built from this identity calls).
    """

    __slots__ = ("_hash", "_key", "fn")

    def __init__(self, fn, *args):
        def fresh(*a):
            return fn(*a)

        closed, out = jax.make_jaxpr(fresh, return_shape=True)(*args)
        text = str(closed.jaxpr)
        self.fn = fn
        if " at 0x" in text:  # something printed by identity: only this object is known equal
            self._key: tuple = ("unique", id(self))
        else:
            self._key = (
                text,
                tuple(_digest(c) for c in closed.consts),
                jax.tree_util.tree_structure(args),
                jax.tree_util.tree_structure(out),
            )
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (
            self is other or (self._hash == other._hash and self._key == other._key)  # pyright: ignore[reportAttributeAccessIssue]
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hash={self._hash:#x})"


class UpdateIdentity(Computation):
    """What ``optimizer.update(grads, state, params)`` computes for params like ``params``
    (their structure, shapes and dtypes)."""

    __slots__ = ("optimizer",)

    def __init__(self, optimizer, params):
        abstract = _abstract(params)
        state = jax.eval_shape(optimizer.init, abstract)
        super().__init__(optimizer.update, abstract, state, abstract)
        self.optimizer = optimizer


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """Everything a compiled training chunk is a function of, besides its array arguments.

    Attributes:
      update: the optimizer's :class:`UpdateIdentity`.
      loss: loss name.
      grads: "manual" or "autodiff".
      has_val: whether the chunk evaluates validation data after every epoch.
      mesh: the data-parallel mesh, or None.
      dp: the gradient source (:class:`mlds_jax.DPSGD`), or None; equal by value.
      weighted: whether rows carry sample weights (a minibatch can then weigh 0 in all and
        is skipped); without them every planned minibatch has rows, and the program omits
        the skip (fewer kernels to compile, the same numbers).
      stopping: whether early stopping is on (the program tracks the best epoch only then).
    """

    update: UpdateIdentity
    loss: str
    grads: str
    has_val: bool
    mesh: Any = None
    dp: Any = None
    weighted: bool = True
    stopping: bool = True
