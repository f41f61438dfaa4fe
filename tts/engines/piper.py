"""The Piper engine: `PiperVoice` ONNX voices from tts.voices_dir, loaded once and cached.

Up to tts.piper.cache_size voices stay loaded (least recently used dropped first). The folder is
looked at on every request, so a voice dropped into it is usable at once, and a voice file replaced
in place is reloaded (its modification time is part of the cache key).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.config import Settings, TtsSettings
from core.errors import EngineError, InvalidRequest, VoiceNotFound
from core.logging import get_logger
from core.priority import available_cores
from tts.engines.base import AudioChunk, Engine, EngineStartError, VoiceInfo
from tts.engines.piper_sessions import SynthesisLoad, load_aware_session
from tts.voices import (
    Downloader,
    check_voice_name,
    ensure_piper_voice,
    list_piper_voices,
    piper_voice_files,
    piper_voice_present,
)

log = get_logger(__name__)


class PiperEngine(Engine):
    name = "piper"

    def __init__(self, settings: Settings, *, as_fallback: bool = False, downloader: Downloader | None = None) -> None:
        super().__init__(settings, as_fallback=as_fallback)
        tts = settings.tts
        self.settings = tts.piper
        self.voices_dir: Path = settings.resolve_path(tts.voices_dir)
        self._downloader = downloader
        self._cache: OrderedDict[str, tuple[int, object]] = OrderedDict()
        self._lock = threading.Lock()
        """Guards _cache and _loading; never held while a voice loads."""
        self._loading: dict[str, threading.Lock] = {}
        """One lock per voice name, held while that voice loads (names are checked voice names: few)."""
        self._use_cuda = tts.piper.use_cuda
        self._synthesis_load = SynthesisLoad()
        """The syntheses under way in all of this engine's voices, by which their ONNX runs pick a session."""
        self._max_concurrent = tts.max_concurrent

    @classmethod
    def own_default_voice(cls, tts: TtsSettings) -> str:
        return tts.piper.voice

    def start(self) -> None:
        if self.settings.use_cuda:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                self._use_cuda = False
                log.warning(
                    "cuda_unavailable",
                    fix="tts.piper.use_cuda is true but this onnxruntime has no CUDA provider: "
                    "install onnxruntime-gpu (pip install onnxruntime-gpu) or set tts.piper.use_cuda false",
                    running_on="cpu",
                )
        ensure_piper_voice(
            self.voices_dir, self.default_voice, download=self.settings.download, downloader=self._downloader
        )
        try:
            self._voice(self.default_voice)
        except Exception as exc:
            raise EngineStartError(
                f"Piper voice {self.default_voice!r} in {self.voices_dir} cannot be loaded ({exc}); "
                "replace its .onnx and .onnx.json files (delete them to download them again)"
            ) from None

    def voices(self) -> list[str]:
        return list_piper_voices(self.voices_dir)

    def resolve_voice(self, voice: str | None) -> str:
        name = check_voice_name(voice or self.default_voice)
        if not piper_voice_present(self.voices_dir, name):
            raise VoiceNotFound(name, self.voices(), self.name)
        return name

    @property
    def voice_loaded(self) -> bool:
        return self.default_voice in self._cache

    def _cached(self, name: str, stamp: int):  # -> PiperVoice | None
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == stamp:
                self._cache.move_to_end(name)
                return cached[1]
            return None

    def _voice(self, name: str):  # -> PiperVoice
        model, config = piper_voice_files(self.voices_dir, name)
        try:
            stamp = model.stat().st_mtime_ns
        except FileNotFoundError:
            raise VoiceNotFound(name, self.voices(), self.name) from None
        voice = self._cached(name, stamp)
        if voice is not None:
            return voice
        # Loading (building an ONNX session) takes seconds: it holds only this voice's own lock, so
        # syntheses with cached voices go on meanwhile, and a voice is never loaded twice at once.
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            voice = self._cached(name, stamp)  # loaded by whoever held the lock before us
            if voice is not None:
                return voice
            voice = self._load(model, config)
            with self._lock:
                self._cache[name] = (stamp, voice)
                self._cache.move_to_end(name)
                while len(self._cache) > self.settings.cache_size:
                    dropped, _ = self._cache.popitem(last=False)
                    log.info(
                        "voice_unloaded", voice=dropped, reason="cache full", cache_size=self.settings.cache_size
                    )
        log.info("voice_loaded", voice=name, sample_rate=voice.config.sample_rate)
        return voice

    def _load(self, model: Path, config: Path):  # -> PiperVoice
        from piper import PiperVoice

        if self.settings.threads:
            return self._load_on_threads(model, config)
        voice = PiperVoice.load(model, config_path=config, use_cuda=self._use_cuda)
        narrow = self.narrow_threads()
        if narrow is not None:
            # Built while the voice already speaks on its plain session: for a medium voice they and their check
            # take about 1.5 s more than the plain session's 0.6 s, which no request should wait for.
            threading.Thread(
                target=self._share_sessions, args=(voice, model, narrow), name="piper-sessions", daemon=True
            ).start()
        return voice

    def narrow_threads(self) -> int | None:
        """The narrow session's threads when this engine's voices get load-aware sessions (tts.piper.adaptive_threads,
        on CPU, with threads 0 and more workers than one core each can run alone); None when they do not."""
        cores = available_cores()
        narrow = max(1, cores // self._max_concurrent)
        adaptive = self.settings.adaptive_threads and not self.settings.threads and not self._use_cuda
        return narrow if adaptive and narrow < cores else None

    def _share_sessions(self, voice: Any, model: Path, narrow: int) -> None:
        """Put `voice` on load-aware sessions (tts/engines/piper_sessions.py), or leave it on its plain one."""
        try:
            session = load_aware_session(model, self._synthesis_load, narrow, voice.session)
        except Exception as exc:  # onnx's and onnxruntime's own errors: the plain session serves on
            log.warning("piper_shared_sessions_failed", model=str(model), error=str(exc))
            return
        if session is None:
            log.warning("piper_shared_sessions_unusable", model=str(model), action="one session on default threads")
            return
        voice.session = session  # the next ONNX run takes it; one under way finishes on the plain session
        log.info("piper_shared_sessions_ready", model=model.name, narrow_threads=narrow)

    def _load_on_threads(self, model: Path, config: Path):  # -> PiperVoice
        from piper import PiperVoice

        # PiperVoice.load takes no session options; build the same voice with a thread count.
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        providers: list = (
            [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
            if self._use_cuda
            else ["CPUExecutionProvider"]
        )
        return PiperVoice(
            config=self._piper_config(config),
            session=onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers),
        )

    @staticmethod
    def _piper_config(config: Path):  # -> PiperConfig
        from piper.config import PiperConfig

        return PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))

    def _config(self, name: str) -> dict[str, Any]:
        """A voice's .onnx.json, read without loading the voice."""
        _, config = piper_voice_files(self.voices_dir, name)
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _speakers(self, name: str) -> dict[str, int]:
        speakers = self._config(name).get("speaker_id_map") or {}
        return {str(key): int(value) for key, value in speakers.items()} if isinstance(speakers, dict) else {}

    def sample_rate(self) -> int | None:
        rate = (self._config(self.default_voice).get("audio") or {}).get("sample_rate")
        return int(rate) if isinstance(rate, int) else None

    def voice_details(self) -> list[VoiceInfo]:
        details = []
        for name in self.voices():
            config = self._config(name)
            language = (config.get("language") or {}).get("code") or name.split("-")[0]
            audio = config.get("audio") if isinstance(config.get("audio"), dict) else {}
            rate = audio.get("sample_rate")
            speakers = self._speakers(name)
            try:
                size = sum(path.stat().st_size for path in piper_voice_files(self.voices_dir, name))
            except OSError:
                continue  # deleted while listed
            details.append(
                VoiceInfo(
                    name,
                    [str(language)],
                    sorted(speakers, key=speakers.get),
                    quality=str(audio.get("quality") or name.rsplit("-", 1)[-1]),
                    sample_rate=rate if isinstance(rate, int) else None,
                    loaded=name in self._cache,
                    size_bytes=size,
                )
            )
        return details

    def resolve_speaker(self, voice: str, speaker: str | None) -> str | None:
        if speaker is None:
            return None
        speakers = self._speakers(voice)
        if speaker in speakers or (speaker.isdigit() and int(speaker) in speakers.values()):
            return speaker
        offered = ", ".join(speakers) or "none: it has one speaker"
        raise InvalidRequest(f"voice {voice!r} has no speaker {speaker!r}; its speakers: {offered}", param="speaker")

    def synthesize(self, text: str, voice: str, speed: float, speaker: str | None = None) -> Iterator[AudioChunk]:
        from piper import SynthesisConfig

        piper_voice = self._voice(voice)
        speaker_id = self.settings.speaker_id
        if speaker is not None:
            speaker_id = int(speaker) if speaker.isdigit() else piper_voice.config.speaker_id_map.get(speaker)
        if speaker_id is not None and speaker_id >= piper_voice.config.num_speakers:
            raise EngineError(
                f"tts.piper.speaker_id {speaker_id} is out of range for voice {voice!r}, "
                f"which has {piper_voice.config.num_speakers} speaker(s)"
            )
        config = SynthesisConfig(
            speaker_id=speaker_id if piper_voice.config.num_speakers > 1 else None,
            # The voice's own pace, scaled: speed 2.0 halves every phoneme's length.
            length_scale=piper_voice.config.length_scale / speed,
            noise_scale=self.settings.noise_scale,
            noise_w_scale=self.settings.noise_w_scale,
        )
        with self._synthesis_load.run():
            for chunk in piper_voice.synthesize(text, syn_config=config):
                yield AudioChunk(chunk.audio_float_array, chunk.sample_rate, text)

    def load_voice(self, voice: str) -> None:
        self._voice(voice)

    def unload_voice(self, name: str) -> None:
        with self._lock:
            if self._cache.pop(name, None) is not None:
                log.info("voice_unloaded", voice=name)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()


ENGINE = PiperEngine
