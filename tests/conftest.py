"""Fixtures shared by every test: a clean environment, the toy Whisper model, test settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings, get_settings
from tests.fixtures.ollama_double import OllamaDouble, ollama_double
from tests.fixtures.openai_chat_double import OpenAiChatDouble, openai_chat_double
from tests.fixtures.whisper_model import build_whisper_model

_OUR_VARIABLES = ("CONFIG_PATH", "ENVIRONMENT", "OLLAMA_URL", "GROQ_API_KEY")
_OUR_PREFIXES = ("STT__", "TTS__", "LLM__", "LOGGING__")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's own STT__MODEL or CONFIG_PATH must not change what a test sees."""
    for name in list(os.environ):
        if name in _OUR_VARIABLES or name.upper().startswith(_OUR_PREFIXES):
            monkeypatch.delenv(name)
    # The Hub must never be reached: a test that tries fails instead of hanging on the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Every app a test starts listens for Wyoming too, on a free port: several can run at once.
    monkeypatch.setenv("STT__WYOMING__PORT", "0")
    monkeypatch.setenv("TTS__WYOMING__PORT", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    """A real HTTP server on 127.0.0.1 speaking Ollama's wire format; behaviour set per test."""
    with ollama_double() as double:
        yield double


@pytest.fixture
def chat_server() -> Iterator[OpenAiChatDouble]:
    """A real HTTP server on 127.0.0.1 speaking OpenAI's chat completions wire format (llm.provider openai)."""
    with openai_chat_double() as double:
        yield double


@pytest.fixture(scope="session")
def whisper_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 MB random-weight CTranslate2 Whisper model: real faster-whisper code, garbage words."""
    return build_whisper_model(tmp_path_factory.mktemp("whisper") / "toy", shape="toy")


@pytest.fixture
def make_settings(whisper_model_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for tests: the toy model, greedy decoding (fast on random weights), plus overrides."""

    def build(**sections: dict[str, Any]) -> Settings:
        stt = {
            "model": str(whisper_model_dir),
            "models_dir": str(tmp_path / "models"),
            "beam_size": 1,
            "temperatures": [0.0],
            **sections.pop("stt", {}),
        }
        return Settings(stt=stt, **sections)

    return build
