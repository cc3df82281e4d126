"""The one set of input validators behind the checked public API: clear errors before tracing.

Every public function validates its inputs here once, then calls the unchecked core
(:mod:`mlds_jax.core`).  Shape checks always run (shapes are static, even for tracers).
Value checks (finite entries, label ranges, target ranges) run whenever the array is
concrete, i.e. not a tracer inside a user's ``jit``/``grad``; parameters are checked for
finiteness on the device (one boolean comes back), the data on the host without a copy.

With ``deferred=True`` (:func:`check_batch`) the finiteness of params and X is not checked
here: the compiled computation checks it itself (:func:`all_finite`, fused into the same
program, one boolean back with the result) and :func:`raise_if_not_finite` runs the host checks
only when that flag is false, so a checked call makes no second pass over its inputs and the
errors are the same.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from mlds_jax.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from mlds_jax.layers import Dense, Params
from mlds_jax.losses import get_loss

__all__ = [
    "all_finite",
    "did_you_mean",
    "check_X",
    "device_array",
    "check_activation",
    "check_batch",
    "check_data",
    "check_finite",
    "check_key",
    "check_loss_output",
    "check_model",
    "check_params",
    "check_params_finite",
    "check_representable",
    "check_row_weights",
    "check_schema",
    "check_sizes",
    "float_dtype",
    "host_floats",
    "int_in_range",
    "is_concrete",
    "non_negative_float",
    "number_in_interval",
    "numeric_array",
    "positive_float",
    "positive_int",
    "prepare_targets",
    "raise_if_not_finite",
    "real_number",
    "reject_tracers",
    "require_x64",
    "x64_enabled",
]


# --- generic values -------------------------------------------------------------------------
def is_concrete(x) -> bool:
    """False for a tracer (inside a user's jit/grad/vmap): its values cannot be read."""
    return not isinstance(x, Tracer)


def reject_tracers(function: str, *values) -> None:
    """A TypeError for functions that cannot run under ``jax.jit``/``grad``/``vmap``."""
    leaves = jax.tree_util.tree_leaves(values)
    if any(isinstance(x, Tracer) for x in leaves):
        raise TypeError(
            f"{function} runs a Python loop on concrete arrays and cannot be "
            f"traced by jax.jit, jax.grad or jax.vmap; call it outside them"
        )


# The number validators: one wording per fault, everywhere.  A bool is never a number (True
# is an int to Python, but ``step_size=True`` is a mistake, not 1.0).
def real_number(value, name: str) -> float:
    """``value`` as a float: a Python or NumPy real, or a concrete 0-d real array.

    Raises:
      TypeError: ``"{name} must be a real number, got {value!r}"`` for bools, strings, None,
        arrays with more than one element and everything else.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    dtype = getattr(value, "dtype", None)
    if (
        getattr(value, "shape", None) == ()
        and dtype is not None
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
        and is_concrete(value)
    ):
        return float(value)
    raise TypeError(f"{name} must be a real number, got {value!r}")


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (bool and floats refused, even 2.0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def did_you_mean(word: str, options) -> str:
    """ "; did you mean 'x'?" naming the closest of ``options`` to a misspelt ``word``
    (:func:`difflib.get_close_matches`), or "" when none is close."""
    by_lower = {str(o).lower(): str(o) for o in options}  # case is a spelling too
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def int_in_range(value, name: str, low: int, high: int, *, high_text: str | None = None) -> int:
    """``value`` as an int in ``[low, high)`` (bool and floats refused); ``high_text`` is how
    the message writes ``high`` (e.g. ``"2**32"``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= value < high:
        raise ValueError(
            f"{name} must lie in [{low}, {high if high_text is None else high_text}), got {value}"
        )
    return int(value)


def positive_float(value, name: str) -> float:
    """``value`` as a finite float > 0."""
    v = real_number(value, name)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def non_negative_float(value, name: str, *, finite: bool = False) -> float:
    """``value`` as a float ≥ 0 (NaN refused; +inf too when ``finite``)."""
    v = real_number(value, name)
    if math.isnan(v) or v < 0.0 or (finite and math.isinf(v)):
        raise ValueError(
            f"{name} must be {'a finite number ' if finite else ''}>= 0, got {value!r}"
        )
    return v


def number_in_interval(
    value, name: str, low: float, high: float, *, closed: str = "neither"
) -> float:
    """``value`` as a float in the interval from ``low`` to ``high``; ``closed`` is
    "neither" (the open interval, the default), "left", "right" or "both"."""
    v = real_number(value, name)
    left, right = closed in ("left", "both"), closed in ("right", "both")
    inside = (v >= low if left else v > low) and (v <= high if right else v < high)
    if not inside:  # also for NaN
        interval = f"{'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return v


def float_dtype(dtype=None):
    """The parameter dtype: float32 by default, float64 when x64 is on; validates floats."""
    if dtype is None:
        # float64 iff jax_enable_x64 (read on the host: no device work, nothing compiled)
        return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dt}")
    return dt


def x64_enabled() -> bool:
    """Whether JAX's x64 mode is on (float64 arrays stay float64)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def require_x64(dtype, what: str, instead: str = "dtype=np.float32") -> None:
    """The one float64 guard: a ValueError when ``dtype`` is float64 and x64 is off (JAX
    would silently make float32 arrays of it).  ``what`` starts the message."""
    if np.dtype(dtype) == np.float64 and not x64_enabled():
        raise ValueError(
            f"{what}: float64 parameters need JAX's x64 mode, which is off; enable it "
            f"(jax.config.update('jax_enable_x64', True)) or use {instead}"
        )


def check_key(key):
    """A new-style or legacy ``jax.random`` key; a clear TypeError for ints and the like."""
    if isinstance(key, int) or not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"key must be a jax.random key (jax.random.key(seed)); got {key!r}")
    return key


def check_sizes(sizes: Sequence[int]) -> list[int]:
    """``[n_in, h_1, ..., n_out]``: at least two ints ≥ 1."""
    if isinstance(sizes, (str, bytes)):
        raise TypeError(f"sizes must be a sequence of ints like [4, 8, 3], got {sizes!r}")
    try:
        sizes = list(sizes)
    except TypeError:
        raise TypeError(f"sizes must be a sequence of ints, got {sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least two layer sizes [n_in, ..., n_out], got {sizes!r}")
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"sizes[{i}] must be an int, got {s!r}")
        if s < 1:
            raise ValueError(f"every layer size must be >= 1; sizes[{i}] = {s}")
    return [int(s) for s in sizes]


def numeric_array(x, name: str) -> np.ndarray | jax.Array:
    """An array view of x for checks, or a TypeError for non-numeric input."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}")
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and friends
            raise TypeError(f"{name} must be a numeric array: {exc}") from None
    if not (jnp.issubdtype(x.dtype, jnp.number) or jnp.issubdtype(x.dtype, jnp.bool_)):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    return x


