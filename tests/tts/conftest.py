"""Fixtures of the TTS tests: synthetic Piper voices, the Ollama double, a running TTS server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from core.audio import float32_to_pcm16, resample
from core.config import Settings
from tests.fixtures.piper_voice import build_piper_voice
from tests.fixtures.server import RunningServer, run_server
from tts.engines import create_engine
from tts.engines.base import AudioChunk
from tts.engines.piper import PiperEngine
from tts.server import create_app

VOICE = "en_US-test-medium"


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "voices"
    build_piper_voice(folder, VOICE)
    return folder


LOW_VOICE = "en_US-test-low"
"""A second synthetic voice, at 16 kHz: mixed rates in one text or document."""


@pytest.fixture
def voices(tmp_path: Path) -> Path:
    """The voices folder with VOICE (22,050 Hz) and LOW_VOICE (16 kHz)."""
    folder = tmp_path / "voices"
    build_piper_voice(folder, VOICE)
    build_piper_voice(folder, LOW_VOICE, sample_rate=16000)
    return folder


def low_voice_at_22k(voices: Path, text: str) -> bytes:
    """LOW_VOICE's speech of `text` as PiperVoice gives it, resampled to 22,050 Hz PCM16 as the service joins it."""
    from piper import PiperVoice, SynthesisConfig

    low = PiperVoice.load(voices / f"{LOW_VOICE}.onnx")
    audio = np.concatenate([chunk.audio_float_array for chunk in low.synthesize(text, syn_config=SynthesisConfig())])
    return float32_to_pcm16(resample(audio, 16000, 22050))


def make_settings(voices_dir: Path, llm_url: str, **tts: Any) -> Settings:
    """`llm`, `conversations`, `data_dir`, `auth`, `security` and `jobs` set those sections; every other keyword is
    a tts setting."""
    llm = tts.pop("llm", {})
    others = {key: tts.pop(key) for key in ("conversations", "data_dir", "auth", "security", "jobs") if key in tts}
    return Settings(
        logging={"level": "warning"},
        tts={"voices_dir": str(voices_dir), "voice": VOICE, **tts},
        llm={"url": llm_url, "retry_base_delay_s": 0.0, "health_timeout_s": 0.5, **llm},
        **others,
    )


@contextmanager
def serve(settings: Settings, **app_options: Any) -> Iterator[tuple[RunningServer, httpx.Client]]:
    """The real app on a real uvicorn, once its engine has started (or failed to)."""
    app = create_app(settings, **app_options)
    with run_server(app) as server:
        deadline = time.monotonic() + 20
        while app.state.service.engines.loading:
            assert time.monotonic() < deadline, "engine did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=server.http_url, timeout=30) as client:
            yield server, client


class Gate:
    """Lets a test hold a synthesis inside a worker thread for as long as it wants, deterministically.
    The first `free` sentences pass without stopping."""

    def __init__(self, free: int = 0) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.sentences: list[str] = []
        self.free = free
        self._lock = threading.Lock()

    def wait_here(self, text: str) -> None:
        with self._lock:
            self.sentences.append(text)
            passing = len(self.sentences) <= self.free
        if passing:
            return
        self.entered.set()
        assert self.open.wait(30), "gate never opened"


class GatedPiperEngine(PiperEngine):
    """The real Piper engine, with a gate before every sentence.

    Our own code is wrapped (not Piper's): queueing, cancellation and /health-while-busy need a synthesis
    whose duration the test controls exactly; the audio still comes from real PiperVoice synthesis.
    """

    gate: Gate

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        self.gate.wait_here(text)
        yield from super().synthesize(text, voice, speed, speaker)


def gated_factory(gate: Gate) -> Callable[..., Any]:
    def factory(name: str, settings: Settings, **options: Any) -> Any:
        if name == "piper":
            engine = GatedPiperEngine(settings)
            engine.gate = gate
            return engine
        return create_engine(name, settings, **options)

    return factory


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached {what()}"
        time.sleep(0.005)
