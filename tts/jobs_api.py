"""Jobs over HTTP (tts/jobs.py, tts/jobs_host.py): long documents rendered in the background.

- POST /v1/speech/jobs: a document (as POST /v1/speech takes it, up to jobs.max_document_chars) -> 202
  with the job and its Location;
- GET /v1/speech/jobs: recent jobs, newest first; GET /v1/speech/jobs/{id}: state, progress, timings;
- GET /v1/speech/jobs/{id}/audio: the result once done, with HTTP Range (one range) for seeking players;
- DELETE /v1/speech/jobs/{id}: cancels a queued or running job (200 with its state), or removes an ended
  one and its audio (204).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from core.config import Settings
from core.encode import FORMATS
from core.errors import JobNotDone, JobNotFound, JobsUnavailable, TooManyPending
from core.openapi import raises
from tts.documents_api import document_schema, read_document
from tts.http_docs import BODY_ERRORS, CHECK_ERRORS
from tts.http_turns import tts_service
from tts.service import TtsService

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
READ_CHUNK = 1 << 20
"""Bytes of the result read (off the event loop) and sent at a time."""
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Service = Annotated[TtsService, Depends(tts_service)]
JobId = Annotated[str, Path(pattern=JOB_ID.pattern, description="The id POST /v1/speech/jobs gave.")]
"""Checked before any storage is asked: the id names a folder (jobs.storage files)."""


_JOB = "#/paths/~1v1~1speech~1jobs~1{job_id}"
JOB_LINKS = {
    name: {"operationRef": _JOB + ref, "parameters": {"job_id": "$response.body#/id"}, "description": description}
    for name, ref, description in (
        ("GetJob", "/get", "The job's state, progress and timings."),
        ("GetJobAudio", "~1audio/get", "The job's audio, once it is done."),
        ("DeleteJob", "/delete", "Cancel the job, or remove it once it has ended."),
    )
}
"""A job's answer, to what can be done with it."""


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    body = document_schema(settings, settings.jobs.max_document_chars)
    router.add_api_route(
        "/v1/speech/jobs", submit, methods=["POST"], status_code=202,
        responses={202: {"description": "The job, queued; Location names it", "links": JOB_LINKS}},
        openapi_extra={**body, **raises(*BODY_ERRORS, *CHECK_ERRORS, TooManyPending, JobsUnavailable)},
    )  # fmt: skip
    router.add_api_route("/v1/speech/jobs", listing, methods=["GET"], openapi_extra=raises(JobsUnavailable))
    one = raises(JobNotFound, JobsUnavailable)
    router.add_api_route(
        "/v1/speech/jobs/{job_id}", status, methods=["GET"], openapi_extra=one,
        responses={200: {"description": "The job's state, progress and timings", "links": JOB_LINKS}},
    )  # fmt: skip
    router.add_api_route(
        "/v1/speech/jobs/{job_id}", delete, methods=["DELETE"], response_class=Response,
        responses={
            200: {"description": "Cancelled: the job's state", "links": {"GetJob": JOB_LINKS["GetJob"]}},
            204: {"description": "Removed with its audio"},
        },
        openapi_extra=one,
    )  # fmt: skip
    router.add_api_route(
        "/v1/speech/jobs/{job_id}/audio", audio, methods=["GET"], response_class=Response,
        responses={
            200: {"description": "The audio in the job's format", "content": {f.content_type: {} for f in FORMATS.values()}},
            206: {"description": "The byte range asked for (Range: bytes=START-END, START-, or -LAST)"},
        },
        openapi_extra=raises(JobNotFound, JobNotDone, JobsUnavailable),
    )  # fmt: skip
    return router


async def submit(request: Request, service: Service) -> JSONResponse:
    limit = service.settings.jobs.max_document_chars
    body = await read_document(service, request, limit, "jobs.max_document_chars")
    checked = await service.check_document(body.document(), limit, "jobs.max_document_chars")
    job = await service.jobs.submit(checked.blocks, body.format, body.sample_rate, list(checked.request.warnings))
    return JSONResponse(job.as_dict(), status_code=202, headers={"Location": f"/v1/speech/jobs/{job.id}"})


async def listing(service: Service) -> dict[str, Any]:
    return {"jobs": [job.as_dict() for job in await service.jobs.list()]}


async def status(job_id: JobId, service: Service) -> dict[str, Any]:
    return (await service.jobs.status(job_id)).as_dict()


async def delete(job_id: JobId, service: Service) -> Response:
    job = await service.jobs.delete(job_id)
    if job is None:
        return Response(status_code=204)
    return JSONResponse(job.as_dict())


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range within the `size` bytes; None to send them all.
    A Range this does not serve (several ranges, another unit, one outside the audio) is ignored, as
    HTTP allows (RFC 9110, 14.2): the answer is the whole audio, never an error a player must handle."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # bytes=-N: the last N
        suffix = int(match[2])
        return (max(0, size - suffix), size - 1) if suffix else None
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    return (start, end) if start <= end else None


async def audio(job_id: JobId, request: Request, service: Service) -> Response:
    job, size = await service.jobs.audio(job_id)
    fmt = FORMATS[job.format]
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store", "Content-Disposition": f'inline; filename="{job.id}.{fmt.name}"'}
    wanted = byte_range(request.headers.get("range"), size)
    start, end = wanted if wanted is not None else (0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)

    async def body() -> AsyncIterator[bytes]:
        position = start
        while position <= end:
            data = await service.jobs.read(job.id, position, min(READ_CHUNK, end - position + 1))
            if not data:
                return
            position += len(data)
            yield data

    return StreamingResponse(body(), status_code=206 if wanted else 200, media_type=fmt.content_type, headers=headers)