def device_array(x, dtype=None) -> jax.Array:
    """``x`` on the device, as ``dtype`` (canonical: float64 is float32 with x64 off).  A host
    (NumPy) array is cast on the host and transferred, with no device op to compile (a
    ``jnp.asarray`` of a NumPy array is a compiled copy, one per shape in a process);
    anything else goes through ``jnp.asarray`` and, if needed, ``astype``."""
    if isinstance(x, np.ndarray | np.generic):
        arr = np.asarray(x)
        if dtype is not None:
            want = jax.dtypes.canonicalize_dtype(dtype)
            if arr.dtype != want:
                arr = arr.astype(want)
        return jax.device_put(arr, may_alias=False)  # a copy: later writes to x are not seen
    out = jnp.asarray(x)
    return out if dtype is None or out.dtype == dtype else out.astype(dtype)


def host_floats(x) -> np.ndarray:
    """x on the host without a copy when it is float32/float64 already (a 60000×784 float32
    X is checked in place rather than as a 376 MB float64 copy); other dtypes as float64."""
    arr = np.asarray(x)
    if arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float64)


def check_finite(arr: np.ndarray, name: str) -> None:
    """ValueError naming the count and the first NaN/inf of ``arr``; one pass when clean."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: the slow path says which
        if arr.size and math.isfinite(arr.sum(dtype=np.float64)):
            return
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf); "
            f"first {arr[idx]} at index {idx}"
        )


def check_representable(arr: np.ndarray, dtype, name: str) -> None:
    """Finite values that the cast to ``dtype`` would turn into ±inf (e.g. 1e39 in float32,
    7e4 in float16) are an error, not a silent overflow."""
    fmax = float(jnp.finfo(dtype).max)
    if arr.size == 0 or fmax >= np.finfo(np.float64).max or -fmax <= arr.min() <= arr.max() <= fmax:
        return  # two reductions on the happy path, no copy
    bad = np.abs(arr) > fmax
    idx = tuple(int(j) for j in np.argwhere(bad)[0])
    raise ValueError(
        f"{name} has {int(bad.sum())} value(s) too large for the parameters' "
        f"dtype {jnp.dtype(dtype).name} (max {fmax:.4g}); first {arr[idx]} at "
        f"index {idx}; rescale {name} or use a wider dtype"
    )


# --- parameters: the network schema ---------------------------------------------------------
def check_activation(name, *, hidden: bool, subject: str = "") -> str:
    """An activation name that a layer of this role may use.

    Args:
      name: the name to check.
      hidden: whether the layer is a hidden one (hidden layers take only the element-wise
        activations, :data:`~mlds_jax.activations.HIDDEN_ACTIVATIONS`).
      subject: the layer, for the message ("params[0]", "layer 1"); "" for an argument.

    Raises:
      ValueError: ``unknown hidden activation 'gelu' for params[0]; valid: [...]``, or
        ``activation 'softmax' of params[0] can only be used on the output layer; ...``.
    """
    role = "hidden" if hidden else "output"
    valid = HIDDEN_ACTIVATIONS if hidden else tuple(ACTIVATIONS)
    if isinstance(name, str) and name in valid:
        return name
    if hidden and isinstance(name, str) and name in ACTIVATIONS:
        of = f" of {subject}" if subject else ""
        raise ValueError(
            f"activation {name!r}{of} can only be used on the output layer; hidden layers "
            f"take one of {list(HIDDEN_ACTIVATIONS)}"
        )
    where = f" for {subject}" if subject else ""
    raise ValueError(f"unknown {role} activation {name!r}{where}; valid: {list(valid)}")


def _params_name(i: int, leaf: str | None) -> str:
    return f"params[{i}]" if leaf is None else f"params[{i}].{leaf}"


def check_schema(activations, W_shapes, b_shapes, dtypes=None, *, names=_params_name) -> list[int]:
    """The one network-schema check, for params in memory and in files alike.

    First every leaf is floating point and all share one dtype; then per layer i, in this
    order: W_i is 2-D, b_i has shape (fan_out_i,), the activation is known (and element-wise
    on a hidden layer), fan_in_i == fan_out_(i-1).

    Args:
      activations: one name per layer.
      W_shapes: per layer the shape of W, (fan_in, fan_out) (None if it has none).
      b_shapes: per layer the shape of b, (fan_out,).
      dtypes: optional, one dtype per leaf in the order W_0, b_0, W_1, ... (None: unknown).
      names: ``names(i, "W" | "b" | None)``: how messages name a leaf or a layer; default
        ``params[i].W`` / ``params[i]``.

    Returns:
      The layer sizes ``[n_in, h_1, ..., n_out]``.

    Raises:
      ValueError: a shape or activation problem.  TypeError: a dtype problem.
    """
    n = len(activations)
    if n == 0 or len(W_shapes) != n or len(b_shapes) != n:
        raise ValueError(
            f"a network needs one W, b and activation per layer (at least one layer); got "
            f"{len(W_shapes)} W, {len(b_shapes)} b and {n} activations"
        )
    if dtypes is not None:
        dtypes = [None if d is None else np.dtype(d) for d in dtypes]
        for j, dt in enumerate(dtypes):
            if dt is not None and not jnp.issubdtype(dt, jnp.floating):
                raise TypeError(f"{names(j // 2, 'Wb'[j % 2])} must be floating point, got {dt}")
        for j, dt in enumerate(dtypes):
            # one dtype for every leaf: mixing them would be promoted (or, under strict
            # promotion, fail inside XLA) instead of computing in the documented dtype
            if dt is not None and dtypes[0] is not None and dt != dtypes[0]:
                raise TypeError(
                    f"all parameters must share one dtype: {names(j // 2, 'Wb'[j % 2])} is "
                    f"{dt} but {names(0, 'W')} is {dtypes[0]} (mixed dtypes); cast them with "
                    f".astype"
                )
    sizes: list[int] = []
    for i, (act, W_shape, b_shape) in enumerate(zip(activations, W_shapes, b_shapes, strict=True)):
        W_shape = None if W_shape is None else tuple(W_shape)
        b_shape = None if b_shape is None else tuple(b_shape)
        if W_shape is None or len(W_shape) != 2:
            raise ValueError(f"{names(i, 'W')} must be 2-D (fan_in, fan_out), got shape {W_shape}")
        if b_shape != (W_shape[1],):
            raise ValueError(f"{names(i, 'b')} must have shape ({W_shape[1]},), got {b_shape}")
        check_activation(act, hidden=i < n - 1, subject=names(i, None))
        if i > 0 and sizes[-1] != W_shape[0]:
            raise ValueError(
                f"{names(i, 'W')} has fan_in {W_shape[0]} but {names(i - 1, None)} has "
                f"fan_out {sizes[-1]}"
            )
        if i == 0:
            sizes.append(int(W_shape[0]))
        sizes.append(int(W_shape[1]))
    return sizes


def check_params(params) -> None:
    """params is a non-empty tuple (or list) of Dense with chained shapes and one float dtype
    (:func:`check_schema`)."""
    if not isinstance(params, (tuple, list)) or len(params) == 0:
        raise TypeError(
            "params must be a non-empty tuple of Dense layers (from mlds_jax.init_mlp); "
            f"got {type(params).__name__}"
        )
    for i, layer in enumerate(params):
        if not isinstance(layer, Dense):
            raise TypeError(f"params[{i}] must be a Dense layer, got {type(layer).__name__}")
    check_schema(
        [layer.activation for layer in params],
        [getattr(layer.W, "shape", None) for layer in params],
        [getattr(layer.b, "shape", None) for layer in params],
        [getattr(leaf, "dtype", None) for layer in params for leaf in (layer.W, layer.b)],
    )


#: Parameters with at most this many entries are checked on the host (a copy of at most
#: 4 MiB from an accelerator, microseconds on a CPU) rather than by a compiled reduction,
#: whose first compile per architecture costs ~0.1 s.
_HOST_CHECK_MAX_ELEMENTS = 2**20


@jax.jit
def _all_finite(leaves) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_params_finite(params: Params) -> None:
    """No NaN or inf in any leaf: one reduction on the device, the host sees one boolean."""
    leaves = [leaf for layer in params for leaf in (layer.W, layer.b)]
    if not all(map(is_concrete, leaves)):
        return
    if sum(np.size(x) for x in leaves) <= _HOST_CHECK_MAX_ELEMENTS:
        ok = all(np.isfinite(np.asarray(x)).all() for x in leaves)  # nothing to compile
    else:
        ok = _all_finite(leaves)
        if not is_concrete(ok):  # inside a user's trace, params closed over as constants
            ok = all(np.isfinite(np.asarray(x)).all() for x in leaves)
    if bool(ok):
        return
    for i, layer in enumerate(params):  # only on failure: find the first bad entry
        for name in ("W", "b"):
            arr = np.asarray(getattr(layer, name))
            bad = ~np.isfinite(arr)
            if bad.any():
                idx = tuple(int(j) for j in np.argwhere(bad)[0])
                raise ValueError(
                    f"params[{i}].{name} has a non-finite value {arr[idx]} at index {idx}"
                )


def all_finite(*trees) -> jax.Array:
    """True iff every leaf of every tree is finite: a scalar bool, traceable.

    Called inside a compiled computation next to the result, it replaces a separate pass of
    the host checks over the inputs (see :func:`raise_if_not_finite`).
    """
    leaves = [x for x in jax.tree_util.tree_leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def raise_if_not_finite(ok, recheck) -> None:
    """After a computation that checked its own inputs (``ok`` from :func:`all_finite`):
    nothing when ``ok`` is true (or a tracer); otherwise run ``recheck()`` (the host checks,
    which raise the usual clear error naming the bad entry), and if that finds nothing raise a
    generic ValueError."""
    if not is_concrete(ok) or bool(ok):
        return
    recheck()
    raise ValueError("an input contains a non-finite value (NaN or inf)")


def check_loss_output(params: Params, loss_name: str) -> None:
    """The loss accepts the output layer's activation (BCE needs sigmoid, CE softmax)."""
    loss = get_loss(loss_name)
    out = params[-1].activation
    if loss.outputs is not None and out not in loss.outputs:
        raise ValueError(
            f"loss {loss_name!r} needs an output activation in "
            f"{list(loss.outputs)}, but the output layer uses {out!r}"
        )


