"""GET /v1/engines: every configured engine, its state and what it can do; PUT /v1/engines/default: which
one speaks when a request names none (admin when keys are on). Errors take the /v1 (OpenAI) shape."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, StrictStr

from core.config import Settings
from core.errors import EngineLoading, EngineUnavailable
from core.http import read_json_body, validated
from core.openapi import raises
from tts.http_docs import BODY_ERRORS, constrain, engine_schema, json_body
from tts.http_turns import tts_service
from tts.service import TtsService

Service = Annotated[TtsService, Depends(tts_service)]
BODY_LIMIT = 1024


class DefaultEngine(BaseModel):
    """Body of PUT /v1/engines/default."""

    model_config = ConfigDict(extra="forbid")
    engine: StrictStr


def build_router(settings: Settings) -> APIRouter:
    """The routes; their OpenAPI document names the engines configured in `settings`."""
    router = APIRouter()
    router.add_api_route("/v1/engines", list_engines, methods=["GET"])
    schema = DefaultEngine.model_json_schema()
    constrain(schema, "engine", engine_schema(settings))
    router.add_api_route(
        "/v1/engines/default",
        set_default_engine,
        methods=["PUT"],
        openapi_extra={**json_body(schema), **raises(*BODY_ERRORS, EngineLoading, EngineUnavailable)},
    )
    return router


async def list_engines(service: Service) -> dict[str, Any]:
    infos = await service.engine_infos()
    return {"engines": [asdict(info) for info in infos], "default": service.engines.configured}


async def set_default_engine(request: Request, service: Service) -> dict[str, Any]:
    depth = service.settings.security.max_json_depth
    body = validated(DefaultEngine, await read_json_body(request, BODY_LIMIT, "the engine name", '{"engine": "espeak"}', depth))
    info = await service.set_default_engine(body.engine)
    return {"default": info.name, "engine": asdict(info)}
