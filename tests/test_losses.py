"""Losses: values against NumPy, dL/dŶ against jax.grad, fused δ against the general chain rule.

"The notes simplify; test both agree": for each matched output/loss pair the fused
δ = dL/dZ the notes derive (A − Y)/N (or 2(A − Y)/(N·K) for identity + MSE) must equal the
general path dL/dŶ ⊙ f'(Z) (the softmax JVP for softmax), and jax.grad of the value in Z.

The last section takes losses to the edges through the network: BCE/CE logits of ±1e4 (exact
values from the logits, the fused δ exact, the general path's documented NaN) and mse with
targets ~1e6.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    F32,
    F64,
    assert_trees_close,
    cast_params,
    make_problem,
    make_targets,
    np_leaves,
    np_rng,
    one_layer,
    ref_loss_from_A,
    tree_is_finite,
)

import mlds_jax as mj
from mlds_jax.activations import ACTIVATIONS
from mlds_jax.losses import LOSSES, get_loss

N, K = 6, 4
LOSS_NAMES = ("mse", "half_squared_error", "binary_cross_entropy", "cross_entropy")
#: the output each loss is tested behind: its natural partner (and sigmoid for squared errors)
OUTPUTS = {
    "mse": ("identity", "sigmoid", "softmax"),
    "half_squared_error": ("identity", "sigmoid"),
    "binary_cross_entropy": ("sigmoid",),
    "cross_entropy": ("softmax",),
}
MATCHED = (
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
    ("identity", "half_squared_error"),
    ("identity", "mse"),
)


def _case(loss: str, output: str, targets: str = "default", seed: int = 0):
    """Z (N, K) moderate logits, A = f(Z), Y an (N, K) float matrix valid for the loss."""
    rng = np_rng(seed)
    Z = jnp.asarray(2.0 * rng.standard_normal((N, K)))
    A = ACTIVATIONS[output].fn(Z)
    if loss == "cross_entropy" and targets == "default":
        targets = "onehot"
    Y = make_targets(rng, loss, N, K, jnp.float64, targets)
    return Z, A, Y


# NumPy formulas, written from the notes, in terms of z (logits) and y.
def _np_loss(loss: str, z: np.ndarray, a: np.ndarray, y: np.ndarray) -> float:
    n, k = y.shape
    if loss == "mse":  # MLDS notes: L = 1/n Σ_i (y*_i − y_i)², n = all N·K entries
        return float(np.sum((y - a) ** 2) / (n * k))
    if loss == "half_squared_error":  # lecture: (1/N) Σ_p ½‖ŷ_p − y_p‖²
        return float(np.sum(0.5 * (a - y) ** 2) / n)
    if loss == "binary_cross_entropy":  # BCE notes: (1/M) Σ −[y ln ŷ + (1 − y) ln(1 − ŷ)]
        p = 1.0 / (1.0 + np.exp(-z))
        return float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) / n)
    if loss == "cross_entropy":  # (1/N) Σ_p −Σ_k y ln softmax(z)_k
        e = np.exp(z)
        return float(-np.sum(y * np.log(e / e.sum(axis=1, keepdims=True))) / n)
    raise ValueError(loss)


def test_registry():
    assert set(LOSSES) == set(LOSS_NAMES)
    assert set(LOSSES["mse"].fused) == {"identity"}
    assert set(LOSSES["half_squared_error"].fused) == {"identity"}
    assert set(LOSSES["binary_cross_entropy"].fused) == {"sigmoid"}
    assert set(LOSSES["cross_entropy"].fused) == {"softmax"}
    assert LOSSES["binary_cross_entropy"].outputs == ("sigmoid",)
    assert LOSSES["cross_entropy"].outputs == ("softmax",)
    assert LOSSES["mse"].outputs is None and not LOSSES["mse"].is_classification
    assert LOSSES["cross_entropy"].is_classification


def test_get_loss_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; valid names: \[") as e:
        get_loss("hinge")
    for name in LOSS_NAMES:
        assert repr(name) in str(e.value)
    with pytest.raises(TypeError, match="loss must be a string"):
        get_loss(None)


@pytest.mark.parametrize(
    "loss,output", [(lo, out) for lo in LOSS_NAMES for out in OUTPUTS[lo]]
)
def test_value_matches_numpy(loss, output):
    Z, A, Y = _case(loss, output)
    got = float(LOSSES[loss].value(Z, A, Y))
    expected = _np_loss(loss, np.asarray(Z), np.asarray(A), np.asarray(Y))
    assert got == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("targets", ["onehot", "soft"])
def test_cross_entropy_value_soft_and_onehot(targets):
    Z, A, Y = _case("cross_entropy", "softmax", targets)
    expected = _np_loss("cross_entropy", np.asarray(Z), np.asarray(A), np.asarray(Y))
    assert float(LOSSES["cross_entropy"].value(Z, A, Y)) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("targets", ["hard", "soft"])
def test_bce_value_hard_and_soft(targets):
    Z, A, Y = _case("binary_cross_entropy", "sigmoid", targets)
    expected = _np_loss("binary_cross_entropy", np.asarray(Z), np.asarray(A), np.asarray(Y))
    got = float(LOSSES["binary_cross_entropy"].value(Z, A, Y))
    assert got == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("loss", ["mse", "half_squared_error"])
def test_dA_matches_jax_grad_of_value(loss):
    """Squared errors are computed from A: dL/dŶ == jax.grad of the library's own value."""
    Z, A, Y = _case(loss, "identity")
    spec = LOSSES[loss]
    expected = jax.grad(lambda A_: spec.value(Z, A_, Y))(A)
    assert_trees_close(spec.dA(A, Y), expected)


