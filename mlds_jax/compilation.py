"""JAX's persistent compilation cache, for programs compiled in earlier processes.

Within one process :func:`mlds_jax.fit` reuses its compiled epochs by itself.  A new process
(every ``mlds-jax train`` run, a fresh notebook kernel) starts with an empty in-memory cache;
with the persistent cache on, XLA's compiled programs are written to a directory and read back
by later processes instead of being compiled again.  JAX keys the entries on the lowered
program, the compiler options, the JAX/jaxlib versions and the device, so an entry is reused
only for the very same computation.

* The ``mlds-jax`` command turns it on by default (``--no-compilation-cache`` turns it off).
* Library users opt in with :func:`enable_compilation_cache`: it changes JAX's global config
  for the whole process, which is an application's choice, not a library's.

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

__all__ = ["CompilationCacheWarning", "default_cache_dir", "enable_compilation_cache"]


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
