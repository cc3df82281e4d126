"""Shared test helpers: ONE tolerance rule, problem builders, independent reference formulas.

Everything named ``ref_*`` here is written from the notes' formulas with plain ``jnp``
primitives, without calling ``mlds_jax``'s activation or loss code, so a test comparing the
library with it is a comparison with an independent implementation.

The last section holds what the bad-input, edge, fault and determinism tests share (base
problems, pytree comparisons, the in-process CLI runner).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import traceback

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mlds_jax as mj
from mlds_jax import cli

# --- tolerances -------------------------------------------------------------------------------
# One rule for the whole suite, chosen by dtype; chex compares |a - b| <= atol + rtol * |b|
# entry by entry.  Measured over every hidden activation × (output, loss) pair × depth 1-4 ×
# N in {1, 7} × fused/general (342 architectures, 684 comparisons; the run's own maxima are
# printed in pytest's terminal summary by conftest.py).
#
# float64: the manual backward and jax.grad perform the same O(depth) matmuls and elementwise
#   products, only associated in a different order (e.g. (dL/dY ⊙ f') W^T vs. the transposed
#   JVP of the loss graph).  Each contributes a few ulp (eps64 = 2.2e-16).  Observed: max
#   |manual − autodiff| = 5e-16 on the grid (1.8e-15 over the hypothesis architectures, widths
#   up to 16), at most 1.1e-14 relative to the largest entry of the leaf.  rtol = 1e-10 leaves
#   four orders of magnitude of slack yet would still catch any missing factor (2, 1/N, 1/K) or
#   wrong sign; atol = 1e-12 only matters for entries that are ~0 through cancellation.
#
# float32: eps32 = 1.19e-7.  A first-layer gradient entry passes through `depth` (<= 4) matmuls
#   whose inner length is at most max(width, batch) (<= 7 on the grid) plus elementwise
#   transcendentals (1-2 ulp each), so a worst-case error relative to the scale of the summed
#   terms is ~ eps32 * depth * width = 1.2e-7 * 4 * 7 ~= 3.3e-6: rtol = 1e-5 is that bound
#   rounded up (x3).  Gradient entries are O(1e-2 .. 1); an entry that is small because it is a
#   difference of O(0.3) terms carries an absolute error ~ 3.3e-6 * 0.3 ~= 1e-6: atol = 1e-6.
#   Observed on the float32 grid: max |manual − autodiff| = 4.8e-7, max 2.3e-6 relative to the
#   leaf's largest entry; entry by entry, up to 2.3e-5 relative on entries ~1e-3 (where f'(z)
#   computed from f(z), e.g. 1 − tanh², loses ~eps32/f' relative accuracy), all inside
#   atol + rtol|b| with a margin of 25 (the largest atol needed at rtol = 1e-5 is 4e-8).  Never
#   widened to make a failure pass.
_TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-6},
}


def tolerances(dtype) -> dict[str, float]:
    """rtol/atol for comparing two computations of the same quantity in ``dtype``."""
    return dict(_TOLERANCES[np.dtype(dtype)])


def _leaf_dtype(tree) -> np.dtype:
    leaves = jax.tree_util.tree_leaves(tree)
    return np.result_type(*[np.asarray(x).dtype for x in leaves])


def assert_trees_close(a, b, dtype=None) -> None:
    """``chex.assert_trees_all_close`` with the suite's tolerance for ``dtype``.

    ``dtype`` defaults to the dtype of ``a``'s leaves; structures (including Dense's static
    activation names) must match exactly.
    """
    dtype = _leaf_dtype(a) if dtype is None else dtype
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_close(a, b, **tolerances(dtype))


def tree_errors(a, b) -> tuple[float, float]:
    """(max |a - b|, max over leaves of max|a - b| / max|b|): for measuring, not asserting."""
    abs_err, rel_err = 0.0, 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        d = float(np.max(np.abs(x - y))) if x.size else 0.0
        s = float(np.max(np.abs(y))) if y.size else 0.0
        abs_err = max(abs_err, d)
        if s > 0:
            rel_err = max(rel_err, d / s)
    return abs_err, rel_err


# --- the grid -------------------------------------------------------------------------------
#: (output activation, loss) pairs the whole-network tests run.  relu as an output has a kink at
#: 0, but with continuous random data no pre-activation is exactly 0 (probability zero), so
#: jax.grad and relu_prime agree there (both use the sub-gradient 0 at the kink anyway).
OUTPUT_LOSS_PAIRS: tuple[tuple[str, str], ...] = (
    ("identity", "mse"),
    ("identity", "half_squared_error"),
    ("sigmoid", "mse"),
    ("sigmoid", "half_squared_error"),
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
    ("softmax", "mse"),
    ("tanh", "mse"),
    ("relu", "mse"),
)

#: Fixed layer widths so that eager op compilations are shared across the grid (each new
#: (op, shape) pair costs an XLA compilation): a network of depth d has sizes
#: [N_IN, HIDDEN_WIDTH × (d − 1), N_OUT].  N_OUT ≠ N_IN keeps the output W non-square, so a
#: transposed W would fail on shape as well as on value; the hypothesis test varies all widths.
N_IN, HIDDEN_WIDTH, N_OUT = 4, 4, 3


def grid_sizes(depth: int, n_out: int = N_OUT) -> list[int]:
    return [N_IN, *([HIDDEN_WIDTH] * (depth - 1)), n_out]


#: Largest manual-vs-autodiff differences seen in this run, by dtype name: the conftest prints
#: them in the terminal summary (the numbers the tolerance comment above quotes).
ERROR_LOG: dict[str, dict[str, object]] = {}


def record_errors(a, b, label: str) -> None:
    """Log max |a − b| and the leaf-normalised max |a − b| / max|b| of two gradient trees."""
    abs_err, rel_err = tree_errors(a, b)
    name = str(_leaf_dtype(b))
    log = ERROR_LOG.setdefault(name, {"abs": 0.0, "rel": 0.0, "n": 0, "abs_at": "", "rel_at": ""})
    log["n"] += 1
    if abs_err >= log["abs"]:
        log["abs"], log["abs_at"] = abs_err, label
    if rel_err >= log["rel"]:
        log["rel"], log["rel_at"] = rel_err, label


# --- data builders --------------------------------------------------------------------------
# Data are drawn with NumPy, not jax.random: every new shape handed to jax.random.normal costs
# an XLA compilation of the threefry kernels (~0.5 s each), which would dominate the suite.
def np_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a jax.random key (or an int)."""
    if isinstance(key, int | np.integer):
        return np.random.default_rng(int(key))
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def make_params(key, sizes, hidden: str, output: str, dtype=jnp.float64, bias_scale=0.1):
    """Dense layers with W ~ N(0, 1/fan_in) (LeCun scale) and b ~ N(0, bias_scale²).

    Built directly (init_mlp has its own tests) so that the biases are non-zero and the bias
    gradients are exercised.
    """
    rng = np_rng(key)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        W = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        b = bias_scale * rng.standard_normal(fan_out)
        act = output if i == len(sizes) - 2 else hidden
        layers.append(mj.Dense(W=jnp.asarray(W, dtype), b=jnp.asarray(b, dtype), activation=act))
    return tuple(layers)


