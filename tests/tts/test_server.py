"""The TTS service over real HTTP: real uvicorn, real Piper on a synthetic voice, real espeak-ng, and a
real HTTP Ollama double."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import time
import wave
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.fixtures.piper_voice import build_piper_voice, expected_samples
from tests.tts.conftest import VOICE, make_settings, serve


def read_wav(data: bytes) -> tuple[int, int, int, int]:
    """(channels, sample width, rate, frames), after checking the header's sizes against the bytes."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert data[36:40] == b"data"
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44
    with wave.open(io.BytesIO(data)) as reader:
        return reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"code", "message"}
    return body["error"]


# -- speaking ----------------------------------------------------------------------------------------


def test_reply_false_speaks_the_text_as_an_exact_in_memory_wav(voices_dir: Path, ollama: OllamaDouble) -> None:
    text = "Hello world. How are you?"
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": text, "reply": False})
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert read_wav(response.content) == (1, 2, 22050, expected_samples(voices_dir / f"{VOICE}.onnx", text))
    assert unquote(response.headers["x-reply-text"]) == text
    assert response.headers["x-voice"] == VOICE and response.headers["x-engine"] == "piper"
    assert ollama.chat_requests == []


def test_reply_true_speaks_the_llm_answer(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = "Grüße aus Köln! Ça va très bien, merci."
    ollama.behaviour.pieces = 6
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
    assert response.status_code == 200
    header = response.headers["x-reply-text"]
    assert header.isascii() and "%C3%BC" in header  # percent-encoded UTF-8
    assert unquote(header, encoding="utf-8") == "Grüße aus Köln! Ça va très bien, merci."
    frames = read_wav(response.content)[3]
    assert frames == expected_samples(voices_dir / f"{VOICE}.onnx", "Grüße aus Köln! Ça va très bien, merci.")
    assert ollama.chat_requests[0]["messages"][-1] == {"role": "user", "content": "Hello"}


def test_reply_default_comes_from_the_config(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url, reply_default=False)) as (_, client):
        response = client.post("/tts", json={"text": "Just read me."})
    assert unquote(response.headers["x-reply-text"]) == "Just read me."
    assert ollama.chat_requests == []


