"""/ws/stt and /ws/tts follow one set of conventions (core.websocket): the same error envelope and the
same codes for the same bad input, and the session goes on afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import ClientConnection, connect

from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import run_server
from tests.tts.conftest import make_settings as make_tts_settings
from tests.tts.conftest import serve as serve_tts

LIMIT = 1024
VOICE = "en_US-test-medium"
BAD_INPUTS = [
    ("{not json", "invalid_json", "not valid JSON"),
    ('["a", "list"]', "bad_message", 'a JSON object with a "type"'),
    ('{"type": "dance"}', "bad_message", "unknown message type 'dance'; known types: "),
    ('{"type": "ping", "pad": "' + "x" * (LIMIT + 10) + '"}', "request_too_large", f"over the {LIMIT}-byte limit"),
]


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    build_piper_voice(tmp_path / "voices", VOICE)
    return tmp_path / "voices"


@contextmanager
def both_sockets(make_settings, voices_dir: Path, ollama: OllamaDouble) -> Iterator[dict[str, ClientConnection]]:
    with ExitStack() as stack:
        stt = stack.enter_context(run_server(create_stt_app(make_settings(stt={"max_message_bytes": LIMIT}))))
        tts, _ = stack.enter_context(serve_tts(make_tts_settings(voices_dir, ollama.url, ws_max_message_bytes=LIMIT)))
        sockets = {
            "stt": stack.enter_context(connect(f"{stt.ws_url}/ws/stt", open_timeout=10)),
            "tts": stack.enter_context(connect(f"{tts.ws_url}/ws/tts", open_timeout=10)),
        }
        hello = {name: json.loads(ws.recv(timeout=10)) for name, ws in sockets.items()}
        assert (hello["stt"]["type"], hello["tts"]["type"]) == ("ready", "connection")
        assert len(hello["stt"]["session_id"]) == len(hello["tts"]["session_id"]) == 12
        yield sockets


@pytest.mark.parametrize(("raw", "code", "fragment"), BAD_INPUTS, ids=["invalid-json", "not-an-object", "unknown-type", "too-large"])
def test_both_sockets_refuse_the_same_bad_input_the_same_way(
    make_settings, voices_dir: Path, ollama: OllamaDouble, raw: str, code: str, fragment: str
) -> None:
    with both_sockets(make_settings, voices_dir, ollama) as sockets:
        errors = {}
        for name, ws in sockets.items():
            ws.send(raw)
            errors[name] = json.loads(ws.recv(timeout=10))
        # Each session goes on: a valid message is still answered.
        sockets["stt"].send(json.dumps({"type": "end"}))
        sockets["tts"].send(json.dumps({"type": "ping", "timestamp": 1}))
        after = {name: json.loads(ws.recv(timeout=10))["type"] for name, ws in sockets.items()}
    for name, error in errors.items():
        assert set(error) == {"type", "code", "message"}, name
        assert (error["type"], error["code"]) == ("error", code), name
        assert fragment in error["message"], (name, error["message"])
    assert after == {"stt": "no_speech", "tts": "pong"}


def test_an_unknown_field_of_a_known_message_is_invalid_request_on_both(
    make_settings, voices_dir: Path, ollama: OllamaDouble
) -> None:
    with both_sockets(make_settings, voices_dir, ollama) as sockets:
        sockets["stt"].send(json.dumps({"type": "end", "colour": "red"}))
        sockets["tts"].send(json.dumps({"type": "ping", "colour": "red"}))
        errors = {name: json.loads(ws.recv(timeout=10)) for name, ws in sockets.items()}
    assert {name: error["code"] for name, error in errors.items()} == {"stt": "invalid_request", "tts": "invalid_request"}
    assert all("unknown field 'colour'" in error["message"] for error in errors.values())
