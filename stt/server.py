"""The STT service: GET /health and the /ws/stt streaming WebSocket. Routes and protocol only."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
import uvicorn
from fastapi import FastAPI, WebSocket
from faster_whisper.vad import get_vad_model
from starlette.websockets import WebSocketDisconnect, WebSocketState

from core import __version__
from core.config import PROJECT_ROOT, Settings, SttSettings, get_settings, load_settings
from core.http import RequestContextMiddleware, install_error_handlers
from core.logging import configure_logging, get_logger
from stt import protocol
from stt.engine import ModelLoadError, WhisperEngine
from stt.protocol import ConfigMessage, EndMessage, ProtocolError, ResetMessage
from stt.session import ModelHolder, Send, SttSession

log = get_logger("stt.server")  # a fixed name: __name__ is "__main__" under `python -m`


class SttService:
    """Process-wide state: the one model, the worker pools, the connection count."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = ModelHolder()
        self.transcribe_limiter = anyio.CapacityLimiter(settings.stt.max_concurrent)
        self.vad_limiter = anyio.CapacityLimiter(settings.stt.vad_workers)
        self.connections = 0

    async def load_model(self) -> None:
        stt = self.settings.stt
        # Silero VAD ships inside faster-whisper; loading it here keeps the first session's
        # ONNX load off the event loop.
        await anyio.to_thread.run_sync(get_vad_model)
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
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.load_model)
            yield
            tasks.cancel_scope.cancel()

    app = FastAPI(
        title="Voice assistant: speech to text",
        version=__version__,
        lifespan=lifespan,
        description="Stream PCM16 audio to /ws/stt and receive transcripts.",
    )
    app.state.service = service
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.websocket("/ws/stt")
    async def stt_socket(websocket: WebSocket) -> None:
        limit = settings.stt.max_connections
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
            return
        service.connections += 1
        session_id = uuid.uuid4().hex[:12]
        try:
            with structlog.contextvars.bound_contextvars(session_id=session_id):
                await websocket.accept()
                log.info("session_opened", client=_client(websocket))
                await _serve(websocket, service, session_id)
        finally:
            service.connections -= 1

    return app


def _client(websocket: WebSocket) -> str:
    return f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"


async def _serve(websocket: WebSocket, service: SttService, session_id: str) -> None:
    settings = service.settings.stt
    send_lock = anyio.Lock()
    gone = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal gone
        # The worker and the receive loop both send; one frame at a time on the wire.
        async with send_lock:
            if gone:
                return
            try:
                await websocket.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                # The client vanished between two receives; the receive loop ends the session.
                gone = True

    if service.model.error:
        await _close_with_error(websocket, "model_unavailable", service.model.error)
        return

    session = SttSession(settings, service.model, service.transcribe_limiter, service.vad_limiter, send)
    await send(protocol.ready(session_id, settings.sample_rate, session.language, settings.model))
    try:
        async with anyio.create_task_group() as tasks:
            session.on_fatal = tasks.cancel_scope.cancel
            tasks.start_soon(session.run_worker)
            await _receive_loop(websocket, session, settings, send)
            tasks.cancel_scope.cancel()
    except WebSocketDisconnect:
        pass
    finally:
        session.close()
        log.info("session_closed", utterances=session.utterances)
    if session.fatal:
        await _close_with_error(websocket, "model_unavailable", session.fatal)


async def _receive_loop(websocket: WebSocket, session: SttSession, settings: SttSettings, send: Send) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
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
                    await session.configure(command.language)
        except ProtocolError as exc:
            log.info("message_refused", code=exc.code, reason=exc.message)
            await send(protocol.error(exc.code, exc.message))


async def _close_with_error(websocket: WebSocket, code: str, message: str) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    await websocket.send_json(protocol.error(code, message))
    # A close reason is limited to 123 bytes by RFC 6455; the full text went in the message above.
    await websocket.close(protocol.CLOSE_INTERNAL_ERROR, message.encode()[:120].decode(errors="ignore"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the speech-to-text service.")
    parser.add_argument("--config", help="YAML config file (default: CONFIG_PATH or config.yaml)")
    args = parser.parse_args()
    settings = load_settings(args.config)
    uvicorn.run(create_app(settings), host=settings.stt.host, port=settings.stt.port, log_config=None)


def __getattr__(name: str) -> Any:
    # `uvicorn stt.server:app` builds the app on first access, so importing this module is free of side effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)


if __name__ == "__main__":
    main()
