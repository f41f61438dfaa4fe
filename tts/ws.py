"""WS /ws/tts: the session protocol for live clients (the dashboard). Protocol only; the work is
TtsPipeline.run_turn.

Every message is JSON `{"type": ..., "data": {...}}`, except the audio: each `audio_chunk` message is
followed by exactly one binary frame holding that chunk's PCM16 (mono, little-endian).

Client -> server
- `text_input` `{"text", "voice"?, "reply"?, "parameters"?: {"speed"?}}`: start a generation. One runs
  at a time per socket: a second `text_input` while one runs gets the error `busy` (the running one
  carries on); send `cancel_generation` first to replace it.
- `cancel_generation`: stop the running generation (its LLM request at once, its synthesis before the
  next sentence). The server answers `generation_cancelled` once it has stopped: no `audio_chunk` of
  that generation follows it, and the socket is ready for the next `text_input`. With nothing
  running the answer is the error `nothing_to_cancel` (the socket stays open).
- `ping` `{"timestamp"?}`: answered by `pong` `{"timestamp", "server_time"}` at once, even mid-generation.
- `get_status`: answered by `status`.

Server -> client
- `connection` `{"status": "ready" | "loading" | "unavailable", "voices", "default_voice", "engine",
  "max_concurrent", "limits"}`, first, once.
- `generation_started` `{"generation_id", "voice", "reply", "speed"}`.
- `reply_text` `{"generation_id", "text", "is_final"}`: the words so far, as spoken, when each fragment
  is cut; `is_final` on the last one.
- `audio_chunk` `{"generation_id", "chunk_id", "sample_rate", "text_chunk", "samples", "format": "pcm_s16le"}`
  followed by one binary frame.
- `generation_complete` `{"generation_id", "chunks", "voice", "engine", "text", "audio_seconds", "timings"}`.
- `generation_cancelled` `{"generation_id", "chunks", "timings"}` (the stages reached before the cancel).
- `error` `{"code", "message", "generation_id"?}` with the HTTP error codes (text_too_long, voice_not_found,
  llm_unavailable, engine_busy...) plus `bad_message` (invalid JSON, not an object, unknown type, a
  binary frame), `invalid_request` (a known type with bad fields), `request_too_large` (a message over
  tts.ws_max_message_bytes), `busy` and `nothing_to_cancel`. A refused message never closes the socket.
- `pong`, `status` `{"generating", "generation_id", "chunks_sent", "engine", "voice", "workers"}`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import WebSocket
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from core.http import ServiceError
from core.logging import get_logger
from tts.pipeline import AudioPiece, Cancelled, ReplyText, Turn, TurnEvent, TurnRequest

log = get_logger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
AUDIO_FORMAT = "pcm_s16le"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: float | None = None


class TextInput(BaseModel):
    """`data` of a text_input message."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    voice: StrictStr | None = None
    reply: StrictBool | None = None
    parameters: _Parameters = Field(default_factory=_Parameters)


class _Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timestamp: float | StrictStr | None = None


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: StrictStr
    data: dict[str, Any] | None = None


CLIENT_TYPES = ("text_input", "cancel_generation", "ping", "get_status")


