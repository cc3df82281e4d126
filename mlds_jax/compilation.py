"""JAX's persistent compilation cache, for programs compiled in earlier processes.

Within one process :func:`mlds_jax.fit` reuses its compiled epochs by itself.  A new process
(every ``mlds-jax train`` run, a fresh notebook kernel) starts with an empty in-memory cache;
with the persistent cache on, XLA's compiled programs are written to a directory and read back
by later processes instead of being compiled again.  JAX keys the entries on the lowered
program, the compiler options, the JAX/jaxlib versions and the device, so an entry is reused
only for the very same computation.

The policy: **on by default, off by one switch.**  Most users run a script once and then
again; the second run should not wait for the same compiles.  So the first training call in a
process (:func:`mlds_jax.fit`, a :class:`mlds_jax.Trainer`, the estimators, the ``mlds-jax``
command) turns the cache on in :func:`default_cache_dir`, with :func:`use_default_cache`,
unless

* the environment says no: ``MLDS_JAX_COMPILATION_CACHE=0`` (or ``off``, ``false``, ``no``;
  the command line's ``--no-compilation-cache`` too), or :func:`disable_compilation_cache`
  was called;
* the process already configured JAX's cache (``jax_compilation_cache_dir`` is set, e.g. by
  :func:`enable_compilation_cache` with another path, or by the user): that choice stands.

It is JAX's global config, so it then caches every program of the process, the user's own
jitted functions too (keyed on the program: never a wrong reuse).  Importing ``mlds_jax``
changes nothing; only a training call does.

Where: ``$MLDS_JAX_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mlds-jax/jax``, else
``~/.cache/mlds-jax/jax``.  To clear it, delete that directory (``rm -rf ~/.cache/mlds-jax``);
it is rebuilt on the next run.  A missing, unwritable or corrupt cache never stops a run:
an unusable directory gives one :class:`CompilationCacheWarning` and the program is compiled
as usual; an unreadable entry is skipped by JAX with a warning and compiled again.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import jax

__all__ = [
    "CompilationCacheWarning",
    "default_cache_dir",
    "disable_compilation_cache",
    "enable_compilation_cache",
    "use_default_cache",
]

#: The environment variable that turns the default cache off ("0", "off", "false", "no").
ENV_SWITCH = "MLDS_JAX_COMPILATION_CACHE"


class CompilationCacheWarning(RuntimeWarning):
    """The persistent compilation cache could not be used; programs are compiled as usual."""


def default_cache_dir() -> str:
    """``$MLDS_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlds-jax/jax``, else
    ``~/.cache/mlds-jax/jax`` (the XDG base directory rules; a relative XDG_CACHE_HOME is
    ignored, as the specification says)."""
    override = os.environ.get("MLDS_JAX_CACHE_DIR")
    if override:
        return os.path.abspath(os.path.expanduser(override))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlds-jax", "jax")


_warned: set[str] = set()
_policy: dict[str, bool] = {"decided": False}


def _warn_once(path: str, reason: str) -> None:
    if path in _warned:
        return
    _warned.add(path)
    warnings.warn(
        f"compilation cache {path!r} is not usable ({reason}); compiling without it",
        CompilationCacheWarning,
        stacklevel=3,
    )


def _usable(path: str) -> str | None:
    """None if ``path`` is (or can be made) a writable directory, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` for this process.

    Every program is cached, however quick to compile (JAX's defaults skip programs that
    compile in under a second, which is all of ours).  Global JAX config: it applies to every
    later compilation in the process.

    Args:
      path: the cache directory (created if missing); default :func:`default_cache_dir`.

    Returns:
      The directory in use, or None when it cannot be used (then one
      :class:`CompilationCacheWarning` is issued and nothing changes: programs compile as
      usual).  To clear the cache, delete the directory.
    """
    path = default_cache_dir() if path is None else os.path.abspath(os.fspath(path))
    reason = _usable(path)
    if reason is not None:
        _warn_once(path, reason)
        return None
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # re-initialise on the next compile, in the new directory
    return path


def disable_compilation_cache() -> None:
    """Turn the persistent compilation cache off for this process (JAX reads and writes no
    cache files from now on), and keep :func:`use_default_cache` from turning it on."""
    from jax.experimental.compilation_cache import compilation_cache

    _policy["decided"] = True
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def use_default_cache() -> str | None:
    """The default policy (see the module docstring), decided once per process: turn the
    persistent cache on in :func:`default_cache_dir` unless ``MLDS_JAX_COMPILATION_CACHE=0``,
    :func:`disable_compilation_cache`, or a cache directory already configured in JAX.

    Returns the directory in use (the configured one, if any), or None.  Never raises: an
    unusable directory gives one :class:`CompilationCacheWarning` and training goes on.
    """
    configured = getattr(jax.config, "jax_compilation_cache_dir", None)
    if _policy["decided"]:
        return configured
    _policy["decided"] = True
    if configured:
        return configured
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
        return None
    try:
        return enable_compilation_cache()
    except Exception as exc:  # noqa: BLE001 (a cache must never stop a run)
        _warn_once(default_cache_dir(), f"{type(exc).__name__}: {exc}")
        return None
