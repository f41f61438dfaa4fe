"""What GET /v1/engines reports of each configured engine: its state, whether it is the default, its
voices and what it can do. Reading voices touches the file system: describe() blocks (run it in a thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tts.engines import engine_class
from tts.engines.host import EngineSlot, EngineState


@dataclass(frozen=True)
class EngineInfo:
    name: str
    state: EngineState
    """ready, loading, unavailable (see reason and fix) or unloaded (loads on its next request)."""
    default: bool
    """Whether a request that names no engine speaks with it."""
    streaming: bool
    """Speaks sentence by sentence (audio starts before the whole text is synthesized)."""
    cloning: bool
    """Makes voices from an uploaded reference clip."""
    fallback: bool = False
    """The fallback engine speaks in its place (it could not start)."""
    reason: str | None = None
    fix: str | None = None
    voices: int | None = None
    """How many voices it offers (None while it is not loaded)."""
    sample_rate: int | None = None
    """Samples per second of its default voice (None while it is not loaded, or not known before speaking)."""
    languages: list[str] = field(default_factory=list)
    speakers: bool = False
    """Whether some voice has several speakers to pick from (`speaker`)."""


def describe(slot: EngineSlot, default: bool) -> EngineInfo:
    """`slot` as GET /v1/engines reports it. Blocks (lists voices)."""
    cls = engine_class(slot.name)
    base = {"name": slot.name, "state": slot.state, "default": default, "streaming": cls.streaming, "cloning": cls.clones}
    engine = slot.engine
    if engine is None:
        fix = "fix the cause named in reason and restart the service" if slot.error else None
        return EngineInfo(**base, reason=slot.error, fix=fix)
    details = engine.voice_details()
    return EngineInfo(
        **base,
        fallback=slot.fallback,
        reason=slot.error,
        fix=f"fix the {slot.name} engine (see reason) and restart; until then {engine.name} speaks" if slot.fallback else None,
        voices=len(details),
        sample_rate=engine.sample_rate(),
        languages=sorted({language for voice in details for language in voice.languages}),
        speakers=any(voice.speakers for voice in details),
    )
