"""Speech engines behind one interface (tts.engines.base.Engine), chosen by tts.engine."""

from __future__ import annotations

from typing import Any

from core.config import Settings
from tts.engines.base import AudioChunk, Engine

__all__ = ["AudioChunk", "Engine", "ENGINE_NAMES", "create_engine"]

ENGINE_NAMES = ("piper", "espeak", "xtts", "groq")


def create_engine(name: str, settings: Settings, *, as_fallback: bool = False, **options: Any) -> Engine:
    """A new, not yet started engine. Each module is imported only when its engine is chosen."""
    if name == "piper":
        from tts.engines.piper import PiperEngine

        return PiperEngine(settings, **options)
    if name == "espeak":
        from tts.engines.espeak import EspeakEngine

        return EspeakEngine(settings, as_fallback=as_fallback)
    if name == "xtts":
        from tts.engines.xtts import XttsEngine

        return XttsEngine(settings, **options)
    if name == "groq":
        from tts.engines.groq import GroqEngine

        return GroqEngine(settings, **options)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
