"""The STT service's app: one SttService (the protocol-free core), and each protocol mounted over it.

- native WebSocket: stt/ws.py (WS /ws/stt)
- Wyoming (Home Assistant): stt/wyoming_api.py, a TCP listener on stt.wyoming.port
- OpenAI's transcription API: stt/openai_api.py (/v1/audio/transcriptions, /translations, /v1/models)
- GET /health and GET /metrics (below)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

from core.config import Settings, get_settings
from core.guard import Rule, door, door_errors, ticket_router
from core.http import add_error_shape, service_app
from core.logging import configure_logging
from core.openai_wire import OPENAI_ERRORS
from core.openapi import document_errors
from core.serve import drain_all, lazy_app
from core.serve import main as serve_main
from core.websocket import Connections
from core.wyoming import WyomingListener
from stt import openai_api, ws, wyoming_api
from stt.service import SttService

RULES = (
    Rule("/health", "open"),
    Rule("/metrics", "admin"),
    Rule("/ws/stt", "transcribe"),
    Rule("/v1/audio/transcriptions", "transcribe"),
    Rule("/v1/audio/translations", "transcribe"),
    Rule("/v1/models", "any"),
    Rule("/v1/auth/", "any"),
    Rule("/docs", "open"),
    Rule("/openapi.json", "open"),
    Rule("/redoc", "open"),
)
"""What each route needs when auth.keys are set (core.guard); anything else needs admin."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.logging, "stt")
    stt = settings.stt
    sockets = Connections(stt.max_connections, "stt.max_connections", "STT service")
    service = SttService(settings, connections=lambda: sockets.count)
    sockets.on_refused = service.metrics.connections_refused.inc
    sockets.admit = service.admission_error

    wyoming = WyomingListener(stt.wyoming, stt.host, "STT service", "stt.wyoming.max_connections")
    service.listeners["wyoming"] = wyoming.health

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            if stt.wyoming.enabled:
                await wyoming.start(wyoming_api.handler_factory(service))
            try:
                yield
            finally:
                await wyoming.stop()

    app = service_app(
        title="Voice assistant: speech to text",
        lifespan=lifespan,
        middleware=door(settings.security, service.access, stt.host, RULES),
        description="Stream PCM16 audio to /ws/stt and receive transcripts.",
    )
    app.state.service = service
    app.state.sockets = sockets
    app.state.wyoming = wyoming
    # Awaited by core.serve on SIGTERM, before uvicorn closes the sockets.
    app.state.drain = drain_all(sockets.drain, wyoming.drain)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(ws.build_router(service, sockets))
    app.include_router(openai_api.router)
    app.include_router(ticket_router(service.access))
    add_error_shape(app, "/v1/", OPENAI_ERRORS)
    document_errors(app, door_errors(RULES, service.access))
    return app


def main() -> None:
    serve_main("stt", "Run the speech-to-text service.", create_app)


__getattr__ = lazy_app(create_app)  # `uvicorn stt.server:app`


if __name__ == "__main__":
    main()
