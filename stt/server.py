"""The STT service: GET /health and the /ws/stt streaming WebSocket. Routes and protocol only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import structlog
from fastapi import FastAPI, Response, WebSocket
from faster_whisper.vad import get_vad_model
from starlette.websockets import WebSocketDisconnect, WebSocketState

from core import __version__
from core.config import PROJECT_ROOT, Settings, SttSettings, get_settings
from core.http import service_app
from core.logging import configure_logging, get_logger
from core.metrics import render
from core.serve import lazy_app
from core.serve import main as serve_main
from stt import protocol
from stt.engine import ModelLoadError, WhisperEngine
from stt.metrics import SttMetrics
from stt.protocol import ConfigMessage, EndMessage, ProtocolError, ResetMessage
from stt.session import ModelHolder, Send, SttSession

log = get_logger("stt.server")  # a fixed name: __name__ is "__main__" under `python -m`

CLOSE_GOING_AWAY = 1001
"""Close code of every session when the service shuts down, after its results were sent."""
SHUTDOWN_REASON = "server shutting down"
DRAIN_READ_IDLE_S = 0.05
"""While draining, a session keeps reading messages the client had already sent: until the client
has been quiet this long..."""
DRAIN_READ_MAX_S = 0.5
"""...or for at most this long, so a microphone that never pauses cannot hold the shutdown up."""


class _Intake:
    """Reads one client's messages; on shutdown stops waiting for new ones without losing any."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._waiting: anyio.CancelScope | None = None
        self._read_until = 0.0
        self.draining = False
        self.finishing: anyio.CancelScope | None = None
        """Around the session's drain; cancelled when the service's drain runs out of time."""
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
        """The next message, or None once draining and the client has gone quiet."""
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


