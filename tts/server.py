"""The TTS service: POST /tts, GET /voices, GET /health, and the dashboard at /. Routes and protocol only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup
from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from core import __version__
from core.audio import wav_bytes
from core.config import PROJECT_ROOT, Settings, get_settings
from core.http import RequestContextMiddleware, install_error_handlers
from core.llm import OllamaClient
from core.logging import configure_logging, get_logger
from core.serve import main as serve_main
from tts.errors import InvalidJson, InvalidRequest, RequestTooLarge
from tts.pipeline import Cancelled, EngineFactory, TtsPipeline

log = get_logger(__name__)

FRONTEND_DIR = PROJECT_ROOT / "frontend"
REPLY_HEADER = "X-Reply-Text"


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

    app = FastAPI(
        title="Voice assistant: text to speech",
        version=__version__,
        lifespan=lifespan,
        description="POST text to /tts and receive the assistant's spoken answer (or the text itself) as WAV.",
    )
    app.state.service = service
    app.state.pipeline = pipeline
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

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
        body = await _read_json(request, _body_limit(settings))
        try:
            parsed = TtsRequest.model_validate(body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        text, voice, speed = pipeline.check_request(parsed.text, parsed.voice, parsed.speed)
        reply = settings.tts.reply_default if parsed.reply is None else parsed.reply

        cancel = threading.Event()
        result: dict[str, Any] = {}

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_watch_disconnect, request, cancel, tasks)
            try:
                words = await pipeline.reply_text(text) if reply else text
                result["speech"] = await pipeline.speak(words, voice, speed, cancel)
            except Cancelled:
                pass
            except Exception as exc:  # re-raised below, outside the task group, so it is not wrapped in a group
                result["error"] = exc
            tasks.cancel_scope.cancel()
        if "error" in result:
            raise result["error"]
        speech = result.get("speech")
        if speech is None:
            # The client is gone; nobody reads this. 499 is the de-facto "client closed request".
            log.info("request_abandoned", reason="client disconnected")
            return Response(status_code=499)
        audio = wav_bytes(speech.pcm16, speech.sample_rate)
        return Response(
            content=audio,
            media_type="audio/wav",
            headers={
                REPLY_HEADER: quote(speech.text, safe=""),
                "X-Voice": speech.voice,
                "X-Engine": speech.engine,
                "X-Audio-Duration": f"{speech.duration_s:.3f}",
                "Access-Control-Expose-Headers": f"{REPLY_HEADER}, X-Voice, X-Engine, X-Audio-Duration",
                "Cache-Control": "no-store",
            },
        )

    @app.get("/voices")
    async def voices() -> dict[str, Any]:
        engine = pipeline.engine()
        names = await anyio.to_thread.run_sync(engine.voices)
        return {"voices": names, "default": engine.default_voice, "engine": engine.name}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

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


async def _watch_disconnect(request: Request, cancel: threading.Event, tasks: TaskGroup) -> None:
    """Waits for the client to go away; then stops the synthesis (between sentences) and the request."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            log.info("client_disconnected")
            cancel.set()
            tasks.cancel_scope.cancel()
            return


def main() -> None:
    serve_main("tts", "Run the text-to-speech service and the dashboard.", create_app)


def __getattr__(name: str) -> Any:
    # `uvicorn tts.server:app` builds the app on first access, so importing this module is free of side effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)


if __name__ == "__main__":
    main()
