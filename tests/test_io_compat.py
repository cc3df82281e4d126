"""Files written by an earlier mlds_jax keep loading (tests/fixtures/, written by main at
f10b504, before the io package; their recipe is tests/fixtures/README.md).

The model files are also what this version writes, byte for byte, for the same params and
metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import mlds_jax as mj
from mlds_jax import cli
from mlds_jax.io import train_state

FIXTURES = Path(__file__).resolve().parent / "fixtures"
META = {"dataset": "iris", "epochs": 3, "history": {"loss": [1.5, 0.75, 0.375]}, "note": "σ ✓"}


def grid(shape, dtype, scale=8, shift=5):
    """The fixtures' values: exact in binary, so equal in every dtype they were cast to."""
    n = int(np.prod(shape))
    return ((np.arange(n) % 11 - shift) / scale).reshape(shape).astype(dtype)


def fixture_params(dtype, acts):
    return tuple(
        mj.Dense(W=grid((m, n), dtype), b=grid((n,), dtype, scale=16, shift=2), activation=a)
        for m, n, a in zip((3, 4), (4, 2), acts, strict=True)
    )


MODELS = {
    "checkpoint_v1.npz": (np.float32, ("tanh", "softmax"), META),
    "checkpoint_v1_float64.npz": (np.float64, ("relu", "identity"), {}),
    "model_v1.safetensors": (np.float64, ("sigmoid", "identity"), META),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_files_of_the_earlier_version_load_and_are_written_identically(tmp_path, name):
    dtype, acts, meta = MODELS[name]
    params, got_meta = mj.load(FIXTURES / name, return_metadata=True)
    want = fixture_params(dtype, acts)
    assert got_meta == meta
    for got, ref in zip(params, want, strict=True):
        assert got.activation == ref.activation and got.W.dtype == dtype
        assert np.asarray(got.W).tobytes() == ref.W.tobytes()
        assert np.asarray(got.b).tobytes() == ref.b.tobytes()
    again = mj.save(tmp_path / name, want, metadata=meta)
    assert again.read_bytes() == (FIXTURES / name).read_bytes()


def test_training_state_version_1_loads():
    params = tuple(mj.Dense(jax.numpy.asarray(p.W), jax.numpy.asarray(p.b), p.activation)
                   for p in fixture_params(np.float32, ("tanh", "softmax")))
    template = optax.adam(0.1).init(params)
    state, p, s, best = train_state.load_train_state(
        str(FIXTURES / "train_state_v1.npz"), params, template)
    assert state["epoch"] == 3 and state["best_value"] == float("inf")
    assert state["history"] == {"loss": [1.5, 0.75, 0.375], "accuracy": [0.25, 0.5, 0.75]}
    assert int(s[0].count) == 3 and s[0].count.dtype == np.int32
    for layer, ref, mu, nu, b2 in zip(p, params, s[0].mu, s[0].nu, best, strict=True):
        for name in ("W", "b"):
            x = np.asarray(getattr(ref, name))
            np.testing.assert_array_equal(getattr(layer, name), x)
            np.testing.assert_array_equal(getattr(mu, name), x * 0.5)
            np.testing.assert_array_equal(getattr(nu, name), x * x)
            np.testing.assert_array_equal(getattr(b2, name), x * 2)


def test_resume_continues_a_run_directory_of_the_earlier_version(tmp_path):
    """A finished run of the earlier CLI (its state inside DIR, no DIR.partial/): --resume
    trains it to 2 epochs and publishes the new set; the earlier model was of epoch 1.  (That
    run was float32: x64 off, as the command runs by default.)"""
    out = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v1", out)
    stdout, stderr = io.StringIO(), io.StringIO()
    with (contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr),
          jax.enable_x64(False)):
        rc = cli.main(["train", "--dataset", "iris", "--hidden-sizes", "4", "--optimizer", "sgd",
                       "--activation", "relu",  # the earlier default
                       "--epochs", "2", "--no-progress", "--no-compilation-cache", "--resume",
                       "--out", str(out)])
    assert rc == 0, stderr.getvalue()
    summary = json.loads((out / "history.json").read_text())["summary"]
    assert summary["epochs_run"] == 2 and summary["n_train"] == 108
    old = json.loads((FIXTURES / "run_v1" / "history.json").read_text())["history"]
    new = json.loads((out / "history.json").read_text())["history"]
    assert new["train_loss"][0] == pytest.approx(old["train_loss"][0], rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
