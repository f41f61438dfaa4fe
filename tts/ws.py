"""WS /ws/tts: the session protocol for live clients (the dashboard). A thin adapter over TtsService;
the conventions it shares with /ws/stt (flat messages, error envelope, close codes, drain) are core.websocket.

Every message is a JSON object `{"type": ..., <fields>}`, except the audio: each `audio_chunk` message is
followed by exactly one binary frame holding that chunk's PCM16 (mono, little-endian).

Client -> server
- `text_input` `{"text", "voice"?, "reply"?, "speed"?, "conversation_id"?, "engine"?, "speaker"?, "text_format"?}`: start a
  generation (`text_format` ssml, or text starting with `<speak`, is SSML: core.ssml). One runs
  at a time per socket: a second `text_input` while one runs gets the error `busy` (the running one
  carries on); send `cancel_generation` first to replace it. Replies continue the socket's conversation;
  `conversation_id` switches the socket to an earlier one (after a reload or reconnect).
- `cancel_generation` `{"generation_id"?, "played_ms"?}`: stop the running generation (its LLM request at
  once, its synthesis before the next sentence). The server answers `generation_cancelled` once it has
  stopped: no `audio_chunk` of that generation follows it. `played_ms`, how much of the generation's
  audio the client played, keeps only the fragments heard in the conversation (without it: those whose
  audio was sent). A client still playing the audio of the last completed generation names it with
  `generation_id` and `played_ms`: its recorded turn keeps what was heard, answered by
  `generation_truncated`. Otherwise, with nothing to stop, the answer is the error `nothing_to_cancel`.
- `new_conversation`: the socket's next replies start a new conversation, answered by
  `conversation_started` `{"conversation_id"}` (a running generation still ends in its own).
- `ping` `{"timestamp"?}`: answered by `pong` `{"timestamp", "server_time"}` at once, even mid-generation.
- `get_status`: answered by `status`.

Server -> client
- `connection` `{"session_id", "conversation_id", "status": "ready" | "loading" | "unavailable", "voices",
  "default_voice", "engine", "max_concurrent", "limits"}`, first, once.
- `generation_started` `{"generation_id", "voice", "reply", "speed", "conversation_id"}` (null when not a reply).
- `reply_text` `{"generation_id", "text", "is_final"}`: the words so far, as spoken, when each fragment
  is cut; `is_final` on the last one.
- `audio_chunk` `{"generation_id", "chunk_id", "sample_rate", "text_chunk", "samples", "format": "pcm_s16le"}`
  followed by one binary frame.
- `generation_complete` `{"generation_id", "chunks", "voice", "engine", "text", "audio_seconds", "timings",
  "conversation_id", "warnings"}` (`warnings`: what of the SSML was spoken plainly).
- `generation_cancelled` `{"generation_id", "chunks", "timings", "conversation_id"}` (the stages reached
  before the cancel).
- `error` `{"code", "message", "generation_id"?}`; a refused message never closes the socket.
- `generation_truncated` `{"generation_id", "conversation_id", "heard", "interrupted"}`: the completed
  generation's turn as its conversation now records it (`heard` null when there is no record to amend:
  none was made, it was forgotten, or a newer turn followed).
- `conversation_started` `{"conversation_id"}`, the answer to `new_conversation`.
- `pong`, `status` `{"generating", "generation_id", "chunks_sent", "engine", "voice", "workers"}`.

On shutdown the running generation finishes (within the grace period), then the socket closes with 1001.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from core.errors import BadMessage, Busy, InternalError, NothingToCancel, ServiceError
from core.logging import get_logger
from core.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    SHUTDOWN_REASON,
    Channel,
    ClientGone,
    Connections,
    Intake,
    parse_message,
)
from tts.conversations import new_conversation_id
from tts.service import TtsService
from tts.turn import AudioPiece, Cancelled, ReplyText, Turn, TurnEvent

log = get_logger(__name__)

AUDIO_FORMAT = "pcm_s16le"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextInput(_Message):
    type: Literal["text_input"]
    text: StrictStr
    voice: StrictStr | None = None
    reply: StrictBool | None = None
    speed: StrictFloat | None = None
    conversation_id: StrictStr | None = None
    engine: StrictStr | None = None
    speaker: StrictStr | None = None
    text_format: Literal["text", "ssml"] | None = None


class CancelGeneration(_Message):
    type: Literal["cancel_generation"]
    generation_id: StrictInt | None = Field(None, ge=1)
    played_ms: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)


class NewConversation(_Message):
    type: Literal["new_conversation"]


class Ping(_Message):
    type: Literal["ping"]
    timestamp: StrictFloat | StrictStr | None = None


class GetStatus(_Message):
    type: Literal["get_status"]


CLIENT_MESSAGES: dict[str, type[BaseModel]] = {
    "text_input": TextInput,
    "cancel_generation": CancelGeneration,
    "new_conversation": NewConversation,
    "ping": Ping,
    "get_status": GetStatus,
}


@dataclass
class _Generation:
    id: int
    turn: Turn
    done: anyio.Event = field(default_factory=anyio.Event)
    """Set once its task has sent its last message."""


class TtsSocket:
    """One client's session: at most one generation at a time."""

    def __init__(self, service: TtsService, channel: Channel, intake: Intake, session_id: str) -> None:
        self.service = service
        self.channel = channel
        self.intake = intake
        self.session_id = session_id
        self._generation: _Generation | None = None
        self._completed: _Generation | None = None
        """The last generation that completed: its audio may still be playing at the client."""
        self._next_id = 1
        self.conversation_id = new_conversation_id()
        """The socket's conversation: its replies continue it (a text_input may switch to another)."""

    async def serve(self) -> None:
        failed = False
        try:
            await self.channel.send(await self._connection())
            async with anyio.create_task_group() as tasks:
                try:
                    drained = await self._receive_loop(tasks)
                    if drained:
                        await self._finish_for_shutdown()
                except ClientGone:
                    pass  # caught inside the group: outside it would arrive wrapped in an ExceptionGroup
                finally:
                    await self._stop_generation()
                    tasks.cancel_scope.cancel()
        except ClientGone:
            return
        except Exception:
            # A bug must not drop the socket silently: the client hears why before the close.
            log.exception("session_failed")
            failed = True
        if failed:
            error = InternalError()
            await self.channel.close(CLOSE_INTERNAL_ERROR, error.message, error)
        elif self.intake.draining:
            await self.channel.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)

    async def _connection(self) -> dict[str, Any]:
        status, engine, default_voice = self.service.engine_status()
        voices = (await self.service.voices()).voices if status == "ready" else []
        tts = self.service.settings.tts
        return {
            "type": "connection",
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "status": status,
            "voices": voices,
            "default_voice": default_voice,
            "engine": engine,
            "max_concurrent": tts.max_concurrent,
            "limits": {"max_text_length": tts.max_text_length, "max_message_bytes": tts.ws_max_message_bytes},
        }

    async def _receive_loop(self, tasks: TaskGroup) -> bool:
        """Handles client messages until the client leaves (False) or the service drains (True)."""
        limit = self.service.settings.tts.ws_max_message_bytes
        depth = self.service.settings.security.max_json_depth
        while True:
            received = await self.intake.receive()
            if received is None:
                return True
            if received["type"] == "websocket.disconnect":
                log.info("ws_client_disconnected", generating=self._generation is not None)
                return False
            try:
                text = received.get("text")
                if text is None:
                    raise BadMessage("binary frames are not accepted; send JSON text messages")
                message = parse_message(text, limit, "tts.ws_max_message_bytes", CLIENT_MESSAGES, max_depth=depth)
                await self._handle(message, tasks)
            except ServiceError as exc:
                await self.channel.error(exc)

    async def _handle(self, message: BaseModel, tasks: TaskGroup) -> None:
        if isinstance(message, Ping):
            await self.channel.send({"type": "pong", "timestamp": message.timestamp, "server_time": time.time()})
        elif isinstance(message, GetStatus):
            await self.channel.send(self._status())
        elif isinstance(message, CancelGeneration):
            await self._cancel(message.generation_id, message.played_ms)
        elif isinstance(message, TextInput):
            await self._start(message, tasks)
        elif isinstance(message, NewConversation):
            self.conversation_id = new_conversation_id()
            await self.channel.send({"type": "conversation_started", "conversation_id": self.conversation_id})

    def _status(self) -> dict[str, Any]:
        generation = self._generation
        _, engine, voice = self.service.engine_status()
        return {
            "type": "status",
            "generating": generation is not None,
            "generation_id": generation.id if generation else None,
            "chunks_sent": generation.turn.chunks if generation else 0,
            "engine": engine,
            "voice": voice,
            "workers": self.service.workers(),
        }

    async def _start(self, message: TextInput, tasks: TaskGroup) -> None:
        if self._generation is not None:
            raise Busy(
                f"generation {self._generation.id} is still running; send cancel_generation first, "
                "or wait for generation_complete"
            )
        request = await self.service.check_request(
            message.text,
            message.voice,
            message.speed,
            message.reply,
            message.speaker,
            # The socket's own id needs no earlier turn: its first reply may have failed before any was recorded.
            conversation_id=None if message.conversation_id == self.conversation_id else message.conversation_id,
            new_conversation=self.conversation_id,
            engine=message.engine,
            text_format=message.text_format,
        )
        if request.conversation_id is not None:
            self.conversation_id = request.conversation_id
        generation = _Generation(self._next_id, self.service.start_turn(request, "ws"))
        self._next_id += 1
        self._generation = generation
        tasks.start_soon(self._generate, generation)

    async def _generate(self, generation: _Generation) -> None:
        turn, gid = generation.turn, generation.id
        request = turn.request
        try:
            await self.channel.send(
                {
                    "type": "generation_started",
                    "generation_id": gid,
                    "voice": request.voice,
                    "reply": request.reply,
                    "speed": request.speed,
                    "conversation_id": request.conversation_id,
                }
            )
            async for event in turn:
                await self._send_event(gid, event)
            # Free before announcing completion: a client answering at once must not hear "busy".
            self._generation = None
            await self.channel.send(
                {
                    "type": "generation_complete",
                    "generation_id": gid,
                    "chunks": turn.chunks,
                    "voice": request.voice,
                    "engine": turn.engine,
                    "text": turn.text,
                    "audio_seconds": round(turn.timings.audio_s, 3),
                    "timings": turn.timings.as_dict(),
                    "conversation_id": request.conversation_id,
                    "warnings": list(request.warnings),
                }
            )
            self._completed = generation
        except Cancelled:
            pass  # _cancel answers, once the turn has stopped
        except ClientGone:
            turn.cancel()
        except ServiceError as exc:
            log.info("generation_failed", code=exc.code, reason=exc.message, generation_id=gid)
            await self._try_send_error(exc, gid)
        except Exception:
            log.exception("generation_failed", generation_id=gid)
            await self._try_send_error(InternalError(), gid)
        finally:
            await turn.aclose()
            if self._generation is generation:
                self._generation = None
            generation.done.set()

    async def _send_event(self, gid: int, event: TurnEvent) -> None:
        if isinstance(event, ReplyText):
            await self.channel.send({"type": "reply_text", "generation_id": gid, "text": event.text, "is_final": event.is_final})
        elif isinstance(event, AudioPiece):
            meta = {
                "type": "audio_chunk",
                "generation_id": gid,
                "chunk_id": event.index,
                "sample_rate": event.sample_rate,
                "text_chunk": event.text,
                "samples": event.samples,
                "format": AUDIO_FORMAT,
            }
            await self.channel.send(meta, event.pcm16)

    async def _try_send_error(self, error: ServiceError, gid: int) -> None:
        try:
            await self.channel.send({"type": "error", "code": error.code, "message": error.message, "generation_id": gid})
        except ClientGone:
            pass

    async def _stop_generation(self, played_ms: float | None = None) -> _Generation | None:
        """Cancel the running generation and wait until it has stopped (its worker is free) and its task
        has sent its last message, so nothing of it follows what the caller sends next."""
        generation = self._generation
        if generation is None:
            return None
        if played_ms is not None:
            generation.turn.played(played_ms / 1000)
        generation.turn.cancel()
        with anyio.CancelScope(shield=True):
            await generation.done.wait()
        return generation

    async def _cancel(self, gid: int | None, played_ms: float | None) -> None:
        running, completed = self._generation, self._completed
        if running is not None and gid in (None, running.id):
            await self._stop_running(played_ms)
        elif completed is not None and gid == completed.id and played_ms is not None:
            await self._truncate(completed, played_ms)
        elif gid is None:
            raise NothingToCancel("no generation is running; nothing to cancel")
        else:
            raise NothingToCancel(
                f"generation {gid} is not running; name the last completed generation with played_ms "
                "to record how much of it was heard"
            )

    async def _truncate(self, generation: _Generation, played_ms: float) -> None:
        record = await self.service.cut_short(generation.turn, played_ms / 1000)
        await self.channel.send(
            {
                "type": "generation_truncated",
                "generation_id": generation.id,
                "conversation_id": generation.turn.request.conversation_id,
                "heard": None if record is None else record.assistant,
                "interrupted": None if record is None else record.interrupted,
            }
        )

    async def _stop_running(self, played_ms: float | None) -> None:
        generation = await self._stop_generation(played_ms)
        assert generation is not None  # _cancel saw it running, with no await since
        if played_ms is not None:
            # It may have been recorded just before the cancel arrived (its last audio already sent).
            await self.service.cut_short(generation.turn, played_ms / 1000)
        await self.channel.send(
            {
                "type": "generation_cancelled",
                "generation_id": generation.id,
                "chunks": generation.turn.chunks,
                "timings": generation.turn.timings.as_dict(),
                "conversation_id": generation.turn.request.conversation_id,
            }
        )

    async def _finish_for_shutdown(self) -> None:
        """The service stops: the running generation may finish (its audio is sent), then the socket closes."""
        generation = self._generation
        if generation is None:
            return
        async with self.intake.finish() as scope:
            await generation.done.wait()
        if scope.cancelled_caught:
            log.warning("generation_cut_by_shutdown", generation_id=generation.id)


def build_router(service: TtsService, connections: Connections) -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws/tts")
    async def tts_socket(websocket: WebSocket) -> None:
        async def handler(_: WebSocket, channel: Channel, intake: Intake, session_id: str) -> None:
            await TtsSocket(service, channel, intake, session_id).serve()

        await connections.serve(websocket, handler)

    return router
