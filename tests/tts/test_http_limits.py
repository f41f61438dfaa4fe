"""Small HTTP contracts of the TTS service: header size, SSE reconnects."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from tests.fixtures.ollama_double import down_url
from tests.tts.conftest import make_settings, serve
from tts.http_api import REPLY_HEADER, REPLY_HEADER_MAX_BYTES, REPLY_TRUNCATED_HEADER, reply_text_headers


def test_a_short_reply_travels_whole_in_its_header() -> None:
    assert reply_text_headers("Grüße, Welt!") == {REPLY_HEADER: "Gr%C3%BC%C3%9Fe%2C%20Welt%21"}


def test_a_long_reply_is_cut_at_a_character_boundary_and_flagged() -> None:
    text = "日本語の長い返事です。" * 200  # 9 bytes per character once percent-encoded
    headers = reply_text_headers(text)
    assert headers[REPLY_TRUNCATED_HEADER] == "true"
    assert len(headers[REPLY_HEADER]) <= REPLY_HEADER_MAX_BYTES
    shown = unquote(headers[REPLY_HEADER])
    assert text.startswith(shown) and len(shown) > 400


def test_an_eventsource_reconnect_is_told_to_stop(voices_dir: Path) -> None:
    # A browser EventSource reconnects after every stream with Last-Event-ID; re-running the turn
    # would ask the LLM again and again.
    with serve(make_settings(voices_dir, down_url())) as (_, client):
        response = client.get("/tts/sse", params={"text": "Hello there.", "reply": "false"}, headers={"Last-Event-ID": "3"})
    assert response.status_code == 204
    assert response.content == b""
