"""The native HTTP protocol of the TTS service: parse the request, run a turn, encode its events.

- POST /tts: the whole turn as one WAV (Server-Timing header with the stage timings).
- POST /tts/stream: chunked WAV (or raw PCM16 with `Accept: audio/pcm`), fragment by fragment.
- GET /tts/sse?text=... and POST /tts/sse: the same as Server-Sent Events.
- A reply (reply true) continues the conversation named by `conversation_id`, or starts one; its id comes
  back in X-Conversation-Id (and the SSE `conversation` event).
- GET /voices, GET /health, GET /metrics.

Streams start with their first event, so a failure before it (LLM down, every worker busy) is an
ordinary JSON error with its status; a failure after it cuts the audio stream off (core.http.abort_response)
or ends the event stream with an `error` event.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr
from starlette.background import BackgroundTask

from core.audio import streaming_wav_header, wav_bytes
from core.config import Settings
from core.errors import EngineLoading, EngineUnavailable, ServiceError, ShuttingDown
from core.http import abort_response, error_body, on_disconnect, read_json_body, validated
from core.logging import get_logger
from core.openapi import raises
from tts.health import health_report
from tts.http_docs import (
    BODY_ERRORS,
    CHECK_ERRORS,
    CONVERSATION_FIELD_SCHEMA,
    CONVERSATION_LINKS,
    REPLY_ERRORS,
    SPEECH_ERRORS,
    TEXT_FORMAT,
    VOICE_SCHEMA,
    engine_schema,
    headers,
    speed_schema,
    text_schema,
    tts_request_body,
)
from tts.http_turns import abandoned, first_audio, first_event, tts_service, warnings_headers
from tts.runner import EMPTY_RATE
from tts.service import TtsService
from tts.turn import AudioPiece, Cancelled, ReplyText, Turn, TurnEvent, TurnRequest, TurnTimings

log = get_logger(__name__)

REPLY_HEADER = "X-Reply-Text"
REPLY_TRUNCATED_HEADER = "X-Reply-Text-Truncated"
CONVERSATION_HEADER = "X-Conversation-Id"
REPLY_HEADER_MAX_BYTES = 4096
"""Proxies and HTTP clients commonly refuse response heads over 8-16 KB; a long reply is cut."""
BODY_EXAMPLE = '{"text": "Hello", "reply": false}'


class TtsRequest(BaseModel):
    """Body of POST /tts, /tts/stream and /tts/sse."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(description="The user's words (reply true) or the words to speak (reply false).")
    voice: StrictStr | None = Field(None, description="Voice name from GET /voices; default: the configured voice.")
    reply: StrictBool | None = Field(None, description="Speak the LLM's answer to the text; default: tts.reply_default.")
    speed: StrictFloat | None = Field(
        None, description="Speaking speed, 1.0 normal; allowed range in tts.min_speed..max_speed."
    )
    conversation_id: StrictStr | None = Field(
        None,
        description="Continue this conversation (the X-Conversation-Id of an earlier reply); reply true only. "
        "Without it a reply starts a new conversation.",
    )
    engine: StrictStr | None = Field(None, description="Engine from GET /v1/engines; default: the default engine.")
    speaker: StrictStr | None = Field(None, max_length=200, description="Speaker of a multi-speaker voice (its speakers are in GET /v1/voices); default: the voice's first.")
    text_format: Literal["text", "ssml"] | None = Field(None, description=TEXT_FORMAT)


