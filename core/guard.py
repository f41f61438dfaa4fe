"""The door of both services' HTTP and WebSocket apps, before any route: the Host header (DNS rebinding),
the Origin of browser requests that change something and of every WebSocket handshake (cross-site request
forgery, WebSocket hijacking), the API key and its scope, and the key's rate limits.

A refusal leaves in the error shape of the route asked for (OpenAI's under /v1/); a refused WebSocket
handshake gets the same status and body as an HTTP answer where the server supports it (uvicorn does).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.access import Access, Principal, current_principal
from core.config_security import Scope as KeyScope
from core.config_security import SecuritySettings, is_loopback
from core.errors import Forbidden, HostNotAllowed, OriginNotAllowed, RateLimited, ServiceError, Unauthorized
from core.http import encoder_for
from core.logging import get_logger

log = get_logger(__name__)

Need = KeyScope | Literal["open", "any"]
"""What a route needs: a scope, any valid key ("any"), or nothing ("open": /health, the dashboard page)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SUBPROTOCOL_KEY = "bearer."
SUBPROTOCOL_TICKET = "ticket."


@dataclass(frozen=True)
class Rule:
    prefix: str
    need: Need
    methods: frozenset[str] | None = None
    """Only for these methods (None: all); a request no rule matches needs admin."""

    def matches(self, path: str) -> bool:
        """By whole path segments: "/tts" names /tts and /tts/stream, not the page's /tts-socket.js."""
        if self.prefix.endswith("/"):
            return path.startswith(self.prefix)
        return path == self.prefix or path.startswith(self.prefix + "/")


