"""OpenAI's audio API on the TTS service: POST /v1/audio/speech and the discovery routes clients call
(GET /v1/models, /v1/audio/models, /v1/audio/voices). An adapter over TtsService: it speaks `input`
itself (no LLM reply) through the same turn as every other protocol, and encodes the audio with PyAV
as it is synthesized (core.encode), so the first sentence leaves before the last one is spoken.

Errors on /v1/* use OpenAI's shape (core.openai_wire). Transcriptions are forwarded (tts/forward.py).
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictStr
from starlette.background import BackgroundTask

from core.config import OPENAI_VOICES, Settings, TtsSettings
from core.encode import FORMATS, StreamEncoder
from core.errors import EngineLoading, EngineUnavailable, ServiceError, ShuttingDown, UnknownModel
from core.http import read_json_body, validated
from core.logging import get_logger
from core.openai_wire import model_list, sse
from core.openapi import raises
from tts.http_docs import (
    BODY_ERRORS,
    CHECK_ERRORS,
    SPEECH_ERRORS,
    VOICE_SCHEMA,
    constrain,
    headers,
    json_body,
    speed_schema,
    text_schema,
)
from tts.http_turns import abandoned, encode_turn, encoded_body, first_audio, tts_service, warnings_headers
from tts.service import TtsService
from tts.turn import AudioPiece, Cancelled, Turn

log = get_logger(__name__)

OUTPUT_RATE = 24_000
"""OpenAI's speech API speaks at 24 kHz, and clients of `pcm` assume it: every format is resampled to it."""
DEFAULT_MODELS = ("tts-1", "gpt-4o-mini-tts")
"""Model names that mean the default engine."""
HD_MODEL = "tts-1-hd"
TRANSCRIPTION_MODEL = "whisper-1"
"""Listed here too: this base URL also answers transcriptions (forwarded to the STT service)."""
BODY_EXAMPLE = '{"model": "tts-1", "input": "Hello", "voice": "alloy"}'
OPENAI_SPEEDS = (0.25, 4.0)
"""The speeds OpenAI's API takes."""


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr


ENGINE_MODELS = get_args(TtsSettings.model_fields["engine"].annotation)
"""The engine names a `model` may also be."""


class SpeechRequest(BaseModel):
    """Body of POST /v1/audio/speech, as OpenAI defines it."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr = Field(
        description="tts-1 or gpt-4o-mini-tts (the default engine), tts-1-hd (tts.openai.hd_model_engine), or the "
        "name of an engine in tts.engines; an engine not configured here is refused (model_not_found).",
        json_schema_extra={"enum": [*DEFAULT_MODELS, HD_MODEL, *ENGINE_MODELS], "examples": [DEFAULT_MODELS[0]]},
    )
    input: StrictStr = Field(description="The text to speak (spoken as it is; no LLM reply).")
    voice: StrictStr | VoiceId = Field(description="An OpenAI voice name (mapped by tts.openai.voices) or one of ours.")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: StrictFloat = Field(
        1.0, ge=OPENAI_SPEEDS[0], le=OPENAI_SPEEDS[1], description="Also within tts.min_speed..tts.max_speed."
    )
    instructions: StrictStr | None = Field(None, description="Accepted; no engine here can follow it yet.")
    stream_format: Literal["audio", "sse"] = "audio"
    text_format: Literal["text", "ssml"] | None = Field(
        None, description="Ours, not OpenAI's: ssml reads `input` as SSML; default: ssml when it starts with <speak."
    )


Service = Annotated[TtsService, Depends(tts_service)]


def _request_body(settings: Settings) -> dict[str, Any]:
    """The requestBody of POST /v1/audio/speech, with the limits TtsService.check_request applies."""
    schema = SpeechRequest.model_json_schema()
    voice_id = schema.pop("$defs")["VoiceId"]  # inline: a `$defs` reference means nothing inside the OpenAPI document
    constrain(voice_id, "id", VOICE_SCHEMA)
    ours = {"type": "string", **VOICE_SCHEMA, "examples": list(OPENAI_VOICES)}
    schema["properties"]["voice"]["anyOf"] = [ours, voice_id]
    constrain(schema, "input", text_schema(settings))
    constrain(schema, "speed", speed_schema(settings, *OPENAI_SPEEDS))
    return json_body(schema)


def build_router(settings: Settings) -> APIRouter:
    """The routes; their OpenAPI document holds the request limits of `settings`."""
    router = APIRouter(prefix="/v1", tags=["openai"])
    audio = {
        "description": "The speech in response_format, encoded as it is synthesized (stream_format sse: events "
        "speech.audio.delta with base64 audio, then speech.audio.done)",
        "content": {fmt.content_type: {} for fmt in FORMATS.values()} | {"text/event-stream": {}},
        "headers": headers("X-Voice", "X-Engine", "X-Sample-Rate"),
    }
    router.add_api_route(
        "/audio/speech",
        speech,
        methods=["POST"],
        response_class=Response,
        responses={200: audio},
        openapi_extra={**_request_body(settings), **raises(*BODY_ERRORS, *CHECK_ERRORS, *SPEECH_ERRORS, UnknownModel)},
    )
    router.add_api_route("/models", models, methods=["GET"])
    router.add_api_route("/audio/models", audio_models, methods=["GET"])
    router.add_api_route("/audio/voices", audio_voices, methods=["GET"], openapi_extra=raises(EngineLoading, EngineUnavailable))
    return router


def speech_models(service: TtsService) -> list[str]:
    return [*DEFAULT_MODELS, HD_MODEL, *service.engines.slots]


def _engine_of(service: TtsService, model: str) -> str | None:
    """The engine `model` means (None: the default engine), or UnknownModel for one not configured here."""
    if model in DEFAULT_MODELS:
        return None
    wanted = (service.settings.tts.openai.hd_model_engine if model == HD_MODEL else model)
    if wanted is None or wanted in service.engines.slots:
        return wanted
    meaning = f" means the {wanted} engine (tts.openai.hd_model_engine), which" if model == HD_MODEL else ""
    raise UnknownModel(
        f"model {model!r}{meaning or ' is not'} available here{', is not configured (tts.engines)' if meaning else ''}; "
        f"available models: {', '.join(speech_models(service))}",
        param="model",
    )


def _voice(service: TtsService, voice: str | VoiceId) -> str | None:
    """Our voice for the request's voice: an OpenAI name through tts.openai.voices (left out: the default)."""
    name = voice.id if isinstance(voice, VoiceId) else voice
    if name.lower() in OPENAI_VOICES:
        return service.settings.tts.openai.voices.get(name.lower())
    return name