def test_markdown_and_emoji_in_a_reply_are_not_spoken(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = "**Sure!** Here you go 😀"
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": "Hi"})
    assert unquote(response.headers["x-reply-text"]) == "Sure! Here you go"
    assert read_wav(response.content)[3] == expected_samples(voices_dir / f"{VOICE}.onnx", "Sure! Here you go")


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_scales_the_length_exactly(voices_dir: Path, ollama: OllamaDouble, speed: float) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": "Speed test.", "reply": False, "speed": speed})
    assert read_wav(response.content)[3] == expected_samples(voices_dir / f"{VOICE}.onnx", "Speed test.", 1 / speed)


def test_other_voice_and_new_voice_dropped_in(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        assert client.get("/voices").json() == {"voices": [VOICE], "default": VOICE, "engine": "piper"}
        missing = client.post("/tts", json={"text": "Hi.", "reply": False, "voice": "de_DE-new-low"})
        assert missing.status_code == 404
        build_piper_voice(voices_dir, "de_DE-new-low", sample_rate=16000)
        assert client.get("/voices").json()["voices"] == ["de_DE-new-low", VOICE]
        response = client.post("/tts", json={"text": "Hallo.", "reply": False, "voice": "de_DE-new-low"})
    assert response.status_code == 200
    assert read_wav(response.content)[2] == 16000


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"text": ""}, 422, "empty_text", "text is empty"),
        ({"text": "  \n\t "}, 422, "empty_text", "text is empty"),
        ({"text": "x" * 101}, 413, "text_too_long", "the limit is 100 (tts.max_text_length)"),
        ({"text": "Hi", "voice": "../../etc/passwd"}, 422, "invalid_voice_name", "never a path"),
        ({"text": "Hi", "voice": "/abs/voice"}, 422, "invalid_voice_name", "not a plain voice name"),
        ({"text": "Hi", "voice": "en_US-nope-low"}, 404, "voice_not_found", "available voices: en_US-test-medium"),
        ({"text": "Hi", "speed": 0.1}, 422, "invalid_speed", "allowed range 0.5 to 2"),
        ({"text": "Hi", "speed": 3}, 422, "invalid_speed", "allowed range 0.5 to 2"),
        ({"text": 5}, 422, "invalid_request", "'text': Input should be a valid string"),
        ({"text": "Hi", "reply": "yes"}, 422, "invalid_request", "'reply': Input should be a valid boolean"),
        ({"txt": "Hi"}, 422, "invalid_request", "'text' is required; unknown field 'txt'"),
        (["Hi"], 422, "invalid_request", "valid dictionary"),
        ({"text": "🙂🙂"}, 422, "empty_text", "nothing speakable"),
    ],
)
def test_bad_requests_get_clear_errors(
    voices_dir: Path, ollama: OllamaDouble, body: object, status: int, code: str, fragment: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url, max_text_length=100, reply_default=False)) as (_, client):
        response = client.post("/tts", json=body)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("content", "code", "fragment"),
    [
        (b'{"text": "Hi"', "invalid_json", "not valid JSON"),
        (b"", "invalid_json", "body is empty"),
        (b'{"text": "Hi", "speed": NaN}', "invalid_json", "NaN, which is not a JSON value"),
        (b"\xff\xfe{", "invalid_json", "not UTF-8"),
    ],
)
def test_malformed_bodies_are_422(
    voices_dir: Path, ollama: OllamaDouble, content: bytes, code: str, fragment: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert error_of(response)["code"] == code and fragment in error_of(response)["message"]


def test_oversized_body_is_refused_before_parsing(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url, max_text_length=10)) as (_, client):
        response = client.post("/tts", content=json.dumps({"text": "x" * 10_000}))
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_unknown_route_and_method_keep_the_error_shape(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        assert error_of(client.post("/voices"))["code"] == "method_not_allowed"
        assert error_of(client.get("/nope.json"))["code"] == "not_found"
        assert client.get("/").headers["content-type"].startswith("text/html")  # the dashboard


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        # The dashboard's files answer only what no route does: GET /tts is the route's 405, not their 404.
        ("GET", "/tts", "POST"),
        ("PUT", "/tts", "POST"),
        ("GET", "/tts/stream", "POST"),
        # A path with a route per method names them all.
        ("PUT", "/tts/sse", "GET, POST"),
        ("POST", "/v1/conversations/abcdefgh12", "GET, DELETE"),
        ("DELETE", "/voices", "GET"),
        ("GET", "/v1/audio/speech", "POST"),
    ],
)
def test_a_wrong_method_is_405_naming_every_allowed_method(
    voices_dir: Path, ollama: OllamaDouble, method: str, path: str, allowed: str
) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.request(method, path)
    assert (response.status_code, response.headers["allow"]) == (405, allowed)
    body = response.json()["error"]
    assert body["code"] == "method_not_allowed"
    assert body["message"] == f"{method} is not allowed on {path}; use {allowed.replace(', ', ' or ')}"


# -- the LLM -----------------------------------------------------------------------------------------


def test_ollama_down_gives_503_but_reply_false_keeps_working(voices_dir: Path) -> None:
    url = down_url()
    with serve(make_settings(voices_dir, url)) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "llm_unavailable"
        assert "ollama serve" in error["message"] and "llm.url" in error["message"] and url in error["message"]
        assert client.post("/tts", json={"text": "Hello", "reply": False}).status_code == 200
        health = client.get("/health").json()
    assert health["status"] == "degraded" and health["ollama"] is False
    assert any("Ollama is not reachable" in reason for reason in health["reasons"])


