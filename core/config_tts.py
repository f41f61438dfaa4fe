"""The `tts` section of the configuration and its per-engine sections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from core.config_base import Section, WyomingSettings

VOICE_NAME_PATTERN = r"^[A-Za-z0-9_+-]+(\.[A-Za-z0-9_+-]+)*$"
"""A plain voice name: letters, digits, `_`, `-`, `+` and inner dots; never a path."""


class PiperSettings(Section):
    voice: str = Field("en_US-lessac-medium", pattern=VOICE_NAME_PATTERN, max_length=100)
    """Default Piper voice (`<lang>_<REGION>-<name>-<quality>`) when tts.voice is null."""
    download: bool = True
    """Download the default voice with Piper's downloader when it is missing."""
    use_cuda: bool = False
    """Run Piper voices on CUDA through onnxruntime-gpu."""
    threads: int = Field(0, ge=0, le=256)
    """onnxruntime threads per synthesis; 0 lets onnxruntime choose (one per core). With several workers
    on few cores, cores / tts.max_concurrent avoids oversubscription (but a lone request then runs on fewer
    cores): tts.piper.adaptive_threads has both."""
    adaptive_threads: bool = True
    """With threads 0, on CPU and tts.max_concurrent above 1: a synthesis that runs alone uses every core, and
    while several run each uses cores / tts.max_concurrent, so concurrent requests do not oversubscribe the
    cores (speech jobs rendered in this process, jobs.workers, run beside them and are not in that share).
    Each voice then holds two onnxruntime sessions over one copy of its weights: about 85 MB more
    resident memory for a medium voice (false: one session on onnxruntime's default threads)."""
    cache_size: int = Field(4, ge=1, le=64)
    """Piper voices kept loaded in memory; the least recently used one is dropped first."""
    speaker_id: int | None = Field(None, ge=0)
    """Speaker of multi-speaker voices; null uses the voice's first speaker."""
    noise_scale: float | None = Field(None, ge=0.0, le=2.0)
    """Generator noise; null keeps the value in the voice's config."""
    noise_w_scale: float | None = Field(None, ge=0.0, le=2.0)
    """Phoneme width noise; null keeps the value in the voice's config."""
    catalog_url: str = "https://huggingface.co/rhasspy/piper-voices/resolve/main/voices.json"
    """Piper's voices.json: the voices GET /v1/voices/catalog offers for download."""
    download_base_url: str = "https://huggingface.co/rhasspy/piper-voices/resolve/main/"
    """Where a catalog voice's files are fetched from (each file's path in voices.json is relative to it)."""
    catalog_cache_s: float = Field(3_600.0, ge=0.0, le=604_800.0)
    """How long the fetched catalog is kept before it is fetched again."""
    download_timeout_s: float = Field(60.0, gt=0.0, le=3_600.0)
    """Longest wait for the catalog, or for the next bytes of a voice file being downloaded."""
    max_downloads: int = Field(2, ge=1, le=16)
    """Voice downloads that run at once; more wait in a queue of the same length, and past it are refused."""


class EspeakSettings(Section):
    voice: str = Field("en-us", pattern=VOICE_NAME_PATTERN, max_length=100)
    """espeak-ng voice (language code such as en-us, de, fr, optionally +variant like en-us+f3) used when
    tts.voice is null or espeak is the fallback."""
    rate_wpm: int = Field(175, ge=80, le=450)
    """Speaking rate at speed 1.0, in words per minute."""
    pitch: int = Field(50, ge=0, le=100)
    """Base pitch, 0-100 (50 is the voice's normal pitch)."""


