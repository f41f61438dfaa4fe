"""JSON a client sent, read the one way every protocol reads it (HTTP bodies, WebSocket messages, Wyoming
events), so each refuses the same things with the same errors:

- nesting deeper than security.max_json_depth. Python's parser recurses once per level: a few thousand
  `[` (a 10 KB body) exhaust the interpreter's stack. The depth is counted on the text, before parsing;
- text that is not UTF-8 (RFC 8259 asks for it; `json.loads` on bytes would also take UTF-16/32, and
  UTF-8-encoded surrogates);
- NaN and Infinity, which are not JSON, and numbers too long to convert;
- lone surrogates (`"\\ud800"`): valid JSON escapes that are no Unicode text. Nothing downstream can
  encode them (an LLM request, a log line, an engine), so they are refused here, naming the field.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from core.errors import InvalidJson, InvalidRequest

DEPTH_SETTING = "security.max_json_depth"
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEPS = str.maketrans({"[": "\x01", "{": "\x01", "]": "\xff", "}": "\xff"})
"""Each bracket as one signed byte: +1 opens a level, -1 (0xff) closes one."""


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text` (brackets inside strings do not count), counted without
    parsing and without recursion: the strings are cut out, then the brackets are summed in C."""
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text))
    steps = array("b", skeleton.translate(_STEPS).encode("latin-1"))
    return max(accumulate(steps), default=0)


def parse_client_json(raw: str | bytes, max_depth: int, what: str, hint: str = "") -> Any:
    """`raw` parsed, or the error that says what is wrong with it: InvalidJson, or InvalidRequest for a
    string that is no Unicode text. `what` names the input in messages ("the request body"); `hint`
    ends the message of a syntax error ("; send e.g. {...}")."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidJson(f"{what} is not UTF-8 text; send UTF-8 JSON") from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise InvalidJson(
            f"{what} nests arrays and objects {depth} levels deep; at most {max_depth} are accepted ({DEPTH_SETTING})"
        )
    try:
        value = json.loads(raw, parse_constant=_not_json(what))
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}){hint}") from None
    except RecursionError:
        # Only when security.max_json_depth is set near the interpreter's own limit.
        raise InvalidJson(f"{what} nests arrays and objects too deeply to read (see {DEPTH_SETTING})") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise InvalidJson(f"{what} holds a number with too many digits to read") from None
    _check_unicode(value)
    return value


def _not_json(what: str) -> Callable[[str], Any]:
    def refuse(name: str) -> Any:
        raise InvalidJson(f"{what} holds {name}, which is not a JSON value; send a finite number")

    return refuse


def _check_unicode(value: Any) -> None:
    """InvalidRequest naming the top-level field whose key or string holds a lone surrogate. Walked with a
    stack, not recursion: the depth is bounded, but the interpreter's stack is not ours to spend."""
    pending: list[tuple[Any, str | None]] = [(value, None)]
    while pending:
        item, field = pending.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                raise _not_unicode(field)
        elif isinstance(item, dict):
            for key, child in item.items():
                if _has_surrogate(key):
                    raise _not_unicode(field)
                pending.append((child, field or key))
        elif isinstance(item, list):
            pending.extend((child, field) for child in item)


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_unicode(field: str | None) -> InvalidRequest:
    shown = repr(field[:64]) if field else "a field name"
    return InvalidRequest(
        f"{shown} is not valid Unicode: it holds a lone surrogate (such as \\ud800, half of a UTF-16 pair); "
        "send whole characters",
        param=field,
    )
