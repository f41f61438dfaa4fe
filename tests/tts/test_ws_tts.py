"""WS /ws/tts over a real socket: every client message, every refusal, cancel and disconnect mid-stream."""

from __future__ import annotations

import io
import json
import logging
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for
from tests.tts.test_streaming import REPLY, SPOKEN

LONG_REPLY = " ".join(f"Sentence number {i} is here." for i in range(40))
SERVICE_LOGGERS = ("tts", "core", "uvicorn")
"""Loggers of the service under test (not of the test's own client library)."""


def receive(ws: ClientConnection) -> dict[str, Any]:
    frame = ws.recv(timeout=15)
    assert isinstance(frame, str), "expected a JSON message, got a binary frame"
    return json.loads(frame)


def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    ws.send(json.dumps({"type": kind, **fields}))


def body(message: dict[str, Any]) -> dict[str, Any]:
    """A message's fields, without its type."""
    return {key: value for key, value in message.items() if key != "type"}


def generation(ws: ClientConnection, until: tuple[str, ...] = ("generation_complete", "error")) -> tuple[list[dict], bytes]:
    """Messages up to and including one of `until`, and the audio of the audio_chunk frames (each
    audio_chunk must be followed by exactly one binary frame of `samples` samples)."""
    messages: list[dict] = []
    audio = b""
    while True:
        msg = receive(ws)
        messages.append(msg)
        if msg["type"] == "audio_chunk":
            frame = ws.recv(timeout=15)
            assert isinstance(frame, bytes) and len(frame) == msg["samples"] * 2
            audio += frame
        if msg["type"] in until:
            return messages, audio


@contextmanager
def connected(server: Any) -> Iterator[ClientConnection]:
    with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
        hello = receive(ws)
        assert hello["type"] == "connection"
        yield ws


def wav_pcm(data: bytes) -> bytes:
    with wave.open(io.BytesIO(data)) as reader:
        return reader.readframes(reader.getnframes())