def check_model(params: Params, loss_name: str, *, deferred: bool = False) -> None:
    """params are well formed and finite, and ``loss_name`` fits their output layer.

    ``deferred``: leave the finiteness to the compiled computation (:func:`all_finite`).
    """
    get_loss(loss_name)
    check_params(params)
    if not deferred:
        check_params_finite(params)
    check_loss_output(params, loss_name)


# --- data -----------------------------------------------------------------------------------
def check_X(params: Params, X, name: str = "X", *, deferred: bool = False):
    """X is 2-D with the first layer's fan_in columns; returned in the params' dtype.

    ``deferred``: leave the value checks (finite, representable in the params' dtype) to
    the compiled computation (:func:`all_finite` of the cast X catches both).
    """
    X = numeric_array(X, name)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (N, n_features), got shape {tuple(X.shape)}"
            + ("; for one sample use X.reshape(1, -1)" if X.ndim == 1 else "")
        )
    n_in = params[0].W.shape[0]
    if X.shape[1] != n_in:
        raise ValueError(
            f"{name} has {X.shape[1]} features but the first layer expects "
            f"fan_in = {n_in}; {name}.shape = {tuple(X.shape)}"
        )
    if is_concrete(X) and not deferred:
        arr = host_floats(X)
        check_finite(arr, name)
        if float(np.finfo(arr.dtype).max) > float(jnp.finfo(params[0].W.dtype).max):
            check_representable(arr, params[0].W.dtype, name)
    return device_array(X, params[0].W.dtype)


