"""WS /ws/stt: live audio in, transcripts out. A thin adapter over SttService's sessions; the conventions
it shares with /ws/tts (flat messages, error envelope, close codes, drain) are core.websocket.

Client -> server: binary frames of PCM16LE mono audio at stt.sample_rate; text frames of JSON
control messages (`config`, `end`, `reset`). Server -> client: JSON text frames, each with a `type`.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator

from core.config import SttSettings
from core.errors import InternalError, ModelUnavailable, RequestTooLarge, ServiceError
from core.logging import get_logger
from core.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    SHUTDOWN_REASON,
    Channel,
    ClientGone,
    Connections,
    Intake,
    error_message,
    parse_message,
)
from stt.engine import Segment
from stt.events import ConfigApplied, Heard, Partial, Refused, ResetDone, SessionEvent, Transcribed
from stt.service import SttService
from stt.session import SttSession
from stt.stream import BufferLimitReached, SpeechEnded, SpeechStarted

log = get_logger(__name__)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndMessage(_Message):
    type: Literal["end"]


class ResetMessage(_Message):
    type: Literal["reset"]


class ConfigMessage(_Message):
    """Only the fields present change; the others keep their values."""

    type: Literal["config"]
    language: StrictStr | None = None
    """Language code for the following utterances; null detects it."""
    word_timestamps: StrictBool = False
    """Add each word with its start, end and probability to the segments of final transcripts."""
    partials: StrictBool = True
    """Send partial transcripts while an utterance is being spoken."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if value is not None and value not in _LANGUAGE_CODES:
            raise ValueError(f"unknown language {value!r}; use null to detect, or a code such as en, de, fr")
        return value


CLIENT_MESSAGES: dict[str, type[BaseModel]] = {"config": ConfigMessage, "end": EndMessage, "reset": ResetMessage}


def _segment(segment: Segment) -> dict[str, Any]:
    data: dict[str, Any] = {"start": segment.start, "end": segment.end, "text": segment.text}
    if segment.words is not None:
        data["words"] = [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability} for w in segment.words]
    return data


def encode(event: SessionEvent) -> dict[str, Any]:
    """The wire form of a session event."""
    if isinstance(event, Transcribed):
        result, utterance = event.result, event.utterance
        return {
            "type": "transcript",
            "text": result.text,
            "duration": result.duration,
            "keep_open": True,
            "language": result.language,
            "language_probability": result.language_probability,
            "segments": [_segment(s) for s in result.segments],
            "reason": utterance.reason,
            "start": utterance.start,
            "transcribe_seconds": round(result.transcribe_seconds, 3),
            "timings": event.timings,
        }
    if isinstance(event, Partial):
        return {"type": "partial", "text": f"{event.stable} {event.unstable}".strip(), "stable": event.stable, "unstable": event.unstable}
    if isinstance(event, SpeechStarted):
        return {"type": "speech_started", "at": event.at}
    if isinstance(event, SpeechEnded):
        ended: dict[str, Any] = {"type": "speech_ended", "at": event.at, "reason": event.reason}
        if event.turn_complete is not None:
            ended |= {"turn_complete": event.turn_complete, "turn_probability": event.turn_probability}
        return ended
    if isinstance(event, Heard):
        return {"type": "no_speech", "duration": event.result.duration}
    if isinstance(event, BufferLimitReached):
        return {"type": "buffer_limit_reached", "duration": event.duration, "limit": event.limit}
    if isinstance(event, ConfigApplied):
        return {"type": "config_applied", "language": event.language, "word_timestamps": event.word_timestamps, "partials": event.partials}
    if isinstance(event, ResetDone):
        return {"type": "reset_done", "dropped_seconds": event.dropped_seconds}
    assert isinstance(event, Refused)
    return error_message(event.error)


