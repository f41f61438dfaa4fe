"""Conversations: the turns the assistant remembers (the user's words, what was really spoken), sent to
the LLM with every new turn. Kept in memory (`conversations.store: memory`) or in a SQLite file in
`data_dir` (`sqlite`) so they survive a restart.

Bounded by the config: turns per conversation (oldest dropped), conversations in all (least recently
used dropped), and idle time (forgotten). A turn is written once, when it ends or is cut, in one
transaction: a service killed mid-turn leaves no half turn behind.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio

from core.config import ConversationSettings
from core.errors import InvalidRequest

T = TypeVar("T")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def new_conversation_id() -> str:
    """Unguessable: an id is all it takes to read a conversation."""
    return secrets.token_urlsafe(12)


def check_conversation_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidRequest(
            "conversation_id must be 8 to 64 letters, digits, '-' or '_' (as the service gave it)", param="conversation_id"
        )
    return value


@dataclass(frozen=True)
class ConversationTurn:
    user: str
    """The user's words."""
    assistant: str
    """What the assistant said and the user heard (a cut reply: only the part played)."""
    interrupted: bool = False


class ConversationStore(ABC):
    def __init__(self, settings: ConversationSettings) -> None:
        self.settings = settings

    @abstractmethod
    async def turns(self, conversation: str) -> list[ConversationTurn] | None:
        """The conversation's turns, oldest first; None when it is unknown, forgotten or deleted."""

    @abstractmethod
    async def append(self, conversation: str, turn: ConversationTurn) -> None:
        """Record a turn (the conversation is created by its first turn)."""

    @abstractmethod
    async def amend_last(self, conversation: str, before: ConversationTurn, after: ConversationTurn) -> bool:
        """Replace the conversation's newest turn with `after` if it is still `before` (a reply whose
        playback the client cut after it was recorded); False when it is not (gone, or a newer turn)."""

    @abstractmethod
    async def delete(self, conversation: str) -> bool:
        """Forget a conversation; False when there was none."""

    async def close(self) -> None:  # noqa: B027 (optional: only a file store holds something to close)
        """Release the store."""

    async def history(self, conversation: str) -> list[tuple[str, str]]:
        """The newest turns that fit in conversations.max_history_chars, oldest first, for the LLM."""
        budget = self.settings.max_history_chars
        kept: list[tuple[str, str]] = []
        for turn in reversed(await self.turns(conversation) or []):
            cost = len(turn.user) + len(turn.assistant)
            if cost > budget:
                break
            budget -= cost
            kept.append((turn.user, turn.assistant))
        return kept[::-1]


@dataclass
class _Held:
    turns: deque[ConversationTurn]
    used: float = field(default_factory=time.monotonic)


class MemoryStore(ConversationStore):
    """In this process only; gone with it."""

    def __init__(self, settings: ConversationSettings) -> None:
        super().__init__(settings)
        self._conversations: OrderedDict[str, _Held] = OrderedDict()

    def _expire(self) -> None:
        deadline = time.monotonic() - self.settings.idle_ttl_s
        while self._conversations and next(iter(self._conversations.values())).used < deadline:
            self._conversations.popitem(last=False)  # least recently used first: the oldest idle ones

    async def turns(self, conversation: str) -> list[ConversationTurn] | None:
        self._expire()
        held = self._conversations.get(conversation)
        return None if held is None else list(held.turns)

    async def append(self, conversation: str, turn: ConversationTurn) -> None:
        self._expire()
        held = self._conversations.pop(conversation, None) or _Held(deque(maxlen=self.settings.max_turns))
        held.turns.append(turn)
        held.used = time.monotonic()
        self._conversations[conversation] = held
        while len(self._conversations) > self.settings.max_conversations:
            self._conversations.popitem(last=False)

    async def amend_last(self, conversation: str, before: ConversationTurn, after: ConversationTurn) -> bool:
        self._expire()
        held = self._conversations.get(conversation)
        if held is None or not held.turns or held.turns[-1] != before:
            return False
        held.turns[-1] = after
        return True

    async def delete(self, conversation: str) -> bool:
        return self._conversations.pop(conversation, None) is not None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (id TEXT PRIMARY KEY, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    assistant TEXT NOT NULL,
    interrupted INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)
);
CREATE INDEX IF NOT EXISTS conversations_used ON conversations(used);
"""


class SqliteStore(ConversationStore):
    """One SQLite file, written in WAL mode, one transaction per turn (off the event loop)."""

    def __init__(self, settings: ConversationSettings, path: Path) -> None:
        super().__init__(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        def locked() -> T:
            with self._lock:
                return function(*args)

        return await anyio.to_thread.run_sync(locked)

    def _expire(self) -> None:
        self._db.execute("DELETE FROM conversations WHERE used < ?", (time.time() - self.settings.idle_ttl_s,))

    def _turns(self, conversation: str) -> list[ConversationTurn] | None:
        self._expire()
        if self._db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation,)).fetchone() is None:
            return None
        rows = self._db.execute(
            "SELECT user, assistant, interrupted FROM turns WHERE conversation = ? ORDER BY seq", (conversation,)
        ).fetchall()
        return [ConversationTurn(user, assistant, bool(interrupted)) for user, assistant, interrupted in rows]

    def _append(self, conversation: str, turn: ConversationTurn) -> None:
        db = self._db
        with db:  # one transaction: the turn is there whole, or not at all
            db.execute("BEGIN IMMEDIATE")
            self._expire()
            db.execute(
                "INSERT INTO conversations (id, used) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET used = excluded.used",
                (conversation, time.time()),
            )
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation = ?", (conversation,)).fetchone()
            db.execute(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?)", (conversation, seq, turn.user, turn.assistant, int(turn.interrupted))
            )
            db.execute("DELETE FROM turns WHERE conversation = ? AND seq <= ?", (conversation, seq - self.settings.max_turns))
            db.execute(
                "DELETE FROM conversations WHERE id IN (SELECT id FROM conversations ORDER BY used DESC LIMIT -1 OFFSET ?)",
                (self.settings.max_conversations,),
            )

    def _amend_last(self, conversation: str, before: ConversationTurn, after: ConversationTurn) -> bool:
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._expire()
            changed = db.execute(
                "UPDATE turns SET assistant = ?, interrupted = ? WHERE conversation = ? AND user = ? AND assistant = ?"
                " AND interrupted = ? AND seq = (SELECT MAX(seq) FROM turns WHERE conversation = ?)",
                (after.assistant, int(after.interrupted), conversation, before.user, before.assistant, int(before.interrupted), conversation),
            )
            return changed.rowcount > 0

    def _delete(self, conversation: str) -> bool:
        return self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation,)).rowcount > 0

    async def turns(self, conversation: str) -> list[ConversationTurn] | None:
        return await self._run(self._turns, conversation)

    async def append(self, conversation: str, turn: ConversationTurn) -> None:
        await self._run(self._append, conversation, turn)

    async def amend_last(self, conversation: str, before: ConversationTurn, after: ConversationTurn) -> bool:
        return await self._run(self._amend_last, conversation, before, after)

    async def delete(self, conversation: str) -> bool:
        return await self._run(self._delete, conversation)

    async def close(self) -> None:
        await self._run(self._db.close)


def open_store(settings: ConversationSettings, data_dir: Path) -> ConversationStore:
    if settings.store == "sqlite":
        return SqliteStore(settings, data_dir / "conversations.sqlite3")
    return MemoryStore(settings)
