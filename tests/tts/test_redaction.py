"""A password in llm.url never reaches a client or a log line, whatever the URL looks like: /health,
/api/config, every llm_unavailable error (HTTP, SSE, WebSocket) and the service's own log records show
the URL without its userinfo."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fixtures.ollama_double import down_url
from tests.tts.conftest import make_settings, serve, wait_for
from tests.tts.test_ws_tts import connected, receive, send

SECRETS = ("admin", "s3cret")


@pytest.mark.parametrize("scheme", ["http://", ""], ids=["url", "host-port"])  # Ollama's client takes both
def test_a_password_in_llm_url_is_shown_nowhere(voices_dir: Path, caplog: pytest.LogCaptureFixture, scheme: str) -> None:
    address = down_url().removeprefix("http://")
    settings = make_settings(voices_dir, f"{scheme}admin:s3cret@{address}", llm={"retry_attempts": 0})
    with serve(settings) as (server, client):
        caplog.set_level(logging.INFO)
        wait_for(lambda: client.get("/health").json()["status"] == "degraded")
        answers = [
            client.get("/health"),
            client.get("/api/config"),
            client.post("/tts", json={"text": "Hello", "reply": True}),
            client.post("/tts/stream", json={"text": "Hello", "reply": True}),
            client.post("/tts/sse", json={"text": "Hello", "reply": True}),
        ]
        with connected(server) as ws:
            send(ws, "text_input", text="Hello", reply=True)
            receive(ws)  # generation_started
            failed = receive(ws)
    shown = f"{scheme}{address}"
    assert answers[0].json()["reasons"] == [f"Ollama is not reachable at {shown}: replies (reply true) fail"]
    assert answers[1].json()["llm"]["url"] == shown == answers[1].json()["settings"]["llm"]["url"]
    for response in answers[2:]:
        assert response.status_code == 503 and response.json()["error"]["code"] == "llm_unavailable"
        assert f"cannot reach Ollama at {shown} (ConnectError)" in response.json()["error"]["message"]
    assert failed["code"] == "llm_unavailable" and f"at {shown} " in failed["message"]
    records = [r for r in caplog.records if r.name.split(".")[0] in ("tts", "core", "uvicorn")]
    logged = " ".join(str(r.msg) for r in records)
    assert "generation_failed" in logged and "turn" in logged
    for secret in SECRETS:
        assert not any(secret in response.text for response in answers)
        assert secret not in str(failed) and secret not in logged
