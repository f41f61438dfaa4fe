"""The OpenAPI document of a service, true to its error contract: every status an operation can answer
is listed with its body.

A route names the errors it may raise (`openapi_extra=raises(EmptyText, VoiceNotFound, ...)`), and
`document_errors` turns them into responses: the status and body model each gets in the protocol its
path answers in, taken from the same ErrorShape that encodes them at run time (core.http.add_error_shape),
so the document and the wire cannot disagree. It adds the 500 any route can answer, and replaces the
422 FastAPI documents for its own parameter validation (a body no route here sends) with the shape's
invalid_request.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from core.errors import InternalError, InvalidRequest, ServiceError
from core.http import ErrorShape, error_shape

RAISES = "x-raises"
"""The operation key `raises` fills in and `document_errors` replaces with responses."""
_COMPONENTS = "#/components/schemas/"
_FASTAPI_VALIDATION = {"HTTPValidationError", "ValidationError"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which trying again can succeed (sent with busy and loading errors).",
        "schema": {"type": "integer"},
    }
}


def raises(*errors: type[ServiceError]) -> dict[str, Any]:
    """`openapi_extra` of a route that may raise `errors` (besides internal_error, which any route may)."""
    return {RAISES: sorted({error.code for error in errors})}


DoorErrors = Callable[[str, str], Iterable[str]]
"""The codes the service's door (core.guard) may answer a (path, method) with, before any route."""


def document_errors(app: FastAPI, door: DoorErrors = lambda path, method: ()) -> None:
    """Makes `app`'s OpenAPI document list each operation's errors (see the module's docstring), those of
    its door (`door`: API keys, origins, hosts) included."""
    generate = app.openapi
    documented: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal documented
        document = generate()  # FastAPI's cached document, made anew when the routes change
        if document is not documented:
            _document(app, document, door)
            documented = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI, document: dict[str, Any], door: DoorErrors) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    bodies: set[type[Any]] = set()
    for path, operations in document.get("paths", {}).items():
        shape = error_shape(app, path)
        for method, operation in operations.items():
            codes = {InternalError.code, *operation.pop(RAISES, []), *door(path, method.upper())}
            responses = operation.setdefault("responses", {})
            if _is_fastapi_validation(responses.get("422")):
                del responses["422"]
                codes.add(InvalidRequest.code)
            responses.update(_error_responses(shape, codes))
            bodies.add(shape.body)
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    _, definitions = models_json_schema(
        [(body, "serialization") for body in sorted(bodies, key=lambda body: body.__name__)],
        ref_template=_COMPONENTS + "{model}",
    )
    schemas.update(definitions.get("$defs", {}))


def _is_fastapi_validation(response: dict[str, Any] | None) -> bool:
    schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref") == _COMPONENTS + "HTTPValidationError"


def _error_responses(shape: ErrorShape, codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    by_status: dict[int, list[str]] = {}
    for code in sorted(codes):
        by_status.setdefault(shape.status(code), []).append(code)
    responses = {}
    for status, grouped in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": f"{http.HTTPStatus(status).phrase}: " + ", ".join(f"`{code}`" for code in grouped),
            "content": {"application/json": {"schema": {"$ref": _COMPONENTS + shape.body.__name__}}},
        }
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        responses[str(status)] = response
    return responses
