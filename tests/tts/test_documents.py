"""POST /v1/speech: documents of blocks (text or SSML, each with its voice, speed and pause), spoken at once
and streamed, on real uvicorn with the synthetic Piper voices (exact lengths)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import pytest

from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import expected_samples
from tests.tts.conftest import LOW_VOICE, VOICE, low_voice_at_22k, make_settings, serve
from tests.tts.test_streaming import wav_pcm

RATE = 22050

CHAPTER = (
    "It was a bright cold day in April. The clocks were striking thirteen. Winston Smith slipped quickly "
    "through the glass doors. A kind of hideous ecstasy of fear seemed to flow through the whole group."
)


def spoken(client, text: str, **fields: object) -> bytes:  # type: ignore[no-untyped-def]
    response = client.post("/tts", json={"text": text, "reply": False, **fields})
    assert response.status_code == 200, response.text
    return wav_pcm(response.content)[1]


def test_blocks_speak_in_order_with_their_voices_speeds_and_pauses(voices: Path, ollama: OllamaDouble) -> None:
    document = {
        "blocks": [
            {"text": "Chapter one.", "pause_after_ms": 750},
            {"text": "Hello there.", "voice": LOW_VOICE},
            {"ssml": '<speak>Fast <break time="100ms"/>now.</speak>', "speed": 1.5, "pause_after_ms": 0},
            {"text": "The end.", "speed": 0.8},
        ],
        "pause_after_ms": 200,
        "format": "wav",
    }
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/v1/speech", json=document)
        parts = [spoken(client, "Chapter one."), spoken(client, "Fast", speed=1.5), spoken(client, "now.", speed=1.5)]
        end = spoken(client, "The end.", speed=0.8)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-sample-rate"] == str(RATE)
    rate, pcm = wav_pcm(response.content)
    silence = {ms: bytes(2 * round(ms * RATE / 1000)) for ms in (750, 200, 100)}
    expected = (
        parts[0] + silence[750] + low_voice_at_22k(voices, "Hello there.") + silence[200]
        + parts[1] + silence[100] + parts[2] + end + silence[200]
    )  # fmt: skip
    assert rate == RATE and pcm == expected


def test_a_long_text_without_blocks_is_spoken_sentence_by_sentence(voices: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/v1/speech", json={"text": CHAPTER, "voice": VOICE})
        whole = spoken(client, CHAPTER)
    assert response.status_code == 200
    assert wav_pcm(response.content)[1] == whole
    assert len(whole) // 2 == expected_samples(voices / f"{VOICE}.onnx", CHAPTER)


def test_formats_and_output_rate(voices: Path, ollama: OllamaDouble) -> None:
    blocks = [{"text": "Hello there."}, {"text": "General Kenobi.", "voice": LOW_VOICE}]
    with serve(make_settings(voices, ollama.url)) as (_, client):
        wav = client.post("/v1/speech", json={"blocks": blocks})
        flac = client.post("/v1/speech", json={"blocks": blocks, "format": "flac"})
        pcm16k = client.post("/v1/speech", json={"blocks": blocks, "format": "pcm", "sample_rate": 16000})
        mp3 = client.post("/v1/speech", json={"blocks": blocks, "format": "mp3"})
    reference = wav_pcm(wav.content)[1]
    assert flac.headers["content-type"] == "audio/flac"
    with av.open(io.BytesIO(flac.content)) as container:
        decoded = b"".join(bytes(frame.to_ndarray().astype("<i2").tobytes()) for frame in container.decode(audio=0))
    assert decoded == reference  # lossless: the same samples
    assert pcm16k.headers["x-sample-rate"] == "16000"
    assert len(pcm16k.content) // 2 == pytest.approx(len(reference) // 2 * 16000 / RATE, abs=2)
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg" and mp3.content[:3] in (b"ID3", b"\xff\xfb")


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"blocks": [{"text": "a", "ssml": "<speak>b</speak>"}]}, 400, "invalid_request", "either 'text' or 'ssml'"),
        ({"blocks": [], "text": "Hi"}, 400, "invalid_request", "send either 'blocks' or 'text'"),
        ({"blocks": []}, 400, "invalid_request", "the document has no blocks"),
        ({"blocks": [{"text": "Hi"}, {"text": "Hi", "voice": "nobody"}]}, 404, "voice_not_found", "block 1: unknown voice"),
        ({"blocks": [{"text": "Hi", "engine": "xtts"}]}, 400, "invalid_request", "block 0: engine 'xtts' is not configured here; choose one of piper (tts.engines)"),
        ({"blocks": [{"text": "Hi", "speed": 9.0}]}, 400, "invalid_speed", "block 0: speed 9.0 is outside"),
        ({"blocks": [{"text": "Hi", "pause_after_ms": 20000}]}, 400, "invalid_request", "block 0: pause_after_ms 20000"),
        ({"blocks": [{"ssml": "<speak>Hi</p>"}]}, 400, "invalid_ssml", "block 0: the SSML is not well-formed"),
        ({"blocks": [{"text": "Hi"}] * 4}, 413, "request_too_large", "the document has 4 blocks; the limit is 3"),
        ({"text": "x" * 2001}, 413, "request_too_large", "send longer documents as a job: POST /v1/speech/jobs"),
        ({"blocks": [{"text": "Hi", "pause_after_ms": 0}], "format": "ogg"}, 400, "invalid_request", "format"),
    ],
)
def test_bad_documents_are_refused_naming_the_block(
    voices: Path, ollama: OllamaDouble, body: dict, status: int, code: str, message: str
) -> None:
    with serve(make_settings(voices, ollama.url, max_blocks=3)) as (_, client):
        response = client.post("/v1/speech", json=body)
    # Under /v1, errors have the OpenAI API's shape (core.openai_wire), as on /v1/audio/speech.
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error


def test_mixed_rates_join_without_a_gap(voices: Path, ollama: OllamaDouble) -> None:
    # The 16 kHz voice's audio resampled whole: nothing dropped or added at the joins on either side.
    blocks = [{"text": "One."}, {"text": "Two.", "voice": LOW_VOICE}, {"text": "Three."}]
    with serve(make_settings(voices, ollama.url)) as (_, client):
        pcm = wav_pcm(client.post("/v1/speech", json={"blocks": blocks}).content)[1]
        one, three = spoken(client, "One."), spoken(client, "Three.")
    two = low_voice_at_22k(voices, "Two.")
    assert pcm == one + two + three
    assert len(two) // 2 == math.ceil(expected_samples(voices / f"{LOW_VOICE}.onnx", "Two.") * RATE / 16000)
