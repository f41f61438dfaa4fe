"""The TTS service. Routes and protocol only; the work is tts.pipeline.

- POST /tts: the whole reply as one WAV (Server-Timing header with the stage timings).
- POST /tts/stream: the reply as a chunked WAV (or raw PCM16 with `Accept: audio/pcm`), sentence by
  sentence as it is synthesized.
- GET /tts/sse?text=... and POST /tts/sse: the same as Server-Sent Events.
- WS /ws/tts: the session protocol for live clients (tts/ws.py).
- GET /voices, GET /health, GET /metrics (Prometheus), and the dashboard at /.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import structlog
from anyio.abc import TaskGroup
from fastapi import FastAPI, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.types import Receive, Scope, Send

from core import __version__
from core.audio import wav_bytes
from core.config import PROJECT_ROOT, Settings, get_settings
from core.http import ServiceError, error_body, service_app
from core.llm import OllamaClient
from core.logging import configure_logging, get_logger
from core.serve import lazy_app
from core.serve import main as serve_main
from tts.dashboard import build_router
from tts.errors import InvalidJson, InvalidRequest, RequestTooLarge
from tts.metrics import TtsMetrics
from tts.pipeline import (
    AudioPiece,
    Cancelled,
    EngineFactory,
    ReplyText,
    TtsPipeline,
    Turn,
    TurnEvent,
    TurnRequest,
    TurnTimings,
)
from tts.ws import TtsSocket, refuse

log = get_logger(__name__)

FRONTEND_DIR = PROJECT_ROOT / "frontend"
REPLY_HEADER = "X-Reply-Text"
REPLY_TRUNCATED_HEADER = "X-Reply-Text-Truncated"
REPLY_HEADER_MAX_BYTES = 4096
"""Proxies and HTTP clients commonly refuse response heads over 8-16 KB; a long reply is cut."""


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


class TtsRequest(BaseModel):
    """Body of POST /tts."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(description="The user's words (reply true) or the words to speak (reply false).")
    voice: StrictStr | None = Field(None, description="Voice name from GET /voices; default: the configured voice.")
    reply: StrictBool | None = Field(
        None, description="Speak the LLM's answer to the text; default: tts.reply_default."
    )
    speed: float | None = Field(
        None, description="Speaking speed, 1.0 normal; allowed range in tts.min_speed..max_speed."
    )


class OllamaStatus:
    """Ollama reachability for /health: cached for llm.health_cache_s and refreshed in the background,
    so /health never waits on Ollama."""

    def __init__(self, llm: OllamaClient, ttl_s: float) -> None:
        self.llm = llm
        self.ttl_s = ttl_s
        self.reachable = False
        self.model_available: bool | None = None
        self.checked_at: float | None = None
        self._refreshing = False

    async def refresh(self) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:
            has_model = await self.llm.has_model()
            self.reachable = has_model is not None
            self.model_available = has_model
            self.checked_at = time.monotonic()
        finally:
            self._refreshing = False

    def current(self, tasks: TaskGroup | None) -> tuple[bool, bool | None]:
        stale = self.checked_at is None or time.monotonic() - self.checked_at >= self.ttl_s
        if stale and not self._refreshing and tasks is not None:
            tasks.start_soon(self.refresh)
        return self.reachable, self.model_available


