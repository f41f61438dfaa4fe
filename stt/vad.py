"""Streaming Silero VAD: per-session recurrent state, scored for many sessions in one model call.

faster-whisper's `get_speech_timestamps` needs the whole recording; a live stream needs the
probability of each 32 ms window as it arrives. Feeding the model window by window with the LSTM
state and 64-sample context carried over gives exactly the probabilities of the batch call.

faster-whisper's Silero graph runs its LSTM over the windows of one stream in sequence (batch 1), so
it cannot score two streams in one call. `_batched_session` loads the same graph with one node
changed (stt/vad_graph.py, built in a child process): the encoder's windows go to the LSTM as a batch
of one time step each, with a state per batch row. One call then scores the next window of every
session at once (`score_batch`): 64 real-time streams cost about 31 model calls a second instead of
2,000.
A single stream keeps faster-whisper's graph, which scores all its windows in one call.
Blocking (onnxruntime): callers run `process` and `score_batch` in a worker thread.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.logging import get_logger
from stt import vad_graph

logger = get_logger(__name__)

WINDOW_SAMPLES = 512
"""Silero's window at 16 kHz: 32 ms."""
_CONTEXT_SAMPLES = 64
_HIDDEN = 128


@functools.cache
def _batched_session() -> object:
    """faster-whisper's Silero v6 with a batch of streams instead of a sequence of windows (one per process)."""
    from faster_whisper.utils import get_assets_path

    source = f"{get_assets_path()}/silero_vad_v6.onnx"
    try:
        return _session(vad_graph.build_in_child(source))
    except Exception as exc:  # the child could not run, or wrote something that is not the model
        # Batched scoring is worth the memory onnx costs here: 64 streams would otherwise cost 2,000 calls a second.
        logger.warning("vad_graph_child_failed", error=str(exc), fallback="built in this process (+14 MB)")
        return _session(vad_graph.batched_graph(source))


def _session(model: bytes) -> object:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # As faster-whisper's own session: one thread; the VAD worker pool (stt.vad_workers) gives the parallelism.
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"], sess_options=options)


def load() -> None:
    """Build the batched model now (about half a second, in a child process), so the first session does not
    pay for it. Blocking."""
    _batched_session()


@dataclass(frozen=True)
class VadResult:
    windows: np.ndarray
    """float32 [n, WINDOW_SAMPLES]: the audio the probabilities belong to."""
    probabilities: np.ndarray
    """float32 [n]: speech probability of each window."""


class StreamingVad:
    """Speech probabilities of whole windows; keeps the remainder until the next call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, _HIDDEN), dtype=np.float32)
        self._c = np.zeros((1, 1, _HIDDEN), dtype=np.float32)
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
        return score_batch([self], [audio])[0]

    def _sequence(self, windows: np.ndarray) -> VadResult:
        """One stream's windows in one call of faster-whisper's own graph (the LSTM runs along them)."""
        if not len(windows):
            return VadResult(windows, np.zeros(0, dtype=np.float32))
        from faster_whisper.vad import get_vad_model

        contexts = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT_SAMPLES:]])
        probabilities, self._h, self._c = get_vad_model().session.run(  # cached by faster-whisper
            None, {"input": np.concatenate([contexts, windows], axis=1), "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -_CONTEXT_SAMPLES:].copy()
        return VadResult(windows, np.asarray(probabilities, dtype=np.float32).reshape(-1))

    def _windows(self, audio: np.ndarray) -> np.ndarray:
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = len(samples) - len(samples) % WINDOW_SAMPLES
        self._pending = samples[whole:]
        return samples[:whole].reshape(-1, WINDOW_SAMPLES)


def score_batch(vads: Sequence[StreamingVad], audios: Sequence[np.ndarray]) -> list[VadResult]:
    """Each stream's audio scored with its own state; one model call per window position (one call when every
    stream brings one window). Blocking."""
    windows = [vad._windows(audio) for vad, audio in zip(vads, audios, strict=True)]
    if len(vads) == 1:
        return [vads[0]._sequence(windows[0])]
    session = _batched_session()
    probabilities = [np.zeros(len(w), dtype=np.float32) for w in windows]
    for step in range(max((len(w) for w in windows), default=0)):
        rows = [i for i, w in enumerate(windows) if len(w) > step]
        frames = np.stack([np.concatenate([vads[i]._context, windows[i][step]]) for i in rows])
        h = np.concatenate([vads[i]._h for i in rows], axis=1)
        c = np.concatenate([vads[i]._c for i in rows], axis=1)
        scores, h, c = session.run(None, {"input": frames, "h": h, "c": c})  # type: ignore[attr-defined]
        for row, i in enumerate(rows):
            vad = vads[i]
            vad._h, vad._c = h[:, row : row + 1].copy(), c[:, row : row + 1].copy()
            vad._context = windows[i][step, -_CONTEXT_SAMPLES:].copy()
            probabilities[i][step] = scores[row]
    return [VadResult(w, p) for w, p in zip(windows, probabilities, strict=True)]
