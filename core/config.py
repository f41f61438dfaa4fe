"""The one typed configuration of both services.

Precedence: built-in defaults < YAML file (`config.yaml` at the project root, or `CONFIG_PATH`)
< environment (`STT__MODEL=tiny`, `LOGGING__JSON=true`, `ENVIRONMENT=production`).
Unknown keys are errors, so a typo never silently falls back to a default.
This is the only module that reads the process environment.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config.yaml"

ComputeType = Literal[
    "auto",
    "int8",
    "int8_float16",
    "int8_float32",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    """Lowest level that is logged."""
    json_logs: bool = Field(False, validation_alias=AliasChoices("json", "json_logs"), alias="json")
    """One JSON object per line (production) instead of readable console lines."""
    to_supervisor: bool = False
    """Set by run_services.py for the services it starts: they write JSON lines for the supervisor, which
    shows them as logging.json says. Not meant to be set by hand."""

    @property
    def writes_json(self) -> bool:
        return self.json_logs or self.to_supervisor


class SttSettings(Section):
    host: str = "127.0.0.1"
    """Interface the STT service listens on (0.0.0.0 for every interface)."""
    port: int = Field(8010, ge=1, le=65535)
    """TCP port of the STT service."""
    model: str = "small"
    """faster-whisper size name (tiny, base, small, medium, large-v3, ...) or a CTranslate2 model directory."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto uses CUDA when CTranslate2 sees a CUDA device and falls back to the CPU."""
    compute_type: ComputeType = "auto"
    """CTranslate2 compute type; auto picks float16 on CUDA and int8 on the CPU."""
    cpu_threads: int = Field(0, ge=0, le=256)
    """Threads per transcription on the CPU; 0 uses one per available core (CTranslate2's own default, 4, oversubscribes small machines)."""
    language: str | None = None
    """Language code such as en; null detects the language of each utterance."""
    beam_size: int = Field(5, ge=1, le=20)
    """Beam width for decoding; 1 is greedy and fastest."""
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    """Sampling temperatures tried in turn when decoding fails its quality checks."""
    models_dir: Path = Path("models/whisper")
    """Where size names are downloaded on first start (relative to the project directory)."""
    sample_rate: int = Field(16000, ge=8000, le=48000)
    """Sample rate of the PCM16 mono audio clients send; resampled to 16 kHz for Whisper."""
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Silero VAD speech probability above which a 32 ms window counts as speech."""
    endpoint_silence_ms: int = Field(600, ge=100, le=10_000)
    """Silence after speech that ends an utterance."""
    min_speech_ms: int = Field(200, ge=0, le=5_000)
    """An utterance with less detected speech than this is dropped instead of transcribed."""
    speech_pad_ms: int = Field(300, ge=0, le=2_000)
    """Audio kept before the detected start of speech, so first syllables are not clipped."""
    max_utterance_seconds: float = Field(12.0, ge=1.0, le=30.0)
    """An utterance is cut and transcribed when it reaches this length (Whisper's window is 30 s)."""
    max_buffer_seconds: float = Field(120.0, ge=1.0, le=3_600.0)
    """Audio a session may hold waiting for transcription; audio beyond it is dropped and the client told."""
    max_frame_bytes: int = Field(1_048_576, ge=1_024, le=16_777_216)
    """Largest binary WebSocket frame accepted."""
    max_message_bytes: int = Field(4_096, ge=256, le=1_048_576)
    """Largest text (JSON) WebSocket message accepted."""
    max_concurrent: int = Field(2, ge=1, le=64)
    """Transcriptions that run at once across all connections (the worker pool)."""
    max_connections: int = Field(16, ge=1, le=10_000)
    """WebSocket clients served at once; the next one is refused with close code 1013."""
    partial_interval_ms: int = Field(700, ge=0, le=10_000)
    """Least time between two partial transcripts of an utterance being spoken; 0 turns partials off."""
    vad_workers: int = Field(2, ge=1, le=64)
    """Threads scoring voice activity for all connections (about 1 ms of work per second of audio)."""

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if value not in _LANGUAGE_CODES:
            raise ValueError(
                f"unknown language {value!r}; use null to detect, or one of: " + ", ".join(sorted(_LANGUAGE_CODES))
            )
        return value

    @field_validator("temperatures")
    @classmethod
    def _temperatures_in_range(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("must be a non-empty list of numbers between 0.0 and 1.0")
        return value

    @model_validator(mode="after")
    def _buffer_holds_an_utterance(self) -> SttSettings:
        if self.max_buffer_seconds < self.max_utterance_seconds:
            raise ValueError(
                f"max_buffer_seconds ({self.max_buffer_seconds}) must be at least "
                f"max_utterance_seconds ({self.max_utterance_seconds})"
            )
        return self


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
    on few cores, cores / tts.max_concurrent avoids oversubscription."""
    cache_size: int = Field(4, ge=1, le=64)
    """Piper voices kept loaded in memory; the least recently used one is dropped first."""
    speaker_id: int | None = Field(None, ge=0)
    """Speaker of multi-speaker voices; null uses the voice's first speaker."""
    noise_scale: float | None = Field(None, ge=0.0, le=2.0)
    """Generator noise; null keeps the value in the voice's config."""
    noise_w_scale: float | None = Field(None, ge=0.0, le=2.0)
    """Phoneme width noise; null keeps the value in the voice's config."""


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


class TtsSettings(Section):
    host: str = "127.0.0.1"
    """Interface the TTS service listens on (0.0.0.0 for every interface)."""
    port: int = Field(8000, ge=1, le=65535)
    """TCP port of the TTS service and the dashboard."""
    engine: Literal["piper", "espeak", "xtts", "groq"] = "piper"
    """Speech engine."""
    fallback_engine: Literal["espeak", "none"] = "espeak"
    """Engine used when the configured one cannot start."""
    voice: str | None = Field(None, pattern=VOICE_NAME_PATTERN, max_length=100)
    """Default voice of the configured engine; null takes the engine's own default (piper.voice, espeak.voice,
    xtts.speaker, groq.voice)."""
    voices_dir: Path = Path("models/piper")
    """Folder of Piper voices (relative to the project directory)."""
    reply_default: bool = True
    """When a request does not say, speak the LLM's reply to the text rather than the text."""
    max_text_length: int = Field(2_000, ge=1, le=100_000)
    """Longest text accepted, in characters."""
    min_speed: float = Field(0.5, gt=0.0, le=1.0)
    """Slowest speaking speed a request may ask for (1.0 is the voice's normal speed)."""
    max_speed: float = Field(2.0, ge=1.0, le=10.0)
    """Fastest speaking speed a request may ask for."""
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


class LlmSettings(Section):
    url: str = "http://localhost:11434"
    """Ollama server address (OLLAMA_URL is accepted too)."""
    model: str = "llama3.2:3b"
    """Ollama model that writes the replies."""
    system_prompt: str = (
        "You are a helpful voice assistant. Answer briefly in plain spoken sentences, without markdown, lists or emoji."
    )
    """System prompt sent with every request."""
    options: dict[str, float | int | str | bool] = Field(default_factory=dict)
    """Ollama model options such as temperature or num_predict, passed as they are."""
    keep_alive: str | None = None
    """How long Ollama keeps the model loaded after a request (e.g. 5m); null keeps Ollama's default."""
    timeout_s: float = Field(60.0, gt=0.0, le=600.0)
    """Longest wait for one LLM request."""
    retry_attempts: int = Field(3, ge=0, le=10)
    """Retries after a failed first attempt, on connection errors and 5xx answers only."""
    retry_base_delay_s: float = Field(1.0, ge=0.0, le=60.0)
    """Wait before the first retry; it doubles for each further one (1 s, 2 s, 4 s)."""
    max_reply_chars: int = Field(2_000, ge=1, le=100_000)
    """Longest reply spoken; a longer one is cut at the last sentence end within it."""
    health_timeout_s: float = Field(1.0, gt=0.0, le=30.0)
    """Timeout of the Ollama reachability check behind /health."""
    health_cache_s: float = Field(5.0, ge=0.0, le=3_600.0)
    """How long a reachability result is reused by /health before it is checked again (in the background)."""


class SupervisorSettings(Section):
    startup_timeout_s: float = Field(60.0, gt=0.0, le=3_600.0)
    """Longest wait for a started service's /health to answer; past it the supervisor reports the service's last output and exits."""
    shutdown_grace_s: float = Field(10.0, gt=0.0, le=600.0)
    """After SIGTERM, how long in-flight requests and utterances may take to finish before the services are killed."""
    restart_backoff_initial_s: float = Field(1.0, ge=0.0, le=600.0)
    """Wait before restarting a service that died; it doubles with each further crash."""
    restart_backoff_max_s: float = Field(30.0, ge=0.0, le=3_600.0)
    """Longest wait between restarts; the wait starts over after a service stayed up for crash_loop_window_s."""
    crash_loop_count: int = Field(5, ge=1, le=1_000)
    """Crashes of one service within crash_loop_window_s that make the supervisor stop everything and exit non-zero."""
    crash_loop_window_s: float = Field(60.0, gt=0.0, le=86_400.0)
    """Window, in seconds, in which crash_loop_count crashes count as a crash loop."""
    output_lines: int = Field(20, ge=1, le=10_000)
    """Last output lines kept per service and logged when it crashes or fails to start."""

    @model_validator(mode="after")
    def _backoff_in_order(self) -> SupervisorSettings:
        if self.restart_backoff_max_s < self.restart_backoff_initial_s:
            raise ValueError(
                f"restart_backoff_max_s ({self.restart_backoff_max_s}) must be at least "
                f"restart_backoff_initial_s ({self.restart_backoff_initial_s})"
            )
        return self


class Settings(BaseSettings):
    """Everything tunable in both services."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_nested_delimiter="__",
        case_sensitive=False,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    environment: Literal["development", "staging", "production"] = "development"
    """Deployment environment, reported by /health."""
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    stt: SttSettings = Field(default_factory=SttSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)

    config_file: Path | None = Field(None, exclude=True)
    """The YAML file these settings were read from (set by load_settings)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the parsed YAML (see load_settings), so environment beats YAML.
        return (env_settings, _AliasEnvSource(settings_cls), init_settings)

    def resolve_path(self, path: Path) -> Path:
        """Relative paths in the config are relative to the project directory, not the cwd."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked."""
        return self.model_dump(mode="json", by_alias=True)


class _AliasEnvSource(PydanticBaseSettingsSource):
    """Conventional variables other tools already use, below our own `SECTION__KEY` names."""

    ALIASES = {"OLLAMA_URL": ("llm", "url"), "GROQ_API_KEY": ("tts", "groq", "api_key")}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable, (*sections, key) in self.ALIASES.items():
            if variable in os.environ:
                target = values
                for section in sections:
                    target = target.setdefault(section, {})
                target[key] = os.environ[variable]
        return values


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _environment_variable(location: list[str]) -> str | None:
    """The variable a value came from (`STT__PORT` for stt.port), if the environment sets one."""
    wanted = "__".join(location).upper()
    aliases = {path: name for name, path in _AliasEnvSource.ALIASES.items()}
    alias = aliases.get(tuple(location))
    for name in os.environ:
        if name.upper() == wanted or name == alias:
            return name
    return None


def _describe(error: dict[str, Any], settings_cls: type[BaseModel], source: str) -> str:
    location = [str(part) for part in error["loc"]]
    key = ".".join(location)
    variable = _environment_variable(location)
    origin = f"the environment variable {variable}" if variable else source
    if error["type"] == "extra_forbidden":
        section, name = location[:-1], location[-1]
        allowed = _allowed_keys(settings_cls, section)
        where = f"section '{'.'.join(section)}'" if section else "the top level"
        return f"unknown key '{name}' in {where}; allowed keys: {', '.join(allowed)} (set by {origin})"
    return f"{key}: {error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r}; set by {origin})"


def _allowed_keys(model: type[BaseModel], section: list[str]) -> list[str]:
    for part in section:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items() if not field.exclude]


def _is_setting(path: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for index, part in enumerate(path):
        fields = {field.alias or name: field for name, field in model.model_fields.items() if not field.exclude}
        field = fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif index != len(path) - 1:
            return False
    return True


def environment_overrides() -> dict[str, str]:
    """Which settings the environment sets, and by which variable (`{"stt.port": "STT__PORT"}`), so what
    is in effect can be explained: a value that differs from the file was set here."""
    found = {".".join(path): name for name, path in _AliasEnvSource.ALIASES.items() if name in os.environ}
    for name in os.environ:
        path = name.lower().split("__")
        if _is_setting(path):
            found[".".join(path)] = name
    return dict(sorted(found.items()))


def load_settings(config_path: str | os.PathLike[str] | None = None) -> Settings:
    """Read defaults, the YAML file and the environment; raise ConfigError naming what is wrong."""
    explicit = config_path or os.environ.get("CONFIG_PATH")
    path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if explicit and not path.is_file():
        raise ConfigError(f"config file {path} does not exist (set by CONFIG_PATH or --config)")
    data = _read_yaml(path) if path.is_file() else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        source = str(path) if path.is_file() else "the built-in defaults"
        problems = "; ".join(_describe(err, Settings, source) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    settings.config_file = path if path.is_file() else None
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
