"""Both services over HTTPS and WSS (tls.certfile, tls.keyfile), with a test CA's certificate for 127.0.0.1:
real clients that trust the CA, and the TTS service's own calls to the STT service (the forwarded
transcriptions, the dashboard's STT health) over https too."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from core.tls import server_options
from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.tls import TlsFiles, tls_files  # noqa: F401  (a fixture)
from tests.stt.test_openai_transcription import WAV
from tests.tts.conftest import make_settings as tts_settings
from tts.server import create_app as create_tts_app

VOICE = "en_US-test-medium"


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    build_piper_voice(tmp_path / "voices", VOICE)
    return tmp_path / "voices"


@contextmanager
def both_services(
    make_settings, voices_dir: Path, ollama: OllamaDouble, tls: TlsFiles
) -> Iterator[tuple[RunningServer, RunningServer, httpx.Client]]:
    """The STT and TTS services over TLS, and an httpx client that trusts the test CA. The client closes
    first: a server's TLS shutdown waits for the close_notify of every connection still open, and an idle
    connection in a blocking client's pool never answers."""
    stt_settings = make_settings(tls=tls.config)
    deadline = time.monotonic() + 30
    with run_server(create_stt_app(stt_settings), **server_options(stt_settings)) as stt:
        while httpx.get(f"{stt.http_url}/health", verify=tls.client_context()).json()["loading"]:
            assert time.monotonic() < deadline, "the STT model never finished loading"
            time.sleep(0.02)
        settings = tts_settings(voices_dir, ollama.url)
        settings.tls, settings.stt.port = stt_settings.tls, stt.port
        app = create_tts_app(settings)
        with run_server(app, **server_options(settings)) as tts:
            while app.state.service.engines.loading:
                assert time.monotonic() < deadline, "the TTS engine did not start"
                time.sleep(0.01)
            with httpx.Client(verify=tls.client_context(), timeout=30) as client:
                yield stt, tts, client


def test_both_services_answer_https_and_the_tts_service_reaches_the_stt_service_over_https(
    make_settings, voices_dir: Path, ollama: OllamaDouble, tls_files: TlsFiles  # noqa: F811
) -> None:
    with both_services(make_settings, voices_dir, ollama, tls_files) as (stt, tts, client):
        assert stt.http_url.startswith("https://127.0.0.1:") and tts.http_url.startswith("https://127.0.0.1:")
        stt_health = client.get(f"{stt.http_url}/health")
        tts_health = client.get(f"{tts.http_url}/health")
        relayed = client.get(f"{tts.http_url}/api/stt/health")  # the dashboard's view, asked by the TTS service
        direct = client.post(f"{stt.http_url}/v1/audio/transcriptions", files={"file": ("s.wav", WAV)}, data={"model": "whisper-1"})
        forwarded = client.post(f"{tts.http_url}/v1/audio/transcriptions", files={"file": ("s.wav", WAV)}, data={"model": "whisper-1"})
        # A client that does not trust the test CA (certifi's bundle) is turned away by the certificate.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{stt.http_url}/health")
    assert (stt_health.status_code, stt_health.json()["whisper_loaded"]) == (200, True)
    assert tts_health.status_code == 200 and tts_health.json()["engine"] == "piper"
    assert relayed.status_code == 200 and relayed.json()["model"] == stt_health.json()["model"]
    assert (direct.status_code, forwarded.status_code) == (200, 200)
    assert forwarded.json() == direct.json()


def test_both_websockets_shake_hands_over_wss(
    make_settings, voices_dir: Path, ollama: OllamaDouble, tls_files: TlsFiles  # noqa: F811
) -> None:
    # websockets' asyncio client, not its sync one: the sync client reads an SSLSocket in one thread while
    # writing it from another, which OpenSSL does not support (cpython#143756); now and then a handshake
    # hung for good (the request or the response lost in the race), in the client, whatever the server did.
    async def first_message(url: str) -> dict:
        async with connect(url, ssl=tls_files.client_context(), open_timeout=10) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), timeout=10))

    with both_services(make_settings, voices_dir, ollama, tls_files) as (stt, tts, _):
        ready = asyncio.run(first_message(f"{stt.ws_url}/ws/stt"))
        connection = asyncio.run(first_message(f"{tts.ws_url}/ws/tts"))
    assert stt.ws_url.startswith("wss://") and tts.ws_url.startswith("wss://")
    assert (ready["type"], ready["sample_rate"]) == ("ready", 16000)
    assert (connection["type"], connection["status"]) == ("connection", "ready")
    assert VOICE in connection["voices"]
