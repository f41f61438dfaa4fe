"""The Wyoming conventions both services share (Home Assistant's protocol; the `wyoming` package does the
framing): a TCP listener in the service's own process with a connection limit and a drain on shutdown,
errors as `error` events with the services' own codes, audio of any width and channel count as mono
PCM16, and the optional zeroconf advertisement.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import structlog
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from core import __version__
from core.config import WyomingSettings
from core.errors import BadAudio, ServiceError, TooManyConnections
from core.logging import get_logger

log = get_logger(__name__)

ATTRIBUTION = Attribution(name="voice-assistant", url="https://github.com/OHF-Voice/wyoming")
VERSION = __version__


def error_event(error: ServiceError) -> Event:
    return Error(text=error.message, code=error.code).event()


def mono_pcm16(audio: bytes, width: int, channels: int) -> bytes:
    """Audio of 1, 2 or 4 bytes a sample and any channel count as mono PCM16 (channels averaged)."""
    kinds = {1: np.uint8, 2: np.dtype("<i2"), 4: np.dtype("<i4")}
    if width not in kinds or channels < 1:
        raise BadAudio(f"audio of width {width} and {channels} channels cannot be used; send 8, 16 or 32-bit PCM")
    frame = width * channels
    samples = np.frombuffer(audio[: len(audio) - len(audio) % frame], dtype=kinds[width]).astype(np.float32)
    if width == 1:
        samples = (samples - 128.0) * 256.0
    elif width == 4:
        samples = samples / 65536.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()


class Handler(AsyncEventHandler):
    """A Wyoming connection's handler, with what the listener needs from it: a session id, and a way to
    finish on shutdown."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.session_id = uuid.uuid4().hex[:12]

    async def drain(self) -> None:
        """Shutdown: finish what this connection was asked (by default nothing is left to finish)."""


HandlerFactory = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Handler]


class WyomingListener:
    """One service's Wyoming TCP server: connection limit, a session id per connection, drain on shutdown."""

    def __init__(self, settings: WyomingSettings, host: str, what: str, setting: str) -> None:
        self.settings = settings
        self.host = host
        self.what = what
        self.setting = setting
        self.port: int | None = None
        """The port listened on (settings.port, or the one taken for 0), once started."""
        self.count = 0
        self._handlers: set[Handler] = set()
        self._server: AsyncTcpServer | None = None
        self._zeroconf: Any = None

    async def start(self, factory: HandlerFactory) -> None:
        def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Handler:
            return _Counted(self, factory, reader, writer)

        self._server = AsyncTcpServer(self.host, self.settings.port)
        await self._server.start(limited)
        sockets = self._server._server.sockets if self._server._server else []  # noqa: SLF001 (wyoming keeps it)
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        log.info("wyoming_listening", host=self.host, port=self.port)
        if self.settings.zeroconf:
            self._zeroconf = await advertise(self.settings, self.host, self.port, self.what)

    async def drain(self, timeout: float) -> None:
        """Shutdown: no new connections; what each open one was asked is finished within `timeout`."""
        if self._server is not None and self._server._server is not None:  # noqa: SLF001
            self._server._server.close()  # noqa: SLF001
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tasks:
                for handler in list(self._handlers):
                    tasks.start_soon(handler.drain)

    async def stop(self) -> None:
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
        if self._server is not None:
            await self._server.stop()

    def health(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.enabled,
            "host": self.host,
            "port": self.port,
            "connections": self.count,
            "max_connections": self.settings.max_connections,
        }


class _Counted(Handler):
    """Counts the connection against the limit and runs the real handler inside its session's log context."""

    def __init__(
        self, listener: WyomingListener, factory: HandlerFactory, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self._listener = listener
        self._inner = factory(reader, writer)
        self.session_id = self._inner.session_id

    async def handle_event(self, event: Event) -> bool:  # pragma: no cover - run() is overridden
        return await self._inner.handle_event(event)

    async def run(self) -> None:
        listener = self._listener
        if listener.count >= listener.settings.max_connections:
            error = TooManyConnections(
                f"the {listener.what} serves at most {listener.settings.max_connections} Wyoming clients "
                f"({listener.setting}); try again later"
            )
            log.warning("connection_refused", reason="max_connections", limit=listener.settings.max_connections)
            await self._inner.write_event(error_event(error))
            self.writer.close()
            return
        listener.count += 1
        listener._handlers.add(self._inner)  # noqa: SLF001
        peer = self.writer.get_extra_info("peername")
        try:
            with structlog.contextvars.bound_contextvars(session_id=self._inner.session_id, protocol="wyoming"):
                log.info("session_opened", client=f"{peer[0]}:{peer[1]}" if peer else "unknown")
                try:
                    await self._inner.run()
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass  # the client went away mid-event; its handler has cleaned up
                log.info("session_closed")
        finally:
            listener.count -= 1
            listener._handlers.discard(self._inner)  # noqa: SLF001


async def advertise(settings: WyomingSettings, host: str, port: int, what: str) -> Any:
    """Announce `_wyoming._tcp` on the local network (zeroconf); returns the running Zeroconf to close."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    name = settings.zeroconf_name or f"voice-assistant-{what.split()[0].lower()}-{socket.gethostname()}"
    address = host if host not in ("0.0.0.0", "", "::") else _primary_address()
    info = AsyncServiceInfo(
        "_wyoming._tcp.local.",
        f"{name}._wyoming._tcp.local.",
        addresses=[socket.inet_aton(address)],
        port=port,
        server=f"{socket.gethostname()}.local.",
    )
    zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
    await zeroconf.async_register_service(info)
    log.info("zeroconf_advertised", name=name, address=address, port=port)
    return zeroconf


def _primary_address() -> str:
    """The address other machines reach this one at (the interface of the default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"
