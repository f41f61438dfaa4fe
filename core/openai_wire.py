"""What both services' OpenAI-compatible routes share: OpenAI's error shape and statuses, the model list,
and Server-Sent Events as OpenAI streams them. The routes themselves are tts/openai_api.py and
stt/openai_api.py; both are adapters over their service's core.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi.responses import JSONResponse

from core.errors import ServiceError

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
    "invalid_voice_name": (400, "invalid_request_error", "voice"),
    "voice_not_found": (404, "invalid_request_error", "voice"),
    "model_not_found": (404, "invalid_request_error", "model"),
    "conversation_not_found": (404, "invalid_request_error", "conversation_id"),
    "conversation_busy": (409, "invalid_request_error", "conversation_id"),
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


def openai_error_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"error": {"message", "type", "param", "code"}}` with the status OpenAI uses for such an error."""
    status, kind, param = _OPENAI_ERRORS.get(error.code, _SERVER_ERROR)
    if error.code == "internal_error":
        status = 500
    param = error.param or param
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    body = {"error": {"message": error.message, "type": kind, "param": param, "code": error.code}}
    return JSONResponse(body, status, headers=headers)


def model_list(names: list[str]) -> dict[str, Any]:
    """GET /v1/models, as OpenAI answers it."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": STARTED, "owned_by": OWNER} for name in names]}


def sse(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event as OpenAI streams them: a `data:` line with the JSON (its `type` inside)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()
