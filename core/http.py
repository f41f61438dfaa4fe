"""The HTTP edge both services share: the one table from error codes to statuses, the error body,
request ids and access logs, the JSON body reader, and streamed responses that can be cut off.

This is the one module in core that knows HTTP (ASGI): keeping the error contract in one place is
worth more than keeping core free of it, and it still imports neither service.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.routing import Match
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from core import __version__
from core.errors import (
    InternalError,
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServiceError,
    UnsupportedMediaType,
    describe_validation_errors,
)
from core.json_input import parse_client_json
from core.logging import get_logger

log = get_logger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_NOSNIFF = (b"x-content-type-options", b"nosniff")
"""On every response: a browser takes a JSON body, an event stream or audio for what its Content-Type says,
never for a page or a script it guessed."""
ModelT = TypeVar("ModelT", bound=BaseModel)

HTTP_STATUS: dict[str, int] = {
    "internal_error": 500,
    "unauthorized": 401,
    "forbidden": 403,
    "origin_not_allowed": 403,
    "host_not_allowed": 403,
    "rate_limited": 429,
    "not_found": 404,
    "method_not_allowed": 405,
    "model_not_found": 404,
    "invalid_json": 422,
    "invalid_request": 422,
    "bad_message": 422,
    "request_too_large": 413,
    "unsupported_media_type": 415,
    "empty_text": 422,
    "text_too_long": 413,
    "invalid_speed": 422,
    "invalid_ssml": 422,
    "invalid_voice_name": 422,
    "voice_not_found": 404,
    "invalid_voice": 422,
    "voice_conflict": 409,
    "catalog_unavailable": 502,
    "bad_audio": 422,
    "too_many_connections": 503,
    "too_many_pending": 503,
    "overloaded": 503,
    "busy": 409,
    "conversation_not_found": 404,
    "conversation_busy": 409,
    "nothing_to_cancel": 409,
    "shutting_down": 503,
    "job_not_found": 404,
    "job_not_done": 409,
    "jobs_unavailable": 503,
    "engine_busy": 503,
    "engine_loading": 503,
    "engine_unavailable": 503,
    "engine_auth": 502,
    "engine_error": 502,
    "model_unavailable": 503,
    "transcription_failed": 500,
    "stt_unavailable": 503,
    "stt_timeout": 504,
    "llm_error": 502,
    "llm_unavailable": 503,
    "llm_model_not_found": 503,
    "llm_timeout": 504,
}
"""Every code of core.errors and the HTTP status it is answered with (a test checks it covers them all)."""

CLIENT_CLOSED_REQUEST = 499
"""The de-facto status of a request whose client went away; nobody reads it."""

ErrorEncoder = Callable[[ServiceError, dict[str, str]], Response]
"""Turns an error (and headers Starlette wants sent, such as Allow) into a protocol's own response."""


def local_url(host: str, port: int, *, secure: bool = False) -> str:
    """Where this machine reaches a service listening on host:port (a wildcard address on loopback), over
    https when the services serve TLS."""
    reach = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{'https' if secure else 'http'}://{f'[{reach}]' if ':' in reach else reach}:{port}"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code (one of core/errors.py).")
    message: str = Field(description="What is wrong, and what to do about it.")


class ErrorBody(BaseModel):
    """The body of every native error response."""

    error: ErrorDetail


def native_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def error_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The native error response: `{"error": {"code", "message"}}` with the status of HTTP_STATUS."""
    headers = dict(headers or {})
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse(error_body(error.code, error.message), native_status(error.code), headers=headers)


@dataclass(frozen=True)
class ErrorShape:
    """How one protocol's HTTP errors leave: the response, and (for the OpenAPI document, core.openapi)
    the status each code gets and the model of the body."""

    respond: ErrorEncoder
    status: Callable[[str], int]
    body: type[BaseModel]


NATIVE_ERRORS = ErrorShape(error_response, native_status, ErrorBody)


def add_error_shape(app: FastAPI, prefix: str, shape: ErrorShape) -> None:
    """Errors of requests under `prefix` (e.g. "/v1/") leave in another protocol's shape."""
    app.state.error_shapes = [*getattr(app.state, "error_shapes", []), (prefix, shape)]


def error_shape(app: FastAPI, path: str) -> ErrorShape:
    """The shape errors of a request to `path` leave in."""
    for prefix, shape in getattr(app.state, "error_shapes", []):
        if path.startswith(prefix):
            return shape  # type: ignore[no-any-return]
    return NATIVE_ERRORS


def encoder_for(app: Any, path: str) -> ErrorEncoder:
    """The error encoder of the protocol a request to `path` of `app` speaks (`app` may be missing: a
    request refused before it reached the app)."""
    return error_shape(app, path).respond if app is not None else error_response


