"""The WebSocket conventions both services share, so /ws/stt and /ws/tts behave alike.

- Every message is a JSON object with a `type`; its fields sit beside `type` (no `data` wrapper).
- A refused message gets `{"type": "error", "code", "message"}` with the codes of core.errors
  (`invalid_json`, `bad_message`, `invalid_request`, `request_too_large`, ...); the socket stays open.
- Close codes: 1001 when the service shuts down (after the session's pending results were sent),
  1011 when the session cannot go on (with an `error` message first), 1013 when the service is full.
- Each connection gets a `session_id`, bound into every log line of the session.
- On shutdown (`Connections.drain`) every session stops reading new input, finishes what it was
  given, and closes with 1001; what is still running after the grace period is abandoned.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from core.errors import (
    BadMessage,
    InternalError,
    InvalidRequest,
    RequestTooLarge,
    ServiceError,
    TooManyConnections,
    describe_validation_errors,
)
from core.json_input import parse_client_json
from core.logging import get_logger

log = get_logger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
SHUTDOWN_REASON = "server shutting down"
DRAIN_READ_IDLE_S = 0.05
"""While draining, a session keeps reading messages the client had already sent: until the client
has been quiet this long..."""
DRAIN_READ_MAX_S = 0.5
"""...or for at most this long, so a microphone that never pauses cannot hold the shutdown up."""
_CLOSE_REASON_BYTES = 120
"""RFC 6455 allows 123 bytes of close reason; the full text goes in the error message before it."""


def error_message(error: ServiceError, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message, **extra}
    if error.retry_after_s is not None:
        message["retry_after_s"] = error.retry_after_s
    return message


def parse_message(
    text: str, limit: int, setting: str, models: Mapping[str, type[BaseModel]], *, max_depth: int
) -> BaseModel:
    """A client's text message as the model of its `type`, or the error that says what is wrong.
    `setting` names the config key behind `limit` (bytes); `max_depth` bounds its nesting (core.json_input)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise RequestTooLarge(f"message of {size} bytes is over the {limit}-byte limit ({setting})")
    data = parse_client_json(text, max_depth, "the message")
    if not isinstance(data, dict) or "type" not in data:
        raise BadMessage('a message must be a JSON object with a "type", such as {"type": "ping"}')
    kind = data["type"]
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadMessage(f"unknown message type {kind!r}; known types: {', '.join(models)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = [name for name in model.model_fields if name != "type"]
        raise InvalidRequest(f"invalid {kind!r} message: {describe_validation_errors(exc.errors(), fields)}") from None


class ClientGone(Exception):
    """The client has gone; nothing more can be sent."""


class Channel:
    """One socket's sending side: one frame at a time on the wire, and a vanished client noticed once."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._lock = anyio.Lock()
        self.gone = False

    async def send(self, message: dict[str, Any], audio: bytes | None = None) -> None:
        """Send a message and, when given, the binary frame that belongs to it, as one unit that a cancel
        cannot split. Raises ClientGone once the client has gone."""
        with anyio.CancelScope(shield=audio is not None):
            async with self._lock:
                if self.gone or self.websocket.client_state != WebSocketState.CONNECTED:
                    self.gone = True
                    raise ClientGone()
                try:
                    await self.websocket.send_text(json.dumps(message, ensure_ascii=False))
                    if audio is not None:
                        await self.websocket.send_bytes(audio)
                except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                    self.gone = True
                    raise ClientGone() from exc

    async def error(self, error: ServiceError, **extra: Any) -> None:
        log.info("message_refused", code=error.code, reason=error.message)
        await self.send(error_message(error, **extra))

    async def close(self, code: int, reason: str, error: ServiceError | None = None) -> None:
        """Close politely (with an `error` message first when given); a client already gone is fine."""
        if self.gone or self.websocket.client_state != WebSocketState.CONNECTED:
            return
        try:
            if error is not None:
                await self.send(error_message(error))
            async with self._lock:
                await self.websocket.close(code, reason.encode()[:_CLOSE_REASON_BYTES].decode(errors="ignore"))
        except (ClientGone, WebSocketDisconnect, RuntimeError, OSError):
            self.gone = True


class Intake:
    """Reads one client's messages; on shutdown stops waiting for new ones without losing any."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._waiting: anyio.CancelScope | None = None
        self._read_until = 0.0
        self.draining = False
        self.finishing: anyio.CancelScope | None = None
        """Around the session's last work on shutdown; cancelled when the drain runs out of time."""
        self.closed = anyio.Event()

    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self._read_until = anyio.current_time() + DRAIN_READ_MAX_S
        if self._waiting is not None:
            # Only the wait for the next message is cancelled, never the handling of one; a message
            # that already arrived stays queued in the server and is read below.
            self._waiting.cancel()

    def abandon(self) -> None:
        if self.finishing is not None:
            self.finishing.cancel()

    async def receive(self) -> dict[str, Any] | None:
        """The next ASGI message, or None once draining and the client has gone quiet."""
        while not self.draining:
            with anyio.CancelScope() as self._waiting:
                return await self._websocket.receive()
            self._waiting = None
        wait = min(DRAIN_READ_IDLE_S, self._read_until - anyio.current_time())
        if wait <= 0:
            return None
        with anyio.move_on_after(wait):
            return await self._websocket.receive()
        return None

    @asynccontextmanager
    async def finish(self) -> AsyncIterator[anyio.CancelScope]:
        """The scope of a session's last work on shutdown: `scope.cancelled_caught` tells if it ran out of time."""
        with anyio.CancelScope() as self.finishing:
            yield self.finishing


Handler = Callable[[WebSocket, Channel, Intake, str], Awaitable[None]]
"""Serves one accepted connection: `handler(websocket, channel, intake, session_id)`."""


class Connections:
    """The open sockets of one endpoint: the connection limit, session ids, and the drain on shutdown."""

    def __init__(self, limit: int, setting: str, what: str) -> None:
        self.limit = limit
        self.setting = setting
        self.what = what
        self.count = 0
        self.draining = False
        self.on_refused: Callable[[], None] = lambda: None
        """Called for each connection refused because the limit was reached (a metric)."""
        self.admit: Callable[[], ServiceError | None] = lambda: None
        """The service's say on a new connection: an error (1013 with it) when it is overloaded, else None."""
        self._intakes: set[Intake] = set()

    async def serve(self, websocket: WebSocket, handler: Handler) -> None:
        """Refuse (draining: 1001; full: 1013 with `too_many_connections`; overloaded: 1013 with the error
        `admit` gave) or accept and run `handler`."""
        if self.draining:
            await websocket.accept()
            await websocket.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
            log.info("connection_refused", reason="shutting down")
            return
        if self.count >= self.limit:
            self.on_refused()
            await websocket.accept()
            error = TooManyConnections(
                f"the {self.what} serves at most {self.limit} clients ({self.setting}); try again later"
            )
            await Channel(websocket).close(CLOSE_TRY_AGAIN_LATER, "too many connections", error)
            log.warning("connection_refused", reason="max_connections", limit=self.limit)
            return
        overloaded = self.admit()
        if overloaded is not None:
            self.on_refused()
            await websocket.accept()
            await Channel(websocket).close(CLOSE_TRY_AGAIN_LATER, overloaded.code, overloaded)
            log.warning("connection_refused", reason=overloaded.code, detail=overloaded.message)
            return
        self.count += 1
        session_id = uuid.uuid4().hex[:12]
        intake = Intake(websocket)
        self._intakes.add(intake)
        try:
            with structlog.contextvars.bound_contextvars(session_id=session_id):
                await websocket.accept()
                client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"
                log.info("session_opened", client=client)
                if self.draining:
                    intake.drain()
                channel = Channel(websocket)
                try:
                    await handler(websocket, channel, intake, session_id)
                except Exception:
                    # A bug must not drop the socket without a close frame: the client hears why.
                    log.exception("session_failed")
                    error = InternalError()
                    await channel.close(CLOSE_INTERNAL_ERROR, error.message, error)
                log.info("session_closed", drained=intake.draining)
        finally:
            self.count -= 1
            self._intakes.discard(intake)
            intake.closed.set()

    async def drain(self, timeout: float) -> None:
        """Shutdown: every open session stops reading new input, finishes what it was given and closes
        with 1001. Returns when all are closed, or after `timeout` seconds (the rest are abandoned, and
        uvicorn closes them with 1012)."""
        self.draining = True
        intakes = list(self._intakes)
        if not intakes:
            return
        log.info("draining_sessions", sessions=len(intakes), timeout_s=round(timeout, 3))
        for intake in intakes:
            intake.drain()
        with anyio.move_on_after(timeout):
            for intake in intakes:
                await intake.closed.wait()
        still_open = [intake for intake in intakes if not intake.closed.is_set()]
        if still_open:
            log.warning("drain_incomplete", open_sessions=len(still_open), timeout_s=round(timeout, 3))
            for intake in still_open:
                intake.abandon()
