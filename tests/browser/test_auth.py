"""The dashboard when the services ask for an API key: it asks once, keeps the key for the tab, and
talks through both WebSockets with it (the subprotocol "bearer.KEY": browsers cannot set headers)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Stack, open_page
from tests.browser.test_dashboard import wait_healthy
from tests.fixtures.ollama_double import OllamaDouble

pytestmark = pytest.mark.browser

KEY = "dashboard-key-0123456789abcdef"
AUTH = {"keys": [{"name": "tablet", "key": KEY, "scopes": ["speak", "transcribe"]}]}


def enter_key(page: Any, key: str) -> None:
    page.wait_for_selector("#api-key-dialog[open]")
    page.fill("#api-key-input", key)
    page.click("#api-key-dialog button[type='submit']")


def test_the_page_asks_for_a_key_and_talks_with_it(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, auth=AUTH)
    with open_page(browser, stack.url, "auth_key", ready=False) as watch:
        page = watch.page
        enter_key(page, "not-the-key-0123456789")
        assert "not accepted" in page.wait_for_selector("#api-key-dialog .key-problem").inner_text()
        enter_key(page, KEY)
        page.wait_for_selector("body[data-ready='true']")
        wait_healthy(page)
        page.click("#mic")  # microphone -> /ws/stt -> reply over /ws/tts, both opened with the key
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        assert stack.wire.audio_frames, "no audio reached the STT service"
        assert page.evaluate("() => sessionStorage.getItem('voice-assistant.api-key')") == KEY
        # A reload keeps the key for this tab: no question asked again.
        page.reload()
        page.wait_for_selector("body[data-ready='true']")
        assert page.query_selector("#api-key-dialog") is None


def test_without_keys_nothing_is_asked(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    with open_page(browser, stack.url, "auth_none") as watch:
        assert watch.page.query_selector("#api-key-dialog") is None