@pytest.mark.parametrize(
    "loss,output,targets",
    [
        ("mse", "identity", "default"),
        ("half_squared_error", "sigmoid", "default"),
        ("binary_cross_entropy", "sigmoid", "soft"),
        ("binary_cross_entropy", "sigmoid", "hard"),
        ("cross_entropy", "softmax", "onehot"),
        ("cross_entropy", "softmax", "soft"),
    ],
)
def test_dA_matches_jax_grad_of_formula_in_A(loss, output, targets):
    """BCE and CE values are computed from Z (stably), so their dL/dŶ is checked against
    jax.grad of the textbook formula written in A: −[y ln ŷ + (1−y) ln(1−ŷ)], −Σ y ln ŷ."""
    Z, A, Y = _case(loss, output, targets)
    expected = jax.grad(lambda A_: ref_loss_from_A(A_, Y, loss))(A)
    assert_trees_close(LOSSES[loss].dA(A, Y), expected)
    # and the stable value in Z equals the formula in A for moderate logits
    assert float(LOSSES[loss].value(Z, A, Y)) == pytest.approx(
        float(ref_loss_from_A(A, Y, loss)), rel=1e-12
    )


def test_dA_closed_forms():
    Z, A, Y = _case("mse", "identity")
    a, y = np.asarray(A), np.asarray(Y)
    np.testing.assert_allclose(mj.losses.LOSSES["mse"].dA(A, Y), 2 * (a - y) / (N * K), rtol=1e-14)
    np.testing.assert_allclose(LOSSES["half_squared_error"].dA(A, Y), (a - y) / N, rtol=1e-14)
    Z, A, Y = _case("binary_cross_entropy", "sigmoid")
    a, y = np.asarray(A), np.asarray(Y)
    np.testing.assert_allclose(  # BCE notes, step 5
        LOSSES["binary_cross_entropy"].dA(A, Y), (-y / a + (1 - y) / (1 - a)) / N, rtol=1e-13
    )