def make_targets(rng: np.random.Generator, loss: str, n: int, K: int, dtype, targets="default"):
    """Targets valid for ``loss`` (see :func:`make_problem`)."""
    if loss in ("mse", "half_squared_error"):
        return jnp.asarray(rng.standard_normal((n, K)), dtype)
    if loss == "binary_cross_entropy":
        kind = "soft" if targets == "default" else targets
        if kind == "soft":
            return jnp.asarray(rng.uniform(size=(n, K)), dtype)
        if kind == "hard":
            return jnp.asarray(rng.integers(0, 2, size=(n, K)), dtype)
        raise ValueError(targets)
    if loss == "cross_entropy":
        kind = "labels" if targets == "default" else targets
        labels = rng.integers(0, K, size=n)
        if kind == "labels":
            return jnp.asarray(labels, jnp.int32)
        if kind == "onehot":
            return jnp.asarray(np.eye(K)[labels], dtype)
        if kind == "soft":
            logits = 2.0 * rng.standard_normal((n, K))
            P = np.exp(logits - logits.max(axis=1, keepdims=True))
            return jnp.asarray(P / P.sum(axis=1, keepdims=True), dtype)
        raise ValueError(targets)
    raise ValueError(loss)


def make_problem(
    key,
    sizes,
    hidden: str,
    output: str,
    loss: str,
    n: int,
    dtype=jnp.float64,
    *,
    targets: str = "default",
    bias_scale: float = 0.1,
):
    """Random (params, X, Y) with targets valid for ``loss``; X ~ N(0, 1), shape (n, sizes[0]).

    Targets:

    * "mse" / "half_squared_error": real, N(0, 1), shape (n, K).
    * "binary_cross_entropy": "soft" (default, U(0, 1)) or "hard" (0/1 floats), (n, K).
    * "cross_entropy": "labels" (default, int32 in [0, K), shape (n,)), "onehot" (n, K), or
      "soft" (each row a probability distribution).
    """
    rng = np_rng(key)
    params = make_params(rng.integers(2**31), sizes, hidden, output, dtype, bias_scale)
    X = jnp.asarray(rng.standard_normal((n, sizes[0])), dtype)
    Y = make_targets(rng, loss, n, sizes[-1], dtype, targets)
    return params, X, Y


