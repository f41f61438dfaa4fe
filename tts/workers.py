"""The synthesis worker pool: at most tts.max_concurrent syntheses at once, admitted in arrival order.

A request waits for a worker for up to tts.queue_timeout_s, then gets EngineBusy (with Retry-After).
A turn that has started speaking asks for its later workers without that timeout: it is never cut off
mid-reply because a later request took the worker between two of its sentences (the wait stays
bounded: each request ahead of it holds a worker for one synthesis, and new arrivals still time out).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio

from core.config import TtsSettings
from core.errors import EngineBusy
from core.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@dataclass
class PoolCounters:
    waiting: int = 0
    """Syntheses waiting for a worker now."""
    running: int = 0
    """Syntheses running in a worker now."""
    served: int = 0
    """Turns completed."""
    rejected_busy: int = 0
    cancelled: int = 0
    """Turns stopped early (client gone or cancelled)."""
    turns: int = 0
    """Turns in progress now."""


class WorkerPool:
    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        # Admission: who may synthesize now (FIFO, so waiting requests are served in arrival order).
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        # The threads themselves; never contended, since admission already bounds them.
        self._threads = anyio.CapacityLimiter(settings.max_concurrent)
        self.counters = PoolCounters()

    @property
    def size(self) -> int:
        return self.settings.max_concurrent

    @asynccontextmanager
    async def worker(self, *, timeout: bool = True) -> AsyncIterator[float]:
        """Hold one worker; yields the seconds waited for it. `timeout` False: wait as long as it takes."""
        waited = await self._acquire(timeout)
        try:
            yield waited
        finally:
            self.limiter.release()

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Run blocking `function(*args)` on a thread while holding a worker (see `worker`). Not abandoned
        on cancel: the caller tells the function to stop (a cancel flag it checks between sentences) and
        the worker is freed only when its thread really is free."""
        self.counters.running += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self._threads)
        finally:
            self.counters.running -= 1

    async def _acquire(self, timeout: bool) -> float:
        tts = self.settings
        if self.limiter.available_tokens < 1:
            log.warning(
                "TTS concurrent limit",
                max_concurrent=tts.max_concurrent,
                waiting=self.counters.waiting + 1,
                queue_timeout_s=tts.queue_timeout_s,
            )
        started = anyio.current_time()
        self.counters.waiting += 1
        try:
            with anyio.move_on_after(tts.queue_timeout_s if timeout else math.inf) as scope:
                await self.limiter.acquire()
        finally:
            self.counters.waiting -= 1
        if scope.cancelled_caught:
            self.counters.rejected_busy += 1
            raise EngineBusy(
                f"all {tts.max_concurrent} speech workers stayed busy for {tts.queue_timeout_s:g} s "
                "(tts.max_concurrent, tts.queue_timeout_s); try again later",
                retry_after_s=tts.retry_after_s,
            )
        return anyio.current_time() - started
