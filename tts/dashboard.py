"""The dashboard: its small JSON API, served by the TTS service next to the static page, and the page's
own response headers.

- `GET /api/config`: the effective configuration (secrets redacted), where the STT service
  listens, so the page can open `ws://<its own hostname>:<stt.port>/ws/stt` when it was opened
  from another machine, and the allowed origins, whose hosts the page may stream the microphone
  to when a `?stt=` link names one.
- `GET /api/connection`: only where the STT service listens and the allowed origins (any key may read
  it; /api/config needs admin).
- `GET /api/stt/health`: the STT service's `/health`, fetched by this service. The STT service
  sends no CORS headers, and the page (served from the TTS origin) may not read a response from
  another port; asking through its own origin also works behind a reverse proxy.
- `DashboardFiles`: the page and its assets, with a Content-Security-Policy (no inline code, sockets
  only to the hosts the page accepts), never framed, no referrer.

The page itself (frontend/) answers every path no route answers (`serve_page`).

Routes and protocol only: the services never import each other, they talk HTTP.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from core import __version__
from core.config import Settings, environment_overrides
from core.errors import SttUnavailable
from core.guard import url_hostname
from core.http import error_response, local_url
from core.openapi import raises
from core.redact import public_url
from core.tls import client_verify

STT_WS_PATH = "/ws/stt"
STT_HEALTH_TIMEOUT_S = 1.5
_ANY_INTERFACE = {"0.0.0.0", "::", "", "127.0.0.1", "localhost", "::1"}
_CSP_HOST = re.compile(r"[a-z0-9.-]+")
"""A host a CSP source can name (a name or an IPv4 address; the grammar has no IPv6 literal)."""


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["dashboard"])
    stt = settings.stt
    stt_base = local_url(stt.host, stt.port, secure=settings.tls.enabled)
    # Built once: no certificate bundle is loaded per poll of every open page (about 28 ms of event-loop
    # time per client otherwise); with TLS it trusts only the configured certificate.
    verify = client_verify(settings)

    def connection() -> dict[str, Any]:
        return {
            "version": __version__,
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
            # Besides the page's own host, the hosts a ?stt= link may send the microphone to.
            "allowed_origins": settings.security.allowed_origins,
        }

    @router.get("/connection", summary="Where the STT service listens: what the page needs with a key that may not read /api/config")
    async def connection_only() -> dict[str, Any]:
        return {**connection(), "llm": {"provider": settings.llm.provider}}

    @router.get("/config", name="dashboard_config", summary="Effective configuration (secrets redacted) and where the STT service listens")
    async def config() -> dict[str, Any]:
        effective = settings.redacted()
        effective["llm"]["url"] = public_url(effective["llm"]["url"])
        return {
            **connection(),
            "environment": settings.environment,
            "config_file": str(settings.config_file) if settings.config_file else None,
            "llm": {"provider": settings.llm.provider, "url": public_url(settings.llm.url), "model": settings.llm.model},
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
            async with httpx.AsyncClient(timeout=STT_HEALTH_TIMEOUT_S, trust_env=False, verify=verify) as client:
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


class DashboardFiles(StaticFiles):
    """The page and its assets (frontend/), each with the dashboard's security headers. X-Content-Type-Options
    comes with every response of the service (core.http)."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        super().__init__(directory=directory, html=True)
        self.allowed_origins = settings.security.allowed_origins

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        policy = content_security_policy(Headers(scope=scope).get("host", ""), self.allowed_origins)
        response.headers.update(
            {"Content-Security-Policy": policy, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
        )
        return response


def content_security_policy(host: str, allowed_origins: list[str]) -> str:
    """The page's own scripts (the AudioWorklet module included), styles and images, no inline code, never
    framed; WebSockets to the host it was opened on, at any port (/ws/tts here, /ws/stt on stt.port, or
    wherever a ?stt= link points), and to the hosts of security.allowed_origins: the addresses settings.js
    accepts for the microphone."""
    sockets: list[str] = []
    for name in [url_hostname(f"//{host}"), *(url_hostname(origin) for origin in allowed_origins)]:
        if _CSP_HOST.fullmatch(name):
            sockets += [f"ws://{name}:*", f"wss://{name}:*"]
        else:
            # An IPv6 literal (or no Host header) cannot be written as a source: any socket then; the page
            # still opens only the addresses it accepts.
            sockets += ["ws:", "wss:"]
    connect = " ".join(dict.fromkeys(["'self'", *sockets]))
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",  # the favicon is a data: URL
            "media-src 'self' blob:",  # the Speak panel plays its WAV from a blob: URL
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def serve_page(app: FastAPI, directory: Path, settings: Settings) -> None:
    """The dashboard's files answer what no route of `app` does. Mounted at "/", they would match every
    path before the routes' method check: GET /tts would get their 404 instead of the route's 405, and
    PUT /tts their `Allow: GET, HEAD`."""
    files = DashboardFiles(directory, settings)
    not_found = app.router.default

    async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
        await (files if scope["type"] == "http" else not_found)(scope, receive, send)

    app.router.default = fallback
