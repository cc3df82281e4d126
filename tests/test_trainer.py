"""The Trainer, the reuse of compiled programs, and the callback protocol.

A compiled program is reused only when it is provably the same computation
(:mod:`mlds_jax.training.program`): the stale cases a closure fingerprint got wrong (a global
read by a schedule, a mutated schedule object, a custom transformation reading a global) must
train with the new values, whatever ran before in the process.  Each test builds both calls
itself, so none depends on the order the tests run in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import F64, assert_trees_close, bit_identical, compilations, make_problem

import mlds_jax as mj
from mlds_jax.training import program
from mlds_jax.training.step import layout_hinted


def _problem(key, n=12, dtype=F64):
    return make_problem(key, [3, 5, 3], "tanh", "softmax", "cross_entropy", n, dtype)


def _fit(params, X, y, optimizer, **kw):
    kw = {"epochs": 2, "batch_size": 4, "key": jax.random.key(3), "progress": False, **kw}
    return mj.fit(params, X, y, optimizer=optimizer, **kw)


def _moved(a, b) -> bool:
    return not bit_identical(a, b)


# --- a cache must never change an answer ------------------------------------------------------
LR = 0.5  # read by a schedule at trace time (the notebook cell re-run with a new value)


def test_a_schedule_reading_a_changed_global_gets_a_new_program(key):
    global LR
    params, X, y = _problem(key)
    LR = 0.5
    first, _ = _fit(params, X, y, optax.sgd(lambda step: LR))
    LR = 0.0
    second, _ = _fit(params, X, y, optax.sgd(lambda step: LR))
    assert _moved(first, params)
    assert bit_identical(second, params)  # lr 0 moves nothing: the new value was traced
    LR = 0.5
    again, _ = _fit(params, X, y, optax.sgd(lambda step: LR))
    assert bit_identical(again, first)


class _Schedule:
    def __init__(self, lr):
        self.lr = lr

    def __call__(self, step):
        return self.lr


def test_a_mutated_schedule_object_gets_a_new_program(key):
    params, X, y = _problem(key)
    schedule = _Schedule(0.3)
    opt = optax.sgd(schedule)
    first, _ = _fit(params, X, y, opt)
    schedule.lr = 0.0
    same_object, _ = _fit(params, X, y, opt)  # the very same optimizer object
    fresh, _ = _fit(params, X, y, optax.sgd(schedule))
    assert _moved(first, params)
    assert bit_identical(same_object, params) and bit_identical(fresh, params)


SCALE = 1.0


def _scaled_sgd(lr):
    """A hand-written transformation that reads a module global when traced."""
    sgd = optax.sgd(lr)

    def update(grads, state, params=None):
        updates, state = sgd.update(grads, state, params)
        return jax.tree_util.tree_map(lambda u: SCALE * u, updates), state

    return optax.GradientTransformation(sgd.init, update)


def test_a_custom_transformation_reading_a_changed_global_gets_a_new_program(key):
    global SCALE
    params, X, y = _problem(key)
    SCALE = 1.0
    one, _ = _fit(params, X, y, _scaled_sgd(0.2))
    SCALE = 0.0
    zero, _ = _fit(params, X, y, _scaled_sgd(0.2))
    SCALE = 2.0
    two, _ = _fit(params, X, y, _scaled_sgd(0.2))
    reference, _ = _fit(params, X, y, optax.sgd(0.4))  # 2 × 0.2, spelled differently
    SCALE = 1.0
    assert _moved(one, params) and bit_identical(zero, params)
    assert_trees_close(two, reference)


def test_a_reused_trainer_traces_the_optimizer_again_for_every_data_set(key):
    """An explicit Trainer owns its programs, but each prepare() describes the optimizer's
    update afresh: a changed global is never served the program compiled before."""
    global LR
    params, X, y = _problem(key)
    LR = 0.4
    trainer = mj.Trainer("cross_entropy", optax.sgd(lambda step: LR), batch_size=4)
    first, _ = mj.fit(params, X, y, trainer=trainer, epochs=2, progress=False)
    LR = 0.0
    second, _ = mj.fit(params, X, y, trainer=trainer, epochs=2, progress=False)
    LR = 0.5
    assert _moved(first, params) and bit_identical(second, params)


def test_fresh_sgd_and_adam_reuse_the_compiled_program(key):
    """What is provably the same computation is compiled once: a second fit with a fresh
    optax.sgd(0.01) or optax.adam(1e-3) compiles nothing (backend compiles counted with
    jax.monitoring); a different constant compiles again (the negative control)."""
    params, X, y = _problem(key, n=16)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes int and float
        for make in (lambda: optax.sgd(0.01), lambda: optax.adam(1e-3)):
            _fit(params, X, y, make())
            with compilations() as compiled:
                _fit(params, X, y, make(), key=jax.random.key(7), epochs=3)
            assert compiled == []
        with compilations() as compiled:
            _fit(params, X, y, optax.adam(2e-3))
        assert compiled == ["jit(epochs)"]


def test_update_identity_is_what_the_update_computes(key):
    params, _, _ = _problem(key)
    ident = program.UpdateIdentity
    with jax.numpy_dtype_promotion("standard"):
        assert ident(optax.adam(1e-3), params) == ident(optax.adam(1e-3), params)
        assert ident(optax.adam(1e-3), params) != ident(optax.adam(1e-4), params)
        assert ident(optax.sgd(0.1), params) != ident(optax.sgd(0.1, momentum=0.9), params)
        injected = optax.inject_hyperparams(optax.sgd)
        # hyperparameters as optimizer state are inputs, not constants: one program
        assert ident(injected(learning_rate=0.1), params) == ident(
            injected(learning_rate=0.3), params
        )
    # another network: another identity (shapes are part of the traced computation)
    other = mj.init_mlp(jax.random.key(1), [3, 4, 3], output="softmax", dtype=F64)
    assert ident(optax.sgd(0.1), params) != ident(optax.sgd(0.1), other)

    def noisy(grads, state, params=None):  # a host callback: only known equal to itself
        jax.debug.callback(lambda: None)
        return grads, state

    a = ident(optax.GradientTransformation(optax.sgd(0.1).init, noisy), params)
    b = ident(optax.GradientTransformation(optax.sgd(0.1).init, noisy), params)
    assert a == a and a != b


# --- the Trainer ------------------------------------------------------------------------------
def test_trainer_run_is_fit_chunk_by_chunk(key):
    """prepare/init/run in chunks of any size give fit's params and history bit for bit; a
    state carried into another run call continues the optimizer (partial_fit's way)."""
    params, X, y = _problem(key, n=14)
    opt = optax.sgd(0.1, momentum=0.9)
    fitted, history = _fit(params, X, y, opt, epochs=5, validation_data=(X[:5], y[:5]))
    trainer = mj.Trainer("cross_entropy", opt, batch_size=4)
    data = trainer.prepare(params, X, y, key=jax.random.key(3), validation_data=(X[:5], y[:5]))
    state = trainer.init(params, data)
    logs = []
    for k in (2, 1, 2):
        state, chunk = trainer.run(state, data, k)
        assert chunk.status == "running" and len(chunk.logs) == k
        logs += chunk.logs
    assert state.epoch == 5
    assert bit_identical(state.params, fitted)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [row[name] for row in logs] == history[name]
    # continuing an optimizer state: run() of epoch 0 from a state whose params and opt_state
    # came from elsewhere is one more step sequence of that optimizer
    again = trainer.init(state.params, data, opt_state=state.opt_state)
    assert again.epoch == 0 and bit_identical(again.opt_state, state.opt_state)


def test_trainer_rejects_bad_settings(key):
    params, X, y = _problem(key)
    with pytest.raises(ValueError, match="unknown loss"):
        mj.Trainer("hinge")
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        mj.Trainer("cross_entropy", "sgd")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        mj.Trainer("cross_entropy", batch_size=0)
    with pytest.raises(TypeError, match="shuffle must be a bool"):
        mj.Trainer("cross_entropy", shuffle=1)
    trainer = mj.Trainer("cross_entropy", optax.sgd(0.1))
    with pytest.raises(ValueError, match="pass optimizer, batch_size to the Trainer"):
        mj.fit(params, X, y, trainer=trainer, optimizer=optax.sgd(0.1), batch_size=8)
    with pytest.raises(TypeError, match="trainer must be an mlds_jax.Trainer"):
        mj.fit(params, X, y, trainer="sgd")
    wrong = optax.adam(1e-3).init(params)
    data = trainer.prepare(params, X, y)
    with pytest.raises(TypeError, match="opt_state does not match"):
        trainer.init(params, data, opt_state=wrong)


def test_train_step_names_the_mismatched_optimizer_state_leaf(key):
    """A state built for another network fails with the leaf, its shape and the expected one
    (not optax's "add got incompatible shapes")."""
    params, X, y = _problem(key)
    other = mj.init_mlp(jax.random.key(2), [3, 6, 3], hidden="tanh", output="softmax", dtype=F64)
    opt = optax.sgd(0.1, momentum=0.9)
    step = mj.make_train_step(opt, "cross_entropy")
    with pytest.raises(ValueError, match=r"opt_state leaf .*shape \(3, 6\).* expect \(3, 5\)"):
        step(params, opt.init(other), X, y)
    step(params, opt.init(params), X, y)  # the right one passes


def test_train_step_row_weights_weight_the_examples(key):
    """step(..., row_weights=w) applies the optimizer to ∂/∂θ Σ_n w_n ℓ_n (L1), the core's
    weighted gradient; zero rows are padding."""
    params, X, y = _problem(key, n=6)
    w = jnp.asarray([0.5, 0.0, 0.25, 0.25, 0.0, 0.0], F64)
    opt = optax.sgd(0.3)
    new, _, metrics = mj.make_train_step(opt, "cross_entropy")(
        params, opt.init(params), X, y, row_weights=w
    )
    Y = mj.network.prepare_targets(params, y, "cross_entropy")
    value, grads = mj.core.value_and_grads(params, X, Y, "cross_entropy", row_weights=w,
                                           method="autodiff")  # fmt: skip
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.3 * g, params, grads)
    assert_trees_close(new, expected)
    np.testing.assert_allclose(float(metrics["loss"]), float(value), rtol=1e-12)
    with pytest.raises(ValueError, match="no positive entry"):
        mj.make_train_step(opt, "cross_entropy")(
            params, opt.init(params), X, y, row_weights=jnp.zeros(6)
        )


