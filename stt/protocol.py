"""The /ws/stt wire protocol: client messages parsed strictly, server messages built in one place.

Client -> server: binary frames of PCM16LE mono audio; text frames of JSON control messages.
Server -> client: JSON text frames, each with a "type".
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from stt.engine import Segment, Transcript
from stt.stream import Utterance

CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011


class ProtocolError(Exception):
    """A client message was refused; the connection stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndMessage(_Message):
    type: Literal["end"]


class ResetMessage(_Message):
    type: Literal["reset"]


class ConfigMessage(_Message):
    """Only the fields present change; the others keep their values."""

    type: Literal["config"]
    language: str | None = None
    """Language code for the following utterances; null detects it."""
    word_timestamps: bool = False
    """Add each word with its start, end and probability to the segments of final transcripts."""
    partials: bool = True
    """Send partial transcripts while an utterance is being spoken."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if value is not None and value not in _LANGUAGE_CODES:
            raise ValueError(f"unknown language {value!r}; use null to detect, or a code such as en, de, fr")
        return value


ClientMessage = Annotated[EndMessage | ResetMessage | ConfigMessage, Field(discriminator="type")]
_CLIENT_MESSAGE = TypeAdapter(ClientMessage)
MESSAGE_TYPES = ("config", "end", "reset")


def parse_client_message(text: str, max_bytes: int) -> EndMessage | ResetMessage | ConfigMessage:
    if len(text.encode("utf-8")) > max_bytes:
        raise ProtocolError("bad_message", f"text message exceeds stt.max_message_bytes ({max_bytes} bytes)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_message", f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ProtocolError("bad_message", 'a text message must be a JSON object with a "type"')
    if data["type"] not in MESSAGE_TYPES:
        raise ProtocolError(
            "bad_message", f"unknown message type {data['type']!r}; allowed: {', '.join(MESSAGE_TYPES)}"
        )
    try:
        return _CLIENT_MESSAGE.validate_python(data)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'message'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ProtocolError("bad_message", f"invalid {data['type']!r} message: {details}") from None


def check_audio_frame(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ProtocolError(
            "bad_audio",
            f"audio frame of {len(data)} bytes exceeds stt.max_frame_bytes ({max_bytes}); send smaller frames",
        )
    if len(data) % 2:
        raise ProtocolError(
            "bad_audio",
            f"audio frame has an odd byte count ({len(data)}); PCM16 needs 2 bytes per sample. Frame dropped",
        )


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def ready(session_id: str, sample_rate: int, language: str | None, model: str) -> dict[str, Any]:
    return {"type": "ready", "session_id": session_id, "sample_rate": sample_rate, "language": language, "model": model}


def _segment(segment: Segment) -> dict[str, Any]:
    data: dict[str, Any] = {"start": segment.start, "end": segment.end, "text": segment.text}
    if segment.words is not None:
        data["words"] = [{"start": w.start, "end": w.end, "word": w.word, "probability": w.probability} for w in segment.words]
    return data


def transcript(result: Transcript, utterance: Utterance, timings: dict[str, float]) -> dict[str, Any]:
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
        "timings": timings,
    }


def partial(stable: str, unstable: str) -> dict[str, Any]:
    return {"type": "partial", "text": f"{stable} {unstable}".strip(), "stable": stable, "unstable": unstable}


def speech_started(at: float) -> dict[str, Any]:
    return {"type": "speech_started", "at": at}


def speech_ended(at: float, reason: str) -> dict[str, Any]:
    return {"type": "speech_ended", "at": at, "reason": reason}


def no_speech(duration: float) -> dict[str, Any]:
    return {"type": "no_speech", "duration": duration}


def buffer_limit_reached(duration: float, limit: float) -> dict[str, Any]:
    return {"type": "buffer_limit_reached", "duration": duration, "limit": limit}


def config_applied(language: str | None, word_timestamps: bool, partials: bool) -> dict[str, Any]:
    return {"type": "config_applied", "language": language, "word_timestamps": word_timestamps, "partials": partials}


def reset_done(dropped_seconds: float) -> dict[str, Any]:
    return {"type": "reset_done", "dropped_seconds": dropped_seconds}
