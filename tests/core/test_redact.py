"""core.redact.public_url: what of a URL a client or a log line may see."""

from __future__ import annotations

import pytest

from core.redact import public_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://localhost:11434", "http://localhost:11434"),
        ("http://admin:s3cret@ollama.lan:11434", "http://ollama.lan:11434"),
        ("http://token@ollama.lan", "http://ollama.lan"),
        ("admin:s3cret@127.0.0.1:11434", "127.0.0.1:11434"),  # Ollama's client takes a URL without a scheme
        ("http://admin:s3/cr?e#t@host:8080/v1", "http://host:8080/v1"),  # urlsplit would end the host at "/"
        ("http://admin:p@ss@host/v1", "http://host/v1"),
        ("https://host/v1?api_key=s3cret#frag", "https://host/v1"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
    ],
)
def test_a_url_is_shown_without_credentials_query_or_fragment(url: str, shown: str) -> None:
    assert public_url(url) == shown
