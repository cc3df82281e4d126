"""The reference side of every cross-check: jax.grad of the same loss, and a gradcheck report.

``autodiff_grads`` differentiates :func:`mlds_jax.loss` with ``jax.grad``; ``check_grads``
compares the hand-derived gradients with it and with central finite differences, per leaf,
in float64, and gives a verdict.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mlds_jax import core, validation
from mlds_jax.layers import Params

__all__ = ["GradCheckReport", "LeafCheck", "autodiff_grads", "check_grads"]

_autodiff_grads_jit = jax.jit(jax.grad(core.batch_loss), static_argnums=3)


def autodiff_grads(params: Params, X: ArrayLike, Y: ArrayLike, loss: str) -> Params:
    """``jax.grad`` of :func:`mlds_jax.loss` with respect to params: the reference gradients.

    Args and returns as :func:`mlds_jax.manual_grads` (same pytree structure as ``params``).
    """
    X, Y = validation.check_batch(params, X, Y, loss)
    return _autodiff_grads_jit(params, X, Y, loss)


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One leaf's comparison.

    Attributes:
      name: e.g. "layer 1 W".
      shape: the leaf's shape.
      max_abs_autodiff: max |manual − jax.grad| over the leaf.
      max_rel_autodiff: that divided by max |jax.grad| (inf if the gradient is all zero and
        the difference is not).
      max_abs_fd: max |manual − central difference| over the checked entries.
      max_rel_fd: that divided by max |central difference| over those entries.
      n_fd: how many entries were checked by finite differences.
      ok: both comparisons within tolerance.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_autodiff: float
    max_rel_autodiff: float
    max_abs_fd: float
    max_rel_fd: float
    n_fd: int
    ok: bool


@dataclasses.dataclass(frozen=True)
class GradCheckReport:
    """Per-leaf comparison of manual vs jax.grad vs central finite differences.

    ``ok`` is the verdict; ``str(report)`` is a table.
    """

    loss: str
    dtype: str
    loss_value: float
    leaves: tuple[LeafCheck, ...]
    rtol_autodiff: float
    rtol_fd: float

    @property
    def ok(self) -> bool:
        return all(leaf.ok for leaf in self.leaves)

    @property
    def max_abs_autodiff(self) -> float:
        return max(leaf.max_abs_autodiff for leaf in self.leaves)

    @property
    def max_rel_autodiff(self) -> float:
        return max(leaf.max_rel_autodiff for leaf in self.leaves)

    def __str__(self) -> str:
        head = f"gradient check: loss={self.loss!r} dtype={self.dtype} L={self.loss_value:.6g}\n"
        cols = ("leaf", "shape", "|man-auto|", "rel", "|man-fd|", "rel", "fd n", "ok")
        rows = [cols] + [
            (
                leaf.name,
                "x".join(map(str, leaf.shape)),
                f"{leaf.max_abs_autodiff:.2e}",
                f"{leaf.max_rel_autodiff:.2e}",
                f"{leaf.max_abs_fd:.2e}",
                f"{leaf.max_rel_fd:.2e}",
                str(leaf.n_fd),
                "yes" if leaf.ok else "NO",
            )
            for leaf in self.leaves
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        verdict = (
            f"PASS: manual gradients match jax.grad (rtol {self.rtol_autodiff:g}) and "
            f"central differences (rtol {self.rtol_fd:g})"
            if self.ok
            else "FAIL: some leaves disagree (rows marked NO)"
        )
        return head + "\n".join(lines) + "\n" + verdict

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "dtype": self.dtype,
            "loss_value": self.loss_value,
            "ok": self.ok,
            "leaves": [dataclasses.asdict(leaf) for leaf in self.leaves],
        }


def _leaf_names(params: Params) -> list[str]:
    return [f"layer {i + 1} {name}" for i in range(len(params)) for name in ("W", "b")]


def _rel(abs_err: float, scale: float) -> float:
    if scale > 0:
        return abs_err / scale
    return 0.0 if abs_err == 0 else float("inf")


def check_grads(
    params: Params,
    X: ArrayLike,
    Y: ArrayLike,
    loss: str,
    *,
    fused: bool = True,
    max_fd_entries: int = 24,
    eps: float = 1e-6,
    rtol_autodiff: float = 1e-9,
    rtol_fd: float = 1e-5,
    seed: int = 0,
) -> GradCheckReport:
    """Compare ``manual_grads`` with ``jax.grad`` and central differences, per leaf, in float64.

    Everything is cast to float64 (x64 is switched on inside this call only).  For each leaf:
    the max absolute and relative difference manual vs jax.grad over all entries, and manual vs
    the central difference (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε over up to ``max_fd_entries``
    entries (all of them for small leaves, an even spread otherwise).

    A leaf passes when |manual − jax.grad| ≤ rtol_autodiff · max(max|jax.grad|, 1e-3) and
    |manual − fd| ≤ rtol_fd · max(max|fd|, 1e-3): relative, with a floor so that an all-zero
    gradient (a dead relu unit) is judged by absolute error.  Central differences in float64
    have truncation error O(ε²) and round-off O(1e-16/ε), ~1e-10 here, far under rtol_fd.

    Args:
      params, X, Y, loss: as :func:`mlds_jax.manual_grads`.
      fused: check the fused (True) or general chain-rule (False) output δ.
      max_fd_entries: finite-difference entries per leaf.
      eps: finite-difference step.
      rtol_autodiff, rtol_fd: tolerances of the verdict.
      seed: which entries are sampled for large leaves.

    Returns:
      A :class:`GradCheckReport`; ``print(report)`` shows the table, ``report.ok`` the verdict.
    """
    # same errors as the rest of the API; X as the other functions see it (cast to the
    # params' dtype).  Y keeps its precision: soft targets rounded to float32 would no longer
    # sum to 1 exactly, which the fused softmax/cross-entropy δ relies on.
    X, _ = validation.check_batch(params, X, Y, loss)
    if max_fd_entries < 0:
        raise ValueError(f"max_fd_entries must be >= 0, got {max_fd_entries}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        # already validated above: only the casts remain
        X64 = jnp.asarray(np.asarray(X), jnp.float64)
        Y64 = validation.prepare_targets(
            np.asarray(Y), loss, params[-1].W.shape[1], X64.shape[0], jnp.float64
        )
        value, manual = jax.jit(lambda p: core.value_and_grads(p, X64, Y64, loss, fused=fused))(p64)
        auto = jax.jit(jax.grad(lambda p: core.batch_loss(p, X64, Y64, loss)))(p64)
        loss_fn = jax.jit(lambda p: core.batch_loss(p, X64, Y64, loss))
        leaves_p, treedef = jax.tree_util.tree_flatten(p64)
        leaves_m = [np.asarray(a) for a in jax.tree_util.tree_leaves(manual)]
        leaves_a = [np.asarray(a) for a in jax.tree_util.tree_leaves(auto)]
        rng = np.random.default_rng(seed)
        rows = []
        for k, name in enumerate(_leaf_names(params)):
            m, a = leaves_m[k], leaves_a[k]
            abs_a = float(np.max(np.abs(m - a))) if m.size else 0.0
            scale_a = float(np.max(np.abs(a))) if a.size else 0.0
            n = m.size
            idx = (
                np.arange(n)
                if n <= max_fd_entries
                else np.sort(rng.choice(n, size=max_fd_entries, replace=False))
            )
            fd = np.empty(idx.size)
            base = np.asarray(leaves_p[k])
            for j, flat in enumerate(idx):
                vals = []
                for sign in (1.0, -1.0):
                    bumped = base.copy().reshape(-1)
                    bumped[flat] += sign * eps
                    new = list(leaves_p)
                    new[k] = jnp.asarray(bumped.reshape(base.shape))
                    vals.append(float(loss_fn(jax.tree_util.tree_unflatten(treedef, new))))
                fd[j] = (vals[0] - vals[1]) / (2 * eps)
            m_sel = m.reshape(-1)[idx]
            abs_fd = float(np.max(np.abs(m_sel - fd))) if idx.size else 0.0
            scale_fd = float(np.max(np.abs(fd))) if idx.size else 0.0
            ok = abs_a <= rtol_autodiff * max(scale_a, 1e-3) and abs_fd <= rtol_fd * max(
                scale_fd, 1e-3
            )
            rows.append(
                LeafCheck(
                    name,
                    tuple(m.shape),
                    abs_a,
                    _rel(abs_a, scale_a),
                    abs_fd,
                    _rel(abs_fd, scale_fd),
                    int(idx.size),
                    bool(ok),
                )
            )
        return GradCheckReport(loss, "float64", float(value), tuple(rows), rtol_autodiff, rtol_fd)
