"""One streaming session's audio bookkeeping: VAD endpointing, utterance cutting, buffer limits.

Pure logic: windows of 16 kHz audio and their speech probabilities in, events out. No I/O, no
model calls, so every rule here is testable with synthetic probabilities.

Buffer rule: the session holds at most `max_buffer_seconds` of audio that is not transcribed yet
(the utterance being collected plus utterances waiting for a worker). Audio that arrives while the
buffer is full is dropped, the utterance in progress is closed at the limit (and still transcribed),
and the client is told once with `BufferLimitReached`. Listening resumes when transcription frees
room; the next utterance starts at the next speech.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.config import SttSettings
from stt.vad import WINDOW_SAMPLES

SAMPLE_RATE = 16000
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE

EndReason = Literal["silence", "end", "max_duration", "buffer_limit"]


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray
    reason: EndReason
    start: float
    """Seconds from the start of the stream (or the last reset) to the first sample."""
    speech_seconds: float

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class NoSpeech:
    """The client ended an utterance that held no speech: acknowledged, never transcribed."""

    duration: float


@dataclass(frozen=True)
class SpeechStarted:
    """Speech is confirmed (min_speech_ms of it): a client can react, e.g. stop playback (barge-in)."""

    at: float
    """Seconds from the start of the stream to the first speech window."""


@dataclass(frozen=True)
class SpeechEnded:
    at: float
    """Seconds from the start of the stream to the end of the last speech window."""
    reason: EndReason
    turn_complete: bool | None = None
    """With stt.turn_detection smart_turn: the end-of-turn model's last verdict on this utterance (None: not asked)."""
    turn_probability: float | None = None
    """The model's probability that the turn was complete, with that verdict."""


@dataclass(frozen=True)
class BufferLimitReached:
    duration: float
    """Seconds held when the limit was hit."""
    limit: float
    """The limit, in seconds (stt.max_buffer_seconds)."""


Event = Utterance | NoSpeech | BufferLimitReached | SpeechStarted | SpeechEnded


@dataclass(frozen=True)
class SegmenterLimits:
    threshold: float
    endpoint_windows: int
    min_speech_windows: int
    pad_windows: int
    max_utterance_samples: int
    max_buffer_samples: int

    @classmethod
    def from_settings(cls, stt: SttSettings, *, endpointing: bool = True) -> SegmenterLimits:
        """`endpointing` False: silence never ends an utterance; the client does (`end`)."""
        def windows(ms: int) -> int:
            return math.ceil(ms / 1000 / WINDOW_SECONDS)

        return cls(
            threshold=stt.vad_threshold,
            # Rounded down: Silero scores the first window after speech as speech (its tail), so the
            # silence actually waited for is this plus one window, about endpoint_silence_ms.
            endpoint_windows=max(1, int(stt.endpoint_silence_ms / 1000 / WINDOW_SECONDS)) if endpointing else sys.maxsize,
            min_speech_windows=windows(stt.min_speech_ms),
            pad_windows=windows(stt.speech_pad_ms),
            max_utterance_samples=int(stt.max_utterance_seconds * SAMPLE_RATE),
            max_buffer_samples=int(stt.max_buffer_seconds * SAMPLE_RATE),
        )

    @property
    def neg_threshold(self) -> float:
        """Below this a window is silence even right after speech (Silero's own hysteresis)."""
        return max(self.threshold - 0.15, 0.01)


