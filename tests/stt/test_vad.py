"""Streaming VAD, alone and batched across sessions, against faster-whisper's own batch VAD, on real espeak-ng speech."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from faster_whisper.vad import get_vad_model

from stt.vad import WINDOW_SAMPLES, StreamingVad, score_batch
from stt.vad_batch import VadBatcher
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


PHRASES = ["Please turn on the kitchen lights.", "What is the weather like tomorrow?", "Stop.", "Play some music in the living room, please."]


def _streams() -> list[np.ndarray]:
    """Real speech of different lengths, starting at different times, so streams are in speech and silence at once."""
    return [make_speech(text, lead_silence_s=0.2 + 0.3 * i, trail_silence_s=0.6) for i, text in enumerate(PHRASES)]


def test_a_batch_of_streams_scores_each_as_if_it_were_alone() -> None:
    streams = _streams()
    alone = [get_vad_model()(audio[: len(audio) - len(audio) % WINDOW_SAMPLES]) for audio in streams]
    vads = [StreamingVad() for _ in streams]
    scored: list[list[np.ndarray]] = [[] for _ in streams]
    # Each stream sends frames of its own size (20, 32, 60, 100 ms), so a batch holds 0..3 windows per stream.
    frames = [320, 512, 960, 1600]
    offsets = [0] * len(streams)
    while any(offset < len(audio) for offset, audio in zip(offsets, streams)):
        chunks = [audio[offset : offset + frame] for audio, offset, frame in zip(streams, offsets, frames)]
        for i, result in enumerate(score_batch(vads, chunks)):
            scored[i].append(result.probabilities)
        offsets = [offset + frame for offset, frame in zip(offsets, frames)]
    for i, reference in enumerate(alone):
        batched = np.concatenate(scored[i])
        np.testing.assert_allclose(batched, reference, atol=1e-5)
        # The same speech/silence decision for every window, and speech was heard in every stream.
        assert np.array_equal(batched >= 0.5, reference >= 0.5)
        assert int((batched >= 0.5).sum()) >= 5


@pytest.mark.anyio
async def test_sessions_waiting_together_are_scored_in_one_batch() -> None:
    limiter = anyio.CapacityLimiter(1)
    batcher = VadBatcher(limiter, max_batch=64)
    # Whole windows ending in silence (faster-whisper's call zeroes the end of the last window of its input).
    streams = [audio[: len(audio) - len(audio) % WINDOW_SAMPLES] for audio in _streams()]
    vads = [StreamingVad() for _ in streams]
    results: dict[int, np.ndarray] = {}

    async def session(i: int) -> None:
        results[i] = (await batcher.score(vads[i], streams[i])).probabilities

    token = object()
    await limiter.acquire_on_behalf_of(token)  # the one VAD worker is busy: the sessions queue up
    async with anyio.create_task_group() as tasks:
        for i in range(len(streams)):
            tasks.start_soon(session, i)
        while batcher.waiting < len(streams) - 1:  # the first one leads and waits for the worker
            await anyio.lowlevel.checkpoint()
        limiter.release_on_behalf_of(token)
    # The first session alone (it took the worker's place in line), then the three that waited, together.
    assert (batcher.batches, batcher.sessions_scored) == (2, 4)
    for i, audio in enumerate(streams):
        np.testing.assert_allclose(results[i], get_vad_model()(audio), atol=1e-5)
