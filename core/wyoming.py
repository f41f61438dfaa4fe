"""The Wyoming conventions both services share (Home Assistant's protocol; the `wyoming` package does the
framing): a TCP listener in the service's own process with a connection limit and a drain on shutdown,
errors as `error` events with the services' own codes, audio of any width and channel count as mono
PCM16, and the optional zeroconf advertisement.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import structlog
from anyio.abc import TaskGroup
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Attribution
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from core import __version__
from core.config import WyomingSettings
from core.config_security import is_loopback
from core.errors import BadAudio, BadMessage, RequestTooLarge, ServiceError, TooManyConnections
from core.json_input import parse_client_json
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


MIN_RATE, MAX_RATE = 8_000, 192_000
EVENT_QUEUE = 16
"""Events read ahead of the one being handled; then the reader waits (and TCP pushes back)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no number


def check_format(rate: int, width: int, channels: int) -> None:
    """BadAudio unless the audio-start or audio-chunk describes audio that can be used."""
    if not (_is_int(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise BadAudio(f"rate {rate!r} Hz cannot be used; send {MIN_RATE} to {MAX_RATE} Hz")
    if not (_is_int(width) and width in (1, 2, 4) and _is_int(channels) and 1 <= channels <= 32):
        raise BadAudio(f"audio of width {width!r} and {channels!r} channels cannot be used; send 8, 16 or 32-bit PCM")


class _BoundedReader:
    """The connection's reader as the `wyoming` package reads an event from it, refusing a declared data
    or payload length over the limit before anything of it is read (the header is a line of its own),
    and JSON (the header, the data after it) that core.json_input refuses before the package parses it."""

    def __init__(self, reader: asyncio.StreamReader, limit: int, setting: str, max_depth: int) -> None:
        self._reader = reader
        self._limit = limit
        self._setting = setting
        self._max_depth = max_depth
        self._data_length: int | None = None
        """The data length the last header declared: the next read of that size is its JSON data."""

    async def readline(self) -> bytes:
        line = await self._reader.readline()
        self._data_length = None
        if line.strip():
            header = parse_client_json(line, self._max_depth, "the event header")
            length = header.get("data_length") if isinstance(header, dict) else None
            self._data_length = length if type(length) is int and length > 0 else None
        return line

    async def readexactly(self, size: int) -> bytes:
        if size > self._limit:
            raise RequestTooLarge(f"an event of {size} bytes is over the limit of {self._limit} ({self._setting})")
        data = await self._reader.readexactly(size)
        if self._data_length == size:  # the package reads the data first, then the payload
            self._data_length = None
            parse_client_json(data, self._max_depth, "the event data")
        return data


class _Drain:
    """Queued behind the events already read: the shutdown is handled in turn, by the connection's task."""


class Handler(AsyncEventHandler):
    """A Wyoming connection's handler. One task reads the events (the `wyoming` package's framing, with
    sizes bounded), the connection's own task handles them in order, and a shutdown is queued behind them:
    so whatever a handler opens (a live session, a turn) is opened and closed by one task. Subclasses
    implement `on_event` (and `on_refused`, `finish`); `tasks` runs what they start beside it.

    A refused event (a ServiceError, or an event missing its fields) is answered by an `error` event and
    the connection carries on; an unreadable or oversized event ends it after its error event."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: WyomingSettings,
        setting: str,
        max_json_depth: int,
    ) -> None:
        super().__init__(reader, writer)
        self.session_id = uuid.uuid4().hex[:12]
        self.tasks: TaskGroup | None = None
        self._bounded = _BoundedReader(reader, limits.max_event_bytes, setting, max_json_depth)
        self._limits = limits
        self._write_lock = anyio.Lock()
        self._queue, self._events = anyio.create_memory_object_stream[Event | _Drain](EVENT_QUEUE)
        self._unreadable: ServiceError | None = None
        self._ended = anyio.Event()

    @abstractmethod
    async def on_event(self, event: Event) -> None:
        """Handle one event (raise a ServiceError to refuse it)."""

    async def on_refused(self, event: Event, error: ServiceError) -> None:
        """After `error` was sent for `event`: put the handler back in a state the next event can use."""

    async def finish(self) -> None:
        """Shutdown: finish what this connection was asked (by default nothing is left to finish)."""

    async def handle_event(self, event: Event) -> bool:  # the wyoming base class's hook; run() is ours
        await self._answer(event)
        return True

    async def write_event(self, event: Event) -> None:
        async with self._write_lock:
            await super().write_event(event)

    async def try_write(self, event: Event) -> None:
        """Write unless the client has gone (then there is no one to tell)."""
        try:
            await self.write_event(event)
        except (ConnectionError, OSError):
            pass

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as self.tasks:
                self.tasks.start_soon(self._read)
                try:
                    await self._handle_all()
                except (ConnectionError, OSError):
                    pass  # the client went away while being answered
                finally:
                    # Here, in no scope of its own: what the handler opened in this task (a session and its
                    # task group) must close in it, innermost scope first.
                    await self.disconnect()
                    self.tasks.cancel_scope.cancel()
        finally:
            await self.close_delivering_last_event()
            self._ended.set()

    async def close_delivering_last_event(self) -> None:
        """Close so that what was written last (an error) reaches the client. Closing a socket with unread input
        makes the kernel reset the connection, and the client may then lose what it had not read yet (the rest
        of a refused oversized event is such input). So this end is shut first (the client reads to the end),
        what the client still sends is discarded for a moment (close_linger_s, close_linger_max_bytes at most),
        and then the socket closes."""
        if self.writer.is_closing():  # reset by the client, or closed: nothing to read, nothing to protect
            self.writer.close()
            return
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            discarded = 0
            with anyio.move_on_after(self._limits.close_linger_s):
                while discarded < self._limits.close_linger_max_bytes and (data := await self.reader.read(65_536)):
                    discarded += len(data)
        except (ConnectionError, OSError):
            pass  # the client has gone: nothing left to protect
        finally:
            self.writer.close()

    async def drain(self) -> None:
        """Shutdown (from the listener's task): once the events already read are handled, `finish` runs
        in the connection's task, then the connection closes."""
        try:
            await self._queue.send(_Drain())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the connection has ended already
        await self._ended.wait()

    async def _read(self) -> None:
        async with self._queue:
            try:
                while (event := await async_read_event(self._bounded)) is not None:  # type: ignore[arg-type]
                    await self._queue.send(event)
            except ServiceError as error:
                self._unreadable = error
            except (KeyError, TypeError, AttributeError):
                self._unreadable = BadMessage("unreadable event: each event is a JSON line with a \"type\"")
            except (ConnectionError, asyncio.IncompleteReadError, anyio.BrokenResourceError):
                pass  # the client went away mid-event, or the connection is ending

    async def _handle_all(self) -> None:
        async with self._events:
            async for item in self._events:
                if isinstance(item, _Drain):
                    await self.finish()
                    return
                await self._answer(item)
        if self._unreadable is not None:
            log.info("wyoming_refused", code=self._unreadable.code, reason=self._unreadable.message)
            await self.try_write(error_event(self._unreadable))

    async def _answer(self, event: Event) -> None:
        try:
            await self.on_event(event)
            return
        except ServiceError as exc:
            error = exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An event without the fields of its type, or with fields of the wrong type: the `wyoming`
            # package builds its events from any JSON without checking (a number for a text, a list for data).
            log.warning("wyoming_malformed_event", event_type=event.type, exc_info=True)
            error = BadMessage(f"malformed {event.type} event ({exc.__class__.__name__}: {exc}); see the Wyoming protocol")
        log.info("wyoming_refused", code=error.code, reason=error.message)
        await self.write_event(error_event(error))
        await self.on_refused(event, error)


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
        if not is_loopback(self.host):
            log.warning(
                "wyoming_unauthenticated",
                host=self.host,
                port=self.port,
                reason="Wyoming has no authentication: any machine that reaches this port can use the service",
            )
        if self.settings.zeroconf:
            self._zeroconf = await advertise(self.settings, self.host, self.port, self.what)

    async def drain(self, timeout: float) -> None:
        """Shutdown: no new connections; what each open one was asked is finished within `timeout`, then
        they close."""
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


class _Counted(AsyncEventHandler):
    """Counts the connection against the limit and runs the real handler inside its session's log context."""

    def __init__(
        self, listener: WyomingListener, factory: HandlerFactory, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(reader, writer)
        self._listener = listener
        self._inner = factory(reader, writer)

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
            await self._inner.close_delivering_last_event()
            return
        listener.count += 1
        listener._handlers.add(self._inner)  # noqa: SLF001
        peer = self.writer.get_extra_info("peername")
        try:
            with structlog.contextvars.bound_contextvars(session_id=self._inner.session_id, protocol="wyoming"):
                log.info("session_opened", client=f"{peer[0]}:{peer[1]}" if peer else "unknown")
                try:
                    await self._inner.run()
                except Exception:  # a defect: the connection ends, the listener and the others carry on
                    log.exception("session_failed")
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
