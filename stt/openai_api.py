"""OpenAI's transcription API on the STT service: POST /v1/audio/transcriptions and /v1/audio/translations
(multipart: file, model, language, prompt, response_format, temperature, timestamp_granularities[],
stream) and GET /v1/models. An adapter over SttService.transcribe_file; errors in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from core.errors import InvalidRequest, RequestTooLarge, ServiceError
from core.http import CLIENT_CLOSED_REQUEST, on_disconnect, validated
from core.logging import get_logger
from core.multipart import FORM_OVERHEAD_BYTES, read_multipart
from core.openai_wire import (
    TRANSCRIPTION_ERRORS,
    TRANSCRIPTION_RESPONSES,
    TranscriptionForm,
    model_list,
    sse,
    transcription_body,
)
from core.openapi import raises
from stt import transcript_formats
from stt.engine import FileRequest
from stt.files import FileTranscription
from stt.service import SttService

log = get_logger(__name__)

MODEL_NAME = "whisper-1"
"""What OpenAI clients send; it, and any other name, means the configured model."""
MAX_FORM_FIELDS = 16
"""OpenAI's form has eight fields (timestamp_granularities[] may repeat); more is not a transcription request."""


def stt_service(request: Request) -> SttService:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[SttService, Depends(stt_service)]
router = APIRouter(prefix="/v1", tags=["openai"])
_FORM = {**transcription_body(), **raises(*TRANSCRIPTION_ERRORS)}


async def _read_form(request: Request, limit: int) -> tuple[bytes, TranscriptionForm]:
    """The uploaded file and the other fields, the body bounded by `limit` bytes while it is read, and held
    in memory (never spooled to a file on disk)."""
    form = await read_multipart(
        request, limit, lambda: _too_large(limit), max_files=1, max_fields=MAX_FORM_FIELDS,
        expected="send multipart/form-data with the audio in the field 'file' (as OpenAI's API takes it)",
        allowed=f"send multipart/form-data with the audio in 'file' and at most {MAX_FORM_FIELDS} other fields, "
        "as OpenAI's API takes it",
    )  # fmt: skip
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' is required: the audio to transcribe, as a file part of the form", param="file")
        fields: dict[str, Any] = {key: value for key, value in form.items() if key not in ("file", "timestamp_granularities[]")}
        if "timestamp_granularities[]" in form:
            fields["timestamp_granularities"] = form.getlist("timestamp_granularities[]")
        return await upload.read(), validated(TranscriptionForm, fields)
    finally:
        await form.close()


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"the upload is over the {limit - FORM_OVERHEAD_BYTES}-byte limit (stt.max_upload_bytes)", param="file"
    )


def _check(form: TranscriptionForm) -> None:
    if form.timestamp_granularities and form.response_format != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities[] needs response_format verbose_json", param="timestamp_granularities"
        )
    if form.stream and form.response_format not in ("json", "text"):
        raise InvalidRequest("stream=true sends text deltas: use response_format json or text", param="stream")


async def _transcribe(request: Request, service: SttService, task: Literal["transcribe", "translate"]) -> Response:
    stack = AsyncExitStack()
    try:
        # The slot first: N uploads at once must not hold N bodies in memory before the N+1st is refused.
        await stack.enter_async_context(service.upload_slot())
        data, form = await _read_form(request, service.settings.stt.max_upload_bytes + FORM_OVERHEAD_BYTES)
        _check(form)
        file_request = FileRequest(
            language=form.language,
            task=task,
            prompt=form.prompt,
            temperature=form.temperature,
            word_timestamps="word" in form.timestamp_granularities,
        )
        if form.stream:
            # Opened before the response starts: a file that cannot be decoded still gets its 400.
            transcription = await stack.enter_async_context(service.transcribe_file(data, file_request))
            held = stack.pop_all()  # the response's now: closed when its body ends, or after it if never read
            return StreamingResponse(
                _stream(transcription, held),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
                background=BackgroundTask(held.aclose),
            )
        with anyio.CancelScope() as scope:
            # A client that gave up (a timeout, then a retry) must not keep its upload slot and the workers.
            async with on_disconnect(request, scope.cancel), service.transcribe_file(data, file_request) as transcription:
                async for _ in transcription.segments():
                    pass
        if scope.cancelled_caught:
            log.info("request_abandoned", reason="client disconnected")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return _respond(form, task, transcription)
    finally:
        await stack.aclose()


def _respond(form: TranscriptionForm, task: str, transcription: FileTranscription) -> Response:
    segments = transcription.done
    if form.response_format == "text":
        return PlainTextResponse(transcript_formats.text(segments))
    if form.response_format == "srt":
        return PlainTextResponse(transcript_formats.srt(segments), media_type="application/x-subrip")
    if form.response_format == "vtt":
        return PlainTextResponse(transcript_formats.vtt(segments), media_type="text/vtt")
    if form.response_format == "verbose_json":
        words = "word" in form.timestamp_granularities
        return JSONResponse(transcript_formats.verbose_json(task, transcription.info, segments, words))
    return JSONResponse({"text": transcription.text})


async def _stream(transcription: FileTranscription, stack: AsyncExitStack) -> AsyncIterator[bytes]:
    """`transcript.text.delta` per decoded segment, then `transcript.text.done`; a failure on the way is an
    `error` event (the response has begun by then), and no `done` follows."""
    try:
        async for segment in transcription.segments():
            if segment.text:
                joiner = " " if len(transcription.done) > 1 else ""
                yield sse({"type": "transcript.text.delta", "delta": joiner + segment.text})
    except ServiceError as exc:
        log.warning("stream_aborted", code=exc.code, reason=exc.message)
        yield sse({"type": "error", "error": {"message": exc.message, "type": "server_error", "code": exc.code}})
        return
    finally:
        await stack.aclose()
    yield sse({"type": "transcript.text.done", "text": transcription.text})


@router.post("/audio/transcriptions", openapi_extra=_FORM, response_class=Response, responses=TRANSCRIPTION_RESPONSES)
async def transcriptions(request: Request, service: Service) -> Response:
    return await _transcribe(request, service, "transcribe")


@router.post("/audio/translations", openapi_extra=_FORM, response_class=Response, responses=TRANSCRIPTION_RESPONSES)
async def translations(request: Request, service: Service) -> Response:
    return await _transcribe(request, service, "translate")


@router.get("/models")
async def models(service: Service) -> dict[str, Any]:
    return model_list([MODEL_NAME, service.model_name])
