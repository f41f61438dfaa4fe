"""POST /v1/speech: a short document (tts/documents.py) spoken at once and streamed in any of the OpenAI
API's formats (core.encode). Longer documents go to jobs (POST /v1/speech/jobs, tts/jobs_api.py).

The body is a document: `blocks` (each `text` or `ssml`, with `voice`, `engine`, `speed`,
`pause_after_ms`), or one `text` (a chapter pasted whole is cut into sentences), and the document's
defaults of those fields; `format` and `sample_rate` say how the audio comes back.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator
from starlette.background import BackgroundTask

from core.config import Settings
from core.encode import FORMATS, StreamEncoder
from core.http import read_json_body, validated
from core.openapi import raises
from core.ssml import looks_like_ssml
from tts.documents import Block, Document
from tts.http_docs import (
    BODY_ERRORS,
    CHECK_ERRORS,
    SPEECH_ERRORS,
    VOICE_SCHEMA,
    constrain,
    json_body,
    speed_schema,
    text_schema,
)
from tts.http_turns import abandoned, encoded_body, first_audio, tts_service, warnings_headers
from tts.runner import EMPTY_RATE
from tts.service import TtsService
from tts.turn import Cancelled

AudioFormatName = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
BODY_EXAMPLE = '{"blocks": [{"text": "Hello."}, {"ssml": "<speak>Bye<break time=\\"1s\\"/></speak>"}], "format": "wav"}'


class BlockBody(BaseModel):
    """One block of a document: `text` or `ssml`, and what it overrides of the document's defaults."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr | None = Field(None, description="Words to speak (SSML when it starts with <speak).")
    ssml: StrictStr | None = Field(None, description="SSML to speak (the subset of the README).")
    voice: StrictStr | None = Field(None, description="Voice name from GET /voices; default: the document's.")
    engine: StrictStr | None = Field(None, description="Engine name; default: the document's (the serving engine).")
    speed: StrictFloat | None = Field(None, description="Speaking speed, 1.0 normal; default: the document's.")
    pause_after_ms: StrictInt | None = Field(None, ge=0, description="Silence after the block, in ms (tts.max_break_s).")

    @model_validator(mode="after")
    def _one_text(self) -> BlockBody:
        if (self.text is None) == (self.ssml is None):
            raise ValueError("a block has either 'text' or 'ssml'")
        return self

    def block(self) -> Block:
        if self.ssml is not None:
            return Block(self.ssml, True, self.voice, self.engine, self.speed, self.pause_after_ms)
        text = self.text or ""
        return Block(text, looks_like_ssml(text), self.voice, self.engine, self.speed, self.pause_after_ms)


class DocumentBody(BaseModel):
    """A document: `blocks`, or one `text`, with the defaults of the blocks' fields."""

    model_config = ConfigDict(extra="forbid")

    blocks: list[BlockBody] | None = Field(None, description="The blocks, spoken in order.")
    text: StrictStr | None = Field(None, description="Instead of blocks: one text (SSML when it starts with <speak).")
    voice: StrictStr | None = Field(None, description="Default voice of the blocks; default: the configured voice.")
    engine: StrictStr | None = Field(None, description="Default engine of the blocks; default: the serving engine.")
    speed: StrictFloat | None = Field(None, description="Default speed of the blocks, 1.0 normal.")
    pause_after_ms: StrictInt = Field(0, ge=0, description="Default silence after each block, in ms.")
    format: AudioFormatName = Field("wav", description="The audio format (as /v1/audio/speech's response_format).")
    sample_rate: StrictInt | None = Field(
        None, ge=8_000, le=48_000, description="Output rate in Hz; default: the first voice's own rate."
    )

    @model_validator(mode="after")
    def _blocks_or_text(self) -> DocumentBody:
        if (self.blocks is None) == (self.text is None):
            raise ValueError("send either 'blocks' or 'text'")
        return self

    def document(self) -> Document:
        raw = self.blocks if self.blocks is not None else [BlockBody(text=self.text)]
        blocks = tuple(block.block() for block in raw)
        return Document(blocks, self.voice, self.engine, self.speed, self.pause_after_ms)