@pytest.mark.parametrize(
    "output,loss,targets",
    [(out, lo, "default") for out, lo in MATCHED]
    + [("sigmoid", "binary_cross_entropy", "hard"), ("softmax", "cross_entropy", "soft")],
)
def test_matched_delta_equals_general_chain_rule(output, loss, targets):
    """fused δ == dL/dŶ ⊙ f'(Z) (softmax: its JVP) == jax.grad of the value w.r.t. Z.

    (BCE's default targets are soft, in (0, 1); CE's default are one-hot rows.)"""
    Z, A, Y = _case(loss, output, targets)
    spec = LOSSES[loss]
    fused = spec.fused[output](A, Y)
    general = ACTIVATIONS[output].backward(spec.dA(A, Y), Z)
    by_autodiff = jax.grad(lambda Z_: spec.value(Z_, ACTIVATIONS[output].fn(Z_), Y))(Z)
    assert_trees_close(fused, general)
    assert_trees_close(fused, by_autodiff)


def test_matched_delta_closed_form():
    """δ = (1/N)(A − Y) (BCE notes, lecture 'Matrix case'); identity + MSE: 2(A − Y)/(N·K)."""
    Z, A, Y = _case("cross_entropy", "softmax")
    np.testing.assert_allclose(mj.losses.matched_delta(A, Y), (np.asarray(A) - np.asarray(Y)) / N)
    Z, A, Y = _case("mse", "identity")
    np.testing.assert_allclose(
        LOSSES["mse"].fused["identity"](A, Y), 2 * (np.asarray(A) - np.asarray(Y)) / (N * K)
    )


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_row_weights_mask_equals_subset(loss):
    """Row weights m/Σm give the loss and dL/dŶ of the unmasked rows alone."""
    output = OUTPUTS[loss][0]
    Z, A, Y = _case(loss, output)
    mask = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    keep = np.asarray(mask) > 0
    w = mask / jnp.sum(mask)
    spec = LOSSES[loss]
    assert float(spec.value(Z, A, Y, w)) == pytest.approx(
        float(spec.value(Z[keep], A[keep], Y[keep])), rel=1e-13
    )
    dA = spec.dA(A, Y, w)
    np.testing.assert_allclose(dA[keep], spec.dA(A[keep], Y[keep]), rtol=1e-13)
    np.testing.assert_array_equal(dA[~keep], 0.0)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved(loss, dtype):
    output = OUTPUTS[loss][0]
    Z, A, Y = _case(loss, output)
    Z, A, Y = Z.astype(dtype), A.astype(dtype), Y.astype(dtype)
    spec = LOSSES[loss]
    assert spec.value(Z, A, Y).dtype == dtype
    assert spec.dA(A, Y).dtype == dtype
    assert spec.fused.get(output, mj.losses.matched_delta)(A, Y).dtype == dtype


# --- stability at saturated logits ----------------------------------------------------------
def test_bce_extreme_logits_values():
    """Each entry alone (N = K = 1): ℓ = y softplus(−z) + (1 − y) softplus(z).

    z = 1000, y = 1: softplus(−1000) = ln(1 + e^{−1000}) ≈ e^{−1000} → 0.
    z = −1000, y = 1: softplus(1000) = 1000 + ln(1 + e^{−1000}) → 1000.
    z = 1000, y = 0: 1000;  z = −1000, y = 0: 0.  Probabilities-then-log would give inf/NaN.
    """
    bce = LOSSES["binary_cross_entropy"]
    for z, y, expected in [(1000.0, 1.0, 0.0), (-1000.0, 1.0, 1000.0),
                           (1000.0, 0.0, 1000.0), (-1000.0, 0.0, 0.0)]:
        Z, Y = jnp.asarray([[z]]), jnp.asarray([[y]])
        value = float(bce.value(Z, mj.activations.sigmoid(Z), Y))
        assert value == pytest.approx(expected, abs=1e-12)
        delta = bce.fused["sigmoid"](mj.activations.sigmoid(Z), Y)  # σ(z) − y: 0 or ±1, finite
        np.testing.assert_allclose(delta, [[(1.0 if z > 0 else 0.0) - y]], atol=1e-300)


