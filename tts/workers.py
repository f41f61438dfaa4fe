"""The synthesis worker pool: at most tts.max_concurrent syntheses at once.

A freed worker goes to the fragment of the turn that started earliest: a turn that has begun is spoken
to its end before later turns take its workers between its sentences (what a client waiting for the
whole audio wants, and what a peer with one lock does), and a turn waiting for its LLM leaves the worker
to the others meanwhile. Among turns that started at once, arrival order decides.

A turn's first fragment waits for a worker for up to tts.queue_timeout_s, then gets EngineBusy (with
Retry-After). A turn that has started speaking asks for its later workers without that timeout: it is
never cut off mid-reply (its wait is bounded by the turns older than it).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.lowlevel

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


class PriorityLimiter:
    """Like anyio's CapacityLimiter, but a freed slot goes to the waiter with the lowest priority value
    (arrival order among equals). anyio's own limiter is first come, first served only."""

    def __init__(self, total: int) -> None:
        self.total_tokens = total
        self.borrowed_tokens = 0
        self._waiters: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    @property
    def available_tokens(self) -> int:
        return self.total_tokens - self.borrowed_tokens

    async def acquire(self, priority: float) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self.borrowed_tokens < self.total_tokens and not self._waiters:
            self.borrowed_tokens += 1
            return
        entry = (priority, next(self._order), anyio.Event())
        heapq.heappush(self._waiters, entry)
        try:
            await entry[2].wait()
        except BaseException:
            if entry[2].is_set():
                self.release()  # the slot was handed over just as the wait gave up: pass it on
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        if self._waiters:
            heapq.heappop(self._waiters)[2].set()  # the slot passes straight to the next waiter
        else:
            self.borrowed_tokens -= 1


class WorkerPool:
    def __init__(self, settings: TtsSettings) -> None:
        self.settings = settings
        # Admission: who may synthesize now (the earliest turn first, see above).
        self.limiter = PriorityLimiter(settings.max_concurrent)
        # The threads themselves; never contended, since admission already bounds them.
        self._threads = anyio.CapacityLimiter(settings.max_concurrent)
        self.counters = PoolCounters()

    @property
    def size(self) -> int:
        return self.settings.max_concurrent

    async def acquire(self, priority: float, *, timeout: bool = True) -> float:
        """Take one worker (give it back with `release`); returns the seconds waited for it. `priority`: when
        the turn started (earlier goes first); `timeout` False: wait as long as it takes."""
        return await self._acquire(priority, timeout)

    def release(self) -> None:
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

    async def _acquire(self, priority: float, timeout: bool) -> float:
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
                await self.limiter.acquire(priority)
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
