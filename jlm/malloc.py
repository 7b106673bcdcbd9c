"""Keep glibc's malloc from fragmenting a long CPU run's memory across per-thread arenas.

glibc gives each thread that contends for malloc an arena of its own, up to 8 per core. XLA's CPU
runtime runs ~20 threads that allocate and free large host buffers, and over a 40-step training run
the arenas grew to 47 (4.1 GB, mostly fragmented live memory that `malloc_trim` could not return):
the whole run peaked at 8.4-8.9 GB where its first steps needed 4.4 GB. With two arenas a run of
the same budget peaked at 7.99 GB (what growth is left follows each newly compiled step shape).

`cap_arenas()` must run before XLA starts its threads (glibc fixes the arena limit the first time
it needs a ninth arena); `jlm` calls it first thing, and `jlm.train.train` calls it again for
library users. A `MALLOC_ARENA_MAX` the user set wins; on other C libraries it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import tempfile
from pathlib import Path

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl and macOS have no arenas to cap
        return libc
    except (OSError, AttributeError):
        return None


def cap_arenas(n: int = ARENAS) -> bool:
    """Limit malloc to `n` arenas for the rest of the process; True if the limit is in force."""
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc read it at start-up
        return True
    libc = _libc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, n) == 1


def arena_count() -> int | None:
    """How many malloc arenas the process has now (glibc's `malloc_info`); None off glibc."""
    libc = _libc()
    if libc is None:
        return None
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        fp = libc.fopen(f.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        return len(re.findall(r"<heap nr=", Path(f.name).read_text()))
