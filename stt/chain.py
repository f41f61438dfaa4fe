"""The audio chain of one stream: PCM16 at the client's rate -> 16 kHz float32 -> Silero VAD -> utterances.

One reusable component: the live session runs it with the model call batched with other sessions in the
VAD worker pool and the segmenter on the event loop (`accept`, `take_accepted`, `segment`); a benchmark or a file pipeline runs it
synchronously (`push`) and gets exactly the utterances the server cuts.
"""

from __future__ import annotations

import numpy as np

from core.audio import StreamResampler, pcm16_to_float32
from core.config import SttSettings
from stt.stream import SAMPLE_RATE, Event, SegmenterLimits, UtteranceSegmenter
from stt.vad import WINDOW_SAMPLES, StreamingVad, VadResult


class AudioChain:
    def __init__(self, settings: SttSettings, input_rate: int | None = None, *, endpointing: bool = True) -> None:
        """`input_rate`: of the PCM16 fed in (default stt.sample_rate); `endpointing` False: utterances end
        only when the client says so (`end`), never at a silence."""
        self.input_rate = input_rate or settings.sample_rate
        self.threshold = settings.vad_threshold
        self.resampler = StreamResampler(self.input_rate, SAMPLE_RATE)
        self.vad = StreamingVad()
        self.segmenter = UtteranceSegmenter(SegmenterLimits.from_settings(settings, endpointing=endpointing))
        self._pending = np.zeros(0, dtype=np.float32)

    def accept(self, pcm16: bytes) -> bool:
        """Take a frame (resampled at once; cheap). True when a whole VAD window is waiting to be scored,
        so a caller only pays for a model call (and a thread hop) when there is one to make."""
        samples = self.resampler.process(pcm16_to_float32(pcm16))
        self._pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        return self.vad.pending_samples + len(self._pending) >= WINDOW_SAMPLES

    def take_accepted(self) -> np.ndarray:
        """The audio accepted since the last call, for `self.vad` to score (alone or in a batch of sessions)."""
        pending, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return pending

    def score(self) -> VadResult:
        """The speech probability of every whole window accepted so far. Blocking (onnxruntime)."""
        return self.vad.process(self.take_accepted())

    def heard_speech(self, result: VadResult) -> bool:
        return bool(len(result.probabilities)) and float(result.probabilities.max()) >= self.threshold

    def segment(self, result: VadResult) -> list[Event]:
        """Pure and quick: the scored windows through the segmenter."""
        return self.segmenter.push(result.windows, result.probabilities)

    def end(self) -> list[Event]:
        """The client ended the utterance: what is held (shorter than a window included) is closed."""
        tail = np.concatenate([self.vad.take_pending(), self._pending])
        self._pending = np.zeros(0, dtype=np.float32)
        return self.segmenter.end(tail)

    def reset(self) -> float:
        """Drop everything held; returns the seconds dropped."""
        dropped = self.segmenter.reset() + (self.vad.pending_samples + len(self._pending)) / SAMPLE_RATE
        self.vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        return dropped

    def push(self, pcm16: bytes) -> list[Event]:
        """accept + score + segment in one blocking call."""
        if not self.accept(pcm16):
            return []
        return self.segment(self.score())
