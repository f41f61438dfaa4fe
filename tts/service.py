"""The TTS service core: the one protocol-free API every TTS protocol calls.

- `check_request`: a request's text, voice and speed checked against the limits, or the error that
  says what is wrong;
- `start_turn`: run a turn (tts/turn.py, tts/runner.py) as a cancellable async iterator of events;
  `speak` collects one into a whole Speech;
- `voices`, `health`, and the engine, the LLM and the worker pool behind them.

One instance per process, shared by every client of every protocol. It knows no HTTP or WebSocket.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup

from core.access import Access
from core.config import Settings
from core.errors import (
    ConversationBusy,
    ConversationNotFound,
    EmptyText,
    InvalidRequest,
    InvalidSpeed,
    ShuttingDown,
    TextTooLong,
)
from core.llm import LlmClient, LlmHealth, make_llm_client
from core.logging import get_logger
from core.ssml import looks_like_ssml, parse_ssml
from tts.conversations import ConversationTurn, check_conversation_id, new_conversation_id, open_store
from tts.documents import CheckedDocument, Document, check_document, ssml_segments
from tts.engine_info import EngineInfo, describe
from tts.engines import Engine, create_engine
from tts.engines.base import VoiceInfo
from tts.engines.host import EngineFactory, EngineHost
from tts.jobs_host import JobsHost
from tts.metrics import TtsMetrics
from tts.runner import EMPTY_RATE, TurnRunner
from tts.segments import Segment
from tts.turn import AudioPiece, TextStream, Turn, TurnRequest
from tts.voice_manager import VoiceManager
from tts.workers import WorkerPool

log = get_logger(__name__)

IDLE_SWEEP_MAX_S = 30.0
"""The longest an idle engine stays loaded past tts.idle_unload_s."""
TextFormat = Literal["text", "ssml"]
"""How a request's text is read: as words (text) or as SSML markup (core.ssml)."""

SPEAKABLE = re.compile(r"\S")
"""What a text must hold to be spoken or answered: more than white space (its OpenAPI `pattern` too)."""


@dataclass(frozen=True)
class Speech:
    """A whole turn's audio (POST /tts)."""

    pcm16: bytes
    """Mono little-endian PCM16."""
    sample_rate: int
    text: str
    """The words spoken (the LLM reply, or the request's text), as spoken."""
    voice: str
    engine: str

    @property
    def duration_s(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True)
class VoiceList:
    voices: list[str]
    default: str
    engine: str


