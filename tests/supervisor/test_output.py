"""How the supervisor re-emits its children's output: the real reader on a real asyncio stream."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from core.child import Child
from core.child_output import MAX_LINE_BYTES, STORED_LINE_CHARS
from core.child_spec import ServiceSpec
from core.config import LoggingSettings, SupervisorSettings
from core.logging import configure_logging

SPEC = ServiceSpec("stt", "stt.server", "127.0.0.1", 8010)


def pump(child: Child, *chunks: bytes) -> None:
    async def run() -> None:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        await child.relay.pump(reader)

    asyncio.run(run())


def make_child(json_logs: bool, lines: int = 20) -> Child:
    configure_logging(LoggingSettings(level="debug", json=json_logs), "supervisor")
    return Child(SPEC, SupervisorSettings(output_lines=lines), {}, json_logs, asyncio.Event())


def emitted(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.msg for record in caplog.records if isinstance(record.msg, dict)]


def test_json_lines_keep_their_level_logger_and_fields_under_the_service(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    child = make_child(json_logs=True)
    line = {
        "event": "utterance_transcribed",
        "level": "warning",
        "logger": "stt.session",
        "timestamp": "2026-01-01T00:00:00Z",
        "service": "stt",
        "session_id": "abc123",
        "rtf": 0.08,
    }
    # Split across reads, as a pipe delivers it.
    data = json.dumps(line).encode() + b"\n"
    pump(child, data[:10], data[10:])
    [record] = [r for r in caplog.records if isinstance(r.msg, dict)]
    assert (record.name, record.levelname) == ("stt.session", "WARNING")
    assert record.msg["event"] == "utterance_transcribed"
    assert (record.msg["service"], record.msg["session_id"], record.msg["rtf"]) == ("stt", "abc123", 0.08)
    assert child.last_output() == ["[warning] utterance_transcribed session_id=abc123 rtf=0.08"]


def test_plain_lines_come_through_as_they_are(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    child = make_child(json_logs=True)
    pump(child, b'Traceback (most recent call last):\r\n  File "x.py", line 1\n\nImportError: no module\n')
    assert [(e["event"], e["service"]) for e in emitted(caplog)] == [
        ("Traceback (most recent call last):", "stt"),
        ('  File "x.py", line 1', "stt"),
        ("ImportError: no module", "stt"),
    ]
    assert child.last_output()[-1] == "ImportError: no module"


def test_a_json_traceback_becomes_text_on_the_console(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    child = make_child(json_logs=False)
    line = {
        "event": "unhandled_error",
        "level": "error",
        "logger": "core.http",
        "exception": [
            {
                "exc_type": "ValueError",
                "exc_value": "bad value",
                "frames": [{"filename": "/app/stt/server.py", "lineno": 42, "name": "handler"}],
            }
        ],
    }
    pump(child, json.dumps(line).encode() + b"\n")
    [event] = emitted(caplog)
    assert event["exception"] == (
        'Traceback (most recent call last):\n  File "/app/stt/server.py", line 42, in handler\nValueError: bad value'
    )
    assert child.last_output() == ["[error] unhandled_error ValueError: bad value"]


def test_the_ring_buffer_keeps_the_last_lines_and_cuts_long_ones(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    child = make_child(json_logs=True, lines=3)
    pump(child, b"".join(f"line {n}\n".encode() for n in range(10)))
    assert child.last_output() == ["line 7", "line 8", "line 9"]

    caplog.clear()
    # A line longer than MAX_LINE_BYTES arriving in pieces: its first MAX_LINE_BYTES come through,
    # the rest is dropped up to its newline; the next line is intact.
    pump(child, b"x" * 70_000, b"y" * 70_000, b"z" * 10 + b"\nafter\n")
    assert [len(e["event"]) for e in emitted(caplog)] == [MAX_LINE_BYTES, len("after")]
    assert child.last_output() == ["line 9", "x" * STORED_LINE_CHARS, "after"]
