"""The conversation stores (memory and SQLite) against the same rules: turns kept per conversation,
history within max_history_chars, idle expiry, least-recently-used eviction, delete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from core.config import ConversationSettings
from core.errors import InvalidRequest
from tts import conversations
from tts.conversations import (
    ConversationStore,
    ConversationTurn,
    MemoryStore,
    SqliteStore,
    check_conversation_id,
    new_conversation_id,
)


class Clock:
    """Stands in for the time module the stores read (monotonic for memory, wall time for SQLite)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(conversations, "time", fake)
    return fake


StoreFactory = Callable[..., ConversationStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    def make(**limits: object) -> ConversationStore:
        settings = ConversationSettings(store=request.param, **limits)
        if request.param == "sqlite":
            return SqliteStore(settings, tmp_path / "data" / "conversations.sqlite3")
        return MemoryStore(settings)

    return make


def run(test: Callable[[], object]) -> None:
    anyio.run(test)  # type: ignore[arg-type]


def turn(n: int, interrupted: bool = False) -> ConversationTurn:
    return ConversationTurn(f"user {n}", f"assistant {n}", interrupted)


def test_turns_come_back_in_order_and_the_oldest_are_dropped(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store(max_turns=3)

    async def test() -> None:
        assert await store.turns("unknown-1") is None
        for n in range(5):
            await store.append("talk-one", turn(n, interrupted=n == 4))
        assert await store.turns("talk-one") == [turn(2), turn(3), turn(4, True)]
        await store.close()

    run(test)


def test_history_is_the_newest_turns_that_fit(make_store: StoreFactory, clock: Clock) -> None:
    one_turn = len("user 1") + len("assistant 1")
    store = make_store(max_history_chars=2 * one_turn + 1)

    async def test() -> None:
        for n in range(4):
            await store.append("talk-one", turn(n))
        assert await store.history("talk-one") == [("user 2", "assistant 2"), ("user 3", "assistant 3")]
        assert await store.history("unknown-1") == []
        await store.close()

    run(test)


def test_no_history_with_a_zero_budget(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store(max_history_chars=0)

    async def test() -> None:
        await store.append("talk-one", turn(1))
        assert await store.history("talk-one") == []
        assert await store.turns("talk-one") == [turn(1)]
        await store.close()

    run(test)


def test_an_idle_conversation_is_forgotten(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store(idle_ttl_s=60)

    async def test() -> None:
        await store.append("talk-old", turn(1))
        clock.now += 30
        await store.append("talk-new", turn(1))
        clock.now += 31  # the first is 61 s idle, the second 31 s
        assert await store.turns("talk-old") is None
        assert await store.turns("talk-new") == [turn(1)]
        await store.close()

    run(test)


def test_the_least_recently_used_conversation_is_dropped_first(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store(max_conversations=2)

    async def test() -> None:
        await store.append("talk-a", turn(1))
        clock.now += 1
        await store.append("talk-b", turn(1))
        clock.now += 1
        await store.append("talk-a", turn(2))  # a is used again: b is now the least recent
        clock.now += 1
        await store.append("talk-c", turn(1))
        assert await store.turns("talk-b") is None
        assert await store.turns("talk-a") == [turn(1), turn(2)]
        assert await store.turns("talk-c") == [turn(1)]
        await store.close()

    run(test)


def test_delete(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store()

    async def test() -> None:
        await store.append("talk-one", turn(1))
        assert await store.delete("talk-one") is True
        assert await store.turns("talk-one") is None
        assert await store.delete("talk-one") is False
        await store.close()

    run(test)


def test_only_the_newest_turn_as_recorded_is_amended(make_store: StoreFactory, clock: Clock) -> None:
    store = make_store()
    cut = ConversationTurn("user 2", "assistant", True)

    async def test() -> None:
        await store.append("talk-one", turn(1))
        await store.append("talk-one", turn(2))
        assert await store.amend_last("talk-one", turn(1), cut) is False  # not the newest
        assert await store.amend_last("talk-one", turn(3), cut) is False  # not as recorded
        assert await store.amend_last("talk-gone", turn(2), cut) is False
        assert await store.turns("talk-one") == [turn(1), turn(2)]
        assert await store.amend_last("talk-one", turn(2), cut) is True
        assert await store.turns("talk-one") == [turn(1), cut]
        assert await store.amend_last("talk-one", turn(2), turn(2)) is False  # already amended
        await store.close()

    run(test)


def test_sqlite_keeps_the_turns_across_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "data" / "conversations.sqlite3"

    async def test() -> None:
        first = SqliteStore(ConversationSettings(store="sqlite"), path)
        await first.append("talk-one", turn(1, True))
        await first.close()
        again = SqliteStore(ConversationSettings(store="sqlite"), path)
        assert await again.turns("talk-one") == [turn(1, True)]
        await again.close()

    run(test)


def test_ids_are_unguessable_and_checked() -> None:
    ids = {new_conversation_id() for _ in range(100)}
    assert len(ids) == 100 and all(check_conversation_id(value) == value for value in ids)
    for bad in ("short", "has space here", "x" * 65, "semi;colon-123", "../../etc/passwd"):
        with pytest.raises(InvalidRequest, match="conversation_id"):
            check_conversation_id(bad)