class TtsService:
    def __init__(
        self,
        settings: Settings,
        *,
        llm: LlmClient | None = None,
        engine_factory: EngineFactory = create_engine,
        engine_options: dict[str, dict[str, Any]] | None = None,
        websocket_clients: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self.engines = EngineHost(settings, engine_factory, engine_options)
        self.voice_manager = VoiceManager(settings, self.engines)
        self.pool = WorkerPool(settings.tts)
        self.llm = llm or make_llm_client(settings.llm)
        self.llm_health = LlmHealth(self.llm, settings.llm.health_cache_s)
        self.runner = TurnRunner(settings, self.pool, self.llm)
        self.metrics = TtsMetrics(self.pool, websocket_clients)
        self.access = Access(settings.auth)
        self._tasks: TaskGroup | None = None
        self.conversations = open_store(settings.conversations, settings.resolve_path(settings.data_dir))
        self.jobs = JobsHost(settings, self.engines.load_from_thread)
        self.engines.in_use_elsewhere = self.jobs.rendering
        self._talking: set[str] = set()
        """Conversations with a turn under way."""
        self.listeners: dict[str, Callable[[], dict[str, Any]]] = {}
        """Reports of the protocols that listen on ports of their own (Wyoming), for /health."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TtsService]:
        """The service's lifetime: the engine starts in the background, turns run in its task group."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self.engines.start)
                tasks.start_soon(self.llm_health.run)
                tasks.start_soon(self._unload_idle)
                tasks.start_soon(self.voice_manager.catalog.run)
                tasks.start_soon(self.jobs.run)
                try:
                    yield self
                finally:
                    self._tasks = None
                    tasks.cancel_scope.cancel()
        finally:
            await self.jobs.aclose()
            self.engines.close()
            await self.llm.aclose()
            await self.conversations.close()

    # -- requests and turns ---------------------------------------------------------------------

    async def check_request(
        self,
        text: str,
        voice: str | None,
        speed: float | None,
        reply: bool | None,
        speaker: str | None = None,
        conversation_id: str | None = None,
        new_conversation: str | None = None,
        engine: str | None = None,
        text_format: TextFormat | None = None,
    ) -> TurnRequest:
        """The request with its voice resolved and defaults applied, or the error that says what is wrong.
        A reply continues `conversation_id` (which must exist), else starts `new_conversation` (default: a
        new id); text spoken as it is (reply false) belongs to no conversation. `text_format` ssml (or
        text starting with `<speak`) is spoken as SSML (core.ssml)."""
        tts = self.settings.tts
        if not SPEAKABLE.search(text):
            raise EmptyText("text is empty; send the words to speak (or to answer) in 'text'")
        if len(text) > tts.max_text_length:
            raise TextTooLong(f"text has {len(text)} characters; the limit is {tts.max_text_length} (tts.max_text_length)")
        speed = self.check_speed(speed)
        engine = self.engines.slot(engine).name  # the default now, so a switch before the turn starts changes nothing
        voice, speaker = await self.check_voice(voice, speaker, engine)
        ssml = text_format == "ssml" or (text_format is None and looks_like_ssml(text))
        if ssml and reply:
            raise InvalidRequest("SSML is spoken as it is, never answered: send it with reply false", param="reply")
        reply = False if ssml else tts.reply_default if reply is None else reply
        conversation = None
        if not reply and conversation_id is not None:
            raise InvalidRequest(
                "conversation_id continues a conversation with the LLM: send it with reply true", param="conversation_id"
            )
        if ssml:
            document = parse_ssml(text, round(tts.max_break_s * 1000))
            segments = await ssml_segments(self, document, Segment("", voice, speed, speaker, engine=engine))
            return TurnRequest(
                document.text, voice, speed, False, speaker, engine=engine, segments=segments, warnings=document.warnings
            )
        if reply:
            conversation = await self._existing(conversation_id) if conversation_id else new_conversation or new_conversation_id()
        return TurnRequest(text, voice, speed, reply, speaker, conversation_id=conversation, engine=engine)

    async def check_document(
        self, document: Document, max_chars: int, limit_name: str, hint: str = ""
    ) -> CheckedDocument:
        """A document (tts/documents.py) as one checked request, or the error naming the block at fault."""
        return await check_document(self, document, max_chars, limit_name, hint)

    def check_speed(self, speed: float | None, where: str = "") -> float:
        """`speed` (default 1.0) if allowed, else InvalidSpeed; `where` says what asked for it."""
        tts = self.settings.tts
        speed = 1.0 if speed is None else speed
        if not (math.isfinite(speed) and tts.min_speed <= speed <= tts.max_speed):
            raise InvalidSpeed(
                f"speed {speed!r}{where} is outside the allowed range {tts.min_speed:g} to {tts.max_speed:g} "
                "(tts.min_speed, tts.max_speed); 1.0 is normal speed"
            )
        return speed

    async def _existing(self, conversation_id: str) -> str:
        if await self.conversations.turns(check_conversation_id(conversation_id)) is None and (
            conversation_id not in self._talking
        ):
            raise ConversationNotFound(
                f"no conversation {conversation_id!r}: it was never started, was deleted, or was forgotten after "
                f"{self.settings.conversations.idle_ttl_s:g} s idle (conversations.idle_ttl_s) or to make room "
                "(conversations.max_conversations); leave conversation_id out to start a new one"
            )
        return conversation_id

    async def conversation(self, conversation_id: str) -> list[ConversationTurn]:
        turns = await self.conversations.turns(check_conversation_id(conversation_id))
        if turns is None:
            raise ConversationNotFound(f"no conversation {conversation_id!r} (never started, deleted, or forgotten)")
        return turns

    async def forget(self, conversation_id: str) -> None:
        if not await self.conversations.delete(check_conversation_id(conversation_id)):
            raise ConversationNotFound(f"no conversation {conversation_id!r} (never started, deleted, or forgotten)")

    async def check_voice(
        self, voice: str | None, speaker: str | None = None, engine: str | None = None
    ) -> tuple[str, str | None]:
        """The voice (and speaker) of `engine` (None: the default) to speak with, or VoiceNotFound /
        InvalidVoiceName / InvalidRequest. Loads the engine when it is not loaded."""
        slot = self.engines.slot(engine).name
        chosen = await self.engines.get(slot)

        def resolve() -> tuple[str, str | None]:
            resolved = chosen.resolve_voice(voice)
            if voice is not None:  # another key's voice is refused as if it did not exist
                self.voice_manager.check_visible(slot, resolved, chosen.voices)
            return resolved, chosen.resolve_speaker(resolved, speaker)

        # Resolving a Piper voice looks at the voices folder: file-system work stays off the event loop.
        return await anyio.to_thread.run_sync(resolve)

    def start_turn(self, request: TurnRequest, endpoint: str, started: float | None = None) -> Turn:
        """Start speaking `request`; iterate the returned Turn for its events. `endpoint` names the
        protocol in logs and metrics; `started` is when the request arrived (perf_counter)."""
        if self._tasks is None:
            raise ShuttingDown("the service is shutting down; try again in a moment")
        slot = self.engines.slot(request.engine).name
        engine = self.engines.loaded(slot)
        # A document's blocks may name other engines (loaded when the document was checked).
        others = {
            segment.engine: self.engines.loaded(segment.engine)
            for segment in request.segments or ()
            if segment.engine is not None and segment.engine != slot
        }
        conversation = request.conversation_id
        if conversation is not None:
            if conversation in self._talking:
                # One turn at a time per conversation: a second one now would answer without the first in
                # its history, and record the two out of order. The client cancels the first (barge-in).
                raise ConversationBusy(
                    f"conversation {conversation!r} has a turn under way; wait for it to end or cancel it first"
                )
            self._talking.add(conversation)
        turn = Turn(request, engine.name, started, on_end=None if conversation is None else self._remember)
        self._tasks.start_soon(self._run, turn, engine, others, slot, endpoint)
        return turn

    async def start_text_stream(
        self,
        voice: str | None,
        speaker: str | None,
        endpoint: str,
        started: float | None = None,
        engine: str | None = None,
    ) -> tuple[Turn, TextStream]:
        """A turn whose text the client sends piece by piece (`await stream.send(text)`, `stream.close()`);
        each sentence is spoken as soon as it is complete in the text so far."""
        engine = self.engines.slot(engine).name
        voice, speaker = await self.check_voice(voice, speaker, engine=engine)
        stream = TextStream(self.settings.tts.max_text_length)
        request = TurnRequest("", voice, 1.0, False, speaker, text_stream=stream, engine=engine)
        return self.start_turn(request, endpoint, started), stream

    async def _run(self, turn: Turn, engine: Engine, others: dict[str, Engine], slot: str, endpoint: str) -> None:
        conversation = turn.request.conversation_id
        try:
            with ExitStack() as busy:
                turn.timings.engine_load_s = busy.enter_context(self.engines.using(slot, turn.request.voice))
                turn.timings.voice_load_s = await self.engines.reload_voice(slot, turn.request.voice)
                for name in others:  # kept loaded while the turn speaks, as its own engine is
                    voice = next(segment.voice for segment in turn.request.segments or () if segment.engine == name)
                    busy.enter_context(self.engines.using(name, voice))
                if conversation is not None:
                    try:
                        turn.history = await self.conversations.history(conversation)
                    except Exception:  # a broken store: the reply is answered without its history, never lost
                        log.exception("conversation_not_read", conversation=conversation)
                        turn.history = []
                await self.runner.run(turn, engine, others)
        finally:
            self.metrics.observe_turn(endpoint, turn.timings, turn.outcome)
            self.access.quotas.charge_audio(turn.timings.audio_s)  # this task runs in its request's context
            log.info("turn", endpoint=endpoint, outcome=turn.outcome, chunks=turn.chunks, **turn.timings.log_fields())

    async def _remember(self, turn: Turn) -> None:
        """Record a reply turn in its conversation, once its adapter has sent all it will: what the user
        heard of it (a cut reply only the part played), unless it failed before saying anything."""
        conversation = turn.request.conversation_id
        assert conversation is not None
        try:
            heard, cut = turn.heard()
            if heard or turn.outcome in ("ok", "cancelled"):
                record = ConversationTurn(turn.request.text, heard, cut)
                await self.conversations.append(conversation, record)
                turn.recorded = record
        except Exception:
            # The reply was spoken all the same; the client is not to lose it over a full disk.
            log.exception("conversation_not_recorded", conversation=conversation)
        finally:
            self._talking.discard(conversation)

    async def cut_short(self, turn: Turn, played_s: float) -> ConversationTurn | None:
        """The client stopped playing a reply after `played_s` of its audio, maybe after the turn was
        recorded (a barge-in while its last sentences still play): its conversation keeps only the words
        heard. The turn as recorded now, or None when there is no record to amend (none was made, it was
        forgotten, or a newer turn followed it)."""
        turn.played(played_s)
        before, conversation = turn.recorded, turn.request.conversation_id
        if before is None or conversation is None:
            return None
        heard, cut = turn.heard()
        after = ConversationTurn(before.user, heard, cut)
        if after == before:
            return before
        try:
            if not await self.conversations.amend_last(conversation, before, after):
                return None
        except Exception:
            log.exception("conversation_not_recorded", conversation=conversation)
            return None
        turn.recorded = after
        return after

    async def speak(self, turn: Turn) -> Speech:
        """All of a turn's audio, once it has ended (raises its failure, or Cancelled)."""
        turn.sent_at_end = True
        pieces: list[bytes] = []
        async for event in turn:
            if isinstance(event, AudioPiece):
                pieces.append(event.pcm16)
        return Speech(b"".join(pieces), turn.sample_rate or EMPTY_RATE, turn.text, turn.request.voice, turn.engine)

    # -- what the service offers ------------------------------------------------------------------

    async def voices(self, engine: str | None = None) -> VoiceList:
        """The voices of `engine` (None: the default), loading it when it is not loaded."""
        slot = self.engines.slot(engine).name
        speaker = await self.engines.get(slot)

        def names() -> list[str]:
            return self.voice_manager.visible(slot, speaker.voices())  # another key's uploads are not listed

        return VoiceList(await anyio.to_thread.run_sync(names), speaker.default_voice, speaker.name)

    async def voice_details(self, engine: str | None = None) -> list[VoiceInfo]:
        """Every voice of `engine` (None: the default) with its languages and speakers (read off the event loop)."""
        return await anyio.to_thread.run_sync((await self.engines.get(engine)).voice_details)

    async def engine_infos(self) -> list[EngineInfo]:
        """Every configured engine as GET /v1/engines reports it (the default first)."""
        engines = self.engines

        def describe_all() -> list[EngineInfo]:
            return [describe(slot, slot.name == engines.configured) for slot in engines.slots.values()]

        return await anyio.to_thread.run_sync(describe_all)

    async def set_default_engine(self, name: str) -> EngineInfo:
        """Make engine `name` the default until restart, once it has loaded (an engine that cannot speak is
        refused with the reason); what GET /v1/engines now says of it."""
        await self.engines.get(name)
        self.engines.set_default(name)
        slot = self.engines.default
        return await anyio.to_thread.run_sync(describe, slot, True)

    async def _unload_idle(self) -> None:
        """Every so often, unload the engines unused for tts.idle_unload_s."""
        idle_s = self.settings.tts.idle_unload_s
        while idle_s:
            await anyio.sleep(min(idle_s / 4, IDLE_SWEEP_MAX_S))
            self.engines.sweep()

    def workers(self) -> dict[str, int]:
        counters = self.pool.counters
        return {"max_concurrent": self.pool.size, "running": counters.running, "waiting": counters.waiting}

    def engine_status(self) -> tuple[str, str, str | None]:
        """(ready | loading | unavailable, engine name, default voice) for status messages."""
        engines = self.engines
        engine = engines.engine
        if engine is not None:
            return "ready", engine.name, engine.default_voice
        if engines.default.state == "unloaded":  # unloaded while idle: the next request loads it again
            return "ready", engines.configured, engines.configured_voice()
        return ("loading" if engines.loading else "unavailable"), engines.configured, None