def test_the_layout_hint_changes_only_the_summation_order(key):
    """layout_hinted passes small layer inputs through a materialised transpose (a hint for
    XLA:CPU's kernels): (Aᵀ)ᵀ = A, so the jitted backward computes the same products, equal
    up to the summation order of a dot (float32 rounding: the suite's float32 tolerance)."""
    params, X, y = make_problem(key, [6, 9, 4], "relu", "softmax", "cross_entropy", 32,
                                jnp.float32)  # fmt: skip
    Y = mj.network.prepare_targets(params, y, "cross_entropy")

    @jax.jit
    def both(p):
        cache = mj.core.forward_cache(p, X)
        plain = mj.core.backward(p, cache, Y, "cross_entropy").grads
        hinted = mj.core.backward(p, layout_hinted(cache), Y, "cross_entropy").grads
        return plain, hinted

    plain, hinted = both(params)
    assert_trees_close(hinted, plain)


# --- callbacks --------------------------------------------------------------------------------
class _Recorder(mj.Callback):
    """Records the hooks; due every ``every`` epochs; stops after epoch ``stop_at``."""

    def __init__(self, every=None, stop_at=None):
        self.every, self.stop_at, self.calls = every, stop_at, []

    def on_train_begin(self, run):
        self.calls.append(("begin", run.state.epoch))

    def epochs_until_due(self, epoch):
        return None if self.every is None else self.every - epoch % self.every

    def on_epoch_end(self, epoch, logs, run):
        logs["twice_loss"] = 2 * logs["loss"]
        self.calls.append(("epoch", epoch))
        return epoch == self.stop_at

    def on_chunk_end(self, run):
        self.calls.append(("chunk", run.state.epoch, len(run.history["loss"])))

    def on_train_end(self, run):
        self.calls.append(("end", run.state.epoch))


