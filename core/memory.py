"""Keeps the heap of model work small: fewer malloc arenas, no MKL buffer cache, and glibc's malloc_trim.

glibc keeps what a thread frees in that thread's arena for its next allocation. A CTranslate2 worker
that ran a transcription keeps its activations' memory that way: measured with the tiny-shaped Whisper
and two workers, resident memory stayed 120 MB above the loaded model until `malloc_trim(0)` (5 ms)
gave 63 MB of it back. Trimming costs the next run some page faults, so a service trims only once its
workers have been idle for a while. Elsewhere (musl, macOS) there is no malloc_trim and nothing is done.

Two settings keep the peak and what stays lower in the first place. glibc gives each thread that allocates
an arena of its own, up to 8 per core, so each worker keeps its own free memory; two arenas shared by all
threads keep it in one place. And on Intel CPUs, where CTranslate2's x86-64 builds compute with Intel MKL,
MKL keeps the buffers it freed in a cache of its own, which malloc_trim cannot reach. Measured in one process
with the tiny-shaped Whisper, two workers, two concurrent transcriptions, on an Intel CPU: peak 449 -> 415 MB,
after a trim 281 -> 244 MB, transcription times the same within the noise (the service's figures: README).
On an AMD EPYC, where CTranslate2 uses oneDNN, the same run peaked at 384-401 MB whichever of the two was on.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

from core.logging import get_logger

log = get_logger(__name__)


@functools.cache
def _libc_function(name: str) -> Callable[[int], int] | Callable[[int, int], int] | None:
    if os.name != "posix":  # Windows: CDLL(None) is no C library there
        return None
    try:
        return getattr(ctypes.CDLL(None), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


M_ARENA_MAX = -8
"""glibc's mallopt parameter for the most arenas (malloc.h)."""
MKL_NO_BUFFER_CACHE = "MKL_DISABLE_FAST_MM"
"""The environment variable that turns MKL's buffer cache off (any non-empty value); MKL reads it once, at its
first allocation."""


def _operator_set_arenas() -> bool:
    """Whether the environment tells glibc the arena count itself (MALLOC_ARENA_MAX, or GLIBC_TUNABLES)."""
    return bool(os.environ.get("MALLOC_ARENA_MAX")) or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", "")


def limit_arenas(count: int) -> bool:
    """Let the threads that get their arena from now on share at most `count` malloc arenas (threads that have
    one keep it). Nothing is done for 0, where the environment already sets the count (the operator's word
    wins), or without glibc's mallopt. True when asked of glibc (which does not say whether it applies)."""
    mallopt = _libc_function("mallopt")
    if not count or mallopt is None or _operator_set_arenas():
        return False
    return bool(mallopt(M_ARENA_MAX, count))  # type: ignore[call-arg]


def drop_mkl_buffer_cache() -> None:
    """Turn MKL's cache of freed buffers off, unless the environment already sets MKL_DISABLE_FAST_MM. Must
    run before the first model allocates: later, MKL has read it already. Without MKL nothing happens."""
    os.environ.setdefault(MKL_NO_BUFFER_CACHE, "1")


def trim_available() -> bool:
    """Whether this C library can hand freed heap memory back (glibc)."""
    return _libc_function("malloc_trim") is not None


def resident_mb() -> float:
    """This process's resident memory, MB (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576


def trim() -> float:
    """Hand freed heap memory back now (blocking, a few ms); the resident MB it gave back (0 when it cannot)."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return 0.0
    before = resident_mb()
    malloc_trim(0)
    freed = max(0.0, before - resident_mb())
    log.debug("memory_trimmed", freed_mb=round(freed, 1), resident_mb=round(before - freed, 1))
    return freed
