"""The TTS and LLM sections of the one Settings model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from core.config import ConfigError, Settings, load_settings


def test_defaults_match_the_issue() -> None:
    settings = Settings()
    tts, llm = settings.tts, settings.llm
    assert (tts.host, tts.port, tts.engine, tts.fallback_engine) == ("127.0.0.1", 8000, "piper", "espeak")
    assert (tts.reply_default, tts.max_concurrent, tts.piper.download, tts.piper.use_cuda) == (True, 2, True, False)
    assert tts.piper.voice == "en_US-lessac-medium" and tts.voice is None
    assert (llm.url, llm.model, llm.retry_attempts, llm.retry_base_delay_s) == (
        "http://localhost:11434",
        "llama3.2:3b",
        3,
        1.0,
    )


def test_every_tts_and_llm_key_is_documented() -> None:
    from core.config import (
        EspeakSettings,
        GroqSettings,
        LlmSettings,
        OpenAiSpeechSettings,
        PiperSettings,
        TtsSettings,
        XttsSettings,
    )

    sections = (TtsSettings, PiperSettings, EspeakSettings, XttsSettings, GroqSettings, OpenAiSpeechSettings, LlmSettings)
    for model in sections:
        for name, field in model.model_fields.items():
            if name not in ("piper", "espeak", "xtts", "groq", "openai", "wyoming"):
                assert field.description, f"{model.__name__}.{name} has no docstring"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tts:\n  voice: en_US-amy-low\n  piper:\n    cache_size: 2\nllm:\n  url: http://yaml:1\n")
    monkeypatch.setenv("TTS__VOICE", "en_GB-alan-medium")
    monkeypatch.setenv("TTS__PIPER__USE_CUDA", "true")
    monkeypatch.setenv("OLLAMA_URL", "http://gpu-box:11434")
    settings = load_settings(config)
    assert settings.tts.voice == "en_GB-alan-medium"
    assert settings.tts.piper.use_cuda is True and settings.tts.piper.cache_size == 2
    assert settings.llm.url == "http://gpu-box:11434"


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("tts:\n  engine: festival\n", "tts.engine: Input should be 'piper', 'espeak', 'xtts' or 'groq'"),
        ("tts:\n  voice: ../../etc/passwd\n", "tts.voice: String should match pattern"),
        ("tts:\n  max_concurrent: 0\n", "tts.max_concurrent: Input should be greater than or equal to 1"),
        (
            "tts:\n  piper:\n    donwload: true\n",
            "unknown key 'donwload' in section 'tts.piper'; allowed keys: voice, download",
        ),
        ("llm:\n  retry_attempts: 11\n", "llm.retry_attempts: Input should be less than or equal to 10"),
        ("tts:\n  groq:\n    voices: []\n", "must be a non-empty list of plain voice names"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert fragment in str(error.value)


def test_uvicorn_can_import_the_app() -> None:
    from tts import server

    assert isinstance(server.app, FastAPI)
    with pytest.raises(AttributeError):
        server.nothing_here  # noqa: B018