def _encoder(request: Request) -> ErrorEncoder:
    return error_shape(request.app, request.url.path).respond


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of `app` answers at the request's path: a path may have a route per method,
    and Starlette's own 405 names only the first one's. Asked of each route (routers included in others
    nest), with a scope of its own per method."""
    where = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", "")}
    return [
        method
        for method in _METHODS
        if any(route.matches({**where, "method": method})[0] is Match.FULL for route in app.router.routes)
    ]


def _encoder(request: Request) -> ErrorEncoder:
    return encoder_for(request.app, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as a ServiceError, in the shape of the protocol the request used."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return _encoder(request)(exc, {})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _encoder(request)(InvalidRequest(describe_validation_errors(exc.errors())), {})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request.app, request.scope)):
            headers["Allow"] = ", ".join(allowed)
            error: ServiceError = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use {' or '.join(allowed)}"
            )
        else:
            kinds: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed, 413: RequestTooLarge}
            fallback = InvalidRequest if exc.status_code < 500 else InternalError
            error = kinds.get(exc.status_code, fallback)(str(exc.detail))
        return _encoder(request)(error, headers)

    # Any other exception is answered by RequestContextMiddleware: a handler registered here for Exception
    # would run in Starlette's outermost middleware, which re-raises it to the server after answering.


def service_app(
    *, title: str, description: str, lifespan: Lifespan[FastAPI], middleware: Sequence[Middleware] = ()
) -> FastAPI:
    """A FastAPI app with the conventions every service shares: request ids and access logs, one error
    body for every failure, and streamed responses that a failure can cut off (`abort_response`).
    `middleware` runs inside the request context (outermost first): a refusal there has its request id."""
    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        description=description,
        middleware=[Middleware(RequestContextMiddleware), *middleware],
    )
    logging.getLogger("uvicorn.error").addFilter(_ABORTED_STREAM_FILTER)  # a set: adding it twice is harmless
    install_error_handlers(app)
    return app


# -- request context, and cutting a streamed response off ------------------------------------------


@dataclass
class _ResponseState:
    aborted: bool = False


_response_state: contextvars.ContextVar[_ResponseState | None] = contextvars.ContextVar("response_state", default=None)


def abort_response(code: str, reason: str) -> None:
    """The streamed response of this request failed after it started: it ends without its final chunk,
    so the client sees a broken response instead of a complete-looking short one. Logged once, here, as
    the warning it is (`stream_aborted`); the server's own "returned without completing" line is dropped."""
    state = _response_state.get()
    if state is not None:
        state.aborted = True
    log.warning("stream_aborted", code=code, reason=reason)


class _DropAbortedStreamNotice(logging.Filter):
    """uvicorn logs an error when a response ends without its final chunk; for a response we cut off on
    purpose (abort_response) that has been logged already, as a warning with its cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        state = _response_state.get()
        return not (state is not None and state.aborted and "without completing response" in record.getMessage())


_ABORTED_STREAM_FILTER = _DropAbortedStreamNotice()


class RequestContextMiddleware:
    """Binds a request id into the log context, returns it in X-Request-ID (with X-Content-Type-Options:
    nosniff), logs each request, holds back the final chunk of a response that was aborted
    (abort_response), and answers an exception that nothing else handled: a 500 (internal_error) when
    the response has not started, else a cut-off one. Every 500 closes its connection (`Connection:
    close`): after a failure nobody foresaw, what is left of the request on the connection (an unread
    body) is not to be trusted for the next one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        status = 500
        started_response = False
        # Set in this task and never reset: the server logs its notice of an incomplete response in this
        # same task's context, after the app returned (see _DropAbortedStreamNotice).
        state = _ResponseState()
        _response_state.set(state)

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                extra = [(REQUEST_ID_HEADER.encode(), request_id.encode()), _NOSNIFF]
                if status == 500:
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            elif state.aborted and message["type"] == "http.response.body" and not message.get("more_body", False):
                return
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled_error")
                if started_response:
                    state.aborted = True  # the server closes the connection of a response left incomplete
                else:
                    response = encoder_for(scope["app"], scope["path"])(InternalError(), {})
                    await response(scope, receive, send_with_id)
            finally:
                level = "debug" if scope["path"] in ("/health", "/metrics") else "info"
                getattr(log, level)(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    aborted=state.aborted or None,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sensible one, else a new id."""
    supplied = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
    return supplied if 0 < len(supplied) <= 64 and supplied.isprintable() else uuid.uuid4().hex[:16]


# -- bodies and disconnects ------------------------------------------------------------------------


async def read_json_body(request: Request, limit: int, hint: str, example: str, max_depth: int) -> Any:
    """The request's JSON body, at most `limit` bytes (`hint` names the setting behind the limit) and
    nested at most `max_depth` deep (core.json_input), or the error that says what is wrong; `example`
    shows a valid body."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit (see {hint})")
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        # Not only pedantry: a cross-site form or text/plain POST is one a browser sends without asking.
        raise UnsupportedMediaType(
            f"send the body as JSON with 'Content-Type: application/json' (got {media_type or 'no Content-Type'})"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the {limit}-byte limit (see {hint})")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidJson(f"the request body is empty; send JSON such as {example}")
    return parse_client_json(raw, max_depth, "the request body", f"; send e.g. {example}")


def validated(model: type[ModelT], body: Any) -> ModelT:
    """`body` validated by the pydantic `model`, or InvalidRequest naming each bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0].get("loc", ()) if errors else ()
        param = str(first[0]) if first else None
        raise InvalidRequest(describe_validation_errors(errors, model.model_fields), param=param) from None


@asynccontextmanager
async def on_disconnect(request: Request, callback: Callable[[], None]) -> AsyncIterator[None]:
    """Calls `callback` if the client goes away while the block runs (its body must have been read)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        log.info("client_disconnected")
        callback()

    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        try:
            yield
        except Exception as exc:  # re-raised outside the task group, which would wrap it in a group
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
