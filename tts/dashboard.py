"""The dashboard's small JSON API, served by the TTS service next to the static page.

- `GET /api/config`: the effective configuration (secrets redacted) and where the STT service
  listens, so the page can open `ws://<its own hostname>:<stt.port>/ws/stt` when it was opened
  from another machine.
- `GET /api/stt/health`: the STT service's `/health`, fetched by this service. The STT service
  sends no CORS headers, and the page (served from the TTS origin) may not read a response from
  another port; asking through its own origin also works behind a reverse proxy.

The page itself (frontend/) answers every path no route answers (`serve_page`).

Routes and protocol only: the services never import each other, they talk HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from core import __version__
from core.config import Settings, environment_overrides
from core.errors import SttUnavailable
from core.http import error_response, local_url
from core.openapi import raises
from core.redact import public_url

STT_WS_PATH = "/ws/stt"
STT_HEALTH_TIMEOUT_S = 1.5
_ANY_INTERFACE = {"0.0.0.0", "::", "", "127.0.0.1", "localhost", "::1"}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["dashboard"])
    stt = settings.stt
    stt_base = local_url(stt.host, stt.port)

    @router.get("/config", name="dashboard_config", summary="Effective configuration (secrets redacted) and where the STT service listens")
    async def config() -> dict[str, Any]:
        effective = settings.redacted()
        effective["llm"]["url"] = public_url(effective["llm"]["url"])
        return {
            "version": __version__,
            "environment": settings.environment,
            "config_file": str(settings.config_file) if settings.config_file else None,
            "stt": {
                "host": stt.host,
                "port": stt.port,
                "ws_path": STT_WS_PATH,
                "sample_rate": stt.sample_rate,
                # true: the page should use its own hostname (the service listens on every or the local interface)
                "use_page_host": stt.host in _ANY_INTERFACE,
                "docs_path": "/docs",
            },
            "tts": {"host": settings.tts.host, "port": settings.tts.port, "docs_path": "/docs"},
            "llm": {"url": public_url(settings.llm.url), "model": settings.llm.model},
            "settings": effective,
            # What the environment overrides, by which variable: why a value differs from the file.
            "set_by_environment": environment_overrides(),
        }

    @router.get(
        "/stt/health",
        summary="The STT service's /health, asked by this service (the STT service sends no CORS headers)",
        openapi_extra=raises(SttUnavailable),
    )
    async def stt_health() -> Any:
        url = f"{stt_base}/health"
        try:
            # Plain http to our own STT service: no TLS, so no certificate bundle to load (about
            # 28 ms of event-loop time per client otherwise, on every poll of every open page).
            async with httpx.AsyncClient(timeout=STT_HEALTH_TIMEOUT_S, trust_env=False, verify=False) as client:
                response = await client.get(url)
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            reason = type(exc).__name__ if not str(exc) else str(exc)
            return error_response(
                SttUnavailable(
                    f"The speech-to-text service is not answering at {stt_base} ({reason}). "
                    "Start it (make run starts both services) or check stt.host and stt.port."
                )
            )
        return JSONResponse(data, status_code=response.status_code)

    return router


def serve_page(app: FastAPI, directory: Path) -> None:
    """The dashboard's files answer what no route of `app` does. Mounted at "/", they would match every
    path before the routes' method check: GET /tts would get their 404 instead of the route's 405, and
    PUT /tts their `Allow: GET, HEAD`."""
    files = StaticFiles(directory=directory, html=True)
    not_found = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        await (files if scope["type"] == "http" else not_found)(scope, receive, send)

    app.router.default = fallback
