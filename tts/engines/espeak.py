"""The espeak-ng engine: robotic but intelligible speech with no download at all (the fallback).

Built on the in-process ctypes binding in espeak_lib. libespeak-ng is not reentrant, so syntheses
are serialised by the binding's lock; each sentence takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.config import EspeakSettings, Settings, TtsSettings
from core.errors import EngineError, VoiceNotFound
from core.text import split_sentences
from tts.engines.base import AudioChunk, Engine, EngineStartError, VoiceInfo
from tts.engines.espeak_lib import EspeakError, EspeakNG
from tts.voices import VOICE_NAME, check_voice_name

_MIN_RATE_WPM = 80
_MAX_RATE_WPM = 450


class EspeakEngine(Engine):
    name = "espeak"

    def __init__(self, settings: Settings, *, as_fallback: bool = False) -> None:
        super().__init__(settings, as_fallback=as_fallback)
        self.settings: EspeakSettings = settings.tts.espeak
        self._espeak = EspeakNG()
        self._voices: list[str] | None = None

    @classmethod
    def own_default_voice(cls, tts: TtsSettings) -> str:
        return tts.espeak.voice

    def start(self) -> None:
        try:
            self.resolve_voice(None)
        except EspeakError as exc:
            raise EngineStartError(f"espeak-ng cannot start: {exc}; reinstall espeakng-loader") from None
        except VoiceNotFound as exc:
            raise EngineStartError(f"{exc.message}; set tts.voice (or tts.espeak.voice)") from None

    def voices(self) -> list[str]:
        if self._voices is None:
            # Language codes (en-us, de, pt-br...): the names that are plain names. Display names
            # ("English (America)") and file identifiers ("gmw/en-US") resolve too but are not listed.
            self._voices = sorted(
                name for name in self._espeak.voices() if VOICE_NAME.fullmatch(name) and not name[0].isupper()
            )
        return self._voices

    def sample_rate(self) -> int:
        return self._espeak.sample_rate

    def voice_details(self) -> list[VoiceInfo]:
        rate = self.sample_rate()
        return [VoiceInfo(name, [name], sample_rate=rate) for name in self.voices()]  # named by language

    def resolve_voice(self, voice: str | None) -> str:
        name = check_voice_name(voice or self.default_voice)
        base = name.partition("+")[0]
        if base.casefold() not in {known.casefold() for known in self.voices()}:
            raise VoiceNotFound(name, self.voices(), self.name)
        return name

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        rate = min(_MAX_RATE_WPM, max(_MIN_RATE_WPM, round(self.settings.rate_wpm * speed)))
        for sentence in split_sentences(text):
            try:
                audio = self._espeak.synthesize(sentence, voice=voice, rate_wpm=rate, pitch=self.settings.pitch)
            except EspeakError as exc:
                if "voice" in str(exc):
                    raise VoiceNotFound(voice, self.voices(), self.name) from None
                raise EngineError(f"espeak-ng failed: {exc}") from None
            yield AudioChunk(audio.samples, audio.sample_rate, sentence)


ENGINE = EspeakEngine