def reply_text_headers(text: str) -> dict[str, str]:
    """X-Reply-Text, percent-encoded UTF-8, cut at a character boundary when it would be too long."""
    encoded = quote(text, safe="")
    if len(encoded) <= REPLY_HEADER_MAX_BYTES:
        return {REPLY_HEADER: encoded}
    low, high = 0, len(text)
    while low < high:  # the longest prefix whose encoding fits
        middle = (low + high + 1) // 2
        if len(quote(text[:middle], safe="")) <= REPLY_HEADER_MAX_BYTES:
            low = middle
        else:
            high = middle - 1
    return {REPLY_HEADER: quote(text[:low], safe=""), REPLY_TRUNCATED_HEADER: "true"}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def server_timing(timings: TurnTimings) -> str:
    """A Server-Timing header value (milliseconds), for the stages known so far."""
    parts = []
    if timings.engine_load_s is not None:
        parts.append(f'engine_load;dur={_ms(timings.engine_load_s)};desc="Loading the engine"')
    if timings.voice_load_s is not None:
        parts.append(f'voice_load;dur={_ms(timings.voice_load_s)};desc="Loading the voice again"')
    if timings.llm is not None:
        if timings.llm.time_to_first_token_s is not None:
            parts.append(f'llm_ttft;dur={_ms(timings.llm.time_to_first_token_s)};desc="LLM time to first token"')
        if timings.llm_total_s is not None:
            parts.append(f'llm;dur={_ms(timings.llm_total_s)};desc="LLM reply"')
    if timings.queue_waits:
        parts.append(f'queue;dur={_ms(timings.queue_wait_s)};desc="Waiting for a worker"')
    if timings.syntheses:
        parts.append(f'tts;dur={_ms(timings.synthesis_s)};desc="Synthesis"')
    if timings.first_audio_at is not None:
        parts.append(f'ttfa;dur={_ms(timings.time_to_first_audio_s)};desc="Time to first audio"')
    if timings.finished_at is not None:
        parts.append(f"total;dur={_ms(timings.total_s)}")
    return ", ".join(parts)


def _body_limit(service: TtsService) -> int:
    # Room for the longest allowed text even when every character is JSON-escaped (\uXXXX), plus the other fields.
    return service.settings.tts.max_text_length * 12 + 4096


async def _checked(service: TtsService, request: Request) -> TurnRequest:
    depth = service.settings.security.max_json_depth
    body = await read_json_body(request, _body_limit(service), "tts.max_text_length", BODY_EXAMPLE, depth)
    parsed = validated(TtsRequest, body)
    return await service.check_request(
        parsed.text, parsed.voice, parsed.speed, parsed.reply, parsed.speaker, conversation_id=parsed.conversation_id,
        engine=parsed.engine, text_format=parsed.text_format,
    )


def conversation_headers(turn: Turn) -> dict[str, str]:
    conversation = turn.request.conversation_id
    return {} if conversation is None else {CONVERSATION_HEADER: conversation}


Service = Annotated[TtsService, Depends(tts_service)]
_TURN_ERRORS = raises(*BODY_ERRORS, *CHECK_ERRORS, *REPLY_ERRORS, *SPEECH_ERRORS)
_QUERY_TURN_ERRORS = raises(*CHECK_ERRORS, *REPLY_ERRORS, *SPEECH_ERRORS)
"""GET /tts/sse has no body: nothing to be too large, of the wrong type or bad JSON."""
_WAV = {
    "description": "Mono PCM16 WAV; X-Reply-Text holds the words",
    "content": {"audio/wav": {}},
    "headers": headers(
        "X-Reply-Text", "X-Reply-Text-Truncated", "X-Voice", "X-Engine", "X-Audio-Duration", "Server-Timing",
        "X-Conversation-Id", "X-Warnings",
    ),
    "links": CONVERSATION_LINKS,
}
_STREAM = {
    "description": "Chunked mono PCM16: a WAV header for a stream of unknown length, then the audio of each "
    "sentence as soon as it is synthesized. With `Accept: audio/pcm`, raw PCM16 (little-endian) and the rate "
    "in X-Sample-Rate.",
    "content": {"audio/wav": {}, "audio/pcm": {}},
    "headers": headers(
        "X-Sample-Rate", "X-Channels", "X-Sample-Format", "X-Voice", "X-Engine", "Server-Timing", "X-Conversation-Id",
        "X-Warnings",
    ),
    "links": CONVERSATION_LINKS,
}
_SSE = {
    "description": "Events reply_text, audio (base64 PCM16), metrics and done; error if the turn fails after its start",
    "content": {"text/event-stream": {}},
    "headers": headers("X-Conversation-Id"),
    "links": CONVERSATION_LINKS,
}


