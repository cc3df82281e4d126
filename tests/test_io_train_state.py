"""mlds_jax.io.train_state: exact round trips of any optax state, mismatches named, corrupt
files refused.  (fit's use of it, interrupting and resuming bit for bit: test_training.)"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import mlds_jax as mj
from mlds_jax.io import container, train_state

STATE = {"epoch": 2, "history": {"loss": [0.5, float("nan")]}, "best_value": float("inf")}


def _params(dtype=np.float32, sizes=(3, 4, 2)):
    rng = np.random.default_rng(0)
    return tuple(mj.Dense(jnp.asarray(rng.standard_normal((m, n)).astype(dtype)),
                          jnp.asarray(np.zeros(n, dtype)), act)
                 for m, n, act in zip(sizes[:-1], sizes[1:], ("tanh", "softmax"), strict=True))


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        assert getattr(x, "weak_type", False) == getattr(y, "weak_type", False)


@pytest.mark.parametrize("opt", [optax.adam(0.1), optax.sgd(0.1, momentum=0.9),
                                 optax.chain(optax.clip(1.0), optax.sgd(0.1))])
def test_round_trip_is_exact_for_any_optax_state(tmp_path, opt):
    params = _params()
    state = opt.init(params)
    best = jax.tree_util.tree_map(lambda x: x * 2, params)
    path = train_state.state_path(tmp_path)
    train_state.save_train_state(path, params, state, best, STATE)
    saved, p, s, b = train_state.load_train_state(path, params, opt.init(params))
    assert json.dumps(saved, sort_keys=True) == json.dumps(STATE, sort_keys=True)  # NaN, inf kept
    _leaves_equal(p, params)
    _leaves_equal(s, state)
    _leaves_equal(b, best)
    with np.load(path) as npz:  # still an .npz: the header is readable without mlds_jax
        header = json.loads(npz["__header__"].tobytes())
    assert header["format"] == "mlds_jax.train_state" and header["format_version"] == 2


def test_bfloat16_leaves_round_trip(tmp_path):
    """(Version 1 wrote them but read them back as raw 2-byte voids and refused its own file.)"""
    params = _params(ml_dtypes.bfloat16)
    path = str(tmp_path / "s.npz")
    train_state.save_train_state(path, params, (), params, {"epoch": 1})
    _, p, _, _ = train_state.load_train_state(path, params, ())
    _leaves_equal(p, params)


def test_mismatches_name_the_group_and_leaf(tmp_path):
    params = _params()
    opt = optax.sgd(0.1, momentum=0.9)
    path = str(tmp_path / "s.npz")
    train_state.save_train_state(path, params, opt.init(params), params, {"epoch": 1})
    with pytest.raises(ValueError, match=r"s\.npz: the saved opt_state does not match .*"
                                         r"\(structure\)"):
        train_state.load_train_state(path, params, optax.adam(0.1).init(params))
    wider = _params(sizes=(3, 5, 2))
    # the architecture in layer sizes, not a PyTreeDef or a leaf index
    with pytest.raises(ValueError, match=r"s\.npz: the state is for a 3-4-2 tanh/softmax "
                                         r"network; this run has a 3-5-2 tanh/softmax network"):
        train_state.load_train_state(path, wider, opt.init(wider))


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    params = _params()
    path = tmp_path / "s.npz"
    train_state.save_train_state(str(path), params, (), params, {"epoch": 1})
    raw = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="training state .*nope.npz does not exist"):
        train_state.load_train_state(str(tmp_path / "nope.npz"), params, ())
    cut = tmp_path / "cut.npz"
    for end in (0, 10, len(raw) // 2, len(raw) - 1):
        cut.write_bytes(raw[:end])
        with pytest.raises(ValueError, match=r"training state .*cut\.npz .*(corrupt|empty)"):
            train_state.load_train_state(str(cut), params, ())
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 4
    cut.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        train_state.load_train_state(str(cut), params, ())
    model = tmp_path / "model.npz"
    mj.save(model, tuple(mj.Dense(np.asarray(p.W), np.asarray(p.b), p.activation)
                         for p in params))
    with pytest.raises(ValueError, match="not an mlds_jax training state: it is an "
                                         "mlds_jax.checkpoint file"):
        train_state.load_train_state(str(model), params, ())
    with pytest.raises(ValueError, match="not an mlds_jax checkpoint: it is an "
                                         "mlds_jax.train_state file"):
        mj.load(path)


def test_version_2_must_be_signed(tmp_path):
    """A version-2 state re-packed without its signature (the unsigned layout is version 1's
    alone) is refused."""
    params = _params()
    path = tmp_path / "s.npz"
    train_state.save_train_state(str(path), params, (), params, {"epoch": 1})
    with container.open_container(str(path), what="training state",
                                  format_name=train_state.FORMAT_NAME) as c:
        header = c.header
    with np.load(path) as npz:
        entries = [(name, npz[name]) for name in npz.files if name != "__header__"]
    unsigned = tmp_path / "unsigned.npz"
    np.savez(unsigned, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **dict(entries))
    with pytest.raises(ValueError, match="checksum is missing"):
        train_state.load_train_state(str(unsigned), params, ())
    assert os.path.getsize(unsigned) > 0