def parse_client_message(text: str, limit: int) -> tuple[str, Any]:
    """(type, parsed data) of a client's text message, or ProtocolError."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise ProtocolError(
            "request_too_large", f"message of {size} bytes is over the {limit}-byte limit (tts.ws_max_message_bytes)"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_message", f"message is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", 'a message must be a JSON object such as {"type": "ping"}')
    kind = raw.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "bad_message", f"unknown message type {kind!r}; known types: {', '.join(CLIENT_TYPES)}"
        )
    try:
        envelope = _Envelope.model_validate(raw)
        data = envelope.data or {}
        if kind == "text_input":
            if envelope.data is None:
                raise ProtocolError("invalid_request", "text_input needs data: {\"text\": ...}")
            return kind, TextInput.model_validate(data)
        if kind == "ping":
            return kind, _Ping.model_validate(data)
        if data:
            raise ProtocolError("invalid_request", f"{kind} takes no data")
        return kind, None
    except ValidationError as exc:
        parts = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "message"
            if error["type"] == "extra_forbidden":
                parts.append(f"unknown field '{where}'")
            elif error["type"] == "missing":
                parts.append(f"'{where}' is required")
            else:
                parts.append(f"'{where}': {error['msg']}")
        raise ProtocolError("invalid_request", f"{kind}: " + "; ".join(parts)) from None


def message(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


class _Gone(Exception):
    """The client has gone; nothing more can be sent."""


@dataclass
class _Generation:
    id: int
    turn: Turn
    done: anyio.Event


class TtsSocket:
    """One client's session: at most one generation at a time, bounded messages."""

    def __init__(self, websocket: WebSocket, service: Any) -> None:
        self.websocket = websocket
        self.service = service
        self.pipeline = service.pipeline
        self.settings = service.settings
        self._send_lock = anyio.Lock()
        self._generation: _Generation | None = None
        self._next_id = 1

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, payload: dict[str, Any], audio: bytes | None = None) -> None:
        """Send a message (and its binary frame, as one unit that a cancel cannot split)."""
        with anyio.CancelScope(shield=audio is not None):
            async with self._send_lock:
                if self.websocket.client_state != WebSocketState.CONNECTED:
                    raise _Gone()
                try:
                    await self.websocket.send_text(json.dumps(payload, ensure_ascii=False))
                    if audio is not None:
                        await self.websocket.send_bytes(audio)
                except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                    raise _Gone() from exc

    async def _error(self, code: str, text: str, generation_id: int | None = None) -> None:
        data: dict[str, Any] = {"code": code, "message": text}
        if generation_id is not None:
            data["generation_id"] = generation_id
        log.info("ws_message_refused" if generation_id is None else "generation_failed", code=code, reason=text)
        await self._send({"type": "error", "data": data})

    # -- session --------------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            # The voice list globs the voices folder: file-system work stays off the event loop.
            await self._send(await anyio.to_thread.run_sync(self._connection))
            async with anyio.create_task_group() as tasks:
                try:
                    await self._receive_loop(tasks)
                except _Gone:
                    pass  # caught inside the group: outside it would arrive wrapped in an ExceptionGroup
                finally:
                    await self._stop_generation()
                    tasks.cancel_scope.cancel()
        except _Gone:
            pass

    def _connection(self) -> dict[str, Any]:
        state = self.pipeline.state
        engine = state.engine
        status = "ready" if engine else ("loading" if state.loading else "unavailable")
        tts = self.settings.tts
        return message(
            "connection",
            status=status,
            voices=engine.voices() if engine else [],
            default_voice=engine.default_voice if engine else None,
            engine=engine.name if engine else state.configured,
            max_concurrent=tts.max_concurrent,
            limits={"max_text_length": tts.max_text_length, "max_message_bytes": tts.ws_max_message_bytes},
        )

    async def _receive_loop(self, tasks: Any) -> None:
        limit = self.settings.tts.ws_max_message_bytes
        while True:
            received = await self.websocket.receive()
            if received["type"] == "websocket.disconnect":
                log.info("ws_client_disconnected", generating=self._generation is not None)
                return
            text = received.get("text")
            if text is None:
                await self._error("bad_message", "binary frames are not accepted; send JSON text messages")
                continue
            try:
                kind, data = parse_client_message(text, limit)
            except ProtocolError as exc:
                await self._error(exc.code, exc.message)
                continue
            if kind == "ping":
                await self._send(message("pong", timestamp=data.timestamp, server_time=time.time()))
            elif kind == "get_status":
                await self._send(self._status())
            elif kind == "cancel_generation":
                await self._cancel()
            else:
                await self._start(data, tasks)

    def _status(self) -> dict[str, Any]:
        generation = self._generation
        engine = self.pipeline.state.engine
        counters = self.pipeline.counters
        return message(
            "status",
            generating=generation is not None,
            generation_id=generation.id if generation else None,
            chunks_sent=generation.turn.chunks if generation else 0,
            engine=engine.name if engine else self.pipeline.state.configured,
            voice=engine.default_voice if engine else None,
            workers={
                "max_concurrent": self.settings.tts.max_concurrent,
                "running": counters.running,
                "waiting": counters.waiting,
            },
        )

    async def _start(self, data: TextInput, tasks: Any) -> None:
        if self._generation is not None:
            await self._error(
                "busy",
                f"generation {self._generation.id} is still running; send cancel_generation first, "
                "or wait for generation_complete",
            )
            return
        try:
            text, voice, speed = self.pipeline.check_request(data.text, data.voice, data.parameters.speed)
        except ServiceError as exc:
            await self._error(exc.code, exc.message)
            return
        reply = self.settings.tts.reply_default if data.reply is None else data.reply
        generation = _Generation(self._next_id, Turn(), anyio.Event())
        self._next_id += 1
        self._generation = generation
        tasks.start_soon(self._generate, generation, TurnRequest(text, voice, speed, reply))

    async def _generate(self, generation: _Generation, request: TurnRequest) -> None:
        turn = generation.turn
        gid = generation.id
        outcome = "ok"

        async def on_event(event: TurnEvent) -> None:
            if isinstance(event, ReplyText):
                await self._send(message("reply_text", generation_id=gid, text=event.text, is_final=event.is_final))
            elif isinstance(event, AudioPiece):
                meta = message(
                    "audio_chunk",
                    generation_id=gid,
                    chunk_id=event.index,
                    sample_rate=event.sample_rate,
                    text_chunk=event.text,
                    samples=event.samples,
                    format=AUDIO_FORMAT,
                )
                await self._send(meta, event.pcm16)

        try:
            await self._send(
                message("generation_started", generation_id=gid, voice=request.voice, reply=request.reply, speed=request.speed)
            )
            await self.pipeline.run_turn(request, on_event, turn)
            timings = turn.timings
            # Free before announcing completion: a client answering at once must not hear "busy".
            self._generation = None
            await self._send(
                message(
                    "generation_complete",
                    generation_id=gid,
                    chunks=turn.chunks,
                    voice=request.voice,
                    engine=self.pipeline.engine().name,
                    text=turn.text,
                    audio_seconds=round(timings.audio_s, 3),
                    timings=timings.as_dict(),
                )
            )
        except Cancelled:
            outcome = "cancelled"
        except _Gone:
            outcome = "cancelled"
            turn.cancel()
        except ServiceError as exc:
            outcome = exc.code
            try:
                await self._error(exc.code, exc.message, gid)
            except _Gone:
                pass
        except Exception:
            outcome = "internal_error"
            log.exception("generation_failed", generation_id=gid)
            try:
                await self._error("internal_error", "internal server error; see the service log", gid)
            except _Gone:
                pass
        finally:
            self.service.finish_turn("ws", turn.timings, outcome, generation_id=gid, chunks=turn.chunks)
            if self._generation is generation:
                self._generation = None
            generation.done.set()

    async def _stop_generation(self) -> _Generation | None:
        """Cancel the running generation and wait until it has stopped (its worker is free)."""
        generation = self._generation
        if generation is None:
            return None
        generation.turn.cancel()
        with anyio.CancelScope(shield=True):
            await generation.done.wait()
        return generation

    async def _cancel(self) -> None:
        generation = await self._stop_generation()
        if generation is None:
            await self._error("nothing_to_cancel", "no generation is running; nothing to cancel")
            return
        await self._send(
            message(
                "generation_cancelled",
                generation_id=generation.id,
                chunks=generation.turn.chunks,
                timings=generation.turn.timings.as_dict(),
            )
        )


async def refuse(websocket: WebSocket, limit: int) -> None:
    """Accept, explain and close: too many clients."""
    await websocket.accept()
    text = f"the TTS service serves at most {limit} WebSocket clients (tts.ws_max_connections); try again later"
    await websocket.send_text(json.dumps({"type": "error", "data": {"code": "too_many_connections", "message": text}}))
    await websocket.close(CLOSE_TRY_AGAIN_LATER, "too many connections")
