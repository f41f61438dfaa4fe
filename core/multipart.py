"""A multipart form read whole into memory with its size bounded while it arrives (the upload routes of
both services: OpenAI transcriptions, voice uploads). Nothing is spooled to disk: the limit bounds memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from core.errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType

FORM_OVERHEAD_BYTES = 64 * 1024
"""Room above an upload's own limit for the form's boundaries, headers and text fields."""


async def read_multipart(
    request: Request,
    limit: int,
    too_large: Callable[[], RequestTooLarge],
    *,
    max_files: int,
    max_fields: int,
    expected: str,
    allowed: str,
) -> FormData:
    """The form of `request`, refused with `too_large()` once its body passes `limit` bytes (at once when its
    Content-Length says so). `expected` tells a client that sent another content type what to send; `allowed`
    ends the message of a form the parser refuses. The caller closes the form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType(expected)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large()

    async def bounded() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large()
            yield chunk

    parser = MultiPartParser(request.headers, bounded(), max_files=max_files, max_fields=max_fields)  # type: ignore[arg-type]
    parser.spool_max_size = limit  # file parts stay in memory, bounded by `limit`: no file on disk
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"the form could not be read ({exc.message}); {allowed}") from None
