"""The dashboard in a real Chromium under its own Content-Security-Policy (open_page fails a test on any
violation): a ?stt= link sends the microphone only to this page's host or an allowed origin, never lands in
an href, and over https the microphone works from an address that is not localhost."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.browser.conftest import Stack, open_page
from tests.fixtures.ollama_double import OllamaDouble
from tests.fixtures.tls import TlsFiles, tls_files  # noqa: F401  (a fixture)

pytestmark = pytest.mark.browser


def start_talking(page: Any) -> str:
    """Press Start talking once speech to text is healthy; the URL of the STT socket the page opens."""
    page.wait_for_selector("#pill-stt[data-state='ok']")
    with page.expect_websocket(lambda socket: "/ws/stt" in socket.url) as opened:
        page.click("#mic")
    return str(opened.value.url)


def test_a_turn_and_the_speak_panel_work_under_the_policy(start_stack: Any, browser: Any, ollama: OllamaDouble) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    headers = httpx.get(stack.url).headers
    assert headers["content-security-policy"].startswith("default-src 'self'; script-src 'self'; ")
    assert (headers["x-frame-options"], headers["x-content-type-options"]) == ("DENY", "nosniff")
    with open_page(browser, stack.url, "csp_normal_use") as watch:
        page = watch.page
        # The microphone (AudioWorklet module, /ws/stt), the streamed reply (/ws/tts) and its playback.
        assert start_talking(page) == f"ws://127.0.0.1:{stack.settings.stt.port}/ws/stt"
        page.wait_for_selector(".turn.assistant[data-state='played']", timeout=30_000)
        page.click("#mic")
        # The Speak panel plays its WAV from a blob: URL.
        page.fill("#speak-text", "Hello there.")
        page.click("#speak-play")
        page.wait_for_function("() => { const a = document.getElementById('speak-audio'); return !a.hidden && a.ended; }")
        assert page.get_attribute("#speak-audio", "src").startswith("blob:")
        assert page.is_hidden("#stt-refused")
    assert f"ws://127.0.0.1:{stack.tts.port}/ws/tts" in watch.sockets


@pytest.mark.parametrize(
    "link",
    [
        "ws://evil.example:1/ws/stt",
        "ws://127.0.0.1@evil.example:1/ws/stt",  # the page's host as a user name
        "javascript:alert(1)",
        "http://127.0.0.1:1/ws/stt",  # the right host, but not a WebSocket
    ],
)
def test_an_stt_link_elsewhere_is_refused_and_said_so(start_stack: Any, browser: Any, ollama: OllamaDouble, link: str) -> None:
    stack: Stack = start_stack(llm_url=ollama.url)
    stt_port = stack.settings.stt.port
    dialogs: list[str] = []
    with open_page(browser, f"{stack.url}?stt={quote(link, safe='')}", "stt_link_refused") as watch:
        page = watch.page
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        notice = page.wait_for_selector("#stt-refused:not([hidden])")
        assert "was ignored" in notice.inner_text()
        assert page.inner_text("#stt-refused-url") == link
        hrefs = page.eval_on_selector_all("a[href]", "links => links.map((a) => a.href)")
        assert all(href.startswith(("http://", "https://", "data:", "blob:")) for href in hrefs), hrefs
        assert page.get_attribute("#docs-stt", "href") == f"http://127.0.0.1:{stt_port}/docs"
        # The service's own address is used instead.
        assert start_talking(page) == f"ws://127.0.0.1:{stt_port}/ws/stt"
        page.wait_for_selector("#talk-state[data-state='listening']")
    assert dialogs == []
    assert [url for url in watch.sockets if "evil" in url or ":1/" in url] == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["page host", "allowed origin"])
def test_an_stt_link_to_the_page_host_or_an_allowed_origin_is_used(
    start_stack: Any, browser: Any, ollama: OllamaDouble, host: str
) -> None:
    stack: Stack = start_stack(llm_url=ollama.url, security={"allowed_origins": ["http://localhost:5173"]})
    link = f"ws://{host}:{stack.settings.stt.port}/ws/stt"
    with open_page(browser, f"{stack.url}?stt={quote(link, safe='')}", f"stt_link_{host}") as watch:
        page = watch.page
        assert start_talking(page) == link
        page.wait_for_selector("#talk-state[data-state='listening']")
        assert page.is_hidden("#stt-refused")
        assert page.get_attribute("#docs-stt", "href") == f"http://{host}:{stack.settings.stt.port}/docs"
    assert stack.wire.of_type("ready"), "the STT service saw no session"


def test_over_https_the_microphone_works_from_an_address_that_is_not_localhost(
    start_stack: Any, browser: Any, ollama: OllamaDouble, tls_files: TlsFiles  # noqa: F811
) -> None:
    # The Host check serves only loopback and this machine's names: the test's host name is allowed by name.
    stack: Stack = start_stack(llm_url=ollama.url, tls=tls_files.config, security={"allowed_hosts": ["assistant.test"]})
    stt_port = stack.settings.stt.port
    # assistant.test resolves to this machine (chromium_args); over http it is not a secure page and the
    # browser gives no microphone. Chromium does not know the test CA: the context trusts the certificate.
    url = f"https://assistant.test:{stack.tts.port}/"
    with open_page(browser, url, "https_microphone", ignore_https_errors=True) as watch:
        page = watch.page
        assert page.evaluate("window.isSecureContext") is True
        assert page.is_hidden("#secure-notice")
        assert start_talking(page) == f"wss://assistant.test:{stt_port}/ws/stt"
        page.wait_for_selector(".turn.user:not(.partial)", timeout=30_000)
        assert page.get_attribute("#docs-stt", "href") == f"https://assistant.test:{stt_port}/docs"
    assert f"wss://assistant.test:{stack.tts.port}/ws/tts" in watch.sockets
    assert stack.wire.of_type("transcript")
