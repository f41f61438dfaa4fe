"""Engines side by side: piper (a synthetic voice) and espeak-ng served by one TTS service, each request
choosing one; the default switched at run time; an idle engine unloaded and loaded again. Real uvicorn,
real engines; the idle clock is the host's own, driven by the test."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from structlog.testing import capture_logs

from core.config import Settings
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.tts.conftest import VOICE, make_settings, serve, wait_for
from tts.engines.espeak import EspeakEngine

TEXT = "Hello there."


def frames(response: httpx.Response) -> tuple[int, bytes]:
    with wave.open(io.BytesIO(response.content)) as reader:
        return reader.getframerate(), reader.readframes(reader.getnframes())


def espeak_samples(text: str) -> int:
    """How many samples espeak-ng says `text` in with its default voice, straight from the engine."""
    engine = EspeakEngine(Settings())
    return sum(len(chunk.samples) for chunk in engine.synthesize(text, "en-us", 1.0))


def near_espeak(samples: int, text: str = TEXT) -> bool:
    """As long as espeak-ng's speech of `text`: its length varies by a few milliseconds from run to run (and
    is nowhere near the synthetic Piper voice's)."""
    reference = espeak_samples(text)
    return abs(samples - reference) <= reference // 50


def is_espeak(response: httpx.Response, text: str = TEXT) -> bool:
    rate, pcm = frames(response)
    return rate == 22050 and near_espeak(len(pcm) // 2, text) and response.headers["x-engine"] == "espeak"


def settings(voices_dir: Path, ollama: OllamaDouble, **tts: Any) -> Settings:
    return make_settings(voices_dir, ollama.url, engines=["espeak"], reply_default=False, **tts)


def engines_of(client: httpx.Client) -> dict[str, dict[str, Any]]:
    body = client.get("/v1/engines").json()
    return {engine["name"]: engine for engine in body["engines"]}


def test_each_request_picks_its_engine(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        listed = engines_of(client)
        assert list(listed) == ["piper", "espeak"]
        assert {name: (e["state"], e["default"]) for name, e in listed.items()} == {
            "piper": ("ready", True),
            "espeak": ("unloaded", False),
        }
        assert (listed["piper"]["voices"], listed["piper"]["sample_rate"], listed["piper"]["cloning"]) == (1, 22050, False)
        assert listed["espeak"]["voices"] is None  # not loaded yet: nothing is known of its voices

        piper = client.post("/tts", json={"text": TEXT})
        espeak = client.post("/tts", json={"text": TEXT, "engine": "espeak"})
        again = client.post("/tts", json={"text": TEXT, "engine": "espeak"})
        listed = engines_of(client)
    assert piper.headers["x-engine"] == "piper" and piper.headers["x-voice"] == VOICE
    rate, pcm = frames(piper)
    assert (rate, len(pcm) // 2) == (22050, expected_samples(voices_dir / f"{VOICE}.onnx", TEXT))
    assert (espeak.headers["x-engine"], espeak.headers["x-voice"]) == ("espeak", "en-us")  # its own default voice
    assert not near_espeak(expected_samples(voices_dir / f"{VOICE}.onnx", TEXT))  # the two are told apart
    assert is_espeak(espeak)
    # The first espeak request loaded it, and says so; the next one did not wait.
    assert "engine_load;dur=" in espeak.headers["server-timing"]
    assert "engine_load" not in again.headers["server-timing"] and "engine_load" not in piper.headers["server-timing"]
    espeak_info = listed["espeak"]
    assert espeak_info["state"] == "ready" and espeak_info["sample_rate"] == 22050
    assert espeak_info["voices"] > 50 and "de" in espeak_info["languages"] and espeak_info["streaming"] is True


def test_every_protocol_takes_the_engine(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (server, client):
        stream = client.post("/tts/stream", json={"text": TEXT, "engine": "espeak"}, headers={"accept": "audio/pcm"})
        events = client.get("/tts/sse", params={"text": TEXT, "engine": "espeak"}).text
        openai = OpenAI(base_url=f"{server.http_url}/v1", api_key="x")
        speech = openai.audio.speech.with_raw_response.create(
            model="espeak", voice="alloy", input=TEXT, response_format="pcm"
        )
        models = [model.id for model in openai.models.list().data]
        with pytest.raises(Exception) as refused:
            openai.audio.speech.create(model="xtts", voice="alloy", input=TEXT)
    assert stream.headers["x-engine"] == "espeak"
    assert near_espeak(len(stream.content) // 2)
    done = json.loads(events.strip().split("\n\n")[-1].split("data: ", 1)[1])
    assert done["engine"] == "espeak"
    assert speech.headers["x-engine"] == "espeak"
    assert models == ["tts-1", "gpt-4o-mini-tts", "tts-1-hd", "piper", "espeak", "whisper-1"]
    assert getattr(refused.value, "status_code", None) == 404
    assert "available models: tts-1, gpt-4o-mini-tts, tts-1-hd, piper, espeak" in str(refused.value)


def test_an_engine_not_configured_is_refused_naming_those_that_are(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        response = client.post("/tts", json={"text": TEXT, "engine": "xtts"})
    assert response.status_code == 422  # invalid_request, as every bad field is
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "engine 'xtts' is not configured here; choose one of piper, espeak (tts.engines)"


def test_switching_the_default_engine_is_reported_and_logged(voices_dir: Path, ollama: OllamaDouble) -> None:
    app_settings = settings(voices_dir, ollama)
    with serve(app_settings) as (_, client):
        with capture_logs() as logs:
            switched = client.put("/v1/engines/default", json={"engine": "espeak"})
        health = client.get("/health").json()
        spoken = client.post("/tts", json={"text": TEXT})
        piper = client.post("/tts", json={"text": TEXT, "engine": "piper"})
        unknown = client.put("/v1/engines/default", json={"engine": "groq"})
    assert switched.status_code == 200
    body = switched.json()
    assert (body["default"], body["engine"]["state"], body["engine"]["default"]) == ("espeak", "ready", True)
    assert [(e["engine"], e["previous"]) for e in logs if e["event"] == "default_engine_changed"] == [("espeak", "piper")]
    assert (health["engine"], health["configured_engine"], health["voice"]) == ("espeak", "espeak", "en-us")
    assert health["engines"] == {"piper": "ready", "espeak": "ready"}
    assert spoken.headers["x-engine"] == "espeak" and piper.headers["x-engine"] == "piper"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "engine"


def test_an_idle_engine_is_unloaded_and_loaded_again(voices_dir: Path, ollama: OllamaDouble) -> None:
    now = [1000.0]
    with serve(settings(voices_dir, ollama, idle_unload_s=60)) as (server, client):
        host = server.app.state.service.engines
        host.clock = lambda: now[0]
        client.post("/tts", json={"text": TEXT, "engine": "espeak"})  # both used at 1000
        now[0] += 30
        client.post("/tts", json={"text": TEXT})  # piper used at 1030
        now[0] += 40  # 1070: espeak idle 70 s, piper 40 s
        with capture_logs() as logs:
            piper = client.post("/tts", json={"text": TEXT, "engine": "piper"})
            states = {name: e["state"] for name, e in engines_of(client).items()}
            health = client.get("/health").json()
            espeak = client.post("/tts", json={"text": TEXT, "engine": "espeak"})
            now[0] += 61  # 1131: both idle 61 s; the espeak request touches espeak first
            espeak_again = client.post("/tts", json={"text": TEXT, "engine": "espeak"})
            idle_health = client.get("/health").json()
            default = client.post("/tts", json={"text": TEXT})
    assert states == {"piper": "ready", "espeak": "unloaded"} and health["engines"] == states
    unloaded = [(e["engine"], e["idle_s"]) for e in logs if e["event"] == "engine_unloaded"]
    assert unloaded == [("espeak", 70.0), ("piper", 61.0)]
    assert "engine_load" not in piper.headers["server-timing"]
    # The first request after an unload says so in its timings, and speaks exactly as before.
    assert "engine_load;dur=" in espeak.headers["server-timing"] and is_espeak(espeak)
    assert "engine_load" not in espeak_again.headers["server-timing"]
    assert idle_health["engines"] == {"piper": "unloaded", "espeak": "ready"} and idle_health["status"] == "ok"
    assert "engine_load;dur=" in default.headers["server-timing"] and default.headers["x-engine"] == "piper"
    assert frames(default) == (22050, frames(piper)[1])


def test_preload_starts_every_engine_and_a_broken_one_says_why(voices_dir: Path, ollama: OllamaDouble) -> None:
    app_settings = make_settings(voices_dir, ollama.url, engines=["espeak", "groq"], preload=True, reply_default=False)
    with serve(app_settings) as (server, client):
        engines = server.app.state.service.engines
        wait_for(lambda: engines.slots["groq"].state == "unavailable")
        listed = engines_of(client)
        refused = client.post("/tts", json={"text": TEXT, "engine": "groq"})
        health = client.get("/health").json()
    assert {name: e["state"] for name, e in listed.items()} == {"piper": "ready", "espeak": "ready", "groq": "unavailable"}
    groq = listed["groq"]
    assert groq["reason"].startswith("the groq engine cannot start: ") and "api_key" in groq["reason"]
    assert groq["fix"] == "fix the cause named in reason and restart the service"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_unavailable"
    assert health["status"] == "degraded" and health["reasons"] == [f"{groq['reason']}; requests for it fail"]
    assert health["engines"] == {"piper": "ready", "espeak": "ready", "groq": "unavailable"}


def test_an_idle_voice_is_unloaded_while_its_engine_serves(voices_dir: Path, ollama: OllamaDouble) -> None:
    build_piper_voice(voices_dir, "en_GB-second-low")
    now = [1000.0]
    with serve(settings(voices_dir, ollama, idle_unload_s=60)) as (server, client):
        server.app.state.service.engines.clock = lambda: now[0]
        client.post("/tts", json={"text": TEXT})  # en_US-test-medium at 1000
        now[0] += 30
        client.post("/tts", json={"text": TEXT, "voice": "en_GB-second-low"})  # at 1030
        now[0] += 40  # 1070: the first voice idle 70 s, the second 40 s, the engine 40 s
        with capture_logs() as logs:
            again = client.post("/tts", json={"text": TEXT, "voice": "en_GB-second-low"})
            loaded = {voice["name"]: voice["loaded"] for voice in client.get("/v1/voices?engine=piper").json()["voices"]}
            health = client.get("/health").json()
            first = client.post("/tts", json={"text": TEXT})
    assert [e["voice"] for e in logs if e["event"] == "voice_unloaded"] == [VOICE]
    assert loaded == {"en_GB-second-low": True, VOICE: False} and health["voice_loaded"] is False
    assert [e["voice"] for e in logs if e["event"] == "voice_loaded"] == [VOICE]  # loaded again when asked for
    assert again.status_code == first.status_code == 200
    assert len(frames(first)[1]) // 2 == expected_samples(voices_dir / f"{VOICE}.onnx", TEXT)
    # The first request after says so in its timings; the one with the voice still loaded does not.
    assert "voice_load;dur=" in first.headers["server-timing"] and "voice_load" not in again.headers["server-timing"]
    turns = [entry for entry in logs if entry["event"] == "turn"]
    assert "voice_load_s" not in turns[0] and turns[-1]["voice_load_s"] > 0


def test_a_document_of_another_engine_speaks_while_the_default_is_unloaded(voices_dir: Path, ollama: OllamaDouble) -> None:
    now = [1000.0]
    document = {"blocks": [{"text": TEXT, "engine": "espeak"}], "format": "wav"}
    with serve(settings(voices_dir, ollama, idle_unload_s=60)) as (server, client):
        server.app.state.service.engines.clock = lambda: now[0]
        client.post("/tts", json={"text": TEXT})  # piper, the default, used at 1000
        now[0] += 61  # the next request's sweep unloads piper: nothing but the document's engine is needed
        spoken = client.post("/v1/speech", json=document)
        states = {name: e["state"] for name, e in engines_of(client).items()}
    assert spoken.status_code == 200, spoken.text
    assert states == {"piper": "unloaded", "espeak": "ready"}
    assert near_espeak(len(frames(spoken)[1]) // 2)
