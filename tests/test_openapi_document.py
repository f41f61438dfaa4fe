"""The OpenAPI document of each service says what its code does: every status an operation can answer
with its body (native or OpenAI's), and the limits of the settings on each request field. Schemathesis
checks the running services against it (tests/test_openapi_schemathesis.py); this reads the document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.errors import error_codes
from core.http import HTTP_STATUS
from core.openai_wire import openai_status
from stt.server import create_app as create_stt_app
from tests.tts.conftest import make_settings as tts_settings
from tts.server import create_app as create_tts_app

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
OPENAI_ERROR_BODY = {"$ref": "#/components/schemas/OpenAiErrorBody"}


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": op for path, ops in document["paths"].items() for method, op in ops.items()}


@pytest.fixture
def tts_document(tmp_path: Path) -> dict[str, Any]:
    settings = tts_settings(tmp_path, "http://127.0.0.1:9", max_text_length=123, min_speed=0.7, max_speed=1.5)
    return create_tts_app(settings).openapi()


@pytest.fixture
def stt_document(make_settings: Any) -> dict[str, Any]:
    return create_stt_app(make_settings()).openapi()


def test_every_error_response_has_the_body_of_its_protocol(tts_document: dict, stt_document: dict) -> None:
    for document in (tts_document, stt_document):
        schemas = document["components"]["schemas"]
        assert not {"HTTPValidationError", "ValidationError"} & set(schemas)  # FastAPI's body, never sent here
        for name, operation in operations(document).items():
            assert "x-raises" not in operation
            assert "500" in operation["responses"], name
            expected = OPENAI_ERROR_BODY if " /v1/" in name else ERROR_BODY
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == {"application/json": {"schema": expected}}, (name, status)
    assert set(tts_document["components"]["schemas"]["ErrorDetail"]["required"]) == {"code", "message"}
    assert set(tts_document["components"]["schemas"]["OpenAiErrorDetail"]["required"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("operation", "statuses"),
    # 403: the door (core.guard) answers every operation host_not_allowed, and unsafe ones origin_not_allowed.
    [
        ("POST /tts", {200, 403, 404, 409, 413, 415, 422, 500, 502, 503, 504}),
        ("GET /tts/sse", {200, 403, 204, 404, 409, 413, 422, 500, 502, 503, 504}),
        ("GET /voices", {200, 403, 500, 503}),
        ("GET /health", {200, 403, 500}),
        ("POST /v1/audio/speech", {200, 403, 400, 404, 413, 500, 502, 503}),
        ("GET /v1/conversations/{conversation_id}", {200, 403, 400, 404, 500}),
        ("DELETE /v1/conversations/{conversation_id}", {204, 403, 400, 404, 500}),
        # Forwarded: the STT service's answers, and the forwarding's own 503 and 504.
        ("POST /v1/audio/transcriptions", {200, 403, 400, 413, 429, 500, 503, 504}),
        ("GET /api/stt/health", {200, 403, 500, 503}),
    ],
)
def test_the_tts_service_documents_every_status_of_an_operation(tts_document: dict, operation: str, statuses: set[int]) -> None:
    assert {int(status) for status in operations(tts_document)[operation]["responses"]} == statuses


def test_the_stt_service_documents_every_status_of_an_operation(stt_document: dict) -> None:
    found = {name: {int(status) for status in op["responses"]} for name, op in operations(stt_document).items()}
    assert found == {
        "GET /health": {200, 403, 500},
        "GET /metrics": {200, 403, 500},
        "GET /v1/models": {200, 403, 500},
        "POST /v1/audio/transcriptions": {200, 400, 403, 413, 429, 500, 503},
        "POST /v1/audio/translations": {200, 400, 403, 413, 429, 500, 503},
        "POST /v1/auth/ticket": {200, 403, 500},
    }


def test_each_error_status_lists_its_codes(tts_document: dict) -> None:
    responses = operations(tts_document)["POST /tts"]["responses"]
    assert responses["413"]["description"] == "Request Entity Too Large: `request_too_large`, `text_too_long`"
    assert responses["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    speech = operations(tts_document)["POST /v1/audio/speech"]["responses"]
    assert "`empty_text`" in speech["400"]["description"] and "`invalid_speed`" in speech["400"]["description"]


def test_every_code_has_a_status_in_both_shapes() -> None:
    assert set(HTTP_STATUS) == error_codes()
    assert {openai_status(code) for code in error_codes()} <= {400, 401, 403, 404, 405, 409, 413, 429, 500, 502, 503, 504}


def body_schema(document: dict, operation: str) -> dict[str, Any]:
    return operations(document)[operation]["requestBody"]["content"]["application/json"]["schema"]


def test_request_fields_carry_the_limits_of_the_settings(tts_document: dict) -> None:
    native = body_schema(tts_document, "POST /tts")["properties"]
    assert native["text"] == {
        "type": "string", "title": "Text", "minLength": 1, "maxLength": 123, "pattern": r"\S",
        "description": "The user's words (reply true) or the words to speak (reply false).",
    }
    assert native["speed"]["anyOf"][0] == {"type": "number", "minimum": 0.7, "maximum": 1.5}
    assert native["voice"]["anyOf"][0]["maxLength"] == 100
    speech = body_schema(tts_document, "POST /v1/audio/speech")["properties"]
    assert (speech["input"]["maxLength"], speech["speed"]["minimum"], speech["speed"]["maximum"]) == (123, 0.7, 1.5)
    query = {p["name"]: p["schema"] for p in operations(tts_document)["GET /tts/sse"]["parameters"]}
    assert (query["text"]["maxLength"], query["speed"]["minimum"], query["speed"]["maximum"]) == (123, 0.7, 1.5)


@pytest.mark.parametrize(("reply_default", "then"), [
    (True, {"properties": {"reply": {"enum": [True, None]}}}),
    (False, {"properties": {"reply": {"const": True}}, "required": ["reply"]}),
])
def test_a_conversation_id_asks_for_a_reply_as_the_service_does(tmp_path: Path, reply_default: bool, then: dict) -> None:
    settings = tts_settings(tmp_path, "http://127.0.0.1:9", reply_default=reply_default)
    schema = body_schema(create_tts_app(settings).openapi(), "POST /tts")
    assert schema["if"] == {"properties": {"conversation_id": {"type": "string"}}, "required": ["conversation_id"]}
    assert schema["then"] == then


def test_both_services_document_one_transcription_form(tts_document: dict, stt_document: dict) -> None:
    def form(document: dict) -> dict:
        return operations(document)["POST /v1/audio/transcriptions"]["requestBody"]

    assert form(tts_document) == form(stt_document)
    fields = form(stt_document)["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(fields) == {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "stream"}
    assert fields["timestamp_granularities[]"]["items"] == {"enum": ["word", "segment"], "type": "string"}


def test_a_reply_links_to_its_conversation(tts_document: dict) -> None:
    links = operations(tts_document)["POST /tts"]["responses"]["200"]["links"]
    assert {link["operationRef"] for link in links.values()} == {
        "#/paths/~1v1~1conversations~1{conversation_id}/get",
        "#/paths/~1v1~1conversations~1{conversation_id}/delete",
    }
