"""GET and DELETE /v1/conversations/{id}: read back what the assistant remembers of a conversation (the
turns sent to the LLM with the next one), or make it forget. Errors take the /v1 (OpenAI) shape."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel

from core.errors import ConversationNotFound, InvalidRequest
from core.openapi import raises
from tts.http_docs import CONVERSATION_ID_SCHEMA
from tts.http_turns import tts_service
from tts.service import TtsService

Service = Annotated[TtsService, Depends(tts_service)]
# Checked by the service (tts.conversations.check_conversation_id), documented here.
ConversationId = Annotated[str, Path(description="The X-Conversation-Id of a reply.", json_schema_extra=CONVERSATION_ID_SCHEMA)]
_ERRORS = raises(InvalidRequest, ConversationNotFound)
router = APIRouter()


class TurnOut(BaseModel):
    user: str
    assistant: str
    """What the user heard of the reply."""
    interrupted: bool
    """The reply was cut (barge-in, cancel, the client left, an error): `assistant` is the part heard."""


class ConversationOut(BaseModel):
    id: str
    turns: list[TurnOut]


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut, openapi_extra=_ERRORS)
async def get_conversation(conversation_id: ConversationId, service: Service) -> ConversationOut:
    turns = await service.conversation(conversation_id)
    return ConversationOut(
        id=conversation_id, turns=[TurnOut(user=t.user, assistant=t.assistant, interrupted=t.interrupted) for t in turns]
    )


@router.delete("/v1/conversations/{conversation_id}", status_code=204, response_class=Response, openapi_extra=_ERRORS)
async def delete_conversation(conversation_id: ConversationId, service: Service) -> Response:
    await service.forget(conversation_id)
    return Response(status_code=204)
