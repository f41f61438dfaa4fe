"""What the TTS service's HTTP adapters (native, OpenAI, documents) share: the service as a FastAPI
dependency, waiting for a turn's first event before a response starts, the answer to a client that left,
and a turn's audio encoded as it comes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import anyio
from fastapi import Request, Response

from core.encode import StreamEncoder
from core.errors import ServiceError, ShuttingDown
from core.http import CLIENT_CLOSED_REQUEST, abort_response, on_disconnect
from core.logging import get_logger
from tts.service import TtsService
from tts.turn import AudioPiece, Cancelled, Turn, TurnEvent, TurnRequest

log = get_logger(__name__)

ENCODE_SLICE_S = 0.25
"""Audio encoded per step: small enough that encoding adds little to the time to first byte."""


def tts_service(request: Request) -> TtsService:
    """The app's one TtsService (a FastAPI dependency)."""
    return request.app.state.service  # type: ignore[no-any-return]


async def first_event(turn: Turn, request: Request, wanted: tuple[type, ...]) -> TurnEvent | None:
    """The turn's first event of a type in `wanted` (None when it ended without one), watching for the client
    going away meanwhile. A failure before it, or the client leaving, closes the turn and is raised."""
    try:
        async with on_disconnect(request, turn.cancel):
            async for event in turn:
                if isinstance(event, wanted):
                    return event
        return None
    except BaseException:
        await turn.aclose()
        raise


async def first_audio(turn: Turn, request: Request, default_rate: int) -> tuple[AudioPiece | None, int]:
    """The turn's first audio (None when it spoke nothing) and its sample rate (`default_rate` when no rate is
    known), as first_event watches for it: Cancelled when the client left first."""
    first = await first_event(turn, request, (AudioPiece,))
    assert first is None or isinstance(first, AudioPiece)
    return first, first.sample_rate if first else (turn.sample_rate or default_rate)


def abandoned() -> Response:
    log.info("request_abandoned", reason="client disconnected")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def warnings_headers(request: TurnRequest) -> dict[str, str]:
    """X-Warnings (what of the SSML was spoken plainly) when there is anything to say."""
    if not request.warnings:
        return {}
    return {"X-Warnings": quote(json.dumps(list(request.warnings), ensure_ascii=False), safe="")}


async def encode_piece(encoder: StreamEncoder, piece: AudioPiece) -> AsyncIterator[bytes]:
    """A piece's audio encoded slice by slice (off the event loop), each slice handed on at once: the
    first bytes wait for a quarter second of encoding, not for the whole sentence's."""
    step = int(piece.sample_rate * ENCODE_SLICE_S) * 2
    for start in range(0, len(piece.pcm16), step):
        data = await anyio.to_thread.run_sync(encoder.encode, piece.pcm16[start : start + step])
        if data:
            yield data


async def encode_turn(turn: Turn, first: AudioPiece | None, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """The turn's audio in the response format, encoded as it comes. Raises the turn's failure, or Cancelled."""
    if first is not None:
        async for data in encode_piece(encoder, first):
            yield data
    async for event in turn:
        if isinstance(event, AudioPiece):
            async for data in encode_piece(encoder, event):
                yield data
    yield await anyio.to_thread.run_sync(encoder.finish)


async def encoded_body(turn: Turn, first: AudioPiece | None, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    try:
        async for data in encode_turn(turn, first, encoder):
            yield data
    except Cancelled:
        abort_response(ShuttingDown.code, "the service stopped before the speech was finished")
    except ServiceError as exc:
        abort_response(exc.code, exc.message)
    finally:
        await turn.aclose()
