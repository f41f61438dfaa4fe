"""core.errors: one family of codes, every one mapped to an HTTP status at the edge, one formatter of
validation errors for every protocol."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import ServiceError, describe_validation_errors, error_codes
from core.http import HTTP_STATUS


def test_every_error_code_has_an_http_status_and_none_is_left_over() -> None:
    codes = error_codes()
    assert codes == set(HTTP_STATUS), (codes ^ set(HTTP_STATUS))
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())


def test_errors_carry_no_http_status() -> None:
    error = ServiceError("try again", retry_after_s=3)
    assert not hasattr(error, "status_code") and not hasattr(error, "headers")
    assert (error.code, error.message, error.retry_after_s) == ("internal_error", "try again", 3)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ping"]
    timestamp: float | None = None
    text: str


def _errors(data: dict) -> list:
    with pytest.raises(ValidationError) as info:
        _Message.model_validate(data)
    return info.value.errors()


def test_the_validation_formatter_names_each_field_and_what_is_allowed() -> None:
    message = describe_validation_errors(
        _errors({"type": "ping", "timestamp": "soon", "colour": 1}), ["timestamp", "text"]
    )
    assert message == (
        "'timestamp': Input should be a valid number, unable to parse string as a number; "
        "'text' is required; unknown field 'colour'; allowed fields: timestamp, text"
    )


def test_the_validation_formatter_hides_fastapis_location_prefixes() -> None:
    errors = [{"loc": ("query", "text"), "type": "missing", "msg": "Field required"}]
    assert describe_validation_errors(errors) == "'text' is required"
