"""What a speech-to-text session tells its client, as typed events (every protocol encodes these).

The segmenter's own events (stt.stream: SpeechStarted, SpeechEnded, NoSpeech, BufferLimitReached)
are session events as they are; the session adds the results of transcription and the answers to
the client's commands.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ServiceError
from stt.engine import Transcript
from stt.stream import BufferLimitReached, NoSpeech, SpeechEnded, SpeechStarted, Utterance


@dataclass(frozen=True)
class Transcribed:
    """The final transcript of an utterance."""

    result: Transcript
    utterance: Utterance
    timings: dict[str, float | bool]
    """speech_end_to_transcript_s, queue_wait_s, transcribe_s, real_time_factor, speculative; with smart_turn,
    turn_complete, turn_probability and turn_model_s when the model judged the pause that ended the utterance."""
    epoch: int


@dataclass(frozen=True)
class Heard:
    """An utterance (or an `end` of nothing) ended without words: exactly one result per utterance."""

    result: NoSpeech
    epoch: int


@dataclass(frozen=True)
class Partial:
    """A quick hypothesis of the utterance still being spoken (see stt.partials)."""

    stable: str
    unstable: str
    utterance: int


@dataclass(frozen=True)
class ConfigApplied:
    language: str | None
    word_timestamps: bool
    partials: bool


@dataclass(frozen=True)
class ResetDone:
    dropped_seconds: float


@dataclass(frozen=True)
class Refused:
    """Something the session could not do; `fatal`: the session cannot go on (the model is unavailable)."""

    error: ServiceError
    fatal: bool = False


SessionEvent = (
    SpeechStarted | SpeechEnded | BufferLimitReached | Transcribed | Heard | Partial | ConfigApplied | ResetDone | Refused
)
