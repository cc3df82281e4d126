"""Finite differences and the gradcheck report: the checker must pass correct gradients and
be able to fail wrong ones."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close, make_problem
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
    assert set(d["leaves"][0]) == {f.name for f in dataclasses.fields(mj.LeafCheck)}


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