class _SttSocket:
    def __init__(self, service: SttService, channel: Channel, intake: Intake) -> None:
        self.service = service
        self.settings: SttSettings = service.settings.stt
        self.channel = channel
        self.intake = intake
        self.fatal: ServiceError | None = None

    async def serve(self, session_id: str) -> None:
        if self.service.model.error:
            error = ModelUnavailable(self.service.model.error)
            await self.channel.close(CLOSE_INTERNAL_ERROR, error.message, error)
            return
        drained = failed = False
        try:
            async with self.service.open_session() as session:
                ready = {
                    "type": "ready",
                    "session_id": session_id,
                    "sample_rate": self.settings.sample_rate,
                    "language": session.language,
                    "model": self.service.model_name,
                }
                try:
                    await self.channel.send(ready)
                except ClientGone:
                    return  # caught inside the session's task group: outside it would arrive wrapped in a group
                drained = await self._run(session)
                log.info("session_summary", utterances=session.utterances, drained=drained)
        except ClientGone:
            return
        except Exception:
            # A bug must not drop the socket silently: the client hears why before the close.
            log.exception("session_failed")
            failed = True
        if failed:
            error = InternalError()
            await self.channel.close(CLOSE_INTERNAL_ERROR, error.message, error)
        elif self.fatal is not None:
            await self.channel.close(CLOSE_INTERNAL_ERROR, self.fatal.message)
        elif drained:
            await self.channel.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)

    async def _run(self, session: SttSession) -> bool:
        """Reads and answers until the client leaves (False) or the service drains and the session has
        delivered what it was given (True)."""
        sent_all = anyio.Event()
        drained = False
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._send_events, session, sent_all, tasks.cancel_scope)
            try:
                if await self._receive_loop(session):
                    # Shutdown: what the client already sent is transcribed and delivered first.
                    async with self.intake.finish() as scope:
                        await session.drain()
                        await sent_all.wait()
                    drained = not scope.cancelled_caught and not self.channel.gone
            except ClientGone:
                pass  # caught inside the group: outside it would arrive wrapped in an ExceptionGroup
            tasks.cancel_scope.cancel()
        return drained

    async def _send_events(self, session: SttSession, sent_all: anyio.Event, scope: anyio.CancelScope) -> None:
        try:
            async for event in session.events():
                await self.channel.send(encode(event))
                if isinstance(event, Refused) and event.fatal:
                    self.fatal = event.error
                    scope.cancel()
                    return
        except ClientGone:
            scope.cancel()  # the client is gone: the receive loop ends the session
        sent_all.set()

    async def _receive_loop(self, session: SttSession) -> bool:
        """Handles client messages until the client leaves (False) or the service drains (True)."""
        while True:
            message = await self.intake.receive()
            if message is None:
                return True
            if message["type"] == "websocket.disconnect":
                return False
            data, text = message.get("bytes"), message.get("text")
            try:
                if data is not None:
                    self._check_frame(data)
                    await session.feed_audio(data)
                elif text is not None:
                    await self._command(session, self._parse(text))
            except ServiceError as exc:
                await self.channel.error(exc)

    def _parse(self, text: str) -> BaseModel:
        return parse_message(
            text,
            self.settings.max_message_bytes,
            "stt.max_message_bytes",
            CLIENT_MESSAGES,
            max_depth=self.service.settings.security.max_json_depth,
        )

    def _check_frame(self, data: bytes) -> None:
        limit = self.settings.max_frame_bytes
        if len(data) > limit:
            raise RequestTooLarge(
                f"audio frame of {len(data)} bytes is over the {limit}-byte limit (stt.max_frame_bytes); send smaller frames"
            )

    async def _command(self, session: SttSession, message: BaseModel) -> None:
        if isinstance(message, EndMessage):
            await session.end()
        elif isinstance(message, ResetMessage):
            await session.reset()
        elif isinstance(message, ConfigMessage):
            await session.configure(**{name: getattr(message, name) for name in message.model_fields_set - {"type"}})


def build_router(service: SttService, connections: Connections) -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws/stt")
    async def stt_socket(websocket: WebSocket) -> None:
        async def handler(_: WebSocket, channel: Channel, intake: Intake, session_id: str) -> None:
            await _SttSocket(service, channel, intake).serve(session_id)

        await connections.serve(websocket, handler)

    return router
