"""Tests for mlds_jax.compilation: where the persistent cache lives, and that an unusable one
never stops a run.  JAX's cache config is global: every test that turns it on restores it."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cc

import mlds_jax as mj
from mlds_jax import compilation

CONFIG = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture
def restore_jax_cache_config():
    saved = {name: getattr(jax.config, name) for name in CONFIG}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    jax_cc.reset_cache()


def test_default_cache_dir_follows_xdg_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MLDS_JAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mj.compilation.default_cache_dir() == str(tmp_path / "xdg" / "mlds-jax" / "jax")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = str(tmp_path / "home" / ".cache" / "mlds-jax" / "jax")
    assert mj.compilation.default_cache_dir() == expected
    monkeypatch.delenv("XDG_CACHE_HOME")
    expected = str(tmp_path / "home" / ".cache" / "mlds-jax" / "jax")
    assert mj.compilation.default_cache_dir() == expected
    monkeypatch.setenv("MLDS_JAX_CACHE_DIR", str(tmp_path / "mine"))
    assert mj.compilation.default_cache_dir() == str(tmp_path / "mine")


def test_enable_writes_entries_and_survives_corrupt_ones(tmp_path, restore_jax_cache_config):
    """Entries appear in the directory; after they are overwritten with garbage, a new
    compilation of the same program warns (JAX skips the entry) and still computes."""
    path = tmp_path / "cache"
    assert mj.enable_compilation_cache(path) == str(path)
    assert jax.config.jax_compilation_cache_dir == str(path)

    def f(x):
        return jnp.tanh(x) @ x.T + 0.125

    x = jnp.arange(12.0).reshape(3, 4) / 10
    expected = np.tanh(np.asarray(x)) @ np.asarray(x).T + 0.125
    np.testing.assert_allclose(jax.jit(f)(x), expected, rtol=1e-12)
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    assert entries
    for p in entries:
        p.write_bytes(b"garbage")
    jax.clear_caches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(jax.jit(f)(x), expected, rtol=1e-12)
    assert any("persistent compilation cache" in str(w.message) for w in caught)


def test_unusable_directory_warns_once_and_changes_nothing(tmp_path, restore_jax_cache_config):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    before = jax.config.jax_compilation_cache_dir
    with pytest.warns(mj.compilation.CompilationCacheWarning, match="not usable"):
        assert mj.enable_compilation_cache(blocker / "cache") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same directory again: no second warning
        assert mj.enable_compilation_cache(blocker / "cache") is None
    assert jax.config.jax_compilation_cache_dir == before
    assert jnp.sum(jax.jit(jnp.sin)(jnp.ones(3))) > 0  # compiling still works


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_not_used(tmp_path, restore_jax_cache_config):
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o500)
    try:
        with pytest.warns(mj.compilation.CompilationCacheWarning):
            assert mj.enable_compilation_cache(path) is None
    finally:
        path.chmod(0o700)


def test_module_documents_how_to_clear_the_cache():
    assert "delete" in compilation.__doc__ and "~/.cache/mlds-jax" in compilation.__doc__


# --- the default policy: on at the first training call, off by one switch -------------------------
_SCRIPT = """
import json, sys, warnings
import jax, numpy as np, optax
import mlds_jax as mj
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
before = jax.config.jax_compilation_cache_dir  # importing mlds_jax changes nothing
X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
y = np.arange(20) % 2
params = mj.init_mlp(jax.random.key(0), [3, 4, 2], output="softmax", dtype=np.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mj.fit(params, X, y, optimizer=optax.sgd(0.1), epochs=2, batch_size=8, progress=False)
print(json.dumps({"before": before, "after": jax.config.jax_compilation_cache_dir,
                  "hits": len(hits), "warnings": [str(w.message) for w in caught]}))
"""


def _run_script(env_changes: dict) -> dict:
    import json
    import subprocess
    import sys

    env = {**os.environ, **env_changes}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_first_training_call_turns_the_default_cache_on_and_a_later_run_reads_it(tmp_path):
    cache = tmp_path / "cache"
    env = {"MLDS_JAX_COMPILATION_CACHE": "", "MLDS_JAX_CACHE_DIR": str(cache)}
    first = _run_script(env)
    assert first["before"] is None and first["after"] == str(cache)
    assert any(p.name.startswith("jit_epochs") for p in cache.iterdir())
    second = _run_script(env)  # a later run: the compiled programs come from the cache
    assert second["hits"] > 0 and second["warnings"] == []


def test_the_switch_turns_the_default_cache_off(tmp_path):
    cache = tmp_path / "cache"
    result = _run_script({"MLDS_JAX_COMPILATION_CACHE": "0", "MLDS_JAX_CACHE_DIR": str(cache)})
    assert result["after"] is None and not cache.exists()


def test_a_broken_default_cache_directory_never_stops_a_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_script({"MLDS_JAX_COMPILATION_CACHE": "", "MLDS_JAX_CACHE_DIR": str(blocker)})
    assert result["after"] is None  # trained without it
    assert len(result["warnings"]) == 1 and "not usable" in result["warnings"][0]
