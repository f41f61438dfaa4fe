"""POST /tts/stream and the SSE routes over real HTTP: real uvicorn, real Piper (synthetic voice) and a
real HTTP Ollama double streaming its reply token by token."""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
from pathlib import Path

import httpx
import pytest

from core.text import speech_fragments
from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.fixtures.piper_voice import expected_samples
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for

# Markdown, an emoji, a code fence spanning many tokens, a comma early in the first sentence, a number
# and an abbreviation: everything the splitter has to get right, in one reply.
REPLY = (
    "**Sure,** here is the plan for today. \U0001f600 First, Dr. Lee checks the oven at 3.5 minutes past.\n"
    "```python\nprint('not. spoken!')\n```\nThen we eat... Enjoy!"
)
SPOKEN = [
    "Sure, here is the plan for today.",
    "First, Dr. Lee checks the oven at 3.5 minutes past.",
    "Then we eat...",
    "Enjoy!",
]


def wav_pcm(data: bytes) -> tuple[int, bytes]:
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (1, 2)
        return reader.getframerate(), reader.readframes(reader.getnframes())


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def word_tokens(ollama: OllamaDouble, reply: str = REPLY) -> None:
    ollama.behaviour.reply = reply
    ollama.behaviour.tokens = "words"


def test_streamed_audio_equals_the_whole_reply_sample_for_sample(voices_dir: Path, ollama: OllamaDouble) -> None:
    word_tokens(ollama)
    settings = make_settings(voices_dir, ollama.url, first_fragment_min_words=4)
    with serve(settings) as (server, client):
        whole = client.post("/tts", json={"text": "Plan my day"})
        assert whole.status_code == 200
        rate, reference = wav_pcm(whole.content)
        assert whole.headers["x-reply-text"].startswith("Sure%2C%20here")

        with client.stream("POST", "/tts/stream", json={"text": "Plan my day"}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"] == "audio/wav"
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert streamed.headers["x-sample-rate"] == "22050"
            assert "llm_ttft;dur=" in streamed.headers["server-timing"]
            parts = list(streamed.iter_raw())
        body = b"".join(parts)

        raw = client.post("/tts/stream", json={"text": "Plan my day"}, headers={"Accept": "audio/pcm"})
        assert raw.headers["content-type"] == "audio/pcm"
        assert (raw.headers["x-sample-rate"], raw.headers["x-channels"], raw.headers["x-sample-format"]) == (
            "22050",
            "1",
            "s16le",
        )
        pipeline = server.app.state.service
        assert speech_fragments(REPLY, 4, 12) == SPOKEN
        assert pipeline.pool.counters.running == 0 and pipeline.pool.counters.turns == 0

    # The header of a stream of unknown length: RIFF and data sizes 0xFFFFFFFF.
    header = body[:44]
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert struct.unpack("<I", header[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    assert struct.unpack("<HHIIHH", header[20:36]) == (1, 1, 22050, 44100, 2, 16)
    # Played back (Python's wave reads to the end of the stream), it is the same audio as /tts.
    with wave.open(io.BytesIO(body)) as reader:
        assert reader.readframes(10**9) == reference
    assert rate == 22050
    assert body[44:] == reference
    assert raw.content == reference
    voice = voices_dir / f"{VOICE}.onnx"
    assert len(reference) // 2 == sum(expected_samples(voice, fragment) for fragment in SPOKEN)
    # The fragments really were streamed: the header, then audio fragment by fragment.
    assert len(parts) >= 2


def test_reply_false_streams_the_text_itself(voices_dir: Path, ollama: OllamaDouble) -> None:
    text = "One sentence here. And a second one!"
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        whole = client.post("/tts", json={"text": text, "reply": False})
        raw = client.post("/tts/stream", json={"text": text, "reply": False}, headers={"Accept": "audio/pcm"})
    assert raw.status_code == 200
    assert raw.content == wav_pcm(whole.content)[1]
    assert ollama.chat_requests == []


def test_server_timing_of_a_whole_reply(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": "Hi"})
    timing = response.headers["server-timing"]
    names = [part.strip().split(";")[0] for part in timing.split(",")]
    assert names == ["llm_ttft", "llm", "queue", "tts", "ttfa", "total"]
    assert "Server-Timing" in response.headers["access-control-expose-headers"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": "x" * 101}, 413, "text_too_long"),
        ({"text": "Hi", "voice": "en_US-nope-low"}, 404, "voice_not_found"),
        ({"text": "Hi", "speed": 9}, 422, "invalid_speed"),
        ({"txt": "Hi"}, 422, "invalid_request"),
        ({"text": "\U0001f600 **", "reply": False}, 422, "empty_text"),
    ],
)
def test_stream_refuses_bad_requests_with_the_usual_errors(
    voices_dir: Path, ollama: OllamaDouble, body: dict, status: int, code: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url, max_text_length=100)) as (_, client):
        response = client.post("/tts/stream", json=body)
        sse = client.post("/tts/sse", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    # Both streams start with their first event: a failure found before it (here even one found while
    # the turn ran, like empty_text) is the ordinary JSON error with its status.
    assert (sse.status_code, sse.json()["error"]["code"]) == (status, code)


def test_llm_failure_before_the_first_audio_is_an_ordinary_error(voices_dir: Path) -> None:
    settings = make_settings(voices_dir, down_url(), llm={"retry_attempts": 0})
    with serve(settings) as (_, client):
        response = client.post("/tts/stream", json={"text": "Hello"})
        sse = client.get("/tts/sse", params={"text": "Hello"})
        metrics = client.get("/metrics").text
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "llm_unavailable"
    assert sse.status_code == 503
    assert sse.headers["content-type"] == "application/json"
    assert sse.json()["error"]["code"] == "llm_unavailable"
    assert 'tts_turns_total{endpoint="stream",outcome="llm_unavailable"} 1.0' in metrics
    assert 'tts_turns_total{endpoint="sse",outcome="llm_unavailable"} 1.0' in metrics


def test_sse_event_sequence_and_audio(voices_dir: Path, ollama: OllamaDouble) -> None:
    word_tokens(ollama)
    with serve(make_settings(voices_dir, ollama.url, first_fragment_min_words=4)) as (_, client):
        reference = wav_pcm(client.post("/tts", json={"text": "Plan"}).content)[1]
        get = client.get("/tts/sse", params={"text": "Plan"})
        post = client.post("/tts/sse", json={"text": "Plan", "speed": 1.0})
    assert get.headers["content-type"].startswith("text/event-stream")
    for response in (get, post):
        events = sse_events(response.text)
        names = [name for name, _ in events]
        # the conversation, reply_text when each fragment is cut, its audio once synthesized, the final text,
        # metrics, done
        assert names == ["conversation"] + ["reply_text", "audio"] * len(SPOKEN) + ["reply_text", "metrics", "done"]
        assert events[0][1] == {"id": response.headers["x-conversation-id"]}
        texts = [data for name, data in events if name == "reply_text"]
        assert texts[0] == {"text": SPOKEN[0], "is_final": False}
        assert texts[-1] == {"text": " ".join(SPOKEN), "is_final": True}
        audio = [data for name, data in events if name == "audio"]
        assert [chunk["index"] for chunk in audio] == [0, 1, 2, 3]
        assert [chunk["text"] for chunk in audio] == SPOKEN
        assert {chunk["sample_rate"] for chunk in audio} == {22050}
        pcm = b"".join(base64.b64decode(chunk["audio"]) for chunk in audio)
        assert pcm == reference
        assert all(chunk["samples"] * 2 == len(base64.b64decode(chunk["audio"])) for chunk in audio)
        timings = events[-2][1]["timings"]
        assert set(timings) == {"llm", "tts", "queue", "engine_load_s", "voice_load_s", "total_s"}
        assert timings["llm"]["tokens"] == len(REPLY.split())
        assert timings["engine_load_s"] is None  # the engine was loaded at start-up
        assert timings["tts"]["syntheses"] == 4
        assert 0 < timings["tts"]["first_fragment_s"] <= timings["tts"]["time_to_first_audio_s"]
        done = events[-1][1]
        assert (done["chunks"], done["voice"], done["engine"], done["text"]) == (4, VOICE, "piper", " ".join(SPOKEN))


def test_client_leaving_a_stream_stops_the_llm_and_frees_the_worker(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate(free=1)  # the first fragment passes, the second is held inside its worker
    ollama.behaviour.reply = " ".join(f"Sentence number {i} is here." for i in range(40))
    ollama.behaviour.tokens = "words"
    ollama.behaviour.token_rate = 50.0  # 4 s of reply: still streaming when the client leaves
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, _):
        pipeline = server.app.state.service
        with httpx.Client(base_url=server.http_url, timeout=30) as client:
            with client.stream("POST", "/tts/stream", json={"text": "Talk"}) as response:
                chunks = response.iter_raw()  # kept: a dropped iterator would close the response
                assert next(chunks)[:4] == b"RIFF"
                wait_for(lambda: len(gate.sentences) == 2 and pipeline.pool.counters.running == 1, 3, lambda: (gate.sentences, pipeline.pool.counters))
        # The client is gone while the second fragment is being synthesized: the LLM request stops now...
        wait_for(lambda: ollama.aborted_streams == 1)
        assert pipeline.pool.counters.running == 1
        # ...and the worker once that sentence is done.
        gate.open.set()
        wait_for(lambda: pipeline.pool.counters.cancelled == 1 and pipeline.pool.counters.turns == 0)
        assert pipeline.pool.counters.running == 0 and pipeline.pool.limiter.borrowed_tokens == 0
        assert gate.sentences == ["Sentence number 0 is here.", "Sentence number 1 is here."]
        assert ollama.finished_streams == 0


def test_the_early_first_fragment_is_for_replies_a_given_text_is_cut_at_sentence_ends_only(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    text = "Of course my friend, here is the plan for today."
    word_tokens(ollama, text)
    with serve(make_settings(voices_dir, ollama.url, first_fragment_min_words=4)) as (_, client):
        reply = sse_events(client.post("/tts/sse", json={"text": "Plan?", "reply": True}).text)
        given = sse_events(client.post("/tts/sse", json={"text": text, "reply": False}).text)
    assert [data["text"] for name, data in reply if name == "audio"] == ["Of course my friend,", "here is the plan for today."]
    assert [data["text"] for name, data in given if name == "audio"] == [text]  # one synthesis: nothing to wait for