class XttsSettings(Section):
    model: str = "tts_models/multilingual/multi-dataset/xtts_v2"
    """coqui-tts model name (downloaded by coqui-tts on first use) or a local model directory."""
    speakers_dir: Path = Path("models/xtts/speakers")
    """Folder of reference speaker WAVs; `NAME.wav` is the voice NAME (relative to the project directory)."""
    speaker: str = Field("default", pattern=VOICE_NAME_PATTERN, max_length=100)
    """Default speaker (a WAV name in speakers_dir without .wav) when tts.voice is null."""
    language: str = Field("en", min_length=2, max_length=10)
    """Language of the text (XTTS v2 codes: en, de, fr, es, it, pt, pl, tr, ru, nl, cs, ar, zh-cn, ja, hu, ko, hi)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto uses CUDA when torch sees a CUDA device and falls back to the CPU."""
    clip_min_s: float = Field(3.0, gt=0.0, le=60.0)
    """Shortest reference clip POST /v1/voices accepts to clone a voice."""
    clip_max_s: float = Field(30.0, gt=0.0, le=600.0)
    """Longest reference clip POST /v1/voices accepts to clone a voice."""
    clip_min_dbfs: float = Field(-40.0, ge=-90.0, le=0.0)
    """Quietest reference clip accepted (RMS level in dBFS); a quieter one is refused as silence."""


class GroqSettings(Section):
    base_url: str = "https://api.groq.com/openai/v1"
    """Groq's OpenAI-compatible API root; `/audio/speech` is appended."""
    api_key: SecretStr | None = None
    """Groq API key (GROQ_API_KEY is accepted too); never logged or reported."""
    model: str = "canopylabs/orpheus-v1-english"
    """Groq speech model."""
    voice: str = Field("autumn", pattern=VOICE_NAME_PATTERN, max_length=100)
    """Default Groq voice when tts.voice is null."""
    voices: list[str] = Field(default_factory=lambda: ["autumn", "diana", "hannah", "austin", "daniel", "troy"])
    """Voices offered by /voices and accepted in requests."""
    timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    """Longest wait for one speech request to Groq."""
    max_input_chars: int = Field(200, ge=1, le=100_000)
    """Longest input Groq accepts in one request; longer text is sent sentence by sentence within it."""

    @field_validator("voices")
    @classmethod
    def _plain_voice_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not re.match(VOICE_NAME_PATTERN, name)]
        if not value or bad:
            raise ValueError(
                f"must be a non-empty list of plain voice names (letters, digits, _ - + .), got {bad or value}"
            )
        return value


EngineName = Literal["piper", "espeak", "xtts", "groq"]
"""The speech engines (tts/engines/NAME.py)."""

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
"""The voice names of OpenAI's speech API; a request naming one speaks with the voice tts.openai.voices maps it to."""


class OpenAiSpeechSettings(Section):
    hd_model_engine: EngineName | None = None
    """Engine that the model name tts-1-hd selects on /v1/audio/speech; null: the default engine (tts-1 and
    gpt-4o-mini-tts always mean the default engine; an engine's own name selects that engine)."""
    voices: dict[str, str] = Field(default_factory=dict)
    """OpenAI voice names (alloy, nova, ...) mapped to voices of the engine; a name left out speaks with the
    engine's default voice, so every OpenAI client works unchanged."""
    forward_timeout_s: float = Field(600.0, gt=0.0, le=7_200.0)
    """Longest wait for the STT service when /v1/audio/transcriptions and /translations are forwarded to it."""

    @field_validator("voices")
    @classmethod
    def _plain_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{key}: {name}" for key, name in value.items() if not re.match(VOICE_NAME_PATTERN, name)]
        unknown = [key for key in value if key not in OPENAI_VOICES]
        if bad or unknown:
            raise ValueError(
                f"maps OpenAI voice names ({', '.join(OPENAI_VOICES)}) to plain voice names; "
                f"unknown names: {unknown or 'none'}, bad voice names: {bad or 'none'}"
            )
        return value


class TtsWyomingSettings(WyomingSettings):
    port: int = Field(10200, ge=0, le=65535)
    """TCP port of the TTS service's Wyoming listener; 0 takes a free port (tests)."""


