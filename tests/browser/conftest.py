"""Fixtures of the browser tests: Debian's Chromium with a fake microphone, the real STT and TTS services.

Chromium is the system one (`apt-get install chromium`), driven by the pinned `playwright` package
through `executable_path`; Playwright never downloads a browser here. The fake microphone plays a
speech WAV that espeak-ng speaks in-process. The STT service runs the toy Whisper model, the TTS
service the synthetic Piper voice with the Ollama double: both real apps on real uvicorn servers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.routing import Mount, NoMatchFound
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import PROJECT_ROOT, Settings
from core.tls import client_verify, server_options
from tests.fixtures.ollama_double import OllamaDouble, down_url
from tests.fixtures.server import RunningServer, run_server
from tests.fixtures.speech import make_speech, write_wav
from tests.tts.conftest import make_settings as tts_settings
from tests.tts.conftest import voices_dir  # noqa: F401  (a fixture reused from the TTS tests)
from tts.dashboard import build_router

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
DOCS_SCREENSHOT = PROJECT_ROOT / "docs" / "dashboard.png"
PHRASE = "What is the weather like in Berlin today?"
MIC_RATE = 22050  # not 16 kHz on purpose: Chromium and the page both have to resample
LEAD_S, TRAIL_S = 0.6, 2.0
LAPTOP = {"width": 1280, "height": 900}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that starts Chromium is a browser test, whichever module it is in.
    for item in items:
        if "playwright_instance" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


# ---------------------------------------------------------------- the browser


@dataclass
class SpeechFile:
    path: Path
    speech: np.ndarray
    """The spoken part alone, at 16 kHz (what the page should deliver to the service)."""


@pytest.fixture(scope="session")
def speech_file(tmp_path_factory: pytest.TempPathFactory) -> SpeechFile:
    folder = tmp_path_factory.mktemp("mic")
    audio = make_speech(PHRASE, sample_rate=MIC_RATE, lead_silence_s=LEAD_S, trail_silence_s=TRAIL_S)
    path = write_wav(folder / "speech.wav", audio, MIC_RATE)
    return SpeechFile(path, make_speech(PHRASE, sample_rate=16000, lead_silence_s=0, trail_silence_s=0))


# Module scope, not session: sync Playwright keeps an event loop running in this thread while it is
# open, and later tests that call asyncio.run() would fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Any]:
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1")
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: the browser tests need it. Install it with "
            "`apt-get install chromium` (Debian/Ubuntu), or set SKIP_BROWSER_TESTS=1 to skip them.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: .venv/bin/pip install -r requirements-test.txt", pytrace=False)
    with sync_playwright() as playwright:
        yield playwright


def chromium_args(speech: Path, *, fake_permission_ui: bool = True) -> list[str]:
    args = [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}%noloop",
        # assistant.test reaches this machine over plain http: a page that is not a secure context.
        "--host-resolver-rules=MAP assistant.test 127.0.0.1 , MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
    ]
    if fake_permission_ui:
        args.append("--use-fake-ui-for-media-stream")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    return args


def launch(playwright_instance: Any, microphone: Path, **options: Any) -> Any:
    """Debian's Chromium whose fake microphone plays `microphone` once."""
    return playwright_instance.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(microphone, **options))


@pytest.fixture(scope="module")
def browser(playwright_instance: Any, speech_file: SpeechFile) -> Iterator[Any]:
    browser = launch(playwright_instance, speech_file.path)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def browser_without_mic_permission(playwright_instance: Any, speech_file: SpeechFile) -> Iterator[Any]:
    """No fake permission UI: the page must ask, and the test context denies."""
    browser = launch(playwright_instance, speech_file.path, fake_permission_ui=False)
    yield browser
    browser.close()


@dataclass
class PageWatch:
    page: Any
    errors: list[str] = field(default_factory=list)
    """Uncaught errors, and every Content-Security-Policy violation: the page must work under its policy."""
    sockets: list[str] = field(default_factory=list)
    """The URL of every WebSocket the page opened, from the first moment."""

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.mouse.move(0, 0)  # no hover effect in the picture
        self.page.screenshot(path=str(path), full_page=True, animations="disabled")
        return path


@contextmanager
def open_page(browser: Any, url: str, name: str, *, ready: bool = True, **context_options: Any) -> Iterator[PageWatch]:
    """A fresh context and page; fails the test on any uncaught error in the page; always leaves a screenshot.
    `ready` False: the test waits for the page itself (it has something to answer first, such as a key)."""
    context = browser.new_context(viewport=context_options.pop("viewport", LAPTOP), **context_options)
    page = context.new_page()
    page.set_default_timeout(20_000)
    watch = PageWatch(page)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("websocket", lambda socket: watch.sockets.append(socket.url))
    page.on("console", lambda message: watch.errors.append(message.text) if "Content Security Policy" in message.text else None)
    # Shown with a failing test's output (expected network errors, e.g. a refused socket, show up here too).
    page.on("console", lambda message: print(f"[browser {message.type}] {message.text}") if message.type in ("error", "warning") else None)
    try:
        page.goto(url)
        try:
            if ready:
                page.wait_for_selector("body[data-ready='true']", timeout=10_000)
        except Exception as exc:
            raise AssertionError(f"the page did not start ({exc}); errors in the page: {watch.errors}") from None
        yield watch
    finally:
        try:
            watch.screenshot(name)
        finally:
            context.close()
    assert not watch.errors, f"uncaught errors or policy violations in the page: {watch.errors}"


