"""A deadline for the request header (security.header_timeout_s), which uvicorn does not have.

uvicorn closes a keep-alive connection that stays idle (timeout_keep_alive), but any byte cancels that
timer, and nothing bounds the time from then, or from accepting a connection, to a complete header: a
client sending half a header holds its connection (and a file descriptor) for ever, and a few thousand
such clients starve the service. The timer here starts when a connection is accepted and when a request
begins, and stops when the request's header is complete; on expiry the connection is closed. What
happens after the header (the body, the response, a WebSocket) is not timed here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.logging import get_logger

log = get_logger(__name__)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (what its "auto" picks) with the header deadline of `header_timeout_s`."""

    header_timeout_s: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # a request on a kept-alive connection: its header is timed from its first byte

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
            log.info("header_timeout", client=client, timeout_s=self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn.Config(http=...): uvicorn builds it with its own arguments only."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})
