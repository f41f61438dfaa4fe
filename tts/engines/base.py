"""The one interface every speech engine implements.

Engines take text and return audio as plain dataclasses; they know no protocol and raise only core
errors (core.errors). All their methods block (model calls, file access, network for cloud engines):
callers run them in the worker pool, never on the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from core.config import Settings, TtsSettings
from core.errors import InvalidRequest


class EngineStartError(Exception):
    """An engine cannot start (missing voice, failed download, missing extra); the message says how to fix it."""


@dataclass(frozen=True)
class VoiceInfo:
    """What a client needs to know to pick a voice."""

    name: str
    languages: list[str]
    speakers: list[str] = field(default_factory=list)
    """Speaker names of a multi-speaker voice; empty for a voice with one."""
    quality: str | None = None
    """Piper's quality (x_low, low, medium, high); None where an engine has no such notion."""
    sample_rate: int | None = None
    """Samples per second of its audio, when known without synthesizing."""
    loaded: bool = True
    """Whether it is in memory, ready to speak without loading first."""
    size_bytes: int | None = None
    """Its files' size on disk (None: it has no files of its own)."""


@dataclass(frozen=True)
class AudioChunk:
    """Audio for one piece of text (usually one sentence)."""

    samples: np.ndarray
    """Mono float32 samples in [-1, 1]."""

    sample_rate: int
    """Samples per second."""

    text: str = ""
    """The text this audio speaks."""


class Engine(ABC):
    """A speech engine: one instance per process, shared by every request (thread-safe)."""

    name: ClassVar[str]
    """Engine name as used in tts.engine."""
    streaming: ClassVar[bool] = True
    """Speaks sentence by sentence, so audio starts before the whole text is synthesized."""
    clones: ClassVar[bool] = False
    """Makes a new voice from a reference clip (POST /v1/voices)."""

    def __init__(self, settings: Settings, *, as_fallback: bool = False) -> None:
        # tts.voice names a voice of the configured engine: an engine standing in for it as the fallback
        # uses its own default instead.
        self.default_voice: str = (None if as_fallback else settings.tts.voice) or self.own_default_voice(settings.tts)
        """The voice used when a request names none."""

    @classmethod
    @abstractmethod
    def own_default_voice(cls, tts: TtsSettings) -> str:
        """The default voice in this engine's own config section (used when tts.voice is null)."""

    @abstractmethod
    def start(self) -> None:
        """Prepare the default voice (download, load); raise EngineStartError saying how to fix a failure."""

    @abstractmethod
    def voices(self) -> list[str]:
        """Sorted names of the voices this engine can speak now."""

    @abstractmethod
    def resolve_voice(self, voice: str | None) -> str:
        """The voice to use for `voice` (None: the default). Raises InvalidVoiceName for anything but a plain
        name, before touching the file system, and VoiceNotFound listing the voices for an unknown one."""

    def resolve_speaker(self, voice: str, speaker: str | None) -> str | None:
        """The speaker of a resolved voice to use for `speaker` (None: the voice's default). Raises
        InvalidRequest for a speaker the voice does not have."""
        if speaker is None:
            return None
        raise InvalidRequest(f"voice {voice!r} of the {self.name} engine has no speakers to choose from", param="speaker")

    def voice_details(self) -> list[VoiceInfo]:
        """Every voice with its languages and speakers (the name's language part, unless an engine knows better)."""
        return [VoiceInfo(name, [name.split("-")[0].replace("_", "-")]) for name in self.voices()]

    @abstractmethod
    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        """Speak `text` with a voice returned by resolve_voice (and a speaker from resolve_speaker), at `speed`
        (1.0 normal, 2.0 twice as fast). A lazy generator: work happens as it is iterated, so a caller can
        stop between chunks."""

    def sample_rate(self) -> int | None:
        """Samples per second of the default voice's audio, when known without synthesizing."""
        return None

    def load_voice(self, voice: str) -> None:  # noqa: B027 (optional hook: most engines load nothing per voice)
        """Load `voice` now (one unloaded for idleness, before a turn speaks with it), so its turn can say how
        long that took."""

    @property
    def voice_loaded(self) -> bool:
        """Whether the default voice is ready to speak without loading first."""
        return True

    def unload_voice(self, name: str) -> None:  # noqa: B027 (optional hook: only engines that cache voices)
        """Drop voice `name` from memory (it was deleted, or has been idle for tts.idle_unload_s)."""

    def close(self) -> None:  # noqa: B027 (optional hook: most engines hold nothing to release)
        """Release models and connections."""
