"""The TTS service's app: one TtsService (the protocol-free core), and each protocol mounted over it.

- native HTTP and SSE: tts/http_api.py (POST /tts, /tts/stream, /tts/sse, /voices, /health, /metrics)
- native WebSocket: tts/ws.py (WS /ws/tts)
- conversations: tts/conversations_api.py (GET/DELETE /v1/conversations/{id})
- engines: tts/engines_api.py (GET /v1/engines, PUT /v1/engines/default)
- voices: tts/voices_api.py (GET/POST /v1/voices, DELETE /v1/voices/{id}, PUT /v1/voices/default, ...) and
  the Piper catalog, tts/catalog_api.py (GET /v1/voices/catalog, POST /v1/voices/download, the jobs)
- Wyoming (Home Assistant): tts/wyoming_api.py, a TCP listener on tts.wyoming.port
- documents and jobs: tts/documents_api.py (POST /v1/speech), tts/jobs_api.py (/v1/speech/jobs...)
- OpenAI's audio API: tts/openai_api.py (/v1/audio/speech, /v1/models, ...), with transcriptions
  forwarded to the STT service (tts/forward.py)
- the dashboard: tts/dashboard.py (/api/...) and the static page at /
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from core.config import PROJECT_ROOT, Settings, get_settings
from core.guard import Rule, door, door_errors, ticket_router
from core.http import add_error_shape, service_app
from core.llm import LlmClient
from core.logging import configure_logging
from core.openai_wire import OPENAI_ERRORS
from core.openapi import document_errors
from core.serve import drain_all, lazy_app
from core.serve import main as serve_main
from core.websocket import Connections
from core.wyoming import WyomingListener
from tts import (
    catalog_api,
    conversations_api,
    dashboard,
    documents_api,
    engines_api,
    forward,
    http_api,
    jobs_api,
    openai_api,
    voices_api,
    ws,
    wyoming_api,
)
from tts.engines import create_engine
from tts.engines.host import EngineFactory
from tts.forward import Forwarder
from tts.service import TtsService

FRONTEND_DIR = PROJECT_ROOT / "frontend"


RULES = (
    Rule("/health", "open"),
    Rule("/api/stt/health", "open"),
    Rule("/api/connection", "any"),
    Rule("/api/", "admin"),
    Rule("/metrics", "admin"),
    Rule("/tts", "speak"),
    Rule("/ws/tts", "speak"),
    Rule("/voices", "speak"),
    Rule("/v1/audio/speech", "speak"),
    Rule("/v1/speech", "speak"),  # documents, and jobs (/v1/speech/jobs...)
    Rule("/v1/audio/transcriptions", "transcribe"),
    Rule("/v1/audio/translations", "transcribe"),
    Rule("/v1/audio/voices", "any"),
    Rule("/v1/audio/models", "any"),
    Rule("/v1/models", "any"),
    Rule("/v1/conversations/", "speak"),
    Rule("/v1/engines", "speak", frozenset({"GET", "HEAD"})),  # switching the default (PUT) is admin's
    Rule("/v1/voices/default", "admin"),
    Rule("/v1/voices", "speak", frozenset({"GET", "HEAD"})),
    # A key with the voices scope uploads, clones and deletes its own voices; sharing one (PUT) is admin's.
    Rule("/v1/voices", "voices", frozenset({"POST", "DELETE"})),
    Rule("/v1/auth/", "any"),
    Rule("/docs", "open"),
    Rule("/openapi.json", "open"),
    Rule("/redoc", "open"),
    Rule("/", "open", frozenset({"GET", "HEAD"})),  # the dashboard's files: the page asks for a key itself
)
"""What each route needs when auth.keys are set (core.guard); anything else needs admin."""


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    engine_options: dict[str, dict[str, Any]] | None = None,
    llm: LlmClient | None = None,
) -> FastAPI:
    """The TTS app. `engine_factory`, `engine_options` (per engine name: e.g. a voice downloader for piper)
    and `llm` let tests and embedders supply their own; by default everything comes from settings."""
    settings = settings or get_settings()
    configure_logging(settings.logging, "tts")
    tts = settings.tts
    sockets = Connections(tts.ws_max_connections, "tts.ws_max_connections", "TTS service")
    service = TtsService(
        settings,
        llm=llm,
        engine_factory=engine_factory or create_engine,
        engine_options=engine_options,
        websocket_clients=lambda: sockets.count,
    )

    forwarder = Forwarder(settings)
    wyoming = WyomingListener(tts.wyoming, tts.host, "TTS service", "tts.wyoming.max_connections")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            async with service.running():
                if tts.wyoming.enabled:
                    await wyoming.start(wyoming_api.handler_factory(service))
                try:
                    yield
                finally:
                    await wyoming.stop()
        finally:
            await forwarder.aclose()

    app = service_app(
        title="Voice assistant: text to speech",
        lifespan=lifespan,
        middleware=door(settings.security, service.access, tts.host, RULES),
        description="POST text to /tts and receive the assistant's spoken answer (or the text itself) as WAV.",
    )
    app.state.service = service
    app.state.sockets = sockets
    app.state.wyoming = wyoming
    service.listeners["wyoming"] = wyoming.health
    # Awaited by core.serve on SIGTERM, before uvicorn closes the sockets.
    app.state.drain = drain_all(sockets.drain, wyoming.drain)
    app.include_router(http_api.build_router(settings))
    app.include_router(ws.build_router(service, sockets))
    app.include_router(openai_api.build_router(settings))
    app.include_router(documents_api.build_router(settings))
    app.include_router(jobs_api.build_router(settings))
    app.include_router(conversations_api.router)
    app.include_router(engines_api.build_router(settings))
    app.include_router(catalog_api.router)  # before the voice routes: /v1/voices/catalog is no voice
    app.include_router(voices_api.build_router(settings))
    app.include_router(forward.build_router(forwarder))
    app.include_router(ticket_router(service.access))
    add_error_shape(app, "/v1/", OPENAI_ERRORS)
    app.include_router(dashboard.build_router(settings))
    if FRONTEND_DIR.is_dir():
        dashboard.serve_page(app, FRONTEND_DIR, settings)
    document_errors(app, door_errors(RULES, service.access))
    return app


def main() -> None:
    serve_main("tts", "Run the text-to-speech service and the dashboard.", create_app)


__getattr__ = lazy_app(create_app)  # `uvicorn tts.server:app`


if __name__ == "__main__":
    main()
