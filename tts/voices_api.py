"""The voices API over HTTP, an adapter over tts.voice_manager.VoiceManager:

- GET /v1/voices?engine=&language=: every voice of every engine with its details;
- POST /v1/voices (multipart): a Piper voice (files `model` and `config`), or a reference clip (`file`) to
  clone a voice with an engine that clones (XTTS), with `name`, `language`, `description`;
- DELETE /v1/voices/{ENGINE}:{NAME}; PUT /v1/voices/default `{"voice": NAME, "engine"?}`;
  PUT /v1/voices/{ENGINE}:{NAME}/shared `{"shared": bool}` (admin).

Errors take the /v1 (OpenAI) shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.datastructures import UploadFile

from core.config import VOICE_NAME_PATTERN, Settings
from core.errors import (
    BadAudio,
    EngineLoading,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    InvalidVoice,
    InvalidVoiceName,
    RequestTooLarge,
    TooManyPending,
    UnsupportedMediaType,
    VoiceConflict,
    VoiceNotFound,
)
from core.http import read_json_body, validated
from core.multipart import FORM_OVERHEAD_BYTES, read_multipart
from core.openapi import raises
from tts.engines import engine_class
from tts.http_docs import BODY_ERRORS, constrain, engine_schema, json_body
from tts.http_turns import tts_service
from tts.service import TtsService
from tts.voice_manager import VoiceEntry, voice_id
from tts.voices import MAX_VOICE_NAME_LENGTH

Service = Annotated[TtsService, Depends(tts_service)]
VOICE_PATH_SCHEMA = {"pattern": VOICE_NAME_PATTERN, "maxLength": MAX_VOICE_NAME_LENGTH}
MAX_FORM_FIELDS = 8
JSON_LIMIT = 1024
_LOOKUP = (InvalidRequest, InvalidVoiceName, VoiceNotFound, EngineLoading, EngineUnavailable)


class VoiceForm(BaseModel):
    """The text fields of POST /v1/voices."""

    model_config = ConfigDict(extra="forbid")
    name: StrictStr = Field(description="The new voice's name: letters, digits, _ - + and inner dots.")
    engine: StrictStr | None = Field(None, description="piper for model+config (the default), xtts for a clip.")
    language: StrictStr | None = Field(None, max_length=16, description="The clip's language (cloning).")
    description: StrictStr = Field("", max_length=500)


class DefaultVoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: StrictStr = Field(description="The name of the voice to make its engine's default.")
    engine: StrictStr | None = Field(None, description="Its engine; default: the default engine.")


class Shared(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared: StrictBool


def _out(entry: VoiceEntry) -> dict[str, Any]:
    return asdict(entry)


def build_router(settings: Settings) -> APIRouter:
    """The routes; their OpenAPI document names the engines configured in `settings`."""
    router = APIRouter()
    router.add_api_route(
        "/v1/voices", _list_voices(settings), methods=["GET"], openapi_extra=raises(InvalidRequest, EngineLoading, EngineUnavailable)
    )
    router.add_api_route("/v1/voices", add_voice, methods=["POST"], status_code=201, openapi_extra=_upload_doc(settings))
    router.add_api_route(
        "/v1/voices/{engine}:{name}", _delete_voice(settings), methods=["DELETE"], status_code=204,
        response_class=Response, openapi_extra=raises(*_LOOKUP, VoiceConflict, Forbidden),
    )
    default = DefaultVoice.model_json_schema()
    tts = settings.tts
    own = tts.voice or engine_class(tts.engine).own_default_voice(tts)
    constrain(default, "voice", {**VOICE_PATH_SCHEMA, "examples": [own]})
    constrain(default, "engine", engine_schema(settings))
    router.add_api_route(
        "/v1/voices/default", set_default_voice, methods=["PUT"],
        openapi_extra={**json_body(default), **raises(*BODY_ERRORS, *_LOOKUP)},
    )
    router.add_api_route(
        "/v1/voices/{engine}:{name}/shared", _share_voice(settings), methods=["PUT"],
        openapi_extra={**json_body(Shared.model_json_schema()), **raises(*BODY_ERRORS, *_LOOKUP, VoiceConflict)},
    )
    return router


def _engine_path(settings: Settings) -> Any:
    return Path(description="The voice's engine.", json_schema_extra=engine_schema(settings))


def _name_path() -> Any:
    return Path(description="The voice's name.", json_schema_extra=VOICE_PATH_SCHEMA)


def _upload_doc(settings: Settings) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    fields = {
        "name": {"type": "string", **VOICE_PATH_SCHEMA},
        "engine": {"type": "string", "enum": ["piper", "xtts"]},
        "language": {"type": "string", "maxLength": 16},
        "description": {"type": "string", "maxLength": 500},
    }
    schema = {
        "type": "object",
        "required": ["name"],
        "properties": {**fields, "model": binary, "config": binary, "file": binary},
        "oneOf": [{"required": ["model", "config"]}, {"required": ["file"]}],
    }
    errors = raises(
        RequestTooLarge, UnsupportedMediaType, InvalidRequest, InvalidVoiceName, InvalidVoice, BadAudio, VoiceConflict,
        EngineLoading, EngineUnavailable, TooManyPending,
    )
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}, **errors}


def _list_voices(settings: Settings) -> Callable[..., Awaitable[dict[str, Any]]]:
    """GET /v1/voices, its engine parameter documented with the engines of `settings`."""

    async def list_voices(
        service: Service,
        engine: str | None = Query(
            None, description="Only this engine's voices.", json_schema_extra=engine_schema(settings)
        ),
        language: str | None = Query(None, max_length=16, description="Only voices of this language (en matches en_US)."),
    ) -> dict[str, Any]:
        voices = await service.voice_manager.list(engine, language)
        default = service.engines.engine
        return {
            "voices": [_out(entry) for entry in voices],
            "default": {"engine": service.engines.configured, "voice": default.default_voice if default else None},
        }

    return list_voices


async def _read_form(request: Request, limit: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """The files and text fields of a multipart body, bounded by `limit` bytes while it is read and held in
    memory (no spooling to disk)."""
    form = await read_multipart(
        request, limit, lambda: _too_large(limit), max_files=2, max_fields=MAX_FORM_FIELDS,
        expected="send multipart/form-data: files 'model' and 'config' (Piper) or 'file' (a clip)",
        allowed="send at most two files",
    )
    try:
        files = {key: await value.read() for key, value in form.items() if isinstance(value, UploadFile)}
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        return files, fields
    finally:
        await form.close()


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"the upload is over the {limit - FORM_OVERHEAD_BYTES}-byte limit (tts.max_voice_upload_bytes)", param="file"
    )


async def add_voice(request: Request, service: Service) -> dict[str, Any]:
    limit = service.settings.tts.max_voice_upload_bytes
    manager = service.voice_manager
    async with manager.upload_slot():
        files, fields = await _read_form(request, limit + FORM_OVERHEAD_BYTES)
        if sum(map(len, files.values())) > limit:  # the body's bound leaves room for the form's own bytes
            raise _too_large(limit + FORM_OVERHEAD_BYTES)
        form = validated(VoiceForm, fields)
        if set(files) == {"model", "config"}:
            entry = await manager.add_piper(form.name, files["model"], files["config"], form.description)
        elif set(files) == {"file"}:
            entry = await manager.clone(form.name, files["file"], form.language, form.description, form.engine)
        else:
            raise InvalidRequest(
                f"send the files 'model' (.onnx) and 'config' (.onnx.json) of a Piper voice, or 'file' (a clip to "
                f"clone from); got {', '.join(sorted(files)) or 'no file'}",
                param="file",
            )
    return _out(entry)


def _delete_voice(settings: Settings) -> Callable[..., Awaitable[Response]]:
    async def delete_voice(service: Service, engine: str = _engine_path(settings), name: str = _name_path()) -> Response:
        await service.voice_manager.delete(voice_id(engine, name))
        return Response(status_code=204)

    return delete_voice


async def _json(request: Request, service: Service, example: str) -> Any:
    depth = service.settings.security.max_json_depth
    return await read_json_body(request, JSON_LIMIT, "a voice id", example, depth)


async def set_default_voice(request: Request, service: Service) -> dict[str, Any]:
    body = validated(DefaultVoice, await _json(request, service, '{"voice": "en_US-lessac-medium", "engine": "piper"}'))
    return _out(await service.voice_manager.set_default(voice_id(body.engine or service.engines.configured, body.voice)))


def _share_voice(settings: Settings) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def share_voice(
        request: Request, service: Service, engine: str = _engine_path(settings), name: str = _name_path()
    ) -> dict[str, Any]:
        body = validated(Shared, await _json(request, service, '{"shared": true}'))
        return _out(await service.voice_manager.share(voice_id(engine, name), body.shared))

    return share_voice
