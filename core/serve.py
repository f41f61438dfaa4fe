"""Run one FastAPI app under uvicorn and shut it down gracefully.

On SIGTERM or SIGINT the server, in this order:

1. stops accepting connections (the listening sockets close at once);
2. awaits the app's optional drain hook, `app.state.drain(timeout)`: a coroutine that lets long-lived
   connections (the STT WebSockets) finish what they were given and close them politely; uvicorn's
   own shutdown would close every WebSocket at once with code 1012;
3. lets uvicorn finish in-flight HTTP requests (a `/tts` synthesis) for what is left of the grace
   period, then cancels whatever still runs, and runs the lifespan shutdown.

The whole sequence fits in `grace_s` minus a small margin, so that a supervisor that waits
`supervisor.shutdown_grace_s` before SIGKILL sees a clean exit. A second SIGINT forces the exit.
The process exits 0 after a graceful shutdown (plain `uvicorn.run` re-raises the signal instead).
uvicorn's access log stays off: core.http logs each request with its id. A connection whose request header
is not complete within security.header_timeout_s is closed (core.header_timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from types import FrameType
from typing import Any, Literal

import anyio
import uvicorn
from fastapi import FastAPI

from core.config import ConfigError, Settings, load_settings
from core.header_timeout import header_timeout_protocol
from core.logging import get_logger
from core.tls import server_options

log = get_logger(__name__)

Drain = Callable[[float], Awaitable[None]]
"""`await drain(timeout)`: finish in-flight work within timeout seconds; must not raise."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_DRAIN_SLACK_S = 0.1
"""A drain that ignores its timeout is cancelled this long after it (it should return by itself)."""


def shutdown_budget(grace_s: float) -> float:
    """The part of the supervisor's grace period a service spends on its own shutdown.

    A margin (a fifth, at most one second) is left for the process to exit after uvicorn returns,
    so the supervisor's SIGKILL at `grace_s` never hits a server that was still finishing cleanly.
    """
    return max(grace_s - min(1.0, grace_s * 0.2), 0.0)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose shutdown first drains the app, then lets uvicorn close the rest."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float, drain: Drain | None = None) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.drain = drain
        self.received_signal: int | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Unlike uvicorn's own handler this one does not re-raise the signal after the shutdown:
        # a graceful stop exits 0, which is what the supervisor (and systemd) expect.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, _: FrameType | None) -> None:
        # No logging here: a signal handler may interrupt a logging call holding the handler's lock.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.received_signal = self.received_signal or sig
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        budget = shutdown_budget(self.grace_s)
        deadline = time.monotonic() + budget
        signame = signal.Signals(self.received_signal).name if self.received_signal else None
        log.info("shutdown_started", signal=signame, grace_s=round(budget, 3))
        # 1. No new connections. uvicorn's shutdown closes these again, which is harmless.
        for server in getattr(self, "servers", []):
            server.close()
        for sock in sockets or []:
            sock.close()
        # 2. The app finishes what its long-lived connections were given.
        if self.drain is not None and not self.force_exit:
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.drain(budget), timeout=budget + _DRAIN_SLACK_S)
            except asyncio.TimeoutError:
                log.warning("drain_timeout", grace_s=round(budget, 3))
            except Exception:
                log.exception("drain_failed")
            log.info("drained", seconds=round(time.monotonic() - started, 3))
        # 3. uvicorn: in-flight HTTP requests get what is left of the budget, then are cancelled.
        self.config.timeout_graceful_shutdown = max(deadline - time.monotonic(), 0.1)  # type: ignore[assignment]
        await super().shutdown(sockets=sockets)


def build_server(
    app: FastAPI, host: str, port: int, *, grace_s: float, header_timeout_s: float, **options: Any
) -> DrainingServer:
    """A DrainingServer for `app`, closing a connection whose request header takes over `header_timeout_s`
    (core.header_timeout); the drain hook is `app.state.drain` when the app has one."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=header_timeout_protocol(header_timeout_s),
        **options,
    )
    drain = getattr(app.state, "drain", None)
    return DrainingServer(config, grace_s=grace_s, drain=drain)


def serve(app: FastAPI, host: str, port: int, *, grace_s: float, header_timeout_s: float, **options: Any) -> None:
    """Serve `app` on host:port until SIGTERM/SIGINT, then shut down gracefully within grace_s."""
    build_server(app, host, port, grace_s=grace_s, header_timeout_s=header_timeout_s, **options).run()


def main(service: Literal["stt", "tts"], description: str, create_app: Callable[[Settings], FastAPI]) -> None:
    """The command line of one service: `python -m stt.server [--config FILE]` (and tts)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file (default: CONFIG_PATH or config.yaml)")
    args = parser.parse_args()
    try:
        settings = load_settings(args.config)
        tls = server_options(settings)  # HTTPS and WSS with tls.certfile; the files checked before listening
    except ConfigError as exc:
        sys.exit(f"{service}: {exc}")  # exit code 1 with the message; the supervisor reports it
    section = getattr(settings, service)
    # uvicorn buffers a whole WebSocket message before the app sees it: bound that from the config.
    # Twice our own limit, so a message just over it still gets our explanatory error; anything
    # larger is closed by uvicorn with 1009 (message too big).
    message_limit = (
        max(settings.stt.max_frame_bytes, settings.stt.max_message_bytes)
        if service == "stt"
        else settings.tts.ws_max_message_bytes
    )
    serve(
        create_app(settings),
        section.host,
        section.port,
        grace_s=settings.supervisor.shutdown_grace_s,
        header_timeout_s=settings.security.header_timeout_s,
        ws_max_size=2 * message_limit,
        **tls,
    )


def drain_all(*drains: Drain) -> Drain:
    """One drain hook that runs several at once (a service's WebSocket sessions and its Wyoming clients)."""

    async def drain(timeout: float) -> None:
        async with anyio.create_task_group() as tasks:
            for hook in drains:
                tasks.start_soon(hook, timeout)

    return drain


def lazy_app(create_app: Callable[[], FastAPI]) -> Callable[[str], Any]:
    """A module `__getattr__` that builds `app` on first access, so `uvicorn MODULE:app` works and
    importing the module reads no configuration."""

    def module_getattr(name: str) -> Any:
        if name == "app":
            return create_app()
        raise AttributeError(name)

    return module_getattr
