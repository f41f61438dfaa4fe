"""core.memory: freed heap memory goes back to the system when trimmed, threads share the arenas allowed (glibc),
and MKL's buffer cache is turned off unless the environment says otherwise."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import memory

ROOT = Path(__file__).resolve().parents[1]
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


ARENAS_PROBE = """
import ctypes, sys, threading
from core import memory
print(memory.limit_arenas(int(sys.argv[1])))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
held = []
def allocate():
    held.append(libc.malloc(1_024))
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
"""


def _arenas(limit: int) -> tuple[str, int]:
    env = {name: value for name, value in os.environ.items() if name not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_PROBE, str(limit)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


@pytest.mark.skipif(not memory.trim_available(), reason="not glibc")
def test_threads_share_at_most_the_arenas_allowed() -> None:
    assert _arenas(1) == ("True", 1)
    told, arenas = _arenas(0)
    assert told == "False" and arenas > 1, "without a limit, glibc gives threads arenas of their own"


@pytest.mark.skipif(not memory.trim_available(), reason="not glibc")
def test_an_arena_count_in_the_environment_wins(monkeypatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert memory.limit_arenas(2) is False


def test_the_mkl_buffer_cache_is_dropped_unless_the_environment_says_otherwise(monkeypatch) -> None:
    monkeypatch.delenv(memory.MKL_NO_BUFFER_CACHE, raising=False)
    memory.drop_mkl_buffer_cache()
    assert os.environ[memory.MKL_NO_BUFFER_CACHE] == "1"
    monkeypatch.setenv(memory.MKL_NO_BUFFER_CACHE, "yes")
    memory.drop_mkl_buffer_cache()
    assert os.environ[memory.MKL_NO_BUFFER_CACHE] == "yes"
