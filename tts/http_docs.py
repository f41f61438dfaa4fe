"""What the OpenAPI document says of the TTS service's HTTP routes (native and OpenAI) that their signatures
cannot: the errors each may raise (core.openapi.raises), the limits TtsService.check_request applies to
each request field (taken from the settings), the response headers, and the links from a reply to its
conversation.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from core.config import VOICE_NAME_PATTERN, Settings
from core.errors import (
    ConversationBusy,
    ConversationNotFound,
    EmptyText,
    EngineAuth,
    EngineBusy,
    EngineError,
    EngineLoading,
    EngineUnavailable,
    InvalidJson,
    InvalidRequest,
    InvalidSpeed,
    InvalidSsml,
    InvalidVoiceName,
    LlmError,
    LlmModelNotFound,
    LlmTimeout,
    LlmUnavailable,
    RequestTooLarge,
    ShuttingDown,
    TextTooLong,
    UnsupportedMediaType,
    VoiceNotFound,
)
from tts.conversations import ID_PATTERN
from tts.service import SPEAKABLE
from tts.voices import MAX_VOICE_NAME_LENGTH

BODY_ERRORS = (RequestTooLarge, UnsupportedMediaType, InvalidJson, InvalidRequest)
"""What reading and validating a JSON body may raise (core.http.read_json_body, validated)."""
CHECK_ERRORS = (
    EmptyText, TextTooLong, InvalidSpeed, InvalidSsml, InvalidVoiceName, VoiceNotFound, InvalidRequest, EngineLoading,
    EngineUnavailable,
)
"""What TtsService.check_request may raise for text spoken as it is."""
SPEECH_ERRORS = (ShuttingDown, EngineBusy, EngineError, EngineAuth)
"""What a turn may raise before its first audio: no worker free in time, the engine failing."""
REPLY_ERRORS = (ConversationNotFound, ConversationBusy, LlmError, LlmUnavailable, LlmModelNotFound, LlmTimeout)
"""What a reply may raise besides: its conversation, and the LLM before the first words."""
VOICE_SCHEMA = {"pattern": f"^$|{VOICE_NAME_PATTERN}", "maxLength": MAX_VOICE_NAME_LENGTH}
"""A voice name tts.voices.check_voice_name takes, or the empty name (the default voice, as null is)."""
CONVERSATION_ID_SCHEMA = {"pattern": ID_PATTERN.pattern}
"""A conversation id tts.conversations.check_conversation_id takes."""
CONVERSATION_FIELD_SCHEMA = {"pattern": f"^$|{ID_PATTERN.pattern}"}
"""The conversation_id of a request: an id, or empty (a new conversation, as null is)."""


def text_schema(settings: Settings) -> dict[str, Any]:
    """A text check_request takes: not only white space, at most tts.max_text_length characters."""
    return {"minLength": 1, "maxLength": settings.tts.max_text_length, "pattern": SPEAKABLE.pattern}


def speed_schema(settings: Settings, low: float = 0.0, high: float = float("inf")) -> dict[str, Any]:
    """A speed check_request takes (tts.min_speed..tts.max_speed), within a protocol's own low..high."""
    return {"minimum": max(low, settings.tts.min_speed), "maximum": min(high, settings.tts.max_speed)}


def constrain(schema: dict[str, Any], field: str, keywords: dict[str, Any]) -> None:
    """Adds `keywords` to the property `field` of an object schema, to its branch of the right type
    when it may also be null."""
    prop = schema["properties"][field]
    branches = [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") not in (None, "null")]
    branches[0].update(keywords)


def engine_schema(settings: Settings) -> dict[str, Any]:
    """An engine a request may name: one of those configured."""
    return {"enum": settings.tts.served_engines, "examples": [settings.tts.engine]}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def tts_request_body(model: type[BaseModel], settings: Settings) -> dict[str, Any]:
    """The requestBody of POST /tts, /tts/stream and /tts/sse (`model`: theirs), with the limits of `settings`."""
    schema = model.model_json_schema()
    constrain(schema, "text", text_schema(settings))
    constrain(schema, "voice", VOICE_SCHEMA)
    constrain(schema, "speed", speed_schema(settings))
    constrain(schema, "conversation_id", CONVERSATION_FIELD_SCHEMA)
    constrain(schema, "engine", engine_schema(settings))
    # A conversation continues with a reply: refused with reply false, or left out while tts.reply_default is.
    schema["if"] = {"properties": {"conversation_id": {"type": "string"}}, "required": ["conversation_id"]}
    if settings.tts.reply_default:
        schema["then"] = {"properties": {"reply": {"enum": [True, None]}}}
    else:
        schema["then"] = {"properties": {"reply": {"const": True}}, "required": ["reply"]}
    return json_body(schema)


# -- responses -------------------------------------------------------------------------------------

_HEADERS: dict[str, tuple[str, str]] = {
    "X-Voice": ("string", "The voice that spoke."),
    "X-Engine": ("string", "The engine that spoke."),
    "X-Reply-Text": ("string", "The words spoken, percent-encoded UTF-8 (cut at 4 KB)."),
    "X-Reply-Text-Truncated": ("string", "true when X-Reply-Text was cut."),
    "X-Audio-Duration": ("number", "Seconds of audio."),
    "X-Sample-Rate": ("integer", "Samples a second of the audio."),
    "X-Channels": ("integer", "Always 1."),
    "X-Sample-Format": ("string", "s16le: signed 16-bit little-endian samples."),
    "Server-Timing": ("string", "The stages' times in milliseconds: llm_ttft, llm, queue, tts, ttfa, total."),
    "X-Conversation-Id": ("string", "The conversation a reply belongs to (reply true): send it back as conversation_id."),
    "X-Warnings": ("string", "What of the SSML was spoken plainly (unsupported tags): a percent-encoded JSON list."),
}

TEXT_FORMAT = (
    "How the text is read: text (words) or ssml (the SSML subset of the README); default: ssml when the text "
    "starts with <speak, else text. SSML is spoken as it is (reply false)."
)


def headers(*names: str) -> dict[str, Any]:
    """The documentation of response headers `names` (none of them always sent)."""
    return {name: {"description": _HEADERS[name][1], "schema": {"type": _HEADERS[name][0]}} for name in names}


_CONVERSATION = "#/paths/~1v1~1conversations~1{conversation_id}/"
CONVERSATION_LINKS = {
    name: {
        "operationRef": _CONVERSATION + method,
        "parameters": {"conversation_id": "$response.header.X-Conversation-Id"},
        "description": description,
    }
    for name, method, description in (
        ("ReadConversation", "get", "What the assistant remembers of the reply's conversation."),
        ("ForgetConversation", "delete", "Make the assistant forget the reply's conversation."),
    )
}
"""A reply's response, to its conversation (tts/conversations_api.py)."""
