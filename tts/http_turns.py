"""What the TTS service's HTTP adapters (native and OpenAI) share: the service as a FastAPI dependency,
waiting for a turn's first event before a response starts, and the answer to a client that left."""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import Request, Response

from core.http import CLIENT_CLOSED_REQUEST, on_disconnect
from core.logging import get_logger
from tts.service import TtsService
from tts.turn import Turn, TurnEvent, TurnRequest

log = get_logger(__name__)

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


def abandoned() -> Response:
    log.info("request_abandoned", reason="client disconnected")
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def warnings_headers(request: TurnRequest) -> dict[str, str]:
    """X-Warnings (what of the SSML was spoken plainly) when there is anything to say."""
    if not request.warnings:
        return {}
    return {"X-Warnings": quote(json.dumps(list(request.warnings), ensure_ascii=False), safe="")}