class SttService:
    """Process-wide state: the one model, the worker pools, the connection count."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = ModelHolder()
        self.transcribe_limiter = anyio.CapacityLimiter(settings.stt.max_concurrent)
        self.vad_limiter = anyio.CapacityLimiter(settings.stt.vad_workers)
        self.metrics = SttMetrics()
        self.connections = 0
        self.draining = False
        self._intakes: set[_Intake] = set()

    async def load_model(self) -> None:
        stt = self.settings.stt
        try:
            engine = await anyio.to_thread.run_sync(
                WhisperEngine.load,
                stt,
                self.settings.resolve_path(stt.models_dir),
                PROJECT_ROOT,
                abandon_on_cancel=True,
            )
        except ModelLoadError as exc:
            log.error("model_load_failed", model=stt.model, reason=str(exc))
            self.model.failed(str(exc))
            return
        except Exception as exc:
            log.exception("model_load_failed", model=stt.model)
            self.model.failed(f"could not load Whisper model {stt.model!r}: {exc}")
            return
        self.model.loaded(engine)
        self.metrics.model_loaded.set(1)

    async def drain(self, timeout: float) -> None:
        """Shutdown: every open session stops reading new audio, transcribes what it already has,
        sends every pending result and closes with 1001. Returns when all are closed, or after
        `timeout` seconds (uvicorn then closes the rest with 1012)."""
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
            # These sessions stop now, without their last results; uvicorn closes them with 1012.
            log.warning("drain_incomplete", open_sessions=len(still_open), timeout_s=round(timeout, 3))
            for intake in still_open:
                intake.abandon()

    def health(self) -> dict[str, Any]:
        stt = self.settings.stt
        engine = self.model.engine
        return {
            "status": "ok" if engine else "degraded",
            "whisper_loaded": engine is not None,
            "loading": self.model.loading,
            "error": self.model.error,
            "environment": self.settings.environment,
            "model": stt.model,
            "device": engine.loaded.device if engine else stt.device,
            "compute_type": engine.loaded.compute_type if engine else stt.compute_type,
            "connections": self.connections,
            "max_connections": stt.max_connections,
            "version": __version__,
        }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.logging, "stt")
    service = SttService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Silero VAD ships inside faster-whisper and loads in a blink; loading it before serving keeps
        # the first session's ONNX load off the event loop.
        await anyio.to_thread.run_sync(get_vad_model)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.load_model)
            yield
            tasks.cancel_scope.cancel()

    app = service_app(
        title="Voice assistant: speech to text",
        lifespan=lifespan,
        description="Stream PCM16 audio to /ws/stt and receive transcripts.",
    )
    app.state.service = service
    app.state.drain = service.drain  # awaited by core.serve on SIGTERM, before uvicorn closes sockets

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = render(service.metrics.registry)
        return Response(body, media_type=content_type)

    @app.websocket("/ws/stt")
    async def stt_socket(websocket: WebSocket) -> None:
        limit = settings.stt.max_connections
        if service.draining:
            await websocket.accept()
            await websocket.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
            log.info("connection_refused", reason="shutting down")
            return
        if service.connections >= limit:
            await websocket.accept()
            await websocket.send_json(
                protocol.error(
                    "too_many_connections",
                    f"the server already serves {limit} clients (stt.max_connections); try again later",
                )
            )
            await websocket.close(protocol.CLOSE_TRY_AGAIN_LATER, "too many connections")
            log.warning("connection_refused", reason="max_connections", limit=limit)
            service.metrics.connections_refused.inc()
            return
        service.connections += 1
        service.metrics.connections.inc()
        session_id = uuid.uuid4().hex[:12]
        try:
            with structlog.contextvars.bound_contextvars(session_id=session_id):
                await websocket.accept()
                log.info("session_opened", client=_client(websocket))
                await _serve(websocket, service, session_id)
        finally:
            service.connections -= 1
            service.metrics.connections.dec()

    return app


def _client(websocket: WebSocket) -> str:
    return f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"


async def _serve(websocket: WebSocket, service: SttService, session_id: str) -> None:
    settings = service.settings.stt
    send_lock = anyio.Lock()
    gone = False

    async def send(message: dict[str, Any], still_valid: Callable[[], bool] | None = None) -> None:
        nonlocal gone
        # The worker, partial tasks and the receive loop all send; one frame at a time on the wire.
        async with send_lock:
            if gone or (still_valid is not None and not still_valid()):
                return
            try:
                await websocket.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                # The client vanished between two receives; the receive loop ends the session.
                gone = True

    if service.model.error:
        await _close_with_error(websocket, "model_unavailable", service.model.error)
        return

    session = SttSession(
        settings, service.model, service.transcribe_limiter, service.vad_limiter, send, service.metrics
    )
    # Only the model's name: a client has no business knowing the server's directories.
    await send(protocol.ready(session_id, settings.sample_rate, session.language, Path(settings.model).name))
    intake = _Intake(websocket)
    service._intakes.add(intake)
    drained = failed = False
    try:
        try:
            async with anyio.create_task_group() as tasks:
                def stop_for_fatal() -> None:
                    session.abandon()
                    tasks.cancel_scope.cancel()

                session.on_fatal = stop_for_fatal
                session.tasks = tasks
                tasks.start_soon(session.run_worker)
                if service.draining:
                    intake.drain()
                if await _receive_loop(intake, session, settings, send):
                    # Shutdown: what the client already sent is transcribed and delivered first.
                    with anyio.CancelScope() as intake.finishing:
                        await session.drain()
                    if intake.finishing.cancelled_caught:
                        session.abandon()  # out of time: stop the transcription under way
                    else:
                        drained = not gone
                else:
                    session.abandon()  # the client left: the transcription under way stops early
                tasks.cancel_scope.cancel()
        except Exception:
            # A bug must not drop the socket silently: the client hears why before the close.
            log.exception("session_failed")
            failed = True
        finally:
            service._intakes.discard(intake)
            session.close()
            log.info("session_closed", utterances=session.utterances, drained=drained)
        if failed:
            await _close_with_error(websocket, "internal_error", "internal server error; see the service log")
        elif session.fatal:
            await _close_with_error(websocket, "model_unavailable", session.fatal)
        elif drained:
            await _close_going_away(websocket)
    finally:
        intake.closed.set()  # what SttService.drain waits for


async def _close_going_away(websocket: WebSocket) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left while its last results were sent


async def _receive_loop(intake: _Intake, session: SttSession, settings: SttSettings, send: Send) -> bool:
    """Handles client messages until the client leaves (False) or the service drains (True)."""
    while True:
        message = await intake.receive()
        if message is None:
            return True
        if message["type"] == "websocket.disconnect":
            return False
        data, text = message.get("bytes"), message.get("text")
        try:
            if data is not None:
                protocol.check_audio_frame(data, settings.max_frame_bytes)
                await session.feed_audio(data)
            elif text is not None:
                command = protocol.parse_client_message(text, settings.max_message_bytes)
                if isinstance(command, EndMessage):
                    await session.end()
                elif isinstance(command, ResetMessage):
                    await session.reset()
                elif isinstance(command, ConfigMessage):
                    await session.configure(command)
        except ProtocolError as exc:
            log.info("message_refused", code=exc.code, reason=exc.message)
            await send(protocol.error(exc.code, exc.message))


async def _close_with_error(websocket: WebSocket, code: str, message: str) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.send_json(protocol.error(code, message))
        # A close reason is limited to 123 bytes by RFC 6455; the full text went in the message above.
        await websocket.close(protocol.CLOSE_INTERNAL_ERROR, message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client is already gone


def main() -> None:
    serve_main("stt", "Run the speech-to-text service.", create_app)


__getattr__ = lazy_app(create_app)  # `uvicorn stt.server:app`


if __name__ == "__main__":
    main()
