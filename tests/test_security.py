"""The door of both services (core.guard) over real servers: API keys and scopes on HTTP, the OpenAI
routes (through the `openai` package) and WebSockets (headers, subprotocol, tickets), per-key rate
limits, origins (CSRF and WebSocket hijacking), Host headers (DNS rebinding) and JSON content types."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from stt.server import RULES as STT_RULES
from stt.server import create_app as create_stt_app
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import RunningServer, run_server
from tests.stt.test_openai_transcription import WAV
from tests.stt.test_server import wait_until_settled
from tests.tts.conftest import VOICE, serve
from tests.tts.conftest import make_settings as tts_settings
from tts.server import RULES as TTS_RULES
from tts.server import create_app as create_tts_app

ADMIN = "admin-key-0123456789abcdef"
SPEAKER = "speak-key-0123456789abcdef"
LISTENER = "listen-key-0123456789abcdef"
KEYS = [
    {"name": "ops", "sha256": hashlib.sha256(ADMIN.encode()).hexdigest(), "scopes": ["admin"]},
    {"name": "speaker", "key": SPEAKER, "scopes": ["speak"]},
    {"name": "listener", "key": LISTENER, "scopes": ["transcribe"]},
]


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    build_piper_voice(tmp_path / "voices", VOICE)
    return tmp_path / "voices"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def tts(voices_dir: Path, ollama: OllamaDouble) -> Iterator[tuple[RunningServer, httpx.Client]]:
    with serve(tts_settings(voices_dir, ollama.url, auth={"keys": KEYS})) as running:
        yield running


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_without_a_key_only_health_and_the_page_are_served(tts: tuple[RunningServer, httpx.Client]) -> None:
    _, client = tts
    missing = client.post("/tts", json={"text": "Hi.", "reply": False})
    assert error_of(missing) == (401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer" and "x-request-id" in missing.headers
    assert "Authorization: Bearer KEY" in missing.json()["error"]["message"]
    assert error_of(client.post("/tts", json={"text": "Hi."}, headers=bearer("wrong-key-0123456789"))) == (401, "unauthorized")
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200 and "<html" in client.get("/").text.lower()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/tts-socket.js").status_code == 200  # the page's files, not the /tts route
    for path in ("/metrics", "/api/config", "/voices", "/v1/models", "/v1/conversations/abcdefgh1234"):
        assert client.get(path).status_code == 401, path


def test_keys_open_what_their_scopes_allow(tts: tuple[RunningServer, httpx.Client]) -> None:
    _, client = tts
    spoken = client.post("/tts", json={"text": "Hi there.", "reply": False}, headers=bearer(SPEAKER))
    assert spoken.status_code == 200 and spoken.content[:4] == b"RIFF"
    assert client.post("/tts", json={"text": "Hi.", "reply": False}, headers={"X-API-Key": SPEAKER}).status_code == 200
    refused = client.get("/metrics", headers=bearer(SPEAKER))
    assert error_of(refused) == (403, "forbidden") and "'admin'" in refused.json()["error"]["message"]
    assert error_of(client.post("/tts", json={"text": "Hi."}, headers=bearer(LISTENER))) == (403, "forbidden")
    # The page learns where the STT service is with any key; the configuration needs admin.
    assert error_of(client.get("/api/config", headers=bearer(SPEAKER))) == (403, "forbidden")
    connection = client.get("/api/connection", headers=bearer(SPEAKER)).json()
    assert set(connection) == {"version", "stt", "tts", "llm", "allowed_origins"} and connection["llm"] == {"provider": "ollama"}
    # A key given as its SHA-256 in the config, and admin may do everything.
    assert client.get("/metrics", headers=bearer(ADMIN)).status_code == 200
    config = client.get("/api/config", headers=bearer(ADMIN))
    assert config.status_code == 200
    assert SPEAKER not in config.text and ADMIN not in config.text  # keys never come back
    assert client.post("/tts", json={"text": "Hi.", "reply": False}, headers=bearer(ADMIN)).status_code == 200


def test_the_openai_client_sends_its_key_and_hears_a_refusal_in_openai_shape(tts: tuple[RunningServer, httpx.Client]) -> None:
    server, _ = tts
    good = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=SPEAKER, max_retries=0)
    speech = good.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav")
    assert speech.content[:4] == b"RIFF"
    assert [model.id for model in good.models.list()]
    bad = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="not-a-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "unauthorized" and refused.value.body["type"] == "invalid_request_error"


def ws_url(server: RunningServer, path: str) -> str:
    return f"{server.ws_url}{path}"


def test_websockets_take_the_key_as_a_header_or_a_subprotocol(tts: tuple[RunningServer, httpx.Client]) -> None:
    server, _ = tts
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "/ws/tts"), open_timeout=10)
    assert refused.value.response.status_code == 401
    assert b"unauthorized" in refused.value.response.body
    with connect(ws_url(server, "/ws/tts"), additional_headers=bearer(SPEAKER), open_timeout=10) as ws:
        assert '"connection"' in str(ws.recv(timeout=10))
    # Browsers cannot set headers: the key rides in a subprotocol, and the plain one offered beside it is chosen.
    with connect(ws_url(server, "/ws/tts"), subprotocols=["voice-assistant", f"bearer.{SPEAKER}"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "voice-assistant"
        assert '"connection"' in str(ws.recv(timeout=10))
    with pytest.raises(InvalidStatus) as wrong_scope:
        connect(ws_url(server, "/ws/tts"), additional_headers=bearer(LISTENER), open_timeout=10)
    assert wrong_scope.value.response.status_code == 403


def test_a_ticket_opens_one_socket_of_either_service(make_settings: Any, tts: tuple[RunningServer, httpx.Client]) -> None:
    server, client = tts
    assert error_of(client.post("/v1/auth/ticket")) == (401, "unauthorized")
    answer = client.post("/v1/auth/ticket", headers=bearer(ADMIN)).json()
    assert answer["auth"] is True and answer["expires_in"] == 60
    with run_server(create_stt_app(make_settings(auth={"keys": KEYS}))) as stt:
        wait_until_settled(stt)
        # Issued by the TTS service, redeemed by the STT one (the dashboard's path to /ws/stt).
        with connect(f"{stt.ws_url}/ws/stt?ticket={answer['ticket']}", open_timeout=10) as ws:
            assert '"ready"' in str(ws.recv(timeout=10))
        with pytest.raises(InvalidStatus) as reused:
            connect(f"{stt.ws_url}/ws/stt?ticket={answer['ticket']}", open_timeout=10)
        assert reused.value.response.status_code == 401
        forged = answer["ticket"].replace(".", ".9", 1)
        with pytest.raises(InvalidStatus):
            connect(f"{stt.ws_url}/ws/stt?ticket={forged}", open_timeout=10)
    second = client.post("/v1/auth/ticket", headers=bearer(SPEAKER)).json()["ticket"]
    with connect(ws_url(server, "/ws/tts"), subprotocols=["voice-assistant", f"ticket.{second}"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert '"connection"' in str(ws.recv(timeout=10))


def test_without_keys_the_ticket_says_none_is_needed(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(tts_settings(voices_dir, ollama.url)) as (_, client):
        assert client.post("/v1/auth/ticket").json() == {"auth": False, "ticket": None, "expires_in": None}
        assert client.get("/metrics").status_code == 200


def test_the_one_base_url_passes_the_key_on_to_the_stt_service(make_settings: Any, voices_dir: Path, ollama: OllamaDouble) -> None:
    with run_server(create_stt_app(make_settings(auth={"keys": KEYS}))) as stt:
        wait_until_settled(stt)
        settings = tts_settings(voices_dir, ollama.url, auth={"keys": KEYS})
        settings.stt.port = stt.port
        with serve(settings) as (server, _):
            client = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=LISTENER, max_retries=0)
            assert isinstance(client.audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1").text, str)
            speaker = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=SPEAKER, max_retries=0)
            with pytest.raises(openai.PermissionDeniedError):
                speaker.audio.transcriptions.create(file=("speech.wav", WAV), model="whisper-1")


def test_requests_past_a_keys_limit_wait_for_retry_after(voices_dir: Path, ollama: OllamaDouble) -> None:
    keys = [{"name": "small", "key": SPEAKER, "scopes": ["speak"], "requests_per_minute": 2}]
    with serve(tts_settings(voices_dir, ollama.url, auth={"keys": keys})) as (_, client):
        for _ in range(2):
            assert client.get("/voices", headers=bearer(SPEAKER)).status_code == 200
        limited = client.get("/voices", headers=bearer(SPEAKER))
    assert error_of(limited) == (429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "'small'" in limited.json()["error"]["message"] and SPEAKER not in limited.text


def test_audio_past_a_keys_seconds_per_minute_is_refused(voices_dir: Path, ollama: OllamaDouble) -> None:
    keys = [{"name": "small", "key": SPEAKER, "scopes": ["speak"], "audio_seconds_per_minute": 0.5}]
    long_text = {"text": "This sentence takes well over half a second to say aloud.", "reply": False}
    with serve(tts_settings(voices_dir, ollama.url, auth={"keys": keys})) as (_, client):
        first = client.post("/tts", json=long_text, headers=bearer(SPEAKER))
        assert first.status_code == 200  # admitted with budget left, served to its end
        limited = client.post("/tts", json=long_text, headers=bearer(SPEAKER))
    assert error_of(limited) == (429, "rate_limited") and "audio seconds" in limited.json()["error"]["message"]
    assert int(limited.headers["retry-after"]) >= 1


def test_pages_of_other_sites_cannot_drive_the_services(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = tts_settings(voices_dir, ollama.url, security={"allowed_origins": ["https://app.example"]})
    with serve(settings) as (server, client):
        evil = {"Origin": "http://evil.example"}
        forged = client.post("/tts", json={"text": "Hi.", "reply": False}, headers=evil)
        assert error_of(forged) == (403, "origin_not_allowed")
        assert "security.allowed_origins" in forged.json()["error"]["message"]
        assert client.get("/voices", headers=evil).status_code == 200  # reading needs CORS, which stays off
        assert "access-control-allow-origin" not in client.get("/voices", headers=evil).headers
        with pytest.raises(InvalidStatus) as hijack:
            connect(ws_url(server, "/ws/tts"), origin="http://evil.example", open_timeout=10)  # type: ignore[arg-type]
        assert hijack.value.response.status_code == 403
        for origin in ("http://localhost:5173", "http://127.0.0.1:9", "https://app.example", f"http://127.0.0.1:{server.port}"):
            with connect(ws_url(server, "/ws/tts"), origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
                assert '"connection"' in str(ws.recv(timeout=10))
        assert client.post("/tts", json={"text": "Hi.", "reply": False}, headers={"Origin": "https://app.example"}).status_code == 200


def test_a_malformed_host_or_origin_is_refused_not_a_crash(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(tts_settings(voices_dir, ollama.url)) as (_, client):
        host = client.get("/health", headers={"Host": "["})
        origin = client.post("/tts", json={"text": "Hi.", "reply": False}, headers={"Origin": "http://[x"})
    assert error_of(host) == (403, "host_not_allowed")
    assert error_of(origin) == (403, "origin_not_allowed")


def test_a_text_plain_post_is_refused_as_the_wrong_content_type(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(tts_settings(voices_dir, ollama.url)) as (_, client):
        body = '{"text": "Hi.", "reply": false}'
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            refused = client.post("/tts", content=body, headers={"Content-Type": content_type})
            assert error_of(refused) == (415, "unsupported_media_type"), content_type
            assert "application/json" in refused.json()["error"]["message"]
        openai_shape = client.post("/v1/audio/speech", content=body, headers={"Content-Type": "text/plain"})
        assert openai_shape.status_code == 400 and openai_shape.json()["error"]["code"] == "unsupported_media_type"
        charset = client.post("/tts", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert charset.status_code == 200


def test_a_rebound_host_name_is_not_served(voices_dir: Path, ollama: OllamaDouble) -> None:
    settings = tts_settings(voices_dir, ollama.url, security={"allowed_hosts": ["assistant.lan"]})
    with serve(settings) as (_, client):
        for path in ("/api/config", "/metrics", "/health"):
            rebound = client.get(path, headers={"Host": "evil.example"})
            assert error_of(rebound) == (403, "host_not_allowed"), path
        assert "security.allowed_hosts" in client.get("/metrics", headers={"Host": "evil.example:8000"}).json()["error"]["message"]
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "assistant.lan"):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("service", ["tts", "stt"])
def test_every_route_is_named_by_a_rule(service: str, make_settings: Any, voices_dir: Path) -> None:
    # A route no rule names needs admin: safe, but a sign that someone forgot to decide. The catch-all
    # rule of the dashboard's files ("/") does not count as a decision for an API route.
    if service == "tts":
        app, rules = create_tts_app(tts_settings(voices_dir, "http://127.0.0.1:9")), TTS_RULES
    else:
        app, rules = create_stt_app(make_settings()), STT_RULES
    named = [rule for rule in rules if rule.prefix != "/"]
    for route in app.routes:
        path = getattr(route, "path", "")
        if path and path != "":
            assert any(rule.matches(path) for rule in named), path


def test_the_openapi_document_lists_what_the_door_answers(tts: tuple[RunningServer, httpx.Client]) -> None:
    _, client = tts
    paths = client.get("/openapi.json").json()["paths"]
    speak = paths["/tts"]["post"]["responses"]
    assert {"401", "403", "429"} <= set(speak)
    assert "`origin_not_allowed`" in speak["403"]["description"] and "`forbidden`" in speak["403"]["description"]
    health = paths["/health"]["get"]["responses"]
    assert "401" not in health and "429" not in health  # open: no key is asked for
