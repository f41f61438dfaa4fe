"""POST /v1/audio/speech and the discovery routes, driven by the real `openai` package (and by the exact
request shapes of Open WebUI, Home Assistant and LibreChat), against a real TTS server."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from openai import OpenAI

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for

TEXT = "Hello there. How are you today?"
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# What each codec adds at the end of a stream (its encoder delay and frame padding), at most.
PADDING_S = {"mp3": 0.06, "aac": 0.09, "opus": 0.0, "flac": 0.0, "wav": 0.0}


def client_for(server: Any) -> OpenAI:
    return OpenAI(base_url=f"{server.http_url}/v1", api_key="not-needed", max_retries=0)


def decoded(data: bytes) -> tuple[float, int, int]:
    """(seconds, codec sample rate, channels) of an encoded stream, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate, stream.codec_context.sample_rate, stream.codec_context.channels


def spoken_seconds(voices_dir: Path, text: str) -> float:
    return expected_samples(voices_dir / f"{VOICE}.onnx", text) / 22050


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_every_response_format_decodes_to_the_spoken_length_at_24_khz(
    voices_dir: Path, ollama: OllamaDouble, fmt: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        response = client_for(server).audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    assert response.response.headers["content-type"] == CONTENT_TYPES[fmt]
    assert response.response.headers["transfer-encoding"] == "chunked"
    expected = spoken_seconds(voices_dir, TEXT)
    if fmt == "pcm":  # raw 16-bit little-endian mono at 24 kHz, as OpenAI's clients assume
        assert response.response.headers["x-sample-rate"] == "24000"
        assert len(response.content) % 2 == 0
        assert len(response.content) / 2 / 24000 == pytest.approx(expected, abs=0.002)
        return
    seconds, rate, channels = decoded(response.content)
    assert (rate, channels) == ((48000 if fmt == "opus" else 24000), 1)  # Opus decodes at 48 kHz by design
    assert expected - 0.002 <= seconds <= expected + PADDING_S[fmt] + 0.002


def test_the_first_bytes_arrive_before_the_last_sentence_is_synthesized(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate(free=1)  # the first sentence passes; the second is held inside its worker
    with serve(make_settings(voices_dir, ollama.url), engine_factory=gated_factory(gate)) as (server, _):
        speech = client_for(server).audio.speech
        with speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT, response_format="mp3") as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            assert first[:3] == b"ID3" or first[0] == 0xFF, "an MP3 stream starts"
            assert gate.entered.is_set() and len(gate.sentences) == 2, "the last sentence is still being synthesized"
            gate.open.set()
            rest = b"".join(chunks)
    seconds, _, _ = decoded(first + rest)
    assert seconds == pytest.approx(spoken_seconds(voices_dir, TEXT), abs=0.07)


def test_opus_streams_its_first_page_before_the_last_sentence_too(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate(free=1)
    with serve(make_settings(voices_dir, ollama.url), engine_factory=gated_factory(gate)) as (server, _):
        with httpx.stream(
            "POST", f"{server.http_url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "opus"}
        ) as response:
            received = b""
            parts = response.iter_raw()
            for part in parts:
                received += part
                if b"OpusTags" in received and len(received) > 400:
                    break  # headers and audio pages of the first sentence
            assert len(gate.sentences) == 2 and not gate.open.is_set()
            gate.open.set()
            received += b"".join(parts)
    assert decoded(received)[0] == pytest.approx(spoken_seconds(voices_dir, TEXT), abs=0.002)


def test_sse_stream_format_sends_deltas_then_done_with_usage(voices_dir: Path, ollama: OllamaDouble) -> None:
    body = {"model": "gpt-4o-mini-tts", "voice": "nova", "input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    with serve(make_settings(voices_dir, ollama.url)) as (server, client):
        response = client.post("/v1/audio/speech", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas, done = events[:-1], events[-1]
    assert {event["type"] for event in deltas} == {"speech.audio.delta"} and len(deltas) >= 2
    pcm = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert len(pcm) / 2 / 24000 == pytest.approx(spoken_seconds(voices_dir, TEXT), abs=0.002)
    assert done == {"type": "speech.audio.done", "usage": {"input_tokens": 8, "output_tokens": 0, "total_tokens": 8}}


def test_openai_voice_names_map_through_the_config_and_our_names_work_as_they_are(tmp_path: Path, ollama: OllamaDouble) -> None:
    voices = tmp_path / "voices"
    build_piper_voice(voices, VOICE)
    build_piper_voice(voices, "en_GB-other-low", sample_rate=16000)
    settings = make_settings(voices, ollama.url, openai={"voices": {"nova": "en_GB-other-low"}})
    with serve(settings) as (server, client):
        mapped = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "nova", "input": "Hi.", "response_format": "wav"})
        unmapped = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "onyx", "input": "Hi.", "response_format": "wav"})
        ours = client.post("/v1/audio/speech", json={"model": "piper", "voice": {"id": "en_GB-other-low"}, "input": "Hi."})
        listed = client.get("/v1/audio/voices").json()
    assert (mapped.status_code, mapped.headers["x-voice"]) == (200, "en_GB-other-low")
    assert (unmapped.status_code, unmapped.headers["x-voice"]) == (200, VOICE)  # left out: the default voice
    assert (ours.status_code, ours.headers["x-voice"], ours.headers["content-type"]) == (200, "en_GB-other-low", "audio/mpeg")
    assert {"id": "en_GB-other-low", "name": "en_GB-other-low"} in listed["voices"]
    assert {"id": "nova", "name": "nova (en_GB-other-low)"} in listed["voices"]
    assert {"id": "alloy", "name": f"alloy ({VOICE})"} in listed["voices"]


