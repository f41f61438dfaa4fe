"""Every TTS protocol is an adapter over the one turn: they speak the same fragments of the same reply,
sample for sample, and a stream that fails after its first audio is cut off cleanly."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from websockets.sync.client import connect

from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import make_settings, serve
from tests.tts.test_streaming import sse_events, wav_pcm

SERVICE_LOGGERS = ("tts", "core", "uvicorn")


def spoken_by_every_protocol(server: Any, client: httpx.Client) -> dict[str, tuple[str | None, bytes]]:
    """(words spoken, PCM16) of one reply turn through /tts, /tts/stream, /tts/sse and /ws/tts
    (/tts/stream carries no words, only audio)."""
    whole = client.post("/tts", json={"text": "Go"})
    assert whole.status_code == 200, whole.text
    results: dict[str, tuple[str | None, bytes]] = {"tts": (unquote(whole.headers["x-reply-text"]), wav_pcm(whole.content)[1])}

    stream = client.post("/tts/stream", json={"text": "Go"}, headers={"Accept": "audio/pcm"})
    assert stream.status_code == 200, stream.text
    results["stream"] = (None, stream.content)

    events = sse_events(client.post("/tts/sse", json={"text": "Go"}).text)
    done = events[-1][1]
    audio = b"".join(base64.b64decode(data["audio"]) for name, data in events if name == "audio")
    results["sse"] = (done["text"], audio)

    with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "connection"
        ws.send(json.dumps({"type": "text_input", "text": "Go"}))
        pcm = b""
        while (message := json.loads(ws.recv(timeout=15)))["type"] != "generation_complete":
            assert message["type"] != "error", message
            if message["type"] == "audio_chunk":
                pcm += ws.recv(timeout=15)
        results["ws"] = (message["text"], pcm)
    return results


@pytest.mark.parametrize(
    ("reply", "limit", "spoken"),
    [
        # The limit falls inside the second sentence: the first is spoken whole, the cut one not at all.
        ("First point is this. Then call Dr. Smith about it tomorrow.", 45, "First point is this."),
        # No fragment ends within the limit: the words before the cut, never a piece of a word.
        ("Call Dr. Smith tomorrow about the results.", 16, "Call Dr. Smith"),
    ],
)
def test_a_long_reply_is_cut_the_same_way_by_every_protocol(
    voices_dir: Path, ollama: OllamaDouble, reply: str, limit: int, spoken: str
) -> None:
    ollama.behaviour.reply = reply
    ollama.behaviour.tokens = "words"
    settings = make_settings(voices_dir, ollama.url, llm={"max_reply_chars": limit})
    with serve(settings) as (server, client):
        results = spoken_by_every_protocol(server, client)
    reference = results["tts"]
    assert reference[0] == spoken and reference[1]
    assert {name: words for name, (words, _) in results.items() if words is not None} == dict.fromkeys(
        ("tts", "sse", "ws"), spoken
    )
    assert {name: pcm == reference[1] for name, (_, pcm) in results.items()} == dict.fromkeys(results, True)


def test_a_stream_that_fails_after_its_first_audio_is_cut_off_with_one_warning(
    voices_dir: Path, ollama: OllamaDouble, caplog: pytest.LogCaptureFixture
) -> None:
    # The LLM sends half the reply (one whole sentence: audio goes out), then breaks off.
    ollama.behaviour.reply = "First sentence is here. And the second one follows it."
    ollama.behaviour.pieces = 2
    ollama.behaviour.mid_stream_error = "the model crashed"
    caplog.set_level(logging.INFO)
    with serve(make_settings(voices_dir, ollama.url, llm={"retry_attempts": 0})) as (_, client):
        received = b""
        with pytest.raises(httpx.RemoteProtocolError), client.stream("POST", "/tts/stream", json={"text": "Hi"}) as response:
            assert response.status_code == 200
            for part in response.iter_raw():
                received += part
        health = client.get("/health")
    assert len(received) > 44, "the header and the first sentence's audio arrived before the cut"
    assert health.status_code == 200  # the service goes on
    ours = [record for record in caplog.records if record.name.split(".")[0] in SERVICE_LOGGERS]
    assert [record.getMessage() for record in ours if record.levelno >= logging.ERROR] == []
    aborted = [r.msg for r in ours if isinstance(r.msg, dict) and r.msg.get("event") == "stream_aborted"]
    assert len(aborted) == 1
    assert aborted[0]["code"] == "llm_error" and "the model crashed" in aborted[0]["reason"]
    assert not any(record.exc_info for record in ours), "an expected failure carries no traceback"
