"""The xtts engine: Coqui XTTS v2 through the maintained `coqui-tts` package (the `xtts` extra).

Voices are reference speaker WAVs in tts.xtts.speakers_dir (`NAME.wav` is voice NAME); XTTS clones
the voice from them. CUDA is used when torch sees a device (tts.xtts.device auto). coqui-tts and
torch are imported only when this engine starts, with a clear message when they are missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings, TtsSettings, XttsSettings
from core.errors import EngineError, VoiceNotFound
from core.logging import get_logger
from core.text import split_sentences
from tts.engines.base import AudioChunk, Engine, EngineStartError, VoiceInfo
from tts.voices import VOICE_NAME, check_voice_name

log = get_logger(__name__)

INSTALL_HINT = "install the xtts extra: `pip install -e .[xtts]` (or `pip install coqui-tts`)"
DEFAULT_SAMPLE_RATE = 24000  # XTTS v2's output rate

ModelFactory = Callable[[XttsSettings, str], Any]
"""Builds the coqui-tts model object (`TTS(...)`) for a device; replaced by a double in tests."""


def _coqui_model(settings: XttsSettings, device: str) -> Any:
    try:
        from TTS.api import TTS  # coqui-tts keeps the TTS package name
    except ImportError as exc:
        raise EngineStartError(f"the xtts engine needs coqui-tts ({exc}); {INSTALL_HINT}") from None
    model = Path(settings.model)
    if model.is_dir():
        tts = TTS(model_path=str(model), config_path=str(model / "config.json"), progress_bar=False)
    else:
        tts = TTS(model_name=settings.model, progress_bar=False)
    return tts.to(device)


def _pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    try:
        import torch
    except ImportError as exc:
        raise EngineStartError(f"the xtts engine needs torch ({exc}); {INSTALL_HINT}") from None
    return "cuda" if torch.cuda.is_available() else "cpu"


class XttsEngine(Engine):
    name = "xtts"
    clones = True

    def __init__(
        self, settings: Settings, *, as_fallback: bool = False, model_factory: ModelFactory | None = None
    ) -> None:
        super().__init__(settings, as_fallback=as_fallback)
        self.settings: XttsSettings = settings.tts.xtts
        self.speakers_dir = settings.resolve_path(self.settings.speakers_dir)
        self._factory = model_factory or _coqui_model
        self._model: Any = None
        # One inference at a time on the one model: XTTS is heavy and its state is not meant to be shared.
        self._lock = threading.Lock()

    @classmethod
    def own_default_voice(cls, tts: TtsSettings) -> str:
        return tts.xtts.speaker

    def start(self) -> None:
        if not (self.speakers_dir / f"{self.default_voice}.wav").is_file():
            raise EngineStartError(
                f"no reference WAV for the default XTTS speaker {self.default_voice!r}: put "
                f"{self.default_voice}.wav (6-30 s of clean speech) into {self.speakers_dir}, or set tts.xtts.speaker"
            )
        device = _pick_device(self.settings.device)
        try:
            self._model = self._factory(self.settings, device)
        except EngineStartError:
            raise
        except Exception as exc:
            raise EngineStartError(f"could not load XTTS model {self.settings.model!r}: {exc}") from None
        log.info("xtts_loaded", model=self.settings.model, device=device)

    @property
    def voice_loaded(self) -> bool:
        return self._model is not None

    def voices(self) -> list[str]:
        if not self.speakers_dir.is_dir():
            return []
        return sorted(
            path.stem for path in self.speakers_dir.glob("*.wav") if VOICE_NAME.fullmatch(path.stem) and path.is_file()
        )

    def voice_details(self) -> list[VoiceInfo]:
        rate = self.sample_rate()
        return [
            VoiceInfo(name, [self.settings.language], sample_rate=rate, size_bytes=self._size(name)) for name in self.voices()
        ]

    def _size(self, name: str) -> int | None:
        try:
            return (self.speakers_dir / f"{name}.wav").stat().st_size
        except OSError:
            return None

    def resolve_voice(self, voice: str | None) -> str:
        name = check_voice_name(voice or self.default_voice)
        if not (self.speakers_dir / f"{name}.wav").is_file():
            raise VoiceNotFound(name, self.voices(), self.name)
        return name

    def sample_rate(self) -> int:
        synthesizer = getattr(self._model, "synthesizer", None)
        return int(getattr(synthesizer, "output_sample_rate", 0) or DEFAULT_SAMPLE_RATE)

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        if self._model is None:
            raise EngineError("the xtts engine is not started")
        speaker_wav = str(self.speakers_dir / f"{voice}.wav")
        for sentence in split_sentences(text):
            try:
                with self._lock:
                    wav = self._model.tts(
                        text=sentence, speaker_wav=speaker_wav, language=self.settings.language, speed=speed
                    )
            except Exception as exc:
                raise EngineError(f"XTTS failed: {exc}") from None
            samples = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
            yield AudioChunk(samples, self.sample_rate(), sentence)

    def close(self) -> None:
        self._model = None


ENGINE = XttsEngine
