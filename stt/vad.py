"""Streaming Silero VAD: per-session recurrent state over the one ONNX session of the process.

faster-whisper's `get_speech_timestamps` needs the whole recording; a live stream needs the
probability of each 32 ms window as it arrives. Feeding the same ONNX model window by window with
the LSTM state and 64-sample context carried over gives exactly the probabilities of the batch call.
Blocking (onnxruntime): callers run `process` in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_SAMPLES = 512
"""Silero's window at 16 kHz: 32 ms."""
_CONTEXT_SAMPLES = 64
_STATE_SHAPE = (1, 1, 128)


def _shared_session() -> object:
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session  # cached by faster-whisper: one per process


@dataclass(frozen=True)
class VadResult:
    windows: np.ndarray
    """float32 [n, WINDOW_SAMPLES]: the audio the probabilities belong to."""
    probabilities: np.ndarray
    """float32 [n]: speech probability of each window."""


class StreamingVad:
    """Speech probabilities of whole windows; keeps the remainder until the next call."""

    def __init__(self) -> None:
        self._session = _shared_session()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending_samples(self) -> int:
        return len(self._pending)

    def take_pending(self) -> np.ndarray:
        """The samples short of a whole window (at the end of an utterance)."""
        pending, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        return pending

    def process(self, audio: np.ndarray) -> VadResult:
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = len(samples) - len(samples) % WINDOW_SAMPLES
        self._pending = samples[whole:]
        windows = samples[:whole].reshape(-1, WINDOW_SAMPLES)
        if not len(windows):
            return VadResult(windows, np.zeros(0, dtype=np.float32))
        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT_SAMPLES:]])
        probabilities, self._h, self._c = self._session.run(  # type: ignore[attr-defined]
            None,
            {"input": np.concatenate([contexts, windows], axis=1), "h": self._h, "c": self._c},
        )
        self._context = windows[-1, -_CONTEXT_SAMPLES:].copy()
        return VadResult(windows, np.asarray(probabilities, dtype=np.float32).reshape(-1))
