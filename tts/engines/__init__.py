"""Speech engines behind one interface (tts.engines.base.Engine), registered by name.

The names are the choices of `tts.engine` in the config; engine NAME lives in `tts/engines/NAME.py`,
which exposes its class as `ENGINE`. Adding an engine is that module plus its config section (its name
in the `tts.engine` choices and a settings section for its options). Each module is imported only
when its engine is used.
"""

from __future__ import annotations

import importlib
from typing import Any, get_args

from core.config import Settings, TtsSettings
from tts.engines.base import AudioChunk, Engine, EngineStartError

__all__ = ["AudioChunk", "ENGINE_NAMES", "Engine", "EngineStartError", "create_engine", "engine_class"]

ENGINE_NAMES: tuple[str, ...] = get_args(TtsSettings.model_fields["engine"].annotation)


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    return importlib.import_module(f"tts.engines.{name}").ENGINE  # type: ignore[no-any-return]


def create_engine(name: str, settings: Settings, *, as_fallback: bool = False, **options: Any) -> Engine:
    """A new, not yet started engine."""
    return engine_class(name)(settings, as_fallback=as_fallback, **options)
