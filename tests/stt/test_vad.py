"""Streaming VAD against faster-whisper's own batch VAD, on real espeak-ng speech."""

from __future__ import annotations

import numpy as np
from faster_whisper.vad import get_vad_model

from stt.vad import WINDOW_SAMPLES, StreamingVad
from tests.fixtures.speech import make_speech


def test_chunked_probabilities_equal_the_batch_call() -> None:
    audio = make_speech("Please turn on the kitchen lights.", lead_silence_s=0.5, trail_silence_s=0.5)
    usable = audio[: len(audio) - len(audio) % WINDOW_SAMPLES]
    batch = get_vad_model()(usable)

    vad = StreamingVad()
    chunks = np.split(usable, [100, 700, 5000, 5001, 20000])  # odd sizes: windows straddle chunks
    streamed = np.concatenate([vad.process(chunk).probabilities for chunk in chunks])
    np.testing.assert_allclose(streamed, batch, atol=1e-6)
    assert vad.pending_samples == 0


def test_speech_is_found_where_it_was_spoken() -> None:
    lead, trail = 1.0, 1.0
    audio = make_speech("The weather is lovely today.", lead_silence_s=lead, trail_silence_s=trail)
    result = StreamingVad().process(audio)
    speech_windows = np.flatnonzero(result.probabilities >= 0.5)
    first = speech_windows[0] * WINDOW_SAMPLES / 16000
    last = (speech_windows[-1] + 1) * WINDOW_SAMPLES / 16000
    assert lead - 0.1 <= first <= lead + 0.3
    assert len(audio) / 16000 - trail - 0.3 <= last <= len(audio) / 16000 - trail + 0.3
    assert result.windows.shape == (len(audio) // WINDOW_SAMPLES, WINDOW_SAMPLES)


def test_remainder_is_kept_until_the_next_call_and_can_be_taken() -> None:
    vad = StreamingVad()
    result = vad.process(np.zeros(WINDOW_SAMPLES + 100, dtype=np.float32))
    assert len(result.probabilities) == 1 and vad.pending_samples == 100
    assert len(vad.process(np.zeros(WINDOW_SAMPLES - 100, dtype=np.float32)).probabilities) == 1
    vad.process(np.zeros(7, dtype=np.float32))
    assert len(vad.take_pending()) == 7 and vad.pending_samples == 0


def test_silence_scores_low() -> None:
    result = StreamingVad().process(np.zeros(16000, dtype=np.float32))
    assert result.probabilities.max() < 0.1
