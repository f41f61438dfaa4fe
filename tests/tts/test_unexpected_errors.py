"""A failure nobody foresaw, over real HTTP: the client gets the error body with its request id, the
connection is closed (`Connection: close`), and its next request, on a fresh connection, works."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.config import Settings
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.tts.conftest import VOICE, make_settings, serve, wait_for
from tts.engines.piper import PiperEngine

BROKEN = "en_US-broken-medium"


def assert_internal_error(response: httpx.Response, body: dict[str, Any]) -> None:
    assert response.status_code == 500
    assert response.json() == body
    assert response.headers["x-request-id"]
    assert response.headers["connection"] == "close"


def service_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("tts", "core", "uvicorn")]
    return [r.msg["event"] if isinstance(r.msg, dict) else r.getMessage() for r in ours if r.levelno >= logging.ERROR]


def test_a_voice_that_cannot_load_is_a_500_that_closes_its_connection(
    voices_dir: Path, ollama: OllamaDouble, caplog: pytest.LogCaptureFixture
) -> None:
    # A real path to a 500: a voice whose model file is garbage (a truncated download) fails in onnxruntime.
    build_piper_voice(voices_dir, BROKEN)
    (voices_dir / f"{BROKEN}.onnx").write_bytes(b"not an onnx model")
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        caplog.set_level(logging.INFO)
        failed = client.post("/tts", json={"text": "Hello.", "voice": BROKEN, "reply": False})
        after = client.post("/tts", json={"text": "Hello.", "reply": False})
    assert_internal_error(failed, {"error": {"code": "internal_error", "message": "internal server error; see the service log"}})
    assert after.status_code == 200 and after.headers["content-type"] == "audio/wav"
    assert service_errors(caplog) == ["turn_failed"]


class VoicesVanishEngine(PiperEngine):
    """The real Piper engine, whose voice listing fails with a plain exception once the test says so.

    Our own code is wrapped because no request reaches the app's last-resort handler otherwise: every
    failure of a turn already becomes an error of core.errors. What is under test is that handler."""

    broken = False

    def voices(self) -> list[str]:
        if self.broken:
            raise RuntimeError("the voices folder went away")
        return super().voices()


def vanishing(engines: list[VoicesVanishEngine]) -> Callable[..., VoicesVanishEngine]:
    """An engine factory that builds VoicesVanishEngine and hands it to the test in `engines`."""

    def factory(name: str, settings: Settings, **_: Any) -> VoicesVanishEngine:
        engines.append(VoicesVanishEngine(settings))
        return engines[-1]

    return factory


def test_an_exception_no_handler_knows_is_a_500_with_its_request_id(
    voices_dir: Path, ollama: OllamaDouble, caplog: pytest.LogCaptureFixture
) -> None:
    engines: list[VoicesVanishEngine] = []
    with serve(make_settings(voices_dir, ollama.url), engine_factory=vanishing(engines)) as (_, client):
        caplog.set_level(logging.INFO)
        engines[0].broken = True
        native = client.get("/voices", headers={"X-Request-ID": "my-request-1"})
        openai = client.get("/v1/audio/voices")
        engines[0].broken = False
        after = client.get("/voices")
    assert_internal_error(native, {"error": {"code": "internal_error", "message": "internal server error; see the service log"}})
    assert native.headers["x-request-id"] == "my-request-1"
    assert_internal_error(
        openai,
        {
            "error": {
                "message": "internal server error; see the service log",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        },
    )
    assert after.status_code == 200 and after.json()["voices"] == [VOICE]
    # Logged once each, by the service, with the traceback; uvicorn saw nothing escape.
    assert service_errors(caplog) == ["unhandled_error", "unhandled_error"]


def test_an_exception_in_a_socket_session_closes_it_with_1011_and_says_why(
    voices_dir: Path, ollama: OllamaDouble, caplog: pytest.LogCaptureFixture
) -> None:
    engines: list[VoicesVanishEngine] = []
    with serve(make_settings(voices_dir, ollama.url), engine_factory=vanishing(engines)) as (server, _):
        caplog.set_level(logging.INFO)
        engines[0].broken = True  # the session's first message lists the voices
        with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
            error = json.loads(ws.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        wait_for(lambda: server.app.state.sockets.count == 0)
    assert error == {"type": "error", "code": "internal_error", "message": "internal server error; see the service log"}
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert service_errors(caplog) == ["session_failed"]