class TtsService:
    """Process-wide state: the LLM client, the pipeline (engine and worker pool), background tasks."""

    def __init__(self, settings: Settings, pipeline: TtsPipeline, llm: OllamaClient) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.llm = llm
        self.ollama = OllamaStatus(llm, settings.llm.health_cache_s)
        self.tasks: TaskGroup | None = None
        self.websocket_clients = 0
        self.metrics = TtsMetrics(pipeline, lambda: self.websocket_clients)

    def finish_turn(self, endpoint: str, timings: TurnTimings, outcome: str, **fields: Any) -> None:
        """Every ended turn, whatever its endpoint: one log line with its stage timings, and /metrics."""
        if timings.finished_at is None:
            timings.finished_at = time.perf_counter()
        self.metrics.observe_turn(endpoint, timings, outcome)
        log.info("turn", endpoint=endpoint, outcome=outcome, **fields, **timings.log_fields())

    def health(self) -> dict[str, Any]:
        state = self.pipeline.state
        engine = state.engine
        ollama_ok, model_ok = self.ollama.current(self.tasks)
        reasons: list[str] = []
        if state.loading:
            reasons.append(f"the {state.configured} engine is starting")
        if state.error:
            reasons.append(
                state.error + (f"; speaking with {engine.name} instead" if engine and state.fallback else "")
            )
        if self.ollama.checked_at is not None and not ollama_ok:
            reasons.append(f"Ollama is not reachable at {self.settings.llm.url}: replies (reply true) fail")
        elif model_ok is False:
            reasons.append(
                f"Ollama has no model {self.settings.llm.model!r}: run `ollama pull {self.settings.llm.model}`"
            )
        counters = self.pipeline.counters
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "ollama": ollama_ok,
            "llm_model": self.settings.llm.model,
            "llm_model_available": model_ok,
            "environment": self.settings.environment,
            "engine": engine.name if engine else state.configured,
            "configured_engine": state.configured,
            "fallback": state.fallback,
            "voice": engine.default_voice if engine else self.pipeline.configured_voice(),
            "voice_loaded": bool(engine and engine.voice_loaded),
            "workers": {
                "max_concurrent": self.settings.tts.max_concurrent,
                "running": counters.running,
                "waiting": counters.waiting,
            },
            "version": __version__,
        }


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    engine_options: dict[str, dict[str, Any]] | None = None,
    llm: OllamaClient | None = None,
) -> FastAPI:
    """The TTS app. `engine_factory`, `engine_options` (per engine name: e.g. a voice downloader for piper)
    and `llm` exist so tests and embedders can supply their own; by default everything comes from settings."""
    settings = settings or get_settings()
    configure_logging(settings.logging, "tts")
    llm = llm or OllamaClient(settings.llm)
    pipeline_kwargs: dict[str, Any] = {"engine_options": engine_options}
    if engine_factory is not None:
        pipeline_kwargs["engine_factory"] = engine_factory
    pipeline = TtsPipeline(settings, llm, **pipeline_kwargs)
    service = TtsService(settings, pipeline, llm)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            service.tasks = tasks
            tasks.start_soon(pipeline.start_engine)
            tasks.start_soon(service.ollama.refresh)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        service.tasks = None
        pipeline.close()
        await llm.aclose()

    app = service_app(
        title="Voice assistant: text to speech",
        lifespan=lifespan,
        description="POST text to /tts and receive the assistant's spoken answer (or the text itself) as WAV.",
    )
    app.state.service = service
    app.state.pipeline = pipeline
    app.state.metrics = service.metrics

    @app.post(
        "/tts",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "Mono PCM16 WAV; X-Reply-Text holds the words"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": TtsRequest.model_json_schema()}},
            }
        },
    )
    async def tts(request: Request) -> Response:
        started = time.perf_counter()
        checked = await checked_body(request)
        text, voice, speed, reply = checked.text, checked.voice, checked.speed, checked.reply

        cancel = threading.Event()
        result: dict[str, Any] = {}
        timings = TurnTimings(started=started, reply=reply)

        async with anyio.create_task_group() as tasks:
            def stop() -> None:
                cancel.set()  # the synthesis stops between sentences
                tasks.cancel_scope.cancel()

            tasks.start_soon(_watch_disconnect, request.receive, stop)
            try:
                words = await pipeline.reply_text(text, timings) if reply else text
                result["speech"] = await pipeline.speak(words, voice, speed, cancel, timings, reply=reply)
            except Cancelled:
                pass
            except Exception as exc:  # re-raised below, outside the task group, so it is not wrapped in a group
                result["error"] = exc
            tasks.cancel_scope.cancel()
        timings.finished_at = time.perf_counter()
        speech = result.get("speech")
        error = result.get("error")
        outcome = "ok" if speech else getattr(error, "code", "internal_error") if error else "cancelled"
        service.finish_turn("tts", timings, outcome)
        if error is not None:
            raise error
        if speech is None:
            # The client is gone; nobody reads this. 499 is the de-facto "client closed request".
            log.info("request_abandoned", reason="client disconnected")
            return Response(status_code=499)
        audio = wav_bytes(speech.pcm16, speech.sample_rate)
        return Response(
            content=audio,
            media_type="audio/wav",
            headers={
                **reply_text_headers(speech.text),
                "X-Voice": speech.voice,
                "X-Engine": speech.engine,
                "X-Audio-Duration": f"{speech.duration_s:.3f}",
                "Server-Timing": timings.server_timing(),
                "Access-Control-Expose-Headers": (
                    f"{REPLY_HEADER}, {REPLY_TRUNCATED_HEADER}, X-Voice, X-Engine, X-Audio-Duration, Server-Timing"
                ),
                "Cache-Control": "no-store",
            },
        )

    async def checked_body(request: Request) -> TurnRequest:
        body = await _read_json(request, _body_limit(settings))
        try:
            parsed = TtsRequest.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return _turn_request(parsed)

    def _turn_request(parsed: TtsRequest) -> TurnRequest:
        text, voice, speed = pipeline.check_request(parsed.text, parsed.voice, parsed.speed)
        reply = settings.tts.reply_default if parsed.reply is None else parsed.reply
        return TurnRequest(text, voice, speed, reply)

    @app.post(
        "/tts/stream",
        response_class=Response,
        responses={
            200: {
                "content": {"audio/wav": {}, "audio/pcm": {}},
                "description": "Chunked mono PCM16: a WAV header for a stream of unknown length, then the audio "
                "of each sentence as soon as it is synthesized. With `Accept: audio/pcm`, raw PCM16 (little-endian) "
                "and the rate in X-Sample-Rate.",
            }
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": TtsRequest.model_json_schema()}},
            }
        },
    )
    async def tts_stream(request: Request) -> Response:
        started = time.perf_counter()
        turn_request = await checked_body(request)
        raw = "audio/pcm" in request.headers.get("accept", "").lower()
        return _AudioStream(service, turn_request, started, raw)

    @app.get("/tts/sse", response_class=Response, responses={200: {"content": {"text/event-stream": {}}}})
    async def tts_sse_get(
        request: Request,
        text: str = Query(..., description="The user's words (reply true) or the words to speak (reply false)."),
        voice: str | None = Query(None, description="Voice name from GET /voices."),
        reply: bool | None = Query(None, description="Speak the LLM's answer; default: tts.reply_default."),
        speed: float | None = Query(None, description="Speaking speed, 1.0 normal."),
    ) -> Response:
        if "last-event-id" in request.headers:
            # A browser EventSource reconnects by itself after the stream ends; a turn is not to be
            # repeated, and 204 is how the SSE standard tells it to stop.
            return Response(status_code=204)
        started = time.perf_counter()
        return _EventStream(service, _turn_request(TtsRequest(text=text, voice=voice, reply=reply, speed=speed)), started)

    @app.post(
        "/tts/sse",
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": TtsRequest.model_json_schema()}},
            }
        },
    )
    async def tts_sse_post(request: Request) -> Response:
        started = time.perf_counter()
        return _EventStream(service, await checked_body(request), started)

    @app.websocket("/ws/tts")
    async def tts_socket(websocket: WebSocket) -> None:
        limit = settings.tts.ws_max_connections
        if service.websocket_clients >= limit:
            log.warning("ws_refused", reason="too many connections", limit=limit)
            await refuse(websocket, limit)
            return
        service.websocket_clients += 1
        try:
            with structlog.contextvars.bound_contextvars(session_id=uuid.uuid4().hex[:12]):
                await websocket.accept()
                log.info("ws_connected")
                await TtsSocket(websocket, service).serve()
        finally:
            service.websocket_clients -= 1

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        content, content_type = service.metrics.render()
        return Response(content, media_type=content_type)

    @app.get("/voices")
    async def voices() -> dict[str, Any]:
        engine = pipeline.engine()
        names = await anyio.to_thread.run_sync(engine.voices)
        return {"voices": names, "default": engine.default_voice, "engine": engine.name}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    app.include_router(build_router(settings))  # before the "/" mount, which would answer first
    if FRONTEND_DIR.is_dir():
        app.mount("/", StaticFiles(directory=FRONTEND_DIR, html=True), name="frontend")
    return app


