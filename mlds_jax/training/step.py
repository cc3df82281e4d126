r"""One training step: gradients (hand-derived, ``jax.grad`` or a gradient source such as
DP-SGD), the optional (R1) weight penalty and the optax update, as a pure function and as a
compiled :class:`TrainStep`.

Contract of ``make_train_step(optimizer, loss, grads="manual")``: ``step(params, opt_state,
X, Y) -> (params, opt_state, metrics)``, compiled once per input shape; ``metrics["loss"]`` is
the loss *before* the update (the value whose gradient was applied).  With ``optax.sgd(α)``
the update is exactly the notes' W ← W − α ∂L/∂W, equation (G1) (MLDS notes, "Gradient
descent"; sigmoid notes, w_{k+1} = w_k − α ∂C/∂w_k).  Optimizers are optax's; only the
gradients are hand-written.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol, cast

import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.typing import ArrayLike

from mlds_jax import core, parallel, validation
from mlds_jax.layers import Params
from mlds_jax.losses import default_loss_for, get_loss

__all__ = [
    "GRADS",
    "GradientSource",
    "TrainStep",
    "batch_metrics",
    "check_dp",
    "check_grads_name",
    "check_l2",
    "check_opt_state",
    "check_optimizer",
    "default_loss",
    "l2_penalty",
    "layout_hinted",
    "make_step_core",
    "make_train_step",
]

GRADS = core.GRAD_METHODS


class GradientSource(Protocol):
    """What ``make_train_step(dp=...)`` and :class:`mlds_jax.Trainer` accept as ``dp``: an object
    that computes a step's (loss, gradient) from a noise key, e.g. :class:`mlds_jax.DPSGD`
    (DP-SGD by ghost clipping; it lives with the extensions, which training never imports).

    ``value_and_grads(params, X, Y, loss, key, row_weights) -> (L, grads like params)``, pure
    and jit-able; ``training_callbacks() -> list`` of callbacks it brings to ``fit`` (e.g. the
    privacy accountant).  It must be hashable with equality by value: it is a constant of
    the compiled program.
    """

    def value_and_grads(self, params, X, Y, loss: str, key, row_weights) -> tuple[Array, Params]:
        """(L, ∂L/∂params) of the batch."""
        ...

    def training_callbacks(self) -> list:
        """Callbacks ``fit`` adds when training with this source."""
        ...


def default_loss(params: Params) -> str:
    """The loss for the output activation: softmax → cross_entropy, sigmoid → BCE, else mse."""
    return default_loss_for(params[-1].activation)


def check_grads_name(grads: str) -> None:
    if grads not in GRADS:
        raise ValueError(f"grads must be one of {list(GRADS)}, got {grads!r}")


def check_optimizer(optimizer) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.1)); "
            f"got {type(optimizer).__name__}"
        )


def check_l2(l2) -> float:
    """λ of (R1) as a finite float ≥ 0."""
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number >= 0, got {l2!r}")
    value = float(l2)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return value


def check_dp(dp) -> GradientSource | None:
    """``dp`` is None or a gradient source (:class:`mlds_jax.DPSGD`)."""
    if dp is not None and not callable(getattr(dp, "value_and_grads", None)):
        raise TypeError(f"dp must be None or an mlds_jax.DPSGD, got {type(dp).__name__}")
    return dp


def _leaf_signature(tree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(
        (getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves
    )


def check_opt_state(optimizer, params: Params, opt_state: Any, checked: dict | None = None) -> None:
    """``opt_state`` is ``optimizer.init(params)``'s kind of state: the same structure, and every
    leaf of the expected shape and dtype.  A clear error names the leaf instead of one from
    inside optax ("add got incompatible shapes").  With ``checked`` (a dict the caller keeps),
    each new (params, opt_state) signature is checked once."""
    signature = (_leaf_signature(params), _leaf_signature(opt_state))
    if checked is not None and signature in checked:
        return
    expected = jax.eval_shape(optimizer.init, params)
    if jax.tree_util.tree_structure(opt_state) != jax.tree_util.tree_structure(expected):
        raise TypeError(
            "opt_state does not match this step's optimizer and params: pass "
            f"optimizer.init(params) of the same optimizer; got {type(opt_state).__name__}"
        )
    got = jax.tree_util.tree_leaves_with_path(opt_state)
    for (path, want), (_, leaf) in zip(
        jax.tree_util.tree_leaves_with_path(expected), got, strict=True
    ):
        shape, dtype = tuple(getattr(leaf, "shape", ())), getattr(leaf, "dtype", None)
        if shape != tuple(want.shape) or (dtype is not None and dtype != want.dtype):
            raise ValueError(
                f"opt_state leaf {jax.tree_util.keystr(path)} has shape {shape} and dtype "
                f"{dtype}; this optimizer and params expect {tuple(want.shape)} {want.dtype}: "
                "pass optimizer.init(params) for these params (was the state built for "
                "another network?)"
            )
    if checked is not None:
        if len(checked) >= 16:
            checked.clear()
        checked[signature] = True


#: A layer input A^(l−1) is stored transposed for the backward when it has at most this many
#: entries (see :func:`layout_hinted`).
MATERIALISE_TRANSPOSE_MAX_ELEMENTS = 65536


def layout_hinted(cache: core.ForwardCache) -> core.ForwardCache:
    """The same forward cache, each small layer input A^(l−1) passed through a materialised
    transpose: a memory-layout hint for XLA:CPU, not maths.

    (Aᵀ)ᵀ = A, so the backward computes the same products (bit for bit, checked in the tests);
    but XLA:CPU otherwise folds the transpose of (B2)'s A^(l−1)ᵀ δ into the dot as a
    contraction over rows, which it runs with Eigen, while a materialised Aᵀ makes it a plain
    (d_in, N) @ (N, d_out) product for its YNNPACK kernels.  Measured on 2 cores (whole
    epochs, interleaved): 3-12% faster epochs on digits (batch 32-256); for larger
    activations (MNIST-size) the copy costs about what it saves, so they keep the plain form.
    Ŷ = A^(L) is not touched.
    """
    last = len(cache.As) - 1
    As = tuple(
        jax.lax.optimization_barrier(A.T).T
        if l < last and A.size <= MATERIALISE_TRANSPOSE_MAX_ELEMENTS
        else A
        for l, A in enumerate(cache.As)
    )
    return core.ForwardCache(cache.Zs, As)


def _value_grads_output(params, X, Y, loss, row_weights, grads: str, fused: bool):
    """(L, ∂L/∂params, Ŷ) from one forward pass, manual (with the layout hint) or autodiff."""
    if grads == "manual":
        cache = core.forward_cache(params, X)
        value = core.loss_value(cache, Y, loss, row_weights)
        hinted = layout_hinted(cache)
        g = core.backward(params, hinted, Y, loss, fused=fused, row_weights=row_weights).grads
        return value, g, cache.As[-1]
    return core.value_grads_output(params, X, Y, loss, row_weights=row_weights, method=grads)


def batch_metrics(loss: str, value: Array, A: Array, Y: Array, row_weights=None) -> dict:
    """Loss and, for classification, accuracy, averaged with the row weights (default 1/N).

    Class targets (softmax): a row is right when argmax Ŷ = argmax Y.  Probability targets
    (sigmoid outputs, one or more labels): a row is right when every label is (ŷ > 0.5) =
    (y > 0.5), exact-match accuracy as scikit-learn's ``score``; with several labels
    "label_accuracy" is the fraction of right labels as well.
    """
    metrics = {"loss": value}
    target = get_loss(loss).targets
    if target == "real":
        return metrics

    def mean(x):
        x = x.astype(A.dtype)
        return jnp.mean(x) if row_weights is None else jnp.sum(x * row_weights.astype(A.dtype))

    if target == "class":
        metrics["accuracy"] = mean(jnp.argmax(A, axis=-1) == jnp.argmax(Y, axis=-1))
        return metrics
    right = (A > 0.5) == (Y > 0.5)  # (N, K) labels
    metrics["accuracy"] = mean(jnp.all(right, axis=-1))  # exact match
    if A.shape[-1] > 1:
        metrics["label_accuracy"] = mean(jnp.mean(right.astype(A.dtype), axis=-1))
    return metrics


def l2_penalty(params: Params, l2: ArrayLike, total: ArrayLike) -> tuple[Array, Params]:
    r"""scikit-learn's L2 term and its gradient, equation (R1).

    .. math:: R = \frac{\lambda}{2S}\sum_l \|W^{(l)}\|_F^2, \qquad
              \frac{\partial R}{\partial W^{(l)}} = \frac{\lambda}{S} W^{(l)}, \qquad
              \frac{\partial R}{\partial b^{(l)}} = 0

    Args:
      params: L layers.
      l2: λ ≥ 0, a scalar (a Python float or a traced array: data, not a constant).
      total: S > 0, the batch's total sample weight (its number of rows when unweighted).

    Returns:
      (R scalar, ∂R/∂params like params: λW^(l)/S for the weights, zeros for the biases).
    """
    scale = l2 / total
    value = jnp.asarray(0.5 * scale * sum(jnp.sum(layer.W * layer.W) for layer in params))  # (R1)
    grads = [
        dataclasses.replace(layer, W=scale * layer.W, b=jnp.zeros_like(layer.b))  # (R1)
        for layer in params
    ]
    # mirror the params' container (a list stays a list), as the gradients do
    return value, cast(Params, grads if isinstance(params, list) else tuple(grads))


def make_step_core(
    update: Callable, loss: str, grads: str, fused: bool = True, dp: GradientSource | None = None
) -> Callable:
    """``step_core(params, opt_state, X, Y, row_weights, l2, total, key)``, pure.

    ``update`` is the optimizer's ``update``.  ``row_weights`` (N,) sum to 1 over the batch
    (None: 1/N); ``l2`` (None: no penalty) and ``total`` = S, the batch's total sample weight,
    give the (R1) term.  With ``dp`` the gradient is ``dp.value_and_grads`` (DP-SGD's
    (D1)-(D3)) with noise key ``key`` (rows with w_n > 0 each count once).
    """

    def step_core(params, opt_state, X, Y, row_weights=None, l2=None, total=None, key=None):
        if dp is None:
            value, g, A = _value_grads_output(params, X, Y, loss, row_weights, grads, fused)
        else:
            assert key is not None, "a DP-SGD step needs its noise key"
            value, g = dp.value_and_grads(params, X, Y, loss, key, row_weights)
            A = core.forward(params, X)  # Ŷ for the accuracy metric
        if l2 is not None:
            if total is None:
                total = (
                    jnp.asarray(X.shape[0], X.dtype)
                    if row_weights is None
                    else jnp.sum(row_weights > 0).astype(X.dtype)
                )
            penalty, g_penalty = l2_penalty(params, l2, total)  # (R1)
            value, g = value + penalty, jax.tree_util.tree_map(jnp.add, g, g_penalty)
        updates, opt_state = update(g, opt_state, params)
        params = optax.apply_updates(params, updates)  # (G1): sgd's update is −α ∂L/∂W
        return params, opt_state, batch_metrics(loss, value, A, Y, row_weights)

    return step_core


class TrainStep:
    """A compiled train step: ``step(params, opt_state, X, Y) -> (params, opt_state, metrics)``.

    With DP-SGD settings (``make_train_step(..., dp=DPSGD(C, σ))``) the noise key is required:
    ``step(params, opt_state, X, Y, key=k)``.  ``row_weights=w`` (N,) weights the examples,
    L = Σ_n w_n ℓ_n (L1) (zero rows are padding; with DP-SGD rows with w_n > 0 count once).

    Attributes:
      jitted: the underlying ``jax.jit`` function (no input checks), for tight loops:
        ``jitted(params, opt_state, X, Y)`` (with dp: ``jitted(params, opt_state, X, Y, None,
        key)``); with a mesh ``jitted(params, opt_state, X, Y, w)`` with row weights ``w``
        (see :func:`mlds_jax.parallel.pad_rows`).
      trace_count: how many times it has been traced (compiled once per input shape).
      mesh: the data-parallel mesh, or None.
      l2: the (R1) weight penalty λ (0: none).
      dp: the :class:`mlds_jax.DPSGD` settings, or None.
    """

    def __init__(
        self,
        optimizer,
        loss: str,
        grads: str,
        *,
        fused: bool,
        check_inputs: bool,
        mesh=None,
        l2: float = 0.0,
        dp: GradientSource | None = None,
    ):
        self.optimizer, self.loss, self.grads = optimizer, loss, grads
        self.check_inputs = check_inputs
        self.trace_count = 0
        self.l2, self.dp = l2, dp
        self._checked_states: dict = {}
        self.mesh = None if mesh is None else parallel.check_mesh(mesh)
        step_core = make_step_core(optimizer.update, loss, grads, fused, dp)
        penalty = l2 if l2 > 0 else None  # l2 = 0: the plain step, bit for bit

        def traced(params, opt_state, X, Y, row_weights=None, key=None):
            self.trace_count += 1  # Python side effect: runs only while tracing
            return step_core(params, opt_state, X, Y, row_weights, penalty, None, key)

        if self.mesh is None:
            self.jitted = jax.jit(traced)
        else:
            rep, rows = parallel.shardings(self.mesh)
            self._shardings = rep, rows
            self.jitted = jax.jit(
                traced, in_shardings=(rep, rep, rows, rows, rows), out_shardings=(rep, rep, rep)
            )

    def __call__(
        self,
        params: Params,
        opt_state: Any,
        X: ArrayLike,
        Y: ArrayLike,
        *,
        key: ArrayLike | None = None,
        row_weights: ArrayLike | None = None,
    ):
        if self.dp is not None and key is None:
            raise ValueError(
                "this train step does DP-SGD: pass its noise key, step(params, opt_state, X, Y, "
                "key=jax.random.key(seed)), a new one for every step"
            )
        if self.dp is None and key is not None:
            raise ValueError("key is only used by a DP-SGD step (make_train_step(..., dp=...))")
        if self.check_inputs:
            X, Y = validation.check_batch(params, X, Y, self.loss)
            check_opt_state(self.optimizer, params, opt_state, self._checked_states)
        if key is not None:
            key = validation.check_key(key)
        if row_weights is not None:
            if self.mesh is not None:
                raise ValueError("row_weights with a mesh: the step pads and weights the rows")
            X = jnp.asarray(X)
            row_weights = validation.check_row_weights(row_weights, X.shape[0], X.dtype)
        if self.mesh is None:
            if key is None and row_weights is None:
                return self.jitted(params, opt_state, X, Y)
            return self.jitted(params, opt_state, X, Y, row_weights, key)
        rep, rows = self._shardings
        X, Y, w = parallel.pad_rows(jnp.asarray(X), jnp.asarray(Y), parallel.n_shards(self.mesh))
        params, opt_state = jax.device_put((params, opt_state), rep)
        X, Y, w = jax.device_put((X, Y, w), rows)
        return self.jitted(params, opt_state, X, Y, w)

    def __repr__(self) -> str:
        return f"TrainStep(loss={self.loss!r}, grads={self.grads!r}, mesh={self.mesh})"


def make_train_step(
    optimizer: optax.GradientTransformation,
    loss: str,
    grads: str = "manual",
    *,
    fused: bool = True,
    check_inputs: bool = True,
    mesh=None,
    l2: float = 0.0,
    dp: GradientSource | None = None,
) -> TrainStep:
    """Build a jit-compiled training step.

    Args:
      optimizer: any ``optax.GradientTransformation``; ``optax.sgd(α)`` is the notes' rule
        W ← W − α ∂L/∂W, equation (G1).
      loss: loss name (see ``mlds_jax.losses.LOSSES``).
      grads: "manual" (hand-derived backprop) or "autodiff" (``jax.grad``).
      fused: use the simplified output δ for matched output/loss pairs (manual only).
      check_inputs: validate (params, X, Y) on the host before each call (shapes, labels,
        finiteness) and the optimizer state against ``optimizer.init(params)`` (structure,
        every leaf's shape and dtype; once per new signature).  ``step.jitted`` skips them.
      mesh: optional ``jax.sharding.Mesh`` with a "batch" axis: the batch is sharded along
        its rows over the mesh, params and optimizer state are replicated, and XLA reduces
        the gradients; a batch that does not divide evenly is padded with zero-weight rows.
      l2: λ ≥ 0, scikit-learn's ``alpha``: the step minimises L + λ/(2S) Σ_l ‖W^(l)‖²_F,
        equation (R1), with S the number of rows of the batch; biases are not penalised.
        ``metrics["loss"]`` then includes the penalty (as scikit-learn's ``loss_``).  0 (the
        default) is the plain step, bit for bit.
      dp: optional :class:`mlds_jax.DPSGD` (clip norm C, noise multiplier σ): the gradient
        is DP-SGD's (D1)-(D3) by ghost clipping and the step then requires ``key=`` (a fresh
        ``jax.random`` key per step).  With l2 the (R1) gradient is added after the noise (it
        does not depend on the data).  Not with a mesh.

    Returns:
      A :class:`TrainStep`; initialise the optimizer state with ``optimizer.init(params)``.

    Example:
      >>> step = mj.make_train_step(optax.sgd(0.1), "cross_entropy")
      >>> opt_state = optax.sgd(0.1).init(params)
      >>> params, opt_state, metrics = step(params, opt_state, X, y)
      >>> dp_step = mj.make_train_step(optax.sgd(0.1), "cross_entropy", dp=mj.DPSGD(1.0, 1.1))
      >>> params, opt_state, metrics = dp_step(params, opt_state, X, y, key=jax.random.key(0))
    """
    get_loss(loss)
    check_grads_name(grads)
    check_optimizer(optimizer)
    l2 = check_l2(l2)
    dp = check_dp(dp)
    if dp is not None and mesh is not None:
        raise ValueError("dp with a mesh is not supported: pass one or the other")
    return TrainStep(
        optimizer, loss, grads, fused=fused, check_inputs=check_inputs, mesh=mesh, l2=l2, dp=dp
    )