def prepare_targets(
    Y,
    loss_name: str,
    n_out: int,
    n_rows: int,
    dtype,
    name: str = "Y",
    output_activation: str | None = None,
):
    """Validate Y for a loss and return it as (N, n_out) in ``dtype``.

    Integer labels (N,) for "cross_entropy" become one-hot rows.  ``output_activation``
    (when given) lets the errors point the right way, e.g. class labels given to a network
    with an identity output.
    """
    loss = get_loss(loss_name)
    Y = numeric_array(Y, name)
    if Y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {tuple(Y.shape)}")
    if Y.shape[0] != n_rows:
        raise ValueError(f"X has {n_rows} rows but {name} has {Y.shape[0]}; they must match")
    concrete = is_concrete(Y)
    if concrete:
        check_finite(np.asarray(Y, dtype=np.float64), name)
    if loss.targets == "class" and Y.ndim == 1:
        if jnp.issubdtype(Y.dtype, jnp.bool_):  # as mlds_jax.datasets.one_hot: labels are integers
            raise TypeError(f"{name} as class labels must be integers, got dtype bool")
        if concrete:
            y = np.asarray(Y)
            if not jnp.issubdtype(y.dtype, jnp.integer):
                frac = np.nonzero(y != np.round(y))[0]
                if frac.size:
                    raise ValueError(
                        f"{name} holds class labels but {name}[{frac[0]}] = "
                        f"{y[frac[0]]} is not an integer"
                    )
            bad = np.nonzero((y < 0) | (y >= n_out))[0]
            if bad.size:
                raise ValueError(
                    f"class labels must lie in [0, {n_out}) for a network with {n_out} outputs; "
                    f"{name}[{bad[0]}] = {y[bad[0]]} ({bad.size} label(s) out of range)"
                )
        elif not jnp.issubdtype(Y.dtype, jnp.integer):
            raise TypeError(f"{name} as labels must be an integer array, got {Y.dtype}")
        if concrete:  # checked labels: one-hot rows on the host, no device op to dispatch
            return device_array(
                np.eye(n_out, dtype=jnp.dtype(dtype))[np.asarray(Y).astype(np.intp)]
            )
        return jax.nn.one_hot(jnp.asarray(Y).astype(jnp.int32), n_out, dtype=dtype)
    if Y.ndim == 1:
        if n_out != 1:
            hint = ""
            if output_activation not in (None, "softmax", "sigmoid") and jnp.issubdtype(
                Y.dtype, jnp.integer
            ):
                hint = (
                    f"; if {name} holds class labels, build the network with "
                    f"output='softmax' (loss 'cross_entropy') or output='sigmoid'"
                )
            raise ValueError(
                f"{name} has shape {tuple(Y.shape)} but the network has {n_out} "
                f"outputs; pass {name} of shape ({n_rows}, {n_out}){hint}"
            )
        Y = Y.reshape(-1, 1)
    if Y.shape[1] != n_out:
        raise ValueError(
            f"{name} has {Y.shape[1]} columns but the network has {n_out} "
            f"output(s) for loss {loss_name!r}"
        )
    if concrete and loss.targets in ("probability", "class"):
        y = np.asarray(Y, dtype=np.float64)
        bad = np.argwhere((y < 0) | (y > 1))
        if bad.size:
            idx = tuple(int(j) for j in bad[0])
            raise ValueError(
                f"{loss_name} targets must lie in [0, 1]; {name}{list(idx)} = {y[idx]}"
            )
        if loss.targets == "class":
            sums = y.sum(axis=1)
            off = np.nonzero(np.abs(sums - 1) > 1e-6 * max(1, n_out))[0]
            if off.size:
                raise ValueError(
                    f"cross_entropy needs one-hot (or probability) rows summing "
                    f"to 1; row {off[0]} of {name} sums to {sums[off[0]]}"
                )
    if concrete:
        check_representable(np.asarray(Y, dtype=np.float64), dtype, name)
    return device_array(Y, dtype)


