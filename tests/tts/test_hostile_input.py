"""What an attacker or a fuzzer sends the TTS service, over every protocol it speaks (native HTTP, SSE,
OpenAI's speech API, WS /ws/tts, Wyoming), against a real server: each gets the error that says what is
wrong, never a 500 or a dropped connection, and a socket's session goes on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe
from wyoming.tts import Synthesize

from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import make_settings, serve
from tests.tts.test_ws_tts import connected, receive, send

NATIVE_ROUTES = ("/tts", "/tts/stream", "/tts/sse")


def nested(depth: int) -> str:
    """A body whose `text` is `depth - 1` arrays deep (the object around them is the first level)."""
    return '{"text": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def post(client: httpx.Client, path: str, content: str | bytes) -> httpx.Response:
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


def native_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    assert response.headers["x-request-id"]
    return response.json()["error"]


def openai_error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


# -- nesting depth ------------------------------------------------------------------------------------


def test_json_nested_past_max_json_depth_is_refused_on_every_http_route(voices_dir: Path, ollama: OllamaDouble) -> None:
    limit = "at most 32 are accepted (security.max_json_depth)"
    bomb = "[" * 5000 + "]" * 5000  # 10 KB: deep enough to exhaust the parser's stack
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        for path in NATIVE_ROUTES:
            error = native_error(post(client, path, bomb))
            assert error == {
                "code": "invalid_json",
                "message": f"the request body nests arrays and objects 5000 levels deep; {limit}",
            }
        speech = openai_error(post(client, "/v1/audio/speech", '{"model": "tts-1", "input": ' + bomb + "}"))
        assert (speech["code"], speech["message"]) == (
            "invalid_json",
            f"the request body nests arrays and objects 5001 levels deep; {limit}",
        )
        # The service is none the worse for it.
        assert client.post("/tts", json={"text": "Hello.", "reply": False}).status_code == 200


def test_the_depth_limit_is_the_setting(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(voices_dir, ollama.url, security={"max_json_depth": 4})
    with serve(settings) as (_, client):
        at_limit = native_error(post(client, "/tts", nested(4)))
        over = native_error(post(client, "/tts", nested(5)))
        # Brackets inside a string are text, not nesting.
        quoted = client.post("/tts", json={"text": "[[[[[[ Hello. ]]]]]]", "reply": False})
    assert at_limit["code"] == "invalid_request" and "'text': Input should be a valid string" in at_limit["message"]
    assert over["code"] == "invalid_json" and "5 levels deep; at most 4 are accepted" in over["message"]
    assert quoted.status_code == 200 and quoted.headers["content-type"] == "audio/wav"


def test_a_deep_message_on_the_socket_is_an_error_and_the_session_goes_on(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _), connected(server) as ws:
        ws.send("[" * 3000 + "]" * 3000)
        error = receive(ws)
        send(ws, "ping", timestamp=7)
        pong = receive(ws)
    assert error == {
        "type": "error",
        "code": "invalid_json",
        "message": "the message nests arrays and objects 3000 levels deep; at most 32 are accepted (security.max_json_depth)",
    }
    assert (pong["type"], pong["timestamp"]) == ("pong", 7)


def test_a_deep_wyoming_event_is_an_error_event_and_the_listener_goes_on(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def deep(port: int) -> tuple[Event | None, Event | None, Event | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(('{"type": "synthesize", "data": ' + "[" * 3000 + "]" * 3000 + "}\n").encode())
        await writer.drain()
        error, end = await async_read_event(reader), await async_read_event(reader)
        writer.close()
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=15) as client:
            await client.write_event(Describe().event())
            return error, end, await client.read_event()

    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        error, end, info = asyncio.run(asyncio.wait_for(deep(server.app.state.wyoming.port), 30))
    assert error is not None and Error.from_event(error).code == "invalid_json"
    assert Error.from_event(error).text == (
        "the event header nests arrays and objects 3001 levels deep; at most 32 are accepted (security.max_json_depth)"
    )
    assert end is None  # an unreadable event ends its connection, as an oversized one does
    assert info is not None and info.type == "info"


# -- lone surrogates ----------------------------------------------------------------------------------

SURROGATE = '"Hi \\ud800 there."'
"""A JSON escape of half a UTF-16 pair: valid JSON, no Unicode text (nothing can encode it as UTF-8)."""
NOT_UNICODE = "is not valid Unicode: it holds a lone surrogate (such as \\ud800, half of a UTF-16 pair); send whole characters"


def test_a_lone_surrogate_is_invalid_request_on_every_http_route(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        for path in NATIVE_ROUTES:
            error = native_error(post(client, path, '{"text": ' + SURROGATE + ', "reply": true}'))
            assert error == {"code": "invalid_request", "message": f"'text' {NOT_UNICODE}"}
        speech = openai_error(post(client, "/v1/audio/speech", '{"model": "tts-1", "voice": "alloy", "input": ' + SURROGATE + "}"))
        voice = native_error(post(client, "/tts", '{"text": "Hi.", "voice": "\\udfff", "reply": false}'))
    assert (speech["code"], speech["param"], speech["message"]) == ("invalid_request", "input", f"'input' {NOT_UNICODE}")
    assert voice == {"code": "invalid_request", "message": f"'voice' {NOT_UNICODE}"}
    assert ollama.chat_requests == []  # refused before anything was asked of the LLM


def test_a_lone_surrogate_on_the_socket_is_an_error_and_the_session_goes_on(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _), connected(server) as ws:
        ws.send('{"type": "text_input", "reply": true, "text": ' + SURROGATE + "}")
        error = receive(ws)
        send(ws, "text_input", text="Hello.", reply=False)
        started = receive(ws)
    assert error == {"type": "error", "code": "invalid_request", "message": f"'text' {NOT_UNICODE}"}
    assert (started["type"], started["generation_id"]) == ("generation_started", 1)


# -- strict types -------------------------------------------------------------------------------------


def test_true_is_no_speed_on_any_route(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        for path in NATIVE_ROUTES:
            error = native_error(client.post(path, json={"text": "Hello.", "reply": False, "speed": True}))
            assert error == {"code": "invalid_request", "message": "'speed': Input should be a valid number"}
        speech = openai_error(
            client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "speed": True})
        )
        # A whole number is a number.
        whole = client.post("/tts", json={"text": "Hello.", "reply": False, "speed": 1})
    assert (speech["code"], speech["param"], speech["message"]) == (
        "invalid_request",
        "speed",
        "'speed': Input should be a valid number",
    )
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "text_input", "text": "Hello.", "reply": False, "speed": True}, "speed"),
        ({"type": "ping", "timestamp": True}, "timestamp"),
        ({"type": "cancel_generation", "played_ms": True}, "played_ms"),
    ],
)
def test_true_is_no_number_on_the_socket(voices_dir: Path, ollama: OllamaDouble, message: dict, field: str) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _), connected(server) as ws:
        ws.send(json.dumps(message))
        error = receive(ws)
    assert (error["type"], error["code"]) == ("error", "invalid_request")
    assert error["message"].startswith(f"invalid {message['type']!r} message: '{field}")
    assert "Input should be a valid number" in error["message"]


# -- text that speaks as nothing ----------------------------------------------------------------------

NOTHING = {"code": "empty_text", "message": "the text has nothing speakable (only punctuation, symbols, emoji, markup or code)"}


@pytest.mark.parametrize("text", [".", "?! -- ...", "|", "🙂🙂"])
def test_text_that_speaks_as_nothing_is_422_on_every_http_route(voices_dir: Path, ollama: OllamaDouble, text: str) -> None:
    # "|" passes the text check but Piper speaks it as silence: refused all the same, never an empty WAV.
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        errors = [native_error(client.post(path, json={"text": text, "reply": False})) for path in ("/tts", "/tts/stream")]
        if text != "|":  # SSE has sent the words before the silence is known: see below
            errors.append(native_error(client.post("/tts/sse", json={"text": text, "reply": False})))
            errors.append(native_error(client.get("/tts/sse", params={"text": text, "reply": "false"})))
        speech = openai_error(client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": text}))
    assert errors == [NOTHING] * len(errors)
    assert (speech["code"], speech["param"], speech["message"]) == ("empty_text", "input", NOTHING["message"])


def test_silence_after_the_words_ends_an_event_stream_with_empty_text(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts/sse", json={"text": "|", "reply": False})
    events = [block.split("\n") for block in response.text.strip().split("\n\n")]
    assert response.status_code == 200
    assert [lines[0] for lines in events] == ["event: reply_text", "event: error"]
    assert json.loads(events[-1][1].removeprefix("data: ")) == {"error": NOTHING}


def test_text_that_speaks_as_nothing_on_the_socket_is_empty_text(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _), connected(server) as ws:
        send(ws, "text_input", text=".", reply=False)
        messages = [receive(ws), receive(ws)]
    assert messages[0]["type"] == "generation_started"
    assert messages[1] == {"type": "error", **NOTHING, "generation_id": 1}


def test_text_that_speaks_as_nothing_over_wyoming_is_an_error_event(voices_dir: Path, ollama: OllamaDouble) -> None:
    async def synthesize(port: int) -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=15) as client:
            await client.write_event(Synthesize(text=".").event())
            events = [await client.read_event()]
            while events[-1] is not None and events[-1].type not in ("error", "audio-stop"):
                events.append(await client.read_event())
            return events

    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        events = asyncio.run(synthesize(server.app.state.wyoming.port))
    assert [event.type for event in events if event is not None] == ["error"]
    assert (Error.from_event(events[0]).code, Error.from_event(events[0]).text) == ("empty_text", NOTHING["message"])


# -- Wyoming events of the wrong shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({"type": "synthesize", "data": {"text": 5}}, "malformed synthesize event (AttributeError"),
        ({"type": "synthesize", "data": {"text": None}}, "malformed synthesize event (AttributeError"),
        ({"type": "synthesize", "data": {"text": "Hi.", "voice": {"language": 5}}}, "malformed synthesize event"),
        ({"type": "synthesize", "data": {"text": "Hi.", "voice": {"name": "en_US-test-medium", "speaker": 5}}}, "malformed"),
        ({"type": "synthesize", "data": ["Hi."]}, "malformed synthesize event"),
    ],
)
def test_a_wyoming_event_with_fields_of_the_wrong_type_is_bad_message(
    voices_dir: Path, ollama: OllamaDouble, event: dict, fragment: str
) -> None:
    # The `wyoming` package builds events from any JSON: such an event crashed the connection's handler.
    async def exchange(port: int) -> tuple[Event | None, Event | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json.dumps(event).encode() + b"\n" + json.dumps({"type": "describe"}).encode() + b"\n")
        await writer.drain()
        answers = await async_read_event(reader), await async_read_event(reader)
        writer.close()
        return answers

    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        error, info = asyncio.run(asyncio.wait_for(exchange(server.app.state.wyoming.port), 30))
    assert error is not None and Error.from_event(error).code == "bad_message"
    assert fragment in Error.from_event(error).text
    assert info is not None and info.type == "info"  # the connection goes on
