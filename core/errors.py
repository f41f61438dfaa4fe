"""The one error family of both services: a stable code, a message that says what to do, and an
optional retry-after. No protocol knows its way in here: each adapter maps codes to its own wire
(an HTTP status table in core.http, a WebSocket `error` message, a Wyoming `error` event).

Engines, the service cores and the LLM clients raise these; nothing else reaches a client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class ServiceError(Exception):
    """A failure the client should hear about, with a stable machine-readable code."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, retry_after_s: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param
        """The request field the error is about, when it is about one."""


class InternalError(ServiceError):
    code = "internal_error"

    def __init__(self, message: str = "internal server error; see the service log") -> None:
        super().__init__(message)


# -- who may ask ----------------------------------------------------------------------------------


class Unauthorized(ServiceError):
    """No API key, or one that is not configured."""

    code = "unauthorized"


class Forbidden(ServiceError):
    """A valid key without the scope this route needs."""

    code = "forbidden"


class OriginNotAllowed(ServiceError):
    """A browser page of another site (cross-site request forgery, WebSocket hijacking)."""

    code = "origin_not_allowed"


class HostNotAllowed(ServiceError):
    """A Host header the service does not answer to (DNS rebinding)."""

    code = "host_not_allowed"


class RateLimited(ServiceError):
    """A key past its requests or audio seconds per minute."""

    code = "rate_limited"


# -- the request itself ---------------------------------------------------------------------------


class NotFound(ServiceError):
    code = "not_found"


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"


class InvalidJson(ServiceError):
    code = "invalid_json"


class InvalidRequest(ServiceError):
    """A request or message of a known kind with missing, unknown or wrongly typed fields."""

    code = "invalid_request"


class BadMessage(ServiceError):
    """A socket message that is not a JSON object with a known `type` (or a frame of the wrong kind)."""

    code = "bad_message"


class RequestTooLarge(ServiceError):
    code = "request_too_large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"


class EmptyText(ServiceError):
    code = "empty_text"


class TextTooLong(ServiceError):
    code = "text_too_long"


class InvalidSpeed(ServiceError):
    code = "invalid_speed"


class InvalidSsml(ServiceError):
    """SSML that is not well-formed XML, declares entities or a DTD, or holds a value outside the subset."""

    code = "invalid_ssml"

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(message + where, param="text")
        self.line = line
        self.column = column


class InvalidVoiceName(ServiceError):
    """A voice name that is not a plain name (a path, `..`, odd characters); refused before any file access."""

    code = "invalid_voice_name"


class VoiceNotFound(ServiceError):
    code = "voice_not_found"

    def __init__(self, voice: str, available: list[str], engine: str) -> None:
        shown = ", ".join(available[:50]) + (f" (and {len(available) - 50} more)" if len(available) > 50 else "")
        super().__init__(
            f"unknown voice {voice!r} for the {engine} engine; available voices: {shown or 'none'}"
            + (" (see GET /voices)" if available else "")
        )
        self.voice = voice
        self.available = available


class InvalidVoice(ServiceError):
    """An uploaded voice that cannot be used: an ONNX model or config Piper cannot load, a reference clip too
    short, too long or too quiet."""

    code = "invalid_voice"


class VoiceConflict(ServiceError):
    """A voice change that clashes with what exists: the name is taken, or the voice may not be removed."""

    code = "voice_conflict"


class CatalogUnavailable(ServiceError):
    """The Piper voice catalog (or a voice file of it) cannot be fetched."""

    code = "catalog_unavailable"


class BadAudio(ServiceError):
    """Audio that cannot be used: a PCM16 frame with an odd byte count, a file no decoder reads."""

    code = "bad_audio"


class UnknownModel(ServiceError):
    code = "model_not_found"


# -- capacity --------------------------------------------------------------------------------------


class TooManyConnections(ServiceError):
    code = "too_many_connections"


class TooManyPending(ServiceError):
    code = "too_many_pending"


class Overloaded(ServiceError):
    """Work already accepted is behind (the transcription backlog): a new session is refused rather than served late."""

    code = "overloaded"


class ConversationNotFound(ServiceError):
    code = "conversation_not_found"


class ConversationBusy(ServiceError):
    """A turn of this conversation is still running: one at a time, or the history would be out of order."""

    code = "conversation_busy"


class Busy(ServiceError):
    """This session already runs something that must finish (or be cancelled) first."""

    code = "busy"


class NothingToCancel(ServiceError):
    code = "nothing_to_cancel"


class ShuttingDown(ServiceError):
    code = "shutting_down"


class JobNotFound(ServiceError):
    """No job with this id: never made, deleted, or past jobs.retention_s."""

    code = "job_not_found"


class JobNotDone(ServiceError):
    """The job's audio was asked for before the job was done."""

    code = "job_not_done"


class JobsUnavailable(ServiceError):
    """The jobs' queue (its SQLite file or Redis server) or their result storage cannot be reached."""

    code = "jobs_unavailable"


# -- engines and models ------------------------------------------------------------------------------


class EngineBusy(ServiceError):
    code = "engine_busy"


class EngineLoading(ServiceError):
    code = "engine_loading"


class EngineUnavailable(ServiceError):
    code = "engine_unavailable"


class EngineAuth(ServiceError):
    """A cloud engine refused our credentials: a server-side configuration problem."""

    code = "engine_auth"


class EngineError(ServiceError):
    """The engine failed while speaking (a cloud API error, a model failure)."""

    code = "engine_error"


class ModelUnavailable(ServiceError):
    """The speech recognition model is not loaded (still loading, or it failed with this reason)."""

    code = "model_unavailable"


class TranscriptionFailed(ServiceError):
    code = "transcription_failed"


class SttUnavailable(ServiceError):
    """The TTS service could not reach the STT service it forwards to."""

    code = "stt_unavailable"


class SttTimeout(ServiceError):
    """The STT service the TTS service forwards to took longer than tts.openai.forward_timeout_s."""

    code = "stt_timeout"


# -- the LLM -----------------------------------------------------------------------------------------


class LlmError(ServiceError):
    """The LLM failed: refused the request, answered nothing speakable, or broke off."""

    code = "llm_error"


class LlmUnavailable(LlmError):
    """The LLM server cannot be reached, after all retries."""

    code = "llm_unavailable"


class LlmModelNotFound(LlmError):
    code = "llm_model_not_found"


class LlmTimeout(LlmError):
    code = "llm_timeout"


def error_codes() -> set[str]:
    """Every code of the family (what each adapter's mapping table must cover)."""
    found: set[str] = set()
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found


def describe_validation_errors(
    errors: Iterable[Mapping[str, Any]], allowed: Iterable[str] = (), *, hidden: Iterable[str] = ("body", "query")
) -> str:
    """One readable sentence for pydantic's errors (`ValidationError.errors()`, or FastAPI's), the same
    for every protocol: the field, what is wrong with it, and for an unknown field the fields that are
    allowed. Location parts in `hidden` (FastAPI's `body`, `query`) mean nothing to a client."""
    allowed, hidden = list(allowed), set(hidden)
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in hidden) or "the message"
        kind = error.get("type")
        if kind == "extra_forbidden":
            hint = f"; allowed fields: {', '.join(allowed)}" if allowed else ""
            parts.append(f"unknown field '{where}'{hint}")
        elif kind == "missing":
            parts.append(f"'{where}' is required")
        else:
            parts.append(f"'{where}': {str(error.get('msg', 'invalid value')).removeprefix('Value error, ')}")
    return "; ".join(parts) or "invalid request"