def build_router(settings: Settings) -> APIRouter:
    """The routes; their OpenAPI document holds the request limits of `settings`."""
    router = APIRouter()
    body = {**tts_request_body(TtsRequest, settings), **_TURN_ERRORS}
    posted = {"methods": ["POST"], "response_class": Response, "openapi_extra": body}
    router.add_api_route("/tts", tts, responses={200: _WAV}, **posted)
    router.add_api_route("/tts/stream", tts_stream, responses={200: _STREAM}, **posted)
    reconnect = {"description": "The answer to a reconnecting EventSource (Last-Event-ID): the turn is not repeated"}
    router.add_api_route(
        "/tts/sse", _sse_get(settings), methods=["GET"], response_class=Response,
        responses={200: _SSE, 204: reconnect}, openapi_extra=_QUERY_TURN_ERRORS,
    )
    router.add_api_route("/tts/sse", tts_sse_post, responses={200: _SSE}, **posted)
    router.add_api_route(
        "/metrics", metrics, methods=["GET"], response_class=Response, responses={200: {"content": {"text/plain": {}}}}
    )
    router.add_api_route("/voices", voices, methods=["GET"], openapi_extra=raises(EngineLoading, EngineUnavailable))
    router.add_api_route("/health", health, methods=["GET"])
    return router


