"""The `stt` section of the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config_base import Section, WyomingSettings

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


class SttWyomingSettings(WyomingSettings):
    port: int = Field(10300, ge=0, le=65535)
    """TCP port of the STT service's Wyoming listener; 0 takes a free port (tests)."""
    max_audio_seconds: float = Field(60.0, ge=1.0, le=600.0)
    """Longest audio of one Wyoming transcription (audio-start to audio-stop); past it the client gets an error."""


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
    trim_memory_after_s: float = Field(30.0, ge=0.0, le=3_600.0)
    """Once the transcription workers have been idle this long, the memory their work freed is handed back to the system (glibc malloc_trim: about 60 MB after two concurrent transcriptions of tiny; the next transcription then takes about 10 ms longer, so the default waits for the end of a conversation); 0 never does."""
    malloc_arena_max: int = Field(2, ge=0, le=1_024)
    """glibc malloc arenas the STT process's threads share. glibc's default, up to 8 per core, lets each transcription worker keep what it freed in its own; 2 kept the peers bench's peak about 50 MB and its memory at the end about 70 MB lower (with mkl_buffer_cache off; two workers of tiny), latencies within the VM's noise. More workers share the same arenas: raise it with stt.max_concurrent if transcriptions slow down. 0, or MALLOC_ARENA_MAX / GLIBC_TUNABLES in the environment: glibc's own count."""
    mkl_buffer_cache: bool = False
    """Whether Intel MKL keeps the buffers it freed for reuse, where malloc_trim cannot reach them; off kept the peak about 30 MB lower at the same speed on an Intel CPU. On AMD CPUs CTranslate2 computes with oneDNN instead, and this made no measurable difference (EPYC). Any non-empty MKL_DISABLE_FAST_MM in the environment turns it off whatever this says."""
    transcribe_nice: int = Field(10, ge=0, le=19)
    """How much lower the CPU priority of the transcription threads is (Linux nice), so the audio intake keeps pace under load; 0: the same."""
    vad_batch_max_size: int = Field(64, ge=1, le=1_024)
    """Most sessions whose voice activity one model call scores (the sessions waiting for a VAD worker go together)."""
    batch_max_size: int = Field(1, ge=1, le=64)
    """Most finals of different sessions decoded together in one batch on one worker; 1 (each alone) suits a small CPU, 8-16 a GPU."""
    batch_window_ms: int = Field(20, ge=0, le=1_000)
    """How long a final that found a free worker waits for other sessions' finals to join its batch."""
    max_backlog_seconds: float = Field(30.0, ge=1.0, le=3_600.0)
    """Speech of all sessions waiting for (or in) transcription past which a new WebSocket session is refused with 1013 (overloaded)."""

    model_retry_s: float = Field(30.0, ge=0.0, le=3_600.0)
    """After a failed model load (no network for the first download, a model not in place yet), wait this long
    and try again, doubling the wait up to 10 minutes; 0 never retries (a restart is needed)."""
    max_upload_bytes: int = Field(26_214_400, ge=1_024, le=2_147_483_648)
    """Largest audio file accepted by /v1/audio/transcriptions and /translations (25 MiB, as OpenAI's API)."""
    max_upload_seconds: float = Field(3_600.0, ge=1.0, le=86_400.0)
    """Longest audio accepted by /v1/audio/transcriptions and /translations, in seconds."""
    max_uploads: int = Field(2, ge=1, le=64)
    """Files transcribed at once (each holds its decoded audio in memory); another upload gets 429 with Retry-After."""

    wyoming: SttWyomingSettings = Field(default_factory=lambda: SttWyomingSettings())
    """The Wyoming listener (speech to text for Home Assistant)."""
    turn_detection: Literal["silence", "smart_turn"] = "silence"
    """What ends a turn: silence (endpoint_silence_ms of it) or smart_turn (after turn_min_silence_ms the Smart Turn
    model judges whether the utterance is complete; endpoint_silence_ms is then the upper bound)."""
    turn_min_silence_ms: int = Field(200, ge=32, le=5_000)
    """Silence after speech at which the end-of-turn model is asked (smart_turn) and a speculative final may start."""
    smart_turn_model: Path = Path("models/smart-turn/smart-turn-v3.2-cpu.onnx")
    """The Smart Turn v3 ONNX file; fetched from the pipecat-ai wheel on PyPI when missing (python -m stt.smart_turn fetch)."""
    smart_turn_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    """Smart Turn probability above which a turn counts as complete (pipecat's own threshold is 0.5)."""
    speculative_finals: bool = True
    """Start the final transcription at turn_min_silence_ms of silence, on a free worker only; dropped if speech resumes."""

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
    def _turn_asked_before_the_endpoint(self) -> SttSettings:
        if self.turn_detection == "smart_turn" and self.turn_min_silence_ms >= self.endpoint_silence_ms:
            raise ValueError(
                f"turn_min_silence_ms ({self.turn_min_silence_ms}) must be below endpoint_silence_ms "
                f"({self.endpoint_silence_ms}), the upper bound of a turn with smart_turn"
            )
        return self

    @model_validator(mode="after")
    def _buffer_holds_an_utterance(self) -> SttSettings:
        if self.max_buffer_seconds < self.max_utterance_seconds:
            raise ValueError(
                f"max_buffer_seconds ({self.max_buffer_seconds}) must be at least "
                f"max_utterance_seconds ({self.max_utterance_seconds})"
            )
        return self