def test_a_generation_from_start_to_complete(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = REPLY
    ollama.behaviour.tokens = "words"
    settings = make_settings(voices_dir, ollama.url, first_fragment_min_words=4, max_concurrent=3)
    with serve(settings) as (server, client):
        reference = wav_pcm(client.post("/tts", json={"text": "Plan"}).content)
        with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
            hello = receive(ws)
            assert hello == {
                "type": "connection",
                "session_id": hello["session_id"],
                "conversation_id": hello["conversation_id"],
                "status": "ready",
                "voices": [VOICE],
                "default_voice": VOICE,
                "engine": "piper",
                "max_concurrent": 3,
                "limits": {"max_text_length": 2000, "max_message_bytes": 65536},
            }
            assert len(hello["session_id"]) == 12
            send(ws, "text_input", text="Plan", voice=VOICE, reply=True, speed=1.0)
            messages, audio = generation(ws)
            before = time.time()
            send(ws, "ping", timestamp=123.5)
            pong = receive(ws)
            send(ws, "get_status")
            status = receive(ws)
        metrics = client.get("/metrics").text

    kinds = [m["type"] for m in messages]
    assert kinds == ["generation_started"] + ["reply_text", "audio_chunk"] * 4 + ["reply_text", "generation_complete"]
    conversation = hello["conversation_id"]
    assert body(messages[0]) == {"generation_id": 1, "voice": VOICE, "reply": True, "speed": 1.0, "conversation_id": conversation}
    texts = [body(m) for m in messages if m["type"] == "reply_text"]
    assert texts[0] == {"generation_id": 1, "text": SPOKEN[0], "is_final": False}
    assert texts[-1] == {"generation_id": 1, "text": " ".join(SPOKEN), "is_final": True}
    chunks = [body(m) for m in messages if m["type"] == "audio_chunk"]
    assert [(c["chunk_id"], c["text_chunk"], c["sample_rate"], c["format"]) for c in chunks] == [
        (i, text, 22050, "pcm_s16le") for i, text in enumerate(SPOKEN)
    ]
    assert audio == reference  # the same audio as POST /tts, sample for sample
    complete = body(messages[-1])
    assert (complete["generation_id"], complete["chunks"], complete["voice"], complete["engine"]) == (1, 4, VOICE, "piper")
    assert complete["conversation_id"] == conversation
    assert complete["audio_seconds"] == round(len(reference) / 2 / 22050, 3)
    timings = complete["timings"]
    assert set(timings["llm"]) == {"time_to_first_token_s", "tokens", "tokens_per_s", "total_s", "attempts"}
    assert timings["llm"]["tokens"] == len(REPLY.split()) and timings["llm"]["attempts"] == 1
    assert set(timings["tts"]) == {
        "first_fragment_s",
        "time_to_first_audio_s",
        "first_synthesis_s",
        "synthesis_s",
        "audio_s",
        "real_time_factor",
        "syntheses",
    }
    assert timings["tts"]["syntheses"] == 4 and timings["queue"]["first_wait_s"] >= 0
    assert pong["type"] == "pong" and pong["timestamp"] == 123.5
    assert abs(pong["server_time"] - before) < 60
    assert status == {
        "type": "status",
        "generating": False,
        "generation_id": None,
        "chunks_sent": 0,
        "engine": "piper",
        "voice": VOICE,
        "workers": {"max_concurrent": 3, "running": 0, "waiting": 0},
    }
    assert 'tts_turns_total{endpoint="ws",outcome="ok"} 1.0' in metrics


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "bad_message", "must be a JSON object"),
        ('{"type": "dance"}', "bad_message", "unknown message type 'dance'"),
        ('{"data": {}}', "bad_message", 'with a "type"'),
        ('{"type": "text_input", "txt": "hi"}', "invalid_request", "'text' is required"),
        ('{"type": "text_input"}', "invalid_request", "'text' is required"),
        ('{"type": "text_input", "text": "hi", "speed": "fast"}', "invalid_request", "'speed'"),
        ('{"type": "text_input", "text": "hi", "extra": 1}', "invalid_request", "unknown field 'extra'; allowed fields: text"),
        ('{"type": "text_input", "text": "' + "x" * 101 + '"}', "text_too_long", "the limit is 100"),
        ('{"type": "text_input", "text": "   "}', "empty_text", "text is empty"),
        ('{"type": "text_input", "text": "hi", "voice": "../x"}', "invalid_voice_name", "never a path"),
        ('{"type": "text_input", "text": "hi", "voice": "en_US-no-low"}', "voice_not_found", VOICE),
        ('{"type": "text_input", "text": "hi", "speed": 5}', "invalid_speed", "0.5 to 2"),
        ('{"type": "ping", "timestamp": [1]}', "invalid_request", "timestamp"),
        ('{"type": "cancel_generation"}', "nothing_to_cancel", "no generation is running"),
        ('{"type": "get_status", "x": 1}', "invalid_request", "unknown field 'x'"),
        ('{"type": "ping", "pad": "' + "x" * 1100 + '"}', "request_too_large", "over the 1024-byte limit"),
    ],
)
def test_bad_messages_get_an_error_and_the_socket_stays_open(
    voices_dir: Path, ollama: OllamaDouble, raw: str, code: str, fragment: str
) -> None:
    settings = make_settings(voices_dir, ollama.url, max_text_length=100, ws_max_message_bytes=1024)
    with serve(settings) as (server, _), connected(server) as ws:
        ws.send(raw)
        error = receive(ws)
        assert set(error) == {"type", "code", "message"}
        assert error["type"] == "error" and error["code"] == code
        assert fragment in error["message"]
        ws.send(b"\x00\x01")  # a binary frame from the client
        assert receive(ws)["code"] == "bad_message"
        send(ws, "text_input", text="Still here.", reply=False)
        messages, audio = generation(ws)
    assert messages[-1]["type"] == "generation_complete" and len(audio) > 0


def test_llm_failure_is_an_error_of_that_generation(voices_dir: Path) -> None:
    settings = make_settings(voices_dir, down_url(), llm={"retry_attempts": 0})
    with serve(settings) as (server, _), connected(server) as ws:
        send(ws, "text_input", text="Hello")
        messages, _ = generation(ws)
        send(ws, "text_input", text="Spoken anyway.", reply=False)
        after, audio = generation(ws)
    assert [m["type"] for m in messages] == ["generation_started", "error"]
    assert messages[-1]["code"] == "llm_unavailable" and messages[-1]["generation_id"] == 1
    assert after[-1]["type"] == "generation_complete" and after[-1]["generation_id"] == 2 and audio


