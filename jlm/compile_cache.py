"""A persistent XLA compilation cache for the command line, so that a second run of the same
command compiles nothing.

Programs go to `$JLM_CACHE_DIR` (default `~/.cache/jlm/xla`), in a folder named after the jlm
and jaxlib versions: an upgrade starts a fresh folder instead of loading programs built by
another version (JAX's own cache key covers the program, the compiler options and the backend).
The folder is safe to delete at any time. `JLM_COMPILATION_CACHE=0` turns it off; library users
opt in with `enable()`.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    import jax
    import jaxlib

    from jlm import __version__
    root = Path(os.environ.get("JLM_CACHE_DIR") or Path.home() / ".cache" / "jlm" / "xla")
    return root / f"jlm{__version__}-jax{jax.__version__}-jaxlib{jaxlib.__version__}"


def enable() -> Path | None:
    """Point JAX's persistent cache at `cache_dir()`; None (and no cache) when turned off or the
    folder cannot be made (a read-only home, say)."""
    if os.environ.get("JLM_COMPILATION_CACHE", "1") == "0":
        return None
    import jax
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # CPU programs of a small model compile in well under JAX's default 1 s threshold, and a cold
    # CLI run compiles dozens of them: cache every one (a time threshold makes what is cached
    # depend on how busy the machine was, and a second run would compile again what fell under it)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