def test_ce_extreme_logits_values():
    """z = (1000, −1000, 0): log-softmax = z − logsumexp(z) = z − 1000 (exactly, in float64).

    label 0: ℓ = 0;  label 1: ℓ = 2000;  label 2: ℓ = 1000.  δ = (softmax(z) − y)/N with
    softmax(z) = (1, 0, 0)."""
    ce = LOSSES["cross_entropy"]
    Z = jnp.asarray([[1000.0, -1000.0, 0.0]] * 3)
    Y = jnp.eye(3)
    A = mj.activations.softmax(Z)
    assert float(ce.value(Z, A, Y)) == pytest.approx((0.0 + 2000.0 + 1000.0) / 3, rel=1e-15)
    delta = ce.fused["softmax"](A, Y)
    np.testing.assert_allclose(delta, (np.array([[1.0, 0, 0]] * 3) - np.eye(3)) / 3, atol=1e-300)


def _saturated_network(output: str):
    """One layer whose logits are ±1000: W = 1000 (or ±1000 per class), X = ±1."""
    if output == "sigmoid":
        W = jnp.asarray([[1000.0]])
        b = jnp.zeros((1,))
    else:
        W = jnp.asarray([[1000.0, -1000.0, 0.0]])
        b = jnp.zeros((3,))
    return (mj.Dense(W=W, b=b, activation=output),)


def test_bce_extreme_logits_network_grads():
    """logits z = X W = (1000, −1000, 1000, −1000), y = (1, 1, 0, 0):
    L = (0 + 1000 + 1000 + 0)/4 = 500;  δ = (σ(z) − y)/4 = (0, −1, 1, 0)/4;
    dW = Xᵀ δ = (1·0 + (−1)(−1) + 1·1 + (−1)·0)/4 = 0.5;  db = Σ δ = 0."""
    params = _saturated_network("sigmoid")
    X = jnp.asarray([[1.0], [-1.0], [1.0], [-1.0]])
    Y = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    assert float(mj.loss(params, X, Y, "binary_cross_entropy")) == pytest.approx(500.0)
    for grads in (mj.manual_grads(params, X, Y, "binary_cross_entropy"),
                  mj.autodiff_grads(params, X, Y, "binary_cross_entropy")):
        assert np.all(np.isfinite(grads[0].W)) and np.all(np.isfinite(grads[0].b))
        np.testing.assert_allclose(grads[0].W, [[0.5]], rtol=1e-15)
        np.testing.assert_allclose(grads[0].b, [0.0], atol=1e-300)


def test_ce_extreme_logits_network_grads():
    """logits per row ±(1000, −1000, 0) with X = ±1, labels (1, 1): the first row's label has
    logit −1000 (ℓ = 2000), the second row's label has logit +1000 (ℓ = 0): L = 1000.
    softmax = (1, 0, 0) and (0, 1, 0):  δ = [(1, −1, 0), (0, 0, 0)]/2;
    dW = Xᵀ δ = (1, −1, 0)/2;  db = (1, −1, 0)/2."""
    params = _saturated_network("softmax")
    X = jnp.asarray([[1.0], [-1.0]])
    Y = jnp.asarray([1, 1])
    assert float(mj.loss(params, X, Y, "cross_entropy")) == pytest.approx(1000.0)
    for grads in (mj.manual_grads(params, X, Y, "cross_entropy"),
                  mj.autodiff_grads(params, X, Y, "cross_entropy")):
        np.testing.assert_allclose(grads[0].W, [[0.5, -0.5, 0.0]], atol=1e-300)
        np.testing.assert_allclose(grads[0].b, [0.5, -0.5, 0.0], atol=1e-300)


# --- numerics at the edges: logits ±1e4 through the network, mse with huge targets -------------
def _exactly_equal(a, b) -> bool:
    """Same dtypes and shapes, equal values (unlike bit_identical, −0.0 == 0.0)."""
    la, lb = np_leaves(a), np_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True))



