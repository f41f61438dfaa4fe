"""The Piper voice catalog over HTTP, an adapter over tts.catalog.Catalog:

- GET /v1/voices/catalog?language=: the downloadable voices, with language, quality and size;
- POST /v1/voices/download `{"id"}`: start a download (202, the job; Location: the job);
- GET /v1/voices/download/{job}: the job's state and progress; GET .../events: the same as Server-Sent
  Events (`progress` on every change, then `done` or `error`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from core.config import VOICE_NAME_PATTERN
from core.errors import CatalogUnavailable, InvalidVoice, NotFound, TooManyPending, VoiceConflict, VoiceNotFound
from core.http import read_json_body, validated
from core.openapi import raises
from tts.catalog import DownloadJob
from tts.http_docs import BODY_ERRORS, json_body
from tts.http_turns import tts_service
from tts.service import TtsService
from tts.voices import MAX_VOICE_NAME_LENGTH

Service = Annotated[TtsService, Depends(tts_service)]
JobId = Annotated[str, Path(description="The id POST /v1/voices/download answered with.", pattern="^[0-9a-f]{16}$")]
router = APIRouter()


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr = Field(
        description="A voice id of GET /v1/voices/catalog.", pattern=VOICE_NAME_PATTERN, max_length=MAX_VOICE_NAME_LENGTH
    )


@router.get("/v1/voices/catalog", openapi_extra=raises(CatalogUnavailable))
async def catalog(
    service: Service,
    language: str | None = Query(None, max_length=16, description="Only voices of this language (en matches en_US)."),
) -> dict[str, Any]:
    voices = await service.voice_manager.catalog.voices(language)
    return {"voices": [asdict(voice) for voice in voices]}


@router.post(
    "/v1/voices/download",
    status_code=202,
    openapi_extra={
        **json_body(DownloadRequest.model_json_schema()),
        **raises(*BODY_ERRORS, VoiceNotFound, VoiceConflict, TooManyPending, CatalogUnavailable),
    },
)
async def download(request: Request, service: Service) -> Response:
    depth = service.settings.security.max_json_depth
    body = await read_json_body(request, 1024, "a voice id", '{"id": "en_US-lessac-medium"}', depth)
    job = await service.voice_manager.catalog.start(validated(DownloadRequest, body).id)
    return JSONResponse(job.report(), status_code=202, headers={"Location": f"/v1/voices/download/{job.id}"})


@router.get("/v1/voices/download/{job_id}", openapi_extra=raises(NotFound))
async def download_job(job_id: JobId, service: Service) -> dict[str, Any]:
    return service.voice_manager.catalog.job(job_id).report()


@router.get(
    "/v1/voices/download/{job_id}/events",
    response_class=Response,
    responses={200: {"description": "progress events, then done or error", "content": {"text/event-stream": {}}}},
    openapi_extra=raises(NotFound, InvalidVoice),
)
async def download_events(job_id: JobId, service: Service) -> Response:
    job = service.voice_manager.catalog.job(job_id)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(job), media_type="text/event-stream", headers=headers)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(job: DownloadJob) -> AsyncIterator[bytes]:
    while not job.finished:
        yield _sse("progress", job.report())
        await job.changed()
    yield _sse("done" if job.state == "done" else "error", job.report())