def test_cancel_mid_stream_stops_llm_and_synthesis_and_the_socket_carries_on(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    gate = Gate(free=1)  # the first fragment is spoken; the second is held inside its worker
    ollama.behaviour.reply = LONG_REPLY
    ollama.behaviour.tokens = "words"
    ollama.behaviour.token_rate = 50.0  # 4 s of reply: still streaming when the cancel comes
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _), connected(server) as ws:
        pipeline = server.app.state.service
        send(ws, "text_input", text="Talk to me")
        first, audio = generation(ws, until=("audio_chunk",))
        assert [m["type"] for m in first] == ["generation_started", "reply_text", "audio_chunk"]
        wait_for(lambda: len(gate.sentences) == 2 and pipeline.pool.counters.running == 1)
        # A second input while one runs: refused, the running one carries on.
        # (the second fragment's text was sent when it was cut, before its synthesis began)
        assert body(receive(ws)) == {"generation_id": 1, "text": " ".join(LONG_REPLY.split()[:10]), "is_final": False}
        send(ws, "text_input", text="Interrupting")
        busy = receive(ws)
        assert busy["code"] == "busy" and "generation 1 is still running" in busy["message"]
        send(ws, "get_status")
        status = receive(ws)
        assert (status["generating"], status["generation_id"], status["chunks_sent"]) == (True, 1, 1)

        send(ws, "cancel_generation")
        # The LLM request stops at once, while the held sentence is still being synthesized...
        wait_for(lambda: ollama.aborted_streams == 1)
        assert pipeline.pool.counters.running == 1
        # ...and the worker as soon as that sentence is done; only then is the cancel acknowledged.
        gate.open.set()
        rest, more_audio = generation(ws, until=("generation_cancelled",))
        assert [m["type"] for m in rest] == ["generation_cancelled"]
        cancelled = rest[0]
        assert (cancelled["generation_id"], cancelled["chunks"]) == (1, 1)
        assert cancelled["timings"]["llm"]["tokens"] > 0, "the stages reached before the cancel are reported"
        assert more_audio == b""
        assert pipeline.pool.counters.running == 0 and pipeline.pool.limiter.borrowed_tokens == 0
        assert pipeline.pool.counters.cancelled == 1 and pipeline.pool.counters.turns == 0
        assert gate.sentences == ["Sentence number 0 is here.", "Sentence number 1 is here."]

        # Nothing of generation 1 ever follows the acknowledgement; the socket is ready for the next input.
        send(ws, "text_input", text="Next one.", reply=False)
        messages, audio = generation(ws)
        assert {m["generation_id"] for m in messages} == {2}
        assert messages[-1]["type"] == "generation_complete" and audio
        send(ws, "cancel_generation")
        assert receive(ws)["code"] == "nothing_to_cancel"
    assert ollama.finished_streams == 0
    metrics = server.app.state.service.metrics.render()[0].decode()
    assert 'tts_turns_total{endpoint="ws",outcome="cancelled"} 1.0' in metrics


def test_client_disconnecting_mid_stream_frees_its_worker(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate(free=1)
    ollama.behaviour.reply = LONG_REPLY
    ollama.behaviour.tokens = "words"
    ollama.behaviour.token_rate = 50.0
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client):
        pipeline = server.app.state.service
        with connected(server) as ws:
            send(ws, "text_input", text="Talk to me")
            generation(ws, until=("audio_chunk",))
            wait_for(lambda: len(gate.sentences) == 2 and pipeline.pool.counters.running == 1)
        # Gone mid-stream: the LLM stops now, the worker after the sentence it is in.
        wait_for(lambda: ollama.aborted_streams == 1)
        assert server.app.state.sockets.count == 1
        gate.open.set()
        wait_for(lambda: pipeline.pool.counters.running == 0 and pipeline.pool.counters.cancelled == 1)
        wait_for(lambda: server.app.state.sockets.count == 0)
        assert pipeline.pool.limiter.borrowed_tokens == 0 and pipeline.pool.counters.turns == 0
        assert len(gate.sentences) == 2
        assert client.get("/health").json()["workers"] == {"max_concurrent": 1, "running": 0, "waiting": 0}


def test_connections_over_the_limit_are_refused_with_1013(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(voices_dir, ollama.url, ws_max_connections=1)
    with serve(settings) as (server, _), connected(server):
        with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as second:
            error = receive(second)
            assert error["code"] == "too_many_connections"
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


def test_a_client_that_vanishes_after_a_request_leaves_no_error_behind(
    voices_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: a send failing inside the session's task group escaped as an ExceptionGroup and
    # uvicorn logged "Exception in ASGI application" for an ordinary disconnect. Only the service's own
    # records count: the test's websockets client may log its own complaint about the abrupt close.
    with serve(make_settings(voices_dir, down_url())) as (server, _):
        caplog.set_level(logging.INFO)
        for _ in range(3):
            with connect(f"{server.ws_url}/ws/tts") as ws:
                receive(ws)
                for _ in range(200):
                    ws.send("not json")
                ws.socket.close()  # abrupt: no close frame, while replies are still owed
        wait_for(lambda: server.app.state.sockets.count == 0)
    ours = [r for r in caplog.records if r.name.split(".")[0] in SERVICE_LOGGERS]
    assert [r for r in ours if r.levelno >= logging.ERROR] == [], [r.getMessage() for r in ours]
    closed = [r for r in ours if isinstance(r.msg, dict) and r.msg.get("event") == "session_closed"]
    assert len(closed) == 3, "every session ended cleanly"