def _body_limit(settings: Settings) -> int:
    # Room for the longest allowed text even when every character is JSON-escaped (\uXXXX), plus the other fields.
    return settings.tts.max_text_length * 12 + 4096


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(
            f"request body of {declared} bytes is over the {limit}-byte limit (see tts.max_text_length)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the {limit}-byte limit (see tts.max_text_length)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidJson('the request body is empty; send JSON such as {"text": "Hello"}')
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidJson("the request body is not UTF-8 text; send UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            'send e.g. {"text": "Hello", "reply": false}'
        ) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown field '{where}'; allowed fields: {', '.join(TtsRequest.model_fields)}")
        elif error["type"] == "missing":
            parts.append(f"'{where}' is required")
        else:
            parts.append(f"'{where}': {error['msg']}")
    return InvalidRequest("; ".join(parts))


async def _watch_disconnect(receive: Receive, on_gone: Callable[[], None]) -> None:
    """Waits for the client to go away (the request body has been read already), then calls on_gone."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            log.info("client_disconnected")
            on_gone()
            return


WAV_UNKNOWN_SIZE = 0xFFFFFFFF
"""RIFF and data sizes of a streamed WAV, whose length is unknown when the header is sent. The largest
value (not 0) because readers that trust the header then read to the end of the stream (ffmpeg,
browsers, Python's wave), while a size of 0 makes some of them play nothing."""


def streaming_wav_header(sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (see WAV_UNKNOWN_SIZE)."""
    return (
        b"RIFF"
        + struct.pack("<I", WAV_UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            channels,
            sample_rate,
            sample_rate * channels * sample_width,
            channels * sample_width,
            sample_width * 8,
        )
        + b"data"
        + struct.pack("<I", WAV_UNKNOWN_SIZE)
    )


class _StreamAborted(Exception):
    """A streamed turn failed after its response had started: the connection is dropped (no final
    chunk), so the client sees an incomplete response rather than a complete-looking short one."""


class _TurnResponse(Response):
    """Runs one streaming turn while answering: the turn lives exactly as long as the response, in the
    response's own task, and stops (LLM request and synthesis) as soon as the client disconnects."""

    endpoint = ""

    def __init__(self, service: TtsService, request: TurnRequest, started: float) -> None:
        super().__init__(status_code=200)
        self.service = service
        self.turn_request = request
        self.started = started
        self._send: Send | None = None
        self.response_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        turn = Turn()
        turn.timings.started = self.started
        failure: ServiceError | None = None
        unexpected: BaseException | None = None
        outcome = "ok"
        await self.on_begin()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_watch_disconnect, receive, turn.cancel)
            try:
                await self.service.pipeline.run_turn(self.turn_request, lambda event: self.on_event(event, turn), turn)
            except Cancelled:
                outcome = "cancelled"
            except ServiceError as exc:
                outcome, failure = exc.code, exc
            except Exception as exc:  # handled below, outside the task group
                log.exception("turn_failed")
                outcome, unexpected = "internal_error", exc
            tasks.cancel_scope.cancel()
        self.service.finish_turn(self.endpoint, turn.timings, outcome, chunks=turn.chunks)
        if outcome == "cancelled":
            log.info("request_abandoned", reason="client disconnected")
            return
        if unexpected is not None:
            failure = ServiceError("internal server error; see the service log")
        if failure is not None:
            await self.on_failure(failure)
            return
        await self.on_end(turn)

    async def write(self, data: bytes, more: bool = True) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def start(self, status: int, headers: dict[str, str]) -> None:
        assert self._send is not None
        self.response_started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()],
            }
        )

    async def on_begin(self) -> None:
        pass

    async def on_event(self, event: TurnEvent, turn: Turn) -> None:
        raise NotImplementedError

    async def on_failure(self, error: ServiceError) -> None:
        raise NotImplementedError

    async def on_end(self, turn: Turn) -> None:
        raise NotImplementedError


