"""SSML on every TTS route: real uvicorn, real Piper on the synthetic voice (whose lengths are exact), so
breaks are silences of exactly the asked length and the words around them are the plain text's audio."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from piper import PiperVoice, SynthesisConfig
from websockets.sync.client import connect
from wyoming.client import AsyncTcpClient
from wyoming.tts import Synthesize

from core.audio import float32_to_pcm16, resample
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import expected_samples
from tests.tts.conftest import LOW_VOICE, VOICE, make_settings, serve
from tests.tts.test_server import error_of
from tests.tts.test_streaming import sse_events, wav_pcm
from tests.tts.test_wyoming import audio_of, until

RATE = 22050




def samples(voices: Path, text: str, speed: float = 1.0) -> int:
    return expected_samples(voices / f"{VOICE}.onnx", text, length_scale=1.0 / speed)


def spoken(client, text: str, **fields: object) -> bytes:  # type: ignore[no-untyped-def]
    response = client.post("/tts", json={"text": text, "reply": False, **fields})
    assert response.status_code == 200, response.text
    rate, pcm = wav_pcm(response.content)
    assert rate == RATE
    return pcm


def silence(ms: int) -> bytes:
    return bytes(2 * round(ms * RATE / 1000))


def test_breaks_are_exact_silences_between_the_words_own_audio(voices: Path, ollama: OllamaDouble) -> None:
    markup = '<speak><break time="100ms"/>Hello there.<break time="500ms"/>How are you?<break strength="weak"/></speak>'
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": markup, "reply": False})
        hello, how = spoken(client, "Hello there."), spoken(client, "How are you?")
    assert response.status_code == 200, response.text
    assert unquote(response.headers["x-reply-text"]) == "Hello there. How are you?"
    assert "x-warnings" not in response.headers
    _, pcm = wav_pcm(response.content)
    assert len(hello) // 2 == samples(voices, "Hello there.")
    assert pcm == silence(100) + hello + silence(500) + how + silence(250)
    assert float(response.headers["x-audio-duration"]) == pytest.approx(len(pcm) / 2 / RATE, abs=0.0005)


def test_p_s_say_as_sub_and_emphasis_speak_their_words(voices: Path, ollama: OllamaDouble) -> None:
    markup = (
        '<speak><p><s>Call <say-as interpret-as="characters">NASA</say-as></s><s>at <sub alias="nine">9</sub>'
        "</s></p><emphasis>Now</emphasis></speak>"
    )
    with serve(make_settings(voices, ollama.url)) as (_, client):
        pcm = spoken(client, markup)
        plain = [spoken(client, text) for text in ("Call N A S A", "at nine", "Now")]
    assert pcm == b"".join(plain)  # one synthesis per sentence, as <p> and <s> cut them


def test_prosody_rate_scales_the_speed_and_nests(voices: Path, ollama: OllamaDouble) -> None:
    markup = '<speak>Normal.<prosody rate="50%">Slow.<prosody rate="x-fast">Faster.</prosody></prosody></speak>'
    with serve(make_settings(voices, ollama.url)) as (_, client):
        pcm = spoken(client, markup, speed=1.2)
        refused = client.post("/tts", json={"text": '<speak><prosody rate="x-slow">Hi</prosody></speak>', "speed": 0.8})
    assert len(pcm) // 2 == samples(voices, "Normal.", 1.2) + samples(voices, "Slow.", 0.6) + samples(voices, "Faster.", 0.9)
    assert refused.status_code == 422
    assert error_of(refused)["code"] == "invalid_speed"
    assert "speed 0.4 (speed 0.8 times <prosody rate> 0.5) is outside the allowed range 0.5 to 2" in error_of(refused)["message"]


def test_a_voice_of_another_rate_is_resampled_into_the_same_stream(voices: Path, ollama: OllamaDouble) -> None:
    markup = f'<speak>Hello there.<voice name="{LOW_VOICE}">How are you?</voice></speak>'
    low = PiperVoice.load(voices / f"{LOW_VOICE}.onnx")
    [chunk] = low.synthesize("How are you?", syn_config=SynthesisConfig())
    assert chunk.sample_rate == 16000
    resampled = float32_to_pcm16(resample(chunk.audio_float_array, 16000, RATE))
    with serve(make_settings(voices, ollama.url)) as (_, client):
        pcm = spoken(client, markup)
        hello = spoken(client, "Hello there.")
    # No gap and nothing lost at the join: the first voice's audio, then the second's resampled whole.
    assert pcm == hello + resampled
    assert len(resampled) // 2 == math.ceil(len(chunk.audio_float_array) * RATE / 16000)


def test_unknown_tags_are_spoken_as_text_and_reported(voices: Path, ollama: OllamaDouble) -> None:
    markup = '<speak>Hello <audio src="x.wav">there</audio>.</speak>'
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": markup, "reply": False})
        plain = spoken(client, "Hello there.")
    assert wav_pcm(response.content)[1] == plain
    assert json.loads(unquote(response.headers["x-warnings"])) == ["<audio> is not supported: its text is spoken as it is"]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"text": "<speak>Hi<break></speak>"}, 422, "invalid_ssml", "mismatched tag (line 1, column 19)"),
        ({"text": '<!DOCTYPE speak [<!ENTITY a "b">]><speak>&a;</speak>'}, 422, "invalid_ssml", "declares a DTD"),
        ({"text": "Hello", "text_format": "ssml"}, 422, "invalid_ssml", "syntax error (line 1, column 1)"),
        ({"text": '<speak><break time="30s"/>Hi</speak>'}, 422, "invalid_ssml", "10 s allowed (tts.max_break_s)"),
        ({"text": '<speak><break time="1s"/></speak>'}, 422, "empty_text", "no words to speak"),
        ({"text": "<speak>Hi</speak>", "reply": True}, 422, "invalid_request", "send it with reply false"),
        ({"text": '<speak><voice name="nobody">Hi</voice></speak>'}, 404, "voice_not_found", "unknown voice 'nobody'"),
    ],
)
def test_bad_ssml_is_refused_before_any_synthesis(
    voices: Path, ollama: OllamaDouble, body: dict, status: int, code: str, message: str
) -> None:
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/tts", json=body)
    assert response.status_code == status, response.text
    assert error_of(response)["code"] == code and message in error_of(response)["message"]


def test_text_format_text_reads_markup_as_words(voices: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices, ollama.url)) as (_, client):
        as_text = client.post("/tts", json={"text": "<speak>Hi</speak>", "reply": False, "text_format": "text"})
        as_ssml = spoken(client, "<speak>Hi</speak>")
    assert as_text.status_code == 200
    assert wav_pcm(as_text.content)[1] != as_ssml


def test_every_route_speaks_the_same_ssml(voices: Path, ollama: OllamaDouble) -> None:
    markup = '<speak>One two.<break time="300ms"/><prosody rate="fast">Three <foo>four</foo>.</prosody></speak>'
    warning = ["<foo> is not supported: its text is spoken as it is"]
    settings = make_settings(voices, ollama.url, wyoming={"enabled": True, "port": 0})
    with serve(settings) as (server, client):
        reference = spoken(client, markup)
        stream = client.post("/tts/stream", json={"text": markup, "reply": False}, headers={"Accept": "audio/pcm"})
        events = sse_events(client.get("/tts/sse", params={"text": markup, "reply": "false"}).text)
        openai = client.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": VOICE, "input": markup, "response_format": "pcm"}
        )
        with connect(f"{server.ws_url}/ws/tts", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connection"
            ws.send(json.dumps({"type": "text_input", "text": markup, "reply": False}))
            ws_pcm = b""
            while (message := json.loads(ws.recv(timeout=15)))["type"] != "generation_complete":
                assert message["type"] != "error", message
                if message["type"] == "audio_chunk":
                    ws_pcm += ws.recv(timeout=15)
        wyoming = asyncio.run(_wyoming(server.app.state.wyoming.port, markup))
    expected = samples(voices, "One two.") + round(0.3 * RATE) + samples(voices, "Three four.", 1.25)
    assert len(reference) // 2 == expected
    assert stream.content == reference and json.loads(unquote(stream.headers["x-warnings"])) == warning
    sse_audio = b"".join(base64.b64decode(data["audio"]) for name, data in events if name == "audio")
    assert sse_audio == reference and events[-1][1]["warnings"] == warning
    assert ws_pcm == reference and message["warnings"] == warning
    assert audio_of(wyoming)[1] == reference
    assert openai.status_code == 200 and json.loads(unquote(openai.headers["x-warnings"])) == warning
    # Resampled to OpenAI's 24 kHz: the same length, to within the resampler's filter delay.
    assert len(openai.content) / 2 / 24000 == pytest.approx(expected / RATE, abs=0.002)


async def _wyoming(port: int, markup: str) -> list:
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=15) as client:
        await client.write_event(Synthesize(text=markup).event())
        return await until(client, "audio-stop")


def test_ssml_pause_alone_between_voices_keeps_the_first_rate(voices: Path, ollama: OllamaDouble) -> None:
    # A break before any words waits for the first audio to know the rate: here the 16 kHz voice speaks
    # first, so the whole text (and its silences) is at 16 kHz.
    markup = f'<speak><voice name="{LOW_VOICE}"><break time="250ms"/>Hi.</voice><break time="1s"/></speak>'
    with serve(make_settings(voices, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": markup, "reply": False})
    rate, pcm = wav_pcm(response.content)
    words = expected_samples(voices / f"{LOW_VOICE}.onnx", "Hi.")
    assert rate == 16000
    assert len(pcm) // 2 == 4000 + words + 16000
    assert pcm[:8000] == bytes(8000) and pcm[-32000:] == bytes(32000)
    assert np.any(np.frombuffer(pcm[8000:-32000], dtype=np.int16))
