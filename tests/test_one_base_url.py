"""One base URL: the TTS service answers /v1/audio/transcriptions and /translations by forwarding them to
the STT service over HTTP, so one `openai` client speaks and listens through port 8000."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import run_server
from tests.stt.test_openai_transcription import WAV
from tests.stt.test_server import wait_until_settled
from tests.tts.conftest import make_settings as tts_settings
from tests.tts.conftest import serve

VOICE = "en_US-test-medium"


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    build_piper_voice(tmp_path / "voices", VOICE)
    return tmp_path / "voices"


def test_one_client_speaks_and_transcribes_through_the_tts_service(make_settings, voices_dir: Path, ollama: OllamaDouble) -> None:
    with run_server(create_stt_app(make_settings(stt={"max_upload_bytes": 1_000_000}))) as stt:
        wait_until_settled(stt)
        settings = tts_settings(voices_dir, ollama.url)
        settings.stt.port, settings.stt.max_upload_bytes = stt.port, 1_000_000
        with serve(settings) as (tts, _):
            client = OpenAI(base_url=f"{tts.http_url}/v1", api_key="x", max_retries=0)
            speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav")
            direct = OpenAI(base_url=f"{stt.http_url}/v1", api_key="x").audio.transcriptions.create(
                file=("speech.wav", WAV), model="whisper-1", response_format="verbose_json"
            )
            forwarded = client.audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1", response_format="verbose_json")
            translated = client.audio.translations.create(file=("speech.wav", WAV), model="whisper-1")
            streamed = list(client.audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1", stream=True))
            error = httpx.post(f"{tts.http_url}/v1/audio/transcriptions", files={"file": ("x.wav", b"junk" * 100)}, data={"model": "m"})
            too_big = httpx.post(
                f"{tts.http_url}/v1/audio/transcriptions", files={"file": ("x.wav", bytes(1_200_000))}, data={"model": "m"}
            )
    assert speech.response.headers["content-type"] == "audio/wav" and len(speech.content) > 44
    assert forwarded.model_dump() == direct.model_dump()  # the same answer, passed through as it is
    assert translated.text
    assert streamed[-1].type == "transcript.text.done" and streamed[-1].text == direct.text
    assert (error.status_code, error.json()["error"]["code"]) == (400, "bad_audio")  # the STT service's error
    assert (too_big.status_code, too_big.json()["error"]["code"], too_big.json()["error"]["param"]) == (413, "request_too_large", "file")


def test_a_stt_service_that_is_down_is_a_clear_503(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = tts_settings(voices_dir, ollama.url)
    settings.stt.port = int(down_url().rsplit(":", 1)[1])
    with serve(settings) as (_, client):
        response = client.post("/v1/audio/transcriptions", files={"file": ("x.wav", WAV)}, data={"model": "whisper-1"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "stt_unavailable" and f"127.0.0.1:{settings.stt.port}" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_stt_service_that_does_not_answer_in_time_is_a_clear_504(voices_dir: Path, ollama: OllamaDouble) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = tts_settings(voices_dir, ollama.url, openai={"forward_timeout_s": 0.5})
        settings.stt.port = silent.getsockname()[1]
        with serve(settings) as (_, client):
            response = client.post("/v1/audio/transcriptions", files={"file": ("x.wav", WAV)}, data={"model": "whisper-1"})
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "stt_timeout" and "tts.openai.forward_timeout_s" in error["message"]
