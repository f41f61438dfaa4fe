"""Hands the heap memory that model work freed back to the operating system (glibc's malloc_trim).

glibc keeps what a thread frees in that thread's arena for its next allocation. A CTranslate2 worker
that ran a transcription keeps its activations' memory that way: measured with the tiny-shaped Whisper
and two workers, resident memory stayed 120 MB above the loaded model until `malloc_trim(0)` (5 ms)
gave 63 MB of it back. Trimming costs the next run some page faults, so a service trims only once its
workers have been idle for a while. Elsewhere (musl, macOS) there is no malloc_trim and nothing is done.
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
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def trim_available() -> bool:
    """Whether this C library can hand freed heap memory back (glibc)."""
    return _malloc_trim() is not None


def resident_mb() -> float:
    """This process's resident memory, MB (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576


def trim() -> float:
    """Hand freed heap memory back now (blocking, a few ms); the resident MB it gave back (0 when it cannot)."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return 0.0
    before = resident_mb()
    malloc_trim(0)
    freed = max(0.0, before - resident_mb())
    log.debug("memory_trimmed", freed_mb=round(freed, 1), resident_mb=round(before - freed, 1))
    return freed