def test_discovery_routes_answer_as_clients_read_them(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, client):
        listed = client_for(server).models.list()
        audio_models = client.get("/v1/audio/models").json()
    ids = [model.id for model in listed.data]
    assert ids == ["tts-1", "gpt-4o-mini-tts", "tts-1-hd", "piper", "whisper-1"]
    assert {model.object for model in listed.data} == {"model"} and {model.owned_by for model in listed.data} == {"voice-assistant"}
    assert audio_models == {"models": [{"id": name, "name": name} for name in ids[:-1]]}


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "fragment"),
    [
        ({"model": "tts-9", "voice": "alloy", "input": "Hi"}, 404, "model", "model_not_found", "available models: tts-1"),
        ({"model": "xtts", "voice": "alloy", "input": "Hi"}, 404, "model", "model_not_found", "piper"),
        ({"model": "tts-1", "voice": "en_US-nope-low", "input": "Hi"}, 404, "voice", "voice_not_found", VOICE),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi", "speed": 5}, 400, "speed", "invalid_request", "less than or equal to 4"),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi", "speed": 3.0}, 400, "speed", "invalid_speed", "0.5 to 2"),
        ({"model": "tts-1", "voice": "alloy", "input": "x" * 101}, 400, "input", "text_too_long", "the limit is 100"),
        ({"model": "tts-1", "voice": "alloy", "input": "  "}, 400, "input", "empty_text", "text is empty"),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi", "response_format": "ogg"}, 400, "response_format", "invalid_request", "'response_format'"),
        ({"model": "tts-1", "voice": "alloy"}, 400, "input", "invalid_request", "'input' is required"),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi", "colour": 1}, 400, "colour", "invalid_request", "unknown field 'colour'"),
    ],
)
def test_errors_have_openais_shape_and_status(
    voices_dir: Path, ollama: OllamaDouble, body: dict, status: int, param: str | None, code: str, fragment: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url, max_text_length=100)) as (_, client):
        response = client.post("/v1/audio/speech", json=body)
        native = client.post("/tts", json={"text": "x" * 101})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert fragment in error["message"]
    assert native.json() == {"error": {"code": "text_too_long", "message": native.json()["error"]["message"]}}


def test_the_openai_client_raises_its_own_error_types(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (server, _):
        speech = client_for(server).audio.speech
        with pytest.raises(openai.NotFoundError) as unknown:
            speech.create(model="tts-1", voice="en_US-nope-low", input="Hi")
        with pytest.raises(openai.BadRequestError) as bad:
            speech.create(model="tts-1", voice="alloy", input="Hi", speed=9)
    assert unknown.value.body["code"] == "voice_not_found" and VOICE in unknown.value.body["message"]
    assert bad.value.body["param"] == "speed"


def test_a_busy_service_answers_503_with_retry_after(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    settings = make_settings(voices_dir, ollama.url, max_concurrent=1, queue_timeout_s=0.2, retry_after_s=7)
    with serve(settings, engine_factory=gated_factory(gate)) as (server, client):
        holder = threading.Thread(target=lambda: client.post("/tts", json={"text": "Hold.", "reply": False}), daemon=True)
        holder.start()
        wait_for(gate.entered.is_set)
        response = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi"})
        gate.open.set()
        holder.join(10)
    assert (response.status_code, response.headers["retry-after"]) == (503, "7")
    assert response.json()["error"]["type"] == "server_error" and response.json()["error"]["code"] == "engine_busy"


def test_the_request_shapes_of_open_webui_home_assistant_and_librechat(voices_dir: Path, ollama: OllamaDouble) -> None:
    open_webui = {"input": TEXT, "voice": "alloy", "model": "tts-1"}
    home_assistant = {"model": "tts-1", "voice": "nova", "input": TEXT, "instructions": "None", "speed": 1.0, "response_format": "opus"}
    librechat = {"input": TEXT, "model": "tts-1", "voice": "echo"}  # no response_format: mp3 is expected
    expected = spoken_seconds(voices_dir, TEXT)
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        answers = {name: client.post("/v1/audio/speech", json=body) for name, body in [("open_webui", open_webui), ("home_assistant", home_assistant), ("librechat", librechat)]}
    assert {name: (r.status_code, r.headers["content-type"]) for name, r in answers.items()} == {
        "open_webui": (200, "audio/mpeg"),
        "home_assistant": (200, "audio/ogg"),
        "librechat": (200, "audio/mpeg"),
    }
    for response in answers.values():
        assert expected - 0.002 <= decoded(response.content)[0] <= expected + 0.062