class TtsSettings(Section):
    host: str = "127.0.0.1"
    """Interface the TTS service listens on (0.0.0.0 for every interface)."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port of the TTS service and the dashboard."""
    engine: EngineName = "piper"
    """Default speech engine: the one a request that names none speaks with (PUT /v1/engines/default changes it
    until restart)."""
    engines: list[EngineName] = Field(default_factory=list, max_length=4)
    """More engines served side by side with tts.engine; a request picks one with `engine` (OpenAI: `model`)."""
    preload: bool = False
    """Load every engine of tts.engines at start-up; otherwise each loads on its first request."""
    idle_unload_s: float = Field(0.0, ge=0.0, le=604_800.0)
    """Unload an engine unused this long (seconds) to free its memory; the next request loads it again. 0 never unloads."""
    fallback_engine: Literal["espeak", "none"] = "espeak"
    """Engine used when the configured one cannot start."""
    voice: str | None = Field(None, pattern=VOICE_NAME_PATTERN, max_length=100)
    """Default voice of the configured engine; null takes the engine's own default (piper.voice, espeak.voice,
    xtts.speaker, groq.voice)."""
    voices_dir: Path = Path("models/piper")
    """Folder of Piper voices (relative to the project directory)."""
    max_voice_upload_bytes: int = Field(134_217_728, ge=1_024, le=2_147_483_648)
    """Largest upload POST /v1/voices takes: a Piper voice's model and config together, or a reference clip."""
    max_voice_uploads: int = Field(2, ge=1, le=16)
    """Voice uploads read and checked at once (each is held in memory until it is kept); the next gets 503."""
    reply_default: bool = True
    """When a request does not say, speak the LLM's reply to the text rather than the text."""
    max_text_length: int = Field(2_000, ge=1, le=100_000)
    """Longest text accepted, in characters."""
    min_speed: float = Field(0.5, gt=0.0, le=1.0)
    """Slowest speaking speed a request may ask for (1.0 is the voice's normal speed)."""
    max_speed: float = Field(2.0, ge=1.0, le=10.0)
    """Fastest speaking speed a request may ask for."""
    max_blocks: int = Field(1_000, ge=1, le=100_000)
    """Blocks one document (POST /v1/speech, a job) may have."""
    max_break_s: float = Field(10.0, gt=0.0, le=600.0)
    """Longest pause one SSML `<break>` or document block's pause_after_ms may ask for, in seconds."""
    max_concurrent: int = Field(2, ge=1, le=64)
    """Syntheses that run at once (the worker pool)."""
    queue_timeout_s: float = Field(30.0, gt=0.0, le=600.0)
    """How long a request waits for a free worker before it gets 503."""
    retry_after_s: int = Field(5, ge=1, le=3_600)
    """Seconds sent in Retry-After when the service is busy or still loading."""
    first_fragment_min_words: int = Field(4, ge=0, le=100)
    """The first fragment of a reply may end at a comma, semicolon or colon once it holds this many words, so speech starts before the first sentence is complete; 0 turns this off."""
    first_fragment_max_words: int = Field(12, ge=0, le=200)
    """With no sentence end or comma before it, the first fragment of a reply ends at the first space after this many words; 0 never cuts it mid-sentence."""
    ws_max_message_bytes: int = Field(65_536, ge=1_024, le=16_777_216)
    """Largest text (JSON) message accepted on /ws/tts; a larger one gets the error request_too_large."""
    ws_max_connections: int = Field(64, ge=1, le=10_000)
    """/ws/tts clients served at once; the next one is refused with close code 1013."""
    piper: PiperSettings = Field(default_factory=PiperSettings)
    espeak: EspeakSettings = Field(default_factory=EspeakSettings)
    xtts: XttsSettings = Field(default_factory=XttsSettings)
    groq: GroqSettings = Field(default_factory=GroqSettings)
    openai: OpenAiSpeechSettings = Field(default_factory=OpenAiSpeechSettings)
    wyoming: TtsWyomingSettings = Field(default_factory=TtsWyomingSettings)

    @property
    def served_engines(self) -> list[str]:
        """tts.engine, then the other engines of tts.engines: every engine a request may name."""
        return list(dict.fromkeys([self.engine, *self.engines]))
