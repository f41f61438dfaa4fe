"""The dashboard's JSON API on the TTS service (tts/dashboard.py), over real HTTP; no browser needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from tests.browser.conftest import Stack, with_dashboard
from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.fixtures.server import run_server
from tests.tts.conftest import make_settings as tts_settings
from tts.server import create_app


def test_config_tells_where_stt_listens_and_hides_secrets(voices_dir: Path) -> None:
    settings = tts_settings(
        voices_dir,
        "http://admin:hunter2@127.0.0.1:11434",
        groq={"api_key": "gsk_very_secret"},
        llm={"api_key": "sk-llm-secret"},
    )
    settings.stt.host, settings.stt.port = "0.0.0.0", 8123
    app = with_dashboard(create_app(settings), settings)
    with run_server(app) as server:
        response = httpx.get(f"{server.http_url}/api/config")
    assert response.status_code == 200
    body = response.json()
    assert body["stt"] == {
        "host": "0.0.0.0",
        "port": 8123,
        "ws_path": "/ws/stt",
        "sample_rate": 16000,
        "use_page_host": True,
        "docs_path": "/docs",
    }
    assert body["settings"]["tts"]["groq"]["api_key"] == "**********"
    assert body["settings"]["llm"]["url"] == "http://127.0.0.1:11434"
    assert body["llm"] == {"provider": "ollama", "url": "http://127.0.0.1:11434", "model": "llama3.2:3b"}
    assert body["settings"]["llm"]["api_key"] == "**********"
    assert "gsk_very_secret" not in response.text and "hunter2" not in response.text and "sk-llm-secret" not in response.text
    assert body["settings"]["stt"]["port"] == 8123 and body["settings"]["tts"]["voice"] == "en_US-test-medium"


def test_config_names_a_specific_stt_host(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = tts_settings(voices_dir, ollama.url)
    settings.stt.host = "192.168.1.20"
    app = with_dashboard(create_app(settings), settings)
    with run_server(app) as server:
        stt = httpx.get(f"{server.http_url}/api/config").json()["stt"]
    assert stt["host"] == "192.168.1.20" and stt["use_page_host"] is False


def test_stt_health_is_relayed_and_its_absence_explained(start_stack: Callable[..., Stack], ollama: OllamaDouble) -> None:
    stack = start_stack(llm_url=ollama.url)
    assert stack.stt is not None
    direct = httpx.get(f"{stack.stt.http_url}/health").json()
    relayed = httpx.get(f"{stack.tts.http_url}/api/stt/health")
    assert relayed.status_code == 200
    assert relayed.json() == direct

    stopped = start_stack(llm_url=ollama.url, stt_running=False)
    response = httpx.get(f"{stopped.tts.http_url}/api/stt/health")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "stt_unavailable"
    assert f"not answering at http://127.0.0.1:{stopped.settings.stt.port}" in error["message"]


def test_the_static_page_still_answers_at_the_root(voices_dir: Path) -> None:
    settings: Settings = tts_settings(voices_dir, down_url())
    app = with_dashboard(create_app(settings), settings)
    with run_server(app) as server:
        page = httpx.get(f"{server.http_url}/")
        worklet = httpx.get(f"{server.http_url}/pcm-worklet.js")
    assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text
    assert worklet.status_code == 200 and "registerProcessor" in worklet.text


def test_config_says_which_values_the_environment_set(
    voices_dir: Path, ollama: OllamaDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What run_services.py gives its children: JSON lines for the supervisor, while logging.json stays
    # what the file says, and the page can tell why a value differs from the file.
    monkeypatch.setenv("LOGGING__TO_SUPERVISOR", "true")
    monkeypatch.setenv("TTS__MAX_CONCURRENT", "3")
    settings = tts_settings(voices_dir, ollama.url)  # reads the environment too, as every Settings does
    assert (settings.logging.to_supervisor, settings.tts.max_concurrent) == (True, 3)
    app = with_dashboard(create_app(settings), settings)
    with run_server(app) as server:
        body = httpx.get(f"{server.http_url}/api/config").json()
    assert body["settings"]["logging"]["json"] is False
    assert body["settings"]["logging"]["to_supervisor"] is True
    assert body["set_by_environment"] == {
        "logging.to_supervisor": "LOGGING__TO_SUPERVISOR",
        "stt.wyoming.port": "STT__WYOMING__PORT",  # tests/conftest.py: every test app takes free ports
        "tts.max_concurrent": "TTS__MAX_CONCURRENT",
        "tts.wyoming.port": "TTS__WYOMING__PORT",
    }