def test_callbacks_see_every_epoch_chunks_end_where_due_and_can_stop(key):
    params, X, y = _problem(key)
    opt = optax.sgd(0.1)
    plain, h0 = _fit(params, X, y, opt, epochs=5)
    rec = _Recorder(every=2)
    fitted, history = _fit(params, X, y, opt, epochs=5, callbacks=[rec])
    assert bit_identical(fitted, plain)  # chunking changes no result
    assert history["twice_loss"] == [2 * v for v in h0["loss"]]  # logs entries are recorded
    chunks = [c for c in rec.calls if c[0] == "chunk"]
    assert [c[1] for c in chunks] == [2, 4, 5]  # due every 2 epochs; the rest at the end
    assert all(epoch == n for _, epoch, n in chunks)  # the history matches the state
    assert rec.calls[0] == ("begin", 0) and rec.calls[-1] == ("end", 5)
    assert [c[1] for c in rec.calls if c[0] == "epoch"] == [0, 1, 2, 3, 4]
    stopper = _Recorder(every=1, stop_at=1)
    _, history = _fit(params, X, y, opt, epochs=5, callbacks=[stopper])
    assert len(history["loss"]) == 2 and history.stop_reason == "callback"


def test_callbacks_must_be_callbacks(key):
    params, X, y = _problem(key)
    with pytest.raises(TypeError, match="callbacks must be a list"):
        _fit(params, X, y, optax.sgd(0.1), callbacks=_Recorder())
    with pytest.raises(TypeError, match="is not a training callback"):
        _fit(params, X, y, optax.sgd(0.1), callbacks=[print])


def test_checkpoint_dir_is_created_with_its_parents(key, tmp_path):
    params, X, y = _problem(key)
    target = tmp_path / "runs" / "a" / "b"
    _fit(params, X, y, optax.sgd(0.1), checkpoint_dir=target)
    assert (target / "train_state.npz").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        _fit(params, X, y, optax.sgd(0.1), checkpoint_dir=tmp_path / "file")
