"""Suite-wide configuration: float64 and JAX's strict promotion modes, hypothesis profiles.

The three ``jax.config`` switches are set at import, before any test module builds arrays:

* ``jax_enable_x64``: the mathematical contract (manual == jax.grad to ~1e-15 relative) is
  checked in float64; float32 tests ask for ``dtype=jnp.float32`` explicitly.
* ``jax_numpy_rank_promotion="raise"``: an implicit broadcast of (N,) against (N, 1), or of a
  bias (K,) against (N, K) without an explicit ``[None, :]``, is an error, not a silent
  (N, N) outer sum.  The library must run clean under it.
* ``jax_numpy_dtype_promotion="strict"``: mixing float32 and float64 (or int and float)
  arrays is an error, so a float32 network can't be silently upcast by a float64 constant.
"""

from __future__ import annotations

import os

# The library turns JAX's persistent compilation cache on at the first training call (see
# mlds_jax.compilation); the suite must not read or write ~/.cache: off here, for every test
# and every subprocess a test starts (tests/test_compilation.py turns it on where it tests it).
os.environ["MLDS_JAX_COMPILATION_CACHE"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# "ci": reproducible (derandomize) and no per-example deadline (the first example of a new
# shape pays for XLA compilation, which would trip hypothesis' 200 ms default).
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# "dev": more examples, random seeds; select with --hypothesis-profile=dev.
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _fresh_jit_caches_around_monkeypatching(request):
    """Tests that monkeypatch the registries (a deliberately wrong dA, say) must not leave
    compiled functions traced with the patched maths in the module-level jit caches, nor
    reuse ones traced before: clear them around every test that uses ``monkeypatch``."""
    patched = "monkeypatch" in request.fixturenames
    if patched:
        jax.clear_caches()
    yield
    if patched:
        jax.clear_caches()


@pytest.fixture
def key() -> jax.Array:
    """A fixed new-style PRNG key; tests split it as they need."""
    return jax.random.key(0)


@pytest.fixture
def op_by_op():
    """Run the test under ``jax.disable_jit()``: the library's jitted wrappers execute op by op.

    The public functions jit their core after validating, so every new architecture costs an
    XLA compilation (0.1-0.5 s).  The parametrised grids run hundreds of architectures over a
    handful of shapes: op by op, the compiled primitives are shared between them and the grid
    costs seconds instead of minutes.  Same mathematics, same validation; the jitted path is
    exercised by every other test and compared with this one in test_backprop's jit tests.
    """
    with jax.disable_jit():
        yield


def pytest_terminal_summary(terminalreporter):
    """Report the largest manual-vs-jax.grad differences the whole-network tests measured."""
    from helpers import ERROR_LOG

    if not ERROR_LOG:
        return
    terminalreporter.section("manual_grads vs jax.grad: largest differences")
    for dtype, log in sorted(ERROR_LOG.items()):
        terminalreporter.write_line(
            f"{dtype}: {log['n']} comparisons; max |manual - autodiff| = {log['abs']:.3g} "
            f"({log['abs_at']}); max leaf-relative = {log['rel']:.3g} ({log['rel_at']})"
        )