def targets_2d(Y, loss: str, K: int, dtype) -> jax.Array:
    """Y as the (N, K) float matrix the formulas use (one-hot rows for integer labels)."""
    Y = jnp.asarray(Y)
    if loss == "cross_entropy" and Y.ndim == 1:
        return jax.nn.one_hot(Y, K, dtype=dtype)
    return Y.reshape(Y.shape[0], -1).astype(dtype)


# --- independent reference formulas ---------------------------------------------------------
def _ref_softmax(Z):
    E = jnp.exp(Z - jnp.max(Z, axis=-1, keepdims=True))
    return E / jnp.sum(E, axis=-1, keepdims=True)


#: f(Z) written from the definitions (valid for the moderate inputs the tests use).
REF_ACTIVATIONS = {
    "identity": lambda Z: Z,
    "sigmoid": lambda Z: 1 / (1 + jnp.exp(-Z)),
    "tanh": lambda Z: (jnp.exp(Z) - jnp.exp(-Z)) / (jnp.exp(Z) + jnp.exp(-Z)),
    "relu": lambda Z: jnp.where(Z > 0, Z, jnp.zeros_like(Z)),
    "leaky_relu": lambda Z: jnp.where(Z >= 0, Z, 0.01 * Z),
    "softplus": lambda Z: jnp.log(1 + jnp.exp(Z)),
    "softmax": _ref_softmax,
}


def ref_loss_from_A(A, Y, loss: str):
    """L(Ŷ = A, Y) written in terms of the output A, Y an (N, K) float matrix.

    mse: mean over all N·K entries of (A − Y)² (MLDS notes);  half_squared_error:
    (1/N) Σ_p ½‖a_p − y_p‖² (lecture, sigmoid notes);  binary_cross_entropy:
    (1/N) Σ_p Σ_k −[y ln a + (1 − y) ln(1 − a)] (BCE notes);  cross_entropy:
    (1/N) Σ_p −Σ_k y ln a (lecture).
    """
    N = A.shape[0]
    if loss == "mse":
        return jnp.mean((A - Y) ** 2)
    if loss == "half_squared_error":
        return jnp.sum(0.5 * (A - Y) ** 2) / N
    if loss == "binary_cross_entropy":
        return -jnp.sum(Y * jnp.log(A) + (1 - Y) * jnp.log(1 - A)) / N
    if loss == "cross_entropy":
        return -jnp.sum(Y * jnp.log(A)) / N
    raise ValueError(loss)


def ref_forward_from(params, l: int, Z_l):
    """Ŷ as a function of the pre-activation Z^{(l)} (1-based layer l): A^{(l)} = f_l(Z^{(l)}),
    then Z^{(j)} = A^{(j-1)} W^{(j)} + b^{(j)}, A^{(j)} = f_j(Z^{(j)}) for j = l+1 .. L."""
    A = REF_ACTIVATIONS[params[l - 1].activation](Z_l)
    for layer in params[l:]:
        A = REF_ACTIVATIONS[layer.activation](A @ layer.W + layer.b[None, :])
    return A


def ref_network_output(params, X, logits: bool = False):
    """Ŷ, or with ``logits`` the output pre-activation Z^{(L)}, from the reference formulas."""
    A = X
    for i, layer in enumerate(params):
        Z = A @ layer.W + layer.b[None, :]
        if logits and i == len(params) - 1:
            return Z
        A = REF_ACTIVATIONS[layer.activation](Z)
    return A


def ref_forward_Zs(params, X):
    """Every pre-activation Z^{(1)}, ..., Z^{(L)}, from the reference formulas."""
    Zs, A = [], X
    for layer in params:
        Z = A @ layer.W + layer.b[None, :]
        Zs.append(Z)
        A = REF_ACTIVATIONS[layer.activation](Z)
    return Zs