async def speech(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    limit = service.settings.tts.max_text_length * 12 + 4096
    depth = service.settings.security.max_json_depth
    body = validated(SpeechRequest, await read_json_body(request, limit, "tts.max_text_length", BODY_EXAMPLE, depth))
    engine = _engine_of(service, body.model)
    try:
        checked = await service.check_request(
            body.input, _voice(service, body.voice), body.speed, reply=False, engine=engine, text_format=body.text_format
        )
    except ServiceError as error:
        if error.code == "text_too_long":
            error.param = "input"
        raise
    if body.instructions not in (None, "", "None"):  # Home Assistant sends the string "None"
        log.debug("instructions_ignored", engine=service.engines.configured)
    turn = service.start_turn(checked, "openai", started)
    try:
        first, rate = await first_audio(turn, request, OUTPUT_RATE)
    except Cancelled:
        return abandoned()
    fmt = FORMATS[body.response_format]
    encoder = StreamEncoder(fmt.name, rate, OUTPUT_RATE)
    if body.stream_format == "sse":
        return StreamingResponse(
            _sse_body(turn, first, encoder, body.input),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            background=BackgroundTask(turn.aclose),
        )
    headers = {
        "Cache-Control": "no-store", "X-Accel-Buffering": "no", "X-Voice": checked.voice, "X-Engine": turn.engine,
        **warnings_headers(checked),
    }
    if fmt.name == "pcm":
        headers["X-Sample-Rate"] = str(OUTPUT_RATE)
    return StreamingResponse(
        encoded_body(turn, first, encoder), media_type=fmt.content_type, headers=headers, background=BackgroundTask(turn.aclose)
    )


async def _sse_body(turn: Turn, first: AudioPiece | None, encoder: StreamEncoder, text: str) -> AsyncIterator[bytes]:
    """`speech.audio.delta` events with base64 audio in the response format, then `speech.audio.done`; a
    failure after the first event is an `error` event, and no `done` follows."""
    try:
        async for data in encode_turn(turn, first, encoder):
            if data:
                yield sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    except (ServiceError, Cancelled) as exc:
        error = exc if isinstance(exc, ServiceError) else ShuttingDown("the service stopped before the speech was finished")
        log.warning("stream_aborted", code=error.code, reason=error.message)
        yield sse({"type": "error", "error": {"message": error.message, "type": "server_error", "code": error.code}})
        return
    finally:
        await turn.aclose()
    # No tokenizer runs here: input tokens are estimated by OpenAI's rule of thumb (4 characters a token);
    # no audio tokens exist in this pipeline.
    input_tokens = math.ceil(len(text) / 4)
    usage = {"input_tokens": input_tokens, "output_tokens": 0, "total_tokens": input_tokens}
    yield sse({"type": "speech.audio.done", "usage": usage})


async def models(service: Service) -> dict[str, Any]:
    return model_list([*speech_models(service), TRANSCRIPTION_MODEL])


async def audio_models(service: Service) -> dict[str, Any]:
    return {"models": [{"id": name, "name": name} for name in speech_models(service)]}


async def audio_voices(service: Service) -> dict[str, Any]:
    listing = await service.voices()
    mapped = service.settings.tts.openai.voices
    ours = [{"id": name, "name": name} for name in listing.voices]
    theirs = [{"id": name, "name": f"{name} ({mapped.get(name, listing.default)})"} for name in OPENAI_VOICES]
    return {"voices": ours + theirs, "default": listing.default}
