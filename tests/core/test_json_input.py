"""core.json_input, the one reader of client JSON: depth counted before parsing, and what it refuses."""

from __future__ import annotations

import pytest

from core.errors import InvalidJson, InvalidRequest
from core.json_input import nesting_depth, parse_client_json


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('"just a string"', 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('[[1], [2, [3]], []]', 3),
        ('{"text": "[[[{{{ not nesting ]]]"}', 1),
        ('["a \\" [[[ quote", [1]]', 2),
        ('["\\\\", [[1]]]', 3),  # an escaped backslash ends before the quote that closes the string
        ("[" * 5000, 5000),  # unclosed: the parser would still recurse into every one
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_a_document_at_the_limit_parses_and_one_past_it_is_refused() -> None:
    assert parse_client_json(b"[[[1]]]", 3, "the body") == [[[1]]]
    with pytest.raises(InvalidJson, match=r"^the body nests arrays and objects 4 levels deep; at most 3 are accepted"):
        parse_client_json(b"[[[[1]]]]", 3, "the body")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": NaN}', "the body holds NaN, which is not a JSON value"),
        (b"[-Infinity]", "the body holds -Infinity, which is not a JSON value"),
        (b"1" * 5000, "the body holds a number with too many digits to read"),
        (b'{"a": "\xed\xa0\x80"}', "the body is not UTF-8 text"),  # a UTF-8-encoded surrogate
        (b'{"a": 1', "the body is not valid JSON (Expecting ',' delimiter at line 1 column 8); send {}"),
    ],
)
def test_what_is_not_json_is_invalid_json(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidJson) as error:
        parse_client_json(raw, 32, "the body", "; send {}")
    assert error.value.message.startswith(message)


def test_a_lone_surrogate_is_refused_naming_its_field_and_a_pair_is_text() -> None:
    assert parse_client_json(b'{"text": "\\ud83d\\ude00"}', 32, "the body") == {"text": "\U0001f600"}
    with pytest.raises(InvalidRequest) as error:
        parse_client_json(b'{"voice": "ok", "text": ["fine", "Hi \\ud800 there."]}', 32, "the body")
    assert error.value.param == "text"
    assert error.value.message.startswith("'text' is not valid Unicode: it holds a lone surrogate")
    with pytest.raises(InvalidRequest) as key_error:
        parse_client_json(b'{"\\udfff": 1}', 32, "the body")
    assert key_error.value.param is None and key_error.value.message.startswith("a field name is not valid Unicode")