class _AudioStream(_TurnResponse):
    """POST /tts/stream. The response starts with the first audio, so a failure before it (LLM down,
    every worker busy) is still an ordinary JSON error with its status code."""

    endpoint = "stream"

    def __init__(self, service: TtsService, request: TurnRequest, started: float, raw: bool) -> None:
        super().__init__(service, request, started)
        self.raw = raw

    async def _begin_audio(self, turn: Turn, sample_rate: int) -> None:
        media = "audio/pcm" if self.raw else "audio/wav"
        engine = self.service.pipeline.engine().name
        headers = {
            "Content-Type": media,
            "X-Sample-Rate": str(sample_rate),
            "X-Channels": "1",
            "X-Sample-Format": "s16le",
            "X-Voice": self.turn_request.voice,
            "X-Engine": engine,
            "Server-Timing": turn.timings.server_timing(),
            "Access-Control-Expose-Headers": "X-Sample-Rate, X-Channels, X-Sample-Format, X-Voice, X-Engine, Server-Timing",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
        await self.start(200, headers)
        if not self.raw:
            await self.write(streaming_wav_header(sample_rate))

    async def on_event(self, event: TurnEvent, turn: Turn) -> None:
        if not isinstance(event, AudioPiece):
            return
        if not self.response_started:
            await self._begin_audio(turn, event.sample_rate)
        await self.write(event.pcm16)

    async def on_failure(self, error: ServiceError) -> None:
        if not self.response_started:
            response = JSONResponse(error_body(error.code, error.message), error.status_code, headers=error.headers)
            assert self._send is not None
            await response({"type": "http"}, _no_receive, self._send)
            return
        log.error("stream_aborted", code=error.code, reason=error.message)
        raise _StreamAborted(f"{error.code}: {error.message}")

    async def on_end(self, turn: Turn) -> None:
        if not self.response_started:  # a turn whose every fragment was silent
            await self._begin_audio(turn, turn.sample_rate or 22050)
        await self.write(b"", more=False)


class _EventStream(_TurnResponse):
    """GET and POST /tts/sse: `reply_text`, `audio` (base64 PCM16), `metrics` and `done` events; a
    failure during the turn is an `error` event with the usual error body. The response starts at once."""

    endpoint = "sse"

    async def on_begin(self) -> None:
        await self.start(
            200,
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            },
        )

    async def event(self, name: str, data: dict[str, Any], event_id: str | None = None) -> None:
        lines = f"event: {name}\n" + (f"id: {event_id}\n" if event_id else "")
        await self.write((lines + f"data: {json.dumps(data, ensure_ascii=False)}\n\n").encode())

    async def on_event(self, event: TurnEvent, turn: Turn) -> None:
        if isinstance(event, ReplyText):
            await self.event("reply_text", {"text": event.text, "is_final": event.is_final})
        elif isinstance(event, AudioPiece):
            await self.event(
                "audio",
                {
                    "index": event.index,
                    "sample_rate": event.sample_rate,
                    "samples": event.samples,
                    "format": "pcm_s16le",
                    "text": event.text,
                    "audio": base64.b64encode(event.pcm16).decode("ascii"),
                },
                str(event.index),
            )

    async def on_failure(self, error: ServiceError) -> None:
        await self.event("error", error_body(error.code, error.message))
        await self.write(b"", more=False)

    async def on_end(self, turn: Turn) -> None:
        turn.timings.finished_at = turn.timings.finished_at or time.perf_counter()
        await self.event("metrics", {"timings": turn.timings.as_dict()})
        await self.event(
            "done",
            {
                "chunks": turn.chunks,
                "voice": self.turn_request.voice,
                "engine": self.service.pipeline.engine().name,
                "text": turn.text,
                "sample_rate": turn.sample_rate,
                "audio_seconds": round(turn.timings.audio_s, 3),
            },
        )
        await self.write(b"", more=False)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def main() -> None:
    serve_main("tts", "Run the text-to-speech service and the dashboard.", create_app)


__getattr__ = lazy_app(create_app)  # `uvicorn tts.server:app`


if __name__ == "__main__":
    main()