# --- the bad-input, edge, fault and determinism tests' shared helpers ---------------------------
# (test_validation, test_losses, test_network, test_backprop, test_autodiff, test_training,
# test_io_checkpoint, test_datasets, test_descent, test_parallel, test_cli)
F16, F32, F64 = np.float16, np.float32, np.float64
BF16 = np.dtype(ml_dtypes.bfloat16)


def cast_params(params, dtype):
    """Every leaf of ``params`` cast to ``dtype``."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), params)


def np_leaves(tree) -> list[np.ndarray]:
    """The leaves of ``tree`` as NumPy arrays, in pytree order."""
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def tree_is_finite(tree) -> bool:
    """No NaN or inf in any leaf (float16/bfloat16 leaves checked in float64)."""
    return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in np_leaves(tree))


@contextlib.contextmanager
def compilations():
    """Names of the XLA backend compilations (jax.monitoring events) inside the block."""
    names: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def bit_identical(a, b) -> bool:
    """Same leaves, dtypes, shapes and bytes (so −0.0 != 0.0 and NaN payloads count)."""
    la, lb = np_leaves(a), np_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(la, lb, strict=True)
    )


def assert_reported_once(exc: BaseException) -> str:
    """The exception's traceback as Python prints it holds its message exactly once: no
    chained exception ("During handling of the above exception ...", "The above exception
    was the direct cause ...") repeating it.  Returns the formatted text."""
    text = "".join(traceback.format_exception(exc))
    assert "During handling of the above exception" not in text, text
    assert "The above exception was the direct cause" not in text, text
    assert text.count(str(exc)) == 1, text
    return text


def one_error_line(err: str) -> str:
    """The single line of a CLI's stderr (no traceback), returned for matching."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def patching():
    """``pytest.MonkeyPatch.context()``, not the ``monkeypatch`` fixture: conftest clears every
    JAX cache around tests that use the fixture (so that nothing traced with patched maths
    outlives them), which would make every later test compile again.  The patches here
    trace nothing that is cached: they run op by op (a wrong dA), or patch I/O, the CLI's
    fit, or fit's per-call epoch factory (each fit jits a new function anyway)."""
    return pytest.MonkeyPatch.context()


def run_cli(argv) -> tuple[int, str, str]:
    """``cli.main(argv)`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:
            rc = 0 if exc.code is None else exc.code
    return rc, out.getvalue(), err.getvalue()


def one_layer(W, output, dtype):
    """A one-layer network with weights ``W`` (n_in, K), zero bias and ``output``."""
    W = jnp.asarray(W, dtype)
    return (mj.Dense(W=W, b=jnp.zeros((W.shape[1],), dtype), activation=output),)


#: The base problems: (hidden, output, loss, n_out).  X has 3 features, N = 6 rows.
BASES = {
    "ce": ("tanh", "softmax", "cross_entropy", 3),
    "bce": ("tanh", "sigmoid", "binary_cross_entropy", 1),
    "mse": ("tanh", "identity", "mse", 3),
}


def base_problem(kind: str, n: int = 6, dtype=F32):
    """(params, X, Y, loss): params in ``dtype``, X float64 numpy (the library casts it),
    Y raw numpy (int labels for "ce", (N, 1) probabilities for "bce", (N, 3) reals for "mse").
    The shapes are shared on purpose: op by op, every new shape costs compilations."""
    hidden, output, loss, n_out = BASES[kind]
    params, X, Y = make_problem(0, [3, 4, n_out], hidden, output, loss, n, jnp.float64)
    return cast_params(params, dtype), np.asarray(X), np.asarray(Y), loss


def replace_layer(i, **changes):
    """An edit (params, X, Y, loss) -> (params', X, Y, loss) replacing fields of layer i."""

    def edit(p, X, Y, loss):
        p = list(p)
        p[i] = dataclasses.replace(p[i], **changes)
        return tuple(p), X, Y, loss

    return edit


def set_leaf(i, name, idx, value):
    """An edit (params, X, Y, loss) -> (...) setting ``params[i].<name>[idx] = value``."""

    def edit(p, X, Y, loss):
        leaf = getattr(p[i], name)
        return replace_layer(i, **{name: leaf.at[idx].set(value)})(p, X, Y, loss)

    return edit