def test_unknown_model_says_ollama_pull(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(voices_dir, ollama.url, llm={"model": "qwen2.5:0.5b"})
    with serve(settings) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
        health = client.get("/health").json()
    assert response.status_code == 503
    assert error_of(response)["code"] == "llm_model_not_found"
    assert "`ollama pull qwen2.5:0.5b`" in error_of(response)["message"]
    assert len(ollama.chat_requests) == 1  # not retried
    assert health["ollama"] is True and health["llm_model_available"] is False and health["status"] == "degraded"


def test_ollama_server_error_is_retried_then_502_llm_error(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.fail_status = 500
    ollama.behaviour.fail_times = -1
    with serve(make_settings(voices_dir, ollama.url, llm={"retry_attempts": 2})) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
    assert response.status_code == 502 and error_of(response) == {
        "code": "llm_error",
        "message": "Ollama failed: it answered 500 (llama runner process has terminated) after 3 attempts; "
        "check the Ollama log, and that the model loads (`ollama run llama3.2:3b`)",
    }
    assert len(ollama.chat_requests) == 3


def test_slow_ollama_times_out_with_504(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.delay_s = 0.4
    with serve(make_settings(voices_dir, ollama.url, llm={"timeout_s": 0.5})) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
    assert response.status_code == 504
    assert error_of(response)["code"] == "llm_timeout"


def test_ollama_error_status_from_the_model(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.fail_status = 400
    ollama.behaviour.fail_times = -1
    ollama.behaviour.fail_message = "invalid option num_ctx"
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.post("/tts", json={"text": "Hello"})
    assert response.status_code == 502
    assert error_of(response) == {
        "code": "llm_error",
        "message": "Ollama refused the request (400: invalid option num_ctx); check llm.model and llm.options",
    }


@pytest.mark.parametrize("tokens", ["pieces", "words"])
def test_a_reply_with_nothing_speakable_is_the_models_error_not_the_clients(
    voices_dir: Path, ollama: OllamaDouble, tokens: str
) -> None:
    ollama.behaviour.reply = "```python\nprint('Hello. World!')\n```"
    ollama.behaviour.tokens = tokens
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        whole = client.post("/tts", json={"text": "Write me some code"})
        streamed = client.post("/tts/stream", json={"text": "Write me some code"})
        # The client's own text with nothing speakable is still the client's error.
        own = client.post("/tts/stream", json={"text": "```python\nprint('x')\n```", "reply": False})
    message = (
        "the model 'llama3.2:3b''s reply had nothing speakable (only code or symbols); "
        "try again or adjust llm.system_prompt"
    )
    for response in (whole, streamed):
        assert response.status_code == 502
        assert error_of(response) == {"code": "llm_error", "message": message}
    assert own.status_code == 422
    assert error_of(own)["code"] == "empty_text"


# -- health, voices, dashboard -----------------------------------------------------------------------


def test_health_reports_everything_and_caches_the_ollama_check(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(voices_dir, ollama.url, llm={"health_cache_s": 60})
    with serve(settings) as (_, client):
        deadline = time.monotonic() + 5
        while ollama.tags_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        bodies = [client.get("/health").json() for _ in range(5)]
    health = bodies[-1]
    assert health["status"] == "ok" and health["reasons"] == []
    assert health["ollama"] is True and health["llm_model_available"] is True
    assert health["environment"] == "development"
    assert (health["engine"], health["voice"], health["voice_loaded"], health["fallback"]) == (
        "piper",
        VOICE,
        True,
        False,
    )
    assert ollama.tags_requests == 1  # cached: one check at start-up serves all five


def test_dashboard_is_served_at_the_root(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(make_settings(voices_dir, ollama.url)) as (_, client):
        response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    # No CDN: no script or stylesheet comes from another origin.
    external = r"""<(script|link)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//"""
    assert not re.search(external, response.text, re.IGNORECASE)


# -- engines at start-up -----------------------------------------------------------------------------


def test_missing_voice_is_downloaded_at_first_start(tmp_path: Path, ollama: OllamaDouble) -> None:
    """The downloader is injected (it copies a synthetic voice) so the test never depends on the network."""
    source = build_piper_voice(tmp_path / "source", "en_US-lessac-medium")
    calls: list[str] = []

    def downloader(name: str, folder: Path) -> None:
        calls.append(name)
        shutil.copy(source, folder / f"{name}.onnx")
        shutil.copy(source.with_suffix(".onnx.json"), folder / f"{name}.onnx.json")

    settings = make_settings(tmp_path / "voices", ollama.url, voice=None)
    with serve(settings, engine_options={"piper": {"downloader": downloader}}) as (_, client):
        health = client.get("/health").json()
        response = client.post("/tts", json={"text": "Downloaded.", "reply": False})
    assert calls == ["en_US-lessac-medium"]
    assert health["engine"] == "piper" and health["voice"] == "en_US-lessac-medium" and health["voice_loaded"]
    assert response.status_code == 200


def test_failed_download_falls_back_to_espeak_and_reports_degraded(tmp_path: Path, ollama: OllamaDouble) -> None:
    """The downloader is injected to fail as it does offline, independent of the test machine's network."""

    def offline(name: str, folder: Path) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    settings = make_settings(tmp_path / "voices", ollama.url, voice=None)
    with serve(settings, engine_options={"piper": {"downloader": offline}}) as (_, client):
        health = client.get("/health").json()
        voices = client.get("/voices").json()
        response = client.post("/tts", json={"text": "Still talking. With espeak.", "reply": False})
    assert health["status"] == "degraded"
    assert (health["engine"], health["configured_engine"], health["fallback"]) == ("espeak", "piper", True)
    assert health["voice"] == "en-us"
    reason = health["reasons"][0]
    assert "could not download Piper voice 'en_US-lessac-medium'" in reason
    assert "Temporary failure in name resolution" in reason
    assert "en_US-lessac-medium.onnx and en_US-lessac-medium.onnx.json into" in reason
    assert "speaking with espeak instead" in reason
    assert voices["engine"] == "espeak" and voices["default"] == "en-us" and "en-us" in voices["voices"]
    assert response.status_code == 200 and response.headers["x-engine"] == "espeak"
    channels, width, rate, frames = read_wav(response.content)
    assert (channels, width, rate) == (1, 2, 22050) and 0.8 < frames / rate < 4


def test_without_fallback_the_service_explains_why_it_cannot_speak(tmp_path: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(tmp_path / "voices", ollama.url, fallback_engine="none", piper={"download": False})
    with serve(settings) as (_, client):
        response = client.post("/tts", json={"text": "Hi", "reply": False})
        health = client.get("/health").json()
        voices = client.get("/voices")
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "engine_unavailable"
    assert "the piper engine cannot start" in error["message"] and "tts.piper.download is off" in error["message"]
    assert voices.status_code == 503
    assert health["status"] == "degraded" and health["voice_loaded"] is False
    assert health["voice"] == VOICE and health["engine"] == "piper"


def test_espeak_engine_needs_no_download(tmp_path: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(tmp_path / "empty", ollama.url, engine="espeak", voice="de")
    with serve(settings) as (_, client):
        health = client.get("/health").json()
        response = client.post("/tts", json={"text": "Guten Morgen.", "reply": False, "speed": 1.5})
    assert health["status"] == "ok" and health["engine"] == "espeak" and health["voice"] == "de"
    assert response.status_code == 200 and read_wav(response.content)[2] == 22050
    assert not (tmp_path / "empty").exists()


def test_groq_engine_errors_map_to_our_codes(tmp_path: Path, ollama: OllamaDouble) -> None:
    from tests.fixtures.groq_double import groq_double

    with groq_double() as double:
        groq = {"base_url": double.base_url, "api_key": "gsk_test_key"}
        settings = make_settings(tmp_path, ollama.url, engine="groq", voice=None, groq=groq)
        with serve(settings) as (_, client):
            assert client.get("/voices").json()["default"] == "autumn"
            ok = client.post("/tts", json={"text": "Hi there.", "reply": False, "voice": "troy"})
            double.behaviour.status = 429
            busy = client.post("/tts", json={"text": "Hi there.", "reply": False})
            double.behaviour.status = 0
            double.behaviour.api_key = "gsk_rotated"
            auth = client.post("/tts", json={"text": "Hi there.", "reply": False})
    assert ok.status_code == 200 and read_wav(ok.content)[2:] == (48000, len("Hi there.") * 100)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "8" and error_of(busy)["code"] == "engine_busy"
    assert auth.status_code == 502 and error_of(auth)["code"] == "engine_auth"
    assert "GROQ_API_KEY" in error_of(auth)["message"]


def test_espeak_with_another_engines_voice_falls_back_to_its_own_default(tmp_path: Path, ollama: OllamaDouble) -> None:
    settings = make_settings(tmp_path, ollama.url, engine="espeak", voice="en_US-lessac-medium")
    with serve(settings) as (_, client):
        health = client.get("/health").json()
        response = client.post("/tts", json={"text": "Still fine.", "reply": False})
    assert (health["status"], health["engine"], health["voice"], health["fallback"]) == (
        "degraded",
        "espeak",
        "en-us",
        True,
    )
    assert "unknown voice 'en_US-lessac-medium' for the espeak engine" in health["reasons"][0]
    assert response.status_code == 200