class UtteranceSegmenter:
    """Cuts a stream of VAD-scored windows into utterances."""

    def __init__(self, limits: SegmenterLimits) -> None:
        self.limits = limits
        self.queued_samples = 0
        """Samples of emitted utterances not yet transcribed (lowered by `transcribed`)."""
        self._overflowing = False
        self._position = 0
        self._pre_roll: deque[np.ndarray] = deque(maxlen=max(limits.pad_windows, 1))
        self._start_utterance_state()
        self._in_speech = False
        self._idle_samples = 0

    def _start_utterance_state(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._utterance_samples = 0
        self._utterance_start = self._position
        self._speech_windows = 0
        self._silence_run = 0
        self._first_speech = 0
        self._last_speech_end = 0
        self._announced = False

    def reset(self) -> float:
        """Drop the utterance being collected and the pre-roll; returns the seconds dropped."""
        dropped = self._utterance_samples / SAMPLE_RATE
        self._start_utterance_state()
        self._overflowing = False
        self._in_speech = False
        self._pre_roll.clear()
        self._idle_samples = 0
        self._position = 0
        self._utterance_start = 0
        return round(dropped, 3)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def utterance_samples(self) -> int:
        """Samples of the utterance being heard (not yet cut)."""
        return self._utterance_samples

    @property
    def held_samples(self) -> int:
        return self.queued_samples + self._utterance_samples

    @property
    def in_trailing_silence(self) -> bool:
        """Speech has paused: the utterance may end within endpoint_silence_ms."""
        return self._silence_run > 0

    @property
    def trailing_silence_seconds(self) -> float:
        """How long speech has paused (0 while speaking)."""
        return self._silence_run * WINDOW_SECONDS

    @property
    def speech_mark(self) -> tuple[float, float]:
        """(start, speech_seconds) of the utterance being collected, as its Utterance will carry them. It stays
        the same while only silence follows, so it tells a pause apart from the speech that ends it."""
        return round(self._utterance_start / SAMPLE_RATE, 3), round(self._speech_windows * WINDOW_SECONDS, 3)

    @property
    def speech_confirmed(self) -> bool:
        """The utterance being collected holds enough speech to be transcribed."""
        return self._in_speech and self._announced

    def current_audio(self) -> np.ndarray:
        """A copy of the utterance collected so far (for partial transcripts)."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)

    def closing_audio(self) -> np.ndarray:
        """The audio the utterance would hold if it closed now: trailing silence cut to speech_pad, as `_close` cuts it."""
        trailing = self._silence_run - self.limits.pad_windows
        chunks = self._chunks[:-trailing] if trailing > 0 else self._chunks
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def end_turn(self) -> list[Event]:
        """End the utterance in the pause it is in, before endpoint_silence_ms (the end-of-turn model said the turn
        is complete): closed as that silence would close it. Nothing while speaking or between utterances."""
        if not (self._in_speech and self._silence_run):
            return []
        return self._close("silence")

    def transcribed(self, utterance: Utterance) -> None:
        """A worker is done with an utterance: its audio no longer counts against the buffer."""
        self.queued_samples = max(0, self.queued_samples - len(utterance.audio))

    def push(self, windows: np.ndarray, probabilities: np.ndarray) -> list[Event]:
        events: list[Event] = []
        for window, probability in zip(windows, probabilities, strict=True):
            events.extend(self._push_window(window, float(probability)))
        return events

    def end(self, tail: np.ndarray) -> list[Event]:
        """The client ended the utterance; tail is audio too short for a VAD window."""
        self._position += len(tail)
        if self._in_speech and self._speech_windows >= self.limits.min_speech_windows:
            self._chunks.append(np.asarray(tail, dtype=np.float32))
            self._utterance_samples += len(tail)
            ended = self._speech_ended("end")
            return [*ended, self._emit("end")]
        duration = (self._idle_samples + self._utterance_samples + len(tail)) / SAMPLE_RATE
        self._start_utterance_state()
        self._in_speech = False
        self._pre_roll.clear()
        self._idle_samples = 0
        return [NoSpeech(round(duration, 3))]

    def _push_window(self, window: np.ndarray, probability: float) -> list[Event]:
        if self.held_samples + len(window) > self.limits.max_buffer_samples:
            self._position += len(window)
            return self._overflow()
        self._overflowing = False
        events = self._accept(window, probability)
        self._position += len(window)
        return events

    def _accept(self, window: np.ndarray, probability: float) -> list[Event]:
        limits = self.limits
        if not self._in_speech:
            if probability < limits.threshold:
                self._pre_roll.append(window)
                self._idle_samples += len(window)
                return []
            pre_roll = list(self._pre_roll) if limits.pad_windows else []
            self._pre_roll.clear()
            self._idle_samples = 0
            self._in_speech = True
            self._start_utterance_state()
            self._utterance_start = self._position - WINDOW_SAMPLES * len(pre_roll)
            self._chunks = [*pre_roll, window]
            self._utterance_samples = WINDOW_SAMPLES * len(self._chunks)
            self._speech_windows = 1
            self._first_speech = self._last_speech_end = self._position
            self._last_speech_end += len(window)
            return self._announce()
        if self._utterance_samples + len(window) > limits.max_utterance_samples:
            # Cut before the window that would pass the limit, so no utterance is ever longer.
            return self._close("max_duration") + self._accept(window, probability)
        self._chunks.append(window)
        self._utterance_samples += len(window)
        events: list[Event] = []
        if probability >= limits.threshold:
            if not self._speech_windows:
                self._first_speech = self._position
            self._speech_windows += 1
            self._silence_run = 0
            self._last_speech_end = self._position + len(window)
            events = self._announce()
        elif probability < limits.neg_threshold or self._silence_run:
            self._silence_run += 1
        if self._silence_run >= limits.endpoint_windows:
            return events + self._close("silence")
        return events

    def _close(self, reason: EndReason) -> list[Event]:
        """Emit the utterance if it held enough speech, else drop it silently."""
        trailing = self._silence_run - self.limits.pad_windows
        if trailing > 0:
            # Keep only speech_pad of the trailing silence; the rest seeds the next pre-roll.
            for window in self._chunks[-trailing:]:
                self._pre_roll.append(window)
            del self._chunks[-trailing:]
            self._utterance_samples -= trailing * WINDOW_SAMPLES
        # Cut mid-speech (max_duration): the next utterance continues at once, with no pre-roll.
        continuing = reason == "max_duration" and self._silence_run == 0
        events: list[Event] = [] if continuing else self._speech_ended(reason)
        announced = self._announced and continuing
        if self._speech_windows >= self.limits.min_speech_windows:
            events.append(self._emit(reason))
        self._start_utterance_state()
        self._in_speech = continuing
        # A cut in the middle of speech is not a new start: no second speech_started.
        self._announced = announced
        self._idle_samples = 0
        return events

    def _announce(self) -> list[Event]:
        if self._announced or self._speech_windows < self.limits.min_speech_windows:
            return []
        self._announced = True
        return [SpeechStarted(round(self._first_speech / SAMPLE_RATE, 3))]

    def _speech_ended(self, reason: EndReason) -> list[Event]:
        if not self._announced:
            return []
        self._announced = False
        return [SpeechEnded(round(self._last_speech_end / SAMPLE_RATE, 3), reason)]

    def _overflow(self) -> list[Event]:
        events: list[Event] = []
        if not self._overflowing:
            self._overflowing = True
            limit = self.limits.max_buffer_samples / SAMPLE_RATE
            events.append(BufferLimitReached(round(self.held_samples / SAMPLE_RATE, 3), limit))
            if self._in_speech:
                events.extend(self._close("buffer_limit"))
                self._in_speech = False
        self._pre_roll.clear()
        return events

    def _emit(self, reason: EndReason) -> Utterance:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        utterance = Utterance(
            audio=audio,
            reason=reason,
            start=round(self._utterance_start / SAMPLE_RATE, 3),
            speech_seconds=round(self._speech_windows * WINDOW_SECONDS, 3),
        )
        self.queued_samples += len(audio)
        self._start_utterance_state()
        return utterance
