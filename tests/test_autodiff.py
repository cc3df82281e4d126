"""Finite differences and the gradcheck report: the checker must pass correct gradients and
be able to fail wrong ones.

The last section uses ``mj.check_grads`` as a user-facing gradcheck: every output/loss pair at
depths 1-3, float32/float16/bfloat16 params in, a 1% error in any loss's δ detected, a clear
verdict on NaN.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    BF16,
    F16,
    F64,
    OUTPUT_LOSS_PAIRS,
    assert_trees_close,
    cast_params,
    make_problem,
    np_leaves,
    one_layer,
    patching,
)
from jax.test_util import check_grads as jax_check_grads

import mlds_jax as mj
import mlds_jax.activations as activations_module
import mlds_jax.losses as losses_module

CASES = {
    # loss: (hidden, output)
    "mse": ("tanh", "identity"),
    "half_squared_error": ("sigmoid", "sigmoid"),
    "binary_cross_entropy": ("softplus", "sigmoid"),
    "cross_entropy": ("tanh", "softmax"),
}
SIZES = [3, 4, 2]
N = 5


def _problem(loss: str, seed: int = 0, dtype=jnp.float64):
    hidden, output = CASES[loss]
    return make_problem(seed, SIZES, hidden, output, loss, N, dtype)


@pytest.mark.parametrize("loss", sorted(CASES))
def test_jax_check_grads_on_the_loss(loss):
    """jax.test_util.check_grads: reverse-mode jax.grad of mj.loss vs finite differences."""
    params, X, Y = _problem(loss)
    jax_check_grads(lambda p: mj.loss(p, X, Y, loss), (params,), order=1, modes=["rev"])


@pytest.mark.parametrize("loss", sorted(CASES))
@pytest.mark.parametrize("fused", [True, False])
def test_jax_check_grads_on_manual_grads(loss, fused):
    """The hand-derived gradients as the VJP of the loss (custom_vjp), checked by
    jax.test_util.check_grads against finite differences of the loss value."""
    params, X, Y = _problem(loss)

    @jax.custom_vjp
    def f(p):
        return mj.loss(p, X, Y, loss)

    def f_fwd(p):
        return f(p), p

    def f_bwd(p, ct):
        grads = mj.manual_grads(p, X, Y, loss, fused=fused)
        return (jax.tree_util.tree_map(lambda g: ct * g, grads),)

    f.defvjp(f_fwd, f_bwd)
    jax_check_grads(f, (params,), order=1, modes=["rev"])


@pytest.mark.parametrize("loss", sorted(CASES))
def test_mj_check_grads_passes(loss):
    params, X, Y = _problem(loss)
    report = mj.check_grads(params, X, Y, loss)
    assert report.ok, str(report)
    assert report.loss == loss and report.dtype == "float64"
    assert report.loss_value == pytest.approx(float(mj.loss(params, X, Y, loss)), rel=1e-14)
    assert [leaf.name for leaf in report.leaves] == ["layer 1 W", "layer 1 b", "layer 2 W",
                                                     "layer 2 b"]
    assert [leaf.shape for leaf in report.leaves] == [(3, 4), (4,), (4, 2), (2,)]
    assert [leaf.n_fd for leaf in report.leaves] == [12, 4, 8, 2]  # all entries (<= 24 each)
    assert report.max_rel_autodiff < 1e-12  # observed ~1e-16
    for leaf in report.leaves:
        assert leaf.ok and leaf.max_rel_fd < 1e-7  # central differences, eps = 1e-6


def test_mj_check_grads_general_path_and_float32_params():
    params, X, Y = _problem("cross_entropy", dtype=jnp.float32)
    report = mj.check_grads(params, X, Y, "cross_entropy", fused=False)
    assert report.ok, str(report)
    assert report.dtype == "float64"  # checked in float64 whatever the params' dtype


def test_mj_check_grads_samples_large_leaves():
    params, X, Y = make_problem(1, [6, 5, 2], "tanh", "identity", "mse", 4)
    report = mj.check_grads(params, X, Y, "mse", max_fd_entries=7, seed=3)
    assert report.ok
    assert [leaf.n_fd for leaf in report.leaves] == [7, 5, 7, 2]


def test_report_table_and_dict():
    params, X, Y = _problem("mse")
    report = mj.check_grads(params, X, Y, "mse")
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("gradient check: loss='mse' dtype=float64 L=")
    assert lines[1].split() == ["leaf", "shape", "|man-auto|", "rel", "|man-fd|", "rel",
                                "fd", "n", "ok"]
    assert lines[2].split()[:3] == ["layer", "1", "W"] and lines[2].split()[3] == "3x4"
    assert all(line.rstrip().endswith("yes") for line in lines[2:6])
    assert lines[-1].startswith("PASS: manual gradients match jax.grad")
    d = report.to_dict()
    assert d["ok"] is True and d["loss"] == "mse" and len(d["leaves"]) == 4
    assert set(d["leaves"][0]) == {f.name for f in dataclasses.fields(mj.autodiff.LeafCheck)}


def _wrong_mse(monkeypatch, factor: float):
    """Replace the registry's mse by one whose dL/dŶ lacks the notes' factor 2 (2/n → 1/n),
    in the general path and in the fused identity δ."""
    spec = losses_module.LOSSES["mse"]

    def dA(A, Y):
        return factor * losses_module.mse_term_dA(A, Y)

    wrong = dataclasses.replace(spec, term_dA=dA, term_fused={"identity": dA})
    monkeypatch.setitem(losses_module.LOSSES, "mse", wrong)


@pytest.mark.parametrize("output", ["identity", "sigmoid"])
def test_mj_check_grads_detects_a_missing_factor_2(monkeypatch, output):
    params, X, Y = make_problem(2, SIZES, "tanh", output, "mse", N)
    assert mj.check_grads(params, X, Y, "mse").ok
    _wrong_mse(monkeypatch, 0.5)
    report = mj.check_grads(params, X, Y, "mse")
    assert not report.ok
    assert not any(leaf.ok for leaf in report.leaves)
    assert report.max_rel_autodiff == pytest.approx(0.5, rel=1e-9)  # exactly half the gradient
    assert "FAIL" in str(report) and " NO" in str(report)
    assert report.to_dict()["ok"] is False
    # the plain comparison with jax.grad sees it too
    with pytest.raises(AssertionError):
        assert_trees_close(mj.manual_grads(params, X, Y, "mse"),
                           mj.autodiff_grads(params, X, Y, "mse"))


def test_mj_check_grads_detects_a_wrong_activation_derivative(monkeypatch):
    """tanh' written as 1 − tanh (instead of 1 − tanh²) in the hidden layer only corrupts
    the first layer's gradients: those leaves fail, the output layer's still pass."""
    params, X, Y = make_problem(3, SIZES, "tanh", "identity", "mse", N)
    tanh = activations_module.ACTIVATIONS["tanh"]
    wrong_prime = lambda Z: 1 - jnp.tanh(Z)  # noqa: E731
    monkeypatch.setitem(
        activations_module.ACTIVATIONS, "tanh",
        dataclasses.replace(tanh, prime=wrong_prime, backward=lambda dA, Z: dA * wrong_prime(Z)),
    )
    report = mj.check_grads(params, X, Y, "mse")
    assert not report.ok
    assert [leaf.ok for leaf in report.leaves] == [False, False, True, True]


def test_mj_check_grads_rejects_bad_arguments():
    params, X, Y = _problem("mse")
    with pytest.raises(ValueError, match="max_fd_entries must be >= 0, got -1"):
        mj.check_grads(params, X, Y, "mse", max_fd_entries=-1)
    with pytest.raises(ValueError, match="eps must be > 0, got 0"):
        mj.check_grads(params, X, Y, "mse", eps=0.0)


@pytest.mark.parametrize("loss", sorted(CASES))
def test_autodiff_grads_is_jax_grad_of_loss(loss):
    params, X, Y = _problem(loss)
    expected = jax.grad(mj.loss)(params, X, Y, loss)
    assert_trees_close(mj.autodiff_grads(params, X, Y, loss), expected)
    np.testing.assert_equal(
        [g.activation for g in mj.autodiff_grads(params, X, Y, loss)],
        [p.activation for p in params],
    )


# --- mj.check_grads as a user-facing gradcheck: every output/loss pair at depths 1-3, float32 --
# --- and low-precision params in, wrong δ detection for every loss, a clear verdict on NaN ------
# (op by op: the report's many small programs share a few shapes; see conftest's op_by_op)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("output", "loss"), OUTPUT_LOSS_PAIRS)
def test_gradcheck_every_output_loss_pair_and_depth(output, loss, depth, op_by_op):
    """float32 params in, a float64 report out, for every (output, loss) pair the library
    supports, depths 1-3, fused and general paths (one path where the pair has no fused δ):
    per-leaf max |abs| and relative errors,
    central differences on 4 entries of every leaf, a PASS verdict."""
    sizes = [3] + [4] * (depth - 1) + [3]
    params, X, Y = make_problem(depth, sizes, "tanh", output, loss, 6, jnp.float32)
    X_rounded = np.asarray(X, F64)  # X as the float32 network sees it
    L64 = float(mj.loss(cast_params(params, F64), X_rounded, Y, loss))
    has_fused_form = output in mj.losses.LOSSES[loss].fused
    for fused in (True, False) if has_fused_form else (True,):
        report = mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=4)
        assert report.ok, str(report)
        assert report.dtype == "float64" and report.loss == loss
        assert report.loss_value == pytest.approx(L64, rel=1e-14)  # the float64 loss
        assert len(report.leaves) == 2 * depth
        for leaf, p in zip(report.leaves, np_leaves(params), strict=True):
            assert leaf.shape == p.shape and leaf.n_fd == min(p.size, 4)
            assert leaf.ok and leaf.max_abs_autodiff <= 1e-15 and leaf.max_abs_fd <= 1e-9
            assert leaf.max_rel_autodiff <= 1e-12 or leaf.max_abs_autodiff == 0
        assert str(report).splitlines()[-1].startswith("PASS")


LOSS_OUTPUT = {"mse": "identity", "half_squared_error": "sigmoid",
               "binary_cross_entropy": "sigmoid", "cross_entropy": "softmax"}


def _off_by(mp, loss: str, factor: float) -> None:
    """Replace a loss's hand-derived dL/dŶ (general path) and its fused δ by factor × them;
    the loss value (so jax.grad and finite differences) stays right."""
    spec = losses_module.LOSSES[loss]

    def scaled(f):
        return lambda A, Y: factor * f(A, Y)

    mp.setitem(losses_module.LOSSES, loss, dataclasses.replace(
        spec, term_dA=scaled(spec.term_dA),
        term_fused={k: scaled(f) for k, f in spec.term_fused.items()}))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUT))
def test_gradcheck_detects_a_dA_off_by_one_percent(loss, fused, op_by_op):
    """test_mj_check_grads_detects_a_missing_factor_2 catches mse's missing factor 2; a 1% error
    in any loss's derivative, on either path, fails every leaf (it scales every gradient), with
    max rel error 0.01."""
    output = LOSS_OUTPUT[loss]
    params, X, Y = make_problem(4, [3, 4, 3], "tanh", output, loss, 6)
    assert mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=3).ok
    with patching() as mp:
        _off_by(mp, loss, 1.01)
        report = mj.check_grads(params, X, Y, loss, fused=fused, max_fd_entries=3)
    assert not report.ok and not any(leaf.ok for leaf in report.leaves)
    assert report.max_rel_autodiff == pytest.approx(0.01, rel=1e-6)
    for leaf in report.leaves:
        assert leaf.max_rel_fd == pytest.approx(0.01, rel=1e-3)
    rows = str(report).splitlines()
    assert [row.split()[-1] for row in rows[2:-1]] == ["NO"] * 4
    assert rows[-1].startswith("FAIL")


def test_gradcheck_clear_verdict_when_the_general_path_is_nan(op_by_op):
    """Saturated sigmoid + BCE: the general path's δ is NaN; the report does not crash or
    pass, it fails exactly the leaves that depend on the NaN δ (NaN abs error, marked NO)."""
    params = one_layer([[40.0]], "sigmoid", F64)
    X, Y = np.array([[1.0], [-1.0]]), np.array([[0.0], [1.0]])
    assert mj.check_grads(params, X, Y, "binary_cross_entropy").ok
    report = mj.check_grads(params, X, Y, "binary_cross_entropy", fused=False)
    assert not report.ok
    assert all(math.isnan(leaf.max_abs_autodiff) and not leaf.ok for leaf in report.leaves)
    assert "FAIL" in str(report) and report.to_dict()["ok"] is False


@pytest.mark.parametrize("dtype", [F16, BF16])  # float32: the pairs test above
def test_gradcheck_low_precision_params_are_reported_in_float64(dtype, op_by_op):
    """Any params dtype the library supports goes in; the check runs on their float64 values
    (a float16 network's gradient is checked as mathematics, not as float16 arithmetic)."""
    params, X, Y = make_problem(7, [3, 4, 3], "tanh", "softmax", "cross_entropy", 6)
    params = cast_params(params, dtype)
    report = mj.check_grads(params, X, Y, "cross_entropy")
    assert report.ok and report.dtype == "float64"
    X_rounded = np.asarray(jnp.asarray(X).astype(dtype), F64)
    assert report.loss_value == pytest.approx(
        float(mj.loss(cast_params(params, F64), X_rounded, Y, "cross_entropy")), rel=1e-14)


def test_gradcheck_on_one_row_and_labels(op_by_op):
    params, X, Y = make_problem(8, [2, 3, 4], "relu", "softmax", "cross_entropy", 1)
    report = mj.check_grads(params, X, Y, "cross_entropy")
    assert report.ok and [leaf.n_fd for leaf in report.leaves] == [6, 3, 12, 4]
