"""One base URL: the TTS service answers /v1/audio/transcriptions and /v1/audio/translations by forwarding
them to the STT service over HTTP (the services never import each other; over https, verified against
tls.certfile, when TLS is on), so `http://HOST:8000/v1` is the one address a user types into any OpenAI
client.

The upload streams through, bounded by stt.max_upload_bytes; the answer streams back as it comes
(Server-Sent Events included), with the STT service's status and errors passed through as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from core.config import Settings
from core.errors import RequestTooLarge, SttTimeout, SttUnavailable
from core.http import REQUEST_ID_HEADER, local_url
from core.logging import get_logger
from core.openai_wire import TRANSCRIPTION_ERRORS, TRANSCRIPTION_RESPONSES, transcription_body
from core.openapi import raises
from core.tls import client_verify

log = get_logger(__name__)

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the form's other fields and boundaries around a file of the largest allowed size."""
_PASSED_BACK = ("content-type", "retry-after", "cache-control", "x-accel-buffering")


class Forwarder:
    """The TTS service's HTTP client of the STT service, shared by every forwarded request."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = local_url(settings.stt.host, settings.stt.port, secure=settings.tls.enabled)
        self.limit = settings.stt.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.timeout_s = settings.tts.openai.forward_timeout_s
        timeout = httpx.Timeout(self.timeout_s, connect=5.0)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, trust_env=False, verify=client_verify(settings)
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def forward(self, request: Request, path: str) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limit:
            raise _too_large(self.limit)
        headers = {"content-type": request.headers.get("content-type", "application/octet-stream")}
        # The same keys open both services: the client's key goes on to the STT service's own check.
        for name in (REQUEST_ID_HEADER, "authorization", "x-api-key"):
            if name in request.headers:
                headers[name] = request.headers[name]
        outgoing = self._client.build_request("POST", path, content=self._bounded(request), headers=headers)
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            raise SttTimeout(
                f"the speech-to-text service did not answer within {self.timeout_s:g} s "
                "(tts.openai.forward_timeout_s); raise it for long files, or send them to the STT service directly"
            ) from None
        except httpx.TransportError as exc:
            raise SttUnavailable(
                f"the speech-to-text service is not answering at {self.base_url} ({exc.__class__.__name__}); "
                "start it (make run starts both services) or check stt.host and stt.port"
            ) from None
        kept = {name: value for name, value in answer.headers.items() if name.lower() in _PASSED_BACK}
        log.info("forwarded", path=path, status=answer.status_code)
        return StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
        )

    async def _bounded(self, request: Request) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.limit)
            yield chunk


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"the upload is over the {limit - MULTIPART_OVERHEAD_BYTES}-byte limit (stt.max_upload_bytes)", param="file"
    )


def build_router(forwarder: Forwarder) -> APIRouter:
    router = APIRouter(prefix="/v1/audio", tags=["openai"])
    # The STT service's answers (and errors) come back as they are, besides the forwarding's own.
    documented = {
        "response_class": Response,
        "responses": TRANSCRIPTION_RESPONSES,
        "openapi_extra": {**transcription_body(), **raises(*TRANSCRIPTION_ERRORS, SttUnavailable, SttTimeout)},
    }

    @router.post("/transcriptions", summary="Forwarded to the STT service's /v1/audio/transcriptions", **documented)
    async def transcriptions(request: Request) -> Response:
        return await forwarder.forward(request, "/v1/audio/transcriptions")

    @router.post("/translations", summary="Forwarded to the STT service's /v1/audio/translations", **documented)
    async def translations(request: Request) -> Response:
        return await forwarder.forward(request, "/v1/audio/translations")

    return router
