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


@pytest.mark.anyio
async def test_memory_is_trimmed_once_the_workers_have_been_idle() -> None:
    pool = TranscriptionPool(2)
    trims: list[int] = []
    idle_s = 0.05

    async def trims_become(count: int) -> None:
        with anyio.fail_after(10):
            while len(trims) < count:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(pool.trim_when_idle, lambda: trims.append(pool.busy), idle_s)
        await anyio.sleep(4 * idle_s)
        assert trims == []  # nothing ran: nothing to give back

        async with pool.final():
            pass
        await trims_become(1)

        # A transcription that finishes beside one still running: no trim while a worker is busy.
        holding, release = anyio.Event(), anyio.Event()

        async def long_final() -> None:
            async with pool.final():
                holding.set()
                await release.wait()

        tasks.start_soon(long_final)
        await holding.wait()
        async with pool.final():
            pass
        await anyio.sleep(6 * idle_s)
        assert len(trims) == 1
        release.set()
        await trims_become(2)

        await anyio.sleep(6 * idle_s)
        tasks.cancel_scope.cancel()
    assert trims == [0, 0]  # one trim per idle spell, never with a worker busy
