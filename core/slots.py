"""A slot of a bounded resource taken at once or refused, never waited for: what a request holds while its
upload sits in memory (files being transcribed, voice uploads being checked)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from core.errors import ServiceError


@asynccontextmanager
async def slot_or_refuse(limiter: anyio.CapacityLimiter, refusal: Callable[[], ServiceError]) -> AsyncIterator[None]:
    """One token of `limiter`, held inside the block; `refusal()` is raised when every one is taken."""
    token = object()
    try:
        limiter.acquire_on_behalf_of_nowait(token)
    except anyio.WouldBlock:
        raise refusal() from None
    try:
        yield
    finally:
        limiter.release_on_behalf_of(token)