# ---------------------------------------------------------------- the services


class WireRecorder:
    """ASGI middleware: records what crosses a service's WebSocket (/ws/stt, /ws/tts), exactly as the
    service receives and sends it."""

    def __init__(self, app: ASGIApp, wire: Wire) -> None:
        self.app = app
        self.wire = wire

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                if message.get("bytes") is not None:
                    self.wire.audio_frames.append(message["bytes"])
                elif message.get("text") is not None:
                    self.wire.client_messages.append(json.loads(message["text"]))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "websocket.send" and message.get("text"):
                self.wire.server_messages.append(json.loads(message["text"]))
            elif message["type"] == "websocket.send" and message.get("bytes") is not None:
                self.wire.server_frames.append(message["bytes"])
            elif message["type"] == "websocket.close":
                self.wire.closes.append((message.get("code"), message.get("reason")))
            await send(message)

        await self.app(scope, recording_receive, recording_send)


@dataclass
class Wire:
    audio_frames: list[bytes] = field(default_factory=list)
    client_messages: list[dict[str, Any]] = field(default_factory=list)
    server_messages: list[dict[str, Any]] = field(default_factory=list)
    server_frames: list[bytes] = field(default_factory=list)
    """Binary frames the service sent (the PCM16 of /ws/tts's audio chunks)."""
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.server_messages if m.get("type") == kind]

    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.audio_frames), dtype="<i2").astype(np.float32) / 32768.0


@dataclass
class Stack:
    settings: Settings
    tts: RunningServer
    stt: RunningServer | None
    wire: Wire
    """/ws/stt, as the STT service saw it."""
    ollama: OllamaDouble | None
    tts_wire: Wire = field(default_factory=Wire)
    """/ws/tts (the reply stream), as the TTS service saw it."""

    @property
    def url(self) -> str:
        return f"{self.tts.http_url}/"


def with_dashboard(app: Any, settings: Settings) -> Any:
    """The dashboard router on the TTS app, in front of the static mount at "/" (which would answer first)."""
    try:
        app.url_path_for("dashboard_config")
        return app  # tts/server.py includes it already
    except NoMatchFound:
        pass
    app.include_router(build_router(settings))
    routes = app.router.routes
    mounts = [route for route in routes if isinstance(route, Mount) and route.path == ""]
    for mount in mounts:
        routes.remove(mount)
        routes.append(mount)
    return app


@pytest.fixture
def start_stack(
    make_settings: Callable[..., Settings], voices_dir: Path  # noqa: F811
) -> Iterator[Callable[..., Stack]]:
    """Starts the STT service (unless `stt_running=False`; `stt_model_loads=False` when its model is meant to
    fail) and the TTS service with the dashboard; `security`, `auth` and `tls` are those config sections
    (with tls, both serve HTTPS and WSS), `data_dir` the folder of the stores (jobs)."""
    from stt.server import create_app as create_stt_app
    from tts.server import create_app as create_tts_app

    with ExitStack() as stack:

        def start(
            *,
            llm_url: str,
            stt_running: bool = True,
            stt_model_loads: bool = True,
            stt: dict[str, Any] | None = None,
            security: dict[str, Any] | None = None,
            auth: dict[str, Any] | None = None,
            tls: dict[str, str] | None = None,
            data_dir: str | None = None,
            **tts: Any,
        ) -> Stack:
            base = tts_settings(voices_dir, llm_url, **tts)
            where = {} if data_dir is None else {"data_dir": data_dir}
            settings = make_settings(
                stt=stt or {}, logging={"level": "warning"}, security=security or {}, auth=auth or {}, tls=tls or {},
                **where,
            )
            verify = client_verify(settings)
            settings.tts, settings.llm = base.tts, base.llm
            wire = Wire()
            stt_server = None
            if stt_running:
                stt_app = create_stt_app(settings)
                stt_app.add_middleware(WireRecorder, wire=wire)
                stt_server = stack.enter_context(run_server(stt_app, **server_options(settings)))
                settings.stt.port = stt_server.port
                url = f"{stt_server.http_url}/health"
                _wait_for(lambda: not httpx.get(url, verify=verify).json()["loading"], "STT model load")
                health = httpx.get(url, verify=verify).json()
                assert health["whisper_loaded"] is stt_model_loads, health
            else:
                settings.stt.port = int(down_url().rsplit(":", 1)[1])
            tts_wire = Wire()
            tts_app = with_dashboard(create_tts_app(settings), settings)
            tts_app.add_middleware(WireRecorder, wire=tts_wire)
            tts_server = stack.enter_context(run_server(tts_app, **server_options(settings)))
            _wait_for(lambda: not tts_app.state.service.engines.loading, "TTS engine start")
            return Stack(settings, tts_server, stt_server, wire, None, tts_wire)

        yield start


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def save_docs_screenshot(source: Path) -> None:
    """docs/dashboard.png (shown in the README) is written when missing or when UPDATE_SCREENSHOTS=1,
    so an ordinary test run leaves the checkout clean."""
    if DOCS_SCREENSHOT.exists() and os.environ.get("UPDATE_SCREENSHOTS") != "1":
        return
    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(source, DOCS_SCREENSHOT)
