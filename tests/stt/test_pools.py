"""stt.pools.TranscriptionPool: live finals go before upload windows, partials never take the last worker."""

from __future__ import annotations

import anyio
import pytest

from stt.pools import TranscriptionPool


@pytest.mark.anyio
async def test_a_waiting_final_goes_before_windows_that_waited_longer() -> None:
    pool = TranscriptionPool(1)
    order: list[str] = []
    holding = anyio.Event()
    release = anyio.Event()

    async def window(name: str) -> None:
        async with pool.window():
            order.append(name)
            if name == "window-0":
                holding.set()
                await release.wait()

    async def final() -> None:
        async with pool.final():
            order.append("final")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(window, "window-0")
        await holding.wait()
        tasks.start_soon(window, "window-1")  # waits first...
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(final)  # ...but the final is served first
        await anyio.wait_all_tasks_blocked()
        assert pool.finals_waiting == 1
        release.set()
    assert order == ["window-0", "final", "window-1"]
    assert pool.busy == 0


@pytest.mark.anyio
async def test_partials_never_take_the_last_worker() -> None:
    pool = TranscriptionPool(2)
    first, second = object(), object()
    assert pool.try_partial(first) is True  # one of two taken: one is left for finals
    assert pool.try_partial(second) is False
    pool.release_partial(first)
    assert TranscriptionPool(1).try_partial(object()) is False
    assert pool.busy == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
