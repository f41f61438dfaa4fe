"""Typed failures of the TTS service, each with its HTTP status and stable error code.

Engines and the pipeline raise these; core.http's one handler turns them into
`{"error": {"code", "message"}}` responses (with headers such as Retry-After).
"""

from __future__ import annotations

from core.http import ServiceError


class InvalidJson(ServiceError):
    status_code = 422
    code = "invalid_json"


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class RequestTooLarge(ServiceError):
    status_code = 413
    code = "request_too_large"


class EmptyText(ServiceError):
    status_code = 422
    code = "empty_text"


class TextTooLong(ServiceError):
    status_code = 413
    code = "text_too_long"


class InvalidSpeed(ServiceError):
    status_code = 422
    code = "invalid_speed"


class InvalidVoiceName(ServiceError):
    """A voice name that is not a plain name (a path, `..`, odd characters); refused before any file access."""

    status_code = 422
    code = "invalid_voice_name"


class VoiceNotFound(ServiceError):
    status_code = 404
    code = "voice_not_found"

    def __init__(self, voice: str, available: list[str], engine: str) -> None:
        shown = ", ".join(available[:50]) + (f" (and {len(available) - 50} more)" if len(available) > 50 else "")
        super().__init__(
            f"unknown voice {voice!r} for the {engine} engine; available voices: {shown or 'none'}"
            + (" (see GET /voices)" if available else "")
        )
        self.voice = voice
        self.available = available


class EngineBusy(ServiceError):
    status_code = 503
    code = "engine_busy"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class EngineLoading(ServiceError):
    status_code = 503
    code = "engine_loading"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineUnavailable(ServiceError):
    status_code = 503
    code = "engine_unavailable"


class EngineAuth(ServiceError):
    """A cloud engine refused our credentials: a server-side configuration problem."""

    status_code = 502
    code = "engine_auth"


class EngineError(ServiceError):
    """The engine failed while speaking (a cloud API error, a model failure)."""

    status_code = 502
    code = "engine_error"


class LlmUnavailable(ServiceError):
    status_code = 503
    code = "llm_unavailable"


class LlmModelNotFound(ServiceError):
    status_code = 503
    code = "llm_model_not_found"


class LlmTimeout(ServiceError):
    status_code = 504
    code = "llm_timeout"


class LlmError(ServiceError):
    status_code = 502
    code = "llm_error"


class EngineStartError(Exception):
    """An engine cannot start (missing voice, failed download, missing extra); the message says how to fix it."""