def check_data(
    params: Params,
    X,
    Y,
    loss_name: str,
    *,
    x_name: str = "X",
    y_name: str = "Y",
    deferred: bool = False,
):
    """X and Y for already-checked params: returns them ready for the core functions."""
    X = check_X(params, X, x_name, deferred=deferred)
    if X.shape[0] == 0:
        raise ValueError(f"{x_name} is empty (0 rows)")
    Y = prepare_targets(
        Y,
        loss_name,
        params[-1].W.shape[1],
        X.shape[0],
        params[0].W.dtype,
        y_name,
        output_activation=params[-1].activation,
    )
    return X, Y


def check_batch(
    params: Params,
    X,
    Y,
    loss_name: str,
    *,
    x_name: str = "X",
    y_name: str = "Y",
    deferred: bool = False,
):
    """All checks for (params, X, Y, loss), each once: returns X, Y ready for the core.

    ``deferred``: the finiteness of params and X is left to the compiled computation
    (:func:`all_finite` beside the result, then :func:`raise_if_not_finite`); Y, labels and
    every shape and dtype are still checked here.
    """
    check_model(params, loss_name, deferred=deferred)
    return check_data(params, X, Y, loss_name, x_name=x_name, y_name=y_name, deferred=deferred)


def check_row_weights(row_weights, n_rows: int, dtype, name: str = "row_weights"):
    """``None``, or w (N,) finite, ≥ 0, with at least one positive entry; in ``dtype``.

    Row weights are the w_n of equation (L1); a zero weight marks a padding row.
    """
    if row_weights is None:
        return None
    w = numeric_array(row_weights, name)
    if w.shape != (n_rows,):
        raise ValueError(
            f"{name} must have shape ({n_rows},) (one weight per row of X), got {tuple(w.shape)}"
        )
    if is_concrete(w):
        arr = np.asarray(w, dtype=np.float64)
        check_finite(arr, name)
        if (arr < 0).any():
            i = int(np.argmax(arr < 0))
            raise ValueError(f"{name} must be >= 0; {name}[{i}] = {arr[i]}")
        if not (arr > 0).any():
            raise ValueError(f"{name} has no positive entry: every row would be padding")
    return device_array(w, dtype)