def url_hostname(url: str) -> str:
    """The host name of a URL (`//host:port` for a bare Host header), lower case; "" for one that does
    not parse (a client's malformed IPv6 literal is a refusal, not a crash)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def need_of(rules: Sequence[Rule], path: str, method: str) -> Need:
    """What the first rule naming (path, method) asks; admin when none does."""
    for rule in rules:
        if rule.matches(path) and (rule.methods is None or method in rule.methods):
            return rule.need
    return "admin"


class Guard:
    """ASGI middleware; `rules` are matched in order, by path prefix (and method)."""

    def __init__(self, app: ASGIApp, *, access: Access, security: SecuritySettings, bound_host: str, rules: Sequence[Rule]) -> None:
        self.app = app
        self.access = access
        self.rules = tuple(rules)
        self._origins = frozenset(security.allowed_origins) | frozenset(security.cors_origins)
        hosts = {host.lower() for host in security.allowed_hosts}
        self._any_host = "*" in hosts or (not is_loopback(bound_host) and not hosts)
        machine = socket.gethostname().lower()
        self._hosts = hosts | {machine, machine.split(".")[0], bound_host.strip("[]").lower()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers") or []}
        try:
            self._check_host(headers.get("host"))
            self._check_origin(scope, headers)
            principal = self._admit(scope, headers)
        except ServiceError as error:
            await self._refuse(scope, receive, send, error, headers)
            return
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, self._choosing_subprotocol(scope, headers, send))
        finally:
            current_principal.reset(token)

    # -- the checks ------------------------------------------------------------------------------

    def _check_host(self, host: str | None) -> None:
        if self._any_host or host is None:
            return  # HTTP/1.0 clients send none; a browser always does
        name = url_hostname(f"//{host}")
        if not (is_loopback(name) or name in self._hosts):
            raise HostNotAllowed(
                f"this service does not answer to Host {name!r}; add it to security.allowed_hosts to serve it"
            )

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.lower()
        if origin in self._origins:
            return True
        name = url_hostname(origin) if origin != "null" else ""
        # The other service of this machine is a port away: the dashboard on :8000 opens /ws/stt on :8010.
        return bool(name) and (is_loopback(name) or (host is not None and name == url_hostname(f"//{host}")))

    def _check_origin(self, scope: Scope, headers: dict[str, str]) -> None:
        origin = headers.get("origin")
        if origin is None or (scope["type"] == "http" and scope["method"] in SAFE_METHODS):
            return  # no Origin: not a browser; a safe method changes nothing
        if not self._origin_allowed(origin, headers.get("host")):
            raise OriginNotAllowed(
                f"requests from pages of {origin} are refused; add the origin to security.allowed_origins to allow it"
            )

    def _admit(self, scope: Scope, headers: dict[str, str]) -> Principal | None:
        need = need_of(self.rules, scope["path"], scope.get("method", "GET"))
        if need == "open" or not self.access.keys.enabled or scope.get("method") == "OPTIONS":
            return None
        principal = self._principal(scope, headers)
        if principal is None:
            raise Unauthorized(
                "an API key is needed: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
                "(a browser WebSocket: a ticket from POST /v1/auth/ticket as ?ticket=, or the "
                f"subprotocol '{SUBPROTOCOL_KEY}KEY')"
            )
        if need != "any" and not principal.allows(need):
            raise Forbidden(f"API key {principal.name!r} lacks the scope '{need}' this needs; ask for a key with it")
        self.access.quotas.admit(principal)
        return principal

    def _principal(self, scope: Scope, headers: dict[str, str]) -> Principal | None:
        keys = self.access.keys
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return keys.authenticate(credential.strip())
        if "x-api-key" in headers:
            return keys.authenticate(headers["x-api-key"].strip())
        if scope["type"] != "websocket":
            return None
        for offered in _subprotocols(headers):
            if offered.startswith(SUBPROTOCOL_KEY):
                return keys.authenticate(offered.removeprefix(SUBPROTOCOL_KEY))
            if offered.startswith(SUBPROTOCOL_TICKET):
                return keys.redeem(offered.removeprefix(SUBPROTOCOL_TICKET))
        tickets = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ticket")
        return keys.redeem(tickets[0]) if tickets else None

    # -- answers ---------------------------------------------------------------------------------

    def _choosing_subprotocol(self, scope: Scope, headers: dict[str, str], send: Send) -> Send:
        """A browser fails a handshake whose answer names none of the subprotocols it offered: accept one
        that carries no credential (the client offers e.g. "voice-assistant" beside "bearer.KEY")."""
        if scope["type"] != "websocket":
            return send
        plain = [name for name in _subprotocols(headers) if not name.startswith((SUBPROTOCOL_KEY, SUBPROTOCOL_TICKET))]
        if not plain:
            return send

        async def choosing(message: Message) -> None:
            if message["type"] == "websocket.accept" and not message.get("subprotocol"):
                message = {**message, "subprotocol": plain[0]}
            await send(message)

        return choosing

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: ServiceError, headers: dict[str, str]) -> None:
        log.warning(
            "access_refused",
            code=error.code,
            path=scope["path"],
            origin=headers.get("origin"),
            host=headers.get("host"),
            client=(scope.get("client") or ("", 0))[0],
        )
        extra = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else {}
        response = encoder_for(scope.get("app"), scope["path"])(error, extra)
        if scope["type"] == "http":
            await response(scope, receive, send)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers})
            await send({"type": "websocket.http.response.body", "body": response.body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": error.code})


def door_errors(rules: Sequence[Rule], access: Access) -> Callable[[str, str], list[str]]:
    """What the Guard may answer a (path, method) with, for the OpenAPI document (core.openapi)."""
    def errors(path: str, method: str) -> list[str]:
        codes = [HostNotAllowed.code]
        if method not in SAFE_METHODS:
            codes.append(OriginNotAllowed.code)
        if access.keys.enabled and need_of(rules, path, method) != "open":
            codes += [Unauthorized.code, Forbidden.code, RateLimited.code]
        return codes

    return errors


def door(security: SecuritySettings, access: Access, bound_host: str, rules: Sequence[Rule]) -> list[Middleware]:
    """The middleware of a service's door, outermost first: CORS when security.cors_origins names origins
    (it answers preflights before any key is asked for), then the Guard."""
    cors = [
        Middleware(
            CORSMiddleware,  # type: ignore[arg-type]
            allow_origins=list(security.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["*"],
        )
    ]
    guard = Middleware(Guard, access=access, security=security, bound_host=bound_host, rules=rules)  # type: ignore[arg-type]
    return [*(cors if security.cors_origins else []), guard]


class Ticket(BaseModel):
    auth: bool
    """Whether this service asks for keys at all (false: connect without a ticket)."""
    ticket: str | None
    """Single use: `?ticket=` on a WebSocket URL, or the subprotocol `ticket.TICKET`."""
    expires_in: float | None
    """Seconds it stays valid."""


def ticket_router(access: Access) -> APIRouter:
    router = APIRouter(prefix="/v1/auth", tags=["auth"])

    @router.post("/ticket", response_model=Ticket, summary="A short-lived ticket that opens one WebSocket (for browsers)")
    async def ticket() -> Ticket:
        principal = current_principal.get()
        if principal is None:
            return Ticket(auth=False, ticket=None, expires_in=None)
        return Ticket(auth=True, ticket=access.keys.issue_ticket(principal), expires_in=access.keys.ticket_ttl_s)

    return router


def _subprotocols(headers: dict[str, str]) -> list[str]:
    return [name.strip() for name in headers.get("sec-websocket-protocol", "").split(",") if name.strip()]
