"""What both services' OpenAI-compatible routes share: OpenAI's error shape and statuses, the model list,
Server-Sent Events as OpenAI streams them, and the transcription form (answered by the STT service,
forwarded to it by the TTS service). The routes themselves are tts/openai_api.py and stt/openai_api.py;
both are adapters over their service's core.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi.responses import JSONResponse
from faster_whisper.tokenizer import _LANGUAGE_CODES
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import (
    BadAudio,
    InvalidRequest,
    ModelUnavailable,
    RequestTooLarge,
    ServiceError,
    TooManyPending,
    UnsupportedMediaType,
)
from core.http import ErrorShape

OWNER = "voice-assistant"
STARTED = int(time.time())
"""`created` of every model: when this process started (there is no truer date for a local model)."""

# code -> (HTTP status, OpenAI error type, the request field it is about)
_OPENAI_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "unauthorized": (401, "invalid_request_error", None),
    "forbidden": (403, "invalid_request_error", None),
    "origin_not_allowed": (403, "invalid_request_error", None),
    "host_not_allowed": (403, "invalid_request_error", None),
    "rate_limited": (429, "rate_limit_error", None),
    "invalid_json": (400, "invalid_request_error", None),
    "invalid_request": (400, "invalid_request_error", None),
    "bad_message": (400, "invalid_request_error", None),
    "empty_text": (400, "invalid_request_error", "input"),
    "text_too_long": (400, "invalid_request_error", "input"),
    "invalid_speed": (400, "invalid_request_error", "speed"),
    "invalid_ssml": (400, "invalid_request_error", "input"),
    "invalid_voice_name": (400, "invalid_request_error", "voice"),
    "voice_not_found": (404, "invalid_request_error", "voice"),
    "invalid_voice": (400, "invalid_request_error", None),
    "voice_conflict": (409, "invalid_request_error", None),
    "catalog_unavailable": (502, "server_error", None),
    "model_not_found": (404, "invalid_request_error", "model"),
    "conversation_not_found": (404, "invalid_request_error", "conversation_id"),
    "conversation_busy": (409, "invalid_request_error", "conversation_id"),
    "job_not_found": (404, "invalid_request_error", "job_id"),
    "job_not_done": (409, "invalid_request_error", "job_id"),
    "bad_audio": (400, "invalid_request_error", "file"),
    "unsupported_media_type": (400, "invalid_request_error", None),
    "request_too_large": (413, "invalid_request_error", None),
    "not_found": (404, "invalid_request_error", None),
    "method_not_allowed": (405, "invalid_request_error", None),
    "engine_busy": (503, "server_error", None),
    "too_many_pending": (429, "rate_limit_error", None),
    "engine_auth": (502, "server_error", None),
    "engine_error": (502, "server_error", None),
    "stt_timeout": (504, "server_error", None),
    "llm_timeout": (504, "server_error", None),
}
_SERVER_ERROR = (503, "server_error", None)
"""Everything else a client cannot fix by changing its request: loading, unavailable, shutting down."""


class OpenAiErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error.")
    param: str | None = Field(description="The request field the error is about, if it is about one.")
    code: str = Field(description="Stable machine-readable code (one of core/errors.py).")


class OpenAiErrorBody(BaseModel):
    """The body of every error on /v1, as OpenAI sends it."""

    error: OpenAiErrorDetail


def openai_status(code: str) -> int:
    return 500 if code == "internal_error" else _OPENAI_ERRORS.get(code, _SERVER_ERROR)[0]


def openai_error_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses for such an error."""
    _, kind, param = _OPENAI_ERRORS.get(error.code, _SERVER_ERROR)
    status = openai_status(error.code)
    param = error.param or param
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    body = {"error": {"message": error.message, "type": kind, "param": param, "code": error.code}}
    return JSONResponse(body, status, headers=headers)


OPENAI_ERRORS = ErrorShape(openai_error_response, openai_status, OpenAiErrorBody)
"""Errors on /v1 (core.http.add_error_shape)."""


def model_list(names: list[str]) -> dict[str, Any]:
    """GET /v1/models, as OpenAI answers it."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": STARTED, "owned_by": OWNER} for name in names]}


def sse(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event as OpenAI streams them: a `data:` line with the JSON (its `type` inside)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


# -- transcriptions --------------------------------------------------------------------------------


class TranscriptionForm(BaseModel):
    """The form fields besides `file`, as OpenAI defines them."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="whisper-1, or any name: the configured model transcribes.")
    language: str | None = None
    prompt: str | None = Field(None, max_length=4_000)
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list)
    stream: bool = False

    @field_validator("stream", mode="before")
    @classmethod
    def _form_boolean(cls, value: Any) -> Any:
        # A form's boolean is the text true or false (as OpenAI's clients send it); pydantic alone
        # would also read 0, "no" or "off", which the document cannot say.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise ValueError("send true or false")

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if value not in _LANGUAGE_CODES:
            raise ValueError(f"unknown language {value!r}; use an ISO-639-1 code such as en, de, fr")
        return value


TRANSCRIPTION_ERRORS = (UnsupportedMediaType, RequestTooLarge, InvalidRequest, TooManyPending, ModelUnavailable, BadAudio)
"""What a transcription request may be answered with (besides internal_error)."""
TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in the response_format asked for (Server-Sent Events with stream true)",
        "content": {
            media: {}
            for media in ("application/json", "text/plain", "application/x-subrip", "text/vtt", "text/event-stream")
        },
    }
}


_NO_STREAM = {"stream": {"const": False}}
_NO_TIMES = {"timestamp_granularities[]": {"maxItems": 0}}


def transcription_body() -> dict[str, Any]:
    """The multipart requestBody of POST /v1/audio/transcriptions and /translations, as the form is read:
    `timestamp_granularities[]` repeats, and a form field cannot be null."""
    fields = {name: _not_null(schema) for name, schema in TranscriptionForm.model_json_schema()["properties"].items()}
    fields["language"] = {"enum": ["", *_LANGUAGE_CODES], "description": "ISO-639-1; empty or left out: detected."}
    fields["timestamp_granularities[]"] = fields.pop("timestamp_granularities")
    schema = {
        "type": "object",
        "required": ["file", "model"],
        "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary"}, **fields},
        # Two rules join fields: word or segment times come only with verbose_json, and a stream (of text
        # deltas) only with json or text. Written as the forms they allow rather than as if/then, which
        # not every validator can judge over a form that holds a file.
        "anyOf": [
            {"required": ["response_format"], "properties": {"response_format": {"const": "verbose_json"}, **_NO_STREAM}},
            {"properties": {"response_format": {"enum": ["json", "text"]}, **_NO_TIMES}},
            {"required": ["response_format"], "properties": {"response_format": {"enum": ["srt", "vtt"]}, **_NO_STREAM, **_NO_TIMES}},
        ],
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without the null it may be: a form sends a field, or leaves it out."""
    branches = [branch for branch in schema.pop("anyOf", []) if branch.get("type") != "null"]
    return {**(branches[0] if branches else {}), **schema}