@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("z", [1e4, -1e4])
def test_edge_bce_logits_1e4(dtype, z):
    """Z = ±1e4 (X = 1, W = z): ℓ = y softplus(−z) + (1 − y) softplus(z), from the logits, so
    finite and exact: 0 for the right label, |z| for the wrong one.  The fused δ = σ(z) − y
    and jax.grad are exact (0 or ±1); the general path's dL/dŶ = −y/ŷ + (1−y)/(1−ŷ) divides
    by ŷ = 0 or 1 − ŷ = 0: NaN, the documented limit of the unfused path."""
    params, X = one_layer([[z]], "sigmoid", dtype), np.ones((1, 1))
    for y in (0.0, 1.0):
        Y = np.array([[y]])
        wrong = (z > 0) != (y == 1.0)
        value = mj.loss(params, X, Y, "binary_cross_entropy")
        assert value.dtype == dtype and float(value) == (abs(z) if wrong else 0.0)
        fused = mj.manual_grads(params, X, Y, "binary_cross_entropy")
        expected = (1.0 if z > 0 else 0.0) - y
        assert float(fused[0].W[0, 0]) == expected and float(fused[0].b[0]) == expected
        assert _exactly_equal(fused, mj.autodiff_grads(params, X, Y, "binary_cross_entropy"))
        general = mj.manual_grads(params, X, Y, "binary_cross_entropy", fused=False)
        assert np.isnan(np.asarray(general[0].W)).all()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_edge_cross_entropy_logits_1e4(dtype):
    """Z = (1e4, −1e4, 0): log-softmax = Z − 1e4, so ℓ = 0, 2e4, 1e4 for labels 0, 1, 2,
    exactly; fused δ = softmax(Z) − y = (1, 0, 0) − y, equal to jax.grad; general path NaN."""
    params, X = one_layer([[1e4, -1e4, 0.0]], "softmax", dtype), np.ones((1, 1))
    for label, expected in [(0, 0.0), (1, 2e4), (2, 1e4)]:
        y = np.array([label])
        value = mj.loss(params, X, y, "cross_entropy")
        assert value.dtype == dtype and float(value) == expected
        fused = mj.manual_grads(params, X, y, "cross_entropy")
        np.testing.assert_array_equal(fused[0].W[0], np.array([1.0, 0, 0]) - np.eye(3)[label])
        assert _exactly_equal(fused, mj.autodiff_grads(params, X, y, "cross_entropy"))
        general = mj.manual_grads(params, X, y, "cross_entropy", fused=False)
        assert np.isnan(np.asarray(general[0].W)).any()
    # the whole batch at once: the mean of the three
    assert float(mj.loss(params, np.ones((3, 1)), np.arange(3), "cross_entropy")) == \
        pytest.approx(1e4, rel=float(jnp.finfo(dtype).eps))



@pytest.mark.parametrize("dtype", [F32, F64])
def test_edge_mse_with_huge_targets(dtype):
    """Targets ~1e6: L ~ 1e12, finite in float32 (max 3.4e38); manual and jax.grad agree
    relative to the gradient's scale (the suite's rtol for the dtype)."""
    params, X, Y = make_problem(5, [3, 4, 3], "tanh", "identity", "mse", 6, jnp.float64)
    params = cast_params(params, dtype)
    Y = 1e6 * np.asarray(Y)
    value = float(mj.loss(params, X, Y, "mse"))
    assert math.isfinite(value) and value == pytest.approx(np.mean(
        (np.asarray(mj.forward(params, X), F64) - Y) ** 2), rel=1e-5 if dtype == F32 else 1e-12)
    manual, auto = mj.manual_grads(params, X, Y, "mse"), mj.autodiff_grads(params, X, Y, "mse")
    assert tree_is_finite(manual) and tree_is_finite(auto)
    rtol = 1e-5 if dtype == F32 else 1e-12
    for m, a in zip(np_leaves(manual), np_leaves(auto), strict=True):
        scale = float(np.max(np.abs(a.astype(F64))))
        assert scale > 1e3  # huge gradients, as they should be
        assert np.max(np.abs(m.astype(F64) - a.astype(F64))) <= rtol * scale

