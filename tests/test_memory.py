"""core.memory: freed heap memory goes back to the system when trimmed (glibc)."""

from __future__ import annotations

import ctypes

import pytest

from core import memory

BLOCK = 16_384
"""Below glibc's mmap threshold (128 KiB): these blocks come from the heap, where free keeps them."""


@pytest.mark.skipif(not memory.trim_available(), reason="no malloc_trim in this C library")
def test_trimming_gives_freed_heap_memory_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(4_096)]  # 64 MiB
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # resident, not only reserved
    keep = libc.malloc(BLOCK)  # above them all: free cannot shrink the heap from its top on its own
    for block in blocks:
        libc.free(block)
    try:
        assert memory.trim() >= 32
    finally:
        libc.free(keep)


def test_resident_memory_is_reported() -> None:
    assert memory.resident_mb() > 10
