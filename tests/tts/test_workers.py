"""tts.workers.PriorityLimiter: a freed worker goes to the earliest turn; a waiter that gives up passes on
a slot handed to it, and leaves the queue otherwise."""

from __future__ import annotations

import anyio
import pytest

from tts.workers import PriorityLimiter


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_earliest_turn_goes_first_whatever_the_arrival_order() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire(priority=1.0)  # turn 1's first fragment holds the worker
    order: list[str] = []

    async def fragment(name: str, priority: float) -> None:
        await limiter.acquire(priority)
        order.append(name)
        limiter.release()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(fragment, "turn 2, first fragment", 2.0)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(fragment, "turn 1, second fragment", 1.0)  # arrives later, started earlier
        await anyio.wait_all_tasks_blocked()
        limiter.release()
    assert order == ["turn 1, second fragment", "turn 2, first fragment"]
    assert limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_a_waiter_that_gives_up_leaves_no_slot_behind() -> None:
    limiter = PriorityLimiter(1)
    await limiter.acquire(priority=0.0)
    with anyio.move_on_after(0.01):
        await limiter.acquire(priority=1.0)
    assert limiter._waiters == []  # left the queue
    limiter.release()
    assert (limiter.borrowed_tokens, limiter.available_tokens) == (0, 1)