async def tts(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    turn = service.start_turn(await _checked(service, request), "tts", started)
    try:
        async with on_disconnect(request, turn.cancel):
            speech = await service.speak(turn)
    except Cancelled:
        return abandoned()
    finally:
        await turn.aclose()
    return Response(
        content=wav_bytes(speech.pcm16, speech.sample_rate),
        media_type="audio/wav",
        headers={
            **reply_text_headers(speech.text),
            "X-Voice": speech.voice,
            "X-Engine": speech.engine,
            "X-Audio-Duration": f"{speech.duration_s:.3f}",
            "Server-Timing": server_timing(turn.timings),
            **conversation_headers(turn),
            **warnings_headers(turn.request),
            "Access-Control-Expose-Headers": (
                f"{REPLY_HEADER}, {REPLY_TRUNCATED_HEADER}, X-Voice, X-Engine, X-Audio-Duration, Server-Timing, "
                f"{CONVERSATION_HEADER}, X-Warnings"
            ),
            "Cache-Control": "no-store",
        },
    )


async def tts_stream(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    turn = service.start_turn(await _checked(service, request), "stream", started)
    raw = "audio/pcm" in request.headers.get("accept", "").lower()
    try:
        first, rate = await first_audio(turn, request, EMPTY_RATE)
    except Cancelled:
        return abandoned()
    headers = {
        "X-Sample-Rate": str(rate),
        "X-Channels": "1",
        "X-Sample-Format": "s16le",
        "X-Voice": turn.request.voice,
        "X-Engine": turn.engine,
        "Server-Timing": server_timing(turn.timings),
        **conversation_headers(turn),
        **warnings_headers(turn.request),
        "Access-Control-Expose-Headers": (
            f"X-Sample-Rate, X-Channels, X-Sample-Format, X-Voice, X-Engine, Server-Timing, {CONVERSATION_HEADER}, "
            "X-Warnings"
        ),
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    }
    body = _audio_body(turn, first, None if raw else streaming_wav_header(rate))
    media = "audio/pcm" if raw else "audio/wav"
    return StreamingResponse(body, media_type=media, headers=headers, background=BackgroundTask(turn.aclose))


def _sse_get(settings: Settings) -> Callable[..., Awaitable[Response]]:
    """GET /tts/sse, its parameters documented with the limits of `settings`."""

    async def tts_sse_get(
        request: Request,
        service: Service,
        text: str = Query(
            ...,
            description="The user's words (reply true) or the words to speak (reply false).",
            json_schema_extra=text_schema(settings),
        ),
        voice: str | None = Query(None, description="Voice name from GET /voices.", json_schema_extra=VOICE_SCHEMA),
        speaker: str | None = Query(None, max_length=200, description="Speaker of a multi-speaker voice (its speakers are in GET /v1/voices); default: the voice's first."),
        reply: bool | None = Query(None, description="Speak the LLM's answer; default: tts.reply_default."),
        speed: float | None = Query(None, description="Speaking speed, 1.0 normal.", json_schema_extra=speed_schema(settings)),
        conversation_id: str | None = Query(
            None, description="Continue this conversation (reply true only).", json_schema_extra=CONVERSATION_FIELD_SCHEMA
        ),
        engine: str | None = Query(
            None, description="Engine from GET /v1/engines; default: the default engine.", json_schema_extra=engine_schema(settings)
        ),
        text_format: Literal["text", "ssml"] | None = Query(None, description=TEXT_FORMAT),
        last_event_id: str | None = Header(None, alias="Last-Event-ID", description="Sent by a reconnecting EventSource."),
    ) -> Response:
        started = time.perf_counter()
        checked = await service.check_request(
            text, voice, speed, reply, speaker, conversation_id=conversation_id, engine=engine, text_format=text_format
        )
        if last_event_id is not None:
            # A browser EventSource reconnects by itself after the stream ends; a turn is not to be
            # repeated, and 204 is how the SSE standard tells it to stop. (Checked first all the same:
            # a request is answered by what its parameters are, whatever its headers.)
            return Response(status_code=204)
        return await _event_stream(service, request, checked, started)

    return tts_sse_get


async def tts_sse_post(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    return await _event_stream(service, request, await _checked(service, request), started)


async def _event_stream(service: TtsService, request: Request, checked: TurnRequest, started: float) -> Response:
    turn = service.start_turn(checked, "sse", started)
    try:
        first = await first_event(turn, request, (ReplyText, AudioPiece))
    except Cancelled:
        return abandoned()
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no", **conversation_headers(turn)}
    return StreamingResponse(
        _sse_body(turn, first), media_type="text/event-stream", headers=headers, background=BackgroundTask(turn.aclose)
    )


async def metrics(service: Service) -> Response:
    content, content_type = service.metrics.render()
    return Response(content, media_type=content_type)


async def voices(service: Service) -> dict[str, Any]:
    listing = await service.voices()
    return {"voices": listing.voices, "default": listing.default, "engine": listing.engine}


async def health(service: Service) -> dict[str, Any]:
    return health_report(service)


async def _audio_body(turn: Turn, first: TurnEvent | None, header: bytes | None) -> AsyncIterator[bytes]:
    try:
        if header is not None:
            yield header
        if isinstance(first, AudioPiece):
            yield first.pcm16
        async for event in turn:
            if isinstance(event, AudioPiece):
                yield event.pcm16
    except Cancelled:
        abort_response(ShuttingDown.code, "the service stopped before the turn finished")
    except ServiceError as exc:
        abort_response(exc.code, exc.message)
    finally:
        await turn.aclose()


def _sse(name: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    lines = f"event: {name}\n" + (f"id: {event_id}\n" if event_id else "")
    return (lines + f"data: {json.dumps(data, ensure_ascii=False)}\n\n").encode()


def _sse_event(event: TurnEvent | None) -> bytes:
    if isinstance(event, ReplyText):
        return _sse("reply_text", {"text": event.text, "is_final": event.is_final})
    if isinstance(event, AudioPiece):
        data = {
            "index": event.index,
            "sample_rate": event.sample_rate,
            "samples": event.samples,
            "format": "pcm_s16le",
            "text": event.text,
            "audio": base64.b64encode(event.pcm16).decode("ascii"),
        }
        return _sse("audio", data, str(event.index))
    return b""


async def _sse_body(turn: Turn, first: TurnEvent | None) -> AsyncIterator[bytes]:
    try:
        if turn.request.conversation_id is not None:
            yield _sse("conversation", {"id": turn.request.conversation_id})
        yield _sse_event(first)
        async for event in turn:
            yield _sse_event(event)
    except (ServiceError, Cancelled) as exc:
        error = exc if isinstance(exc, ServiceError) else ShuttingDown("the service stopped before the turn finished")
        yield _sse("error", error_body(error.code, error.message))
        return
    finally:
        await turn.aclose()
    timings = turn.timings
    yield _sse("metrics", {"timings": timings.as_dict()})
    done = {
        "chunks": turn.chunks,
        "voice": turn.request.voice,
        "engine": turn.engine,
        "text": turn.text,
        "sample_rate": turn.sample_rate,
        "audio_seconds": round(timings.audio_s, 3),
        "warnings": list(turn.request.warnings),
    }
    yield _sse("done", done)