Service = Annotated[TtsService, Depends(tts_service)]


def body_limit(max_chars: int) -> int:
    """Room for `max_chars` characters even when every one is JSON-escaped, and for the other fields."""
    return max_chars * 12 + 64 * 1024


async def read_document(service: TtsService, request: Request, max_chars: int, hint: str) -> DocumentBody:
    depth = service.settings.security.max_json_depth
    return validated(DocumentBody, await read_json_body(request, body_limit(max_chars), hint, BODY_EXAMPLE, depth))


def document_schema(settings: Settings, max_chars: int, model: type[BaseModel] = DocumentBody) -> dict[str, Any]:
    """The requestBody of a document (`model`: DocumentBody or a subclass) of at most `max_chars`
    characters, with the other limits of `settings`."""
    schema = model.model_json_schema()
    block = schema.pop("$defs")["BlockBody"]
    for target in (schema, block):
        constrain(target, "voice", VOICE_SCHEMA)
        constrain(target, "speed", speed_schema(settings))
        constrain(target, "pause_after_ms", {"maximum": round(settings.tts.max_break_s * 1000)})
        constrain(target, "engine", {"enum": [settings.tts.engine]})
    constrain(block, "text", text_schema(settings))
    constrain(block, "ssml", text_schema(settings))
    constrain(schema, "text", text_schema(settings))
    # Each block holds a character at least: no more blocks than characters allowed.
    most = min(settings.tts.max_blocks, max_chars)
    constrain(schema, "blocks", {"items": block, "minItems": 1, "maxItems": most})
    block["oneOf"] = [_one_of("text", "ssml"), _one_of("ssml", "text")]
    schema["oneOf"] = [_one_of("blocks", "text", "array"), _one_of("text", "blocks")]
    return json_body(schema)


def _one_of(present: str, absent: str, kind: str = "string") -> dict[str, Any]:
    """`present` given (of type `kind`), `absent` left out or null."""
    return {"required": [present], "properties": {present: {"type": kind}, absent: {"type": "null"}}}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    router.add_api_route(
        "/v1/speech",
        speech,
        methods=["POST"],
        response_class=Response,
        responses={200: {"description": "The document's audio in `format`, streamed as it is spoken",
                         "content": {fmt.content_type: {} for fmt in FORMATS.values()}}},
        openapi_extra={**document_schema(settings, settings.tts.max_text_length), **raises(*BODY_ERRORS, *CHECK_ERRORS, *SPEECH_ERRORS)},
    )
    return router


async def speech(request: Request, service: Service) -> Response:
    started = time.perf_counter()
    limit = service.settings.tts.max_text_length
    body = await read_document(service, request, limit, "tts.max_text_length")
    checked = (
        await service.check_document(
            body.document(), limit, "tts.max_text_length", "; send longer documents as a job: POST /v1/speech/jobs"
        )
    ).request
    turn = service.start_turn(checked, "speech", started)
    try:
        first, rate = await first_audio(turn, request, EMPTY_RATE)
    except Cancelled:
        return abandoned()
    output_rate = body.sample_rate or rate
    encoder = StreamEncoder(body.format, rate, output_rate)
    headers: dict[str, Any] = {
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
        "X-Sample-Rate": str(output_rate),
        "X-Engine": turn.engine,
        **warnings_headers(checked),
        "Access-Control-Expose-Headers": "X-Sample-Rate, X-Engine, X-Warnings",
    }
    return StreamingResponse(
        encoded_body(turn, first, encoder),
        media_type=FORMATS[body.format].content_type,
        headers=headers,
        background=BackgroundTask(turn.aclose),
    )
