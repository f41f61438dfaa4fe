"""Response headers that keep browsers from misreading the services' answers: X-Content-Type-Options on
every response of both services (JSON, SSE, audio, errors), and the dashboard's own policy (CSP, never
framed, no referrer) on the page and its assets only."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import run_server
from tests.tts.conftest import make_settings as tts_settings
from tests.tts.conftest import serve
from tts.dashboard import content_security_policy

VOICE = "en_US-test-medium"
PAGE_HEADERS = ("content-security-policy", "x-frame-options", "referrer-policy")


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    build_piper_voice(tmp_path / "voices", VOICE)
    return tmp_path / "voices"


def test_every_stt_response_says_nosniff(make_settings) -> None:
    with run_server(create_stt_app(make_settings())) as stt:
        responses = [
            httpx.get(f"{stt.http_url}/health"),
            httpx.get(f"{stt.http_url}/metrics"),
            httpx.get(f"{stt.http_url}/v1/models"),
            httpx.get(f"{stt.http_url}/nowhere"),
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 404]
    assert [r.headers.get("x-content-type-options") for r in responses] == ["nosniff"] * 4
    assert all(not set(PAGE_HEADERS) & set(r.headers) for r in responses)


def test_every_tts_response_says_nosniff_and_only_the_dashboard_carries_its_policy(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    settings = tts_settings(voices_dir, ollama.url)
    settings.security.allowed_origins = ["https://assistant.lan"]
    with serve(settings) as (_, client):
        api = {
            "json": client.get("/health"),
            "sse": client.get("/tts/sse", params={"text": "Hello.", "reply": "false"}),
            "wav": client.post("/tts", json={"text": "Hello.", "reply": False}),
            "error": client.post("/tts", json={"text": ""}),
            "docs": client.get("/docs"),  # Swagger UI loads its own scripts from a CDN: no dashboard policy
        }
        page = {name: client.get(name) for name in ("/", "/app.js", "/pcm-worklet.js", "/style.css")}
        host = client.base_url.netloc.decode()
    assert api["sse"].headers["content-type"].startswith("text/event-stream")
    assert [r.status_code for r in api.values()] == [200, 200, 200, 422, 200]
    assert [r.status_code for r in page.values()] == [200] * 4
    for response in [*api.values(), *page.values()]:
        assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert all(not set(PAGE_HEADERS) & set(r.headers) for r in api.values())
    expected = content_security_policy(host, ["https://assistant.lan"])
    assert "ws://127.0.0.1:* wss://127.0.0.1:* ws://assistant.lan:* wss://assistant.lan:*;" in expected
    for response in page.values():
        assert response.headers["content-security-policy"] == expected
        assert (response.headers["x-frame-options"], response.headers["referrer-policy"]) == ("DENY", "no-referrer")


def test_the_dashboard_policy_allows_sockets_to_the_page_host_and_the_allowed_origins_only() -> None:
    policy = dict(part.split(" ", 1) for part in content_security_policy("Voice.LAN:8000", ["https://assistant.lan:8443"]).split("; "))
    assert policy == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "media-src": "'self' blob:",
        "connect-src": "'self' ws://voice.lan:* wss://voice.lan:* ws://assistant.lan:* wss://assistant.lan:*",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    # A source cannot name an IPv6 literal, and a Host header is never copied into the policy as it is.
    for host in ("[::1]:8000", "evil;script-src *", ""):
        assert "connect-src 'self' ws: wss:;" in content_security_policy(host, [])
        assert "evil" not in content_security_policy(host, [])
